// The SentencePiece side of data/sentencepiece_shim.h. Built as its own shared
// module; never linked into pgolf directly.
#include "data/sentencepiece_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

struct pgolf_sp {
  sentencepiece::SentencePieceProcessor proc;
};

namespace {

void set_err(char* err, size_t errlen, const std::string& msg) {
  if (!err || errlen == 0) return;
  size_t n = std::min(msg.size(), errlen - 1);
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

class CallbackSentences : public sentencepiece::SentenceIterator {
 public:
  CallbackSentences(pgolf_sp_next_fn next, void* ctx) : next_(next), ctx_(ctx) { Next(); }
  bool done() const override { return done_; }
  void Next() override {
    const char* t = nullptr;
    size_t n = 0;
    if (next_(ctx_, &t, &n)) value_.assign(t, n);
    else done_ = true;
  }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  pgolf_sp_next_fn next_;
  void* ctx_;
  std::string value_;
  bool done_ = false;
};

}  // namespace

extern "C" {

pgolf_sp* pgolf_sp_load(const char* bytes, size_t n, char* err, size_t errlen) {
  auto* sp = new pgolf_sp;
  auto st = sp->proc.LoadFromSerializedProto(std::string(bytes, n));
  if (!st.ok()) {
    set_err(err, errlen, st.ToString());
    delete sp;
    return nullptr;
  }
  return sp;
}

void pgolf_sp_free(pgolf_sp* sp) { delete sp; }
int pgolf_sp_size(const pgolf_sp* sp) { return sp->proc.GetPieceSize(); }

int pgolf_sp_special_id(const pgolf_sp* sp, int which) {
  switch (which) {
    case 0: return sp->proc.pad_id();
    case 1: return sp->proc.bos_id();
    case 2: return sp->proc.eos_id();
    default: return sp->proc.unk_id();
  }
}

const char* pgolf_sp_piece(const pgolf_sp* sp, int id, size_t* len) {
  const std::string& p = sp->proc.IdToPiece(id);
  *len = p.size();
  return p.data();
}

float pgolf_sp_score(const pgolf_sp* sp, int id) { return sp->proc.GetScore(id); }

int pgolf_sp_kind(const pgolf_sp* sp, int id) {
  if (sp->proc.IsControl(id)) return PGOLF_SP_CONTROL;
  if (sp->proc.IsUnknown(id)) return PGOLF_SP_UNKNOWN;
  if (sp->proc.IsUnused(id)) return PGOLF_SP_UNUSED;
  if (sp->proc.IsByte(id)) return PGOLF_SP_BYTE;
  return PGOLF_SP_NORMAL;
}

int pgolf_sp_encode(const pgolf_sp* sp, const char* text, size_t n, int** ids, size_t* nids, char* err, size_t errlen) {
  std::vector<int> out;
  auto st = sp->proc.Encode(std::string_view(text, n), &out);
  if (!st.ok()) {
    set_err(err, errlen, st.ToString());
    return 1;
  }
  *nids = out.size();
  *ids = static_cast<int*>(std::malloc(std::max<size_t>(out.size(), 1) * sizeof(int)));
  if (!*ids) { set_err(err, errlen, "out of memory"); return 1; }
  std::memcpy(*ids, out.data(), out.size() * sizeof(int));
  return 0;
}

int pgolf_sp_decode(const pgolf_sp* sp, const int* ids, size_t nids, char** text, size_t* n, char* err, size_t errlen) {
  std::string out;
  auto st = sp->proc.Decode(std::vector<int>(ids, ids + nids), &out);
  if (!st.ok()) {
    set_err(err, errlen, st.ToString());
    return 1;
  }
  *n = out.size();
  *text = static_cast<char*>(std::malloc(out.size() + 1));
  if (!*text) { set_err(err, errlen, "out of memory"); return 1; }
  std::memcpy(*text, out.data(), out.size());
  (*text)[out.size()] = '\0';
  return 0;
}

int pgolf_sp_train(const char* const* keys, const char* const* values, size_t nkv, pgolf_sp_next_fn next, void* ctx,
                   char** model, size_t* model_len, char* err, size_t errlen) {
  std::unordered_map<std::string, std::string> args;
  for (size_t i = 0; i < nkv; ++i) args[keys[i]] = values[i];
  CallbackSentences sentences(next, ctx);
  std::string proto;
  sentencepiece::util::Status st;
  try {
    st = sentencepiece::SentencePieceTrainer::Train(args, &sentences, &proto);
  } catch (const std::exception& e) {
    set_err(err, errlen, e.what());
    return 1;
  }
  if (!st.ok()) {
    set_err(err, errlen, st.ToString());
    return 1;
  }
  *model_len = proto.size();
  *model = static_cast<char*>(std::malloc(std::max<size_t>(proto.size(), 1)));
  if (!*model) { set_err(err, errlen, "out of memory"); return 1; }
  std::memcpy(*model, proto.data(), proto.size());
  return 0;
}

void pgolf_sp_release(void* p) { std::free(p); }

}  // extern "C"
