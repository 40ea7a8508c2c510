// Tests for the demo-corpus engine: small synthetic archives and texts built
// here, plus one end-to-end check that runs only when the three tarballs are
// already cached (tests never download).
#include <gtest/gtest.h>

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>

#include "data/atomic_file.h"
#include "data/demo_corpus.h"
#include "tests/test_util.h"
#include "data/text.h"
#include "data/error.h"
#include "data/sha256.h"

namespace {

// ---- helpers: build tar and gzip bytes in memory --------------------------------

void put_str(std::string& h, size_t off, size_t width, const std::string& s) {
  h.replace(off, std::min(width, s.size()), s.substr(0, width));
}

void put_octal(std::string& h, size_t off, size_t width, uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%0*llo", static_cast<int>(width - 1), static_cast<unsigned long long>(v));
  put_str(h, off, width - 1, buf);
}

std::string tar_header(const std::string& name, uint64_t size, char type = '0',
                       const std::string& prefix = "") {
  std::string h(512, '\0');
  put_str(h, 0, 100, name);
  put_octal(h, 100, 8, 0644);
  put_octal(h, 108, 8, 0);
  put_octal(h, 116, 8, 0);
  put_octal(h, 124, 12, size);
  put_octal(h, 136, 12, 0);
  h[156] = type;
  put_str(h, 257, 6, std::string("ustar\0", 6));
  put_str(h, 263, 2, "00");
  put_str(h, 345, 155, prefix);
  put_str(h, 148, 8, "        ");
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06o", sum);
  put_str(h, 148, 7, std::string(buf, 6) + std::string(1, '\0'));
  return h;
}

std::string pad512(std::string s) {
  s.resize(s.size() + (512 - s.size() % 512) % 512, '\0');
  return s;
}

std::string tar_member(const std::string& name, const std::string& body, char type = '0',
                       const std::string& prefix = "") {
  return tar_header(name, body.size(), type, prefix) + pad512(body);
}

std::string tar_end() { return std::string(1024, '\0'); }

std::string pax_record(const std::string& key, const std::string& value) {
  std::string rec = " " + key + "=" + value + "\n";
  size_t len = rec.size() + 1;
  while (std::to_string(len).size() + rec.size() != len) ++len;
  return std::to_string(len) + rec;
}

// Expects `fn` to throw pgolf::Error whose one-line message starts with "what: ".
template <class F>
void expect_error(F fn, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << "no pgolf::Error thrown";
  } catch (const pgolf::Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind(what + ": ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

std::string make_temp_dir() {
  std::string t = ::testing::TempDir() + "pgolf_demo_XXXXXX";
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back('\0');
  EXPECT_NE(::mkdtemp(buf.data()), nullptr);
  return buf.data();
}

}  // namespace

// ---- tar ---------------------------------------------------------------------------

TEST(DemoTar, ReadsRegularFilesPrefixPaxAndLongNames) {
  const std::string long_name = "package/" + std::string(150, 'n') + ".txt";
  std::string tar = tar_member("package/a.txt", "hello") +
                    tar_member("package/dir/", "", '5') +
                    tar_member("b.txt", std::string(700, 'x'), '0', "package/sub") +
                    tar_member("././@PaxHeader", pax_record("path", "package/pax-name.json"), 'x') +
                    tar_member("short", "[1]") +
                    tar_member("././@LongLink", long_name + std::string(1, '\0'), 'L') +
                    tar_member("truncated-name", "long") +
                    tar_member("package/empty", "") + tar_end();
  auto files = pgolf::read_tar(tar, "t.tar");
  ASSERT_EQ(files.size(), 5u);
  EXPECT_EQ(files.at("package/a.txt"), "hello");
  EXPECT_EQ(files.at("package/sub/b.txt"), std::string(700, 'x'));
  EXPECT_EQ(files.at("package/pax-name.json"), "[1]");
  EXPECT_EQ(files.at(long_name), "long");
  EXPECT_EQ(files.at("package/empty"), "");
  EXPECT_EQ(files.count("package/dir/"), 0u);

  auto only_txt = pgolf::read_tar(tar, "t.tar", [](const std::string& p) {
    return p.size() > 4 && p.compare(p.size() - 4, 4, ".txt") == 0;
  });
  EXPECT_EQ(only_txt.size(), 3u);
}

TEST(DemoTar, RejectsCorruptOrTruncatedArchives) {
  const std::string good = tar_member("package/a.txt", std::string(600, 'a')) +
                           tar_member("package/b.txt", "b") + tar_end();
  ASSERT_EQ(pgolf::read_tar(good, "g.tar").size(), 2u);

  // Cut inside the first member's data.
  expect_error([&] { pgolf::read_tar(good.substr(0, 512 + 100), "cut.tar"); }, "cut.tar");
  // Cut inside a header.
  expect_error([&] { pgolf::read_tar(good.substr(0, 512 * 3 + 10), "cut2.tar"); }, "cut2.tar");
  // No end-of-archive block.
  expect_error([&] { pgolf::read_tar(good.substr(0, good.size() - 1024), "noend.tar"); }, "noend.tar");
  expect_error([&] { pgolf::read_tar("", "empty.tar"); }, "empty.tar");
  // Flipped byte in a header: checksum mismatch.
  std::string bad = good;
  bad[10] ^= 0x20;
  expect_error([&] { pgolf::read_tar(bad, "sum.tar"); }, "sum.tar");
  // Size field that is not a number (checksum fixed up so only the size is wrong).
  std::string h = tar_header("x", 1);
  std::string junk = h;
  put_str(junk, 124, 12, "zzzzzzzzzzz");
  put_str(junk, 148, 8, "        ");
  unsigned sum = 0;
  for (unsigned char c : junk) sum += c;
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06o", sum);
  put_str(junk, 148, 7, std::string(buf, 6) + std::string(1, '\0'));
  expect_error([&] { pgolf::read_tar(junk + pad512("x") + tar_end(), "size.tar"); }, "size.tar");
  // Size claiming far more than the archive holds.
  expect_error([&] { pgolf::read_tar(tar_header("big", 1ull << 40) + tar_end(), "big.tar"); }, "big.tar");
  // Broken pax record.
  expect_error([&] { pgolf::read_tar(tar_member("p", "99 path=x\n", 'x') + tar_member("f", "") + tar_end(), "pax.tar"); },
               "pax.tar");
}

// ---- gzip --------------------------------------------------------------------------

TEST(DemoGzip, RoundTripsAndRejectsDamage) {
  std::string data;
  for (int i = 0; i < 20000; ++i) data += "line " + std::to_string(i) + "\n";
  const std::string gz = pgolf::test::deflate_bytes(data, 31, 6);
  EXPECT_EQ(pgolf::gunzip(gz, "a.tgz"), data);
  // Concatenated members decode as one stream.
  EXPECT_EQ(pgolf::gunzip(gz + pgolf::test::deflate_bytes("tail", 31, 6), "a.tgz"), data + "tail");

  expect_error([&] { pgolf::gunzip(gz.substr(0, gz.size() / 2), "half.tgz"); }, "half.tgz");
  expect_error([&] { pgolf::gunzip(gz.substr(0, gz.size() - 4), "crc.tgz"); }, "crc.tgz");
  expect_error([&] { pgolf::gunzip("not gzip at all", "plain.tgz"); }, "plain.tgz");
  expect_error([&] { pgolf::gunzip(gz + "junk", "junk.tgz"); }, "junk.tgz");
  std::string flipped = gz;
  flipped[gz.size() / 2] ^= 0xff;
  expect_error([&] { pgolf::gunzip(flipped, "flip.tgz"); }, "flip.tgz");
  expect_error([&] { pgolf::gunzip(gz, "bomb.tgz", 1000); }, "bomb.tgz");
}

TEST(DemoGzip, TarballPathEndToEnd) {
  const std::string tgz = pgolf::test::deflate_bytes(tar_member("package/ca01", "\n\n\tHi/uh ./.\n") + tar_end(), 31, 6);
  auto files = pgolf::read_tar(pgolf::gunzip(tgz, "x.tgz"), "x.tgz");
  auto docs = pgolf::brown_documents(files);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0], "Hi.");
}

