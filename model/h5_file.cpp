#include "model/h5_file.h"

#include <hdf5.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/stat.h>
#include <type_traits>
#include <utility>

#include "data/atomic_file.h"
#include "data/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pgolf's HDF5 files assume a little-endian host");

namespace pgolf {

namespace {

// One HDF5 id, closed with its H5?close at scope exit.
class Id {
 public:
  Id() = default;
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Id(Id&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  Id& operator=(Id&& o) noexcept {
    if (this != &o) {
      close();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  ~Id() { close(); }
  operator hid_t() const { return id_; }
  bool ok() const { return id_ >= 0; }
  herr_t close() {  // explicit when the result matters (H5Fclose, H5Dclose flush)
    const herr_t r = id_ >= 0 ? close_(id_) : 0;
    id_ = -1;
    return r;
  }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// pgolf prints one line; HDF5 would print its whole error stack.
void quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

herr_t innermost(unsigned n, const H5E_error2_t* e, void* out) {
  if (n == 0 && e->desc) *static_cast<std::string*>(out) = e->desc;
  return 0;
}

// "what (HDF5's innermost message)" on one line; clears HDF5's error stack.
std::string detail(const std::string& what) {
  std::string d;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, &d);
  H5Eclear2(H5E_DEFAULT);
  for (char& c : d)
    if (c == '\n' || c == '\r') c = ' ';
  if (d.size() > 200) d = d.substr(0, 200) + "...";
  return d.empty() ? what : what + " (" + d + ")";
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

bool bad_name(const std::string& s) { return s.empty() || s.find('\0') != std::string::npos; }

// Memory (native) and file (little-endian standard) types of the element types.
template <class T>
hid_t mem_type() {
  if constexpr (std::is_same_v<T, uint8_t>) return H5T_NATIVE_UINT8;
  else if constexpr (std::is_same_v<T, uint16_t>) return H5T_NATIVE_UINT16;
  else if constexpr (std::is_same_v<T, uint32_t>) return H5T_NATIVE_UINT32;
  else if constexpr (std::is_same_v<T, uint64_t>) return H5T_NATIVE_UINT64;
  else if constexpr (std::is_same_v<T, int64_t>) return H5T_NATIVE_INT64;
  else if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  else return H5T_NATIVE_DOUBLE;
}

template <class T>
hid_t file_type() {
  if constexpr (std::is_same_v<T, uint8_t>) return H5T_STD_U8LE;
  else if constexpr (std::is_same_v<T, uint16_t>) return H5T_STD_U16LE;
  else if constexpr (std::is_same_v<T, uint32_t>) return H5T_STD_U32LE;
  else if constexpr (std::is_same_v<T, uint64_t>) return H5T_STD_U64LE;
  else if constexpr (std::is_same_v<T, int64_t>) return H5T_STD_I64LE;
  else if constexpr (std::is_same_v<T, float>) return H5T_IEEE_F32LE;
  else return H5T_IEEE_F64LE;
}

Id vlen_string_type() {  // what h5py writes for attrs["k"] = "str"
  Id t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}

}  // namespace

// ---- writing -------------------------------------------------------------------

struct H5Writer::Impl {
  std::string path;
  Id file, lcpl, acpl, gcpl, dcpl;

  void attr(const std::string& name, hid_t ftype, hid_t mtype, hid_t space, const void* buf) {
    if (bad_name(name)) fail(path, "attribute name " + quoted(name) + " is empty or contains a NUL byte");
    Id a(H5Acreate2(file, name.c_str(), ftype, space, acpl, H5P_DEFAULT), H5Aclose);
    if (!a.ok() || H5Awrite(a, mtype, buf) < 0) fail(path, detail("cannot write attribute " + quoted(name)));
  }
};

H5Writer::H5Writer(std::string path, uint64_t size_hint) : impl_(new Impl) {
  quiet();
  Impl& m = *impl_;
  m.path = std::move(path);
  m.lcpl = Id(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_char_encoding(m.lcpl, H5T_CSET_UTF8);
  m.acpl = Id(H5Pcreate(H5P_ATTRIBUTE_CREATE), H5Pclose);
  H5Pset_char_encoding(m.acpl, H5T_CSET_UTF8);
  m.gcpl = Id(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
  H5Pset_link_creation_order(m.gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);  // keep write order
  H5Pset_obj_track_times(m.gcpl, 0);  // no timestamps: same data, same bytes
  m.dcpl = Id(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(m.dcpl, 0);
  H5Pset_fill_time(m.dcpl, H5D_FILL_TIME_NEVER);  // every element gets written
  Id fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  H5Pset_obj_track_times(fcpl, 0);
  Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
  H5Pset_fapl_core(fapl, size_t(size_hint + size_hint / 64 + (1 << 20)), 0);  // memory only
  m.file = Id(H5Fcreate((m.path + " (in memory)").c_str(), H5F_ACC_TRUNC, fcpl, fapl), H5Fclose);
  if (!m.file.ok()) fail(m.path, detail("cannot create an HDF5 file in memory"));
}

H5Writer::~H5Writer() = default;

void H5Writer::attr_string(const std::string& name, const std::string& value) {
  if (value.find('\0') != std::string::npos) fail(impl_->path, "attribute " + quoted(name) + " contains a NUL byte");
  Id type = vlen_string_type();
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  const char* p = value.c_str();
  impl_->attr(name, type, type, space, &p);
}

void H5Writer::attr_strings(const std::string& name, const std::vector<std::string>& values) {
  std::vector<const char*> ptrs;
  for (const std::string& v : values) {
    if (v.find('\0') != std::string::npos) fail(impl_->path, "attribute " + quoted(name) + " contains a NUL byte");
    ptrs.push_back(v.c_str());
  }
  ptrs.push_back(nullptr);  // never empty: HDF5 wants a buffer even for no elements
  Id type = vlen_string_type();
  const hsize_t n = values.size();
  Id space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  impl_->attr(name, type, type, space, ptrs.data());
}

void H5Writer::attr_int(const std::string& name, int64_t value) {
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  impl_->attr(name, H5T_STD_I64LE, H5T_NATIVE_INT64, space, &value);
}

void H5Writer::attr_float(const std::string& name, double value) {
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  impl_->attr(name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, space, &value);
}

void H5Writer::group(const std::string& name) {
  Impl& m = *impl_;
  if (bad_name(name)) fail(m.path, "group name " + quoted(name) + " is empty or contains a NUL byte");
  Id g(H5Gcreate2(m.file, name.c_str(), m.lcpl, m.gcpl, H5P_DEFAULT), H5Gclose);
  if (!g.ok()) fail(m.path, detail("cannot create group " + quoted(name)));
}

template <class T>
void H5Writer::dataset(const std::string& name, const std::vector<T>& values) {
  Impl& m = *impl_;
  if (bad_name(name)) fail(m.path, "dataset name " + quoted(name) + " is empty or contains a NUL byte");
  const hsize_t n = values.size();
  Id space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Id ds(H5Dcreate2(m.file, name.c_str(), file_type<T>(), space, m.lcpl, m.dcpl, H5P_DEFAULT), H5Dclose);
  if (!ds.ok() || (n > 0 && H5Dwrite(ds, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0) ||
      ds.close() < 0)
    fail(m.path, detail("cannot write dataset " + quoted(name)));
}

void H5Writer::commit() {
  Impl& m = *impl_;
  if (H5Fflush(m.file, H5F_SCOPE_GLOBAL) < 0) fail(m.path, detail("cannot flush the HDF5 file"));
  const ssize_t n = H5Fget_file_image(m.file, nullptr, 0);
  if (n < 0) fail(m.path, detail("cannot get the HDF5 file image"));
  std::vector<char> image(static_cast<size_t>(n));
  if (H5Fget_file_image(m.file, image.data(), image.size()) != n) fail(m.path, detail("cannot get the HDF5 file image"));
  if (m.file.close() < 0) fail(m.path, detail("cannot close the HDF5 file"));
  AtomicFile out(m.path);
  out.write(image.data(), image.size());
  image = {};
  out.commit();
}

template void H5Writer::dataset(const std::string&, const std::vector<uint8_t>&);
template void H5Writer::dataset(const std::string&, const std::vector<uint16_t>&);
template void H5Writer::dataset(const std::string&, const std::vector<uint32_t>&);
template void H5Writer::dataset(const std::string&, const std::vector<uint64_t>&);
template void H5Writer::dataset(const std::string&, const std::vector<int64_t>&);
template void H5Writer::dataset(const std::string&, const std::vector<float>&);
template void H5Writer::dataset(const std::string&, const std::vector<double>&);

// ---- reading -------------------------------------------------------------------

struct H5Reader::Impl {
  std::string path;
  uint64_t file_bytes = 0;
  Id file;

  Id open_attr(const std::string& name) const {
    if (bad_name(name) || H5Aexists(file, name.c_str()) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      fail(path, "missing attribute " + quoted(name));
    }
    Id a(H5Aopen(file, name.c_str(), H5P_DEFAULT), H5Aclose);
    if (!a.ok()) fail(path, detail("cannot open attribute " + quoted(name)));
    return a;
  }
  // The attribute's class and element count (scalar = 1; rank > 1 fails).
  std::pair<H5T_class_t, hssize_t> shape_of(hid_t a, const std::string& name) const {
    Id type(H5Aget_type(a), H5Tclose);
    Id space(H5Aget_space(a), H5Sclose);
    if (H5Sget_simple_extent_ndims(space) > 1) fail(path, "attribute " + quoted(name) + " has more than one dimension");
    return {H5Tget_class(type), H5Sget_simple_extent_npoints(space)};
  }
};

H5Reader::H5Reader(std::string path) : impl_(new Impl) {
  quiet();
  Impl& m = *impl_;
  m.path = std::move(path);
  struct stat st {};
  if (::stat(m.path.c_str(), &st) != 0) fail(m.path, std::string("cannot open: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(m.path, "not a regular file");
  m.file_bytes = uint64_t(st.st_size);
  if (H5Fis_hdf5(m.path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    fail(m.path, "not an HDF5 file");
  }
  Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, 0, 1);  // files are replaced by rename, never written in place
#endif
  m.file = Id(H5Fopen(m.path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose);
  if (!m.file.ok()) fail(m.path, detail("cannot open the HDF5 file"));
}

H5Reader::~H5Reader() = default;

const std::string& H5Reader::path() const { return impl_->path; }

bool H5Reader::has_attr(const std::string& name) const {
  const bool yes = !bad_name(name) && H5Aexists(impl_->file, name.c_str()) > 0;
  H5Eclear2(H5E_DEFAULT);
  return yes;
}

static herr_t collect_attr_name(hid_t, const char* name, const H5A_info_t*, void* out) {
  static_cast<std::vector<std::string>*>(out)->push_back(name);
  return 0;
}

std::vector<std::string> H5Reader::attr_names() const {
  std::vector<std::string> names;
  if (H5Aiterate2(impl_->file, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attr_name, &names) < 0)
    fail(impl_->path, detail("cannot list attributes"));
  return names;
}

bool H5Reader::attr_is_string(const std::string& name) const {
  if (!has_attr(name)) return false;
  Id a = impl_->open_attr(name);
  Id type(H5Aget_type(a), H5Tclose);
  Id space(H5Aget_space(a), H5Sclose);
  return H5Tget_class(type) == H5T_STRING && H5Sget_simple_extent_ndims(space) <= 1 &&
         H5Sget_simple_extent_npoints(space) == 1;
}

std::vector<std::string> H5Reader::attr_strings(const std::string& name) const {
  const Impl& m = *impl_;
  Id a = m.open_attr(name);
  auto [cls, n] = m.shape_of(a, name);
  if (cls != H5T_STRING || n < 0) fail(m.path, "attribute " + quoted(name) + " is not a string");
  Id type(H5Aget_type(a), H5Tclose);
  std::vector<std::string> out;
  if (H5Tis_variable_str(type) > 0) {
    Id mem = vlen_string_type();
    H5Tset_cset(mem, H5Tget_cset(type));
    std::vector<char*> ptrs(size_t(n) + 1, nullptr);
    if (H5Aread(a, mem, ptrs.data()) < 0) fail(m.path, detail("cannot read attribute " + quoted(name)));
    for (hssize_t i = 0; i < n; ++i) {
      out.emplace_back(ptrs[size_t(i)] ? ptrs[size_t(i)] : "");
      H5free_memory(ptrs[size_t(i)]);
    }
    return out;
  }
  const size_t size = H5Tget_size(type);
  if (size == 0 || size > (64u << 20) / size_t(n + 1)) fail(m.path, "attribute " + quoted(name) + " is too large");
  std::string buf(size * size_t(n) + 1, '\0');
  if (n > 0 && H5Aread(a, type, &buf[0]) < 0) fail(m.path, detail("cannot read attribute " + quoted(name)));
  for (hssize_t i = 0; i < n; ++i) out.emplace_back(buf.c_str() + size_t(i) * size, strnlen(buf.c_str() + size_t(i) * size, size));
  return out;
}

std::string H5Reader::attr_string(const std::string& name) const {
  std::vector<std::string> v = attr_strings(name);
  if (v.size() != 1) fail(impl_->path, "attribute " + quoted(name) + " is not a single string");
  return v[0];
}

int64_t H5Reader::attr_int(const std::string& name) const {
  const Impl& m = *impl_;
  Id a = m.open_attr(name);
  auto [cls, n] = m.shape_of(a, name);
  int64_t v = 0;
  if (cls != H5T_INTEGER || n != 1 || H5Aread(a, H5T_NATIVE_INT64, &v) < 0)
    fail(m.path, "attribute " + quoted(name) + " is not an integer");
  return v;
}

double H5Reader::attr_float(const std::string& name) const {
  const Impl& m = *impl_;
  Id a = m.open_attr(name);
  auto [cls, n] = m.shape_of(a, name);
  double v = 0;
  if ((cls != H5T_FLOAT && cls != H5T_INTEGER) || n != 1 || H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0)
    fail(m.path, "attribute " + quoted(name) + " is not a number");
  return v;
}

bool H5Reader::has(const std::string& name) const {
  if (bad_name(name)) return false;
  // H5Lexists needs every parent to exist: check the path one level at a time.
  for (size_t p = name.find('/'); ; p = name.find('/', p + 1)) {
    const std::string prefix = name.substr(0, p);
    const bool yes = H5Lexists(impl_->file, prefix.c_str(), H5P_DEFAULT) > 0;
    H5Eclear2(H5E_DEFAULT);
    if (!yes) return false;
    if (p == std::string::npos) return true;
  }
}

template <class T>
std::vector<T> H5Reader::read(const std::string& name) const {
  const Impl& m = *impl_;
  const std::string what = "dataset " + quoted(name);
  if (!has(name)) fail(m.path, "missing " + what);
  Id ds(H5Dopen2(m.file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.ok()) fail(m.path, detail(quoted(name) + " is not a dataset"));
  Id type(H5Dget_type(ds), H5Tclose);
  const bool want_int = std::is_integral_v<T>;
  if (H5Tget_class(type) != (want_int ? H5T_INTEGER : H5T_FLOAT))
    fail(m.path, what + " is not " + (want_int ? "integer" : "floating-point"));
  Id space(H5Dget_space(ds), H5Sclose);
  if (H5Sget_simple_extent_type(space) != H5S_SIMPLE || H5Sget_simple_extent_ndims(space) != 1)
    fail(m.path, what + " is not one-dimensional");
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space, &n, nullptr);
  // A corrupt header can claim any length: bound it by what the file can hold
  // (deflate's best ratio, about 1032:1, for chunked data) before allocating.
  Id dcpl(H5Dget_create_plist(ds), H5Pclose);
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  if (layout != H5D_CONTIGUOUS && layout != H5D_COMPACT && layout != H5D_CHUNKED)
    fail(m.path, what + " has an unsupported storage layout");
  if (H5Pget_external_count(dcpl) > 0) fail(m.path, what + " is stored in external files (not supported)");
  const uint64_t cap = m.file_bytes / std::max<size_t>(1, H5Tget_size(type)) * (layout == H5D_CHUNKED ? 1032 : 1);
  if (uint64_t(n) > cap)
    fail(m.path, what + " claims " + std::to_string(n) + " elements, more than the file's " +
                     std::to_string(m.file_bytes) + " bytes hold (corrupt file)");
  std::vector<T> v(static_cast<size_t>(n));
  if (n > 0 && H5Dread(ds, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0)
    fail(m.path, detail("cannot read " + what));
  return v;
}

template std::vector<uint8_t> H5Reader::read(const std::string&) const;
template std::vector<uint16_t> H5Reader::read(const std::string&) const;
template std::vector<uint32_t> H5Reader::read(const std::string&) const;
template std::vector<uint64_t> H5Reader::read(const std::string&) const;
template std::vector<int64_t> H5Reader::read(const std::string&) const;
template std::vector<float> H5Reader::read(const std::string&) const;
template std::vector<double> H5Reader::read(const std::string&) const;

}  // namespace pgolf
