// Fixed-width bit packing of small signed integers, the "packed" value coding
// of pgolf artifacts (docs/ARTIFACT_FORMAT.md).
//
// Layout: value i occupies stream bits [i*b, (i+1)*b) as its b-bit two's
// complement, least significant bit first; stream bit k is bit (k % 8) of
// byte k / 8. n values take ceil(n*b / 8) bytes and the unused high bits of
// the last byte are zero. Two's complement (not an offset) keeps 0 as all-zero
// bits, so the small values that dominate quantized weights stay regular.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pgolf::quant {

// Bytes that n values of width bits take: ceil(n * bits / 8).
uint64_t packed_size(uint64_t n, int bits);

// bits in 2..8; every value in [-2^(bits-1), 2^(bits-1) - 1], else pgolf::Error.
std::string bitpack(const std::vector<int8_t>& values, int bits);

// Inverse of bitpack for exactly `count` values (the count comes from the
// caller, never from the bytes). The byte count must be packed_size(count,
// bits) and the padding bits zero; anything else is a pgolf::Error naming
// `what`.
std::vector<int8_t> bitunpack(const std::string& bytes, uint64_t count, int bits, const std::string& what);

}  // namespace pgolf::quant
