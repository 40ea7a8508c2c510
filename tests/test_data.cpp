// Shards, token streams, document index, atomic writes, SHA-256.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <dirent.h>
#include <fstream>

#include "data/atomic_file.h"
#include "data/document_index.h"
#include "data/error.h"
#include "data/sha256.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "tests/test_util.h"

namespace pgolf::test {

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) out.push_back(e->d_name);
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

std::string raw_shard(int32_t magic, int32_t version, int32_t n, size_t payload_tokens, size_t extra_bytes = 0) {
  std::string s(1024 + 2 * payload_tokens + extra_bytes, '\0');
  int32_t h[3] = {magic, version, n};
  std::memcpy(&s[0], h, sizeof(h));
  for (size_t i = 0; i < payload_tokens; ++i) {
    uint16_t t = static_cast<uint16_t>(i * 7 + 1);
    std::memcpy(&s[1024 + 2 * i], &t, 2);
  }
  return s;
}

TEST(Shard, WriteThenReadRoundTrips) {
  TempDir d;
  std::vector<uint16_t> toks = {1, 5, 65535, 0, 42};
  write_shard(d / "a.bin", toks);
  MappedShard s(d / "a.bin");
  ASSERT_EQ(s.size(), toks.size());
  EXPECT_TRUE(std::equal(toks.begin(), toks.end(), s.tokens()));
  EXPECT_EQ(d.list(), std::vector<std::string>{"a.bin"});  // no temporary left behind
  // Layout: exactly the reference header then little-endian uint16.
  std::string bytes = read_file(d / "a.bin");
  ASSERT_EQ(bytes.size(), 1024u + 10u);
  int32_t h[256];
  std::memcpy(h, bytes.data(), 1024);
  EXPECT_EQ(h[0], 20240520);
  EXPECT_EQ(h[1], 1);
  EXPECT_EQ(h[2], 5);
  for (int i = 3; i < 256; ++i) EXPECT_EQ(h[i], 0);
  EXPECT_EQ(static_cast<uint8_t>(bytes[1024 + 4]), 0xFF);
}

TEST(Shard, EmptyShardIsValid) {
  TempDir d;
  write_shard(d / "e.bin", std::vector<uint16_t>{});
  EXPECT_EQ(MappedShard(d / "e.bin").size(), 0u);
}

