// The .pgz container: encode / decode / save / load (docs/ARTIFACT_FORMAT.md).
// Decoding checks, in order: header, JSON CRC, the JSON table against itself
// and the payload size, each section's CRC, the file's SHA-256 -- and only
// then decompresses anything, with every output size already bounded.
#include "quant/artifact.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <exception>
#include <set>
#include <thread>

#include "data/atomic_file.h"
#include "data/error.h"
#include "quant/artifact_format.h"
#include "quant/bitpack.h"
#include "quant/codec.h"
#include "quant/context_coder.h"
#include "quant/rans.h"

namespace pgolf::quant {
namespace {

namespace af = artifact_format;
using af::Content;
using af::quote;

constexpr size_t kMaxName = 1024;
constexpr size_t kMaxMethod = 64;
constexpr size_t kMaxNdim = 16;
constexpr int64_t kMaxDim = int64_t{1} << 40;

int max_level(int bits) { return (1 << (bits - 1)) - 1; }
bool fp16_finite(uint16_t h) { return (h & 0x7C00) != 0x7C00; }

// ---- the in-memory form, checked before writing -------------------------------------

uint64_t checked_numel(const ArtifactTensor& t, uint64_t max, const std::string& where) {
  if (t.shape.size() > kMaxNdim) fail(where, "more than " + std::to_string(kMaxNdim) + " dimensions");
  uint64_t n = 1;
  for (int64_t d : t.shape) {
    if (d < 0 || d > kMaxDim) fail(where, "dimension " + std::to_string(d) + " is not in 0..2^40");
    n = (n != 0 && static_cast<uint64_t>(d) > max / n) ? max + 1 : n * static_cast<uint64_t>(d);
    if (n > max) fail(where, "has more than " + std::to_string(max) + " elements");
  }
  return n;
}

void check_for_write(const Artifact& a) {
  const ArtifactLimits lim;
  if (a.tensors.size() > lim.max_tensors) fail("artifact", "more than " + std::to_string(lim.max_tensors) + " tensors");
  std::set<std::string> names;
  for (const ArtifactTensor& t : a.tensors) {
    const std::string where = "artifact: tensor " + quote(t.name);
    if (t.name.empty() || t.name.size() > kMaxName) fail(where, "name must be 1.." + std::to_string(kMaxName) + " bytes");
    if (!names.insert(t.name).second) fail(where, "name appears twice");
    const uint64_t n = checked_numel(t, lim.max_decoded, where);
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      if (t.bits < 2 || t.bits > 8) fail(where, "bits " + std::to_string(t.bits) + " is not in 2..8");
      if (t.shape.empty()) fail(where, "a quantized tensor needs at least one dimension (its rows)");
      if (t.values.size() != n) fail(where, std::to_string(t.values.size()) + " values, the shape needs " + std::to_string(n));
      const int m = max_level(t.bits);
      for (size_t i = 0; i < t.values.size(); ++i)
        if (t.values[i] < -m || t.values[i] > m)
          fail(where, "value " + std::to_string(t.values[i]) + " at " + std::to_string(i) + " is outside +-" +
                          std::to_string(m) + " (" + std::to_string(t.bits) + " bits)");
      if (t.scales.size() != static_cast<uint64_t>(t.shape[0]))
        fail(where, std::to_string(t.scales.size()) + " scales for " + std::to_string(t.shape[0]) + " rows");
      for (uint16_t s : t.scales)
        if (!fp16_finite(s)) fail(where, "a scale is not finite (fp16 inf or nan)");
      if (t.method.size() > kMaxMethod) fail(where, "method is longer than " + std::to_string(kMaxMethod) + " bytes");
    } else {
      const int esize = af::dtype_bytes(t.dtype);
      if (esize == 0) fail(where, "unknown dtype " + quote(t.dtype));
      if (t.data.size() != n * static_cast<uint64_t>(esize))
        fail(where, std::to_string(t.data.size()) + " data bytes, " + std::to_string(n) + " x " + t.dtype + " needs " +
                        std::to_string(n * static_cast<uint64_t>(esize)));
      if (t.dtype == "bool")
        for (char c : t.data)
          if (c != 0 && c != 1) fail(where, "a bool byte is not 0 or 1");
    }
  }
}

// ---- value codings ---------------------------------------------------------------------

struct Coded {
  std::string coding, bytes;
};

// Runs f(0), ..., f(n-1) on up to 8 threads, in index order of pickup, and
// rethrows the first exception. Brotli at quality 11 is the slow part of
// writing (seconds per MB), and tensors code independently.
template <class F>
void parallel_for(size_t n, F f) {
  const size_t threads = std::min<size_t>({n, 8, std::max(1u, std::thread::hardware_concurrency())});
  if (threads <= 1) {
    for (size_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(threads);
  std::vector<std::thread> pool;
  for (size_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      try {
        for (size_t i; (i = next.fetch_add(1)) < n;) f(i);
      } catch (...) {
        errors[t] = std::current_exception();
        next.store(n);  // the others stop at their next pickup
      }
    });
  for (std::thread& th : pool) th.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

constexpr int kCodings = 5;
const char* const kValueCodings[kCodings] = {"entropy", "packed+brotli", "packed+zstd", "context", "context+linear"};

std::string code_values_as(const ArtifactTensor& t, int which) {
  const uint64_t rows = static_cast<uint64_t>(t.shape[0]);
  if (which == 0) return rans_encode(t.values);
  if (which == 3) return context_encode(t.values, rows, t.bits, t.scales, ContextModel::Columns);
  if (which == 4) return context_encode(t.values, rows, t.bits, t.scales, ContextModel::Linear);
  return compress(bitpack(t.values, t.bits), which == 1 ? Codec::Brotli : Codec::Zstd);
}

// Whether context+linear is worth trying on t: only tall matrices (at least 4
// rows a column, like an embedding) have enough rows to learn a covariance
// from, and its cost grows with the columns.
bool linear_candidate(const ArtifactTensor& t) {
  const uint64_t rows = static_cast<uint64_t>(t.shape[0]);
  return rows > 0 && rows >= 4 * (t.values.size() / rows) &&
         context_codable(t.values.size(), rows, ContextModel::Linear);
}

// The codings to try on quantized tensor t for `how` (indices into
// kValueCodings). Auto tries every coding that applies: context where it can
// (at most 2^20 columns), context+linear on tall matrices. ContextLinear
// falls back to context on matrices over its 1024 columns.
std::vector<int> codings_for(const ArtifactTensor& t, ValueCoding how) {
  const uint64_t rows = static_cast<uint64_t>(t.shape[0]);
  switch (how) {
    case ValueCoding::Auto: {
      std::vector<int> w = {0, 1, 2};
      if (context_codable(t.values.size(), rows, ContextModel::Columns)) w.push_back(3);
      if (linear_candidate(t)) w.push_back(4);
      return w;
    }
    case ValueCoding::Entropy: return {0};
    case ValueCoding::PackedBrotli: return {1};
    case ValueCoding::PackedZstd: return {2};
    case ValueCoding::Context: return {3};
    case ValueCoding::ContextLinear:
      return {context_codable(t.values.size(), rows, ContextModel::Linear) ? 4 : 3};
  }
  fail("artifact", "unknown value coding " + std::to_string(static_cast<int>(how)));
}

// Each quantized tensor's values (empty for raw tensors), coded as `how`
// says; where several codings are tried, the smallest is kept (ties: the
// earlier in kValueCodings).
std::vector<Coded> code_all_values(const Artifact& a, ValueCoding how) {
  struct Task {
    size_t tensor;
    int which;
  };
  std::vector<Task> tasks;
  for (size_t i = 0; i < a.tensors.size(); ++i)
    if (a.tensors[i].kind == ArtifactTensor::Kind::Quantized)
      for (int w : codings_for(a.tensors[i], how)) tasks.push_back({i, w});
  // Slowest first, so the long brotli runs overlap: brotli, then by size.
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& x, const Task& y) {
    if ((x.which == 1) != (y.which == 1)) return x.which == 1;
    return a.tensors[x.tensor].values.size() > a.tensors[y.tensor].values.size();
  });
  std::vector<std::array<std::string, kCodings>> out(a.tensors.size());
  parallel_for(tasks.size(), [&](size_t k) {
    out[tasks[k].tensor][tasks[k].which] = code_values_as(a.tensors[tasks[k].tensor], tasks[k].which);
  });
  std::vector<Coded> best(a.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    if (a.tensors[i].kind != ArtifactTensor::Kind::Quantized) continue;
    const std::vector<int> tried = codings_for(a.tensors[i], how);
    int pick = tried[0];
    for (int w : tried)
      if (out[i][w].size() < out[i][pick].size()) pick = w;
    best[i] = {kValueCodings[pick], std::move(out[i][pick])};
  }
  return best;
}

// The values of a quantized tensor with `scales.size()` rows (the context
// coding reads its scales).
std::vector<int8_t> decode_values(const af::Section& s, const std::string& bytes, int bits,
                                  const std::vector<uint16_t>& scales, const std::string& what) {
  std::vector<int8_t> v;
  if (s.coding == "entropy") {
    v = rans_decode(bytes, s.raw_size, what);
  } else if (s.coding == "context" || s.coding == "context+linear") {
    const ContextModel m = s.coding == "context" ? ContextModel::Columns : ContextModel::Linear;
    v = context_decode(bytes, s.raw_size, scales.size(), bits, scales, m, what);
  } else {
    const Codec c = s.coding == "packed+brotli" ? Codec::Brotli : Codec::Zstd;  // the table allows only these
    const uint64_t want = packed_size(s.raw_size, bits);
    const std::string packed = decompress(bytes, c, want, what);
    v = bitunpack(packed, s.raw_size, bits, what);  // checks the size
  }
  const int m = max_level(bits);
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] < -m || v[i] > m)
      fail(what, "value " + std::to_string(v[i]) + " at " + std::to_string(i) + " is outside +-" + std::to_string(m) +
                     " (" + std::to_string(bits) + " bits)");
  return v;
}

