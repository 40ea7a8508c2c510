// A static order-0 entropy coder (range asymmetric numeral systems, rANS) for
// int8 values, the "entropy" value coding of pgolf artifacts. The byte layout
// is in docs/ARTIFACT_FORMAT.md ("entropy coding").
//
// Values map to symbols v + 128 (0..255). The encoder counts them, scales the
// counts to frequencies summing to 2^k (k <= 16, picked per stream to
// minimize table + code bytes), stores the table compactly, then codes the
// values with a 64-bit state renormalized in 32-bit words. Coded size is
// within a fraction of a percent of the order-0 entropy plus ~10-200 bytes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pgolf::quant {

// The order-0 (empirical) entropy of the values, in bits for all of them:
// sum over distinct values of -count * log2(count / n). 0 for n <= 1.
double order0_entropy_bits(const std::vector<int8_t>& values);

// Empty input gives an empty string.
std::string rans_encode(const std::vector<int8_t>& values);

// Inverse of rans_encode for exactly `count` values (the count comes from the
// caller). Hostile input -- a bad table, a state out of range, a stream that
// ends early or has bytes left over, a final state that is not the initial
// one -- is a pgolf::Error naming `what`. Allocates `count` bytes, so callers
// bound it first.
std::vector<int8_t> rans_decode(const std::string& bytes, uint64_t count, const std::string& what);

}  // namespace pgolf::quant
