// `pgolf data train-tokenizer`: SentencePiece BPE with the reference
// trainer's settings (byte fallback, split digits, nmt_nfkc, no dummy prefix,
// pad/bos/eos/unk = 0/1/2/3, character coverage 0.999, soft vocab limit).
#pragma once
#include <cstdint>
#include <string>

namespace pgolf {

struct TokenizerTrainOptions {
  std::string docs_path;    // JSON lines with "text"
  std::string out_prefix;   // writes PREFIX.model and PREFIX.vocab
  int vocab_size = 8192;
  uint64_t skip_docs = 0;   // leave out the first N documents (a validation split)
  uint64_t max_docs = 0;    // then use at most N documents; 0 = all
  int threads = 0;          // 0 = hardware concurrency
};

struct TokenizerTrainStats {
  uint64_t sentences = 0;   // documents fed to the trainer (blank ones skipped)
  int vocab_size = 0;       // pieces in the trained model
  std::string model_path, vocab_path;
};

TokenizerTrainStats train_tokenizer(const TokenizerTrainOptions& opt);

}  // namespace pgolf
