// model/checkpoint: bit-exact round trips, atomic writes, one-line errors on
// bad files, and h5py readability.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <functional>
#include <random>
#include <string>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "data/atomic_file.h"
#include "data/error.h"
#include "model/checkpoint.h"
#include "tests/test_util.h"

namespace pgolf {
namespace {

// A fresh directory, removed with its contents at scope exit.
struct Scratch {
  std::string dir;
  Scratch() {
    char templ[] = "/tmp/pgolf-ckpt.XXXXXX";
    dir = ::mkdtemp(templ);
  }
  ~Scratch() {
    ::chmod(dir.c_str(), 0755);
    if (std::system(("rm -rf '" + dir + "'").c_str()) != 0) std::fprintf(stderr, "cannot remove %s\n", dir.c_str());
  }
  std::string operator/(const std::string& name) const { return dir + "/" + name; }
  std::vector<std::string> list() const { return test::list_dir(dir); }
};

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

uint64_t numel(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

// Random bits (floats get arbitrary NaN payloads, denormals, -0); bools 0/1.
CheckpointTensor random_tensor(const std::string& name, DType dtype, std::vector<int64_t> shape, uint32_t seed) {
  CheckpointTensor t{name, dtype, shape, random_bytes(numel(shape) * dtype_size(dtype), seed)};
  if (dtype == DType::Bool)
    for (uint8_t& b : t.data) b &= 1;
  return t;
}

template <typename T>
CheckpointTensor tensor_of(const std::string& name, DType dtype, std::vector<int64_t> shape, const std::vector<T>& v) {
  CheckpointTensor t{name, dtype, shape, std::vector<uint8_t>(v.size() * sizeof(T))};
  if (!v.empty()) std::memcpy(t.data.data(), v.data(), t.data.size());
  return t;
}

void expect_same(const std::vector<CheckpointTensor>& want, const std::vector<CheckpointTensor>& got) {
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); i++) {
    SCOPED_TRACE(want[i].name);
    EXPECT_EQ(want[i].name, got[i].name);
    EXPECT_EQ(want[i].dtype, got[i].dtype) << dtype_name(got[i].dtype);
    EXPECT_EQ(want[i].shape, got[i].shape);
    EXPECT_TRUE(want[i].data == got[i].data);
  }
}

// Runs f, which must throw pgolf::Error with one line "PATH: ...needle...".
void expect_error(const std::function<void()>& f, const std::string& path, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; wanted '" << needle << "'";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(path + ": ", 0), 0u) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

// Opens a checkpoint read-write with the raw HDF5 API, to damage it.
void edit_h5(const std::string& path, const std::function<void(hid_t)>& f) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  f(file);
  ASSERT_GE(H5Fclose(file), 0);
}

void add_dataset(hid_t loc, const char* name, hid_t type, std::vector<hsize_t> dims, bool write_zeros = true) {
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t ds = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(ds, 0);
  if (write_zeros) {
    std::vector<uint8_t> zeros(H5Sget_simple_extent_npoints(space) * H5Tget_size(type));
    ASSERT_GE(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()), 0);
  }
  H5Dclose(ds);
  H5Sclose(space);
}

void add_string_attr(hid_t obj, const char* name, const char* value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, type, &value);
  H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
}

std::vector<CheckpointTensor> small_model() {
  return {random_tensor("tok_emb.weight", DType::BF16, {64, 16}, 1),
          random_tensor("blocks.0.attn.c_q.weight", DType::F32, {16, 16}, 2),
          random_tensor("blocks.0.mlp.fc.weight", DType::F16, {32, 16}, 3),
          random_tensor("skip_weights", DType::F32, {4}, 4)};
}

// ---- round trips -------------------------------------------------------------

