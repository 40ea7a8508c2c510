// Tokenizer loading and the byte tables of SPEC §2 against the golden table.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "data/byte_counter.h"
#include "data/document_index.h"
#include "data/error.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "data/text.h"
#include "data/tokenizer_trainer.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

TEST(Tokenizer, LoadsTheParameterGolfModel) {
  Tokenizer tok(kTokenizer);
  EXPECT_EQ(tok.vocab_size(), 8192);
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 3);
  EXPECT_EQ(tok.fingerprint().size(), 64u);
  std::vector<int> ids = tok.encode("Hello world 2024");
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(tok.decode(ids), "Hello world 2024");
}

TEST(ByteCounter, EveryIdMatchesTheGoldenTable) {
  Tokenizer tok(kTokenizer);
  ByteCounter bc(tok);
  std::ifstream in(shared("data/fineweb_8192_bpe.bytes.tsv"));
  ASSERT_TRUE(in);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "id\tbase_bytes\tleading_space\tboundary");
  int rows = 0;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    int id, base, space, boundary;
    f >> id >> base >> space >> boundary;
    ASSERT_EQ(id, rows);
    EXPECT_EQ(bc.base_bytes(id), base) << "id " << id << " piece " << tok.piece(id);
    EXPECT_EQ(bc.leading_space(id), space != 0) << "id " << id;
    EXPECT_EQ(bc.boundary(id), boundary != 0) << "id " << id;
    ++rows;
  }
  EXPECT_EQ(rows, 8192);
}

TEST(ByteCounter, ModelVocabLargerThanTokenizerPadsWithBoundaries) {
  Tokenizer tok(kTokenizer);
  ByteCounter bc(tok, 8200);
  ASSERT_EQ(bc.size(), 8200u);
  EXPECT_TRUE(bc.boundary(8195));
  EXPECT_EQ(bc.base_bytes(8195), 0);
}

TEST(ByteCounter, PairRule) {
  // ids: 0 boundary, 1 "a" (1 byte), 2 "▁bc" (2 bytes + space), 3 byte piece
  ByteCounter bc({0, 1, 2, 1}, {0, 0, 1, 0}, {1, 0, 0, 0});
  EXPECT_EQ(bc.bytes(1, 2), 3u);  // space counted after a normal token
  EXPECT_EQ(bc.bytes(0, 2), 2u);  // not after a boundary token
  EXPECT_EQ(bc.bytes(2, 3), 1u);
  const uint16_t t[] = {0, 2, 1, 2, 3};
  ByteTotals r = bc.count(t, 5);
  EXPECT_EQ(r.targets, 4u);
  EXPECT_EQ(r.bytes, 2u + 1u + 3u + 1u);
}

// The number every bpb in the project rests on.
TEST(ByteCounter, SharedValidationSplitIsExactly2792783Bytes) {
  Tokenizer tok(kTokenizer);
  TokenStream s({kValShard});
  ByteTotals r = ByteCounter(tok).count(s);
  EXPECT_EQ(r.targets, 1000444u);
  EXPECT_EQ(r.bytes, 2792783u);
}

TEST(ByteCounter, CountIsTheSameAcrossShardSplits) {
  Tokenizer tok(kTokenizer);
  TokenStream whole({kValShard});
  std::vector<uint16_t> all = whole.slice(0, whole.size());
  TempDir d;
  // Split at awkward places, including an empty shard.
  const size_t cuts[] = {0, 1, 333333, 333333, 999999, all.size()};
  for (int i = 0; i + 1 < 6; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "fineweb_val_%06d.bin", i);
    write_shard(d / name, all.data() + cuts[i], cuts[i + 1] - cuts[i]);
  }
  ByteTotals r = ByteCounter(tok).count(TokenStream({d / "fineweb_val_*.bin"}));
  EXPECT_EQ(r.targets, 1000444u);
  EXPECT_EQ(r.bytes, 2792783u);
}

