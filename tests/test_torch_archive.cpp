// torch.save archives read without Python: libtorch-written archives come
// back bit-exactly, hand-built pickles exercise the allowlist and the
// interpreter's bounds, and truncated or bit-flipped archives end in
// pgolf::Error, never a crash.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include "data/error.h"
#include "quant/codec.h"
#include "quant/torch_archive.h"
#include "tests/test_util.h"

namespace pgolf::quant {
namespace {

using Kind = PickleValue::Kind;

// ---- helpers: a tiny pickle emitter ---------------------------------------------------------

struct Pk {
  std::string b;

  Pk& op(uint8_t o) { b += static_cast<char>(o); return *this; }
  Pk& raw(std::string_view s) { b.append(s.data(), s.size()); return *this; }
  Pk& le(uint64_t v, int n) {
    for (int k = 0; k < n; ++k) b += static_cast<char>((v >> (8 * k)) & 0xFF);
    return *this;
  }
  Pk& proto(int v) { return op(0x80).op(static_cast<uint8_t>(v)); }
  Pk& stop() { return op('.'); }
  Pk& mark() { return op('('); }
  Pk& none() { return op('N'); }
  Pk& boolean(bool v) { return op(v ? 0x88 : 0x89); }
  Pk& integer(int64_t v) {
    if (v >= 0 && v < 256) return op('K').le(static_cast<uint64_t>(v), 1);
    if (v >= 0 && v < 65536) return op('M').le(static_cast<uint64_t>(v), 2);
    if (v >= INT32_MIN && v <= INT32_MAX) return op('J').le(static_cast<uint32_t>(v), 4);
    return op(0x8a).op(8).le(static_cast<uint64_t>(v), 8);
  }
  Pk& str(std::string_view s) { return op('X').le(s.size(), 4).raw(s); }
  Pk& sstr(std::string_view s) { return op(0x8c).le(s.size(), 1).raw(s); }  // protocol 4
  Pk& global(std::string_view m, std::string_view n) {
    return op('c').raw(m).raw("\n").raw(n).raw("\n");
  }
  Pk& put(uint8_t i) { return op('q').op(i); }
  Pk& get(uint8_t i) { return op('h').op(i); }
  Pk& tuple() { return op('t'); }
  Pk& empty_tuple() { return op(')'); }
  Pk& empty_dict() { return op('}'); }
  Pk& empty_list() { return op(']'); }
  Pk& setitem() { return op('s'); }
  Pk& setitems() { return op('u'); }
  Pk& reduce() { return op('R'); }
  Pk& ordered_dict() { return global("collections", "OrderedDict").empty_tuple().reduce(); }
  Pk& int_tuple(const std::vector<int64_t>& v) {
    mark();
    for (int64_t x : v) integer(x);
    return tuple();
  }
  // A tensor the way Python's torch.save (protocol 2) writes one.
  Pk& tensor(const char* storage_type, const std::string& key, int64_t numel, int64_t offset,
             const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides, bool requires_grad = false) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    mark().str("storage").global("torch", storage_type).str(key).str("cpu").integer(numel).tuple().op('Q');
    integer(offset).int_tuple(sizes).int_tuple(strides).boolean(requires_grad).ordered_dict();
    return tuple().reduce();
  }
};

// ---- helpers: a tiny zip writer -------------------------------------------------------------

struct ZipFileSpec {
  std::string name, data;
  bool deflate = false;
  bool zip64_extra = false;  // sizes/offset as 0xFFFFFFFF + ZIP64 extra field
  uint32_t crc_xor = 0;      // corrupt the CRC
  uint16_t method_override = 0xFFFF;
  uint16_t flags = 0;
};

struct LE {
  std::string s;
  LE& u16(uint32_t v) { s += char(v & 0xFF); s += char((v >> 8) & 0xFF); return *this; }
  LE& u32(uint32_t v) { u16(v & 0xFFFF); return u16(v >> 16); }
  LE& u64(uint64_t v) { u32(static_cast<uint32_t>(v)); return u32(static_cast<uint32_t>(v >> 32)); }
  LE& raw(const std::string& r) { s += r; return *this; }
};

std::string make_zip(const std::vector<ZipFileSpec>& files, bool zip64_end = false, const std::string& comment = "") {
  LE out, cd;
  for (const ZipFileSpec& f : files) {
    uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(f.data.data()), f.data.size())) ^ f.crc_xor;
    std::string body = f.deflate ? pgolf::test::deflate_bytes(f.data, -15) : f.data;
    uint16_t method = f.method_override != 0xFFFF ? f.method_override : (f.deflate ? 8 : 0);
    uint64_t offset = out.s.size();
    std::string extra;
    if (f.zip64_extra) extra = LE().u16(1).u16(24).u64(f.data.size()).u64(body.size()).u64(offset).s;
    uint32_t csz = f.zip64_extra ? 0xFFFFFFFF : static_cast<uint32_t>(body.size());
    uint32_t usz = f.zip64_extra ? 0xFFFFFFFF : static_cast<uint32_t>(f.data.size());
    out.u32(0x04034b50).u16(20).u16(f.flags).u16(method).u16(0).u16(0).u32(crc).u32(csz).u32(usz);
    out.u16(static_cast<uint32_t>(f.name.size())).u16(static_cast<uint32_t>(extra.size())).raw(f.name).raw(extra).raw(body);
    cd.u32(0x02014b50).u16(20).u16(20).u16(f.flags).u16(method).u16(0).u16(0).u32(crc).u32(csz).u32(usz);
    cd.u16(static_cast<uint32_t>(f.name.size())).u16(static_cast<uint32_t>(extra.size())).u16(0).u16(0).u16(0).u32(0);
    cd.u32(f.zip64_extra ? 0xFFFFFFFF : static_cast<uint32_t>(offset)).raw(f.name).raw(extra);
  }
  uint64_t cd_off = out.s.size();
  out.raw(cd.s);
  if (zip64_end) {
    uint64_t z64 = out.s.size();
    out.u32(0x06064b50).u64(44).u16(45).u16(45).u32(0).u32(0).u64(files.size()).u64(files.size());
    out.u64(cd.s.size()).u64(cd_off);
    out.u32(0x07064b50).u32(0).u64(z64).u32(1);
  }
  out.u32(0x06054b50).u16(0).u16(0).u16(static_cast<uint32_t>(files.size())).u16(static_cast<uint32_t>(files.size()));
  out.u32(static_cast<uint32_t>(cd.s.size())).u32(static_cast<uint32_t>(cd_off)).u16(static_cast<uint32_t>(comment.size()));
  out.raw(comment);
  return out.s;
}

