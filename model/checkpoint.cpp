// pgolf checkpoints through HDF5's plain C API (identical on 1.10.8 and 1.10.10,
// and still valid on 1.12/1.14 through their compatibility macros).
//
// Type choices (all little-endian, pgolf targets little-endian hosts):
//   float32/float64        H5T_IEEE_F32LE / H5T_IEEE_F64LE
//   float16                IEEE_F32LE copy reshaped to 1+5+10 bits, bias 15: the
//                          type h5py builds (h5t.pyx IEEE_F16LE), so h5py reads
//                          numpy float16. HDF5 1.10 has no predefined half.
//   bfloat16               uint16 of the raw bits + dataset attribute
//                          dtype="bfloat16". Why not float32: widening is exact
//                          too, but it doubles the bytes of every bf16 tensor,
//                          and the reader would have to trust the note to narrow
//                          again. uint16 keeps the file the size of the model,
//                          the bits untouched (NaN payloads included), and
//                          h5py users get the bits plus the note; one line
//                          turns them into float32 (see README).
//   bool                   h5py's enum int8 {FALSE=0, TRUE=1} (reads as numpy bool)
//   ints                   H5T_STD_{I8,U8,I16,U16,I32,I64}LE
// Reading uses a memory type equal to the file type (byte order forced to
// little-endian), so HDF5's conversion is a no-op and bits come back exactly.
#include "model/checkpoint.h"

#include <hdf5.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <sys/stat.h>
#include <utility>

#include "data/atomic_file.h"
#include "data/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pgolf checkpoints assume a little-endian host");

