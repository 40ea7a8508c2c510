// The "context" value coding of pgolf artifacts: adaptive binary arithmetic
// coding of a quantized matrix's values, row by row, with contexts taken from
// the rows already coded. docs/ARTIFACT_FORMAT.md ("context coding") states
// the model and the stream exactly.
//
// Why: after the per-row scales, the values of a GPTQ matrix are close to
// independent, but their spread differs from column to column (input
// channels differ in importance) and embedding columns have a mean. A static
// per-tensor code (the "entropy" coding) cannot use either; this model learns
// each column's spread and mean from the rows above it and codes about 1.5%
// below the order-0 entropy on trained models (docs/BENCHMARKS.md).
//
// Each value v (|v| <= m = 2^(bits-1) - 1) becomes binary decisions -- zero?,
// sign, then |v| in unary -- each coded with a probability mixed from two
// adaptive counters: one under the column's spread bucket, one under the
// spread and the column's mean (in this row's quantization steps). All model
// arithmetic is integer, so every platform decodes the same values.
//
// ContextModel::Linear adds a prediction of each value from the values to its
// left in the same row, under the column covariance of the rows above (a
// conditional Gaussian; see LinearPredictor in the .cpp): the value is coded
// relative to the rounded prediction. It pays on embeddings (rows = tokens,
// with low-rank structure), not on Muon-trained matrices, and its arithmetic
// is IEEE binary64 in a fixed order.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pgolf::quant {

// Columns: the artifact coding "context"; Linear: "context+linear".
enum class ContextModel { Columns, Linear };

// Whether a tensor of `count` values in `rows` rows can be coded this way (at
// most 2^20 columns, 1024 for Linear; every real weight matrix has far fewer
// than 2^20).
bool context_codable(uint64_t count, uint64_t rows, ContextModel how);

// values: rows x cols, row-major, cols within context_codable's limit;
// scales: one fp16 bit pattern per row. bits in 2..8, every value within
// +-(2^(bits-1) - 1).
std::string context_encode(const std::vector<int8_t>& values, uint64_t rows, int bits,
                           const std::vector<uint16_t>& scales, ContextModel how);

// Inverse of context_encode: exactly rows x (count / rows) values. A stream
// that ends early or has bytes left over is a pgolf::Error naming `what`.
// Any other bytes decode to some values within +-(2^(bits-1) - 1) (the
// artifact's checksums catch corruption before this runs).
std::vector<int8_t> context_decode(const std::string& bytes, uint64_t count, uint64_t rows, int bits,
                                   const std::vector<uint16_t>& scales, ContextModel how, const std::string& what);

}  // namespace pgolf::quant