TEST(Checkpoint, EveryDTypeRoundTripsBitExactly) {
  Scratch s;
  std::vector<CheckpointTensor> tensors;
  uint32_t seed = 10;
  for (DType t : kAllDTypes) tensors.push_back(random_tensor(std::string("rand.") + dtype_name(t), t, {3, 7}, seed++));
  // Hand-picked special values: -0, signalling/quiet NaNs with payloads, -NaN, inf, denormals.
  tensors.push_back(tensor_of<uint32_t>("special.f32", DType::F32, {7},
                                        {0x80000000u, 0x7f800001u, 0x7fc12345u, 0xffc00001u, 0x7f800000u,
                                         0x00000001u, 0xff812345u}));
  tensors.push_back(tensor_of<uint16_t>("special.bf16", DType::BF16, {6},
                                        {0x8000, 0x7f81, 0x7fc1, 0xffc1, 0x0001, 0xff80}));
  tensors.push_back(tensor_of<uint16_t>("special.f16", DType::F16, {6},
                                        {0x8000, 0x7c01, 0x7e01, 0xfe01, 0x0001, 0xfc00}));
  tensors.push_back(tensor_of<uint64_t>("special.f64", DType::F64, {3},
                                        {0x8000000000000000ull, 0x7ff0000000000001ull, 0xfff8000000000123ull}));
  const std::string path = s / "model.h5";
  write_checkpoint(path, R"({"d_model": 16})", tensors);
  Checkpoint ck = read_checkpoint(path);
  EXPECT_EQ(ck.config_json, R"({"d_model": 16})");
  EXPECT_TRUE(ck.attrs.empty());
  expect_same(tensors, ck.tensors);
}

TEST(Checkpoint, ScalarsAndZeroSizeTensors) {
  Scratch s;
  std::vector<CheckpointTensor> tensors;
  uint32_t seed = 100;
  for (DType t : kAllDTypes) {
    const std::string n = dtype_name(t);
    tensors.push_back(random_tensor("scalar." + n, t, {}, seed++));
    tensors.push_back(random_tensor("empty." + n, t, {0}, seed++));
    tensors.push_back(random_tensor("empty3." + n, t, {3, 0, 2}, seed++));
  }
  tensors.push_back(random_tensor("rank8", DType::U8, {1, 2, 1, 2, 1, 2, 1, 3}, seed++));
  const std::string path = s / "m.h5";
  write_checkpoint(path, "", tensors);
  Checkpoint ck = read_checkpoint(path);
  EXPECT_EQ(ck.config_json, "");
  expect_same(tensors, ck.tensors);
  EXPECT_EQ(ck.find("scalar.float32")->data.size(), 4u);
  EXPECT_EQ(ck.find("nope"), nullptr);
}

TEST(Checkpoint, ManyTensorsKeepTheirOrder) {
  Scratch s;
  std::vector<CheckpointTensor> tensors;
  for (int i = 0; i < 1500; i++)  // 1500 links: HDF5's dense (fractal heap) group storage
    tensors.push_back(random_tensor("blocks." + std::to_string(i % 150) + ".p" + std::to_string(i / 150), DType::F32,
                                    {i % 5, 3}, static_cast<uint32_t>(i)));
  const std::string path = s / "many.h5";
  write_checkpoint(path, "{}", tensors);
  expect_same(tensors, read_checkpoint(path).tensors);  // write order, not "blocks.1, blocks.10, ..."
}

TEST(Checkpoint, ConfigAttrsAndStateGroup) {
  Scratch s;
  const std::string config = "{\"name\": \"tiny \\\"q\\\"\", \"note\": \"ünïcødé ✓\",\n \"layers\": 2}";
  std::map<std::string, std::string> attrs = {
      {"train_state", R"({"step": 1200, "lr": 0.02})"},
      {"empty", ""},
      {"big", std::string(1 << 20, 'x')},  // > 64 KiB: fine, strings live in the global heap
      {"ключ", "значение"},
  };
  std::vector<CheckpointTensor> tensors = {
      random_tensor("w", DType::BF16, {4, 4}, 1),
      random_tensor("state/exp_avg.w", DType::F32, {4, 4}, 2),
      random_tensor("b", DType::F32, {4}, 3),
      random_tensor("state/exp_avg_sq.w", DType::F32, {4, 4}, 4),
      random_tensor("state/step", DType::I64, {}, 5),
  };
  const std::string path = s / "sub/dir/ck.h5";  // parents are created
  write_checkpoint(path, config, tensors, attrs);
  Checkpoint ck = read_checkpoint(path);
  EXPECT_EQ(ck.config_json, config);
  EXPECT_EQ(ck.attrs, attrs);
  // Root tensors first, then /state, each in write order.
  expect_same({tensors[0], tensors[2], tensors[1], tensors[3], tensors[4]}, ck.tensors);
}