namespace pgolf {

namespace {

const char* const kStateGroup = "state";
const char* const kDTypeAttr = "dtype";  // per-dataset note, only for bfloat16

// ---- small HDF5 helpers ------------------------------------------------------

// Owns one HDF5 id; closes it with the matching H5?close.
class Hid {
 public:
  Hid() = default;
  Hid(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Hid(Hid&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  ~Hid() { reset(); }
  operator hid_t() const { return id_; }
  bool ok() const { return id_ >= 0; }
  herr_t close() {  // explicit close when its result matters (H5Fclose flushes)
    herr_t r = id_ >= 0 ? close_(id_) : 0;
    id_ = -1;
    return r;
  }
  void reset() { close(); }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Users see pgolf's one line, not HDF5's error-stack dump. Per thread, cheap.
void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

herr_t innermost_error(unsigned n, const H5E_error2_t* e, void* out) {
  if (n == 0 && e->desc) *static_cast<std::string*>(out) = e->desc;
  return 0;
}

// The most specific message on HDF5's error stack, shortened to one line:
// the OS message when there is one ("File too large"), else the description.
std::string h5_detail() {
  std::string d;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, &d);
  H5Eclear2(H5E_DEFAULT);
  const std::string key = "error message = '";
  size_t p = d.find(key);
  if (p != std::string::npos) {
    size_t q = d.find('\'', p + key.size());
    d = d.substr(p + key.size(), q == std::string::npos ? std::string::npos : q - p - key.size());
  }
  for (char& c : d)
    if (c == '\n' || c == '\r') c = ' ';
  if (d.size() > 200) d = d.substr(0, 200) + "...";
  return d;
}

std::string with_detail(const std::string& what) {
  std::string d = h5_detail();
  return d.empty() ? what : what + " (" + d + ")";
}

// 'name' for messages; control bytes escaped so the error stays one line.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (unsigned char c : s) {
    if (c >= 0x20 && c != 0x7f) {
      out += static_cast<char>(c);
    } else {
      const char* hex = "0123456789abcdef";
      out += std::string("\\x") + hex[c >> 4] + hex[c & 15];
    }
  }
  return out + "'";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// a * b, or false on uint64 overflow.
bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) {
  if (b != 0 && a > UINT64_MAX / b) return false;
  *out = a * b;
  return true;
}

// ---- types -----------------------------------------------------------------------

Hid copy_type(hid_t t) { return Hid(H5Tcopy(t), H5Tclose); }

Hid half_type() {  // h5py's IEEE_F16LE
  Hid t = copy_type(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 15);
  return t;
}

Hid bool_type() {  // h5py's bool: enum over int8
  Hid t(H5Tenum_create(H5T_STD_I8LE), H5Tclose);
  const int8_t no = 0, yes = 1;
  H5Tenum_insert(t, "FALSE", &no);
  H5Tenum_insert(t, "TRUE", &yes);
  return t;
}

// The type a dtype is stored as (the same type is the memory type when writing).
Hid file_type(DType t) {
  switch (t) {
    case DType::F32: return copy_type(H5T_IEEE_F32LE);
    case DType::F64: return copy_type(H5T_IEEE_F64LE);
    case DType::F16: return half_type();
    case DType::BF16: return copy_type(H5T_STD_U16LE);
    case DType::I8: return copy_type(H5T_STD_I8LE);
    case DType::U8: return copy_type(H5T_STD_U8LE);
    case DType::I16: return copy_type(H5T_STD_I16LE);
    case DType::U16: return copy_type(H5T_STD_U16LE);
    case DType::I32: return copy_type(H5T_STD_I32LE);
    case DType::I64: return copy_type(H5T_STD_I64LE);
    case DType::Bool: return bool_type();
  }
  return Hid();
}

Hid utf8_string_type() {  // variable-length: what h5py writes for attrs["k"] = "str"
  Hid t = copy_type(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}

// Property lists shared by everything a write creates.
struct WriteProps {
  Hid lcpl, acpl, gcpl, dcpl;
  WriteProps() {
    lcpl = Hid(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
    H5Pset_char_encoding(lcpl, H5T_CSET_UTF8);
    acpl = Hid(H5Pcreate(H5P_ATTRIBUTE_CREATE), H5Pclose);
    H5Pset_char_encoding(acpl, H5T_CSET_UTF8);
    gcpl = Hid(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
    H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);  // keep write order
    H5Pset_obj_track_times(gcpl, 0);  // no timestamps: same tensors, same bytes
    dcpl = Hid(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_obj_track_times(dcpl, 0);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);  // every byte gets written anyway
  }
};

Hid make_fapl() {
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);  // H5Fclose really closes (and flushes)
#if H5_VERSION_GE(1, 10, 7)
  // Readers never see a half-written file (temp + rename), so locks buy nothing
  // and fail on some network filesystems. (Reads only: writes use memory.)
  H5Pset_file_locking(fapl, 0, 1);
#endif
  return fapl;
}

// ---- writing -------------------------------------------------------------------

bool has_nul(const std::string& s) { return s.find('\0') != std::string::npos; }

// Splits "x" -> ("", "x") and "state/x" -> ("state", "x"); anything else fails.
std::pair<std::string, std::string> split_name(const std::string& path, const std::string& name) {
  std::string group, leaf = name;
  const std::string prefix = std::string(kStateGroup) + "/";
  if (name.compare(0, prefix.size(), prefix) == 0) {
    group = kStateGroup;
    leaf = name.substr(prefix.size());
  }
  if (leaf.empty()) fail(path, "tensor name " + quoted(name) + " is empty");
  if (leaf.find('/') != std::string::npos)
    fail(path, "tensor name " + quoted(name) + " contains '/' (only \"state/<name>\" may)");
  if (has_nul(leaf)) fail(path, "tensor name " + quoted(name) + " contains a NUL byte");
  if (leaf == "." || leaf == "..") fail(path, "tensor name " + quoted(name) + " is not allowed");
  if (group.empty() && leaf == kStateGroup) fail(path, "tensor name 'state' is reserved for the /state group");
  return {group, leaf};
}

uint64_t tensor_bytes(const std::string& path, const CheckpointTensor& t) {
  if (t.shape.size() > static_cast<size_t>(kCheckpointMaxRank))
    fail(path, "tensor " + quoted(t.name) + ": rank " + std::to_string(t.shape.size()) + " exceeds " +
                   std::to_string(kCheckpointMaxRank));
  uint64_t n = dtype_size(t.dtype);
  for (int64_t d : t.shape)
    if (d < 0 || !mul_ok(n, static_cast<uint64_t>(d), &n))
      fail(path, "tensor " + quoted(t.name) + ": bad shape " + shape_str(t.shape));
  return n;
}

// Everything that can be checked before a byte is written.
void validate(const std::string& path, const std::string& config_json, const std::vector<CheckpointTensor>& tensors,
              const std::map<std::string, std::string>& attrs) {
  if (has_nul(config_json)) fail(path, "config JSON contains a NUL byte");
  for (const auto& [k, v] : attrs) {
    if (k.empty() || has_nul(k)) fail(path, "attribute name " + quoted(k) + " is empty or contains a NUL byte");
    if (k == "format" || k == "format_version" || k == "config")
      fail(path, "attribute name " + quoted(k) + " is reserved");
    if (has_nul(v)) fail(path, "attribute " + quoted(k) + " contains a NUL byte");
  }
  std::set<std::string> seen;
  for (const CheckpointTensor& t : tensors) {
    split_name(path, t.name);
    if (!seen.insert(t.name).second) fail(path, "duplicate tensor name " + quoted(t.name));
    uint64_t want = tensor_bytes(path, t);
    if (want != t.data.size())
      fail(path, "tensor " + quoted(t.name) + ": " + std::to_string(t.data.size()) + " bytes of data, shape " +
                     shape_str(t.shape) + " " + dtype_name(t.dtype) + " needs " + std::to_string(want));
  }
}

// Returns false (HDF5 error on the stack) on failure.
bool write_string_attr(hid_t obj, const char* name, const std::string& value, hid_t acpl) {
  Hid type = utf8_string_type();
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  Hid attr(H5Acreate2(obj, name, type, space, acpl, H5P_DEFAULT), H5Aclose);
  const char* p = value.c_str();
  return attr.ok() && H5Awrite(attr, type, &p) >= 0;
}

bool write_int_attr(hid_t obj, const char* name, int64_t value, hid_t acpl) {
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  Hid attr(H5Acreate2(obj, name, H5T_STD_I64LE, space, acpl, H5P_DEFAULT), H5Aclose);
  return attr.ok() && H5Awrite(attr, H5T_NATIVE_INT64, &value) >= 0;
}

bool write_dataset(hid_t loc, const std::string& leaf, const CheckpointTensor& t, const WriteProps& props) {
  Hid type = file_type(t.dtype);
  std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
  Hid space(t.shape.empty() ? H5Screate(H5S_SCALAR)
                            : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
            H5Sclose);
  Hid ds(H5Dcreate2(loc, leaf.c_str(), type, space, props.lcpl, props.dcpl, H5P_DEFAULT), H5Dclose);
  if (!ds.ok()) return false;
  if (!t.data.empty() && H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data.data()) < 0) return false;
  if (t.dtype == DType::BF16 && !write_string_attr(ds, kDTypeAttr, "bfloat16", props.acpl)) return false;
  return ds.close() >= 0;
}

// Builds the whole HDF5 file in memory (core driver) and returns its bytes.
// Why in memory: when a write fails on disk (ENOSPC, EFBIG, EIO) HDF5 1.10's
// H5Fclose fails too and leaves a half-freed file in its tables, which crashes
// the process at exit. In memory HDF5 cannot hit an I/O error; the bytes then
// go through AtomicFile (temp in the same dir, fsync, rename, cleanup) whose
// failures are ordinary errors. Cost: the file's bytes twice in RAM for a moment.
std::vector<char> build_h5(const std::string& path, const std::string& config_json,
                           const std::vector<CheckpointTensor>& tensors,
                           const std::map<std::string, std::string>& attrs) {
  uint64_t payload = 0;
  for (const CheckpointTensor& t : tensors) payload += t.data.size();
  WriteProps props;
  Hid fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  H5Pset_obj_track_times(fcpl, 0);
  Hid fapl = make_fapl();
  // Grow the buffer in one step when possible: tensor bytes + room for metadata.
  H5Pset_fapl_core(fapl, static_cast<size_t>(payload + payload / 64 + (1 << 20)), 0);
  Hid file(H5Fcreate((path + " (in memory)").c_str(), H5F_ACC_TRUNC, fcpl, fapl), H5Fclose);
  if (!file.ok()) fail(path, with_detail("cannot create HDF5 file in memory"));

  bool ok = write_string_attr(file, "format", kCheckpointFormat, props.acpl) &&
            write_int_attr(file, "format_version", kCheckpointFormatVersion, props.acpl) &&
            write_string_attr(file, "config", config_json, props.acpl);
  for (auto it = attrs.begin(); ok && it != attrs.end(); ++it)
    ok = write_string_attr(file, it->first.c_str(), it->second, props.acpl);
  if (!ok) fail(path, with_detail("cannot write attributes"));

  Hid state;  // created on the first state/ tensor
  for (const CheckpointTensor& t : tensors) {
    auto [group, leaf] = split_name(path, t.name);
    if (!group.empty() && !state.ok()) {
      state = Hid(H5Gcreate2(file, kStateGroup, props.lcpl, props.gcpl, H5P_DEFAULT), H5Gclose);
      if (!state.ok()) fail(path, with_detail("cannot create group /state"));
    }
    if (!write_dataset(group.empty() ? hid_t(file) : hid_t(state), leaf, t, props))
      fail(path, with_detail("cannot write tensor " + quoted(t.name)));
  }
  state.reset();
  if (H5Fflush(file, H5F_SCOPE_GLOBAL) < 0) fail(path, with_detail("cannot flush HDF5 file"));
  const ssize_t n = H5Fget_file_image(file, nullptr, 0);
  if (n < 0) fail(path, with_detail("cannot get HDF5 file image"));
  std::vector<char> image(static_cast<size_t>(n));
  if (H5Fget_file_image(file, image.data(), image.size()) != n) fail(path, with_detail("cannot get HDF5 file image"));
  if (file.close() < 0) fail(path, with_detail("cannot close HDF5 file"));
  return image;
}

std::string errno_text() { return std::strerror(errno); }

// ---- reading -------------------------------------------------------------------

// A scalar string attribute (variable or fixed length). false when the
// attribute is not a single string.
bool read_string_attr(hid_t obj, const char* name, std::string* out) {
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) return false;
  Hid type(H5Aget_type(attr), H5Tclose);
  Hid space(H5Aget_space(attr), H5Sclose);
  if (H5Tget_class(type) != H5T_STRING || H5Sget_simple_extent_npoints(space) != 1) return false;
  if (H5Tis_variable_str(type) > 0) {
    Hid mem = utf8_string_type();
    H5Tset_cset(mem, H5Tget_cset(type));
    char* p = nullptr;
    if (H5Aread(attr, mem, &p) < 0) return false;
    *out = p ? p : "";
    H5free_memory(p);
    return true;
  }
  size_t n = H5Tget_size(type);
  std::string buf(n, '\0');
  if (n > 0 && H5Aread(attr, type, &buf[0]) < 0) return false;
  buf.resize(std::strlen(buf.c_str()));  // fixed strings are NUL-terminated or NUL-padded
  *out = buf;
  return true;
}

herr_t collect_attr_name(hid_t, const char* name, const H5A_info_t*, void* out) {
  static_cast<std::vector<std::string>*>(out)->push_back(name);
  return 0;
}

struct Link {
  std::string name;
  H5L_type_t type;
};

herr_t collect_link(hid_t, const char* name, const H5L_info_t* info, void* out) {
  static_cast<std::vector<Link>*>(out)->push_back({name, info->type});
  return 0;
}

// The group's links, in creation order when the file tracks it (pgolf's do).
std::vector<Link> list_links(const std::string& path, hid_t group) {
  H5_index_t index = H5_INDEX_NAME;
  Hid gcpl(H5Gget_create_plist(group), H5Pclose);
  unsigned flags = 0;
  if (gcpl.ok() && H5Pget_link_creation_order(gcpl, &flags) >= 0 && (flags & H5P_CRT_ORDER_TRACKED) &&
      (flags & H5P_CRT_ORDER_INDEXED))
    index = H5_INDEX_CRT_ORDER;
  std::vector<Link> links;
  if (H5Literate(group, index, H5_ITER_INC, nullptr, collect_link, &links) < 0)
    fail(path, with_detail("cannot list datasets"));
  return links;
}

struct FloatLayout {
  size_t size, spos, epos, esize, mpos, msize, ebias;
  DType dtype;
};

// Float layouts pgolf understands; bfloat16 as a float type is what HDF5 2.0's
// H5T_FLOAT_BFLOAT16LE writes (pgolf itself writes uint16 + note).
const FloatLayout kFloats[] = {
    {2, 15, 10, 5, 0, 10, 15, DType::F16},   {2, 15, 7, 8, 0, 7, 127, DType::BF16},
    {4, 31, 23, 8, 0, 23, 127, DType::F32},  {8, 63, 52, 11, 0, 52, 1023, DType::F64},
};

bool is_h5py_bool(hid_t type) {
  if (H5Tget_size(type) != 1 || H5Tget_nmembers(type) != 2) return false;
  bool ok = true;
  for (unsigned i = 0; i < 2; i++) {
    char* name = H5Tget_member_name(type, i);
    int8_t v = -1;
    ok = ok && name && H5Tget_member_value(type, i, &v) >= 0 &&
         ((std::strcmp(name, "FALSE") == 0 && v == 0) || (std::strcmp(name, "TRUE") == 0 && v == 1));
    if (name) H5free_memory(name);
  }
  return ok;
}

const char* class_name(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    case H5T_ENUM: return "enum";
    case H5T_VLEN: return "variable-length";
    case H5T_ARRAY: return "array";
    default: return "unknown";
  }
}