std::string floats(const std::vector<float>& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

// A torch.save-shaped zip: version, byteorder, data.pkl, data/<key>.
std::string torch_zip(const std::string& pickle, const std::map<std::string, std::string>& storages,
                      const std::string& prefix = "archive", bool deflate = false) {
  std::vector<ZipFileSpec> files;
  files.push_back({prefix + "/data.pkl", pickle, deflate});
  files.push_back({prefix + "/byteorder", "little"});
  for (const auto& [k, v] : storages) files.push_back({prefix + "/data/" + k, v, deflate});
  files.push_back({prefix + "/version", "3\n"});
  return make_zip(files);
}

// ---- helpers: expectations ----------------------------------------------------------------

// Runs f, which must throw pgolf::Error: one line, containing `needle`.
template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; wanted one mentioning \"" << needle << "\"";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(needle), std::string::npos) << "message: " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "message is not one line: " << m;
  }
}

void expect_pickle_error(const std::string& program, const std::string& needle, const PickleLimits& lim = {}) {
  expect_error([&] { parse_pickle(program, "test.pkl", lim); }, needle);
}

std::string as_string(const std::vector<char>& v) { return std::string(v.begin(), v.end()); }

std::string tensor_bytes_of(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

// Bit-exact: same dtype, sizes and bytes.
void expect_same_tensor(const at::Tensor& got, const at::Tensor& want, const std::string& name) {
  EXPECT_EQ(got.scalar_type(), want.scalar_type()) << name;
  EXPECT_EQ(got.sizes(), want.sizes()) << name;
  EXPECT_EQ(tensor_bytes_of(got), tensor_bytes_of(want)) << name;
}

const PickleValue& at_key(const PickleValue& d, const std::string& k) {
  const PickleValue* v = d.find(k);
  if (!v) throw std::runtime_error("missing key " + k);
  return *v;
}

// Touches everything a well-formed result offers (each shared value once),
// materializing every tensor: the fuzz tests' "use the result" step.
void exercise(const TorchArchive& a) {
  std::set<const PickleValue*> seen;
  std::function<void(const PickleValue&)> walk = [&](const PickleValue& v) {
    if (!seen.insert(&v).second) return;
    if (v.is(Kind::Tensor)) {
      std::string b = a.contiguous_bytes(v.tensor);
      at::Tensor t = to_tensor(a, v.tensor);
      EXPECT_EQ(static_cast<uint64_t>(t.nbytes()), b.size());
    }
    for (const PickleValue* c : v.items) walk(*c);
    for (const auto& [k, x] : v.entries) {
      walk(*k);
      walk(*x);
    }
  };
  walk(a.root());
}

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name) : path("/tmp/pgolf_tta_" + std::to_string(::getpid()) + "_" + name) {}
  ~TempFile() { std::remove(path.c_str()); }
  void write(const std::string& bytes) const {
    FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
};

// ---- (1) archives written by libtorch --------------------------------------------------------

std::map<std::string, at::Tensor> sample_tensors() {
  at::manual_seed(7);
  std::map<std::string, at::Tensor> m;
  at::Tensor f32 = at::randn({3, 5});
  at::Tensor big = at::randn({6, 4});
  m["f32"] = f32;
  m["f32_t"] = f32.t();                    // transposed view of the same storage
  m["bf16"] = at::randn({4, 6}).to(at::kBFloat16);
  m["f16"] = at::randn({7}).to(at::kHalf);
  m["i8"] = at::randint(-128, 128, {5, 5}).to(at::kChar);
  m["rows"] = big.slice(0, 2, 5);          // storage offset 8
  m["cols"] = big.slice(1, 1, 4, 2);       // strided, offset 1
  m["bf16_view"] = at::randn({4, 8}).to(at::kBFloat16).slice(1, 3, 7).t();
  m["scalar"] = at::scalar_tensor(3.5, at::kDouble);  // 0-d
  m["empty"] = at::empty({0, 3});
  m["i64"] = at::arange(10, at::kLong);
  m["i32"] = at::arange(-3, 3, at::kInt);
  m["i16"] = at::arange(-4, 4, at::kShort);
  m["u8"] = at::arange(250, 256, at::kByte);
  m["bool"] = at::randn({6}) > 0;
  m["expanded"] = at::randn({1, 4}).expand({3, 4});  // stride 0
  return m;
}

std::string save_tensor_dict(const std::map<std::string, at::Tensor>& m) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& [k, t] : m) d.insert(k, t);
  return as_string(torch::jit::pickle_save(c10::IValue(d)));
}

TEST(TorchArchive, LibtorchTensorsComeBackBitExact) {
  auto m = sample_tensors();
  TorchArchive a = TorchArchive::from_bytes(save_tensor_dict(m), "mem.pt");
  EXPECT_EQ(a.prefix(), "archive");
  ASSERT_TRUE(a.root().is(Kind::Dict));
  ASSERT_EQ(a.root().size(), m.size());
  for (const auto& [k, want] : m) {
    const PickleValue& v = at_key(a.root(), k);
    ASSERT_TRUE(v.is(Kind::Tensor)) << k;
    const TensorRef& r = v.tensor;
    EXPECT_EQ(r.sizes, want.sizes().vec()) << k;
    EXPECT_EQ(r.strides, want.strides().vec()) << k;
    EXPECT_EQ(r.offset, want.storage_offset()) << k;
    expect_same_tensor(to_tensor(a, r), want, k);
    EXPECT_EQ(a.contiguous_bytes(r), tensor_bytes_of(want)) << k;
  }
  EXPECT_EQ(at_key(a.root(), "f32").tensor.storage_key, at_key(a.root(), "f32_t").tensor.storage_key);
  EXPECT_TRUE(at_key(a.root(), "f32").tensor.is_contiguous());
  EXPECT_FALSE(at_key(a.root(), "f32_t").tensor.is_contiguous());
  EXPECT_EQ(at_key(a.root(), "bf16").tensor.dtype, DType::BFloat16);
  EXPECT_EQ(at_key(a.root(), "i8").tensor.dtype, DType::Int8);
  // tensor_bytes of a contiguous tensor is exactly its data.
  const TensorRef& f16 = at_key(a.root(), "f16").tensor;
  EXPECT_EQ(std::string(a.tensor_bytes(f16)), tensor_bytes_of(m["f16"]));
}