// ---- Brown -------------------------------------------------------------------------

TEST(DemoBrown, StripsTagsAndRejoinsTokens) {
  const std::string tagged =
      "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, Mr./np Pye/np ./.\n"
      "It/pps was/bedz (/( late/jj )/) ;/. 3/64/cd ''/'' ''/'' long/jj ?/. ?/.\n"
      "\n\n"
      "\tSecond/od paragraph/nn :/: a/at -- b/at !/.\n"
      "   \n"
      "Third/od ./.  \n";
  EXPECT_EQ(pgolf::brown_plain_text(tagged),
            "The jury said \" no evidence \", Mr. Pye. It was (late); 3/64 \" \" long??\n\n"
            "Second paragraph: a -- b!\n\nThird.");
  EXPECT_EQ(pgolf::brown_plain_text(""), "");
}

TEST(DemoBrown, PicksOnlyCorpusFilesInNameOrder) {
  pgolf::TarFiles files = {{"package/cb02", "B/nn ./.\n"},
                           {"package/ca01", "A/nn ./.\n"},
                           {"package/CONTENTS", "x/y"},
                           {"package/README", "x/y"},
                           {"package/cs01", "x/y"},
                           {"package/sub/ca02", "x/y"},
                           {"package/package.json", "{}"}};
  EXPECT_EQ(pgolf::brown_documents(files), (std::vector<std::string>{"A.", "B."}));
}