// Maps a dataset's HDF5 type (+ its optional dtype note) to a DType, or fails.
DType classify(const std::string& path, const std::string& name, hid_t ds, hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  const std::string where = "tensor " + quoted(name) + ": ";
  auto unsupported = [&](const std::string& what) -> DType {
    fail(path, where + "unsupported dtype (HDF5 " + what + ", " + std::to_string(size) + " bytes)");
  };
  bool found = false;
  DType dt = DType::U8;
  if (cls == H5T_INTEGER) {
    const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    if (H5Tget_precision(type) != size * 8 || H5Tget_offset(type) != 0) unsupported("integer with padding");
    const struct { size_t size; bool is_signed; DType dtype; } ints[] = {
        {1, true, DType::I8}, {1, false, DType::U8}, {2, true, DType::I16}, {2, false, DType::U16},
        {4, true, DType::I32}, {8, true, DType::I64}};
    for (const auto& i : ints)
      if (i.size == size && i.is_signed == is_signed) dt = i.dtype, found = true;
    if (!found) unsupported(is_signed ? "signed integer" : "unsigned integer");
  } else if (cls == H5T_FLOAT) {
    size_t f[5] = {};
    H5Tget_fields(type, &f[0], &f[1], &f[2], &f[3], &f[4]);
    const size_t ebias = H5Tget_ebias(type);
    for (const FloatLayout& l : kFloats)
      if (l.size == size && l.spos == f[0] && l.epos == f[1] && l.esize == f[2] && l.mpos == f[3] &&
          l.msize == f[4] && l.ebias == ebias)
        dt = l.dtype, found = true;
    if (!found) unsupported("float of unknown layout");
  } else if (cls == H5T_ENUM && is_h5py_bool(type)) {
    dt = DType::Bool;
  } else {
    unsupported(class_name(cls));
  }
  // The note: "bfloat16" turns uint16 bits into bfloat16; an unknown note is
  // an error so that a newer writer's type is never misread as raw integers.
  if (H5Aexists(ds, kDTypeAttr) > 0) {
    std::string note;
    if (!read_string_attr(ds, kDTypeAttr, &note)) fail(path, where + "attribute 'dtype' is not a string");
    if (note == "bfloat16" && (dt == DType::U16 || dt == DType::BF16)) return DType::BF16;
    if (note != dtype_name(dt))
      fail(path, where + "unsupported dtype " + quoted(note) + " (stored as " + dtype_name(dt) + ")");
  }
  return dt;
}

