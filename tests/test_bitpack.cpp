// Fixed-width bit packing: round trips at every width, the exact byte layout,
// and that unpacking refuses sizes and padding it did not write.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "data/error.h"
#include "quant/bitpack.h"

namespace pgolf::quant {
namespace {

std::vector<int8_t> random_values(size_t n, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(d(rng));
  return v;
}

TEST(Bitpack, RoundTripEveryWidthAndLength) {
  for (int bits = 2; bits <= 8; ++bits) {
    const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    for (size_t n : {0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1001}) {
      std::vector<int8_t> v = random_values(n, bits, static_cast<uint32_t>(bits * 1000 + n));
      // The extremes at both ends of the stream.
      if (n >= 1) v[0] = static_cast<int8_t>(lo);
      if (n >= 2) v[n - 1] = static_cast<int8_t>(hi);
      if (n >= 3) v[n / 2] = 0;
      const std::string packed = bitpack(v, bits);
      ASSERT_EQ(packed.size(), (n * bits + 7) / 8) << bits << " " << n;
      ASSERT_EQ(packed_size(n, bits), packed.size());
      EXPECT_EQ(bitunpack(packed, n, bits, "t"), v) << "bits " << bits << " n " << n;
    }
  }
}

TEST(Bitpack, LayoutIsTwosComplementLsbFirst) {
  // 3 bits: 1 -> 001, -1 -> 111, -4 -> 100, 3 -> 011; stream bits LSB first.
  const std::string p = bitpack({1, -1, -4, 3}, 3);
  ASSERT_EQ(p.size(), 2u);
  const uint32_t stream = 1u | (7u << 3) | (4u << 6) | (3u << 9);
  EXPECT_EQ(static_cast<unsigned char>(p[0]), stream & 0xFF);
  EXPECT_EQ(static_cast<unsigned char>(p[1]), stream >> 8);
  // 8 bits is plain int8 bytes.
  EXPECT_EQ(bitpack({-128, 127, -1, 0}, 8), std::string("\x80\x7f\xff\x00", 4));
}

TEST(Bitpack, RejectsBadInput) {
  EXPECT_THROW(bitpack({4}, 3), Error);   // 3 bits hold -4..3
  EXPECT_THROW(bitpack({-5}, 3), Error);
  EXPECT_THROW(bitpack({0}, 1), Error);   // widths 2..8 only
  EXPECT_THROW(bitpack({0}, 9), Error);
  const std::string p = bitpack(random_values(10, 5, 1), 5);  // 50 bits -> 7 bytes
  ASSERT_EQ(p.size(), 7u);
  EXPECT_THROW(bitunpack(p.substr(0, 6), 10, 5, "t"), Error);   // short
  EXPECT_THROW(bitunpack(p + '\0', 10, 5, "t"), Error);         // long
  EXPECT_THROW(bitunpack(p, 10, 9, "t"), Error);
  EXPECT_THROW(bitunpack("", 1, 4, "t"), Error);
  EXPECT_TRUE(bitunpack("", 0, 4, "t").empty());
  std::string pad = p;
  pad.back() = static_cast<char>(pad.back() | 0x80);  // bit 55 is padding
  try {
    bitunpack(pad, 10, 5, "vals");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vals: "), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace pgolf::quant
