// torch.save archives without Python: ZIP directory, a data-only pickle
// interpreter, storage/tensor bounds checks, and the .ptz wrappers.
// No libtorch here (to_tensor is in torch_archive_tensor.cpp).
#include "quant/torch_archive.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <limits>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_set>

#include "data/atomic_file.h"
#include "data/error.h"
#include "quant/codec.h"

namespace pgolf::quant {

// ---- small helpers ---------------------------------------------------------------

namespace {

// User-controlled text inside an error message: printable ASCII only, short,
// so the message stays one line.
std::string printable(std::string_view s, size_t max = 80) {
  std::string out;
  for (size_t i = 0; i < s.size() && out.size() < max; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (out.size() >= max) out += "...";
  return out;
}

std::string quoted(std::string_view s) { return "'" + printable(s) + "'"; }

uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const unsigned char* p) { return le32(p) | (static_cast<uint64_t>(le32(p + 4)) << 32); }

// Overflow-checked arithmetic on non-negative int64 values, capped at 2^62 so
// that byte counts (x dtype size <= 8) still fit.
constexpr int64_t kBig = int64_t{1} << 62;
bool add_ok(int64_t a, int64_t b, int64_t* out) {
  if (a < 0 || b < 0 || a > kBig - b) return false;
  *out = a + b;
  return true;
}
bool mul_ok(int64_t a, int64_t b, int64_t* out) {
  if (a < 0 || b < 0) return false;
  if (a != 0 && b > kBig / a) return false;
  *out = a * b;
  return true;
}

// numel and extent (see TensorRef::extent) of a strided view; false on a
// negative size/stride, a rank mismatch or overflow.
bool view_extent(const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides, int64_t* numel,
                 int64_t* extent) {
  if (sizes.size() != strides.size()) return false;
  int64_t n = 1, last = 0;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] < 0 || strides[d] < 0) return false;
    if (!mul_ok(n, sizes[d], &n)) return false;
  }
  if (n == 0) {
    *numel = 0;
    *extent = 0;
    return true;
  }
  for (size_t d = 0; d < sizes.size(); ++d) {
    int64_t step;
    if (!mul_ok(sizes[d] - 1, strides[d], &step) || !add_ok(last, step, &last)) return false;
  }
  *numel = n;
  return add_ok(last, 1, extent);
}

}  // namespace

// ---- dtypes ------------------------------------------------------------------------

int dtype_size(DType t) {
  switch (t) {
    case DType::Float64: case DType::Int64: return 8;
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float16: case DType::BFloat16: case DType::Int16: return 2;
    case DType::Int8: case DType::UInt8: case DType::Bool: return 1;
  }
  return 1;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int8: return "int8";
    case DType::UInt8: return "uint8";
    case DType::Int16: return "int16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
  }
  return "?";
}

bool dtype_from_name(std::string_view name, DType* out) {
  static const std::pair<const char*, DType> kNames[] = {
      {"float32", DType::Float32}, {"float", DType::Float32},   {"float64", DType::Float64},
      {"double", DType::Float64},  {"float16", DType::Float16}, {"half", DType::Float16},
      {"bfloat16", DType::BFloat16}, {"int8", DType::Int8},     {"uint8", DType::UInt8},
      {"int16", DType::Int16},     {"short", DType::Int16},     {"int32", DType::Int32},
      {"int", DType::Int32},       {"int64", DType::Int64},     {"long", DType::Int64},
      {"bool", DType::Bool},
  };
  for (const auto& [n, t] : kNames) {
    if (name == n) {
      *out = t;
      return true;
    }
  }
  return false;
}

bool dtype_is_float(DType t) {
  return t == DType::Float32 || t == DType::Float64 || t == DType::Float16 || t == DType::BFloat16;
}

// ---- TensorRef / PickleValue -------------------------------------------------------

int64_t TensorRef::numel() const {
  int64_t n = 0, e = 0;
  return view_extent(sizes, strides, &n, &e) ? n : -1;
}

int64_t TensorRef::extent() const {
  int64_t n = 0, e = 0;
  return view_extent(sizes, strides, &n, &e) ? e : -1;
}

bool TensorRef::is_contiguous() const {
  if (sizes.size() != strides.size()) return false;
  int64_t expected = 1;
  for (size_t d = sizes.size(); d-- > 0;) {
    if (sizes[d] == 0) return true;
    if (sizes[d] != 1 && strides[d] != expected) return false;
    if (!mul_ok(expected, sizes[d], &expected)) return false;
  }
  return true;
}

const char* PickleValue::kind_name() const {
  switch (kind) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Tensor: return "tensor";
    case Kind::DType: return "dtype";
    case Kind::Storage: return "storage";
    case Kind::Global: return "global";
  }
  return "?";
}

namespace {

// Dict keys as Python compares them, for the hashable scalars: True == 1,
// 2.0 == 2. A key is a tag plus bytes (a view: keys are never copied, so a
// long memoized key reused across many dicts costs no memory).
struct KeyView {
  char tag = 0;  // 'n' None, 'i' int-like, 'f' other float, 's' str, 'b' bytes; 0 unsupported
  int64_t num = 0;
  std::string_view bytes;
};

KeyView key_view(const PickleValue& k) {
  using K = PickleValue::Kind;
  KeyView v;
  switch (k.kind) {
    case K::None: v.tag = 'n'; break;
    case K::Bool: v.tag = 'i', v.num = k.b; break;
    case K::Int: v.tag = 'i', v.num = k.i; break;
    case K::Float:
      if (k.f == k.f && k.f >= -9.2e18 && k.f <= 9.2e18 && k.f == static_cast<double>(static_cast<int64_t>(k.f))) {
        v.tag = 'i', v.num = static_cast<int64_t>(k.f);
      } else {
        v.tag = 'f';
        std::memcpy(&v.num, &k.f, 8);
      }
      break;
    case K::Str: v.tag = 's', v.bytes = k.s; break;
    case K::Bytes: v.tag = 'b', v.bytes = k.s; break;
    default: break;
  }
  return v;
}

uint64_t key_hash(const KeyView& k) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  auto mix = [&](unsigned char c) { h = (h ^ c) * 1099511628211ull; };
  mix(static_cast<unsigned char>(k.tag));
  for (int b = 0; b < 8; ++b) mix(static_cast<unsigned char>(static_cast<uint64_t>(k.num) >> (8 * b)));
  for (char c : k.bytes) mix(static_cast<unsigned char>(c));
  return h;
}

bool key_equal(const KeyView& a, const KeyView& b) { return a.tag == b.tag && a.num == b.num && a.bytes == b.bytes; }

}  // namespace