struct Opened {
  Hid file;
  uint64_t file_bytes = 0;
};

Opened open_checkpoint(const std::string& path) {
  quiet_hdf5();
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(path, "cannot open: " + errno_text());
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    fail(path, "not an HDF5 file");
  }
  Opened o;
  o.file_bytes = static_cast<uint64_t>(st.st_size);
  Hid fapl = make_fapl();
  o.file = Hid(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose);
  if (!o.file.ok()) fail(path, with_detail("cannot open HDF5 file"));
  return o;
}

// format / format_version / config / extra attributes.
void read_header(const std::string& path, hid_t file, std::string* config, std::map<std::string, std::string>* attrs) {
  std::string format;
  if (H5Aexists(file, "format") <= 0) fail(path, "not a pgolf checkpoint (no 'format' attribute)");
  if (!read_string_attr(file, "format", &format) || format != kCheckpointFormat)
    fail(path, "not a pgolf checkpoint (format is not " + quoted(kCheckpointFormat) + ")");
  if (H5Aexists(file, "format_version") <= 0) fail(path, "missing 'format_version' attribute");
  int64_t version = 0;
  {
    Hid attr(H5Aopen(file, "format_version", H5P_DEFAULT), H5Aclose);
    Hid type(H5Aget_type(attr), H5Tclose);
    Hid space(H5Aget_space(attr), H5Sclose);
    if (H5Tget_class(type) != H5T_INTEGER || H5Sget_simple_extent_npoints(space) != 1 ||
        H5Aread(attr, H5T_NATIVE_INT64, &version) < 0)
      fail(path, "attribute 'format_version' is not an integer");
  }
  if (version != kCheckpointFormatVersion)
    fail(path, "format_version " + std::to_string(version) + " is not supported (this pgolf reads " +
                   std::to_string(kCheckpointFormatVersion) + ")");
  if (H5Aexists(file, "config") <= 0) fail(path, "missing 'config' attribute");
  if (!read_string_attr(file, "config", config)) fail(path, "attribute 'config' is not a string");

  std::vector<std::string> names;
  if (H5Aiterate2(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attr_name, &names) < 0)
    fail(path, with_detail("cannot list attributes"));
  for (const std::string& n : names) {
    if (n == "format" || n == "format_version" || n == "config") continue;
    std::string v;
    if (read_string_attr(file, n.c_str(), &v)) (*attrs)[n] = v;  // non-string extras (added by hand) are skipped
  }
}

