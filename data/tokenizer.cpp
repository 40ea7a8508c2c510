#include "data/tokenizer.h"

#include "data/atomic_file.h"
#include "data/error.h"
#include "data/sentencepiece_module.h"
#include "data/sha256.h"

namespace pgolf {

struct Tokenizer::Impl {
  const SentencePieceModule& api = sentencepiece_module();
  pgolf_sp* sp = nullptr;
  ~Impl() {
    if (sp) api.free(sp);
  }
};

Tokenizer::Tokenizer(const std::string& model_path) : impl_(std::make_unique<Impl>()), path_(model_path) {
  const std::string bytes = read_file(model_path);
  if (bytes.empty()) fail(model_path, "empty file, not a SentencePiece model");
  char err[512] = "";
  impl_->sp = impl_->api.load(bytes.data(), bytes.size(), err, sizeof(err));
  if (!impl_->sp) fail(model_path, "not a SentencePiece model (it does not parse as one)");
  const int n = impl_->api.size(impl_->sp);
  // A protobuf parser accepts many byte strings; a real model has pieces and
  // exactly one unknown piece.
  if (n <= 0) fail(model_path, "not a SentencePiece model (no pieces)");
  if (n > 65536) fail(model_path, "vocabulary of " + std::to_string(n) + " pieces does not fit uint16 shards");
  int unknown = 0;
  pieces_.resize(static_cast<size_t>(n));
  kinds_.resize(static_cast<size_t>(n));
  scores_.resize(static_cast<size_t>(n));
  for (int id = 0; id < n; ++id) {
    size_t len = 0;
    const char* p = impl_->api.piece(impl_->sp, id, &len);
    pieces_[id].assign(p, len);
    scores_[id] = impl_->api.score(impl_->sp, id);
    switch (impl_->api.kind(impl_->sp, id)) {
      case PGOLF_SP_CONTROL: kinds_[id] = PieceKind::Control; break;
      case PGOLF_SP_UNKNOWN: kinds_[id] = PieceKind::Unknown; ++unknown; break;
      case PGOLF_SP_UNUSED: kinds_[id] = PieceKind::Unused; break;
      case PGOLF_SP_BYTE: kinds_[id] = PieceKind::Byte; break;
      default: kinds_[id] = PieceKind::Normal;
    }
  }
  if (unknown != 1)
    fail(model_path, "not a SentencePiece model (expected one unknown piece, found " + std::to_string(unknown) + ")");
  fingerprint_ = Sha256::hex(bytes.data(), bytes.size());
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

int Tokenizer::vocab_size() const { return static_cast<int>(pieces_.size()); }
int Tokenizer::pad_id() const { return impl_->api.special_id(impl_->sp, 0); }
int Tokenizer::bos_id() const { return impl_->api.special_id(impl_->sp, 1); }
int Tokenizer::eos_id() const { return impl_->api.special_id(impl_->sp, 2); }
int Tokenizer::unk_id() const { return impl_->api.special_id(impl_->sp, 3); }

std::vector<int> Tokenizer::encode(const std::string& text) const {
  char err[512] = "";
  int* ids = nullptr;
  size_t n = 0;
  if (impl_->api.encode(impl_->sp, text.data(), text.size(), &ids, &n, err, sizeof(err)) != 0)
    fail(path_, "encode failed: " + std::string(err));
  std::vector<int> out(ids, ids + n);
  impl_->api.release(ids);
  return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (int id : ids)
    if (id < 0 || id >= vocab_size()) fail(path_, "cannot decode token id " + std::to_string(id));
  char err[512] = "";
  char* text = nullptr;
  size_t n = 0;
  if (impl_->api.decode(impl_->sp, ids.data(), ids.size(), &text, &n, err, sizeof(err)) != 0)
    fail(path_, "decode failed: " + std::string(err));
  std::string out(text, n);
  impl_->api.release(text);
  return out;
}

}  // namespace pgolf