const PickleValue* PickleValue::find(std::string_view key) const {
  if (kind != Kind::Dict || !index) return nullptr;
  KeyView want;
  want.tag = 's';
  want.bytes = key;
  auto [lo, hi] = index->equal_range(key_hash(want));
  for (auto it = lo; it != hi; ++it) {
    if (key_equal(key_view(*entries[it->second].first), want)) return entries[it->second].second;
  }
  return nullptr;
}

// ---- pickle interpreter --------------------------------------------------------------

namespace {

// Opcodes (pickle protocols 0-5).
enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I', BININT = 'J',
  BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R',
  STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a',
  BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i',
  LONG_BINGET = 'j', LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85, TUPLE2 = 0x86,
  TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  BINBYTES = 'B', SHORT_BINBYTES = 'C',
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90,
  FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

std::string op_text(uint8_t op) {
  char buf[8];
  if (op >= 0x21 && op < 0x7F) {
    std::snprintf(buf, sizeof buf, "'%c'", op);
  } else {
    std::snprintf(buf, sizeof buf, "0x%02x", op);
  }
  return buf;
}

// What an allowlisted global is.
enum class GlobalUse : uint8_t { Callable, StorageType, TensorType, DTypeObject };

struct GlobalInfo {
  GlobalUse use;
  DType dtype;  // StorageType, DTypeObject
};

bool lookup_global(const std::string& full, GlobalInfo* out) {
  static const char* kCallables[] = {
      "collections.OrderedDict",
      "torch._utils._rebuild_tensor_v2",
      "torch._utils._rebuild_tensor",
      "torch._utils._rebuild_parameter",
      "torch._utils._rebuild_parameter_with_state",
      "torch._tensor._rebuild_from_type_v2",
      "torch.Size",
      "torch.jit._pickle.restore_type_tag",
      "torch.jit._pickle.build_intlist",
      "torch.jit._pickle.build_doublelist",
      "torch.jit._pickle.build_boollist",
      "torch.jit._pickle.build_tensorlist",
      "_codecs.encode",
  };
  for (const char* c : kCallables) {
    if (full == c) {
      *out = {GlobalUse::Callable, DType::Float32};
      return true;
    }
  }
  // Classes that only appear as the `type` argument of _rebuild_from_type_v2.
  if (full == "torch.Tensor" || full == "torch.nn.parameter.Parameter") {
    *out = {GlobalUse::TensorType, DType::Float32};
    return true;
  }
  static const std::pair<const char*, DType> kStorages[] = {
      {"torch.FloatStorage", DType::Float32},   {"torch.DoubleStorage", DType::Float64},
      {"torch.HalfStorage", DType::Float16},    {"torch.BFloat16Storage", DType::BFloat16},
      {"torch.CharStorage", DType::Int8},       {"torch.ByteStorage", DType::UInt8},
      {"torch.ShortStorage", DType::Int16},     {"torch.IntStorage", DType::Int32},
      {"torch.LongStorage", DType::Int64},      {"torch.BoolStorage", DType::Bool},
      {"torch.UntypedStorage", DType::UInt8},
  };
  for (const auto& [n, t] : kStorages) {
    if (full == n) {
      *out = {GlobalUse::StorageType, t};
      return true;
    }
  }
  DType t;
  if (full.compare(0, 6, "torch.") == 0 && dtype_from_name(std::string_view(full).substr(6), &t)) {
    *out = {GlobalUse::DTypeObject, t};
    return true;
  }
  return false;
}

// UTF-8 as Python's pickle accepts it ('surrogatepass': encoded surrogates are fine).
bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF) return false;
    i += len;
  }
  return true;
}

