#include "quant/size_budget.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>

#include "data/error.h"

namespace pgolf::quant {

std::vector<CodeFile> code_files(const std::vector<std::string>& paths) {
  std::vector<CodeFile> out;
  for (const std::string& p : paths) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) fail(p, "cannot open (code file)");
    if (!S_ISREG(st.st_mode)) fail(p, "not a regular file (code file)");
    out.push_back({p, uint64_t(st.st_size)});
  }
  return out;
}

std::vector<ArtifactTensorLayout> largest_tensors(const ArtifactLayout& layout, size_t n) {
  std::vector<ArtifactTensorLayout> t = layout.tensors;
  std::stable_sort(t.begin(), t.end(), [](const ArtifactTensorLayout& a, const ArtifactTensorLayout& b) {
    return a.stored_bytes > b.stored_bytes;
  });
  if (t.size() > n) t.resize(n);
  return t;
}

std::string with_commas(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

std::string over_cap_report(const SizeBudget& b, const ArtifactLayout& layout, size_t top) {
  if (b.fits()) return "";
  std::string out = "over the " + with_commas(b.cap) + "-byte cap by " + with_commas(b.total() - b.cap) +
                    " bytes (artifact " + with_commas(b.artifact_bytes) + " + code " + with_commas(b.code_bytes) +
                    " = " + with_commas(b.total()) + ")\nlargest tensors by stored bytes:\n";
  char line[512];
  for (const ArtifactTensorLayout& t : largest_tensors(layout, top)) {
    const std::string how = t.kind == "quantized" ? "int" + std::to_string(t.bits) : t.dtype;
    std::snprintf(line, sizeof line, "  %-36s %-8s %14s bytes\n", t.name.c_str(), how.c_str(),
                  with_commas(t.stored_bytes).c_str());
    out += line;
  }
  return out;
}

}  // namespace pgolf::quant
