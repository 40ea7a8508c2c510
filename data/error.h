// One error type for every bad input: the message is a single line that names
// the file (or thing) and the problem. The CLI prints it and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace pgolf {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "PATH: problem" -- the format every user-facing error follows.
[[noreturn]] inline void fail(const std::string& path, const std::string& problem) {
  throw Error(path + ": " + problem);
}

}  // namespace pgolf
