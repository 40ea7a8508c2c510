// `pgolf data build`: byte-identical shards, splits, and nothing left on failure.
#include <gtest/gtest.h>

#include <fstream>

#include "data/corpus_builder.h"
#include "data/error.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

TEST(CorpusBuilder, ValidationShardIsByteIdenticalToTheReference) {
  Tokenizer tok(kTokenizer);
  TempDir d;
  CorpusBuildOptions o;
  o.docs_path = kValDocs;
  o.out_dir = d.path();
  o.val_docs = 916;
  CorpusBuildStats s = build_corpus(o, tok);
  EXPECT_EQ(s.docs_val, 916u);
  EXPECT_EQ(s.docs_train, 0u);
  EXPECT_EQ(s.tokens_val, 1000445u);
  EXPECT_EQ(d.list(), std::vector<std::string>{"fineweb_val_000000.bin"});
  EXPECT_TRUE(read_file(d / "fineweb_val_000000.bin") == read_file(kValShard));
}

std::string docs_jsonl(const std::vector<std::string>& texts) {
  std::string s;
  for (const std::string& t : texts) s += "{\"text\": \"" + t + "\"}\n";
  return s;
}

TEST(CorpusBuilder, SplitsAndShardSizesFollowTheReferenceExporter) {
  Tokenizer tok(kTokenizer);
  TempDir d;
  write_file_atomic(d / "docs.jsonl", docs_jsonl({"one two three", "four", "", "five six", "seven eight nine ten"}));
  // Stale shards of an earlier build are replaced.
  write_shard(d / "fineweb_train_000009.bin", std::vector<uint16_t>{1});
  CorpusBuildOptions o;
  o.docs_path = d / "docs.jsonl";
  o.out_dir = d.path();
  o.val_docs = 2;
  o.shard_tokens = 3;
  CorpusBuildStats s = build_corpus(o, tok);
  EXPECT_EQ(s.docs_val, 2u);
  EXPECT_EQ(s.docs_train, 3u);
  TokenStream val({d / "fineweb_val_*.bin"}), train({d / "fineweb_train_*.bin"});
  EXPECT_EQ(val.size(), s.tokens_val);
  EXPECT_EQ(train.size(), s.tokens_train);
  // Expected streams from the tokenizer itself.
  auto doc = [&](const std::string& t) {
    std::vector<uint16_t> v = {1};
    for (int id : tok.encode(t)) v.push_back(uint16_t(id));
    return v;
  };
  std::vector<uint16_t> want_val, want_train;
  for (auto t : {"one two three", "four"}) for (uint16_t x : doc(t)) want_val.push_back(x);
  for (auto t : {"", "five six", "seven eight nine ten"}) for (uint16_t x : doc(t)) want_train.push_back(x);
  EXPECT_EQ(val.slice(0, val.size()), want_val);
  EXPECT_EQ(train.slice(0, train.size()), want_train);
  // Every shard but the last of a split is full; the split switch starts a new shard.
  for (size_t i = 0; i + 1 < train.num_shards(); ++i) EXPECT_EQ(train.shard(i).size(), 3u);
  EXPECT_FALSE(test::exists(d / "fineweb_train_000009.bin") && train.num_shards() < 10);
  for (const std::string& f : d.list()) EXPECT_EQ(f.find(".pgolf-build"), std::string::npos) << f;
}

TEST(CorpusBuilder, BadLineLeavesTheOutputDirectoryUntouched) {
  Tokenizer tok(kTokenizer);
  TempDir d;
  write_file_atomic(d / "docs.jsonl", docs_jsonl({"fine", "also fine"}) + "{\"txt\": \"no text key\"}\n");
  write_shard(d / "fineweb_val_000000.bin", std::vector<uint16_t>{1, 2, 3});
  const std::string before = read_file(d / "fineweb_val_000000.bin");
  CorpusBuildOptions o;
  o.docs_path = d / "docs.jsonl";
  o.out_dir = d.path();
  o.val_docs = 1;
  o.shard_tokens = 2;  // shards were already staged when the bad line is read
  try {
    build_corpus(o, tok);
    ADD_FAILURE() << "accepted a line without text";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(d / "docs.jsonl:3: no \"text\" field"), std::string::npos) << e.what();
  }
  EXPECT_EQ(d.list(), (std::vector<std::string>{"docs.jsonl", "fineweb_val_000000.bin"}));
  EXPECT_EQ(read_file(d / "fineweb_val_000000.bin"), before);
}

TEST(CorpusBuilder, MalformedInputsAreOneLineErrors) {
  Tokenizer tok(kTokenizer);
  TempDir d;
  struct Case { std::string content, expect; uint64_t val_docs; };
  std::vector<Case> cases = {
      {"{\"text\": 5}\n", "\"text\" is not a string", 0},
      {"[1, 2]\n", "expected a JSON object", 0},
      {"{\"text\": \"a\"\n", "invalid JSON", 0},
      {docs_jsonl({"a", "b"}), "--val-docs 3 exceeds the 2 documents", 3},
  };
  for (const Case& c : cases) {
    write_file_atomic(d / "in.jsonl", c.content);
    CorpusBuildOptions o;
    o.docs_path = d / "in.jsonl";
    o.out_dir = d / "out";
    o.val_docs = c.val_docs;
    try {
      build_corpus(o, tok);
      ADD_FAILURE() << c.content;
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find(d / "in.jsonl"), std::string::npos) << m;
      EXPECT_NE(m.find(c.expect), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos);
    }
    EXPECT_TRUE(list_dir(d / "out").empty());
  }
}

}  // namespace
}  // namespace pgolf::test
