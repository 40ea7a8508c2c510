#include "quant/artifact_format.h"

#include <zlib.h>

#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "data/error.h"
#include "data/sha256.h"
#include "quant/codec.h"

namespace pgolf::quant::artifact_format {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

constexpr size_t kMaxName = 1024;
constexpr size_t kMaxMethod = 64;
constexpr size_t kMaxNdim = 16;
constexpr int64_t kMaxDim = int64_t{1} << 40;
constexpr int kMaxJsonDepth = 16;

void put_le(std::string& out, uint64_t v, int n) {
  for (int k = 0; k < n; ++k) out += static_cast<char>((v >> (8 * k)) & 0xFF);
}
uint64_t get_le(const std::string& b, size_t at, int n) {
  uint64_t v = 0;
  for (int k = 0; k < n; ++k) v |= static_cast<uint64_t>(static_cast<unsigned char>(b[at + k])) << (8 * k);
  return v;
}

}  // namespace

// nlohmann's parser keeps its own stack, but bounding nesting first keeps
// hostile JSON cheap everywhere (destruction, our walks).
void check_depth(const std::string& s, const std::string& what) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) fail(what, "JSON table nests deeper than " + std::to_string(kMaxJsonDepth));
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

namespace {

// ---- typed access with one-line errors --------------------------------------------

struct Ctx {
  const std::string& what;
  std::string where;  // "sections[3]", "tensor 'x'", ...
  [[noreturn]] void bad(const std::string& problem) const {
    fail(what, (where.empty() ? "" : where + ": ") + problem);
  }
};

// Requires an object with exactly these keys (no unknown, none missing).
void expect_keys(const json& j, std::initializer_list<const char*> keys, const Ctx& c) {
  if (!j.is_object()) c.bad(std::string("expected a JSON object, got ") + j.type_name());
  for (const char* k : keys)
    if (!j.contains(k)) c.bad(std::string("missing key '") + k + "'");
  if (j.size() != keys.size()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      bool known = false;
      for (const char* k : keys) known = known || it.key() == k;
      if (!known) c.bad("unknown key " + quote(it.key()));
    }
  }
}

uint64_t get_uint(const json& j, const char* key, uint64_t max, const Ctx& c) {
  const json& v = j.at(key);
  if (!v.is_number_unsigned()) c.bad(std::string("'") + key + "' is not a non-negative integer");
  const uint64_t u = v.get<uint64_t>();
  if (u > max) c.bad(std::string("'") + key + "' = " + std::to_string(u) + " is over " + std::to_string(max));
  return u;
}

std::string get_string(const json& j, const char* key, size_t max, const Ctx& c) {
  const json& v = j.at(key);
  if (!v.is_string()) c.bad(std::string("'") + key + "' is not a string");
  const std::string& s = v.get_ref<const std::string&>();
  if (s.size() > max) c.bad(std::string("'") + key + "' is longer than " + std::to_string(max) + " bytes");
  return s;
}

// Saturating a*b for non-negative values.
uint64_t mul_sat(uint64_t a, uint64_t b) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return std::numeric_limits<uint64_t>::max();
  return a * b;
}

bool valid_coding(Content c, const std::string& coding) {
  static const char* const kValues[] = {"entropy", "packed+brotli", "packed+zstd", "context", "context+linear"};
  static const char* const kBytes[] = {"none", "brotli", "zstd", "shuffle2+brotli", "shuffle2+zstd"};
  if (c == Content::Values) {
    for (const char* k : kValues)
      if (coding == k) return true;
  } else {
    for (const char* k : kBytes)
      if (coding == k) return true;
  }
  return false;
}

