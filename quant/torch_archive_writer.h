// Writing what Python's torch.save writes, without Python: a pickle
// (protocol 2) emitter for the few kinds of values a state dict holds, and the
// ZIP layout of torch's PyTorchStreamWriter (miniz). The reader is
// quant/torch_archive.h; docs/ARTIFACT_FORMAT.md ("Export") says where this
// is used.
//
// The goal is the same bytes as torch.save (torch 2.9, the reference's), so
// the pickler follows CPython's _pickle and the ZIP follows
// caffe2/serialize/inline_container.cc + miniz 3.0.2 (PyTorch's copy,
// MINIZ_NO_TIME):
//
// Pickle (CPython, protocol 2). PROTO 2, the object, STOP. str: BINUNICODE
// (UTF-8) then BINPUT; int: BININT1 / BININT2 / BININT / LONG1 by size (never
// memoized); bool: NEWTRUE / NEWFALSE; tuple: EMPTY_TUPLE (0 items, not
// memoized), the items then TUPLE1..3 (1-3 items) or MARK items TUPLE, then
// BINPUT; dict: EMPTY_DICT, BINPUT, then one SETITEM (1 entry) or batches of
// up to 1000 entries as MARK ... SETITEMS (an exactly full last batch is
// followed by an empty MARK SETITEMS, as CPython writes it). Objects the
// program shares (the same PyValue pointer, the same global) are written
// once and fetched with BINGET / LONG_BINGET afterwards: CPython's memo is by
// object identity, so whether a string is shared decides the bytes.
//
// A tensor is Tensor.__reduce_ex__ of a plain CPU tensor:
//   GLOBAL torch._utils _rebuild_tensor_v2
//   (storage, 0, size, stride, False, collections.OrderedDict()) REDUCE
// where the storage is a persistent id
//   ('storage', torch.<Type>Storage, '<key>', 'cpu', numel)  BINPERSID
// with keys "0", "1", ... in order of first appearance, and the two string
// constants shared (memoized) across all tensors as in torch's code. Each
// tensor here owns its storage: offset 0, contiguous strides.
//
// ZIP (PyTorchStreamWriter on miniz). Records, all under "<archive_name>/":
//   data.pkl, .format_version ("1"), .storage_alignment ("64"),
//   byteorder ("little"), data/0, data/1, ... (torch.save's Python side),
//   version ("3\n"), .data/serialization_id (writeEndOfFile).
// Each record: local header (version needed 0, flags 0x0808 = data
// descriptor + UTF-8 names, method 0 = stored, DOS time and date 0, CRC and
// sizes 0), the name, an extra field "FB" + u16 n + n bytes of 'Z' so that
// the data starts at a multiple of 64, the data, a 16-byte data descriptor
// (PK\7\8, CRC-32, sizes). Central directory entries carry no extra field.
// Then a ZIP64 end record (version made by 0x031E, needed 45), its locator,
// and the classic end record -- miniz writes the ZIP64 records always.
// The serialization id is 20 decimal digits of a hash_combine over
// std::hash of the record names (in the iteration order of a
// std::unordered_set<std::string> filled in write order) and 20 of a
// hash_combine over the records' CRC-32s, as writeSerializationId computes
// them (with libstdc++'s std::hash, the one PyTorch's Linux wheels use).
//
// Archives of 4 GiB or more (which torch writes with ZIP64 extra fields)
// are refused.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "quant/torch_archive.h"

namespace pgolf::quant {

// ---- values ------------------------------------------------------------------

// A Python object for the pickler. Identity matters: a PyValue reached twice
// through the same pointer is one Python object (memoized), two PyValues with
// equal contents are two objects (each written in full).
struct PyValue {
  enum class Kind : uint8_t { None, Bool, Int, Str, Tuple, Dict, Tensor };
  Kind kind = Kind::None;
  bool b = false;
  int64_t i = 0;
  std::string s;                                                      // Str (UTF-8)
  std::vector<std::shared_ptr<PyValue>> items;                        // Tuple
  std::vector<std::pair<std::shared_ptr<PyValue>, std::shared_ptr<PyValue>>> entries;  // Dict, in order
  // Tensor: a contiguous CPU tensor with its own storage.
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  std::string data;  // numel * dtype_size bytes, little-endian, row-major
};
using PyRef = std::shared_ptr<PyValue>;

PyRef py_none();
PyRef py_bool(bool v);
PyRef py_int(int64_t v);
PyRef py_str(std::string v);
PyRef py_tuple(std::vector<PyRef> items);
PyRef py_dict();  // then dict_set
void dict_set(const PyRef& dict, PyRef key, PyRef value);  // appends (keys are not checked for repeats)
// `data` must hold exactly numel(shape) * dtype_size(dtype) bytes (checked).
PyRef py_tensor(DType dtype, std::vector<int64_t> shape, std::string data);

// torch's legacy storage class for a dtype: "FloatStorage", "HalfStorage",
// "BFloat16Storage", "CharStorage", ...
const char* storage_class_name(DType t);

// ---- pickle --------------------------------------------------------------------

// data.pkl for `root`, and the tensors in storage-key order (key i is
// storages[i]); the pointers stay valid while `root` lives.
std::string pickle_torch_object(const PyRef& root, std::vector<const PyValue*>* storages);

// ---- zip -------------------------------------------------------------------------

// The ZIP container of PyTorchStreamWriter (see the top of this file).
class TorchZipWriter {
 public:
  explicit TorchZipWriter(std::string archive_name = "archive", uint64_t alignment = 64);
  // Appends one stored record "<archive_name>/<name>". Names must be unique.
  void write_record(const std::string& name, std::string_view data);
  // writeEndOfFile: "version" and "byteorder" unless written, the
  // serialization id, the central directory and end records. Returns the
  // archive; the writer is spent afterwards.
  std::string finish();

 private:
  struct Entry {
    std::string name;  // full name
    uint32_t crc = 0;
    uint64_t size = 0, header_offset = 0;
  };
  std::string archive_name_;
  uint64_t alignment_;
  std::string out_;
  std::vector<Entry> entries_;
  std::vector<std::string> written_;  // record names in write order (without the prefix)
  uint64_t combined_crc_ = 0;
  bool finished_ = false;
};

// ---- torch.save --------------------------------------------------------------------

struct TorchSaveOptions {
  // torch.save into a buffer (io.BytesIO) names the folder "archive"; into a
  // path, the file name without its extension.
  std::string archive_name = "archive";
};

// The bytes torch.save(root, buffer) writes.
std::string torch_save_bytes(const PyRef& root, const TorchSaveOptions& opt = {});

}  // namespace pgolf::quant
