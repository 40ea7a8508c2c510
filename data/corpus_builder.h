// `pgolf data build`: JSON-lines documents -> token shards in the reference
// layout. Each document is written as [BOS] + encode(text); the first
// `val_docs` documents go to fineweb_val_*, the rest to fineweb_train_*;
// shards hold `shard_tokens` tokens (documents run across shard ends), as
// the reference exporter does.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pgolf {

class Tokenizer;

struct CorpusBuildOptions {
  std::string docs_path;
  std::string out_dir;
  uint64_t val_docs = 50000;           // the reference's FineWeb validation size
  uint64_t shard_tokens = 100000000;   // the reference's shard size (1e8)
  int threads = 0;                     // 0 = hardware concurrency
};

struct CorpusBuildStats {
  uint64_t docs_val = 0, docs_train = 0, tokens_val = 0, tokens_train = 0;
  std::vector<std::string> files;  // final paths, in write order
};

// All shards are staged in a temporary directory inside out_dir and moved into
// place only when every document was read and encoded; stale shards of an
// earlier build are removed then. On error nothing in out_dir changes.
CorpusBuildStats build_corpus(const CorpusBuildOptions& opt, const Tokenizer& tok);

}  // namespace pgolf
