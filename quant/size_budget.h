// The 16,000,000-byte cap (SPEC §9): submission size = artifact bytes + code
// bytes, decimal. Code files are counted byte for byte as given: pass the
// form the submission ships (a minified or compressed script is counted as
// that file's size, nothing is minified here).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/artifact.h"

namespace pgolf::quant {

constexpr uint64_t kDefaultCap = 16000000;

struct CodeFile {
  std::string path;
  uint64_t bytes = 0;
};
// Sizes of the files (each must exist and be a regular file; errors name it).
std::vector<CodeFile> code_files(const std::vector<std::string>& paths);

struct SizeBudget {
  uint64_t artifact_bytes = 0;
  uint64_t code_bytes = 0;
  uint64_t cap = kDefaultCap;  // 0 = no cap
  uint64_t total() const { return artifact_bytes + code_bytes; }
  bool fits() const { return cap == 0 || total() <= cap; }
  int64_t headroom() const { return int64_t(cap) - int64_t(total()); }  // negative: over
};

// The n tensors with the most stored bytes, largest first.
std::vector<ArtifactTensorLayout> largest_tensors(const ArtifactLayout& layout, size_t n);

// "1,234,567"
std::string with_commas(uint64_t v);

// Lines for stderr when over the cap: by how much, and the largest tensors.
std::string over_cap_report(const SizeBudget& b, const ArtifactLayout& layout, size_t top = 10);

}  // namespace pgolf::quant