TEST(Checkpoint, ListReportsWithoutData) {
  Scratch s;
  const std::string path = s / "m.h5";
  std::vector<CheckpointTensor> tensors = small_model();
  tensors.push_back(random_tensor("state/m", DType::F32, {2, 3}, 9));
  write_checkpoint(path, "{\"a\":1}", tensors, {{"k", "v"}});
  CheckpointInfo info = list_checkpoint(path);
  EXPECT_EQ(info.config_json, "{\"a\":1}");
  EXPECT_EQ(info.attrs, (std::map<std::string, std::string>{{"k", "v"}}));
  EXPECT_EQ(info.file_bytes, read_file(path).size());
  ASSERT_EQ(info.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); i++) {
    EXPECT_EQ(info.tensors[i].name, tensors[i].name);
    EXPECT_EQ(info.tensors[i].dtype, tensors[i].dtype);
    EXPECT_EQ(info.tensors[i].shape, tensors[i].shape);
    EXPECT_EQ(info.tensors[i].bytes, tensors[i].data.size());
  }
}

TEST(Checkpoint, SameTensorsSameBytes) {
  Scratch s;
  write_checkpoint(s / "a.h5", "{}", small_model(), {{"k", "v"}});
  ::usleep(1100 * 1000);  // a timestamp, if one were stored, would differ
  write_checkpoint(s / "b.h5", "{}", small_model(), {{"k", "v"}});
  EXPECT_TRUE(read_file(s / "a.h5") == read_file(s / "b.h5"));
}

// An HDF5 2.0-style bfloat16 float type (not what pgolf writes) reads as bf16, bits intact.
TEST(Checkpoint, ReadsBfloat16FloatType) {
  Scratch s;
  const std::string path = s / "m.h5";
  write_checkpoint(path, "{}", {});
  const std::vector<uint16_t> bits = {0x3fc0, 0x8000, 0x7f81, 0xffc1};
  edit_h5(path, [&](hid_t f) {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 7, 8, 0, 7);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 127);
    hsize_t n = bits.size();
    hid_t space = H5Screate_simple(1, &n, nullptr);
    hid_t ds = H5Dcreate2(f, "x", t, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, bits.data());
    H5Dclose(ds);
    H5Sclose(space);
    H5Tclose(t);
  });
  Checkpoint ck = read_checkpoint(path);
  expect_same({tensor_of<uint16_t>("x", DType::BF16, {4}, bits)}, ck.tensors);
}

// ---- atomic writes -------------------------------------------------------------

TEST(Checkpoint, OverwriteLeavesNoTemporaries) {
  Scratch s;
  const std::string path = s / "m.h5";
  write_checkpoint(path, "{\"v\":1}", small_model());
  write_checkpoint(path, "{\"v\":2}", small_model());
  EXPECT_EQ(s.list(), std::vector<std::string>{"m.h5"});
  EXPECT_EQ(read_checkpoint(path).config_json, "{\"v\":2}");
}