// ---- nlp-corpus ---------------------------------------------------------------------

TEST(DemoNlp, GroupsTwentyStrippedSentences) {
  std::vector<std::string> s;
  for (int i = 0; i < 45; ++i) s.push_back(" s" + std::to_string(i) + ". ");
  auto docs = pgolf::group_sentences(s, 20);
  ASSERT_EQ(docs.size(), 3u);
  std::string first;
  for (int i = 0; i < 20; ++i) first += (i ? " s" : "s") + std::to_string(i) + ".";
  EXPECT_EQ(docs[0], first);
  EXPECT_EQ(docs[2], "s40. s41. s42. s43. s44.");
  EXPECT_TRUE(pgolf::group_sentences({}, 20).empty());
}

TEST(DemoNlp, ReadsDocFilesInNumericOrder) {
  pgolf::TarFiles files;
  for (int i = 0; i <= 10; ++i)
    files["package/builds/doc-" + std::to_string(i) + ".json"] = "[\"d" + std::to_string(i) + "\"]";
  files["package/builds/doc-12.json"] = "[\"after a gap: not read\"]";
  auto s = pgolf::nlp_sentences(files, "n.tgz");
  ASSERT_EQ(s.size(), 11u);
  EXPECT_EQ(s[2], "d2");
  EXPECT_EQ(s[10], "d10");
  files["package/builds/doc-3.json"] = "{\"not\": \"an array\"}";
  expect_error([&] { pgolf::nlp_sentences(files, "n.tgz"); }, "n.tgz:package/builds/doc-3.json");
}

TEST(DemoText, StripsUnicodeWhiteSpaceLikePython) {
  EXPECT_EQ(pgolf::strip_unicode_whitespace("\xc2\xa0 \t hi  there\n\xe3\x80\x80\xe2\x80\x89"), "hi  there");
  EXPECT_EQ(pgolf::strip_unicode_whitespace("\xc2\x85x\xc2\x85"), "x");           // U+0085
  EXPECT_EQ(pgolf::strip_unicode_whitespace("\xe2\x80\x8bx"), "\xe2\x80\x8bx");   // U+200B is not space
  EXPECT_EQ(pgolf::strip_unicode_whitespace("caf\xc3\xa9 "), "caf\xc3\xa9");
  EXPECT_EQ(pgolf::strip_unicode_whitespace("  "), "");
  EXPECT_EQ(pgolf::latin1_to_utf8("a\xe9\xa0z"), "a\xc3\xa9\xc2\xa0z");
}