Section parse_section(const json& j, uint64_t expect_offset, uint64_t payload_size, const Ctx& c) {
  expect_keys(j, {"content", "coding", "offset", "size", "raw_size", "crc32"}, c);
  Section s;
  const std::string content = get_string(j, "content", 16, c);
  if (content == "values") s.content = Content::Values;
  else if (content == "scales") s.content = Content::Scales;
  else if (content == "raw") s.content = Content::Raw;
  else c.bad("unknown content " + quote(content));
  s.coding = get_string(j, "coding", 32, c);
  if (!valid_coding(s.content, s.coding)) c.bad("coding " + quote(s.coding) + " is not valid for " + content);
  s.offset = get_uint(j, "offset", payload_size, c);
  if (s.offset != expect_offset)
    c.bad("offset " + std::to_string(s.offset) + ", expected " + std::to_string(expect_offset) +
          " (sections are contiguous, in order)");
  s.size = get_uint(j, "size", payload_size - s.offset, c);
  s.raw_size = get_uint(j, "raw_size", std::numeric_limits<uint64_t>::max(), c);
  s.crc32 = static_cast<uint32_t>(get_uint(j, "crc32", 0xFFFFFFFFu, c));
  if (s.coding == "none" && s.size != s.raw_size)
    c.bad("stored " + std::to_string(s.size) + " bytes with coding 'none' but raw_size " + std::to_string(s.raw_size));
  return s;
}

// A {"section", "offset", "size"} reference into a Scales / Raw section; the
// references into one section must tile it in tensor order.
void parse_part(const json& j, Content want, const Table& t, std::vector<uint64_t>& fill, std::vector<bool>& used,
                TensorEntry& e, const Ctx& c) {
  expect_keys(j, {"section", "offset", "size"}, c);
  e.part_section = get_uint(j, "section", t.sections.size() - (t.sections.empty() ? 0 : 1), c);
  if (t.sections.empty()) c.bad("refers to a section, but there are none");
  const Section& s = t.sections[e.part_section];
  if (s.content != want)
    c.bad("section " + std::to_string(e.part_section) + " holds " + content_name(s.content) + ", not " +
          content_name(want));
  e.part_offset = get_uint(j, "offset", s.raw_size, c);
  if (e.part_offset != fill[e.part_section])
    c.bad("offset " + std::to_string(e.part_offset) + " in section " + std::to_string(e.part_section) + ", expected " +
          std::to_string(fill[e.part_section]) + " (parts are contiguous, in tensor order)");
  e.part_size = get_uint(j, "size", s.raw_size - e.part_offset, c);
  fill[e.part_section] += e.part_size;
  used[e.part_section] = true;
}

}  // namespace

// ---- header -------------------------------------------------------------------------

std::string write_header(const Header& h) {
  std::string out(kMagic, kMagic + 8);
  put_le(out, h.version, 4);
  put_le(out, h.json_coding, 4);
  put_le(out, h.file_length, 8);
  put_le(out, h.json_size, 4);
  put_le(out, h.json_raw_size, 4);
  put_le(out, h.json_crc32, 4);
  put_le(out, h.reserved, 4);
  out.append(reinterpret_cast<const char*>(h.digest), 32);
  return out;
}

Header read_header(const std::string& b) {
  Header h;
  h.version = static_cast<uint32_t>(get_le(b, 8, 4));
  h.json_coding = static_cast<uint32_t>(get_le(b, 12, 4));
  h.file_length = get_le(b, 16, 8);
  h.json_size = static_cast<uint32_t>(get_le(b, 24, 4));
  h.json_raw_size = static_cast<uint32_t>(get_le(b, 28, 4));
  h.json_crc32 = static_cast<uint32_t>(get_le(b, 32, 4));
  h.reserved = static_cast<uint32_t>(get_le(b, 36, 4));
  std::memcpy(h.digest, b.data() + kDigestOffset, 32);
  return h;
}

void file_digest(const std::string& bytes, uint8_t out[32]) {
  Sha256 sha;
  sha.update(bytes.data(), std::min(bytes.size(), kDigestOffset));
  if (bytes.size() > kHeaderSize) sha.update(bytes.data() + kHeaderSize, bytes.size() - kHeaderSize);
  const auto d = sha.digest();
  std::memcpy(out, d.data(), 32);
}

