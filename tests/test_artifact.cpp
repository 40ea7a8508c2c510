// The .pgz container: bit-exact round trips for every width, dtype and value
// coding; every truncation and every single-bit flip of a small artifact is
// a pgolf::Error; edits with valid checksums (reseal_artifact) reach and
// trip each structural check; files are written atomically.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "data/atomic_file.h"
#include "data/error.h"
#include "quant/artifact.h"
#include "quant/artifact_format.h"
#include "quant/codec.h"
#include "tests/test_util.h"

namespace pgolf::quant {
namespace {

namespace af = artifact_format;
using Kind = ArtifactTensor::Kind;

ArtifactTensor quantized(const std::string& name, std::vector<int64_t> shape, int bits, uint32_t seed,
                         double sigma = 0) {
  ArtifactTensor t;
  t.name = name;
  t.shape = shape;
  t.kind = Kind::Quantized;
  t.bits = bits;
  t.method = seed % 2 ? "gptq" : "rtn";
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const int m = (1 << (bits - 1)) - 1;
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0.0, sigma > 0 ? sigma : m / 3.0);
  t.values.resize(static_cast<size_t>(n));
  for (auto& v : t.values) v = static_cast<int8_t>(std::max(-m, std::min(m, static_cast<int>(std::lround(d(rng))))));
  if (n >= 2) t.values[0] = static_cast<int8_t>(-m), t.values[1] = static_cast<int8_t>(m);  // the extremes
  for (int64_t r = 0; r < (shape.empty() ? 0 : shape[0]); ++r)
    t.scales.push_back(static_cast<uint16_t>(0x2000 + (rng() % 0x1000)));  // small positive fp16
  return t;
}

ArtifactTensor raw(const std::string& name, std::vector<int64_t> shape, const std::string& dtype, int esize,
                   uint32_t seed) {
  ArtifactTensor t;
  t.name = name;
  t.shape = shape;
  t.kind = Kind::Raw;
  t.dtype = dtype;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::mt19937 rng(seed);
  t.data.resize(static_cast<size_t>(n * esize));
  for (char& c : t.data) c = static_cast<char>(dtype == "bool" ? rng() % 2 : rng() % 256);
  return t;
}

// Every width 2..8, a zero-row tensor, 1-D and 3-D shapes, and raw tensors of
// several dtypes (including a 0-d one).
Artifact sample(int scale = 1) {
  Artifact a;
  a.config_json = R"({"vocab_size":1024,"num_layers":2,"model_dim":64})";
  a.tokenizer_fingerprint = std::string(64, 'a');
  a.meta_json = R"({"bits":{"mlp":6},"note":"t\u00e9st"})";
  for (int bits = 2; bits <= 8; ++bits)
    a.tensors.push_back(quantized("blocks." + std::to_string(bits) + ".w", {4 * scale, 5 + bits}, bits,
                                  static_cast<uint32_t>(bits)));
  a.tensors.push_back(quantized("empty_rows", {0, 7}, 6, 11));
  a.tensors.push_back(quantized("vec", {9}, 4, 12));
  a.tensors.push_back(quantized("cube", {2, 3, 4}, 5, 13));
  a.tensors.push_back(raw("norm.f16", {16}, "float16", 2, 20));
  a.tensors.push_back(raw("gain.f32", {3, 2}, "float32", 4, 21));
  a.tensors.push_back(raw("bf16", {5}, "bfloat16", 2, 22));
  a.tensors.push_back(raw("f64", {2}, "float64", 8, 23));
  a.tensors.push_back(raw("ids.i64", {3}, "int64", 8, 24));
  a.tensors.push_back(raw("mask", {7}, "bool", 1, 25));
  a.tensors.push_back(raw("scalar", {}, "float32", 4, 26));
  a.tensors.push_back(raw("u8", {4}, "uint8", 1, 27));
  a.tensors.push_back(raw("i8", {4}, "int8", 1, 28));
  a.tensors.push_back(raw("i16", {4}, "int16", 2, 29));
  a.tensors.push_back(raw("i32", {0}, "int32", 4, 30));
  return a;
}

void expect_same(const Artifact& x, const Artifact& y) {
  EXPECT_EQ(x.config_json, y.config_json);
  EXPECT_EQ(x.tokenizer_fingerprint, y.tokenizer_fingerprint);
  EXPECT_EQ(x.meta_json, y.meta_json);
  ASSERT_EQ(x.tensors.size(), y.tensors.size());
  for (size_t i = 0; i < x.tensors.size(); ++i) {
    const ArtifactTensor &a = x.tensors[i], &b = y.tensors[i];
    SCOPED_TRACE(a.name);
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.shape, b.shape);
    EXPECT_EQ(a.kind, b.kind);
    EXPECT_EQ(a.bits, b.bits);
    EXPECT_EQ(a.values, b.values);
    EXPECT_EQ(a.scales, b.scales);
    EXPECT_EQ(a.method, b.method);
    EXPECT_EQ(a.dtype, b.dtype);
    EXPECT_EQ(a.data, b.data);
  }
}