// ---- SpamAssassin -------------------------------------------------------------------

TEST(DemoSpam, TakesEasyHam1ThenSpam1TextFiles) {
  pgolf::TarFiles files = {
      {"package/data/spam-1/00001.aa.txt", "spam one\n"},
      {"package/data/spam-1/00001.aa.json", "{}"},
      {"package/data/easy-ham-1/00002.bb.txt", "ham two \xe9\n"},
      {"package/data/easy-ham-1/00001.cc.txt", "From x\nham one\n"},
      {"package/data/easy-ham-2/00001.dd.txt", "other group"},
      {"package/data/hard-ham-1/00001.ee.txt", "other group"},
      {"package/data/file_list.json", "[]"},
  };
  EXPECT_EQ(pgolf::spam_documents(files),
            (std::vector<std::string>{"From x\nham one\n", "ham two \xc3\xa9\n", "spam one\n"}));
}

// ---- shuffle and output ---------------------------------------------------------------

TEST(DemoShuffle, IsDeterministicAndPinned) {
  auto numbers = [] {
    std::vector<std::string> v;
    for (int i = 0; i < 10; ++i) v.push_back(std::to_string(i));
    return v;
  };
  auto a = numbers(), b = numbers(), c = numbers();
  pgolf::shuffle_documents(a, 1337);
  pgolf::shuffle_documents(b, 1337);
  pgolf::shuffle_documents(c, 0);
  EXPECT_EQ(a, b);
  // Pinned: the corpus order must not depend on the compiler or library.
  EXPECT_EQ(a, (std::vector<std::string>{"7", "9", "3", "6", "4", "0", "1", "8", "2", "5"}));
  EXPECT_EQ(c, (std::vector<std::string>{"6", "3", "2", "9", "8", "1", "4", "7", "0", "5"}));
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, numbers());

  std::vector<std::string> empty, one{"x"};
  pgolf::shuffle_documents(empty, 1);
  pgolf::shuffle_documents(one, 1);
  EXPECT_EQ(one, std::vector<std::string>{"x"});
}

TEST(DemoOutput, JsonLineLayout) {
  EXPECT_EQ(pgolf::jsonl_line("a \"q\"\n\t\x01 caf\xc3\xa9"),
            "{\"text\": \"a \\\"q\\\"\\n\\t\\u0001 caf\xc3\xa9\"}\n");
  EXPECT_THROW(pgolf::jsonl_line("bad \xff utf8"), pgolf::Error);
}

// ---- cache ---------------------------------------------------------------------------

TEST(DemoCache, DefaultDirectoryPrecedence) {
  auto save = [](const char* n) {
    const char* v = std::getenv(n);
    return std::make_pair(v != nullptr, std::string(v ? v : ""));
  };
  auto restore = [](const char* n, const std::pair<bool, std::string>& v) {
    if (v.first) ::setenv(n, v.second.c_str(), 1); else ::unsetenv(n);
  };
  auto p = save("PGOLF_CACHE"), x = save("XDG_CACHE_HOME"), h = save("HOME");
  ::setenv("PGOLF_CACHE", "/c/pgolf", 1);
  ::setenv("XDG_CACHE_HOME", "/xdg", 1);
  ::setenv("HOME", "/home/u", 1);
  EXPECT_EQ(pgolf::default_cache_dir(), "/c/pgolf");
  ::unsetenv("PGOLF_CACHE");
  EXPECT_EQ(pgolf::default_cache_dir(), "/xdg/pgolf");
  ::unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(pgolf::default_cache_dir(), "/home/u/.cache/pgolf");
  EXPECT_EQ(pgolf::demo_cache_dir(""), "/home/u/.cache/pgolf/demo");
  EXPECT_EQ(pgolf::demo_cache_dir("/mine"), "/mine/demo");
  restore("PGOLF_CACHE", p);
  restore("XDG_CACHE_HOME", x);
  restore("HOME", h);
}