// Deflate's best case is ~1032:1; a chunked dataset claiming more is not a real tensor.
const uint64_t kMaxCompression = 1032;

CheckpointTensorInfo describe(const std::string& path, const std::string& name, hid_t ds, uint64_t file_bytes,
                              uint64_t* contiguous_total) {
  CheckpointTensorInfo info;
  info.name = name;
  const std::string where = "tensor " + quoted(name) + ": ";
  Hid type(H5Dget_type(ds), H5Tclose);
  if (!type.ok()) fail(path, with_detail(where + "cannot read its type"));
  info.dtype = classify(path, name, ds, type);

  Hid space(H5Dget_space(ds), H5Sclose);
  const H5S_class_t sc = H5Sget_simple_extent_type(space);
  if (sc != H5S_SCALAR && sc != H5S_SIMPLE) fail(path, where + "has no dataspace (null or unknown)");
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 0) fail(path, with_detail(where + "cannot read its shape"));
  if (rank > kCheckpointMaxRank)
    fail(path, where + "rank " + std::to_string(rank) + " exceeds " + std::to_string(kCheckpointMaxRank));
  hsize_t dims[kCheckpointMaxRank] = {};
  H5Sget_simple_extent_dims(space, dims, nullptr);
  uint64_t bytes = dtype_size(info.dtype);
  bool sane = true;
  for (int i = 0; i < rank; i++) {
    sane = sane && dims[i] <= static_cast<hsize_t>(INT64_MAX) && mul_ok(bytes, dims[i], &bytes);
    info.shape.push_back(static_cast<int64_t>(dims[i]));
  }

  // Layout decides how large a dataset this file can really hold.
  Hid dcpl(H5Dget_create_plist(ds), H5Pclose);
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  if (layout != H5D_CONTIGUOUS && layout != H5D_COMPACT && layout != H5D_CHUNKED)
    fail(path, where + "unsupported storage layout (virtual or unknown)");
  if (H5Pget_external_count(dcpl) > 0) fail(path, where + "data stored in external files is not supported");
  uint64_t limit = file_bytes;
  if (layout == H5D_CHUNKED && !mul_ok(file_bytes, kMaxCompression, &limit)) limit = UINT64_MAX;
  if (!sane || bytes > limit)
    fail(path, where + "shape " + (sane ? shape_str(info.shape) : std::string("(overflows)")) + " needs " +
                   (sane ? std::to_string(bytes) : std::string("more than 2^64")) + " bytes but the file has only " +
                   std::to_string(file_bytes));
  if (layout != H5D_CHUNKED) {
    *contiguous_total += bytes;
    if (*contiguous_total > file_bytes)
      fail(path, "tensors need more bytes than the file's " + std::to_string(file_bytes) + " (corrupt file)");
  }
  info.bytes = bytes;
  return info;
}