std::string error_of(const std::string& bytes, const ArtifactLimits& lim = {}) {
  return test::error_of([&] { decode_artifact(bytes, "a.pgz", nullptr, lim); });
}

constexpr ValueCoding kEachCoding[] = {ValueCoding::Auto,       ValueCoding::Entropy, ValueCoding::PackedBrotli,
                                       ValueCoding::PackedZstd, ValueCoding::Context, ValueCoding::ContextLinear};

TEST(Artifact, RoundTripEachCoding) {
  const Artifact a = sample(8);
  for (ValueCoding c : kEachCoding) {
    SCOPED_TRACE(static_cast<int>(c));
    ArtifactLayout wl, rl;
    const std::string bytes = encode_artifact(a, {c}, &wl);
    EXPECT_TRUE(is_artifact(bytes));
    EXPECT_EQ(encode_artifact(a, {c}), bytes);  // deterministic (values are coded on several threads)
    const Artifact b = decode_artifact(bytes, "a.pgz", &rl);
    expect_same(a, b);
    // The layout: the same from both sides, adding up to the file.
    EXPECT_EQ(wl.file_bytes, bytes.size());
    EXPECT_EQ(rl.file_bytes, bytes.size());
    EXPECT_EQ(wl.header_bytes, rl.header_bytes);
    ASSERT_EQ(rl.tensors.size(), a.tensors.size());
    uint64_t total = rl.header_bytes;
    for (size_t i = 0; i < a.tensors.size(); ++i) {
      const ArtifactTensorLayout &w = wl.tensors[i], &r = rl.tensors[i];
      EXPECT_EQ(w.name, r.name);
      EXPECT_EQ(w.stored_bytes, r.stored_bytes);
      EXPECT_EQ(w.coding, r.coding);
      EXPECT_DOUBLE_EQ(w.entropy_bits, r.entropy_bits);
      total += r.stored_bytes;
      const ArtifactTensor& t = a.tensors[i];
      if (t.kind == Kind::Quantized) {
        EXPECT_EQ(r.kind, "quantized");
        EXPECT_EQ(r.bits, t.bits);
        EXPECT_EQ(r.raw_bytes, t.values.size() + 2 * t.scales.size());
        const char* want[] = {nullptr, "entropy", "packed+brotli", "packed+zstd", "context", "context+linear"};
        if (c != ValueCoding::Auto) {
          EXPECT_EQ(r.coding, want[static_cast<int>(c)]);
        }
      } else {
        EXPECT_EQ(r.kind, "raw");
        EXPECT_EQ(r.dtype, t.dtype);
        EXPECT_EQ(r.raw_bytes, t.data.size());
      }
    }
    EXPECT_EQ(total, bytes.size());
  }
}