// Byte sections (scales, raw): quant/codec.h's encodings, named "[shuffle2+]codec".
Coded code_bytes(const std::string& raw) {
  Encoded e = encode_best(raw);
  if (e.shuffle_stride != 0 && e.shuffle_stride != 2) e = encode(raw, Codec::None, 0);  // not nameable; never happens
  if (e.codec == Codec::None && e.shuffle_stride != 0) e = encode(raw, Codec::None, 0);
  return {std::string(e.shuffle_stride == 2 ? "shuffle2+" : "") + codec_name(e.codec), std::move(e.bytes)};
}

std::string decode_bytes(const af::Section& s, const std::string& bytes, const std::string& what) {
  const bool shuffled = s.coding.compare(0, 9, "shuffle2+") == 0;
  const Codec c = parse_codec(shuffled ? s.coding.substr(9) : s.coding);  // validated by the table
  return decode(c, shuffled ? 2 : 0, s.raw_size, bytes, what);
}

// ---- layout ---------------------------------------------------------------------------

// part's share of a section's stored bytes, rounded so that shares of
// adjacent parts add up to exactly the section's size.
uint64_t share(uint64_t start, uint64_t end, const af::Section& s) {
  if (s.raw_size == 0) return 0;
  auto at = [&](uint64_t x) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * s.size + s.raw_size / 2) / s.raw_size);
  };
  return at(end) - at(start);
}