// Datasets at the root, then those in /state. Anything else is an error: a
// loader must not silently skip what someone put in the file.
std::vector<CheckpointTensorInfo> scan(const std::string& path, hid_t file, uint64_t file_bytes) {
  std::vector<CheckpointTensorInfo> out;
  uint64_t total = 0;
  bool has_state = false;
  for (int level = 0; level < 2; level++) {
    if (level == 1 && !has_state) break;
    const std::string prefix = level == 0 ? "" : std::string(kStateGroup) + "/";
    Hid group(H5Gopen2(file, level == 0 ? "/" : kStateGroup, H5P_DEFAULT), H5Gclose);
    if (!group.ok()) fail(path, with_detail("cannot open group /" + prefix));
    for (const Link& l : list_links(path, group)) {
      const std::string name = prefix + l.name;
      if (l.type != H5L_TYPE_HARD) fail(path, quoted(name) + " is a soft or external link (not supported)");
      Hid obj(H5Oopen(group, l.name.c_str(), H5P_DEFAULT), H5Oclose);
      if (!obj.ok()) fail(path, with_detail("cannot open " + quoted(name)));
      const H5I_type_t kind = H5Iget_type(obj);
      if (kind == H5I_DATASET) {
        out.push_back(describe(path, name, obj, file_bytes, &total));
      } else if (kind == H5I_GROUP && level == 0 && l.name == kStateGroup) {
        has_state = true;
      } else {
        fail(path, "unexpected object " + quoted(name) + " (checkpoints hold datasets at the root and in /state)");
      }
    }
  }
  return out;
}