// str -> bytes for code points < 256 (what _codecs.encode(s, "latin1") does).
bool latin1_bytes(std::string_view s, std::string* out) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  out->clear();
  for (size_t i = 0; i < s.size();) {
    unsigned c = p[i];
    if (c < 0x80) {
      out->push_back(static_cast<char>(c));
      ++i;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      unsigned cp = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F);
      if (cp > 0xFF) return false;
      out->push_back(static_cast<char>(cp));
      i += 2;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

// The interpreter. One object per program; see parse_pickle.
class Unpickler {
 public:
  using Kind = PickleValue::Kind;

  Unpickler(std::string_view program, const std::string& what, const PickleLimits& lim)
      : p_(reinterpret_cast<const unsigned char*>(program.data())), n_(program.size()), what_(what), lim_(lim) {}

  PickleDoc run() {
    if (n_ > lim_.max_program) fail_at("pickle of " + std::to_string(n_) + " bytes is over the limit");
    for (;;) {
      op_pos_ = pos_;
      if (pos_ >= n_) fail_at("truncated (no STOP opcode)");
      uint8_t op = p_[pos_++];
      if (op == STOP) break;
      step(op);
    }
    if (stack_.size() != 1 || !marks_.empty()) {
      fail_at("STOP with " + std::to_string(stack_.size()) + " values and " + std::to_string(marks_.size()) +
              " open marks on the stack (want exactly 1 value)");
    }
    doc_.root_ = stack_[0];
    check_result(doc_.root_);
    return std::move(doc_);
  }

 private:
  // ---- errors and input ----
  [[noreturn]] void fail_at(const std::string& problem) const {
    fail(what_, "pickle byte " + std::to_string(op_pos_) + ": " + problem);
  }
  void need(uint64_t k) const {
    if (k > n_ - pos_) {
      fail_at("truncated (opcode " + op_text(p_[op_pos_]) + " needs " + std::to_string(k) + " more bytes, " +
              std::to_string(n_ - pos_) + " left)");
    }
  }
  uint8_t u8() { need(1); return p_[pos_++]; }
  uint16_t u16() { need(2); uint16_t v = le16(p_ + pos_); pos_ += 2; return v; }
  uint32_t u32() { need(4); uint32_t v = le32(p_ + pos_); pos_ += 4; return v; }
  uint64_t u64() { need(8); uint64_t v = le64(p_ + pos_); pos_ += 8; return v; }
  std::string_view take(uint64_t k) {
    need(k);
    std::string_view v(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(k));
    pos_ += static_cast<size_t>(k);
    return v;
  }
  // A '\n'-terminated line (GLOBAL operands), newline dropped.
  std::string_view line() {
    const size_t max = 256;
    for (size_t k = pos_; k < n_ && k - pos_ <= max; ++k) {
      if (p_[k] == '\n') {
        std::string_view v(reinterpret_cast<const char*>(p_ + pos_), k - pos_);
        pos_ = k + 1;
        return v;
      }
    }
    fail_at("GLOBAL operand is truncated or longer than " + std::to_string(max) + " bytes");
  }

  // ---- values and stack ----
  PickleValue* make(Kind k) {
    if (doc_.arena_.size() >= lim_.max_values) fail_at("more than " + std::to_string(lim_.max_values) + " values");
    doc_.arena_.push_back(std::make_unique<PickleValue>());
    PickleValue* v = doc_.arena_.back().get();
    v->kind = k;
    if (k == Kind::Dict) v->index = std::make_unique<std::unordered_multimap<uint64_t, size_t>>();
    return v;
  }
  PickleValue* make_int(int64_t i) { PickleValue* v = make(Kind::Int); v->i = i; return v; }
  PickleValue* make_str(Kind k, std::string_view s) {
    if (k == Kind::Str && !valid_utf8(s)) fail_at("string is not valid UTF-8");
    string_bytes_ += s.size();
    if (string_bytes_ > lim_.max_string_bytes) {
      fail_at("strings total more than " + std::to_string(lim_.max_string_bytes) + " bytes");
    }
    PickleValue* v = make(k);
    v->s.assign(s.data(), s.size());
    return v;
  }

  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(PickleValue* v) {
    if (stack_.size() >= lim_.max_stack) fail_at("stack deeper than " + std::to_string(lim_.max_stack));
    stack_.push_back(v);
  }
  PickleValue* pop() {
    if (stack_.size() <= base()) fail_at("stack underflow (opcode " + op_text(p_[op_pos_]) + ")");
    PickleValue* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  PickleValue* top() {
    if (stack_.size() <= base()) fail_at("stack underflow (opcode " + op_text(p_[op_pos_]) + ")");
    return stack_.back();
  }
  // The values pushed since the last MARK (which is removed).
  std::vector<PickleValue*> pop_mark() {
    if (marks_.empty()) fail_at("opcode " + op_text(p_[op_pos_]) + " without a MARK");
    size_t b = marks_.back();
    marks_.pop_back();
    std::vector<PickleValue*> items(stack_.begin() + static_cast<std::ptrdiff_t>(b), stack_.end());
    stack_.resize(b);
    return items;
  }
  // Every element put into a container counts: the memo lets a few input
  // bytes add an element, so input size alone does not bound this.
  void add_items(size_t k) {
    items_ += k;
    if (items_ > lim_.max_items) fail_at("containers hold more than " + std::to_string(lim_.max_items) + " elements");
  }
  PickleValue* make_seq(Kind k, std::vector<PickleValue*> items) {
    add_items(items.size());
    PickleValue* v = make(k);
    v->items = std::move(items);
    return v;
  }

  void dict_set(PickleValue* d, PickleValue* k, PickleValue* val) {
    if (!d->is(Kind::Dict)) fail_at("SETITEM(S) on a " + std::string(d->kind_name()) + ", not a dict");
    KeyView key = key_view(*k);
    if (!key.tag) fail_at("dict key of type " + std::string(k->kind_name()) + " is not supported");
    if (key.bytes.size() > lim_.max_key_bytes) fail_at("dict key longer than " + std::to_string(lim_.max_key_bytes) + " bytes");
    add_items(1);
    uint64_t h = key_hash(key);
    auto [lo, hi] = d->index->equal_range(h);
    for (auto it = lo; it != hi; ++it) {
      if (key_equal(key_view(*d->entries[it->second].first), key)) {
        d->entries[it->second].second = val;  // Python keeps the first key and its position
        return;
      }
    }
    d->index->emplace(h, d->entries.size());
    d->entries.emplace_back(k, val);
  }

  void memo_put(uint64_t idx) {
    PickleValue* v = top();
    auto it = memo_.find(idx);
    if (it != memo_.end()) {
      it->second = v;
      return;
    }
    if (memo_.size() >= lim_.max_memo) fail_at("memo larger than " + std::to_string(lim_.max_memo) + " entries");
    memo_.emplace(idx, v);
  }
  void memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail_at("memo slot " + std::to_string(idx) + " is read before it is written");
    push(it->second);
  }

  // ---- globals ----
  PickleValue* global(std::string_view module, std::string_view name) {
    std::string full(module);
    full += '.';
    full.append(name.data(), name.size());
    GlobalInfo info;
    if (!lookup_global(full, &info)) {
      fail_at("global " + quoted(full) + " is not allowed (only the torch tensor-rebuild globals are)");
    }
    if (info.use == GlobalUse::DTypeObject) {
      PickleValue* v = make(Kind::DType);
      v->dtype = info.dtype;
      return v;
    }
    PickleValue* v = make(Kind::Global);
    v->s = full;
    return v;
  }

  // ('storage', torch.<X>Storage, key, location, numel) -> Storage value.
  PickleValue* persistent_load(PickleValue* pid) {
    const auto& it = pid->items;
    if (!pid->is(Kind::Tuple) || it.size() != 5 || !it[0]->is(Kind::Str) || it[0]->s != "storage") {
      fail_at("persistent id is not a ('storage', type, key, location, numel) tuple");
    }
    GlobalInfo info;
    if (!it[1]->is(Kind::Global) || !lookup_global(it[1]->s, &info) || info.use != GlobalUse::StorageType) {
      fail_at("persistent id names no torch storage type");
    }
    // Keys become zip names (data/<key>) and appear in messages: torch writes
    // small decimals; accept a conservative alphabet.
    if (!it[2]->is(Kind::Str) || it[2]->s.empty() || it[2]->s.size() > 64 ||
        it[2]->s.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_.-") !=
            std::string::npos) {
      fail_at("bad storage key" + (it[2]->is(Kind::Str) ? " " + quoted(it[2]->s) : std::string()));
    }
    if (!it[3]->is(Kind::Str)) fail_at("bad storage location");
    if (!it[4]->is(Kind::Int) || it[4]->i < 0 || it[4]->i > kBig / 8) fail_at("bad storage size");
    const std::string& key = it[2]->s;
    StorageInfo si{info.dtype, it[4]->i};
    auto [pos, fresh] = doc_.storages_.emplace(key, si);
    if (!fresh && (pos->second.dtype != si.dtype || pos->second.numel != si.numel)) {
      fail_at("storage " + quoted(key) + " is declared twice with different types or sizes");
    }
    PickleValue* v = make(Kind::Storage);
    v->s = key;
    v->dtype = si.dtype;
    v->i = si.numel;
    return v;
  }

  std::vector<int64_t> int_tuple(const PickleValue* t, const char* what) {
    if (!t->is(Kind::Tuple) && !t->is(Kind::List)) fail_at(std::string("tensor ") + what + " is not a tuple");
    if (t->items.size() > static_cast<size_t>(lim_.max_ndim)) {
      fail_at(std::string("tensor ") + what + " has more than " + std::to_string(lim_.max_ndim) + " dimensions");
    }
    std::vector<int64_t> out;
    for (const PickleValue* x : t->items) {
      if (!x->is(Kind::Int) || x->i < 0) fail_at(std::string("tensor ") + what + " holds a non-integer or negative");
      out.push_back(x->i);
    }
    return out;
  }

  // _rebuild_tensor(_v2)(storage, offset, size, stride[, requires_grad, hooks[, metadata]])
  PickleValue* rebuild_tensor(const std::vector<PickleValue*>& a, bool v2) {
    if (v2 ? (a.size() != 6 && a.size() != 7) : a.size() != 4) fail_at("tensor rebuild with wrong argument count");
    if (!a[0]->is(Kind::Storage)) fail_at("tensor rebuild without a storage");
    if (!a[1]->is(Kind::Int) || a[1]->i < 0) fail_at("tensor storage offset is not a non-negative int");
    TensorRef t;
    t.storage_key = a[0]->s;
    t.dtype = a[0]->dtype;
    t.offset = a[1]->i;
    t.sizes = int_tuple(a[2], "size");
    t.strides = int_tuple(a[3], "stride");
    if (v2) {
      if (!a[4]->is(Kind::Bool)) fail_at("tensor requires_grad is not a bool");
      t.requires_grad = a[4]->b;
      if (!a[5]->is(Kind::Dict)) fail_at("tensor backward hooks are not a dict");
      if (a.size() == 7 && !a[6]->is(Kind::Dict)) fail_at("tensor metadata is not a dict");
    }
    int64_t numel, extent, end;
    if (!view_extent(t.sizes, t.strides, &numel, &extent)) fail_at("tensor size/stride mismatch or overflow");
    if (extent > 0 && (!add_ok(t.offset, extent, &end) || end > a[0]->i)) {
      fail_at("tensor view (offset " + std::to_string(t.offset) + ", " + std::to_string(extent) +
              " elements) runs past storage " + quoted(t.storage_key) + " of " + std::to_string(a[0]->i) +
              " elements");
    }
    PickleValue* v = make(Kind::Tensor);
    v->tensor = std::move(t);
    return v;
  }

  PickleValue* call(const PickleValue* fn, PickleValue* args) {
    if (!fn->is(Kind::Global)) fail_at("REDUCE on a " + std::string(fn->kind_name()) + ", which is not callable");
    if (!args->is(Kind::Tuple)) fail_at("REDUCE arguments are not a tuple");
    const std::string& f = fn->s;
    const auto& a = args->items;
    if (f == "torch._utils._rebuild_tensor_v2") return rebuild_tensor(a, true);
    if (f == "torch._utils._rebuild_tensor") return rebuild_tensor(a, false);
    if (f == "torch._utils._rebuild_parameter" || f == "torch._utils._rebuild_parameter_with_state") {
      size_t want = f.back() == 'r' ? 3 : 4;
      if (a.size() != want || !a[0]->is(Kind::Tensor) || !a[1]->is(Kind::Bool)) fail_at("bad " + f + " arguments");
      PickleValue* v = make(Kind::Tensor);
      v->tensor = a[0]->tensor;
      v->tensor.requires_grad = a[1]->b;
      return v;  // hooks and state dropped: they never matter for weights
    }
    if (f == "torch._tensor._rebuild_from_type_v2") {
      // (func, type, args, state): what torch writes for a tensor that carries
      // Python attributes. Only plain tensor/parameter types; state dropped.
      GlobalInfo info;
      if (a.size() != 4 || !a[0]->is(Kind::Global) || !a[1]->is(Kind::Global) || !lookup_global(a[1]->s, &info) ||
          info.use != GlobalUse::TensorType || a[0]->s.compare(0, 13, "torch._utils.") != 0) {
        fail_at("_rebuild_from_type_v2 is only accepted for torch.Tensor rebuilt by torch._utils");
      }
      return call(a[0], a[2]);
    }
    if (f == "collections.OrderedDict") {
      if (!a.empty()) fail_at("collections.OrderedDict called with arguments");
      return make(Kind::Dict);
    }
    if (f == "torch.Size") {
      if (a.size() != 1 || !a[0]->is(Kind::Tuple)) fail_at("torch.Size needs one tuple");
      int_tuple(a[0], "size");
      return a[0];
    }
    if (f == "torch.jit._pickle.restore_type_tag") {
      if (a.size() != 2 || !a[1]->is(Kind::Str)) fail_at("bad restore_type_tag arguments");
      return a[0];  // the type annotation only matters to TorchScript
    }
    if (f.compare(0, 24, "torch.jit._pickle.build_") == 0) {
      if (a.size() != 1 || !a[0]->is(Kind::List)) fail_at(f + " needs one list");
      return a[0];
    }
    if (f == "_codecs.encode") {
      if (a.size() != 2 || !a[0]->is(Kind::Str) || !a[1]->is(Kind::Str) ||
          (a[1]->s != "latin1" && a[1]->s != "latin-1")) {
        fail_at("_codecs.encode is only accepted as encode(str, 'latin1')");
      }
      std::string bytes;
      if (!latin1_bytes(a[0]->s, &bytes)) fail_at("_codecs.encode: string is not latin-1");
      return make_str(Kind::Bytes, bytes);
    }
    fail_at("REDUCE on " + quoted(f) + ", which is not a callable");
  }

  // ---- one opcode ----
  void step(uint8_t op) {
    switch (op) {
      case PROTO: {
        uint8_t v = u8();
        if (v > 5) fail_at("pickle protocol " + std::to_string(v) + " (at most 5 exists)");
        break;
      }
      case FRAME: {
        uint64_t len = u64();
        if (len > n_ - pos_) fail_at("FRAME of " + std::to_string(len) + " bytes runs past the end");
        break;  // frames only group opcodes
      }
      case MARK:
        if (marks_.size() >= lim_.max_marks) fail_at("more than " + std::to_string(lim_.max_marks) + " open marks");
        marks_.push_back(stack_.size());
        break;
      case POP:
        if (stack_.size() > base()) {
          stack_.pop_back();
        } else if (!marks_.empty()) {
          marks_.pop_back();  // Python pops the mark when nothing is above it
        } else {
          fail_at("stack underflow (POP)");
        }
        break;
      case POP_MARK: pop_mark(); break;
      case DUP: push(top()); break;

      case NONE: push(make(Kind::None)); break;
      case NEWTRUE: case NEWFALSE: {
        PickleValue* v = make(Kind::Bool);
        v->b = op == NEWTRUE;
        push(v);
        break;
      }
      case BININT: push(make_int(static_cast<int32_t>(u32()))); break;
      case BININT1: push(make_int(u8())); break;
      case BININT2: push(make_int(u16())); break;
      case LONG1: case LONG4: {
        uint64_t len = op == LONG1 ? u8() : u32();
        if (len > 8) fail_at("integer of " + std::to_string(len) + " bytes is wider than 64 bits");
        std::string_view b = take(len);
        uint64_t v = 0;
        for (size_t k = 0; k < len; ++k) v |= static_cast<uint64_t>(static_cast<unsigned char>(b[k])) << (8 * k);
        if (len > 0 && len < 8 && (static_cast<unsigned char>(b[len - 1]) & 0x80)) v |= ~uint64_t{0} << (8 * len);
        push(make_int(static_cast<int64_t>(v)));
        break;
      }
      case BINFLOAT: {
        std::string_view b = take(8);
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | static_cast<unsigned char>(b[k]);  // big-endian
        PickleValue* v = make(Kind::Float);
        std::memcpy(&v->f, &bits, 8);
        push(v);
        break;
      }

      case SHORT_BINUNICODE: push(make_str(Kind::Str, take(u8()))); break;
      case BINUNICODE: push(make_str(Kind::Str, take(u32()))); break;
      case BINUNICODE8: push(make_str(Kind::Str, take(u64()))); break;
      case SHORT_BINSTRING: push(make_str(Kind::Str, take(u8()))); break;  // torch.load decodes py2 str as UTF-8
      case BINSTRING: {
        int32_t len = static_cast<int32_t>(u32());
        if (len < 0) fail_at("BINSTRING with a negative length");
        push(make_str(Kind::Str, take(static_cast<uint64_t>(len))));
        break;
      }
      case SHORT_BINBYTES: push(make_str(Kind::Bytes, take(u8()))); break;
      case BINBYTES: push(make_str(Kind::Bytes, take(u32()))); break;
      case BINBYTES8: case BYTEARRAY8: push(make_str(Kind::Bytes, take(u64()))); break;

      case EMPTY_TUPLE: push(make(Kind::Tuple)); break;
      case TUPLE1: case TUPLE2: case TUPLE3: {
        size_t k = static_cast<size_t>(op - TUPLE1 + 1);
        std::vector<PickleValue*> items(k);
        for (size_t j = k; j-- > 0;) items[j] = pop();
        push(make_seq(Kind::Tuple, std::move(items)));
        break;
      }
      case TUPLE: push(make_seq(Kind::Tuple, pop_mark())); break;
      case EMPTY_LIST: push(make(Kind::List)); break;
      case LIST: push(make_seq(Kind::List, pop_mark())); break;
      case APPEND: {
        PickleValue* v = pop();
        PickleValue* l = top();
        if (!l->is(Kind::List)) fail_at("APPEND to a " + std::string(l->kind_name()) + ", not a list");
        add_items(1);
        l->items.push_back(v);
        break;
      }
      case APPENDS: {
        std::vector<PickleValue*> items = pop_mark();
        PickleValue* l = top();
        if (!l->is(Kind::List)) fail_at("APPENDS to a " + std::string(l->kind_name()) + ", not a list");
        add_items(items.size());
        l->items.insert(l->items.end(), items.begin(), items.end());
        break;
      }
      case EMPTY_DICT: push(make(Kind::Dict)); break;
      case DICT: {
        std::vector<PickleValue*> items = pop_mark();
        if (items.size() % 2) fail_at("DICT with an odd number of items");
        PickleValue* d = make(Kind::Dict);
        for (size_t k = 0; k < items.size(); k += 2) dict_set(d, items[k], items[k + 1]);
        push(d);
        break;
      }
      case SETITEM: {
        PickleValue* v = pop();
        PickleValue* k = pop();
        dict_set(top(), k, v);
        break;
      }
      case SETITEMS: {
        std::vector<PickleValue*> items = pop_mark();
        if (items.size() % 2) fail_at("SETITEMS with an odd number of items");
        PickleValue* d = top();
        for (size_t k = 0; k < items.size(); k += 2) dict_set(d, items[k], items[k + 1]);
        break;
      }

      case BINPUT: memo_put(u8()); break;
      case LONG_BINPUT: memo_put(u32()); break;
      case MEMOIZE: memo_put(memo_.size()); break;
      case BINGET: memo_get(u8()); break;
      case LONG_BINGET: memo_get(u32()); break;

      case GLOBAL: {
        std::string_view module = line();
        std::string_view name = line();
        push(global(module, name));
        break;
      }
      case STACK_GLOBAL: {
        PickleValue* name = pop();
        PickleValue* module = pop();
        if (!name->is(Kind::Str) || !module->is(Kind::Str)) fail_at("STACK_GLOBAL operands are not strings");
        push(global(module->s, name->s));
        break;
      }
      case REDUCE: {
        PickleValue* args = pop();
        PickleValue* fn = pop();
        push(call(fn, args));
        break;
      }
      case NEWOBJ: {
        PickleValue* args = pop();
        PickleValue* cls = pop();
        if (!cls->is(Kind::Global) || cls->s != "collections.OrderedDict" || !args->is(Kind::Tuple) ||
            !args->items.empty()) {
          fail_at("NEWOBJ is only accepted for collections.OrderedDict()");
        }
        push(make(Kind::Dict));
        break;
      }
      case BUILD: {
        PickleValue* state = pop();
        PickleValue* obj = top();
        (void)state;
        // An OrderedDict's instance attributes (a state_dict's _metadata):
        // accepted and ignored, they carry no weights.
        if (!obj->is(Kind::Dict)) fail_at("BUILD on a " + std::string(obj->kind_name()) + " is not supported");
        break;
      }
      case BINPERSID: push(persistent_load(pop())); break;

      default: {
        const char* what = nullptr;
        switch (op) {
          case INT: case LONG: case FLOAT: case STRING: case UNICODE: case GET: case PUT: case PERSID:
            what = "a protocol-0 text opcode";
            break;
          case INST: case OBJ: case NEWOBJ_EX: case EXT1: case EXT2: case EXT4:
            what = "an object-building opcode";
            break;
          case EMPTY_SET: case ADDITEMS: case FROZENSET: what = "a set opcode"; break;
          case NEXT_BUFFER: case READONLY_BUFFER: what = "an out-of-band buffer opcode"; break;
          default: break;
        }
        if (what) fail_at("opcode " + op_text(op) + " (" + what + ") is not supported");
        fail_at("unknown opcode " + op_text(op));
      }
    }
  }

  // ---- the result ----
  static size_t child_count(const PickleValue* v) {
    if (v->is(Kind::Dict)) return 2 * v->entries.size();
    if (v->is(Kind::Tuple) || v->is(Kind::List)) return v->items.size();
    return 0;
  }
  static PickleValue* child(const PickleValue* v, size_t j) {
    if (v->is(Kind::Dict)) return j % 2 ? v->entries[j / 2].second : v->entries[j / 2].first;
    return v->items[j];
  }

  // No cycles, nesting within max_depth, and at most max_tree values when
  // shared values are counted each time (so naive tree walks stay cheap).
  void check_result(PickleValue* root) {
    op_pos_ = pos_;
    struct Frame {
      PickleValue* v;
      size_t next;
      uint64_t size;
    };
    std::unordered_map<const PickleValue*, uint64_t> done;  // container -> tree size
    std::unordered_set<const PickleValue*> open;  // containers on the current path
    std::vector<Frame> path;
    auto enter = [&](PickleValue* v) {
      if (path.size() >= lim_.max_depth) fail_at("result nests deeper than " + std::to_string(lim_.max_depth));
      open.insert(v);
      path.push_back({v, 0, 1});
    };
    auto grow = [&](uint64_t* size, uint64_t add) {
      *size = (add > lim_.max_tree || *size > lim_.max_tree - add) ? lim_.max_tree + 1 : *size + add;
      if (*size > lim_.max_tree) fail_at("result expands to more than " + std::to_string(lim_.max_tree) + " values");
    };
    if (child_count(root) == 0) return;
    enter(root);
    while (!path.empty()) {
      Frame& fr = path.back();
      if (fr.next < child_count(fr.v)) {
        PickleValue* c = child(fr.v, fr.next++);
        if (child_count(c) == 0) {  // leaves and empty containers cannot close a cycle
          grow(&fr.size, 1);
        } else if (auto it = done.find(c); it != done.end()) {
          grow(&fr.size, it->second);
        } else if (open.count(c)) {
          fail_at("result contains a cycle (a container inside itself)");
        } else {
          enter(c);
        }
      } else {
        Frame f = fr;
        path.pop_back();
        open.erase(f.v);
        done[f.v] = f.size;
        if (!path.empty()) grow(&path.back().size, f.size);
      }
    }
  }

  const unsigned char* p_;
  size_t n_, pos_ = 0, op_pos_ = 0;
  const std::string& what_;
  const PickleLimits& lim_;
  PickleDoc doc_;
  std::vector<PickleValue*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValue*> memo_;
  size_t items_ = 0;
  uint64_t string_bytes_ = 0;
};

PickleDoc parse_pickle(std::string_view program, const std::string& what, const PickleLimits& limits) {
  return Unpickler(program, what, limits).run();
}

// ---- zip -------------------------------------------------------------------------------

namespace {

constexpr uint32_t kSigLocal = 0x04034b50, kSigCentral = 0x02014b50, kSigEnd = 0x06054b50;
constexpr uint32_t kSigEnd64 = 0x06064b50, kSigLocator64 = 0x07064b50;

[[noreturn]] void zip_fail(const std::string& what, const std::string& problem) { fail(what, "zip: " + problem); }

}  // namespace

ZipReader::ZipReader(std::string_view bytes, std::string what, size_t max_entries)
    : bytes_(bytes), what_(std::move(what)) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const uint64_t n = bytes.size();
  if (n < 22) zip_fail(what_, "too short to be a zip archive (" + std::to_string(n) + " bytes)");

  // End of central directory: the last record whose comment reaches exactly
  // to the end of the file (a stray signature inside a comment cannot match).
  uint64_t eocd = n;
  for (uint64_t pos = n - 22 + 1; pos-- > 0 && n - pos <= 22 + 0xFFFF;) {
    if (le32(p + pos) == kSigEnd && pos + 22 + le16(p + pos + 20) == n) {
      eocd = pos;
      break;
    }
  }
  if (eocd == n) zip_fail(what_, "not a zip archive (no end-of-central-directory record)");
  const unsigned char* e = p + eocd;
  uint64_t disk = le16(e + 4), cd_disk = le16(e + 6), n_disk = le16(e + 8), n_total = le16(e + 10);
  uint64_t cd_size = le32(e + 12), cd_off = le32(e + 16);
  uint64_t cd_limit = eocd;  // the directory ends before the end records

  if (eocd >= 20 && le32(p + eocd - 20) == kSigLocator64) {
    const unsigned char* loc = p + eocd - 20;
    uint64_t z64 = le64(loc + 8);
    if (le32(loc + 4) != 0 || le32(loc + 16) > 1) zip_fail(what_, "multi-disk archives are not supported");
    if (z64 > eocd - 20 || eocd - 20 - z64 < 56 || le32(p + z64) != kSigEnd64) zip_fail(what_, "bad ZIP64 end record");
    const unsigned char* z = p + z64;
    uint64_t rec = le64(z + 4);
    if (rec < 44 || rec > eocd - 20 - z64 - 12) zip_fail(what_, "bad ZIP64 end record size");
    disk = le32(z + 16), cd_disk = le32(z + 20), n_disk = le64(z + 24), n_total = le64(z + 32);
    cd_size = le64(z + 40), cd_off = le64(z + 48);
    cd_limit = z64;
  } else if (n_total == 0xFFFF || cd_size == 0xFFFFFFFF || cd_off == 0xFFFFFFFF) {
    zip_fail(what_, "ZIP64 sizes without a ZIP64 end record");
  }
  if (disk != 0 || cd_disk != 0 || n_disk != n_total) zip_fail(what_, "multi-disk archives are not supported");
  if (cd_off > cd_limit || cd_size > cd_limit - cd_off) zip_fail(what_, "central directory lies outside the file");
  if (n_total == 0) zip_fail(what_, "archive has no entries");
  if (n_total > max_entries) zip_fail(what_, std::to_string(n_total) + " entries (limit " + std::to_string(max_entries) + ")");
  if (n_total > cd_size / 46) zip_fail(what_, "central directory too small for " + std::to_string(n_total) + " entries");

  const uint64_t cd_end = cd_off + cd_size;
  uint64_t q = cd_off;
  entries_.reserve(static_cast<size_t>(n_total));
  for (uint64_t i = 0; i < n_total; ++i) {
    if (cd_end - q < 46 || le32(p + q) != kSigCentral) zip_fail(what_, "central directory entry " + std::to_string(i) + " is bad");
    const unsigned char* c = p + q;
    uint16_t flags = le16(c + 8), method = le16(c + 10);
    uint64_t name_len = le16(c + 28), extra_len = le16(c + 30), comment_len = le16(c + 32);
    if (cd_end - q - 46 < name_len + extra_len + comment_len) zip_fail(what_, "central directory entry " + std::to_string(i) + " is truncated");
    ZipEntry z;
    z.name.assign(reinterpret_cast<const char*>(c + 46), name_len);
    z.method = method;
    z.crc = le32(c + 16);
    z.comp_size = le32(c + 20);
    z.size = le32(c + 24);
    uint64_t local = le32(c + 42);
    uint32_t start_disk = le16(c + 34);
    // ZIP64 extra field: the 64-bit values of whichever fields were maxed out, in this order.
    const unsigned char* x = c + 46 + name_len;
    for (uint64_t k = 0; k + 4 <= extra_len;) {
      uint16_t id = le16(x + k), len = le16(x + k + 2);
      if (k + 4 + len > extra_len) zip_fail(what_, "entry " + quoted(z.name) + " has a truncated extra field");
      if (id == 0x0001) {
        const unsigned char* v = x + k + 4;
        uint64_t left = len;
        auto take64 = [&](uint64_t* field) {
          if (left < 8) zip_fail(what_, "entry " + quoted(z.name) + " has a short ZIP64 extra field");
          *field = le64(v);
          v += 8;
          left -= 8;
        };
        if (z.size == 0xFFFFFFFF) take64(&z.size);
        if (z.comp_size == 0xFFFFFFFF) take64(&z.comp_size);
        if (local == 0xFFFFFFFF) take64(&local);
        if (start_disk == 0xFFFF && left >= 4) start_disk = 0;
      }
      k += 4 + len;
    }
    if (start_disk != 0) zip_fail(what_, "entry " + quoted(z.name) + " is on another disk");
    if (flags & 0x41) zip_fail(what_, "entry " + quoted(z.name) + " is encrypted");
    if (method != 0 && method != 8) {
      zip_fail(what_, "entry " + quoted(z.name) + " uses compression method " + std::to_string(method) + " (only stored and deflate)");
    }
    if (method == 0 && z.comp_size != z.size) zip_fail(what_, "stored entry " + quoted(z.name) + " has differing sizes");

    // Local header: only its name and extra lengths matter (sizes may be
    // zero there when the data-descriptor flag is set, as miniz writes).
    if (local > cd_off || cd_off - local < 30 || le32(p + local) != kSigLocal) {
      zip_fail(what_, "entry " + quoted(z.name) + " has no local header");
    }
    uint64_t lname = le16(p + local + 26), lextra = le16(p + local + 28);
    if (cd_off - local - 30 < lname + lextra) zip_fail(what_, "entry " + quoted(z.name) + " local header runs into the directory");
    if (lname != name_len || std::memcmp(p + local + 30, c + 46, name_len) != 0) {
      zip_fail(what_, "entry " + quoted(z.name) + " local header names another file");
    }
    z.data_offset = local + 30 + lname + lextra;
    if (z.comp_size > cd_off - z.data_offset) zip_fail(what_, "entry " + quoted(z.name) + " data runs past the directory");
    if (!by_name_.emplace(z.name, entries_.size()).second) zip_fail(what_, "entry " + quoted(z.name) + " appears twice");
    entries_.push_back(std::move(z));
    q += 46 + name_len + extra_len + comment_len;
  }
}