void fill_layout(const af::Table& t, const std::vector<double>& entropy, uint64_t header_bytes, uint64_t file_bytes,
                 ArtifactLayout* out) {
  if (!out) return;
  out->file_bytes = file_bytes;
  out->header_bytes = header_bytes;
  out->tensors.clear();
  for (size_t i = 0; i < t.tensors.size(); ++i) {
    const af::TensorEntry& e = t.tensors[i];
    const af::Section& part = t.sections[e.part_section];
    ArtifactTensorLayout l;
    l.name = e.name;
    l.shape = e.shape;
    l.kind = e.quantized ? "quantized" : "raw";
    l.stored_bytes = share(e.part_offset, e.part_offset + e.part_size, part);
    if (e.quantized) {
      const af::Section& vs = t.sections[e.values];
      l.bits = e.bits;
      l.coding = vs.coding;
      l.raw_bytes = e.numel + e.part_size;
      l.stored_bytes += vs.size;
      l.entropy_bits = entropy[i];
    } else {
      l.dtype = e.dtype;
      l.coding = part.coding;
      l.raw_bytes = e.part_size;
    }
    out->tensors.push_back(std::move(l));
  }
}

std::string le16_bytes(const std::vector<uint16_t>& v) {
  std::string s(2 * v.size(), '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    s[2 * i] = static_cast<char>(v[i] & 0xFF);
    s[2 * i + 1] = static_cast<char>(v[i] >> 8);
  }
  return s;
}

}  // namespace

