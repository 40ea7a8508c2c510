#include "data/byte_counter.h"

#include <algorithm>

#include "data/error.h"
#include "data/jsonl.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"

namespace pgolf {

static const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's word-boundary mark

ByteCounter::ByteCounter(const Tokenizer& tok, int model_vocab) {
  const int sp_vocab = tok.vocab_size();
  const size_t n = static_cast<size_t>(std::max(sp_vocab, model_vocab));
  base_bytes_.assign(n, 0);
  leading_space_.assign(n, 0);
  boundary_.assign(n, 1);  // ids beyond the tokenizer are boundaries
  for (int id = 0; id < sp_vocab; ++id) {
    const PieceKind k = tok.kind(id);
    if (k == PieceKind::Control || k == PieceKind::Unknown || k == PieceKind::Unused) continue;
    boundary_[id] = 0;
    if (k == PieceKind::Byte) {
      base_bytes_[id] = 1;
      continue;
    }
    const std::string& p = tok.piece(id);
    const bool space = p.compare(0, kSpace.size(), kSpace) == 0;
    leading_space_[id] = space;
    const size_t len = p.size() - (space ? kSpace.size() : 0);
    if (len > 255) fail(tok.path(), "piece " + std::to_string(id) + " longer than 255 bytes");
    base_bytes_[id] = static_cast<uint8_t>(len);
  }
}

ByteCounter::ByteCounter(std::vector<uint8_t> base_bytes, std::vector<uint8_t> leading_space,
                         std::vector<uint8_t> boundary)
    : base_bytes_(std::move(base_bytes)), leading_space_(std::move(leading_space)), boundary_(std::move(boundary)) {
  if (leading_space_.size() != base_bytes_.size() || boundary_.size() != base_bytes_.size())
    throw Error("ByteCounter: tables of different sizes");
}

ByteTotals ByteCounter::count(const uint16_t* t, size_t n) const {
  ByteTotals r;
  if (n < 2) return r;
  const size_t vocab = size();
  for (size_t i = 1; i < n; ++i) {
    if (t[i] >= vocab || t[i - 1] >= vocab)
      throw Error("ByteCounter: token id " + std::to_string(std::max(t[i], t[i - 1])) + " >= table size " +
                  std::to_string(vocab));
    r.bytes += bytes(t[i - 1], t[i]);
  }
  r.targets = n - 1;
  return r;
}

ByteTotals ByteCounter::count(const TokenStream& stream) const {
  ByteTotals r;
  bool have_prev = false;
  uint16_t prev = 0;
  stream.for_each_span([&](const uint16_t* t, size_t n, uint64_t) {
    if (n == 0) return;
    if (have_prev) {
      uint16_t pair[2] = {prev, t[0]};
      ByteTotals a = count(pair, 2);
      r.bytes += a.bytes;
      r.targets += a.targets;
    }
    ByteTotals b = count(t, n);
    r.bytes += b.bytes;
    r.targets += b.targets;
    prev = t[n - 1];
    have_prev = true;
  });
  return r;
}

std::vector<uint64_t> raw_utf8_bytes_per_document(const std::string& jsonl_path) {
  std::vector<uint64_t> out;
  JsonlDocuments docs(jsonl_path);
  std::string text;
  while (docs.next(text)) out.push_back(text.size());
  return out;
}

}  // namespace pgolf
