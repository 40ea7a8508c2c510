#include "data/document_index.h"

#include <algorithm>
#include <cstdint>

#include "data/token_stream.h"

namespace pgolf {

DocumentIndex::DocumentIndex(const TokenStream& stream, uint16_t bos_id) : total_(stream.size()) {
  stream.for_each_span([&](const uint16_t* t, size_t n, uint64_t base) {
    for (size_t i = 0; i < n; ++i)
      if (t[i] == bos_id) starts_.push_back(base + i);
  });
}

DocumentIndex::DocumentIndex(const uint16_t* tokens, size_t n, uint16_t bos_id) : total_(n) {
  for (size_t i = 0; i < n; ++i)
    if (tokens[i] == bos_id) starts_.push_back(i);
}

size_t DocumentIndex::doc_at(uint64_t pos) const {
  auto it = std::upper_bound(starts_.begin(), starts_.end(), pos);
  if (it == starts_.begin()) return SIZE_MAX;
  return static_cast<size_t>(it - starts_.begin()) - 1;
}

}  // namespace pgolf