TEST(Artifact, AutoKeepsTheSmallest) {
  Artifact a;
  a.config_json = "{}";
  a.tensors.push_back(quantized("g", {256, 256}, 6, 5, 4.0));
  size_t sizes[6];
  int k = 0;
  for (ValueCoding c : kEachCoding) sizes[k++] = encode_artifact(a, {c}).size();
  // 256 x 256 is not tall enough for auto to try context+linear.
  EXPECT_EQ(sizes[0], std::min({sizes[1], sizes[2], sizes[3], sizes[4]}));
  ArtifactLayout l;
  encode_artifact(a, {}, &l);
  // I.i.d. Gaussian values: the static entropy coder wins and lands near the floor.
  EXPECT_EQ(l.tensors[0].coding, "entropy");
  EXPECT_LE(static_cast<double>(l.tensors[0].stored_bytes), l.tensors[0].entropy_bits / 8 * 1.005 + 400);
  // Columns of different spreads: the context coding wins, below the floor.
  std::mt19937 rng(3);
  for (size_t i = 0; i < a.tensors[0].values.size(); ++i) {
    const double sigma = 0.5 + (i % 256) / 32.0;
    a.tensors[0].values[i] = static_cast<int8_t>(
        std::clamp(static_cast<int>(std::lround(std::normal_distribution<double>(0, sigma)(rng))), -31, 31));
  }
  encode_artifact(a, {}, &l);
  EXPECT_EQ(l.tensors[0].coding, "context");
  EXPECT_LT(static_cast<double>(l.tensors[0].stored_bytes), l.tensors[0].entropy_bits / 8 * 0.97);
}

// An embedding-like tensor (rows = tokens sharing a few directions): auto
// tries context+linear on it and keeps it; forced on a matrix over 1024
// columns, context+linear falls back to context.
TEST(Artifact, AutoPicksTheLinearModelOnTallLowRankMatrices) {
  Artifact a;
  ArtifactTensor t = quantized("emb", {1024, 64}, 8, 3, 1.0);
  std::mt19937 rng(4);
  std::normal_distribution<double> n(0, 1);
  std::vector<double> basis(3 * 64);
  for (double& b : basis) b = n(rng);
  for (int r = 0; r < 1024; ++r) {
    const double u[3] = {3 * n(rng), 3 * n(rng), 3 * n(rng)};
    for (int c = 0; c < 64; ++c) {
      const double y = u[0] * basis[c] + u[1] * basis[64 + c] + u[2] * basis[128 + c] + 4 * n(rng);
      t.values[r * 64 + c] = static_cast<int8_t>(std::clamp(static_cast<int>(std::lround(y)), -127, 127));
    }
  }
  a.tensors.push_back(t);
  a.tensors.push_back(quantized("wide", {2, 1100}, 6, 5, 4.0));
  ArtifactLayout l;
  const std::string bytes = encode_artifact(a, {}, &l);
  EXPECT_EQ(l.tensors[0].coding, "context+linear");
  EXPECT_NE(l.tensors[1].coding, "context+linear");
  expect_same(a, decode_artifact(bytes, "a.pgz"));
  ArtifactLayout lc, ll;
  encode_artifact(a, {ValueCoding::Context}, &lc);
  const std::string forced = encode_artifact(a, {ValueCoding::ContextLinear}, &ll);
  EXPECT_EQ(ll.tensors[0].coding, "context+linear");
  EXPECT_EQ(ll.tensors[1].coding, "context");
  EXPECT_LT(static_cast<double>(ll.tensors[0].stored_bytes), 0.95 * static_cast<double>(lc.tensors[0].stored_bytes));
  expect_same(a, decode_artifact(forced, "a.pgz"));
}

TEST(Artifact, AutoSkipsTheContextCodingOverItsColumnLimit) {
  Artifact a;
  a.tensors.push_back(quantized("row", {1, (1 << 20) + 1}, 2, 7, 0.6));  // one row: too many columns
  ArtifactLayout l;
  const std::string bytes = encode_artifact(a, {}, &l);
  EXPECT_NE(l.tensors[0].coding, "context");
  expect_same(a, decode_artifact(bytes, "a.pgz"));
  EXPECT_NE(test::error_of([&] { encode_artifact(a, {ValueCoding::Context}); }).find("at most 1048576 columns"),
            std::string::npos);
}

