#include "data/corpus_builder.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include "data/error.h"
#include "data/jsonl.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace pgolf {

namespace {

// A temporary directory removed with its files unless released.
class StagingDir {
 public:
  explicit StagingDir(const std::string& parent) {
    std::string templ = parent + "/.pgolf-build.XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) fail(parent, std::string("cannot create staging directory: ") + std::strerror(errno));
    path_ = buf.data();
  }
  ~StagingDir() {
    for (const std::string& f : files_) ::unlink((path_ + "/" + f).c_str());
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  void add(const std::string& name) { files_.push_back(name); }
  void forget(const std::string& name) { files_.erase(std::find(files_.begin(), files_.end(), name)); }

 private:
  std::string path_;
  std::vector<std::string> files_;
};

bool is_shard_name(const std::string& name) {
  auto matches = [&](const char* prefix) {
    size_t p = std::strlen(prefix);
    return name.size() > p + 4 && name.compare(0, p, prefix) == 0 && name.compare(name.size() - 4, 4, ".bin") == 0;
  };
  return matches("fineweb_train_") || matches("fineweb_val_");
}

}  // namespace

CorpusBuildStats build_corpus(const CorpusBuildOptions& opt, const Tokenizer& tok) {
  if (opt.shard_tokens == 0 || opt.shard_tokens > static_cast<uint64_t>(INT32_MAX))
    throw Error("--shard-tokens must be in [1, 2^31-1], got " + std::to_string(opt.shard_tokens));
  const int bos = tok.bos_id();
  if (bos < 0) fail(tok.path(), "tokenizer has no BOS piece");
  JsonlDocuments docs(opt.docs_path);

  struct stat st {};
  if (::stat(opt.out_dir.c_str(), &st) != 0) {
    if (::mkdir(opt.out_dir.c_str(), 0755) != 0) fail(opt.out_dir, std::string("cannot create: ") + std::strerror(errno));
  } else if (!S_ISDIR(st.st_mode)) {
    fail(opt.out_dir, "not a directory");
  }
  StagingDir staging(opt.out_dir);

  CorpusBuildStats stats;
  std::vector<std::string> staged;  // names in write order
  std::vector<uint16_t> buf;
  buf.reserve(std::min<uint64_t>(opt.shard_tokens, 1u << 24));
  std::string split = "val";
  uint64_t shard_no[2] = {0, 0};
  auto flush = [&]() {
    if (buf.empty()) return;
    const int s = split == "val" ? 0 : 1;
    char name[64];
    std::snprintf(name, sizeof(name), "fineweb_%s_%06llu.bin", split.c_str(), (unsigned long long)shard_no[s]++);
    staging.add(name);
    write_shard(staging.path() + "/" + name, buf);
    staged.push_back(name);
    buf.clear();
  };

  const int threads = opt.threads > 0 ? opt.threads : std::max(1u, std::thread::hardware_concurrency());
  const size_t batch = 1024;
  std::vector<std::string> texts;
  std::vector<std::vector<int>> encoded;
  uint64_t ndocs = 0;
  for (;;) {
    texts.clear();
    std::string t;
    while (texts.size() < batch && docs.next(t)) texts.push_back(std::move(t));
    if (texts.empty()) break;
    encoded.assign(texts.size(), {});
    std::vector<std::thread> pool;
    std::vector<std::string> errors(static_cast<size_t>(threads));
    for (int w = 0; w < threads; ++w)
      pool.emplace_back([&, w]() {
        try {
          for (size_t i = static_cast<size_t>(w); i < texts.size(); i += static_cast<size_t>(threads))
            encoded[i] = tok.encode(texts[i]);
        } catch (const std::exception& e) {
          errors[static_cast<size_t>(w)] = e.what();
        }
      });
    for (auto& th : pool) th.join();
    for (const std::string& e : errors)
      if (!e.empty()) throw Error(e);

    for (const std::vector<int>& ids : encoded) {
      const std::string want = ndocs < opt.val_docs ? "val" : "train";
      if (want != split) {
        flush();
        split = want;
      }
      auto push = [&](int id) {
        if (id < 0 || id >= tok.vocab_size() || id > 65535)
          fail(opt.docs_path, "document " + std::to_string(ndocs) + " encodes to token id " + std::to_string(id) +
                                  " outside the tokenizer vocabulary");
        buf.push_back(static_cast<uint16_t>(id));
        if (buf.size() == opt.shard_tokens) flush();
      };
      push(bos);
      for (int id : ids) push(id);
      const uint64_t len = ids.size() + 1;
      if (split == "val") { stats.docs_val++; stats.tokens_val += len; }
      else { stats.docs_train++; stats.tokens_train += len; }
      ++ndocs;
    }
  }
  flush();
  if (opt.val_docs > ndocs)  // as the reference exporter: the split must fit the corpus
    fail(opt.docs_path, "--val-docs " + std::to_string(opt.val_docs) + " exceeds the " + std::to_string(ndocs) +
                            " documents in the file");

  // Everything is staged: replace the old shards of out_dir.
  if (DIR* d = ::opendir(opt.out_dir.c_str())) {
    while (dirent* e = ::readdir(d))
      if (is_shard_name(e->d_name)) ::unlink((opt.out_dir + "/" + e->d_name).c_str());
    ::closedir(d);
  }
  for (const std::string& name : staged) {
    const std::string dst = opt.out_dir + "/" + name;
    if (::rename((staging.path() + "/" + name).c_str(), dst.c_str()) != 0)
      fail(dst, std::string("rename failed: ") + std::strerror(errno));
    staging.forget(name);
    stats.files.push_back(dst);
  }
  return stats;
}

}  // namespace pgolf
