// Documents of a token stream: a document is the span from one BOS up to the
// next BOS (SPEC §1). Tokens before the first BOS, if any, belong to no document.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pgolf {

class TokenStream;

struct DocumentSpan {
  uint64_t begin;  // position of its BOS
  uint64_t end;    // one past its last token (next BOS or end of stream)
  uint64_t length() const { return end - begin; }
};

class DocumentIndex {
 public:
  DocumentIndex(const TokenStream& stream, uint16_t bos_id);
  DocumentIndex(const uint16_t* tokens, size_t n, uint16_t bos_id);

  size_t size() const { return starts_.size(); }
  DocumentSpan doc(size_t i) const { return {starts_[i], i + 1 < starts_.size() ? starts_[i + 1] : total_}; }
  uint64_t leading_tokens() const { return starts_.empty() ? total_ : starts_[0]; }  // before the first BOS
  uint64_t stream_size() const { return total_; }
  // Index of the document containing position pos; SIZE_MAX if before the first BOS.
  size_t doc_at(uint64_t pos) const;

 private:
  std::vector<uint64_t> starts_;
  uint64_t total_ = 0;
};

}  // namespace pgolf