TEST(Artifact, EmptyArtifact) {
  Artifact a;
  const std::string bytes = encode_artifact(a);
  expect_same(a, decode_artifact(bytes, "e"));
}

// A small artifact (~1-3 KB) for the exhaustive corruption loops.
std::string small_artifact(ValueCoding coding = ValueCoding::Auto) {
  Artifact a;
  a.config_json = R"({"vocab_size":64})";
  a.tokenizer_fingerprint = "";
  a.tensors.push_back(quantized("w6", {8, 16}, 6, 1));
  a.tensors.push_back(quantized("w2", {4, 8}, 2, 2));
  a.tensors.push_back(quantized("w8", {3, 5}, 8, 3));
  // context+linear first predicts after 32 rows: give its corruption loops a tensor past that.
  if (coding == ValueCoding::ContextLinear) a.tensors.push_back(quantized("tall", {40, 3}, 4, 6));
  a.tensors.push_back(raw("norm", {24}, "float16", 2, 4));
  a.tensors.push_back(raw("ids", {3}, "int32", 4, 5));
  return encode_artifact(a, {coding});
}

TEST(Artifact, EveryTruncationFails) {
  for (ValueCoding c : {ValueCoding::Auto, ValueCoding::Context, ValueCoding::ContextLinear}) {
    const std::string good = small_artifact(c);
    ASSERT_GE(good.size(), 500u);
    ASSERT_LE(good.size(), 3000u);
    ASSERT_EQ(error_of(good), "");
    for (size_t n = 0; n < good.size(); ++n) {
      const std::string e = error_of(good.substr(0, n));
      ASSERT_NE(e, "") << "truncated to " << n;
      ASSERT_EQ(e.rfind("a.pgz: ", 0), 0u) << e;
    }
    EXPECT_NE(error_of(good + '\0'), "");
  }
}

TEST(Artifact, EverySingleBitFlipFails) {
  for (ValueCoding c : {ValueCoding::Auto, ValueCoding::Context, ValueCoding::ContextLinear}) {
    const std::string good = small_artifact(c);
    std::string b = good;
    for (size_t bit = 0; bit < 8 * good.size(); ++bit) {
      const char mask = static_cast<char>(1 << (bit % 8));
      b[bit / 8] ^= mask;
      const std::string e = error_of(b);
      b[bit / 8] ^= mask;
      ASSERT_NE(e, "") << "bit " << bit << " of " << 8 * good.size();
      ASSERT_EQ(e.find('\n'), std::string::npos) << e;
    }
  }
}

TEST(Artifact, IsArtifact) {
  const std::string good = small_artifact();
  EXPECT_TRUE(is_artifact(good));
  EXPECT_TRUE(is_artifact(good.substr(0, 8)));
  EXPECT_FALSE(is_artifact(good.substr(0, 7)));
  EXPECT_FALSE(is_artifact(""));
  EXPECT_FALSE(is_artifact("PK\x03\x04 a zip archive"));
  EXPECT_NE(error_of("PK\x03\x04 a zip archive").find("not a pgolf artifact"), std::string::npos);
}

// ---- edits behind valid checksums ---------------------------------------------------------

// The artifact's JSON table, edited, with every checksum made valid again.
std::string edit_json(const std::string& bytes, const std::function<void(nlohmann::json&)>& edit) {
  const af::Header h = af::read_header(bytes);
  std::string text = bytes.substr(af::kHeaderSize, h.json_size);
  if (h.json_coding == 1) text = decompress(text, Codec::Brotli, 1 << 24, "json");
  nlohmann::json j = nlohmann::json::parse(text);
  edit(j);
  af::Header p = h;
  p.json_coding = 0;
  std::string dumped = j.dump();
  p.json_size = p.json_raw_size = static_cast<uint32_t>(dumped.size());
  std::string out = af::write_header(p) + dumped + bytes.substr(af::kHeaderSize + h.json_size);
  return reseal_artifact(out);
}

