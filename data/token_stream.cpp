#include "data/token_stream.h"

#include <algorithm>
#include <cstring>
#include <glob.h>
#include <sys/stat.h>

#include "data/error.h"

namespace pgolf {

static std::string base_name(const std::string& p) {
  size_t s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

std::vector<std::string> expand_shard_paths(const std::vector<std::string>& patterns) {
  if (patterns.empty()) fail("(no shards)", "no shard path or glob given");
  std::vector<std::string> out;
  for (const std::string& pat : patterns) {
    glob_t g{};
    int rc = ::glob(pat.c_str(), GLOB_ERR, nullptr, &g);
    size_t before = out.size();
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    if (out.size() == before) {
      struct stat st {};
      if (pat.find_first_of("*?[") == std::string::npos && ::stat(pat.c_str(), &st) != 0)
        fail(pat, "no such file");
      fail(pat, "glob matches no files");
    }
  }
  // Name order (the reference sorts the paths of one directory); ties by full path.
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    std::string ba = base_name(a), bb = base_name(b);
    return ba != bb ? ba < bb : a < b;
  });
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

TokenStream::TokenStream(const std::vector<std::string>& patterns) {
  for (const std::string& path : expand_shard_paths(patterns)) {
    shards_.emplace_back(path);
    begins_.push_back(total_);
    total_ += shards_.back().size();
  }
}

uint16_t TokenStream::at(uint64_t pos) const {
  uint16_t t;
  copy(pos, 1, &t);
  return t;
}

void TokenStream::copy(uint64_t begin, size_t n, uint16_t* out) const {
  if (begin > total_ || n > total_ - begin)
    throw Error("token stream: range [" + std::to_string(begin) + ", " + std::to_string(begin + n) +
                ") outside " + std::to_string(total_) + " tokens");
  size_t s = std::upper_bound(begins_.begin(), begins_.end(), begin) - begins_.begin() - 1;
  while (n > 0) {
    uint64_t off = begin - begins_[s];
    size_t take = std::min<uint64_t>(n, shards_[s].size() - off);
    std::memcpy(out, shards_[s].tokens() + off, take * sizeof(uint16_t));
    out += take;
    begin += take;
    n -= take;
    ++s;
  }
}

std::vector<uint16_t> TokenStream::slice(uint64_t begin, size_t n) const {
  std::vector<uint16_t> v(n);
  copy(begin, n, v.data());
  return v;
}

void TokenStream::check_ids_below(uint32_t vocab, const std::string& vocab_source) const {
  for (const MappedShard& s : shards_) {
    const uint16_t* t = s.tokens();
    for (size_t i = 0; i < s.size(); ++i)
      if (t[i] >= vocab)
        fail(s.path(), "token id " + std::to_string(t[i]) + " at position " + std::to_string(i) +
                           " is >= vocab size " + std::to_string(vocab) + " of " + vocab_source);
  }
}

}  // namespace pgolf
