#include "quant/bitpack.h"

#include "data/error.h"

namespace pgolf::quant {
namespace {

void check_bits(int bits, const std::string& what) {
  if (bits < 2 || bits > 8) fail(what, "bit width " + std::to_string(bits) + " is not in 2..8");
}

}  // namespace

uint64_t packed_size(uint64_t n, int bits) {
  // n * bits could overflow only for n near 2^61, far beyond any caller's bound.
  return (n / 8) * static_cast<uint64_t>(bits) + ((n % 8) * static_cast<uint64_t>(bits) + 7) / 8;
}

std::string bitpack(const std::vector<int8_t>& values, int bits) {
  check_bits(bits, "bitpack");
  const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  const uint32_t mask = (1u << bits) - 1;
  std::string out(packed_size(values.size(), bits), '\0');
  uint32_t acc = 0;  // pending bits, LSB first; never more than 15 of them
  int have = 0;
  size_t o = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    const int v = values[i];
    if (v < lo || v > hi)
      fail("bitpack", "value " + std::to_string(v) + " at " + std::to_string(i) + " does not fit " +
                          std::to_string(bits) + " bits");
    acc |= (static_cast<uint32_t>(v) & mask) << have;
    have += bits;
    while (have >= 8) {
      out[o++] = static_cast<char>(acc & 0xFF);
      acc >>= 8;
      have -= 8;
    }
  }
  if (have > 0) out[o++] = static_cast<char>(acc & 0xFF);
  return out;
}

std::vector<int8_t> bitunpack(const std::string& bytes, uint64_t count, int bits, const std::string& what) {
  check_bits(bits, what);
  const uint64_t want = packed_size(count, bits);
  if (bytes.size() != want)
    fail(what, "packed values are " + std::to_string(bytes.size()) + " bytes, " + std::to_string(count) + " values of " +
                   std::to_string(bits) + " bits need " + std::to_string(want));
  std::vector<int8_t> out(count);
  const uint32_t mask = (1u << bits) - 1, sign = 1u << (bits - 1);
  uint32_t acc = 0;
  int have = 0;
  size_t in = 0;
  for (uint64_t i = 0; i < count; ++i) {
    while (have < bits) {  // in < bytes.size() holds: the size was checked above
      acc |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[in++])) << have;
      have += 8;
    }
    const uint32_t u = acc & mask;
    acc >>= bits;
    have -= bits;
    out[i] = static_cast<int8_t>(static_cast<int>(u ^ sign) - static_cast<int>(sign));  // sign-extend
  }
  // The padding must be zero so that each value list has exactly one encoding.
  if (acc != 0) fail(what, "packed values have non-zero padding bits");
  return out;
}

}  // namespace pgolf::quant
