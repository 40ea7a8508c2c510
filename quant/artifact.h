// pgolf's artifact (.pgz): a quantized model in one self-checking file.
// docs/ARTIFACT_FORMAT.md is the byte-level statement; this header is the
// in-memory form. Plain data, no tensors: the reader is fuzzed on its own.
//
// A quantized tensor holds signed integers q in [-(2^(bits-1) - 1),
// 2^(bits-1) - 1] (symmetric, as the reference's GPTQ writes them), row-major
// over shape, and one fp16 scale per row (row = first dimension); its value is
// q * scale[row]. A raw tensor holds its little-endian bytes in its dtype
// (small tensors and non-floats pass through).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pgolf::quant {

struct ArtifactTensor {
  enum class Kind { Quantized, Raw };
  std::string name;
  std::vector<int64_t> shape;
  Kind kind = Kind::Raw;
  // Quantized
  int bits = 0;                  // 2..8
  std::vector<int8_t> values;    // numel(shape) values
  std::vector<uint16_t> scales;  // fp16 bit patterns, shape[0] of them
  std::string method;            // "gptq" | "rtn": how the values were chosen (informational)
  // Raw
  std::string dtype;  // "float16" | "bfloat16" | "float32" | "float64" | "int8" | "int16" | "int32" | "int64" | "uint8" | "bool"
  std::string data;   // numel * element size bytes
};

struct Artifact {
  std::string config_json;            // the ModelConfig
  std::string tokenizer_fingerprint;  // sha256 hex of the tokenizer model the weights were trained with ("" = unknown)
  std::string meta_json = "{}";       // how it was made (bits per class, clip sigmas, calibration) -- informational
  std::vector<ArtifactTensor> tensors;
};

// How values are written. Auto tries each coding per section and keeps the
// smallest. Context (quant/context_coder.h) is the smallest on trained
// weights, ContextLinear on embeddings (Auto tries it on matrices with at
// least 4 rows a column; forced, it falls back to Context over 1024 columns);
// Entropy decodes about 10x faster.
enum class ValueCoding { Auto, Entropy, PackedBrotli, PackedZstd, Context, ContextLinear };

// "auto", "context", "context+linear", "entropy", "brotli", "zstd" (the
// --codec names); a pgolf::Error otherwise.
ValueCoding parse_value_coding(const std::string& name);

struct ArtifactWriteOptions {
  ValueCoding values = ValueCoding::Auto;
};

// Where the bytes went: one row per tensor (its values' and scales' share of
// the file), and the totals.
struct ArtifactTensorLayout {
  std::string name;
  std::vector<int64_t> shape;
  std::string kind;   // "quantized" | "raw"
  int bits = 0;       // quantized only
  std::string dtype;  // raw only
  std::string coding; // how its payload is coded ("entropy", "packed+brotli", ...)
  uint64_t raw_bytes = 0;         // values at 1 byte each (quantized) or data bytes (raw) + scales at 2 bytes
  uint64_t stored_bytes = 0;      // bytes of the file attributed to this tensor
  double entropy_bits = 0;        // quantized: order-0 entropy of its values, in bits (the floor of a static code)
};
struct ArtifactLayout {
  uint64_t file_bytes = 0;
  uint64_t header_bytes = 0;  // fixed header + JSON section
  std::vector<ArtifactTensorLayout> tensors;
};

// Serialize / parse. decode_artifact treats its input as hostile: any bad
// byte is a pgolf::Error naming `what`, never a crash, and allocations are
// bounded by what the (checksummed) header declares, itself bounded.
std::string encode_artifact(const Artifact& a, const ArtifactWriteOptions& opt = {},
                            ArtifactLayout* layout = nullptr);
Artifact decode_artifact(const std::string& bytes, const std::string& what, ArtifactLayout* layout = nullptr);

// What decoding may cost. The defaults fit any real model; fuzzers lower them.
struct ArtifactLimits {
  uint64_t max_file = 2ull << 30;     // load_artifact: file size
  uint64_t max_decoded = 1ull << 30;  // all sections decoded, together (checked before allocating)
  uint64_t max_json = 16ull << 20;    // the JSON section, decoded
  uint64_t max_tensors = 1u << 16;
};
Artifact decode_artifact(const std::string& bytes, const std::string& what, ArtifactLayout* layout,
                         const ArtifactLimits& limits);

// For tests and fuzzers: the same bytes with every checksum (section CRCs,
// JSON CRC, file length, SHA-256) recomputed, so that edits reach the checks
// behind them. Best effort on any input (never throws); the JSON comes back
// re-serialized, uncompressed, when it parses.
std::string reseal_artifact(const std::string& bytes);

// True when the bytes start with the artifact magic (model-file detection).
bool is_artifact(const std::string& head);

// Files: written to a temp file and renamed into place; read with a size bound.
void save_artifact(const std::string& path, const Artifact& a, const ArtifactWriteOptions& opt = {},
                   ArtifactLayout* layout = nullptr);
Artifact load_artifact(const std::string& path, ArtifactLayout* layout = nullptr);

}  // namespace pgolf::quant