// ---- encode -----------------------------------------------------------------------------

ValueCoding parse_value_coding(const std::string& name) {
  if (name == "auto") return ValueCoding::Auto;
  if (name == "context") return ValueCoding::Context;
  if (name == "context+linear") return ValueCoding::ContextLinear;
  if (name == "entropy") return ValueCoding::Entropy;
  if (name == "brotli") return ValueCoding::PackedBrotli;
  if (name == "zstd") return ValueCoding::PackedZstd;
  throw Error("--codec must be auto, context, context+linear, entropy, brotli or zstd, got '" + name + "'");
}

std::string encode_artifact(const Artifact& a, const ArtifactWriteOptions& opt, ArtifactLayout* layout) {
  check_for_write(a);
  af::Table t;
  t.config = a.config_json;
  t.tokenizer_fingerprint = a.tokenizer_fingerprint;
  t.meta = a.meta_json;
  std::vector<std::string> payload;  // one per section
  std::string scales, raw;           // the shared sections, decoded
  std::vector<double> entropy(a.tensors.size(), 0.0);
  std::vector<Coded> values = code_all_values(a, opt.values);
  bool any_quantized = false, any_raw = false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const ArtifactTensor& x = a.tensors[i];
    af::TensorEntry e;
    e.name = x.name;
    e.shape = x.shape;
    e.quantized = x.kind == ArtifactTensor::Kind::Quantized;
    if (e.quantized) {
      any_quantized = true;
      e.numel = x.values.size();
      e.bits = x.bits;
      e.method = x.method;
      Coded& c = values[i];
      af::Section s;
      s.content = Content::Values;
      s.coding = c.coding;
      s.size = c.bytes.size();
      s.raw_size = x.values.size();
      e.values = t.sections.size();
      t.sections.push_back(s);
      payload.push_back(std::move(c.bytes));
      e.part_offset = scales.size();
      scales += le16_bytes(x.scales);
      e.part_size = scales.size() - e.part_offset;
      entropy[i] = order0_entropy_bits(x.values);
    } else {
      any_raw = true;
      e.dtype = x.dtype;
      e.numel = x.data.size() / static_cast<uint64_t>(af::dtype_bytes(x.dtype));
      e.part_offset = raw.size();
      raw += x.data;
      e.part_size = x.data.size();
    }
    t.tensors.push_back(std::move(e));
  }
  // The shared sections follow the values sections: scales, then raw bytes.
  for (int k = 0; k < 2; ++k) {
    if (!(k == 0 ? any_quantized : any_raw)) continue;
    const std::string& bytes = k == 0 ? scales : raw;
    Coded c = code_bytes(bytes);
    af::Section s;
    s.content = k == 0 ? Content::Scales : Content::Raw;
    s.coding = c.coding;
    s.size = c.bytes.size();
    s.raw_size = bytes.size();
    for (af::TensorEntry& e : t.tensors)
      if (e.quantized == (k == 0)) e.part_section = t.sections.size();
    t.sections.push_back(s);
    payload.push_back(std::move(c.bytes));
  }
  uint64_t at = 0;
  for (size_t i = 0; i < t.sections.size(); ++i) {
    t.sections[i].offset = at;
    t.sections[i].crc32 = af::crc32_of(payload[i].data(), payload[i].size());
    at += payload[i].size();
  }

  const std::string text = af::table_to_json(t);
  const ArtifactLimits lim;
  if (text.size() > lim.max_json) fail("artifact", "JSON table of " + std::to_string(text.size()) + " bytes is too large");
  af::table_from_json(text, at, lim, "artifact (as written)");  // what readers will check, checked now
  std::string packed_json = compress(text, Codec::Brotli);
  const bool brotli = packed_json.size() < text.size();
  const std::string& json_bytes = brotli ? packed_json : text;

  af::Header h;
  h.json_coding = static_cast<uint32_t>(brotli ? af::JsonCoding::Brotli : af::JsonCoding::Plain);
  h.json_size = static_cast<uint32_t>(json_bytes.size());
  h.json_raw_size = static_cast<uint32_t>(text.size());
  h.json_crc32 = af::crc32_of(json_bytes.data(), json_bytes.size());
  h.file_length = af::kHeaderSize + json_bytes.size() + at;
  std::string out = af::write_header(h);
  out.reserve(h.file_length);
  out += json_bytes;
  for (const std::string& p : payload) out += p;
  uint8_t digest[32];
  af::file_digest(out, digest);
  std::memcpy(&out[af::kDigestOffset], digest, 32);
  fill_layout(t, entropy, af::kHeaderSize + json_bytes.size(), out.size(), layout);
  return out;
}