TEST(DemoCache, CachedTarballWithWrongChecksumIsAnErrorNamingIt) {
  const std::string dir = make_temp_dir();
  const auto& pkg = pgolf::demo_packages()[0];
  const std::string path = dir + "/" + pkg.tarball;
  pgolf::write_file_atomic(path, "not the real tarball");
  // The file exists, so no download is attempted.
  expect_error([&] { pgolf::ensure_tarball(pkg, dir); }, path);
  ::unlink(path.c_str());
  ::rmdir(dir.c_str());
}

// ---- the real corpus (only when already cached) ---------------------------------------

namespace {

std::string shared_dir() {
  const char* env = std::getenv("PGOLF_SHARED");
  if (env && *env) return env;
#ifdef PGOLF_SHARED_DIR
  return PGOLF_SHARED_DIR;
#else
  return "../shared";
#endif
}

bool file_exists(const std::string& p) { return ::access(p.c_str(), R_OK) == 0; }

}  // namespace

TEST(DemoCorpus, BuildsFromCachedPackagesAndCoversValidationTexts) {
  const std::string cache = pgolf::demo_cache_dir("");
  for (const auto& pkg : pgolf::demo_packages())
    if (!file_exists(cache + "/" + pkg.tarball))
      GTEST_SKIP() << pkg.tarball << " not cached in " << cache << " (run pgolf data fetch-demo)";

  const std::string dir = make_temp_dir();
  pgolf::DemoCorpusOptions opt;
  opt.out_path = dir + "/docs.jsonl";
  const auto st = pgolf::fetch_demo_corpus(opt);
  EXPECT_EQ(st.brown_docs, 500u);
  EXPECT_EQ(st.nlp_docs, 5000u);
  EXPECT_EQ(st.spam_docs, 3000u);
  EXPECT_EQ(st.total_docs, 8500u);
  // Pinned output for the default seed: any change in text conventions or
  // order shows up here.
  EXPECT_EQ(pgolf::sha256_file_hex(opt.out_path),
            "96ddeb68e08e5017b628f97992c09f476c805bd7ad3644ae219988fcd33d6fc8");

  std::set<std::string> texts;
  std::ifstream in(opt.out_path);
  std::string line;
  while (std::getline(in, line)) texts.insert(nlohmann::json::parse(line).at("text").get<std::string>());
  EXPECT_EQ(texts.size(), 8500u);

  const std::string val = shared_dir() + "/data/corpus/docs_val.jsonl";
  if (file_exists(val)) {
    std::ifstream vin(val);
    size_t n = 0, found = 0;
    while (std::getline(vin, line)) {
      ++n;
      if (texts.count(nlohmann::json::parse(line).at("text").get<std::string>())) ++found;
    }
    EXPECT_EQ(n, 916u);
    EXPECT_EQ(found, n) << "validation texts missing from the demo corpus";
  } else {
    std::cerr << "note: " << val << " not found; validation-text check skipped\n";
  }
  ::unlink(opt.out_path.c_str());
  ::rmdir(dir.c_str());
}

TEST(DemoTar, MutatedArchivesThrowOrParseButNeverCrash) {
  const std::string good = tar_member("package/a.txt", std::string(600, 'a')) +
                           tar_member("././@PaxHeader", pax_record("path", "package/p"), 'x') +
                           tar_member("b", "b") + tar_end();
  uint64_t state = 42;  // small LCG: reproducible mutations
  auto rnd = [&] { return (state = state * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; };
  for (int round = 0; round < 3000; ++round) {
    std::string t = good;
    for (int k = 0, n = 1 + static_cast<int>(rnd() % 4); k < n; ++k) t[rnd() % t.size()] = static_cast<char>(rnd());
    if (round % 3 == 0) t.resize(rnd() % t.size());
    try {
      pgolf::read_tar(t, "m.tar");
    } catch (const pgolf::Error&) {
    }
  }
}
