// Small UTF-8 text helpers shared by the corpus readers and the tokenizer trainer.
#pragma once
#include <string>

namespace pgolf {

// Bytes read as Latin-1, re-encoded as UTF-8.
std::string latin1_to_utf8(const std::string& bytes);
// Python's str.strip(): removes leading and trailing Unicode white space
// (the code points for which str.isspace() is true) from UTF-8 text.
std::string strip_unicode_whitespace(const std::string& utf8);

}  // namespace pgolf
