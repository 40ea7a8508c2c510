// The .pgz container's pieces below the in-memory form of quant/artifact.h:
// the fixed header, the JSON table (sections and tensors) and its
// validation. docs/ARTIFACT_FORMAT.md is the byte-level statement; the
// constants here are the ones it names. Torch-free, like all of quant/artifact*.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/artifact.h"

namespace pgolf::quant::artifact_format {

inline constexpr char kMagic[8] = {'P', 'G', 'O', 'L', 'F', 'Q', '1', '\0'};
inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kHeaderSize = 72;
inline constexpr size_t kDigestOffset = 40;  // SHA-256 at [40, 72), over everything else
inline constexpr const char* kFormatName = "pgolf-artifact";

enum class JsonCoding : uint32_t { Plain = 0, Brotli = 1 };

struct Header {
  uint32_t version = kVersion;
  uint32_t json_coding = 0;
  uint64_t file_length = 0;
  uint32_t json_size = 0;      // stored bytes of the JSON section
  uint32_t json_raw_size = 0;  // after json_coding is undone
  uint32_t json_crc32 = 0;     // of the stored bytes
  uint32_t reserved = 0;
  uint8_t digest[32] = {};
};

// kHeaderSize bytes, little-endian.
std::string write_header(const Header& h);
// Reads the fields of bytes[0, kHeaderSize) (bytes must be that long); no checks.
Header read_header(const std::string& bytes);
// SHA-256 of bytes [0, kDigestOffset) followed by bytes [kHeaderSize, end).
void file_digest(const std::string& bytes, uint8_t out[32]);
uint32_t crc32_of(const char* data, size_t n);

// ---- the JSON table ------------------------------------------------------------

enum class Content { Values, Scales, Raw };

// Section codings. Values: "entropy", "packed+brotli", "packed+zstd", "context",
// "context+linear".
// Scales and raw bytes: "none", "brotli", "zstd", "shuffle2+brotli", "shuffle2+zstd".
struct Section {
  Content content = Content::Values;
  std::string coding;
  uint64_t offset = 0;    // from the start of the payload (the first byte after the JSON)
  uint64_t size = 0;      // stored bytes
  uint64_t raw_size = 0;  // decoded: values (one per byte) or bytes
  uint32_t crc32 = 0;     // of the stored bytes
};

struct TensorEntry {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t numel = 0;
  bool quantized = false;
  int bits = 0;
  std::string method;
  std::string dtype;
  size_t values = 0;  // quantized: index of its values section
  // Quantized: its scales; raw: its data. A byte range of a Scales / Raw section.
  size_t part_section = 0;
  uint64_t part_offset = 0, part_size = 0;
};

struct Table {
  std::string config, tokenizer_fingerprint, meta;
  std::vector<Section> sections;
  std::vector<TensorEntry> tensors;
};

const char* content_name(Content c);
std::string table_to_json(const Table& t);  // compact; pgolf::Error if a string is not UTF-8
// Parses and validates everything the JSON says against itself and the
// payload size (see ARTIFACT_FORMAT.md, "Validation"). Errors name `what`.
Table table_from_json(const std::string& json, uint64_t payload_size, const ArtifactLimits& limits,
                      const std::string& what);

// Bytes per element of a raw dtype name; 0 for an unknown name.
int dtype_bytes(const std::string& dtype);

// Rejects JSON text nesting deeper than 16 (before it is parsed).
void check_depth(const std::string& json, const std::string& what);

// A name as it appears in error messages: quoted, control bytes escaped, cut at 80 bytes.
std::string quote(const std::string& s);

}  // namespace pgolf::quant::artifact_format