uint32_t crc32_of(const char* data, size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (n > 0) {  // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data), chunk);
    data += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

// ---- table ---------------------------------------------------------------------------

const char* content_name(Content c) {
  switch (c) {
    case Content::Values: return "values";
    case Content::Scales: return "scales";
    case Content::Raw: return "raw";
  }
  return "?";
}

int dtype_bytes(const std::string& d) {
  static const std::pair<const char*, int> kTypes[] = {
      {"float16", 2}, {"bfloat16", 2}, {"float32", 4}, {"float64", 8}, {"int8", 1}, {"int16", 2},
      {"int32", 4},   {"int64", 8},    {"uint8", 1},   {"uint16", 2},  {"bool", 1}};
  for (const auto& [name, size] : kTypes)
    if (d == name) return size;
  return 0;
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < 80; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7F) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > 80) out += "...";
  return out + "'";
}

std::string table_to_json(const Table& t) {
  ojson j;
  j["format"] = kFormatName;
  j["config"] = t.config;
  j["tokenizer_fingerprint"] = t.tokenizer_fingerprint;
  j["meta"] = t.meta;
  ojson sections = ojson::array();
  for (const Section& s : t.sections) {
    ojson e;
    e["content"] = content_name(s.content);
    e["coding"] = s.coding;
    e["offset"] = s.offset;
    e["size"] = s.size;
    e["raw_size"] = s.raw_size;
    e["crc32"] = s.crc32;
    sections.push_back(std::move(e));
  }
  j["sections"] = std::move(sections);
  ojson tensors = ojson::array();
  for (const TensorEntry& e : t.tensors) {
    ojson o;
    o["name"] = e.name;
    o["kind"] = e.quantized ? "quantized" : "raw";
    o["shape"] = e.shape;
    if (e.quantized) {
      o["bits"] = e.bits;
      o["method"] = e.method;
      o["values"] = e.values;
    } else {
      o["dtype"] = e.dtype;
    }
    ojson part;
    part["section"] = e.part_section;
    part["offset"] = e.part_offset;
    part["size"] = e.part_size;
    o[e.quantized ? "scales" : "data"] = std::move(part);
    tensors.push_back(std::move(o));
  }
  j["tensors"] = std::move(tensors);
  try {
    return j.dump();
  } catch (const nlohmann::json::exception& ex) {
    fail("artifact", std::string("cannot write the JSON table (a string is not UTF-8?): ") + ex.what());
  }
}