const ZipEntry* ZipReader::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

namespace {

uint32_t crc32_of(std::string_view s) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = reinterpret_cast<const Bytef*>(s.data());
  size_t left = s.size();
  while (left > 0) {
    uInt k = static_cast<uInt>(std::min<size_t>(left, 1u << 30));
    crc = crc32(crc, p, k);
    p += k;
    left -= k;
  }
  return static_cast<uint32_t>(crc);
}

// Inflates `in` (raw deflate when raw, else a zlib stream) into at most
// max_size bytes; exact_size >= 0 demands that many.
std::string inflate_bytes(std::string_view in, bool raw, uint64_t max_size, int64_t exact_size,
                          const std::string& what) {
  if (exact_size >= 0 && static_cast<uint64_t>(exact_size) > max_size) {
    fail(what, "inflates to " + std::to_string(exact_size) + " bytes, over the limit of " + std::to_string(max_size));
  }
  z_stream zs{};
  if (inflateInit2(&zs, raw ? -15 : 15) != Z_OK) fail(what, "zlib init failed");
  struct Guard {
    z_stream* z;
    ~Guard() { inflateEnd(z); }
  } guard{&zs};

  // The buffer grows by doubling up to `limit` (one byte past what is
  // allowed, to see overruns), so a tiny stream claiming a huge size costs little.
  const uint64_t cap = std::min<uint64_t>(max_size, std::numeric_limits<size_t>::max() / 4);
  const size_t limit = static_cast<size_t>(exact_size >= 0 ? static_cast<uint64_t>(exact_size) + 1 : cap + 1);
  std::string out;
  out.resize(std::min<size_t>(limit, in.size() * 4 + (64 << 10)));
  size_t used = 0, in_pos = 0;
  for (;;) {
    if (used == out.size()) {
      if (out.size() >= limit) break;  // one byte too many: an overrun
      out.resize(std::min<size_t>(limit, out.size() * 2));
    }
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + in_pos));
    zs.avail_in = static_cast<uInt>(std::min<size_t>(in.size() - in_pos, 1u << 30));
    zs.next_out = reinterpret_cast<Bytef*>(&out[used]);
    zs.avail_out = static_cast<uInt>(std::min<size_t>(out.size() - used, 1u << 30));
    uInt in_before = zs.avail_in, out_before = zs.avail_out;
    int rc = inflate(&zs, Z_NO_FLUSH);
    in_pos += in_before - zs.avail_in;
    used += out_before - zs.avail_out;
    if (rc == Z_STREAM_END) break;
    if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR || rc == Z_MEM_ERROR) {
      fail(what, std::string("corrupt deflate stream (") + (zs.msg ? printable(zs.msg) : "zlib error") + ")");
    }
    if (rc == Z_BUF_ERROR && in_pos == in.size() && zs.avail_out > 0) fail(what, "truncated deflate stream");
    if (rc != Z_OK && rc != Z_BUF_ERROR) fail(what, "zlib error " + std::to_string(rc));
  }
  if (used >= limit) {
    fail(what, "inflates to more than " + std::to_string(limit - 1) + (exact_size >= 0 ? " bytes (the declared size)" : " bytes"));
  }
  if (in_pos != in.size()) fail(what, std::to_string(in.size() - in_pos) + " bytes after the end of the deflate stream");
  if (exact_size >= 0 && used != static_cast<size_t>(exact_size)) {
    fail(what, "inflates to " + std::to_string(used) + " bytes, not the declared " + std::to_string(exact_size));
  }
  out.resize(used);
  return out;
}

}  // namespace