void expect_edit_fails(const std::string& bytes, const std::function<void(nlohmann::json&)>& edit,
                       const std::string& want) {
  const std::string e = error_of(edit_json(bytes, edit));
  EXPECT_NE(e.find(want), std::string::npos) << "got: " << (e.empty() ? "(no error)" : e) << "\nwant: " << want;
}

TEST(Artifact, ResealedUntouchedStillDecodes) {
  const std::string good = small_artifact();
  EXPECT_EQ(error_of(reseal_artifact(good)), "");
  EXPECT_EQ(error_of(edit_json(good, [](nlohmann::json&) {})), "");
  EXPECT_EQ(reseal_artifact("short"), "short");
}

TEST(Artifact, StructuralChecksBehindTheChecksums) {
  const std::string g = small_artifact();
  using J = nlohmann::json;
  // tensors: w6 (section 0), w2 (1), w8 (2); section 3 scales, section 4 raw.
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["bits"] = 9; }, "bits 9 is not in 2..8");
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["bits"] = 1; }, "bits 1 is not in 2..8");
  // Values wider than the declared bits, from each coding.
  for (ValueCoding c : {ValueCoding::Entropy, ValueCoding::PackedBrotli, ValueCoding::PackedZstd, ValueCoding::Context,
                        ValueCoding::ContextLinear}) {
    const std::string e = small_artifact(c);
    if (c == ValueCoding::Entropy) expect_edit_fails(e, [](J& j) { j["tensors"][2]["bits"] = 3; }, "outside +-3");
    // Context: another width is another model; the stream no longer ends where it should.
    else if (c == ValueCoding::Context || c == ValueCoding::ContextLinear)
      expect_edit_fails(e, [](J& j) { j["tensors"][2]["bits"] = 3; }, "context stream");
    // Packed: 8-bit bytes read as 3-bit fields are a size mismatch.
    else expect_edit_fails(e, [](J& j) { j["tensors"][2]["bits"] = 3; }, "a.pgz: tensor 'w8' values: ");
  }
  // -2^(bits-1) fits the packing but not the symmetric range: a 3-bit 2
  // (010) read as 2 bits is -2.
  for (ValueCoding c : {ValueCoding::PackedBrotli, ValueCoding::PackedZstd}) {
    Artifact one;
    one.tensors.push_back(quantized("one", {1, 1}, 3, 1));
    one.tensors[0].values = {2};
    expect_edit_fails(encode_artifact(one, {c}), [](J& j) { j["tensors"][0]["bits"] = 2; }, "value -2 at 0 is outside +-1");
  }
  expect_edit_fails(g, [](J& j) { j["tensors"][1]["name"] = "w6"; }, "name appears twice");
  expect_edit_fails(g, [](J& j) { j["tensors"][1]["name"] = ""; }, "empty name");
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["shape"] = {-8, -16}; }, "not an integer in 0..2^40");
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["shape"] = {1u << 20, 1u << 20}; }, "more than");
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["shape"] = {16, 8}; }, "scales are 16 bytes, 16 rows need 32");
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["shape"] = {8, 15}; }, "the shape needs 120");
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["shape"] = J::array(); }, "at least one dimension");
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["shape"] = {8.0, 16}; }, "not an integer");
  expect_edit_fails(g, [](J& j) { j["tensors"][1]["values"] = 0; }, "used twice");
  expect_edit_fails(g, [](J& j) { j["tensors"][1]["values"] = 3; }, "names a section of scales");
  expect_edit_fails(g, [](J& j) { j["tensors"][1]["values"] = 99; }, "'values' = 99 is over");
  expect_edit_fails(g, [](J& j) { j["tensors"][1]["scales"]["offset"] = 0; }, "parts are contiguous");
  expect_edit_fails(g, [](J& j) { j["tensors"][1]["scales"]["section"] = 4; }, "holds raw, not scales");
  expect_edit_fails(g, [](J& j) { j["tensors"][3]["dtype"] = "float8"; }, "unknown dtype 'float8'");
  expect_edit_fails(g, [](J& j) { j["tensors"][3]["dtype"] = "float32"; }, "24 x float32 needs 96");
  expect_edit_fails(g, [](J& j) { j["tensors"][3]["kind"] = "sparse"; }, "unknown kind 'sparse'");
  expect_edit_fails(g, [](J& j) { j["tensors"][3]["extra"] = 1; }, "unknown key 'extra'");
  expect_edit_fails(g, [](J& j) { j["tensors"][3].erase("dtype"); }, "missing key 'dtype'");
  expect_edit_fails(g, [](J& j) { j["tensors"].erase(2); }, "section 2 (values) is not used by any tensor");
  expect_edit_fails(g, [](J& j) { j["tensors"].erase(4); }, "has 60 bytes, its tensors use 48");
  expect_edit_fails(g, [](J& j) { j["format"] = "other"; }, "'format' is not");
  expect_edit_fails(g, [](J& j) { j["config"] = 5; }, "'config' is not a string");
  expect_edit_fails(g, [](J& j) { j["sections"][1]["offset"] = 0; }, "sections are contiguous");
  expect_edit_fails(g, [](J& j) { j["sections"].erase(4); }, "sections cover");
  expect_edit_fails(g, [](J& j) { j["sections"][0]["coding"] = "shuffle2+brotli"; }, "is not valid for values");
  expect_edit_fails(g, [](J& j) { j["sections"][3]["coding"] = "entropy"; }, "is not valid for scales");
  expect_edit_fails(g, [](J& j) { j["tensors"][0]["scales"]["section"] = 0; }, "holds values, not scales");
  expect_edit_fails(g, [](J& j) { j["sections"][0]["raw_size"] = 1ull << 40; }, "sections decode to more than");
  expect_edit_fails(g, [](J& j) { j["sections"].push_back(j["sections"][0]); }, "sections are contiguous");
  // A coding that does not match the stored bytes fails in the decoder.
  expect_edit_fails(g, [](J& j) {
    std::string c = j["sections"][0]["coding"];
    j["sections"][0]["coding"] = c == "packed+zstd" ? "packed+brotli" : "packed+zstd";
  }, "a.pgz: tensor 'w6' values: ");
  expect_edit_fails(g, [](J& j) {
    std::string c = j["sections"][4]["coding"];
    j["sections"][4]["coding"] = c == "zstd" ? "brotli" : "zstd";
  }, "a.pgz: section 4 (raw)");
  // Deep nesting is refused before parsing.
  expect_edit_fails(g, [](J& j) {
    J deep = J::array();
    for (int i = 0; i < 40; ++i) deep = J::array({deep});
    j["x"] = deep;
  }, "nests deeper");
}

