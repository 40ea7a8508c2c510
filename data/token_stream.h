// A split = the concatenation of its shards in name order (SPEC §1).
// TokenStream maps every shard and offers random access over the whole.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/shard.h"

namespace pgolf {

// Expands each argument as a glob (no match = error naming the pattern);
// a plain existing path matches itself. Result sorted by file name, duplicates removed.
std::vector<std::string> expand_shard_paths(const std::vector<std::string>& patterns);

class TokenStream {
 public:
  explicit TokenStream(const std::vector<std::string>& patterns);  // globs or paths

  size_t size() const { return total_; }
  size_t num_shards() const { return shards_.size(); }
  const MappedShard& shard(size_t i) const { return shards_[i]; }
  uint64_t shard_begin(size_t i) const { return begins_[i]; }

  uint16_t at(uint64_t pos) const;
  // Copies tokens [begin, begin + n) across shard boundaries into out.
  void copy(uint64_t begin, size_t n, uint16_t* out) const;
  std::vector<uint16_t> slice(uint64_t begin, size_t n) const;

  // Throws naming the shard and position of the first token id >= vocab.
  void check_ids_below(uint32_t vocab, const std::string& vocab_source) const;

  // Calls fn(const uint16_t* p, size_t n, uint64_t global_begin) per shard.
  template <class Fn>
  void for_each_span(Fn&& fn) const {
    for (size_t i = 0; i < shards_.size(); ++i) fn(shards_[i].tokens(), shards_[i].size(), begins_[i]);
  }

 private:
  std::vector<MappedShard> shards_;
  std::vector<uint64_t> begins_;
  uint64_t total_ = 0;
};

}  // namespace pgolf
