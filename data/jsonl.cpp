#include "data/jsonl.h"

#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include "data/error.h"

namespace pgolf {

JsonlDocuments::JsonlDocuments(const std::string& path) : path_(path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(path, "no such file");
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  in_.open(path, std::ios::binary);
  if (!in_) fail(path, "cannot open");
}

bool JsonlDocuments::next(std::string& text) {
  std::string line;
  while (std::getline(in_, line)) {
    ++line_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines carry no document
    const std::string where = path_ + ":" + std::to_string(line_);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail(where, "invalid JSON (byte " + std::to_string(e.byte) + ")");
    }
    if (!j.is_object()) fail(where, "expected a JSON object with a \"text\" string");
    auto it = j.find("text");
    if (it == j.end()) fail(where, "no \"text\" field");
    if (!it->is_string()) fail(where, "\"text\" is not a string");
    text = it->get<std::string>();
    return true;
  }
  if (in_.bad()) fail(path_, "read error");
  return false;
}

}  // namespace pgolf