Table table_from_json(const std::string& text, uint64_t payload_size, const ArtifactLimits& lim,
                      const std::string& what) {
  check_depth(text, what);
  json j;
  try {
    j = json::parse(text);
  } catch (const nlohmann::json::exception& ex) {
    std::string m = ex.what();
    for (char& ch : m)
      if (ch == '\n' || ch == '\r') ch = ' ';
    fail(what, "JSON table does not parse: " + m);
  }
  Ctx top{what, "JSON table"};
  expect_keys(j, {"format", "config", "tokenizer_fingerprint", "meta", "sections", "tensors"}, top);
  Table t;
  if (get_string(j, "format", 64, top) != kFormatName) top.bad("'format' is not '" + std::string(kFormatName) + "'");
  t.config = get_string(j, "config", lim.max_json, top);
  t.tokenizer_fingerprint = get_string(j, "tokenizer_fingerprint", 256, top);
  t.meta = get_string(j, "meta", lim.max_json, top);

  // Sections: contiguous, in order, exactly covering the payload; their
  // decoded sizes are bounded in total before anything is decoded.
  const json& sections = j.at("sections");
  if (!sections.is_array()) top.bad("'sections' is not an array");
  if (sections.size() > lim.max_tensors + 2) top.bad("more than " + std::to_string(lim.max_tensors + 2) + " sections");
  uint64_t at = 0, decoded = 0;
  for (size_t i = 0; i < sections.size(); ++i) {
    Section s = parse_section(sections[i], at, payload_size, Ctx{what, "section " + std::to_string(i)});
    at += s.size;
    if (s.raw_size > lim.max_decoded - decoded)
      fail(what, "sections decode to more than " + std::to_string(lim.max_decoded) + " bytes");
    decoded += s.raw_size;
    t.sections.push_back(std::move(s));
  }
  if (at != payload_size)
    fail(what, "sections cover " + std::to_string(at) + " of the " + std::to_string(payload_size) + " payload bytes");

  const json& tensors = j.at("tensors");
  if (!tensors.is_array()) top.bad("'tensors' is not an array");
  if (tensors.size() > lim.max_tensors) top.bad("more than " + std::to_string(lim.max_tensors) + " tensors");
  std::set<std::string> names;
  std::vector<uint64_t> fill(t.sections.size(), 0);   // bytes of each Scales/Raw section referenced so far
  std::vector<bool> used(t.sections.size(), false);      // referenced by some tensor
  for (size_t i = 0; i < tensors.size(); ++i) {
    const json& o = tensors[i];
    Ctx c{what, "tensor " + std::to_string(i)};
    if (!o.is_object() || !o.contains("name") || !o.contains("kind")) c.bad("needs at least 'name' and 'kind'");
    TensorEntry e;
    e.name = get_string(o, "name", kMaxName, c);
    c.where = "tensor " + quote(e.name);
    if (e.name.empty()) c.bad("empty name");
    if (!names.insert(e.name).second) c.bad("name appears twice");
    const std::string kind = get_string(o, "kind", 16, c);
    if (kind == "quantized") {
      e.quantized = true;
      expect_keys(o, {"name", "kind", "shape", "bits", "method", "values", "scales"}, c);
    } else if (kind == "raw") {
      expect_keys(o, {"name", "kind", "shape", "dtype", "data"}, c);
    } else {
      c.bad("unknown kind " + quote(kind));
    }

    const json& shape = o.at("shape");
    if (!shape.is_array()) c.bad("'shape' is not an array");
    if (shape.size() > kMaxNdim) c.bad("more than " + std::to_string(kMaxNdim) + " dimensions");
    uint64_t numel = 1;
    for (const json& d : shape) {
      if (!d.is_number_integer() || (!d.is_number_unsigned() && d.get<int64_t>() < 0) ||
          (d.is_number_unsigned() && d.get<uint64_t>() > static_cast<uint64_t>(kMaxDim)))
        c.bad("shape has a dimension that is not an integer in 0..2^40");
      e.shape.push_back(d.get<int64_t>());
      numel = mul_sat(numel, static_cast<uint64_t>(e.shape.back()));
    }
    if (numel > lim.max_decoded) c.bad("has more than " + std::to_string(lim.max_decoded) + " elements");
    e.numel = numel;

    if (e.quantized) {
      if (e.shape.empty()) c.bad("a quantized tensor needs at least one dimension (its rows)");
      e.bits = static_cast<int>(get_uint(o, "bits", 64, c));
      if (e.bits < 2 || e.bits > 8) c.bad("bits " + std::to_string(e.bits) + " is not in 2..8");
      e.method = get_string(o, "method", kMaxMethod, c);
      if (t.sections.empty()) c.bad("refers to a values section, but there are none");
      e.values = get_uint(o, "values", t.sections.size() - 1, c);
      const Section& vs = t.sections[e.values];
      if (vs.content != Content::Values) c.bad("'values' names a section of " + std::string(content_name(vs.content)));
      if (used[e.values]) c.bad("values section " + std::to_string(e.values) + " is used twice");
      used[e.values] = true;
      if (vs.raw_size != numel)
        c.bad("values section holds " + std::to_string(vs.raw_size) + " values, the shape needs " + std::to_string(numel));
      parse_part(o.at("scales"), Content::Scales, t, fill, used, e, Ctx{what, c.where + " scales"});
      const uint64_t rows = static_cast<uint64_t>(e.shape[0]);
      if (e.part_size != 2 * rows)
        c.bad("scales are " + std::to_string(e.part_size) + " bytes, " + std::to_string(rows) + " rows need " +
              std::to_string(2 * rows));
    } else {
      e.dtype = get_string(o, "dtype", 16, c);
      const int esize = dtype_bytes(e.dtype);
      if (esize == 0) c.bad("unknown dtype " + quote(e.dtype));
      parse_part(o.at("data"), Content::Raw, t, fill, used, e, Ctx{what, c.where + " data"});
      const uint64_t need = mul_sat(numel, static_cast<uint64_t>(esize));
      if (e.part_size != need)
        c.bad("data is " + std::to_string(e.part_size) + " bytes, " + std::to_string(numel) + " x " + e.dtype +
              " needs " + std::to_string(need));
    }
    t.tensors.push_back(std::move(e));
  }
  for (size_t i = 0; i < t.sections.size(); ++i) {
    const Section& s = t.sections[i];
    if (!used[i])
      fail(what, "section " + std::to_string(i) + " (" + content_name(s.content) + ") is not used by any tensor");
    if (s.content != Content::Values && fill[i] != s.raw_size)
      fail(what, "section " + std::to_string(i) + " (" + content_name(s.content) + ") has " + std::to_string(s.raw_size) +
                     " bytes, its tensors use " + std::to_string(fill[i]));
  }
  return t;
}

}  // namespace pgolf::quant::artifact_format