std::string_view ZipReader::read(const ZipEntry& e, std::string* scratch, uint64_t max_size) const {
  std::string_view data = bytes_.substr(static_cast<size_t>(e.data_offset), static_cast<size_t>(e.comp_size));
  if (e.method == 8) {
    *scratch = inflate_bytes(data, true, max_size, static_cast<int64_t>(std::min<uint64_t>(e.size, kBig)),
                             what_ + ": zip entry " + quoted(e.name));
    data = *scratch;
  } else if (e.size > max_size) {
    fail(what_, "zip entry " + quoted(e.name) + " of " + std::to_string(e.size) + " bytes is over the limit");
  }
  if (e.crc != 0 && crc32_of(data) != e.crc) fail(what_, "zip entry " + quoted(e.name) + " fails its CRC check");
  return data;
}

std::string zlib_inflate(std::string_view in, uint64_t max_size, const std::string& what) {
  return inflate_bytes(in, false, max_size, -1, what);
}

// ---- torch archive ----------------------------------------------------------------------

TorchArchive TorchArchive::open(const std::string& path, const ArchiveLimits& limits) {
  return from_bytes(read_file(path, limits.max_file), path, limits);
}

TorchArchive TorchArchive::from_bytes(std::string bytes, const std::string& what, const ArchiveLimits& limits) {
  TorchArchive a;
  a.bytes_ = std::make_unique<std::string>(std::move(bytes));
  a.what_ = what;
  a.max_tensor_bytes_ = limits.max_tensor_bytes;
  a.load(limits);
  return a;
}