TEST(Checkpoint, BadInputLeavesOldFileUntouched) {
  Scratch s;
  const std::string path = s / "m.h5";
  write_checkpoint(path, "{}", small_model());
  const std::string before = read_file(path);
  auto with = [](CheckpointTensor t) { return std::vector<CheckpointTensor>{t}; };
  CheckpointTensor ok = random_tensor("w", DType::F32, {2}, 1);
  auto named = [&](const std::string& n) { CheckpointTensor t = ok; t.name = n; return with(t); };
  CheckpointTensor short_data = ok;
  short_data.data.pop_back();
  CheckpointTensor rank9{"r9", DType::U8, std::vector<int64_t>(9, 1), {1}};
  CheckpointTensor negative{"neg", DType::U8, {-1}, {}};
  struct Case {
    std::vector<CheckpointTensor> tensors;
    std::map<std::string, std::string> attrs;
    std::string config, needle;
  };
  const std::vector<Case> cases = {
      {named("a/b"), {}, "{}", "contains '/'"},
      {named("state/a/b"), {}, "{}", "contains '/'"},
      {named("x\ny/z"), {}, "{}", "'x\\x0ay/z' contains '/'"},  // the message stays one line
      {named(""), {}, "{}", "is empty"},
      {named("state/"), {}, "{}", "is empty"},
      {named("state"), {}, "{}", "reserved"},
      {named("."), {}, "{}", "not allowed"},
      {named(std::string("a\0b", 3)), {}, "{}", "NUL"},
      {{ok, ok}, {}, "{}", "duplicate tensor name 'w'"},
      {with(short_data), {}, "{}", "7 bytes of data"},
      {with(rank9), {}, "{}", "rank 9 exceeds 8"},
      {with(negative), {}, "{}", "bad shape [-1]"},
      {with(ok), {{"config", "x"}}, "{}", "reserved"},
      {with(ok), {{"format", "x"}}, "{}", "reserved"},
      {with(ok), {{"", "x"}}, "{}", "empty"},
      {with(ok), {}, std::string("{\0}", 3), "NUL"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needle);
    expect_error([&] { write_checkpoint(path, c.config, c.tensors, c.attrs); }, path, c.needle);
    EXPECT_TRUE(read_file(path) == before);
    EXPECT_EQ(s.list(), std::vector<std::string>{"m.h5"});
  }
}

TEST(Checkpoint, UnwritableDirectoryFailsCleanly) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  Scratch s;
  const std::string path = s / "m.h5";
  write_checkpoint(path, "{}", small_model());
  const std::string before = read_file(path);
  ASSERT_EQ(::chmod(s.dir.c_str(), 0555), 0);
  expect_error([&] { write_checkpoint(path, "{}", small_model()); }, path, "cannot create temporary file");
  ::chmod(s.dir.c_str(), 0755);
  EXPECT_TRUE(read_file(path) == before);
  EXPECT_EQ(s.list(), std::vector<std::string>{"m.h5"});
}

TEST(Checkpoint, ParentThatIsAFileFailsCleanly) {
  Scratch s;
  write_file_atomic(s / "plain", "text");
  expect_error([&] { write_checkpoint(s / "plain/m.h5", "{}", small_model()); }, s / "plain/m.h5", "cannot");
  EXPECT_EQ(s.list(), std::vector<std::string>{"plain"});
}

// A write that fails halfway (file size limit: EFBIG) removes its temporary.
// It runs in a child that then exits normally: HDF5's cleanup at exit must
// not crash after a failed write (it did when HDF5 itself wrote to disk).
TEST(Checkpoint, FailedWriteRemovesTemporary) {
  Scratch s;
  const std::string path = s / "m.h5";
  write_checkpoint(path, "{}", small_model());
  const std::string before = read_file(path);
  auto child = [&] {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit small{};
    ::getrlimit(RLIMIT_FSIZE, &small);
    small.rlim_cur = 64 << 10;
    ::setrlimit(RLIMIT_FSIZE, &small);
    try {
      write_checkpoint(path, "{}", {random_tensor("big", DType::F32, {256, 1024}, 1)});
    } catch (const Error& e) {
      const std::string m = e.what();
      if (m == path + ": write failed: File too large") std::exit(0);
      std::fprintf(stderr, "wrong message: %s\n", e.what());
    }
    std::exit(1);
  };
  EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "");
  EXPECT_TRUE(read_file(path) == before);
  EXPECT_EQ(s.list(), std::vector<std::string>{"m.h5"});
}

// ---- bad files -------------------------------------------------------------------

TEST(Checkpoint, RejectsWhatIsNotAnHdf5File) {
  Scratch s;
  write_file_atomic(s / "text.h5", "hello, I am not HDF5\n");
  write_file_atomic(s / "empty.h5", "");
  ::mkdir((s / "dir.h5").c_str(), 0755);
  for (auto* fn : {+[](const std::string& p) { read_checkpoint(p); }, +[](const std::string& p) { list_checkpoint(p); }}) {
    expect_error([&] { fn(s / "text.h5"); }, s / "text.h5", "not an HDF5 file");
    expect_error([&] { fn(s / "empty.h5"); }, s / "empty.h5", "not an HDF5 file");
    expect_error([&] { fn(s / "missing.h5"); }, s / "missing.h5", "cannot open");
    expect_error([&] { fn(s / "dir.h5"); }, s / "dir.h5", "not a regular file");
  }
}

