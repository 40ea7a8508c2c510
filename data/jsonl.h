// Reads documents from JSON lines: one object per line with a string "text".
// Anything else is an error naming the file and line.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

namespace pgolf {

class JsonlDocuments {
 public:
  explicit JsonlDocuments(const std::string& path);
  bool next(std::string& text);  // false at end of file
  uint64_t line() const { return line_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ifstream in_;
  uint64_t line_ = 0;
};

}  // namespace pgolf