TEST(Artifact, LimitsHoldBeforeAllocating) {
  const std::string g = small_artifact();
  ArtifactLimits lim;
  lim.max_decoded = 100;
  EXPECT_NE(error_of(g, lim).find("sections decode to more than 100 bytes"), std::string::npos);
  lim = {};
  lim.max_tensors = 2;
  EXPECT_NE(error_of(g, lim).find("more than"), std::string::npos);
  lim = {};
  lim.max_json = 10;
  EXPECT_NE(error_of(g, lim).find("over the 10-byte limit"), std::string::npos);
  // An entropy-coded section claiming a huge count: refused by the total bound.
  Artifact a;
  a.tensors.push_back(quantized("z", {4, 4}, 4, 1));
  const std::string e = encode_artifact(a, {ValueCoding::Entropy});
  const std::string big = edit_json(e, [](nlohmann::json& j) {
    j["sections"][0]["raw_size"] = (1ull << 30) + 1;
    j["tensors"][0]["shape"] = {4, (1 << 28) + 1};
  });
  EXPECT_NE(error_of(big).find("more than"), std::string::npos) << error_of(big);
}

TEST(Artifact, HeaderFields) {
  std::string g = small_artifact();
  auto patch32 = [&](size_t at, uint32_t v) {
    std::string b = g;
    for (int k = 0; k < 4; ++k) b[at + k] = static_cast<char>(v >> (8 * k));
    return b;
  };
  EXPECT_NE(error_of(patch32(8, 2)).find("format version 2 is not supported"), std::string::npos);
  EXPECT_NE(error_of(reseal_artifact(patch32(36, 1))).find("reserved"), std::string::npos);
  EXPECT_NE(error_of(reseal_artifact(patch32(12, 7))).find("unknown JSON coding 7"), std::string::npos);
  EXPECT_NE(error_of(g.substr(0, 50)).find("truncated"), std::string::npos);
  EXPECT_NE(error_of(g.substr(0, 500)).find("truncated: 500 of the"), std::string::npos);
  EXPECT_NE(error_of(g + "xy").find("2 bytes after the"), std::string::npos);
}