TEST(Checkpoint, EveryTruncationIsAnError) {
  Scratch s;
  const std::string path = s / "m.h5";
  write_checkpoint(path, "{\"x\": 1}", small_model(), {{"k", "v"}});
  const std::string bytes = read_file(path);
  ASSERT_GT(bytes.size(), 8192u);
  std::vector<size_t> cuts;
  for (size_t n = 0; n < bytes.size(); n += 512) cuts.push_back(n);  // every 4096 boundary and between
  cuts.push_back(bytes.size() - 1);
  const std::string cut_path = s / "cut.h5";
  for (size_t n : cuts) {
    SCOPED_TRACE(n);
    write_file_atomic(cut_path, bytes.substr(0, n));
    EXPECT_THROW(read_checkpoint(cut_path), Error);
    EXPECT_THROW(list_checkpoint(cut_path), Error);
  }
}

TEST(Checkpoint, RejectsMissingOrWrongHeader) {
  Scratch s;
  const std::string path = s / "m.h5";
  auto fresh = [&] { write_checkpoint(path, "{}", small_model()); };
  auto read = [&] { read_checkpoint(path); };

  fresh();
  edit_h5(path, [](hid_t f) { H5Adelete(f, "config"); });
  expect_error(read, path, "missing 'config' attribute");

  fresh();
  edit_h5(path, [](hid_t f) { H5Adelete(f, "format"); });
  expect_error(read, path, "not a pgolf checkpoint (no 'format' attribute)");

  fresh();
  edit_h5(path, [](hid_t f) {
    H5Adelete(f, "format");
    add_string_attr(f, "format", "something-else");
  });
  expect_error(read, path, "not a pgolf checkpoint");

  fresh();
  edit_h5(path, [](hid_t f) {
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    const int64_t two = 2;
    H5Awrite(a, H5T_NATIVE_INT64, &two);
    H5Aclose(a);
  });
  expect_error(read, path, "format_version 2 is not supported");

  fresh();
  edit_h5(path, [](hid_t f) { H5Adelete(f, "format_version"); });
  expect_error(read, path, "missing 'format_version'");

  // A plain HDF5 file, as h5py would write it with no pgolf attributes.
  {
    hid_t f = H5Fcreate((s / "plain.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    add_dataset(f, "w", H5T_IEEE_F32LE, {3});
    H5Fclose(f);
  }
  expect_error([&] { list_checkpoint(s / "plain.h5"); }, s / "plain.h5", "not a pgolf checkpoint");
}

TEST(Checkpoint, RejectsBadDatasets) {
  Scratch s;
  const std::string path = s / "m.h5";
  struct Case {
    std::function<void(hid_t)> damage;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](hid_t f) { add_dataset(f, "u32", H5T_STD_U32LE, {2}); }, "tensor 'u32': unsupported dtype (HDF5 unsigned integer, 4 bytes)"},
      {[](hid_t f) { add_dataset(f, "u64", H5T_STD_U64LE, {2}); }, "unsupported dtype"},
      {[](hid_t f) { add_dataset(f, "r9", H5T_STD_U8LE, std::vector<hsize_t>(9, 1)); }, "tensor 'r9': rank 9 exceeds 8"},
      {[](hid_t f) {
         hid_t t = H5Tcopy(H5T_C_S1);
         H5Tset_size(t, 4);
         add_dataset(f, "str", t, {2});
         H5Tclose(t);
       },
       "tensor 'str': unsupported dtype (HDF5 string"},
      // 1 TiB declared, never written: storage is never allocated, the file stays small.
      {[](hid_t f) { add_dataset(f, "huge", H5T_STD_U8LE, {hsize_t(1) << 40}, false); },
       "tensor 'huge': shape [1099511627776] needs 1099511627776 bytes but the file has only"},
      {[](hid_t f) {
         hid_t g = H5Gcreate2(f, "extra", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
         add_dataset(g, "x", H5T_IEEE_F32LE, {2});
         H5Gclose(g);
       },
       "unexpected object 'extra'"},
      {[](hid_t f) {
         hid_t g = H5Gcreate2(f, "state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
         hid_t g2 = H5Gcreate2(g, "deeper", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
         H5Gclose(g2);
         H5Gclose(g);
       },
       "unexpected object 'state/deeper'"},
      {[](hid_t f) { H5Lcreate_soft("/w", f, "alias", H5P_DEFAULT, H5P_DEFAULT); }, "'alias' is a soft or external link"},
      {[](hid_t f) {
         add_dataset(f, "f8", H5T_STD_U8LE, {2});
         hid_t ds = H5Dopen2(f, "f8", H5P_DEFAULT);
         add_string_attr(ds, "dtype", "float8_e4m3");
         H5Dclose(ds);
       },
       "tensor 'f8': unsupported dtype 'float8_e4m3' (stored as uint8)"},
      {[](hid_t f) {
         add_dataset(f, "fbf", H5T_IEEE_F32LE, {2});
         hid_t ds = H5Dopen2(f, "fbf", H5P_DEFAULT);
         add_string_attr(ds, "dtype", "bfloat16");
         H5Dclose(ds);
       },
       "tensor 'fbf': unsupported dtype 'bfloat16' (stored as float32)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needle);
    write_checkpoint(path, "{}", {random_tensor("w", DType::F32, {3}, 1)});
    edit_h5(path, c.damage);
    expect_error([&] { read_checkpoint(path); }, path, c.needle);
    expect_error([&] { list_checkpoint(path); }, path, c.needle);
  }
}

// ---- h5py --------------------------------------------------------------------------

const char* kH5pyCheck = R"PY(
import json, sys
import h5py, numpy as np

f = h5py.File(sys.argv[1], "r")
assert f.attrs["format"] == "pgolf-checkpoint", f.attrs["format"]
assert int(f.attrs["format_version"]) == 1
assert json.loads(f.attrs["config"]) == {"d_model": 64, "name": "tiny"}, f.attrs["config"]
assert f.attrs["train_state"] == '{"step": 7}'

vals = [1.5, -0.0, 3.25, -2.0, 0.5, 256.0]
for name, dt in [("w.f32", "float32"), ("w.f16", "float16"), ("w.f64", "float64")]:
    a = f[name][()]
    assert a.dtype == np.dtype(dt) and a.shape == (2, 3), (name, a.dtype, a.shape)
    assert np.array_equal(a.ravel(), np.array(vals, dt)) and np.signbit(a.ravel()[1]), (name, a)

# The README recipe for bfloat16: raw bits + note -> float32.
d = f["w.bf16"]
assert d.attrs["dtype"] == "bfloat16" and d.dtype == np.uint16, (d.attrs["dtype"], d.dtype)
bf = (np.asarray(d).astype(np.uint32) << 16).view(np.float32)
assert np.array_equal(bf.ravel(), np.array(vals, np.float32)) and np.signbit(bf.ravel()[1])

ints = {"i8": ("int8", [-128, 127, 0, -1, 5, 6]), "u8": ("uint8", [0, 255, 1, 2, 3, 4]),
        "i16": ("int16", [-32768, 32767, 0, -1, 5, 6]), "u16": ("uint16", [0, 65535, 1, 2, 3, 4]),
        "i32": ("int32", [-2**31, 2**31 - 1, 0, -1, 5, 6]), "i64": ("int64", [-2**63, 2**63 - 1, 0, -1, 5, 6])}
for k, (dt, v) in ints.items():
    a = f["w." + k][()]
    assert a.dtype == np.dtype(dt) and a.shape == (2, 3) and a.ravel().tolist() == v, (k, a.dtype, a)

b = f["w.bool"][()]
assert b.dtype == np.bool_ and b.ravel().tolist() == [True, False, True, True, False, False], (b.dtype, b)

s = f["scalar"][()]
assert f["scalar"].shape == () and s == np.float32(2.5), s
assert f["empty"].shape == (3, 0) and f["empty"].dtype == np.float32
assert np.array_equal(f["state/exp_avg.w.f32"][()], np.full((2, 3), 0.25, np.float32))
# h5py lists keys by name; the write order pgolf tracks is there for those who ask.
order = []
f.id.links.iterate(lambda n: order.append(n.decode()), idx_type=h5py.h5.INDEX_CRT_ORDER)
assert order[:3] == ["w.f32", "w.f16", "w.f64"] and order[-1] == "state", order

# The 3-line README snippet, verbatim.
import h5py, json, numpy as np
f = h5py.File(sys.argv[1], "r"); config = json.loads(f.attrs["config"])
w = {k: (np.asarray(d).astype(np.uint32) << 16).view(np.float32) if d.attrs.get("dtype") == "bfloat16" else np.asarray(d) for k, d in f.items() if isinstance(d, h5py.Dataset)}
assert config["d_model"] == 64 and w["w.bf16"].dtype == np.float32 and w["w.f16"].dtype == np.float16
assert np.array_equal(w["w.bf16"].ravel(), np.array(vals, np.float32)) and "state" not in w
print("ok")
)PY";

uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return static_cast<uint16_t>(u >> 16);  // exact for these values
}

// The first python3 that has h5py: PATH's (a pyenv or venv may shadow the
// system one), then Debian/Ubuntu's python3-h5py.
std::string python_with_h5py() {
  for (const char* py : {"python3", "/usr/bin/python3"})
    if (std::system((std::string(py) + " -c 'import h5py, numpy' >/dev/null 2>&1").c_str()) == 0) return py;
  return "";
}

TEST(Checkpoint, ReadableWithH5py) {
  const std::string python = python_with_h5py();
  if (python.empty()) GTEST_SKIP() << "no python3 with h5py and numpy (apt-get install python3-h5py)";
  Scratch s;
  const std::vector<float> vals = {1.5f, -0.0f, 3.25f, -2.0f, 0.5f, 256.0f};
  std::vector<uint16_t> bf;
  for (float v : vals) bf.push_back(bf16_bits(v));
  const std::vector<CheckpointTensor> tensors = {
      tensor_of<float>("w.f32", DType::F32, {2, 3}, vals),
      tensor_of<uint16_t>("w.f16", DType::F16, {2, 3}, {0x3e00, 0x8000, 0x4280, 0xc000, 0x3800, 0x5c00}),
      tensor_of<double>("w.f64", DType::F64, {2, 3}, {1.5, -0.0, 3.25, -2.0, 0.5, 256.0}),
      tensor_of<uint16_t>("w.bf16", DType::BF16, {2, 3}, bf),
      tensor_of<int8_t>("w.i8", DType::I8, {2, 3}, {-128, 127, 0, -1, 5, 6}),
      tensor_of<uint8_t>("w.u8", DType::U8, {2, 3}, {0, 255, 1, 2, 3, 4}),
      tensor_of<int16_t>("w.i16", DType::I16, {2, 3}, {-32768, 32767, 0, -1, 5, 6}),
      tensor_of<uint16_t>("w.u16", DType::U16, {2, 3}, {0, 65535, 1, 2, 3, 4}),
      tensor_of<int32_t>("w.i32", DType::I32, {2, 3}, {INT32_MIN, INT32_MAX, 0, -1, 5, 6}),
      tensor_of<int64_t>("w.i64", DType::I64, {2, 3}, {INT64_MIN, INT64_MAX, 0, -1, 5, 6}),
      tensor_of<uint8_t>("w.bool", DType::Bool, {2, 3}, {1, 0, 1, 1, 0, 0}),
      tensor_of<float>("scalar", DType::F32, {}, {2.5f}),
      tensor_of<float>("empty", DType::F32, {3, 0}, {}),
      tensor_of<float>("state/exp_avg.w.f32", DType::F32, {2, 3}, std::vector<float>(6, 0.25f)),
  };
  const std::string ck = s / "model.h5", script = s / "check.py", log = s / "log.txt";
  write_checkpoint(ck, R"({"d_model": 64, "name": "tiny"})", tensors, {{"train_state", R"({"step": 7})"}});
  write_file_atomic(script, kH5pyCheck);
  const int rc = std::system((python + " '" + script + "' '" + ck + "' >'" + log + "' 2>&1").c_str());
  EXPECT_EQ(rc, 0) << read_file(log);
  EXPECT_EQ(read_file(log), "ok\n");
}

}  // namespace
}  // namespace pgolf
