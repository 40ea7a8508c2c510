// Helpers shared by the tests: a scratch directory and the shared/ data paths.
#pragma once
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "data/atomic_file.h"
#include "data/byte_counter.h"
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

// zlib's deflate of `in`: window_bits 15 gives a zlib stream, 16 + 15 a gzip
// member, -15 raw deflate.
inline std::string deflate_bytes(const std::string& in, int window_bits, int level = 9) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, level, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, in.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(&out[0]);
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
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


// Byte tables for synthetic vocabularies: ids 0-3 are boundaries (no bytes),
// the others 1-4 bytes, every third with a leading space.
inline ByteCounter synthetic_byte_counter(int vocab) {
  std::vector<uint8_t> base(vocab), space(vocab), boundary(vocab);
  for (int id = 0; id < vocab; ++id) {
    boundary[id] = id < 4;
    base[id] = id < 4 ? 0 : uint8_t(1 + id % 4);
    space[id] = id >= 4 && id % 3 == 0;
  }
  return ByteCounter(base, space, boundary);
}

// `prefix` (tokens before the first BOS), then documents [BOS, 3..42 random
// ids >= 4] until n tokens; the last document is cut at n.
inline std::vector<uint16_t> synthetic_bos_stream(std::vector<uint16_t> prefix, size_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint16_t> tok = std::move(prefix);
  while (tok.size() < n) {
    tok.push_back(1);
    const int len = 3 + int(rng() % 40);
    for (int i = 0; i < len; ++i) tok.push_back(uint16_t(4 + rng() % (vocab - 4)));
  }
  tok.resize(n);
  return tok;
}

}  // namespace pgolf::test
