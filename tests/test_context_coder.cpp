// The context value coding: round trips for every width, shape and kind of
// scale; it learns column spreads and means (coded size well below the
// order-0 entropy on such values, near it on i.i.d. values); hostile streams
// are errors or in-range values, never crashes; and the format is pinned by
// the exact bytes of one stream.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "data/error.h"
#include "quant/context_coder.h"
#include "quant/rans.h"

namespace pgolf::quant {
namespace {

// A small deterministic generator (std::normal_distribution is not the same
// on every standard library, and the golden test needs the same input everywhere).
struct Lcg {
  uint64_t s;
  explicit Lcg(uint64_t seed) : s(seed * 6364136223846793005ull + 1442695040888963407ull) {}
  uint32_t next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(s >> 33);
  }
  double uniform() { return (next() + 0.5) / 2147483648.0; }  // (0, 1)
  double normal() {  // sum of 12 uniforms - 6: close enough to a Gaussian
    double x = -6;
    for (int i = 0; i < 12; ++i) x += uniform();
    return x;
  }
};

struct Matrix {
  uint64_t rows = 0;
  int bits = 6;
  std::vector<int8_t> values;
  std::vector<uint16_t> scales;
};

// Rounded N(mean_c, sigma_c) clipped to +-m, per column c; every row's scale
// is `scale`.
Matrix columns(uint64_t rows, uint64_t cols, int bits, const std::vector<double>& sigma, const std::vector<double>& mean,
               uint16_t scale, uint64_t seed) {
  Matrix x;
  x.rows = rows;
  x.bits = bits;
  const int m = (1 << (bits - 1)) - 1;
  Lcg g(seed);
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t c = 0; c < cols; ++c)
      x.values.push_back(static_cast<int8_t>(
          std::clamp(static_cast<int>(std::lround(mean[c] + sigma[c] * g.normal())), -m, m)));
  x.scales.assign(rows, scale);
  return x;
}

Matrix iid(uint64_t rows, uint64_t cols, int bits, double sigma, uint64_t seed) {
  return columns(rows, cols, bits, std::vector<double>(cols, sigma), std::vector<double>(cols, 0.0), 0x2C00, seed);
}

