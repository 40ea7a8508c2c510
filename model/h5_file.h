// Small HDF5 files of plain records -- root attributes and 1-D datasets in
// groups -- behind an interface free of HDF5 and libtorch types, so that any
// module can write a file h5py reads (eval dumps, TTT dumps).
//
// Writing builds the whole file in memory (HDF5's core driver) and then writes
// its bytes through AtomicFile, as checkpoints do (model/checkpoint.cpp says
// why): readers see the old file or the complete new one, and HDF5 never meets
// an I/O error. Files carry no timestamps (same data, same bytes).
// Reading checks shapes and types against the file before allocating, and
// every problem is a pgolf::Error "PATH: problem".
// HDF5 (serial build) is not thread-safe: use these from one thread at a time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pgolf {

class H5Writer {
 public:
  // size_hint: expected payload bytes (the in-memory image grows in steps of it).
  explicit H5Writer(std::string path, uint64_t size_hint = 0);
  ~H5Writer();
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  // Root attributes: scalar string, 1-D string array, int64, float64.
  void attr_string(const std::string& name, const std::string& value);
  void attr_strings(const std::string& name, const std::vector<std::string>& values);
  void attr_int(const std::string& name, int64_t value);
  void attr_float(const std::string& name, double value);
  void group(const std::string& name);  // a group under the root
  // A 1-D dataset "name" or "group/name" (the group must exist). T is one of
  // uint8_t, uint16_t, uint32_t, uint64_t, int64_t, float, double.
  template <class T>
  void dataset(const std::string& name, const std::vector<T>& values);
  void commit();  // image -> PATH.tmp.XXXXXX -> fsync -> rename

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class H5Reader {
 public:
  explicit H5Reader(std::string path);  // "PATH: not an HDF5 file", ...
  ~H5Reader();
  H5Reader(const H5Reader&) = delete;
  H5Reader& operator=(const H5Reader&) = delete;

  const std::string& path() const;
  bool has_attr(const std::string& name) const;
  std::vector<std::string> attr_names() const;         // the root's, by name
  bool attr_is_string(const std::string& name) const;  // exists and is one string (scalar or 1 element)
  // Each fails naming the attribute when it is missing or of another kind.
  std::string attr_string(const std::string& name) const;
  std::vector<std::string> attr_strings(const std::string& name) const;  // a 1-D array or a single string
  int64_t attr_int(const std::string& name) const;
  double attr_float(const std::string& name) const;  // integers are accepted too
  bool has(const std::string& name) const;            // "group" or "group/dataset" exists
  // A 1-D dataset of the same kind (integer for integral T, float for floating
  // T), converted to T. Fails naming it when missing, of another rank or kind,
  // or larger than the file can hold.
  template <class T>
  std::vector<T> read(const std::string& name) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pgolf