TEST(Shard, RejectsBadFilesNamingThem) {
  TempDir d;
  struct Case { std::string name, bytes, expect; };
  std::vector<Case> cases = {
      {"magic.bin", raw_shard(12345, 1, 4, 4), "wrong magic 12345"},
      {"version.bin", raw_shard(20240520, 2, 4, 4), "unsupported shard version 2"},
      {"trunc.bin", raw_shard(20240520, 1, 10, 4), "truncated shard"},
      {"long.bin", raw_shard(20240520, 1, 2, 4), "trailing bytes"},
      {"odd.bin", raw_shard(20240520, 1, 4, 4, 1), "odd-sized shard"},
      {"neg.bin", raw_shard(20240520, 1, -3, 0), "negative token count"},
      {"tiny.bin", std::string(100, 'x'), "smaller than the 1024-byte header"},
  };
  for (const Case& c : cases) {
    write_file_atomic(d / c.name, c.bytes);
    std::string msg = error_of([&] { MappedShard s(d / c.name); });
    EXPECT_NE(msg.find(d / c.name), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.name << ": " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
  EXPECT_NE(error_of([&] { MappedShard s(d / "missing.bin"); }).find("cannot open shard"), std::string::npos);
  EXPECT_NE(error_of([&] { MappedShard s(d.path()); }).find("not a regular file"), std::string::npos);
}

TEST(TokenStream, ConcatenatesShardsInNameOrder) {
  TempDir d;
  write_shard(d / "fineweb_val_000001.bin", std::vector<uint16_t>{4, 5});
  write_shard(d / "fineweb_val_000000.bin", std::vector<uint16_t>{1, 2, 3});
  write_shard(d / "fineweb_val_000002.bin", std::vector<uint16_t>{});
  write_shard(d / "fineweb_val_000003.bin", std::vector<uint16_t>{6});
  TokenStream s({d / "fineweb_val_*.bin"});
  ASSERT_EQ(s.size(), 6u);
  EXPECT_EQ(s.num_shards(), 4u);
  EXPECT_EQ(s.slice(0, 6), (std::vector<uint16_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(s.slice(2, 3), (std::vector<uint16_t>{3, 4, 5}));  // across a boundary and an empty shard
  EXPECT_EQ(s.at(5), 6);
  EXPECT_THROW(s.slice(4, 3), Error);
  // Several arguments, overlapping: each file once, in name order.
  TokenStream t({d / "fineweb_val_000001.bin", d / "fineweb_val_00000[01].bin"});
  EXPECT_EQ(t.slice(0, t.size()), (std::vector<uint16_t>{1, 2, 3, 4, 5}));
}

TEST(TokenStream, EmptyGlobAndMissingFileAreErrors) {
  TempDir d;
  EXPECT_NE(error_of([&] { TokenStream s({d / "fineweb_val_*.bin"}); }).find("glob matches no files"), std::string::npos);
  EXPECT_NE(error_of([&] { TokenStream s({d / "nope.bin"}); }).find("no such file"), std::string::npos);
}

TEST(TokenStream, IdAtOrAboveVocabNamesShardAndPosition) {
  TempDir d;
  write_shard(d / "a.bin", std::vector<uint16_t>{1, 2, 3});
  write_shard(d / "b.bin", std::vector<uint16_t>{1, 900, 3});
  TokenStream s({d / "*.bin"});
  s.check_ids_below(901, "t.model");
  std::string msg = error_of([&] { s.check_ids_below(900, "t.model"); });
  EXPECT_NE(msg.find(d / "b.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("token id 900 at position 1"), std::string::npos) << msg;
}

TEST(DocumentIndex, SpansFromBosPositions) {
  const std::vector<uint16_t> t = {7, 7, 1, 5, 6, 1, 1, 9};
  DocumentIndex idx(t.data(), t.size(), 1);
  ASSERT_EQ(idx.size(), 3u);
  EXPECT_EQ(idx.leading_tokens(), 2u);
  EXPECT_EQ(idx.doc(0).begin, 2u);
  EXPECT_EQ(idx.doc(0).end, 5u);
  EXPECT_EQ(idx.doc(1).length(), 1u);  // a document holding only its BOS
  EXPECT_EQ(idx.doc(2).end, 8u);
  EXPECT_EQ(idx.doc_at(0), SIZE_MAX);
  EXPECT_EQ(idx.doc_at(4), 0u);
  EXPECT_EQ(idx.doc_at(6), 2u);
}

TEST(DocumentIndex, SharedValidationSplitHas916Documents) {
  TokenStream s({kValShard});
  DocumentIndex idx(s, 1);
  EXPECT_EQ(s.size(), 1000445u);
  EXPECT_EQ(idx.size(), 916u);
  EXPECT_EQ(idx.leading_tokens(), 0u);
  uint64_t sum = 0;
  for (size_t i = 0; i < idx.size(); ++i) sum += idx.doc(i).length();
  EXPECT_EQ(sum, s.size());
}

TEST(AtomicFile, UncommittedWriteLeavesNothingAndKeepsOldFile) {
  TempDir d;
  write_file_atomic(d / "f", "old");
  {
    AtomicFile f(d / "f");
    f.write("new contents");
  }  // destroyed without commit
  EXPECT_EQ(read_file(d / "f"), "old");
  EXPECT_EQ(d.list(), std::vector<std::string>{"f"});
}

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(Sha256::hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256::hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(Sha256::hex(m.data(), m.size()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // Fed in uneven pieces: same digest.
  Sha256 h;
  for (size_t i = 0; i < m.size(); i += 7) h.update(m.data() + i, std::min<size_t>(7, m.size() - i));
  auto d = h.digest();
  EXPECT_EQ(d[0], 0x24);
  EXPECT_EQ(d[31], 0xc1);
}

}  // namespace
}  // namespace pgolf::test