// ---- decode -----------------------------------------------------------------------------

Artifact decode_artifact(const std::string& bytes, const std::string& what, ArtifactLayout* layout) {
  return decode_artifact(bytes, what, layout, ArtifactLimits{});
}

Artifact decode_artifact(const std::string& bytes, const std::string& what, ArtifactLayout* layout,
                         const ArtifactLimits& lim) {
  if (!is_artifact(bytes)) fail(what, "not a pgolf artifact (bad magic)");
  const size_t n = bytes.size();
  if (n < af::kHeaderSize)
    fail(what, "truncated: " + std::to_string(n) + " bytes, the header alone is " + std::to_string(af::kHeaderSize));
  const af::Header h = af::read_header(bytes);
  if (h.version != af::kVersion)
    fail(what, "format version " + std::to_string(h.version) + " is not supported (this build reads " +
                   std::to_string(af::kVersion) + ")");
  if (h.file_length > n)
    fail(what, "truncated: " + std::to_string(n) + " of the " + std::to_string(h.file_length) + " bytes the header declares");
  if (h.file_length < n)
    fail(what, std::to_string(n - h.file_length) + " bytes after the " + std::to_string(h.file_length) +
                   " the header declares");
  if (h.reserved != 0) fail(what, "reserved header field is not zero");
  if (h.json_coding > 1) fail(what, "unknown JSON coding " + std::to_string(h.json_coding));
  if (h.json_size > n - af::kHeaderSize) fail(what, "JSON section runs past the end of the file");
  if (h.json_raw_size > lim.max_json)
    fail(what, "JSON table of " + std::to_string(h.json_raw_size) + " bytes is over the " + std::to_string(lim.max_json) +
                   "-byte limit");
  const std::string stored = bytes.substr(af::kHeaderSize, h.json_size);
  if (af::crc32_of(stored.data(), stored.size()) != h.json_crc32) fail(what, "JSON section CRC32 mismatch (corrupt)");
  std::string text;
  if (h.json_coding == static_cast<uint32_t>(af::JsonCoding::Plain)) {
    if (h.json_raw_size != h.json_size) fail(what, "plain JSON section with two different sizes");
    text = stored;
  } else {
    text = decode(Codec::Brotli, 0, h.json_raw_size, stored, what + ": JSON table");
  }
  const uint64_t payload_at = af::kHeaderSize + h.json_size;
  const af::Table t = af::table_from_json(text, n - payload_at, lim, what);

  std::vector<std::string> owner(t.sections.size());  // for messages
  for (const af::TensorEntry& e : t.tensors)
    if (e.quantized) owner[e.values] = "values of " + quote(e.name);
  for (size_t i = 0; i < t.sections.size(); ++i) {
    const af::Section& s = t.sections[i];
    if (owner[i].empty()) owner[i] = af::content_name(s.content);
    if (af::crc32_of(bytes.data() + payload_at + s.offset, s.size) != s.crc32)
      fail(what, "section " + std::to_string(i) + " (" + owner[i] + ") CRC32 mismatch (corrupt)");
  }
  uint8_t digest[32];
  af::file_digest(bytes, digest);
  if (std::memcmp(digest, h.digest, 32) != 0) fail(what, "SHA-256 mismatch (corrupt)");

  // Everything is checksummed and bounded: decode.
  auto section_bytes = [&](size_t i) { return bytes.substr(payload_at + t.sections[i].offset, t.sections[i].size); };
  std::vector<std::string> shared(t.sections.size());  // decoded Scales / Raw sections
  for (size_t i = 0; i < t.sections.size(); ++i)
    if (t.sections[i].content != Content::Values)
      shared[i] = decode_bytes(t.sections[i], section_bytes(i), what + ": section " + std::to_string(i) + " (" + owner[i] + ")");

  Artifact a;
  a.config_json = t.config;
  a.tokenizer_fingerprint = t.tokenizer_fingerprint;
  a.meta_json = t.meta;
  std::vector<double> entropy(t.tensors.size(), 0.0);
  for (size_t i = 0; i < t.tensors.size(); ++i) {
    const af::TensorEntry& e = t.tensors[i];
    const std::string& part = shared[e.part_section];
    ArtifactTensor x;
    x.name = e.name;
    x.shape = e.shape;
    if (e.quantized) {
      const std::string where = what + ": tensor " + quote(e.name);
      x.kind = ArtifactTensor::Kind::Quantized;
      x.bits = e.bits;
      x.method = e.method;
      x.scales.resize(e.part_size / 2);
      for (size_t r = 0; r < x.scales.size(); ++r) {
        const auto* p = reinterpret_cast<const unsigned char*>(part.data() + e.part_offset + 2 * r);
        x.scales[r] = static_cast<uint16_t>(p[0] | (p[1] << 8));
        if (!fp16_finite(x.scales[r])) fail(where, "scale " + std::to_string(r) + " is not finite");
      }
    } else {
      x.kind = ArtifactTensor::Kind::Raw;
      x.dtype = e.dtype;
      x.data = part.substr(e.part_offset, e.part_size);
      if (x.dtype == "bool")
        for (char c : x.data)
          if (c != 0 && c != 1) fail(what + ": tensor " + quote(e.name), "a bool byte is not 0 or 1");
    }
    a.tensors.push_back(std::move(x));
  }
  // Values last, on several threads (the context coding takes ~0.1 s per
  // million values); with several corrupt sections, which one is reported
  // depends on the threads.
  std::vector<size_t> quantized;
  for (size_t i = 0; i < t.tensors.size(); ++i)
    if (t.tensors[i].quantized) quantized.push_back(i);
  parallel_for(quantized.size(), [&](size_t k) {
    const size_t i = quantized[k];
    const af::TensorEntry& e = t.tensors[i];
    ArtifactTensor& x = a.tensors[i];
    x.values = decode_values(t.sections[e.values], section_bytes(e.values), e.bits, x.scales,
                             what + ": tensor " + quote(e.name) + " values");
    entropy[i] = layout ? order0_entropy_bits(x.values) : 0.0;
  });
  fill_layout(t, entropy, payload_at, n, layout);
  return a;
}

bool is_artifact(const std::string& head) {
  return head.size() >= sizeof(af::kMagic) && std::memcmp(head.data(), af::kMagic, sizeof(af::kMagic)) == 0;
}

// ---- files -------------------------------------------------------------------------------

void save_artifact(const std::string& path, const Artifact& a, const ArtifactWriteOptions& opt, ArtifactLayout* layout) {
  write_file_atomic(path, encode_artifact(a, opt, layout));
}

Artifact load_artifact(const std::string& path, ArtifactLayout* layout) {
  const ArtifactLimits lim;
  return decode_artifact(read_file(path, lim.max_file), path, layout, lim);
}

}  // namespace pgolf::quant