// Reads one dataset's bytes exactly: the memory type is the file type with
// little-endian order, so HDF5 converts nothing (only byte-swaps a BE file).
void read_data(const std::string& path, hid_t file, CheckpointTensor* t) {
  if (t->data.empty()) return;
  Hid ds(H5Dopen2(file, t->name.c_str(), H5P_DEFAULT), H5Dclose);
  Hid ftype(ds.ok() ? H5Dget_type(ds) : -1, H5Tclose);
  Hid mem(ftype.ok() ? H5Tcopy(ftype) : -1, H5Tclose);  // a copy: a committed type cannot be modified
  if (!mem.ok()) fail(path, with_detail("cannot open tensor " + quoted(t->name)));
  const H5T_class_t cls = H5Tget_class(mem);
  if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && H5Tget_size(mem) > 1) H5Tset_order(mem, H5T_ORDER_LE);
  if (H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data.data()) < 0)
    fail(path, with_detail("cannot read tensor " + quoted(t->name)));
}

}  // namespace

// ---- public API ------------------------------------------------------------------

const CheckpointTensor* Checkpoint::find(const std::string& name) const {
  for (const CheckpointTensor& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

void write_checkpoint(const std::string& path, const std::string& config_json,
                      const std::vector<CheckpointTensor>& tensors, const std::map<std::string, std::string>& attrs) {
  quiet_hdf5();
  validate(path, config_json, tensors, attrs);
  std::vector<char> image = build_h5(path, config_json, tensors, attrs);
  AtomicFile out(path);  // PATH.tmp.XXXXXX; removed unless committed
  out.write(image.data(), image.size());
  image = {};
  out.commit();  // fsync + rename
}

CheckpointInfo list_checkpoint(const std::string& path) {
  Opened o = open_checkpoint(path);
  CheckpointInfo info;
  info.file_bytes = o.file_bytes;
  read_header(path, o.file, &info.config_json, &info.attrs);
  info.tensors = scan(path, o.file, o.file_bytes);
  return info;
}

Checkpoint read_checkpoint(const std::string& path) {
  Opened o = open_checkpoint(path);
  Checkpoint ck;
  read_header(path, o.file, &ck.config_json, &ck.attrs);
  for (CheckpointTensorInfo& info : scan(path, o.file, o.file_bytes)) {
    CheckpointTensor t;
    t.name = std::move(info.name);
    t.dtype = info.dtype;
    t.shape = std::move(info.shape);
    t.data.resize(info.bytes);
    read_data(path, o.file, &t);
    ck.tensors.push_back(std::move(t));
  }
  return ck;
}

}  // namespace pgolf
