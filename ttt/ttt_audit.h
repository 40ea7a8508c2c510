// `pgolf ttt --audit`: legality checks of the TTT pipeline with the real model
// on a sample of the validation documents (short ones: 2-3 chunks, several
// per batch). Each check reruns the whole pipeline on an edited sample and
// compares per-target scores bit for bit:
//   coverage      every target after the first BOS scored exactly once
//   causality     editing a document's tokens after position p leaves every
//                 score of its targets <= p unchanged (score before update)
//   independence  editing another document of the same batch leaves every
//                 other document's scores unchanged
//   no-op at lr 0 with lr = 0 the TTT scores equal the plain model's
//   updates       with the given lr, later chunks score differently
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ttt/ttt_runner.h"

namespace pgolf {

struct TttAuditCheck {
  std::string name;
  bool ok = false;
  std::string detail;
};

struct TttAudit {
  uint64_t sample_docs = 0, sample_targets = 0;
  std::vector<TttAuditCheck> checks;
  bool ok() const;
};

// opt: the run's options (recipe, knobs, precision); its batch size, ranks,
// prefix and progress are replaced for the sample runs.
TttAudit audit_ttt(const GptWeights& w, const std::vector<uint16_t>& tokens, const ByteCounter& bytes,
                   const TttOptions& opt, uint32_t sample_docs = 8, uint32_t batch_docs = 4);

}  // namespace pgolf