TEST(TorchArchive, LibtorchNestedValues) {
  c10::impl::GenericDict inner(c10::StringType::get(), c10::AnyType::get());
  inner.insert("t", at::arange(6, at::kFloat).reshape({2, 3}));
  inner.insert("name", std::string("h\xc3\xa9llo \xe2\x9c\x93"));
  c10::impl::GenericDict g(c10::StringType::get(), c10::AnyType::get());
  g.insert("inner", inner);
  g.insert("s", std::string("hello"));
  g.insert("small", int64_t{7});
  g.insert("neg", int64_t{-5});
  g.insert("i32", int64_t{100000});
  g.insert("max", std::numeric_limits<int64_t>::max());
  g.insert("min", std::numeric_limits<int64_t>::min());
  g.insert("f", 1.25);
  g.insert("yes", true);
  g.insert("none", c10::IValue());
  g.insert("ints", c10::List<int64_t>({1, 2, 300}));
  g.insert("doubles", c10::List<double>({0.5, -2.0}));
  g.insert("bools", c10::List<bool>({true, false}));
  g.insert("tensors", c10::List<at::Tensor>({at::ones({2}), at::zeros({3}, at::kHalf)}));
  c10::impl::GenericList gl(c10::AnyType::get());
  gl.push_back(1.5);
  gl.push_back(std::string("x"));
  g.insert("generic", gl);
  g.insert("tuple", c10::ivalue::Tuple::create({c10::IValue(int64_t{1}), c10::IValue(std::string("a"))}));

  TorchArchive a = TorchArchive::from_bytes(as_string(torch::jit::pickle_save(g)), "nested.pt");
  const PickleValue& r = a.root();
  ASSERT_TRUE(r.is(Kind::Dict));
  EXPECT_EQ(at_key(r, "s").s, "hello");
  EXPECT_EQ(at_key(r, "small").i, 7);
  EXPECT_EQ(at_key(r, "neg").i, -5);
  EXPECT_EQ(at_key(r, "i32").i, 100000);
  EXPECT_EQ(at_key(r, "max").i, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(at_key(r, "min").i, std::numeric_limits<int64_t>::min());
  EXPECT_EQ(at_key(r, "f").f, 1.25);
  EXPECT_TRUE(at_key(r, "yes").is(Kind::Bool) && at_key(r, "yes").b);
  EXPECT_TRUE(at_key(r, "none").is(Kind::None));
  const PickleValue& ints = at_key(r, "ints");
  ASSERT_TRUE(ints.is(Kind::List));
  ASSERT_EQ(ints.size(), 3u);
  EXPECT_EQ(ints.items[2]->i, 300);
  EXPECT_EQ(at_key(r, "doubles").items[1]->f, -2.0);
  EXPECT_FALSE(at_key(r, "bools").items[1]->b);
  const PickleValue& ts = at_key(r, "tensors");
  ASSERT_EQ(ts.size(), 2u);
  expect_same_tensor(to_tensor(a, ts.items[1]->tensor), at::zeros({3}, at::kHalf), "tensors[1]");
  EXPECT_EQ(at_key(r, "generic").items[1]->s, "x");
  const PickleValue& tup = at_key(r, "tuple");
  ASSERT_TRUE(tup.is(Kind::Tuple));
  EXPECT_EQ(tup.items[0]->i, 1);
  const PickleValue& in = at_key(r, "inner");
  EXPECT_EQ(at_key(in, "name").s, "h\xc3\xa9llo \xe2\x9c\x93");
  expect_same_tensor(to_tensor(a, at_key(in, "t").tensor), at::arange(6, at::kFloat).reshape({2, 3}), "inner.t");
  // Keys keep insertion order.
  EXPECT_EQ(r.entries[0].first->s, "inner");
  EXPECT_EQ(r.entries[1].first->s, "s");
}

TEST(TorchArchive, OpensFilesAndChecksPaths) {
  TempFile f("plain.pt");
  f.write(save_tensor_dict({{"w", at::arange(4, at::kFloat)}}));
  TorchArchive a = TorchArchive::open(f.path);
  EXPECT_EQ(a.what(), f.path);
  expect_same_tensor(to_tensor(a, at_key(a.root(), "w").tensor), at::arange(4, at::kFloat), "w");
  expect_error([] { TorchArchive::open("/nonexistent/x.pt"); }, "/nonexistent/x.pt: cannot open");
  ArchiveLimits small;
  small.max_file = 100;
  expect_error([&] { TorchArchive::open(f.path, small); }, "over the limit");
}

// SPEC §7: final_model.int8.ptz = zlib(torch.save(quant dict)).
TEST(TorchArchive, Int8PtzShape) {
  at::manual_seed(1);
  c10::impl::GenericDict q(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict quantized(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict scales(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict dtypes(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict passthrough(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict qmeta(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict orig(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict per_row(c10::StringType::get(), c10::AnyType::get());
  per_row.insert("scheme", std::string("per_row"));
  per_row.insert("axis", int64_t{0});
  at::Tensor w = at::randint(-127, 128, {16, 8}).to(at::kChar);
  at::Tensor s = at::rand({16}).to(at::kHalf);
  quantized.insert("tok_emb.weight", w);
  scales.insert("tok_emb.weight", s);
  dtypes.insert("tok_emb.weight", std::string("bfloat16"));
  qmeta.insert("tok_emb.weight", per_row);
  at::Tensor mix = at::randn({2, 8});
  passthrough.insert("blocks.0.resid_mix", mix);
  at::Tensor small = at::randn({8}).to(at::kHalf);
  passthrough.insert("blocks.0.other", small);
  orig.insert("blocks.0.other", std::string("float32"));
  q.insert("__quant_format__", std::string("int8_clean_per_row_v1"));
  q.insert("quantized", quantized);
  q.insert("scales", scales);
  q.insert("dtypes", dtypes);
  q.insert("passthrough", passthrough);
  q.insert("qmeta", qmeta);
  q.insert("passthrough_orig_dtypes", orig);
  std::string raw = as_string(torch::jit::pickle_save(q));

  TempFile f("final_model.int8.ptz");
  f.write(pgolf::test::deflate_bytes(raw, 15));
  TorchArchive a = open_int8_ptz(f.path);
  const PickleValue& r = a.root();
  EXPECT_EQ(at_key(r, "__quant_format__").s, "int8_clean_per_row_v1");
  expect_same_tensor(to_tensor(a, at_key(at_key(r, "quantized"), "tok_emb.weight").tensor), w, "q");
  expect_same_tensor(to_tensor(a, at_key(at_key(r, "scales"), "tok_emb.weight").tensor), s, "s");
  DType dt;
  ASSERT_TRUE(dtype_from_name(at_key(at_key(r, "dtypes"), "tok_emb.weight").s, &dt));
  EXPECT_EQ(dt, DType::BFloat16);
  EXPECT_EQ(at_key(at_key(at_key(r, "qmeta"), "tok_emb.weight"), "scheme").s, "per_row");
  expect_same_tensor(to_tensor(a, at_key(at_key(r, "passthrough"), "blocks.0.resid_mix").tensor), mix, "mix");

  // Corrupt or truncated wrappers, and the output cap.
  std::string z = pgolf::test::deflate_bytes(raw, 15);
  f.write(z.substr(0, z.size() / 2));
  expect_error([&] { open_int8_ptz(f.path); }, "truncated");
  std::string bad = z;
  bad[bad.size() - 1] ^= 1;  // adler32
  f.write(bad);
  expect_error([&] { open_int8_ptz(f.path); }, f.path + ": corrupt deflate stream");
  f.write(z + "x");
  expect_error([&] { open_int8_ptz(f.path); }, "after the end");
  f.write(z);
  expect_error([&] { open_int8_ptz(f.path, raw.size() - 1); }, "inflates to more than");
  EXPECT_EQ(zlib_inflate(z, raw.size(), "z"), raw);
}

// SPEC §11: final_model.int6.ptz = brotli(BSHF(torch.save({"w": ..., "m": ...}))).
TEST(TorchArchive, Int6PtzShape) {
  at::manual_seed(2);
  c10::impl::GenericDict wd(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict md(c10::StringType::get(), c10::AnyType::get());
  at::Tensor q = at::randint(-31, 32, {32, 16}).to(at::kChar);
  at::Tensor sc = at::rand({32}).to(at::kHalf);
  at::Tensor pass = at::randn({16}).to(at::kHalf);
  wd.insert("blocks.0.attn.c_q.weight.q", q);
  wd.insert("blocks.0.attn.c_q.weight.scale", sc);
  wd.insert("blocks.0.attn_scale", pass);
  md.insert("blocks.0.attn.c_q.weight", std::string("gptq (int6)"));
  md.insert("blocks.0.attn_scale", std::string("passthrough (float16)"));
  c10::impl::GenericDict top(c10::StringType::get(), c10::AnyType::get());
  top.insert("w", wd);
  top.insert("m", md);
  std::string raw = as_string(torch::jit::pickle_save(top));

  TempFile f("final_model.int6.ptz");
  f.write(compress(byte_shuffle(raw, 2), Codec::Brotli));
  TorchArchive a = open_int6_ptz(f.path);
  const PickleValue& w = at_key(a.root(), "w");
  expect_same_tensor(to_tensor(a, at_key(w, "blocks.0.attn.c_q.weight.q").tensor), q, "q");
  expect_same_tensor(to_tensor(a, at_key(w, "blocks.0.attn.c_q.weight.scale").tensor), sc, "scale");
  EXPECT_EQ(at_key(at_key(a.root(), "m"), "blocks.0.attn.c_q.weight").s, "gptq (int6)");
  // Unshuffled payloads are taken as they are (the reference reader does too).
  f.write(compress(raw, Codec::Brotli));
  EXPECT_EQ(open_int6_ptz(f.path).root().size(), 2u);
  f.write("not brotli at all");
  expect_error([&] { open_int6_ptz(f.path); }, f.path);
}

// ---- (2) hand-built pickles -----------------------------------------------------------------------

// What Python's torch.save(model.state_dict()) writes (protocol 2): an
// OrderedDict filled by SETITEMS, then BUILD with {'_metadata': ...}.
std::string python_state_dict_pickle() {
  Pk p;
  p.proto(2).ordered_dict().put(0).mark();
  p.str("w").put(1).tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1}).put(2);
  p.str("b").tensor("BFloat16Storage", "1", 4, 1, {3}, {1});
  p.str("wt").tensor("FloatStorage", "0", 6, 0, {3, 2}, {1, 3});
  p.setitems();
  p.empty_dict().str("_metadata").ordered_dict().mark();
  p.str("").empty_dict().str("version").integer(1).setitem();
  p.setitems().setitem().op('b').stop();
  return p.b;
}

std::map<std::string, std::string> python_state_dict_storages() {
  std::string bf = std::string("\x80\x3f\x00\x40\x40\x40\x80\x40", 8);  // bf16 1,2,3,4
  return {{"0", floats({0, 1, 2, 3, 4, 5})}, {"1", bf}};
}

TEST(TorchArchive, PythonStyleStateDictWithMetadata) {
  std::string zip = torch_zip(python_state_dict_pickle(), python_state_dict_storages(), "final_model");
  TorchArchive a = TorchArchive::from_bytes(zip, "sd.pt");
  EXPECT_EQ(a.prefix(), "final_model");
  EXPECT_EQ(a.version(), 3u);
  const PickleValue& r = a.root();
  ASSERT_TRUE(r.is(Kind::Dict));
  ASSERT_EQ(r.size(), 3u);  // _metadata went to BUILD and was ignored
  expect_same_tensor(to_tensor(a, at_key(r, "w").tensor), at::arange(6, at::kFloat).reshape({2, 3}), "w");
  expect_same_tensor(to_tensor(a, at_key(r, "wt").tensor), at::arange(6, at::kFloat).reshape({2, 3}).t(), "wt");
  at::Tensor b = to_tensor(a, at_key(r, "b").tensor);
  expect_same_tensor(b, at::arange(2, 5, at::kFloat).to(at::kBFloat16), "b");
  // The same bytes deflated inside the zip (torch can read those too).
  TorchArchive d = TorchArchive::from_bytes(
      torch_zip(python_state_dict_pickle(), python_state_dict_storages(), "x", /*deflate=*/true), "deflated.pt");
  expect_same_tensor(to_tensor(d, at_key(d.root(), "wt").tensor), at::arange(6, at::kFloat).reshape({2, 3}).t(), "wt");
}

TEST(TorchArchive, Protocol4OpcodesAndExtras) {
  Pk p;
  p.proto(4).op(0x95).le(0, 8);  // FRAME (length is only a hint)
  p.op('}').op(0x94).mark();
  p.sstr("p").sstr("torch._utils").sstr("_rebuild_parameter").op(0x93).op(0x94);
  p.sstr("torch._utils").sstr("_rebuild_tensor_v2").op(0x93).mark();
  p.mark().sstr("storage").sstr("torch").sstr("HalfStorage").op(0x93).sstr("k").sstr("cuda:0").integer(2).tuple().op('Q');
  p.integer(0).int_tuple({2}).int_tuple({1}).boolean(false).ordered_dict().tuple().reduce();
  p.boolean(true).ordered_dict().op(0x87).reduce();  // TUPLE3, then _rebuild_parameter
  p.sstr("bytes").global("_codecs", "encode").sstr("\xc3\xbf" "a").sstr("latin1").op(0x86).reduce();
  p.sstr("raw").op('C').le(3, 1).raw("xyz");
  p.sstr("dtype").global("torch", "bfloat16");
  p.sstr("shape").global("torch", "Size").int_tuple({4, 5}).op(0x85).reduce();
  p.sstr("long").op(0x8a).op(0).op(0x8a).op(1).op(0xFF).op(0x86);  // LONG1: 0 and -1
  p.sstr("f").op('G').raw(std::string("\x3f\xf8\x00\x00\x00\x00\x00\x00", 8));  // 1.5
  p.sstr("dup").integer(0).sstr("dup").integer(1);                // duplicate key: overwritten in place
  p.setitems().stop();
  std::string h = std::string("\x00\x3c\x00\x40", 4);  // fp16 1, 2
  TorchArchive a = TorchArchive::from_bytes(torch_zip(p.b, {{"k", h}}), "p4.pt");
  const PickleValue& r = a.root();
  const PickleValue& t = at_key(r, "p");
  ASSERT_TRUE(t.is(Kind::Tensor));
  EXPECT_TRUE(t.tensor.requires_grad);
  expect_same_tensor(to_tensor(a, t.tensor), at::tensor({1.0f, 2.0f}).to(at::kHalf), "p");
  EXPECT_EQ(at_key(r, "bytes").s, std::string("\xff" "a"));
  EXPECT_TRUE(at_key(r, "bytes").is(Kind::Bytes));
  EXPECT_EQ(at_key(r, "raw").s, "xyz");
  EXPECT_EQ(at_key(r, "dtype").dtype, DType::BFloat16);
  EXPECT_EQ(at_key(r, "shape").items[1]->i, 5);
  EXPECT_EQ(at_key(r, "long").items[0]->i, 0);
  EXPECT_EQ(at_key(r, "long").items[1]->i, -1);
  EXPECT_EQ(at_key(r, "f").f, 1.5);
  EXPECT_EQ(at_key(r, "dup").i, 1);
  EXPECT_EQ(r.size(), 8u);
}

// torch writes _rebuild_from_type_v2(func, type, args, state) for tensors
// that carry Python attributes.
TEST(TorchArchive, RebuildFromTypeV2) {
  auto wrapped = [](const char* fm, const char* fn, const char* tm, const char* tn) {
    Pk p;
    p.proto(2).global("torch._tensor", "_rebuild_from_type_v2").mark().global(fm, fn).global(tm, tn).mark();
    p.mark().str("storage").global("torch", "FloatStorage").str("0").str("cpu").integer(6).tuple().op('Q');
    p.integer(1).int_tuple({2}).int_tuple({2}).boolean(false).ordered_dict().tuple();
    p.empty_dict().str("tag").str("x").setitem();  // the Python attributes
    return p.tuple().reduce().stop().b;
  };
  TorchArchive a = TorchArchive::from_bytes(
      torch_zip(wrapped("torch._utils", "_rebuild_tensor_v2", "torch", "Tensor"), {{"0", floats({0, 1, 2, 3, 4, 5})}}),
      "attr.pt");
  expect_same_tensor(to_tensor(a, a.root().tensor), at::tensor({1.0f, 3.0f}), "attr");
  expect_pickle_error(wrapped("torch._utils", "_rebuild_tensor_v2", "collections", "OrderedDict"),
                      "only accepted for torch.Tensor");
  expect_pickle_error(wrapped("torch._tensor", "_rebuild_from_type_v2", "torch", "Tensor"), "only accepted");
  expect_pickle_error(wrapped("collections", "OrderedDict", "torch", "Tensor"), "only accepted");
  expect_pickle_error(Pk().proto(2).global("torch", "Tensor").empty_tuple().reduce().stop().b,
                      "REDUCE on 'torch.Tensor'");
}

TEST(TorchArchive, DisallowedGlobalsAreRefusedByName) {
  const std::pair<const char*, const char*> bad[] = {
      {"os", "system"}, {"builtins", "eval"}, {"torch", "load"}, {"posix", "system"}, {"subprocess", "Popen"},
      {"__builtin__", "getattr"}, {"torch._utils", "_rebuild_device_tensor_from_numpy"}, {"numpy", "dtype"},
      {"torch.serialization", "_get_layout"}, {"torch", "FloatTensor"}};
  for (const auto& [m, n] : bad) {
    std::string full = std::string(m) + "." + n;
    Pk text;
    text.proto(2).global(m, n).str("echo pwned").op(0x85).reduce().stop();
    expect_pickle_error(text.b, "global '" + full + "' is not allowed");
    Pk stack;
    stack.proto(4).sstr(m).sstr(n).op(0x93).stop();
    expect_pickle_error(stack.b, "global '" + full + "' is not allowed");
  }
  // Inside a real archive the message names the file.
  Pk p;
  p.proto(2).global("os", "system").str("x").op(0x85).reduce().stop();
  expect_error([&] { TorchArchive::from_bytes(torch_zip(p.b, {}), "evil.pt"); }, "evil.pt: pickle byte 2: global 'os.system'");
  // Control characters in a name stay escaped: the message is one line.
  Pk nl;
  nl.proto(4).sstr("os\nsystem").sstr("x\r").op(0x93).stop();
  expect_pickle_error(nl.b, "os\\x0asystem.x\\x0d");
}

TEST(TorchArchive, ReduceOnlyOnAllowlistedCallables) {
  expect_pickle_error(Pk().proto(2).global("torch", "FloatStorage").empty_tuple().reduce().stop().b,
                      "REDUCE on 'torch.FloatStorage'");
  expect_pickle_error(Pk().proto(2).global("torch", "float32").empty_tuple().reduce().stop().b, "REDUCE on a dtype");
  expect_pickle_error(Pk().proto(2).str("os.system").empty_tuple().reduce().stop().b, "REDUCE on a str");
  expect_pickle_error(Pk().proto(2).global("collections", "OrderedDict").integer(1).reduce().stop().b,
                      "arguments are not a tuple");
  expect_pickle_error(Pk().proto(2).global("collections", "OrderedDict").mark().integer(1).tuple().reduce().stop().b,
                      "called with arguments");
  expect_pickle_error(Pk().proto(2).global("_codecs", "encode").str("x").str("utf-8").op(0x86).reduce().stop().b,
                      "latin1");
  // Tensor rebuild with a non-storage first argument.
  expect_pickle_error(Pk().proto(2).global("torch._utils", "_rebuild_tensor_v2").mark().str("0").integer(0)
                          .int_tuple({1}).int_tuple({1}).boolean(false).ordered_dict().tuple().reduce().stop().b,
                      "without a storage");
  expect_pickle_error(Pk().proto(2).empty_list().empty_dict().op('b').stop().b, "BUILD on a list");
  expect_pickle_error(Pk().proto(2).global("builtins", "object").empty_tuple().op(0x81).stop().b, "builtins.object");
  expect_pickle_error(Pk().proto(2).global("torch", "Size").empty_tuple().op(0x81).stop().b, "NEWOBJ");
  // OrderedDict through NEWOBJ is fine.
  PickleDoc d = parse_pickle(Pk().proto(2).global("collections", "OrderedDict").empty_tuple().op(0x81).stop().b, "t");
  EXPECT_TRUE(d.root().is(Kind::Dict));
}

TEST(TorchArchive, TensorAndStorageChecks) {
  auto one = [](const char* type, const std::string& key, int64_t numel, int64_t off, std::vector<int64_t> sz,
                std::vector<int64_t> st) { return Pk().proto(2).tensor(type, key, numel, off, sz, st).stop().b; };
  expect_pickle_error(one("FloatStorage", "0", 6, 0, {3, 3}, {3, 1}), "runs past storage '0' of 6 elements");
  expect_pickle_error(one("FloatStorage", "0", 6, 4, {3}, {1}), "runs past storage");
  expect_pickle_error(one("FloatStorage", "0", 6, -1, {3}, {1}), "offset");
  expect_pickle_error(one("FloatStorage", "0", 6, 0, {3, 2}, {1}), "mismatch");
  expect_pickle_error(one("FloatStorage", "0", 6, 0, {int64_t{1} << 40, int64_t{1} << 40}, {1, 1}), "overflow");
  expect_pickle_error(one("FloatStorage", "0", 6, 0, std::vector<int64_t>(65, 1), std::vector<int64_t>(65, 1)),
                      "more than 64 dimensions");
  expect_pickle_error(one("FloatStorage", "0/../x", 6, 0, {3}, {1}), "bad storage key");
  expect_pickle_error(one("FloatStorage", "0", -1, 0, {3}, {1}), "bad storage size");
  expect_pickle_error(one("float32", "0", 6, 0, {3}, {1}), "names no torch storage type");
  // Same key, two different declarations.
  Pk two;
  two.proto(2).mark().tensor("FloatStorage", "0", 6, 0, {3}, {1}).tensor("HalfStorage", "0", 6, 0, {3}, {1});
  expect_pickle_error(two.tuple().stop().b, "declared twice");
  // Persistent id that is not a storage tuple.
  expect_pickle_error(Pk().proto(2).mark().str("module").str("x").tuple().op('Q').stop().b, "persistent id");
  // Empty tensors and stride-0 views are fine.
  EXPECT_NO_THROW(parse_pickle(one("FloatStorage", "0", 0, 0, {0, 5}, {5, 1}), "t"));
  EXPECT_NO_THROW(parse_pickle(one("FloatStorage", "0", 1, 0, {1000, 1000}, {0, 0}), "t"));

  // Archive level: missing storage record, size mismatch, materialization cap.
  std::string p = Pk().proto(2).tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1}).stop().b;
  expect_error([&] { TorchArchive::from_bytes(torch_zip(p, {}), "a.pt"); }, "storage '0' has no record 'archive/data/0'");
  expect_error([&] { TorchArchive::from_bytes(torch_zip(p, {{"0", floats({1, 2, 3})}}), "a.pt"); },
               "holds 12 bytes, the pickle declares 6 x float32");
  std::string wide = Pk().proto(2).tensor("FloatStorage", "0", 1, 0, {1 << 20, 1 << 12}, {0, 0}).stop().b;
  TorchArchive a = TorchArchive::from_bytes(torch_zip(wide, {{"0", floats({1})}}), "wide.pt");
  expect_error([&] { a.contiguous_bytes(a.root().tensor); }, "would take more than");
  // A TensorRef made up by the caller is still checked.
  TensorRef fake = a.root().tensor;
  fake.sizes = {2};
  fake.strides = {1};
  expect_error([&] { a.tensor_bytes(fake); }, "runs past storage '0'");
  fake.storage_key = "9";
  expect_error([&] { a.tensor_bytes(fake); }, "no storage '9'");
}

TEST(TorchArchive, MemoMisuse) {
  expect_pickle_error(Pk().proto(2).get(5).stop().b, "memo slot 5 is read before it is written");
  expect_pickle_error(Pk().proto(2).op('j').le(0xFFFFFFFF, 4).stop().b, "memo slot 4294967295");
  expect_pickle_error(Pk().proto(2).put(0).none().stop().b, "stack underflow");
  expect_pickle_error(Pk().proto(4).op(0x94).none().stop().b, "stack underflow");
  expect_pickle_error(Pk().proto(2).none().mark().put(0).stop().b, "stack underflow");  // below the mark
  PickleLimits lim;
  lim.max_memo = 10;
  Pk many;
  many.proto(2).none();
  for (int i = 0; i < 11; ++i) many.put(static_cast<uint8_t>(i));
  expect_pickle_error(many.stop().b, "memo larger than 10", lim);
  // Rewriting a slot is fine (Python allows it).
  PickleDoc d = parse_pickle(Pk().proto(2).none().put(0).op(0x30).integer(3).put(0).op(0x30).get(0).stop().b, "t");
  EXPECT_EQ(d.root().i, 3);
}

TEST(TorchArchive, StackMisuseAndBadOpcodes) {
  expect_pickle_error(Pk().proto(2).integer(1).op('a').stop().b, "stack underflow");
  expect_pickle_error(Pk().proto(2).op('a').stop().b, "stack underflow");
  expect_pickle_error(Pk().proto(2).str("k").str("v").setitem().stop().b, "stack underflow");
  expect_pickle_error(Pk().proto(2).integer(1).integer(2).integer(3).setitem().stop().b, "not a dict");
  expect_pickle_error(Pk().proto(2).integer(1).op(0x86).stop().b, "stack underflow");
  expect_pickle_error(Pk().proto(2).integer(1).reduce().stop().b, "stack underflow");
  expect_pickle_error(Pk().proto(2).empty_list().mark().op('a').stop().b, "stack underflow");
  expect_pickle_error(Pk().proto(2).empty_list().integer(1).tuple().stop().b, "without a MARK");
  expect_pickle_error(Pk().proto(2).empty_dict().mark().integer(1).setitems().stop().b, "odd number");
  expect_pickle_error(Pk().proto(2).integer(1).integer(2).stop().b, "STOP with 2 values");
  expect_pickle_error(Pk().proto(2).mark().integer(1).stop().b, "open marks");
  expect_pickle_error(Pk().proto(2).integer(1).b, "no STOP");
  expect_pickle_error(Pk().proto(2).op(0xFF).stop().b, "unknown opcode 0xff");
  expect_pickle_error(Pk().proto(2).op(0x99).stop().b, "unknown opcode 0x99");
  expect_pickle_error(Pk().op('I').raw("01\n").stop().b, "protocol-0 text opcode");
  expect_pickle_error(Pk().proto(2).mark().global("collections", "OrderedDict").op('o').stop().b, "object-building");
  expect_pickle_error(Pk().proto(2).op(0x82).op(1).stop().b, "object-building");
  expect_pickle_error(Pk().proto(5).op(0x97).stop().b, "out-of-band buffer");
  expect_pickle_error(Pk().proto(4).op(0x8f).stop().b, "set opcode");
  expect_pickle_error(Pk().proto(6).none().stop().b, "protocol 6");
  expect_pickle_error(Pk().proto(2).str("\xff\xfe").stop().b, "not valid UTF-8");
  expect_pickle_error(Pk().proto(2).op(0x8a).op(9).raw(std::string(9, '\1')).stop().b, "wider than 64 bits");
  expect_pickle_error(Pk().proto(2).empty_dict().empty_list().integer(1).setitem().stop().b, "dict key of type list");
  expect_pickle_error(Pk().op('c').raw(std::string(300, 'a')).stop().b, "GLOBAL operand");
  expect_pickle_error("", "truncated");
}

TEST(TorchArchive, HugeDeclaredLengths) {
  expect_pickle_error(Pk().proto(2).op('X').le(0xFFFFFFFF, 4).raw("abc").b, "needs 4294967295 more bytes");
  expect_pickle_error(Pk().proto(4).op(0x8d).le(uint64_t{1} << 63, 8).raw("abc").b, "truncated");
  expect_pickle_error(Pk().proto(4).op(0x8e).le(~uint64_t{0}, 8).b, "truncated");
  expect_pickle_error(Pk().proto(5).op(0x96).le(~uint64_t{0} >> 1, 8).b, "truncated");
  expect_pickle_error(Pk().proto(2).op('B').le(0x7FFFFFFF, 4).b, "truncated");
  expect_pickle_error(Pk().proto(2).op(0x8b).le(0x7FFFFFFF, 4).b, "wider than 64 bits");
  expect_pickle_error(Pk().proto(4).op(0x95).le(uint64_t{1} << 62, 8).none().stop().b, "FRAME");
  expect_pickle_error(Pk().proto(2).op('T').le(0x80000000u, 4).b, "negative length");
  expect_pickle_error(Pk().proto(4).op(0x8c).op(255).raw("ab").b, "truncated");
  PickleLimits lim;
  lim.max_program = 16;
  expect_pickle_error(Pk().proto(2).str(std::string(40, 'a')).stop().b, "over the limit", lim);
}

TEST(TorchArchive, DeepNestingCyclesAndExpansion) {
  // 100k nested lists built with APPEND: rejected by depth, not by a crash.
  Pk deep;
  deep.proto(2);
  for (int i = 0; i < 100000; ++i) deep.empty_list();
  for (int i = 0; i < 99999; ++i) deep.op('a');
  expect_pickle_error(deep.stop().b, "nests deeper than 256");
  // 100k nested MARKs: the mark stack is bounded.
  expect_pickle_error(Pk().proto(2).raw(std::string(100000, '(')).b, "open marks");
  // Nested tuples within the limit are fine.
  Pk ok;
  ok.proto(2).raw(std::string(200, '(')).raw(std::string(200, 't')).stop();
  PickleDoc d = parse_pickle(ok.b, "t");
  EXPECT_TRUE(d.root().is(Kind::Tuple));
  // A list inside itself, a dict inside itself.
  expect_pickle_error(Pk().proto(2).empty_list().put(0).get(0).op('a').stop().b, "cycle");
  expect_pickle_error(Pk().proto(2).empty_dict().put(0).str("me").get(0).setitem().stop().b, "cycle");
  // x = (x, x) eighty times: 2^80 values when walked as a tree.
  Pk laughs;
  laughs.proto(2).empty_list();
  for (int i = 0; i < 80; ++i) laughs.op('2').op(0x86);
  expect_pickle_error(laughs.stop().b, "expands to more than");
  // Value and stack counts are bounded.
  PickleLimits lim;
  lim.max_values = 100;
  Pk many;
  many.proto(2).empty_list();
  for (int i = 0; i < 200; ++i) many.none().op('a');
  expect_pickle_error(many.stop().b, "more than 100 values", lim);
  lim = PickleLimits();
  lim.max_stack = 50;
  Pk tall;
  tall.proto(2).none().put(0);
  for (int i = 0; i < 100; ++i) tall.get(0);
  expect_pickle_error(tall.stop().b, "stack deeper than 50", lim);
}

// The memo lets a few input bytes reuse big values: each kind of growth has
// its own budget.
TEST(TorchArchive, MemoAmplificationBudgets) {
  PickleLimits lim;
  lim.max_items = 1000;
  Pk items;  // one list, then "get it, get it, APPEND" 2000 times
  items.proto(2).empty_list().put(0).none().put(1).op('0');
  for (int i = 0; i < 2000; ++i) items.get(1).op('a');
  expect_pickle_error(items.stop().b, "more than 1000 elements", lim);

  lim = PickleLimits();
  lim.max_string_bytes = 1 << 20;
  Pk strings;  // a 64 KiB string re-encoded to bytes 100 times
  strings.proto(2).empty_list().str(std::string(1 << 16, 'a')).put(0).op('0').global("_codecs", "encode").put(1);
  strings.op('0').str("latin1").put(2).op('0');
  for (int i = 0; i < 100; ++i) strings.get(1).get(0).get(2).op(0x86).reduce().op('a');
  expect_pickle_error(strings.stop().b, "strings total more than", lim);

  Pk key;  // a 2 KiB dict key
  key.proto(2).empty_dict().str(std::string(2048, 'k')).none().setitem().stop();
  expect_pickle_error(key.b, "dict key longer than 1024 bytes");
}

TEST(TorchArchive, ZipStructure) {
  std::string p = python_state_dict_pickle();
  auto st = python_state_dict_storages();
  std::string good = torch_zip(p, st, "any_name");
  EXPECT_NO_THROW(TorchArchive::from_bytes(good, "g.pt"));
  // ZIP64 end records and ZIP64 extra fields.
  std::vector<ZipFileSpec> files = {{"z/data.pkl", p}, {"z/data/0", st["0"]}, {"z/data/1", st["1"]}, {"z/version", "3"}};
  for (auto& f : files) f.zip64_extra = true;
  TorchArchive z = TorchArchive::from_bytes(make_zip(files, /*zip64_end=*/true, "a comment"), "z64.pt");
  EXPECT_EQ(z.prefix(), "z");
  EXPECT_EQ(z.root().size(), 3u);

  auto with = [&](std::function<void(std::vector<ZipFileSpec>&)> edit) {
    std::vector<ZipFileSpec> fs = {{"a/data.pkl", p}, {"a/data/0", st["0"]}, {"a/data/1", st["1"]},
                                   {"a/byteorder", "little"}, {"a/version", "3\n"}};
    edit(fs);
    return make_zip(fs);
  };
  auto opener = [](const std::string& bytes) { return [bytes] { TorchArchive::from_bytes(bytes, "z.pt"); }; };
  expect_error(opener(with([](auto& fs) { fs.erase(fs.begin()); })), "no 'a/data.pkl' record");
  expect_error(opener(with([](auto& fs) { fs.pop_back(); })), "no 'a/version' record");
  expect_error(opener(with([](auto& fs) { fs[4].data = "three"; })), "bad format version record 'three'");
  expect_error(opener(with([](auto& fs) { fs[3].data = "big"; })), "big-endian");
  expect_error(opener(with([](auto& fs) { fs[3].data = "middle"; })), "bad byteorder record");
  expect_error(opener(with([](auto& fs) { fs[1].crc_xor = 1; })), "'a/data/0' fails its CRC check");
  expect_error(opener(with([](auto& fs) { fs[0].method_override = 12; })), "compression method 12");
  expect_error(opener(with([](auto& fs) { fs[0].flags = 1; })), "encrypted");
  expect_error(opener(with([](auto& fs) { fs.push_back(fs[1]); })), "appears twice");
  expect_error(opener(with([](auto& fs) { fs.insert(fs.begin(), ZipFileSpec{"loose", "x"}); })), "not inside a folder");
  expect_error(opener(with([](auto& fs) { fs[2].data += "xx"; })), "holds 10 bytes");
  expect_error(opener(good + "trailing"), "no end-of-central-directory record");
  expect_error(opener(""), "too short to be a zip archive");
  expect_error(opener(std::string(100, '\0')), "not a zip archive");
  expect_error(opener(make_zip({})), "archive has no entries");
  // The version and byteorder records are optional only as documented.
  EXPECT_NO_THROW(opener(with([](auto& fs) { fs.erase(fs.begin() + 3); }))());
  // Deflated entries inflate.
  std::string defl = with([](auto& fs) { for (auto& f : fs) f.deflate = true; });
  EXPECT_NO_THROW(opener(defl)());
}

// ---- (3) truncation and bit flips ------------------------------------------------------------------

// Either a well-formed result (which we then use) or a pgolf::Error.
void parse_or_error(const std::string& bytes, int* ok, int* errors) {
  ArchiveLimits lim;
  lim.max_tensor_bytes = 1 << 20;  // mutated sizes on stride-0 views must not eat the machine
  try {
    TorchArchive a = TorchArchive::from_bytes(bytes, "fuzz.pt", lim);
    exercise(a);
    ++*ok;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    ++*errors;
  }
}

void pickle_or_error(const std::string& program, int* ok, int* errors) {
  try {
    parse_pickle(program, "fuzz.pkl");
    ++*ok;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    ++*errors;
  }
}

std::string small_libtorch_archive() {
  at::manual_seed(3);
  return save_tensor_dict({{"a", at::randn({2, 3})},
                           {"b", at::randn({4}).to(at::kBFloat16)},
                           {"c", at::randn({3, 2}).t()},
                           {"d", at::arange(6, at::kChar).slice(0, 1, 5, 2)}});
}

TEST(TorchArchiveFuzz, EveryTruncation) {
  for (const std::string& full : {small_libtorch_archive(),
                                  torch_zip(python_state_dict_pickle(), python_state_dict_storages())}) {
    int ok = 0, errors = 0;
    for (size_t n = 0; n < full.size(); ++n) parse_or_error(full.substr(0, n), &ok, &errors);
    EXPECT_EQ(ok, 0);  // every cut loses the end record
    parse_or_error(full, &ok, &errors);
    EXPECT_EQ(ok, 1);
  }
  std::string prog = python_state_dict_pickle();
  int ok = 0, errors = 0;
  for (size_t n = 0; n < prog.size(); ++n) pickle_or_error(prog.substr(0, n), &ok, &errors);
  EXPECT_EQ(ok, 0);
}

TEST(TorchArchiveFuzz, SingleByteFlipsOverArchive) {
  const std::string full = small_libtorch_archive();
  int ok = 0, errors = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    for (uint8_t mask : {0x01, 0x10, 0x80, 0xFF}) {
      std::string m = full;
      m[i] = static_cast<char>(m[i] ^ mask);
      parse_or_error(m, &ok, &errors);
    }
  }
  EXPECT_GT(ok, 0);
  EXPECT_GT(errors, 0);
  std::printf("[ archive flips: %d parsed, %d errors ]\n", ok, errors);
}

// Flips inside data.pkl with a recomputed CRC, so the interpreter (not the
// CRC check) meets the damage; storages stay valid so tensors are checked.
TEST(TorchArchiveFuzz, SingleByteFlipsOverPickle) {
  const std::string prog = python_state_dict_pickle();
  const auto st = python_state_dict_storages();
  int ok = 0, errors = 0;
  for (size_t i = 0; i < prog.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string m = prog;
      m[i] = static_cast<char>(m[i] ^ (1 << bit));
      parse_or_error(torch_zip(m, st), &ok, &errors);
    }
    for (uint8_t v : {0x00, 0xFF, 0x7F, 0x80}) {
      std::string m = prog;
      m[i] = static_cast<char>(v);
      parse_or_error(torch_zip(m, st), &ok, &errors);
    }
  }
  EXPECT_GT(ok, 0);
  EXPECT_GT(errors, 0);
  std::printf("[ pickle flips: %d parsed, %d errors ]\n", ok, errors);
}

TEST(TorchArchiveFuzz, RandomMutationsOfLibtorchPickle) {
  const std::string full = small_libtorch_archive();
  ZipReader z(full, "f");
  std::string scratch;
  const std::string prog(z.read(*z.find("archive/data.pkl"), &scratch, 1 << 20));
  std::map<std::string, std::string> st;
  for (const ZipEntry& e : z.entries()) {
    if (e.name.rfind("archive/data/", 0) == 0) st[e.name.substr(13)] = std::string(z.read(e, &scratch, 1 << 20));
  }
  std::mt19937 rng(12345);
  int ok = 0, errors = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string m = prog;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng() % m.size();
      switch (rng() % 4) {
        case 0: m[at] = static_cast<char>(rng() & 0xFF); break;
        case 1: m.erase(at, 1 + rng() % 4); break;
        case 2: m.insert(at, 1, static_cast<char>(rng() & 0xFF)); break;
        case 3: m.insert(at, m.substr(rng() % m.size(), 1 + rng() % 16)); break;
      }
      if (m.empty()) m = "x";
    }
    parse_or_error(torch_zip(m, st), &ok, &errors);
  }
  EXPECT_GT(errors, 0);
  std::printf("[ random pickle mutations: %d parsed, %d errors ]\n", ok, errors);
}

}  // namespace
}  // namespace pgolf::quant