void TorchArchive::load(const ArchiveLimits& lim) {
  if (bytes_->size() > lim.max_file) fail(what_, "archive of " + std::to_string(bytes_->size()) + " bytes is over the limit");
  ZipReader zip(*bytes_, what_, lim.max_entries);

  // torch's rule: the folder of the first entry is the archive's folder.
  const std::string& first = zip.entries()[0].name;
  size_t slash = first.find('/');
  if (slash == std::string::npos || slash == 0) fail(what_, "zip entry " + quoted(first) + " is not inside a folder");
  prefix_ = first.substr(0, slash);
  auto entry = [&](const std::string& rel) { return zip.find(prefix_ + "/" + rel); };
  std::string scratch;

  // Format version: "version" (or ".data/version" in newer torch), decimal.
  const ZipEntry* ver = entry("version");
  if (!ver) ver = entry(".data/version");
  if (!ver) fail(what_, "not a torch.save archive (no " + quoted(prefix_ + "/version") + " record)");
  std::string_view v = zip.read(*ver, &scratch, 64);
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r' || v.back() == ' ')) v.remove_suffix(1);
  if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string_view::npos) {
    fail(what_, "bad format version record " + quoted(v));
  }
  version_ = std::stoull(std::string(v));

  if (const ZipEntry* bo = entry("byteorder")) {
    std::string_view order = zip.read(*bo, &scratch, 64);
    if (order == "big") fail(what_, "big-endian archive (byteorder 'big') is not supported");
    if (order != "little") fail(what_, "bad byteorder record " + quoted(order));
  }

  const ZipEntry* pkl = entry("data.pkl");
  if (!pkl) fail(what_, "not a torch.save archive (no " + quoted(prefix_ + "/data.pkl") + " record)");
  std::string program_buf;
  std::string_view program = zip.read(*pkl, &program_buf, lim.pickle.max_program);
  doc_ = parse_pickle(program, what_, lim.pickle);

  // Every storage the pickle names: present, exactly numel * dtype_size bytes.
  uint64_t inflated_total = 0;  // deflated storages share one budget
  for (const auto& [key, info] : doc_.storages()) {
    const std::string rel = "data/" + key;
    const ZipEntry* e = entry(rel);
    if (!e) fail(what_, "storage " + quoted(key) + " has no record " + quoted(prefix_ + "/" + rel));
    int64_t want;
    if (!mul_ok(info.numel, dtype_size(info.dtype), &want) || e->size != static_cast<uint64_t>(want)) {
      fail(what_, "storage " + quoted(key) + " holds " + std::to_string(e->size) + " bytes, the pickle declares " +
                      std::to_string(info.numel) + " x " + dtype_name(info.dtype));
    }
    std::string inflated;
    if (e->method == 8) {
      inflated_total += e->size;
      if (inflated_total > lim.max_inflated) {
        fail(what_, "deflated storages inflate to more than " + std::to_string(lim.max_inflated) + " bytes");
      }
    }
    std::string_view data = zip.read(*e, &inflated, lim.max_inflated);
    if (e->method == 8) {
      auto& slot = inflated_[key];  // map nodes never move, so views stay valid
      slot = std::move(inflated);
      data = slot;
    }
    storages_.emplace(key, data);
  }
}

