// The bpb denominator (SPEC §2): how many UTF-8 bytes of text each predicted
// token stands for, given the token before it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pgolf {

class Tokenizer;
class TokenStream;

struct ByteTotals {
  uint64_t targets = 0;
  uint64_t bytes = 0;
};

class ByteCounter {
 public:
  // Tables sized max(tokenizer vocab, model_vocab); ids beyond the tokenizer
  // count as boundary tokens with zero bytes.
  explicit ByteCounter(const Tokenizer& tok, int model_vocab = 0);
  // From explicit tables (tests, other tokenizers).
  ByteCounter(std::vector<uint8_t> base_bytes, std::vector<uint8_t> leading_space, std::vector<uint8_t> boundary);

  size_t size() const { return base_bytes_.size(); }
  uint8_t base_bytes(uint32_t id) const { return base_bytes_[id]; }
  bool leading_space(uint32_t id) const { return leading_space_[id] != 0; }
  bool boundary(uint32_t id) const { return boundary_[id] != 0; }

  // Bytes of predicting `target` after `prev`. Ids must be < size().
  uint32_t bytes(uint32_t prev, uint32_t target) const {
    return base_bytes_[target] + (leading_space_[target] & (boundary_[prev] ^ 1));
  }
  // Targets tokens[1..n): each scored with its predecessor.
  ByteTotals count(const uint16_t* tokens, size_t n) const;
  // Every target of the stream (positions 1..N-1), across shard boundaries.
  ByteTotals count(const TokenStream& stream) const;

 private:
  std::vector<uint8_t> base_bytes_, leading_space_, boundary_;
};

// Number of UTF-8 bytes in the "text" of each JSONL document (no normalization).
std::vector<uint64_t> raw_utf8_bytes_per_document(const std::string& jsonl_path);

}  // namespace pgolf