std::string error_of(const std::string& bytes, const Matrix& x, uint64_t count = ~0ull, int bits = 0) {
  try {
    context_decode(bytes, count == ~0ull ? x.values.size() : count, x.rows, bits ? bits : x.bits, x.scales, "s");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_round_trip(const Matrix& x, const std::string& label) {
  const std::string coded = context_encode(x.values, x.rows, x.bits, x.scales);
  EXPECT_EQ(context_decode(coded, x.values.size(), x.rows, x.bits, x.scales, label), x.values) << label;
  EXPECT_EQ(context_encode(x.values, x.rows, x.bits, x.scales), coded) << label << ": not deterministic";
}

TEST(ContextCoder, RoundTrips) {
  for (int bits = 2; bits <= 8; ++bits) {
    const int m = (1 << (bits - 1)) - 1;
    for (auto [rows, cols] : {std::pair<uint64_t, uint64_t>{1, 1}, {1, 50}, {50, 1}, {7, 13}, {64, 64}}) {
      const std::string label = "bits " + std::to_string(bits) + ", " + std::to_string(rows) + "x" + std::to_string(cols);
      Matrix x = iid(rows, cols, bits, m / 3.0 + 0.2, rows * 100 + cols + bits);
      expect_round_trip(x, label);
      // Rows of every kind of scale: fp16 subnormal, zero, negative, +-inf and
      // NaN (the artifact refuses those, the coder must not care), the largest.
      const uint16_t kinds[] = {0x0001, 0x0000, 0x8000, 0xB800, 0x7C00, 0xFC00, 0x7E00, 0x7BFF, 0x2C00};
      for (uint64_t r = 0; r < rows; ++r) x.scales[r] = kinds[r % 9];
      expect_round_trip(x, label + ", odd scales");
      std::fill(x.values.begin(), x.values.end(), 0);
      expect_round_trip(x, label + ", zeros");
      for (size_t i = 0; i < x.values.size(); ++i) x.values[i] = static_cast<int8_t>(i % 3 == 0 ? m : -m);
      expect_round_trip(x, label + ", extremes");
    }
  }
  // Column means far outside the mean buckets, large and tiny scales.
  std::vector<double> sig(40, 2.0), mu(40);
  for (int c = 0; c < 40; ++c) mu[c] = (c - 20) * 3.0;
  expect_round_trip(columns(30, 40, 8, sig, mu, 0x7BFF, 5), "large means, largest scale");
  expect_round_trip(columns(30, 40, 8, sig, mu, 0x0001, 6), "large means, smallest scale");
}

TEST(ContextCoder, Empty) {
  EXPECT_EQ(context_encode({}, 0, 6, {}), "");
  EXPECT_EQ(context_encode({}, 3, 6, {1, 2, 3}), "");  // 3 rows of nothing
  EXPECT_TRUE(context_decode("", 0, 0, 6, {}, "s").empty());
  EXPECT_THROW(context_decode("x", 0, 0, 6, {}, "s"), Error);
  EXPECT_THROW(context_decode("", 4, 2, 6, {1, 2}, "s"), Error);
}

TEST(ContextCoder, BadArguments) {
  const Matrix x = iid(4, 6, 6, 3, 1);
  auto encode_error = [](const std::vector<int8_t>& v, uint64_t rows, int bits, const std::vector<uint16_t>& s) {
    try {
      context_encode(v, rows, bits, s);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(encode_error(x.values, 5, 6, std::vector<uint16_t>(5, 1)).find("do not make 5 equal rows"), std::string::npos);
  EXPECT_NE(encode_error(x.values, 4, 6, std::vector<uint16_t>(3, 1)).find("3 scales for 4 rows"), std::string::npos);
  EXPECT_NE(encode_error(x.values, 4, 9, x.scales).find("2..8 bits"), std::string::npos);
  EXPECT_NE(encode_error(x.values, 4, 1, x.scales).find("2..8 bits"), std::string::npos);
  std::vector<int8_t> wide = x.values;
  wide[3] = 32;
  EXPECT_NE(encode_error(wide, 4, 6, x.scales).find("outside +-31"), std::string::npos);
  const std::string good = context_encode(x.values, 4, 6, x.scales);
  EXPECT_NE(error_of(good, x, 25).find("do not make 4 equal rows"), std::string::npos);
  // At most 2^20 columns: one row of 2^20 + 1 values is refused both ways
  // (the decoder before allocating its column statistics).
  const uint64_t wide_row = (uint64_t{1} << 20) + 1;
  EXPECT_TRUE(context_codable(wide_row - 1, 1));
  EXPECT_FALSE(context_codable(wide_row, 1));
  EXPECT_TRUE(context_codable(0, 0));
  EXPECT_NE(encode_error(std::vector<int8_t>(wide_row, 0), 1, 6, {0x2C00}).find("at most 1048576 columns"),
            std::string::npos);
  Matrix one_row;
  one_row.rows = 1, one_row.scales = {0x2C00};
  EXPECT_NE(error_of(std::string(100000, '\0'), one_row, wide_row).find("at most 1048576 columns"), std::string::npos);
}

// What the model is for: columns with their own spread and mean code well
// below the order-0 entropy; i.i.d. values cost little more than it.
TEST(ContextCoder, LearnsColumnSpreadsAndMeans) {
  const uint64_t R = 512, C = 512;
  Lcg g(9);
  std::vector<double> spread(C), zero(C, 0.0), mean(C);
  for (uint64_t c = 0; c < C; ++c) spread[c] = std::exp2(3 * g.uniform()), mean[c] = 3 * (g.uniform() - 0.5);
  struct Case {
    const char* name;
    Matrix x;
    double most;  // coded bytes / order-0 entropy, at most
  };
  Case cases[] = {{"iid int6, sigma 3", iid(R, C, 6, 3.0, 1), 1.01},
                  {"iid int8, sigma 6", iid(R, C, 8, 6.0, 2), 1.01},
                  {"column spreads 1..8 (int6)", columns(R, C, 6, spread, zero, 0x2C00, 3), 0.97},
                  {"column means +-1.5 steps, sigma 1.5 (int8)",
                   columns(R, C, 8, std::vector<double>(C, 1.5), mean, 0x2C00, 4), 0.95}};
  for (const Case& k : cases) {
    const double h0 = order0_entropy_bits(k.x.values) / 8;
    const std::string coded = context_encode(k.x.values, k.x.rows, k.x.bits, k.x.scales);
    std::printf("[ context ] %s: %zu bytes, order-0 entropy %.0f (%+.2f%%)\n", k.name, coded.size(), h0,
                100 * (coded.size() / h0 - 1));
    EXPECT_LE(static_cast<double>(coded.size()), k.most * h0 + 64) << k.name;
    EXPECT_EQ(context_decode(coded, k.x.values.size(), k.x.rows, k.x.bits, k.x.scales, k.name), k.x.values);
  }
}

TEST(ContextCoder, HostileStreams) {
  Matrix x = iid(20, 30, 6, 4, 7);
  const std::string good = context_encode(x.values, x.rows, x.bits, x.scales);
  ASSERT_EQ(error_of(good, x), "");
  // Every truncation runs out of bytes; bytes after the end are refused.
  for (size_t n = 0; n < good.size(); ++n) EXPECT_NE(error_of(good.substr(0, n), x), "") << "truncated to " << n;
  EXPECT_NE(error_of(good + '\0', x).find("1 bytes after its end"), std::string::npos);
  // A count the stream cannot hold is refused before allocating for it; the
  // most compressible input there is (all zeros) stays well inside the bound.
  EXPECT_NE(error_of(good, x, uint64_t{20} << 20).find("cannot hold"), std::string::npos);
  const Matrix zeros = columns(4096, 1024, 8, std::vector<double>(1024, 0.0), std::vector<double>(1024, 0.0), 0x2C00, 1);
  const std::string z = context_encode(zeros.values, zeros.rows, zeros.bits, zeros.scales);
  EXPECT_LT(zeros.values.size() / 16600, z.size()) << z.size() << " bytes for " << zeros.values.size() << " zeros";
  EXPECT_EQ(context_decode(z, zeros.values.size(), zeros.rows, zeros.bits, zeros.scales, "z"), zeros.values);
  std::string first = good;
  first[0] = 1;
  EXPECT_NE(error_of(first, x).find("first byte is not 0"), std::string::npos);
  // More values than were coded run out; fewer leave bytes over.
  x.rows = 40, x.scales.resize(40, 0x2C00);
  EXPECT_NE(error_of(good, x, 1200), "");
  x.rows = 10;
  x.scales.resize(10);
  EXPECT_NE(error_of(good, x, 300), "");
  x.rows = 20;
  x.scales.resize(20);
  // Any flipped bit, any other width: an error or values within the width.
  for (size_t bit = 8; bit < 8 * good.size(); ++bit) {
    std::string b = good;
    b[bit / 8] = static_cast<char>(b[bit / 8] ^ (1 << (bit % 8)));
    for (int bits : {6, 2, 8}) {
      try {
        const std::vector<int8_t> v = context_decode(b, x.values.size(), x.rows, bits, x.scales, "s");
        const int m = (1 << (bits - 1)) - 1;
        ASSERT_EQ(v.size(), x.values.size());
        for (int8_t y : v) ASSERT_LE(std::abs(y), m);
      } catch (const Error&) {
      }
    }
  }
}

// The format is the model: these bytes must never change (a change needs a
// new coding name). FNV-1a of the stream for a fixed input.
constexpr size_t kPinnedSize = 1587;
constexpr uint64_t kPinnedHash = 5028794906010887416ull;

TEST(ContextCoder, PinnedBytes) {
  std::vector<double> spread(48), mean(48);
  for (int c = 0; c < 48; ++c) spread[c] = 1 + c % 7, mean[c] = (c % 5 - 2) * 0.7;
  Matrix x = columns(64, 48, 6, spread, mean, 0x2C00, 11);
  for (uint64_t r = 0; r < x.rows; ++r) x.scales[r] = static_cast<uint16_t>(0x2800 + 37 * r);
  const std::string coded = context_encode(x.values, x.rows, x.bits, x.scales);
  uint64_t h = 1469598103934665603ull;
  for (char c : coded) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  EXPECT_EQ(coded.size(), kPinnedSize);
  EXPECT_EQ(h, kPinnedHash);
}

}  // namespace
}  // namespace pgolf::quant