std::string_view TorchArchive::storage_bytes(std::string_view key) const {
  auto it = storages_.find(key);
  if (it == storages_.end()) fail(what_, "no storage " + quoted(key));
  return it->second;
}

std::string_view TorchArchive::tensor_bytes(const TensorRef& t) const {
  std::string_view s = storage_bytes(t.storage_key);
  const int64_t es = dtype_size(t.dtype);
  int64_t numel, extent, first, end;
  if (t.offset < 0 || !view_extent(t.sizes, t.strides, &numel, &extent)) {
    fail(what_, "tensor on storage " + quoted(t.storage_key) + " has a bad offset, size or stride");
  }
  if (extent == 0) return s.substr(0, 0);
  if (!mul_ok(t.offset, es, &first) || !add_ok(t.offset, extent, &end) || !mul_ok(end, es, &end) ||
      static_cast<uint64_t>(end) > s.size()) {
    fail(what_, "tensor view runs past storage " + quoted(t.storage_key) + " (" + std::to_string(s.size()) + " bytes)");
  }
  return s.substr(static_cast<size_t>(first), static_cast<size_t>(end - first));
}

std::string TorchArchive::contiguous_bytes(const TensorRef& t) const {
  std::string_view span = tensor_bytes(t);
  const int64_t es = dtype_size(t.dtype);
  const int64_t numel = t.numel();
  int64_t total;
  if (!mul_ok(numel, es, &total) || static_cast<uint64_t>(total) > max_tensor_bytes_) {
    fail(what_, "tensor on storage " + quoted(t.storage_key) + " would take more than " +
                    std::to_string(max_tensor_bytes_) + " bytes");
  }
  if (t.is_contiguous()) return std::string(span.substr(0, static_cast<size_t>(total)));
  // Strided gather: walk the index odometer, copying runs along the last dim.
  std::string out(static_cast<size_t>(total), '\0');
  const size_t nd = t.sizes.size();
  std::vector<int64_t> idx(nd, 0);
  const int64_t inner = t.sizes[nd - 1], inner_stride = t.strides[nd - 1];
  size_t w = 0;
  for (int64_t done = 0; done < numel; done += inner) {
    int64_t src = 0;
    for (size_t d = 0; d + 1 < nd; ++d) src += idx[d] * t.strides[d];
    for (int64_t k = 0; k < inner; ++k, w += static_cast<size_t>(es)) {
      std::memcpy(&out[w], span.data() + (src + k * inner_stride) * es, static_cast<size_t>(es));
    }
    for (size_t d = nd - 1; d-- > 0;) {  // advance the outer dims
      if (++idx[d] < t.sizes[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

// ---- .ptz wrappers ------------------------------------------------------------------------

TorchArchive open_int8_ptz(const std::string& path, uint64_t max_raw) {
  std::string blob = read_file(path, max_raw);
  std::string raw = zlib_inflate(blob, max_raw, path);
  return TorchArchive::from_bytes(std::move(raw), path);
}

TorchArchive open_int6_ptz(const std::string& path, uint64_t max_raw) {
  std::string blob = read_file(path, max_raw);
  std::string raw = decompress(blob, Codec::Brotli, max_raw + 5, path);
  if (raw.size() >= 4 && raw.compare(0, 4, "BSHF") == 0) raw = byte_unshuffle(raw, path);
  return TorchArchive::from_bytes(std::move(raw), path);
}

}  // namespace pgolf::quant
