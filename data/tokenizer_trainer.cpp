#include "data/tokenizer_trainer.h"

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <thread>
#include <vector>

#include "data/atomic_file.h"
#include "data/error.h"
#include "data/jsonl.h"
#include "data/sentencepiece_module.h"
#include "data/text.h"
#include "data/tokenizer.h"

namespace pgolf {

namespace {

// The documents the trainer sees, prepared the way the reference does: NUL ->
// space, stripped, empty ones skipped. All are read (and checked) before
// training starts, so a bad line fails fast and leaves no output.
class DocumentSentences {
 public:
  DocumentSentences(const std::string& path, uint64_t skip_docs, uint64_t max_docs) {
    JsonlDocuments docs(path);
    std::string text;
    for (uint64_t i = 0; i < skip_docs && docs.next(text); ++i) {
    }
    for (uint64_t read = 0; !(max_docs && read >= max_docs) && docs.next(text); ++read) {
      std::replace(text.begin(), text.end(), '\0', ' ');
      std::string s = strip_unicode_whitespace(text);
      if (!s.empty()) sentences_.push_back(std::move(s));
    }
  }
  static int next(void* self, const char** text, size_t* len) {
    auto* d = static_cast<DocumentSentences*>(self);
    if (d->pos_ == d->sentences_.size()) return 0;
    const std::string& s = d->sentences_[d->pos_++];
    *text = s.data();
    *len = s.size();
    return 1;
  }
  uint64_t count() const { return sentences_.size(); }

 private:
  std::vector<std::string> sentences_;
  size_t pos_ = 0;
};

}  // namespace

TokenizerTrainStats train_tokenizer(const TokenizerTrainOptions& opt) {
  if (opt.vocab_size < 260 || opt.vocab_size > 65536)
    throw Error("--vocab-size must be in [260, 65536] (256 byte pieces + 4 specials), got " +
                std::to_string(opt.vocab_size));
  if (opt.out_prefix.empty()) throw Error("--out: an output prefix is required");
  DocumentSentences sentences(opt.docs_path, opt.skip_docs, opt.max_docs);
  if (sentences.count() == 0) fail(opt.docs_path, "no non-empty documents to train on");
  const int threads = opt.threads > 0 ? opt.threads : std::max(1u, std::thread::hardware_concurrency());
  const std::vector<std::pair<std::string, std::string>> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"character_coverage", "0.999"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"normalization_rule_name", "nmt_nfkc"},
      {"add_dummy_prefix", "false"},
      {"pad_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"unk_id", "3"},
      {"hard_vocab_limit", "false"},
      {"num_threads", std::to_string(threads)},
      {"minloglevel", "1"},
  };
  std::vector<const char*> keys, values;
  for (const auto& kv : args) {
    keys.push_back(kv.first.c_str());
    values.push_back(kv.second.c_str());
  }
  const SentencePieceModule& sp = sentencepiece_module();
  char err[1024] = "";
  char* proto = nullptr;
  size_t proto_len = 0;
  const int rc = sp.train(keys.data(), values.data(), keys.size(), &DocumentSentences::next, &sentences, &proto,
                          &proto_len, err, sizeof(err));
  if (rc != 0) fail(opt.docs_path, "tokenizer training failed: " + std::string(err));
  const std::string model(proto, proto_len);
  sp.release(proto);

  TokenizerTrainStats stats;
  stats.sentences = sentences.count();
  stats.model_path = opt.out_prefix + ".model";
  stats.vocab_path = opt.out_prefix + ".vocab";
  write_file_atomic(stats.model_path, model);
  // The .vocab file (piece TAB score) from the model just written.
  Tokenizer tok(stats.model_path);
  std::ostringstream vocab;
  for (int id = 0; id < tok.vocab_size(); ++id) vocab << tok.piece(id) << '\t' << tok.score(id) << '\n';
  stats.vocab_size = tok.vocab_size();
  write_file_atomic(stats.vocab_path, vocab.str());
  return stats;
}

}  // namespace pgolf
