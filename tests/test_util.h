// Helpers shared by the tests: a scratch directory and the shared/ data paths.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "data/atomic_file.h"
#include "data/error.h"

namespace pgolf::test {

inline std::string shared(const std::string& rel) { return std::string(PGOLF_SHARED_DIR) + "/" + rel; }
inline const std::string kTokenizer = shared("data/fineweb_8192_bpe.model");
inline const std::string kValShard = shared("data/corpus/fineweb_val_000000.bin");
inline const std::string kValDocs = shared("data/corpus/docs_val.jsonl");

// The message of the pgolf::Error f() throws, or "" if it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

// A fresh directory removed (with its contents) at scope exit.
class TempDir {
 public:
  TempDir() {
    char templ[] = "/tmp/pgolf-test.XXXXXX";
    path_ = ::mkdtemp(templ);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }
  // Names of the entries in the directory (no . or ..), sorted.
  std::vector<std::string> list() const;

 private:
  std::string path_;
};

std::vector<std::string> list_dir(const std::string& dir);
inline std::vector<std::string> TempDir::list() const { return list_dir(path_); }

}  // namespace pgolf::test