TEST(ByteCounter, RawUtf8OfValidationDocuments) {
  std::vector<uint64_t> raw = raw_utf8_bytes_per_document(kValDocs);
  ASSERT_EQ(raw.size(), 916u);
  uint64_t sum = 0;
  for (uint64_t b : raw) sum += b;
  EXPECT_EQ(sum, 2833955u);
}

TEST(Tokenizer, RejectsFilesThatAreNotSentencePieceModels) {
  TempDir d;
  write_file_atomic(d / "text.model", "this is not a model\n");
  write_file_atomic(d / "empty.model", "");
  std::string junk(4096, '\0');
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = char((i * 2654435761u) >> 13);
  write_file_atomic(d / "junk.model", junk);
  for (const char* name : {"text.model", "empty.model", "junk.model"}) {
    try {
      Tokenizer t(d / name);
      ADD_FAILURE() << name << " was accepted";
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find(d / name), std::string::npos) << m;
      EXPECT_NE(m.find("SentencePiece"), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  }
  EXPECT_THROW(Tokenizer{kValShard}, Error);  // a shard is not a model
  EXPECT_THROW(Tokenizer{d / "missing.model"}, Error);
}

TEST(Text, StripMatchesPythonStrip) {
  EXPECT_EQ(strip_unicode_whitespace("  a b \n\t"), "a b");
  EXPECT_EQ(strip_unicode_whitespace("\xC2\xA0x\xE3\x80\x80"), "x");      // NBSP, ideographic space
  EXPECT_EQ(strip_unicode_whitespace("\xE2\x80\x83y\xE2\x80\xA8"), "y");  // em space, line separator
  EXPECT_EQ(strip_unicode_whitespace("\xE2\x80\x8Bz"), "\xE2\x80\x8Bz");  // zero-width space is not whitespace
  EXPECT_EQ(strip_unicode_whitespace(" \x1f "), "");
  EXPECT_EQ(strip_unicode_whitespace("é"), "é");
}

TEST(TokenizerTrainer, TrainsWithTheReferenceSettings) {
  TempDir d;
  // The first 150 validation documents are enough for a 400-piece BPE.
  std::ifstream in(kValDocs);
  std::string line, docs;
  for (int i = 0; i < 150 && std::getline(in, line); ++i) docs += line + "\n";
  docs += "{\"text\": \"   \"}\n";  // blank after strip: skipped
  write_file_atomic(d / "docs.jsonl", docs);
  TokenizerTrainOptions o;
  o.docs_path = d / "docs.jsonl";
  o.out_prefix = d / "tok";
  o.vocab_size = 400;
  TokenizerTrainStats s = train_tokenizer(o);
  EXPECT_EQ(s.sentences, 150u);
  EXPECT_EQ(d.list(), (std::vector<std::string>{"docs.jsonl", "tok.model", "tok.vocab"}));
  Tokenizer tok(s.model_path);
  EXPECT_EQ(tok.vocab_size(), 400);
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 3);
  int bytes = 0;
  for (int id = 0; id < tok.vocab_size(); ++id) bytes += tok.kind(id) == PieceKind::Byte;
  EXPECT_EQ(bytes, 256);  // byte fallback
  // split_digits: every digit its own piece; no dummy prefix: no leading ▁.
  std::vector<int> ids = tok.encode("2024");
  ASSERT_EQ(ids.size(), 4u);
  for (int id : ids) EXPECT_EQ(tok.piece(id).size(), 1u);
  EXPECT_NE(tok.piece(tok.encode("the")[0]).rfind("\xE2\x96\x81", 0), 0u);
  // nmt_nfkc: the full-width letter normalizes to ASCII.
  EXPECT_EQ(tok.decode(tok.encode("\xEF\xBC\xA1")), "A");
  // The vocab file lists every piece with its score.
  std::string vocab = read_file(s.vocab_path);
  EXPECT_EQ(std::count(vocab.begin(), vocab.end(), '\n'), 400);
}

}  // namespace
}  // namespace pgolf::test
