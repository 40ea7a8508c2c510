#include "data/sentencepiece_module.h"

#include <cstdlib>
#include <dlfcn.h>
#include <limits.h>
#include <string>
#include <unistd.h>
#include <vector>

#include "data/error.h"

#ifndef PGOLF_SP_MODULE_BUILD_PATH
#define PGOLF_SP_MODULE_BUILD_PATH ""
#endif

namespace pgolf {

namespace {

constexpr const char* kModuleName = "libpgolf_sentencepiece.so";

std::vector<std::string> candidates() {
  std::vector<std::string> c;
  if (const char* env = std::getenv("PGOLF_SENTENCEPIECE_MODULE")) c.emplace_back(env);
  char exe[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string dir(exe, static_cast<size_t>(n));
    dir = dir.substr(0, dir.find_last_of('/'));
    c.push_back(dir + "/" + kModuleName);
    c.push_back(dir + "/../lib/" + kModuleName);
  }
  if (*PGOLF_SP_MODULE_BUILD_PATH) c.emplace_back(PGOLF_SP_MODULE_BUILD_PATH);
  return c;
}

template <class F>
void bind(void* h, const char* name, F& f, const std::string& path) {
  f = reinterpret_cast<F>(::dlsym(h, name));
  if (!f) fail(path, std::string("missing symbol ") + name);
}

SentencePieceModule load_module() {
  std::string tried, last_error;
  for (const std::string& path : candidates()) {
    if (::access(path.c_str(), R_OK) != 0) {
      tried += (tried.empty() ? "" : ", ") + path;
      continue;
    }
    // A new link-map namespace: the module gets its own copies of its
    // dependencies, so SentencePiece's bundled protobuf never meets libtorch's.
    void* h = ::dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) fail(path, std::string("cannot load the SentencePiece module: ") + ::dlerror());
    SentencePieceModule m{};
    bind(h, "pgolf_sp_load", m.load, path);
    bind(h, "pgolf_sp_free", m.free, path);
    bind(h, "pgolf_sp_size", m.size, path);
    bind(h, "pgolf_sp_special_id", m.special_id, path);
    bind(h, "pgolf_sp_piece", m.piece, path);
    bind(h, "pgolf_sp_score", m.score, path);
    bind(h, "pgolf_sp_kind", m.kind, path);
    bind(h, "pgolf_sp_encode", m.encode, path);
    bind(h, "pgolf_sp_decode", m.decode, path);
    bind(h, "pgolf_sp_train", m.train, path);
    bind(h, "pgolf_sp_release", m.release, path);
    return m;
  }
  fail(kModuleName, "SentencePiece module not found (looked at: " + tried +
                        "); set PGOLF_SENTENCEPIECE_MODULE to its path");
}

}  // namespace

const SentencePieceModule& sentencepiece_module() {
  static const SentencePieceModule m = load_module();
  return m;
}

}  // namespace pgolf
