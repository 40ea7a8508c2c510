// `pgolf report`: what an eval or TTT dump (eval/eval_dump.h) says, as a short
// text summary and SVG figures -- per-document bpb against document length,
// and, for TTT dumps with chunk data, the mean TTT gain by chunk index.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/eval_dump.h"

namespace pgolf {

// Documents with length in [lo, hi] tokens; sums over their scored targets.
struct LengthBucket {
  uint64_t lo = 0, hi = 0;
  uint64_t docs = 0, targets = 0, bytes = 0;
  double nll = 0, nll_base = 0;  // nll_base: only when the dump has docs/nll_base
  double bpb() const;
  double bpb_base() const;
};

// Chunks with one index (0 = a document's first chunk), over all documents.
struct ChunkGain {
  uint32_t index = 0;
  uint64_t chunks = 0, bytes = 0;
  double nll = 0, nll_base = 0;
  double gain_bpb() const;  // bpb without TTT minus bpb with it (ratio of sums)
};

// Buckets by powers of two of the document length (empty ones left out);
// documents with no scored byte are skipped.
std::vector<LengthBucket> length_buckets(const EvalDump& d);
// Empty unless the dump has chunks/nll_base; chunks with a NaN NLL are skipped.
std::vector<ChunkGain> chunk_gains(const EvalDump& d);

std::string doc_bpb_svg(const EvalDump& d, const std::vector<LengthBucket>& buckets);
std::string ttt_gain_svg(const EvalDump& d, const std::vector<ChunkGain>& gains);

struct Report {
  EvalDump dump;
  std::vector<LengthBucket> buckets;
  std::vector<ChunkGain> gains;
  std::vector<std::string> files;  // SVGs written
  std::string summary;             // the text table
};

// Reads the dump and writes PREFIX_docs.svg (and PREFIX_ttt_gain.svg when
// chunk data with a baseline is present), each atomically. Throws
// pgolf::Error "PATH: problem" for a missing, corrupt or wrong-schema file.
Report write_report(const std::string& dump_path, const std::string& prefix);

// The default PREFIX: the dump's path without its .h5 / .hdf5 extension.
std::string default_report_prefix(const std::string& dump_path);

}  // namespace pgolf
