// The context value codings (ContextModel::Columns = "context",
// ContextModel::Linear = "context+linear"): round trips for every width, shape
// and kind of scale; they learn column spreads and means (coded size well
// below the order-0 entropy on such values, near it on i.i.d. values), and
// Linear learns low-rank row structure; hostile streams are errors or
// in-range values, never crashes; and each format is pinned by the exact
// bytes of one stream.
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

constexpr ContextModel kModels[] = {ContextModel::Columns, ContextModel::Linear};
const char* name_of(ContextModel how) { return how == ContextModel::Columns ? "context" : "context+linear"; }

std::string error_of(const std::string& bytes, const Matrix& x, ContextModel how, uint64_t count = ~0ull, int bits = 0) {
  try {
    context_decode(bytes, count == ~0ull ? x.values.size() : count, x.rows, bits ? bits : x.bits, x.scales, how, "s");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_round_trip(const Matrix& x, const std::string& label) {
  for (ContextModel how : kModels) {
    const std::string coded = context_encode(x.values, x.rows, x.bits, x.scales, how);
    EXPECT_EQ(context_decode(coded, x.values.size(), x.rows, x.bits, x.scales, how, label), x.values)
        << label << ", " << name_of(how);
    EXPECT_EQ(context_encode(x.values, x.rows, x.bits, x.scales, how), coded)
        << label << ", " << name_of(how) << ": not deterministic";
  }
}

// Rank-`rank` structure plus noise, per row r: round(sum_k u_rk V_kc + noise),
// clipped to +-m (an embedding's shape: rows share a few directions).
Matrix low_rank(uint64_t rows, uint64_t cols, int bits, int rank, double factor, double noise, uint64_t seed) {
  Matrix x;
  x.rows = rows;
  x.bits = bits;
  const int m = (1 << (bits - 1)) - 1;
  Lcg g(seed);
  std::vector<double> basis(static_cast<size_t>(rank) * cols);
  for (double& b : basis) b = g.normal();
  for (uint64_t r = 0; r < rows; ++r) {
    std::vector<double> u(rank);
    for (double& a : u) a = factor * g.normal();
    for (uint64_t c = 0; c < cols; ++c) {
      double y = noise * g.normal();
      for (int k = 0; k < rank; ++k) y += u[k] * basis[k * cols + c];
      x.values.push_back(static_cast<int8_t>(std::clamp(static_cast<int>(std::lround(y)), -m, m)));
    }
  }
  x.scales.assign(rows, 0x2C00);
  return x;
}

TEST(ContextCoder, RoundTrips) {
  for (int bits = 2; bits <= 8; ++bits) {
    const int m = (1 << (bits - 1)) - 1;
    // 100 x 20 and 300 x 3: past the linear model's first fits (32, 64, ... rows).
    for (auto [rows, cols] :
         {std::pair<uint64_t, uint64_t>{1, 1}, {1, 50}, {50, 1}, {7, 13}, {64, 64}, {100, 20}, {300, 3}}) {
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
  // Strong row structure: predictions near and past the value range.
  expect_round_trip(low_rank(200, 24, 8, 3, 20.0, 1.0, 7), "low rank, int8, saturating");
  expect_round_trip(low_rank(200, 24, 4, 2, 2.0, 0.5, 8), "low rank, int4");
  // Constant columns (variance 0): the ridge keeps the factorisation defined.
  Matrix flat = low_rank(100, 10, 6, 1, 3.0, 1.0, 9);
  for (uint64_t r = 0; r < flat.rows; ++r) flat.values[r * 10 + 4] = 7, flat.values[r * 10 + 5] = 0;
  expect_round_trip(flat, "constant columns");
}

TEST(ContextCoder, Empty) {
  for (ContextModel how : kModels) {
    EXPECT_EQ(context_encode({}, 0, 6, {}, how), "");
    EXPECT_EQ(context_encode({}, 3, 6, {1, 2, 3}, how), "");  // 3 rows of nothing
    EXPECT_TRUE(context_decode("", 0, 0, 6, {}, how, "s").empty());
    EXPECT_THROW(context_decode("x", 0, 0, 6, {}, how, "s"), Error);
    EXPECT_THROW(context_decode("", 4, 2, 6, {1, 2}, how, "s"), Error);
  }
}

TEST(ContextCoder, BadArguments) {
  const Matrix x = iid(4, 6, 6, 3, 1);
  auto encode_error = [](const std::vector<int8_t>& v, uint64_t rows, int bits, const std::vector<uint16_t>& s,
                         ContextModel how = ContextModel::Columns) {
    try {
      context_encode(v, rows, bits, s, how);
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
  const std::string good = context_encode(x.values, 4, 6, x.scales, ContextModel::Columns);
  EXPECT_NE(error_of(good, x, ContextModel::Columns, 25).find("do not make 4 equal rows"), std::string::npos);
  // At most 2^20 columns: one row of 2^20 + 1 values is refused both ways
  // (the decoder before allocating its column statistics).
  const uint64_t wide_row = (uint64_t{1} << 20) + 1;
  EXPECT_TRUE(context_codable(wide_row - 1, 1, ContextModel::Columns));
  EXPECT_FALSE(context_codable(wide_row, 1, ContextModel::Columns));
  EXPECT_TRUE(context_codable(0, 0, ContextModel::Columns));
  EXPECT_FALSE(context_codable(7, 2, ContextModel::Columns));  // not whole rows
  EXPECT_NE(encode_error(std::vector<int8_t>(wide_row, 0), 1, 6, {0x2C00}).find("at most 1048576 columns"),
            std::string::npos);
  Matrix one_row;
  one_row.rows = 1, one_row.scales = {0x2C00};
  EXPECT_NE(error_of(std::string(100000, '\0'), one_row, ContextModel::Columns, wide_row).find("at most 1048576 columns"),
            std::string::npos);
  // The linear model keeps a C x C covariance: at most 1024 columns.
  EXPECT_TRUE(context_codable(2 * 1024, 2, ContextModel::Linear));
  EXPECT_FALSE(context_codable(2 * 1025, 2, ContextModel::Linear));
  EXPECT_NE(encode_error(std::vector<int8_t>(1025, 0), 1, 6, {0x2C00}, ContextModel::Linear).find("at most 1024 columns"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(100, '\0'), one_row, ContextModel::Linear, 1025).find("at most 1024 columns"),
            std::string::npos);
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
    double most[2];  // coded bytes / order-0 entropy, at most
  };
  // `most`: per model (Columns, Linear).
  Case cases[] = {{"iid int6, sigma 3", iid(R, C, 6, 3.0, 1), {1.01, 1.02}},
                  {"iid int8, sigma 6", iid(R, C, 8, 6.0, 2), {1.01, 1.02}},
                  {"column spreads 1..8 (int6)", columns(R, C, 6, spread, zero, 0x2C00, 3), {0.97, 0.98}},
                  {"column means +-1.5 steps, sigma 1.5 (int8)",
                   columns(R, C, 8, std::vector<double>(C, 1.5), mean, 0x2C00, 4), {0.95, 0.96}},
                  // 4 directions carry half the variance: only Linear sees them.
                  {"rank 4 + noise (int8)", low_rank(2048, 128, 8, 4, 2.0, 5.6, 5), {1.0, 0.97}}};
  for (const Case& k : cases) {
    const double h0 = order0_entropy_bits(k.x.values) / 8;
    for (ContextModel how : kModels) {
      const std::string coded = context_encode(k.x.values, k.x.rows, k.x.bits, k.x.scales, how);
      std::printf("[ %s ] %s: %zu bytes, order-0 entropy %.0f (%+.2f%%)\n", name_of(how), k.name, coded.size(), h0,
                  100 * (coded.size() / h0 - 1));
      EXPECT_LE(static_cast<double>(coded.size()), k.most[how == ContextModel::Linear] * h0 + 64)
          << k.name << ", " << name_of(how);
      EXPECT_EQ(context_decode(coded, k.x.values.size(), k.x.rows, k.x.bits, k.x.scales, how, k.name), k.x.values);
    }
  }
}

TEST(ContextCoder, HostileStreams) {
  for (ContextModel how : kModels) {
    SCOPED_TRACE(name_of(how));
    Matrix x = iid(40, 15, 6, 4, 7);  // past the linear model's first fit (32 rows)
    const std::string good = context_encode(x.values, x.rows, x.bits, x.scales, how);
    ASSERT_EQ(error_of(good, x, how), "");
    // Every truncation runs out of bytes; bytes after the end are refused.
    for (size_t n = 0; n < good.size(); ++n) EXPECT_NE(error_of(good.substr(0, n), x, how), "") << "truncated to " << n;
    EXPECT_NE(error_of(good + '\0', x, how).find("1 bytes after its end"), std::string::npos);
    // A count the stream cannot hold is refused before allocating for it; the
    // most compressible input there is (all zeros) stays well inside the bound.
    Matrix tall = x;
    tall.rows = 1 << 14, tall.scales.resize(tall.rows, 0x2C00);
    EXPECT_NE(error_of(good, tall, how, tall.rows * 1000).find("cannot hold"), std::string::npos);
    const Matrix zeros = columns(4096, 256, 8, std::vector<double>(256, 0.0), std::vector<double>(256, 0.0), 0x2C00, 1);
    const std::string z = context_encode(zeros.values, zeros.rows, zeros.bits, zeros.scales, how);
    EXPECT_LT(zeros.values.size() / 16600, z.size()) << z.size() << " bytes for " << zeros.values.size() << " zeros";
    EXPECT_EQ(context_decode(z, zeros.values.size(), zeros.rows, zeros.bits, zeros.scales, how, "z"), zeros.values);
    std::string first = good;
    first[0] = 1;
    EXPECT_NE(error_of(first, x, how).find("first byte is not 0"), std::string::npos);
    // More values than were coded run out; fewer leave bytes over.
    x.rows = 80, x.scales.resize(80, 0x2C00);
    EXPECT_NE(error_of(good, x, how, 1200), "");
    x.rows = 20;
    x.scales.resize(20);
    EXPECT_NE(error_of(good, x, how, 300), "");
    x.rows = 40;
    x.scales.resize(40, 0x2C00);
    // Any flipped bit, any other width: an error or values within the width.
    for (size_t bit = 8; bit < 8 * good.size(); ++bit) {
      std::string b = good;
      b[bit / 8] = static_cast<char>(b[bit / 8] ^ (1 << (bit % 8)));
      for (int bits : {6, 2, 8}) {
        try {
          const std::vector<int8_t> v = context_decode(b, x.values.size(), x.rows, bits, x.scales, how, "s");
          const int m = (1 << (bits - 1)) - 1;
          ASSERT_EQ(v.size(), x.values.size());
          for (int8_t y : v) ASSERT_LE(std::abs(y), m);
        } catch (const Error&) {
        }
      }
    }
  }
}

// The format is the model: these bytes must never change (a change needs a
// new coding name). FNV-1a of the stream for a fixed input. The linear
// model's stream also pins its binary64 arithmetic: the GPU build (another
// compiler) runs this test too.
uint64_t fnv1a(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (char c : bytes) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

TEST(ContextCoder, PinnedBytes) {
  std::vector<double> spread(48), mean(48);
  for (int c = 0; c < 48; ++c) spread[c] = 1 + c % 7, mean[c] = (c % 5 - 2) * 0.7;
  Matrix x = columns(64, 48, 6, spread, mean, 0x2C00, 11);
  for (uint64_t r = 0; r < x.rows; ++r) x.scales[r] = static_cast<uint16_t>(0x2800 + 37 * r);
  const std::string coded = context_encode(x.values, x.rows, x.bits, x.scales, ContextModel::Columns);
  EXPECT_EQ(coded.size(), 1587u);
  EXPECT_EQ(fnv1a(coded), 5028794906010887416ull);
}

TEST(ContextCoder, PinnedBytesLinear) {
  Matrix x = low_rank(600, 40, 8, 3, 4.0, 3.0, 12);  // fits at rows 32, 64, ..., 288, 352, ...
  for (uint64_t r = 0; r < x.rows; ++r) x.scales[r] = static_cast<uint16_t>(0x2800 + 37 * r);
  const std::string coded = context_encode(x.values, x.rows, x.bits, x.scales, ContextModel::Linear);
  EXPECT_EQ(coded.size(), 13741u);
  EXPECT_EQ(fnv1a(coded), 87329244441573478ull);
}

}  // namespace
}  // namespace pgolf::quant
