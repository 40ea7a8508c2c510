// The order-0 rANS coder: round trips on every kind of distribution, coded
// size against the entropy floor, and hostile tables and streams.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "data/error.h"
#include "quant/rans.h"

namespace pgolf::quant {
namespace {

// Rounded N(0, sigma) clipped to +-max: the shape of GPTQ output.
std::vector<int8_t> gaussian(size_t n, double sigma, int max, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0.0, sigma);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(std::clamp(static_cast<int>(std::lround(d(rng))), -max, max));
  return v;
}

void expect_round_trip(const std::vector<int8_t>& v, const char* label) {
  const std::string coded = rans_encode(v);
  EXPECT_EQ(rans_decode(coded, v.size(), label), v) << label;
}

TEST(Rans, RoundTrips) {
  expect_round_trip({}, "empty");
  EXPECT_TRUE(rans_encode({}).empty());
  expect_round_trip({5}, "one value");
  expect_round_trip(std::vector<int8_t>(100000, -3), "single symbol");
  expect_round_trip({-128, 127}, "the extremes");
  std::vector<int8_t> all(256 * 40);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int8_t>(i * 37);
  expect_round_trip(all, "uniform over all 256");
  std::mt19937 rng(7);
  std::vector<int8_t> uni(50000);
  for (auto& x : uni) x = static_cast<int8_t>(static_cast<int>(rng() % 63) - 31);
  expect_round_trip(uni, "uniform int6");
  expect_round_trip(gaussian(200000, 0.4, 127, 1), "very skewed");
  std::vector<int8_t> skew(100000, 0);
  skew[12345] = 100;  // one rare symbol among many
  skew[99999] = -100;
  expect_round_trip(skew, "rare symbols");
  for (size_t n = 1; n < 40; ++n) expect_round_trip(gaussian(n, 3, 7, static_cast<uint32_t>(n)), "short");
}

TEST(Rans, SingleSymbolCostsOnlyItsHeader) {
  const std::string coded = rans_encode(std::vector<int8_t>(1 << 20, 9));
  EXPECT_LE(coded.size(), 12u);  // table (4 bytes) + state (8)
}

TEST(Rans, EntropyOfKnownDistributions) {
  EXPECT_EQ(order0_entropy_bits({}), 0.0);
  EXPECT_EQ(order0_entropy_bits({3, 3, 3}), 0.0);
  EXPECT_DOUBLE_EQ(order0_entropy_bits({1, 2, 1, 2}), 4.0);
  EXPECT_DOUBLE_EQ(order0_entropy_bits({0, 1, 2, 3}), 8.0);
}

// The acceptance bar: within 0.5% (+ a small constant for table and state)
// of the order-0 entropy on a million int6-like values.
TEST(Rans, SizeNearOrder0Entropy) {
  for (double sigma : {8.0, 2.0}) {
    const std::vector<int8_t> v = gaussian(1000000, sigma, 31, 42);
    const double floor_bytes = order0_entropy_bits(v) / 8;
    const std::string coded = rans_encode(v);
    EXPECT_LE(static_cast<double>(coded.size()), floor_bytes * 1.005 + 256) << "sigma " << sigma;
    EXPECT_GE(static_cast<double>(coded.size()), floor_bytes) << "sigma " << sigma;
    std::printf("[ rans ] 1M int6 values, sigma %.0f: %zu bytes, order-0 entropy %.0f bytes (+%.4f%%)\n", sigma,
                coded.size(), floor_bytes, 100.0 * (static_cast<double>(coded.size()) / floor_bytes - 1));
    EXPECT_EQ(rans_decode(coded, v.size(), "big"), v);
  }
}

std::string error_of(const std::string& bytes, uint64_t count) {
  try {
    rans_decode(bytes, count, "s");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Rans, HostileInputs) {
  const std::vector<int8_t> v = gaussian(5000, 3, 31, 3);
  const std::string good = rans_encode(v);
  ASSERT_EQ(error_of(good, v.size()), "");
  // Wrong counts: too many values run off the end, too few leave bytes over
  // or end in the wrong state.
  EXPECT_NE(error_of(good, v.size() + 1000), "");
  EXPECT_NE(error_of(good, v.size() - 1), "");
  EXPECT_NE(error_of(good, 0), "");
  // A count the stream cannot hold is refused before allocating for it.
  EXPECT_NE(error_of(good, uint64_t{1} << 40).find("cannot hold"), std::string::npos);
  EXPECT_NE(error_of("", 1), "");
  // Truncations and trailing garbage.
  for (size_t k = 0; k < good.size(); ++k) EXPECT_NE(error_of(good.substr(0, k), v.size()), "") << k;
  EXPECT_NE(error_of(good + std::string(4, '\0'), v.size()), "");
  EXPECT_NE(error_of(good + "x", v.size()), "");
  // Tables: scale too large, empty range, frequencies not summing to the
  // total, zero-frequency range ends, overlong varints.
  const std::string state = std::string("\x00\x00\x00\x80\x00\x00\x00\x00", 8);  // kLow: decodes nothing cleanly
  EXPECT_NE(error_of(std::string("\x11\x05\x05\x01", 4) + state, 1), "");   // scale 17
  EXPECT_NE(error_of(std::string("\x01\x05\x04", 3) + state, 1), "");       // lo > hi
  EXPECT_NE(error_of(std::string("\x01\x05\x06\x01\x02", 5) + state, 1), "");  // 1 + 2 != 2
  EXPECT_NE(error_of(std::string("\x01\x05\x06\x00\x02", 5) + state, 1), "");  // freq[lo] = 0
  EXPECT_NE(error_of(std::string("\x01\x05\x05\x82\x00", 5) + state, 1), "");  // overlong varint for 2
  EXPECT_NE(error_of(std::string("\x01\x05\x05\x03", 4) + state, 1), "");      // 3 > total 2
  // A valid table with a state below the range, and one at 2^63.
  EXPECT_NE(error_of(std::string("\x00\x05\x05\x01", 4) + std::string(8, '\0'), 1), "");
  EXPECT_NE(error_of(std::string("\x00\x05\x05\x01", 4) + std::string("\0\0\0\0\0\0\0\x80", 8), 1), "");
  // ... and with the right state it decodes (scale 0: one symbol, no bits).
  EXPECT_EQ(rans_decode(std::string("\x00\x05\x05\x01", 4) + state, 3, "s"), (std::vector<int8_t>{-123, -123, -123}));
  // Every single-bit flip either fails or (rarely) decodes to something else
  // of the right length -- never crashes.
  for (size_t bit = 0; bit < 8 * std::min<size_t>(good.size(), 400); ++bit) {
    std::string b = good;
    b[bit / 8] = static_cast<char>(b[bit / 8] ^ (1 << (bit % 8)));
    try {
      EXPECT_EQ(rans_decode(b, v.size(), "s").size(), v.size());
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace pgolf::quant
