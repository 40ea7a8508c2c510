// A SentencePiece tokenizer, loaded from a .model file and validated.
// The SentencePiece headers stay out of this header (pimpl).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pgolf {

enum class PieceKind : uint8_t { Normal, Control, Unknown, Unused, Byte, UserDefined };

class Tokenizer {
 public:
  explicit Tokenizer(const std::string& model_path);  // throws pgolf::Error naming the file
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  const std::string& path() const { return path_; }
  // SHA-256 of the model file's bytes: identifies the tokenizer a model was trained with.
  const std::string& fingerprint() const { return fingerprint_; }
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  int pad_id() const;
  int unk_id() const;

  const std::string& piece(int id) const { return pieces_.at(static_cast<size_t>(id)); }
  PieceKind kind(int id) const { return kinds_.at(static_cast<size_t>(id)); }
  float score(int id) const { return scores_.at(static_cast<size_t>(id)); }

  std::vector<int> encode(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_, fingerprint_;
  std::vector<std::string> pieces_;
  std::vector<PieceKind> kinds_;
  std::vector<float> scores_;
};

}  // namespace pgolf