// ---- reseal (tests and fuzzers) -----------------------------------------------------------

namespace pgolf::quant {

std::string reseal_artifact(const std::string& in) {
  namespace af = artifact_format;
  if (in.size() < af::kHeaderSize) return in;
  af::Header h = af::read_header(in);
  const size_t json_size = static_cast<size_t>(std::min<uint64_t>(h.json_size, in.size() - af::kHeaderSize));
  std::string stored = in.substr(af::kHeaderSize, json_size);
  const std::string payload = in.substr(af::kHeaderSize + json_size);
  std::string text;
  bool have_text = false;
  try {
    if (h.json_coding == static_cast<uint32_t>(af::JsonCoding::Plain)) {
      text = stored;
      have_text = true;
    } else if (h.json_coding == static_cast<uint32_t>(af::JsonCoding::Brotli)) {
      text = decompress(stored, Codec::Brotli, ArtifactLimits{}.max_json, "reseal");
      have_text = true;
    }
    if (have_text) {
      af::check_depth(text, "reseal");
      nlohmann::json j = nlohmann::json::parse(text);
      if (j.is_object() && j.contains("sections") && j["sections"].is_array()) {
        for (nlohmann::json& s : j["sections"]) {
          if (!s.is_object() || !s.contains("offset") || !s.contains("size")) continue;
          if (!s["offset"].is_number_unsigned() || !s["size"].is_number_unsigned()) continue;
          const uint64_t off = s["offset"].get<uint64_t>(), size = s["size"].get<uint64_t>();
          if (off <= payload.size() && size <= payload.size() - off) s["crc32"] = af::crc32_of(payload.data() + off, size);
        }
      }
      stored = j.dump();
      h.json_coding = static_cast<uint32_t>(af::JsonCoding::Plain);
      h.json_raw_size = static_cast<uint32_t>(stored.size());
    }
  } catch (const std::exception&) {
    // Keep the JSON bytes as they are: the checks that follow see them.
  }
  h.json_size = static_cast<uint32_t>(stored.size());
  if (h.json_coding == static_cast<uint32_t>(af::JsonCoding::Plain)) h.json_raw_size = h.json_size;
  h.json_crc32 = af::crc32_of(stored.data(), stored.size());
  h.file_length = af::kHeaderSize + stored.size() + payload.size();
  std::string out = af::write_header(h);
  out.replace(0, 8, in, 0, 8);  // keep the magic as given
  out += stored;
  out += payload;
  uint8_t digest[32];
  af::file_digest(out, digest);
  std::memcpy(&out[af::kDigestOffset], digest, 32);
  return out;
}

}  // namespace pgolf::quant