TEST(Artifact, ResealedFlipsNeverCrash) {
  // With checksums forged, corrupt payloads reach the decoders: any outcome
  // but a crash or a non-pgolf exception is fine.
  for (ValueCoding c : {ValueCoding::Auto, ValueCoding::Context, ValueCoding::ContextLinear}) {
    const std::string good = small_artifact(c);
    const af::Header h = af::read_header(good);
    for (size_t byte = af::kHeaderSize + h.json_size; byte < good.size(); ++byte)
      for (int bit = 0; bit < 8; bit += 3) {
        std::string b = good;
        b[byte] = static_cast<char>(b[byte] ^ (1 << bit));
        try {
          decode_artifact(reseal_artifact(b), "r");
        } catch (const Error&) {
        }
      }
  }
}

TEST(Artifact, RejectsBadTensorsOnWrite) {
  auto err = [](const std::function<void(Artifact&)>& edit) {
    Artifact a;
    a.tensors.push_back(quantized("q", {2, 3}, 4, 1));
    a.tensors.push_back(raw("r", {2}, "float32", 4, 2));
    edit(a);
    return test::error_of([&] { encode_artifact(a); });
  };
  EXPECT_EQ(err([](Artifact&) {}), "");
  EXPECT_NE(err([](Artifact& a) { a.tensors[0].bits = 9; }).find("bits 9"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[0].values[0] = 8; }).find("outside +-7"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[0].values[0] = -8; }).find("outside +-7"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[0].values.pop_back(); }).find("5 values"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[0].scales.pop_back(); }).find("1 scales for 2 rows"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[0].scales[0] = 0x7C00; }).find("not finite"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[1].name = "q"; }).find("appears twice"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[1].name = ""; }).find("name must be"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[1].dtype = "complex64"; }).find("unknown dtype"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[1].data += "x"; }).find("9 data bytes"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.tensors[1].shape = {-2}; }).find("dimension -2"), std::string::npos);
  EXPECT_NE(err([](Artifact& a) { a.config_json = "\xff"; }).find("UTF-8"), std::string::npos);
}

TEST(Artifact, SaveAndLoadAtomically) {
  test::TempDir dir;
  const std::string path = dir / "sub/model.pgz";
  const Artifact a = sample();
  ArtifactLayout wl, rl;
  save_artifact(path, a, {}, &wl);
  EXPECT_EQ(test::list_dir(dir / "sub"), std::vector<std::string>{"model.pgz"});  // no temporary left
  expect_same(a, load_artifact(path, &rl));
  EXPECT_EQ(wl.file_bytes, rl.file_bytes);
  // A failed write leaves the old file as it was.
  Artifact bad = a;
  bad.tensors[0].bits = 1;
  EXPECT_THROW(save_artifact(path, bad), Error);
  EXPECT_EQ(test::list_dir(dir / "sub"), std::vector<std::string>{"model.pgz"});
  expect_same(a, load_artifact(path));
  // Errors name the file.
  const std::string cut = dir / "cut.pgz";
  write_file_atomic(cut, read_file(path).substr(0, 100));
  EXPECT_EQ(test::error_of([&] { load_artifact(cut); }).rfind(cut + ": truncated", 0), 0u);
  EXPECT_NE(test::error_of([&] { load_artifact(dir / "missing.pgz"); }), "");
}

}  // namespace
}  // namespace pgolf::quant
