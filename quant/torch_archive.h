// Reading torch.save checkpoints without Python and without running pickle
// code: a bounds-checked ZIP reader, a pickle *interpreter* that only builds
// data (plus tensors through an allowlist of torch globals), and the two
// parameter-golf wrappers (.int8.ptz = zlib, .int6.ptz = brotli + BSHF).
//
// A torch.save file (the "new" zip format, torch >= 1.6) is a ZIP archive
// whose entries all sit in one folder (any name; torch takes the folder of
// the first entry):
//   <prefix>/data.pkl        the pickled object (protocol 2 by default)
//   <prefix>/data/<key>      raw little-endian bytes of storage <key>
//   <prefix>/version         decimal format version (libtorch may write it last)
//   <prefix>/byteorder       "little" (torch >= 1.12; absent means little)
//   <prefix>/.format_version, .storage_alignment, .data/serialization_id
//                            newer torch; ignored here
// Entries are stored (method 0) with data 64-byte aligned; miniz sets the
// data-descriptor flag and always writes a ZIP64 end record. Deflated
// entries (which torch can read but torch.save never writes) are inflated.
//
// Inside data.pkl a tensor is
//   torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//                                   requires_grad, backward_hooks[, metadata])
// where `storage` comes from a persistent id
//   ('storage', torch.<Type>Storage, key, location, numel)
// and numel counts elements of the storage's dtype.
//
// Every problem with the bytes ends in one pgolf::Error line naming `what`
// (usually the file path); hostile input never crashes and never allocates
// more than the limits below allow.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace at {
class Tensor;  // to_tensor() lives in torch_archive_tensor.cpp; no libtorch here
}

namespace pgolf::quant {

// ---- dtypes ------------------------------------------------------------------

enum class DType : uint8_t { Float32, Float64, Float16, BFloat16, Int8, UInt8, Int16, Int32, Int64, Bool };

int dtype_size(DType t);          // bytes per element
const char* dtype_name(DType t);  // torch's spelling without "torch.": "float32", "bfloat16", ...
// Canonical names plus torch's aliases ("float", "half", "double", "long",
// "int", "short"); false for anything else. The .ptz files store dtypes as
// these strings (str(t.dtype) minus "torch.").
bool dtype_from_name(std::string_view name, DType* out);
bool dtype_is_float(DType t);

// ---- values ------------------------------------------------------------------

// A tensor as the checkpoint describes it: a strided view of a storage.
struct TensorRef {
  std::string storage_key;  // <prefix>/data/<storage_key>
  DType dtype = DType::Float32;
  int64_t offset = 0;       // in elements
  std::vector<int64_t> sizes, strides;  // strides in elements, all >= 0
  bool requires_grad = false;

  int64_t numel() const;  // product of sizes (1 for a 0-d tensor); -1 if sizes/strides are invalid
  // Elements of the storage the view touches, counted from `offset`:
  // 0 when numel() == 0, else 1 + sum((size - 1) * stride).
  int64_t extent() const;
  bool is_contiguous() const;  // row-major, no gaps
};

// One value of the unpickled object graph. A plain struct: `kind` says which
// fields mean something. Containers point at other values owned by the same
// PickleDoc (values can be shared, as in Python; cycles are rejected).
struct PickleValue {
  enum class Kind : uint8_t {
    None, Bool, Int, Float, Str, Bytes,
    Tuple, List, Dict,
    Tensor,   // `tensor`
    DType,    // a torch.<dtype> object used as a value; `dtype`
    Storage,  // a storage from a persistent id; key in `s`, `dtype`, `numel`
    Global,   // an allowlisted class/function used as a value; "module.name" in `s`
  };
  Kind kind = Kind::None;
  bool b = false;     // Bool
  int64_t i = 0;      // Int; Storage: numel
  double f = 0;       // Float
  std::string s;      // Str (UTF-8), Bytes, Storage key, Global name
  DType dtype = DType::Float32;                               // DType, Storage
  std::vector<PickleValue*> items;                            // Tuple, List
  std::vector<std::pair<PickleValue*, PickleValue*>> entries;  // Dict, insertion order
  TensorRef tensor;                                           // Tensor

  bool is(Kind k) const { return kind == k; }
  const char* kind_name() const;
  // Dict lookup by string key; nullptr when absent or not a Dict.
  const PickleValue* find(std::string_view key) const;
  // Number of items (Tuple/List) or entries (Dict); 0 otherwise.
  size_t size() const { return kind == Kind::Dict ? entries.size() : items.size(); }

  // Key index of a Dict: key hash -> position in `entries` (Python dict
  // semantics: a repeated key overwrites the value in place). Keys: None,
  // bool, int, float, str, bytes.
  std::unique_ptr<std::unordered_multimap<uint64_t, size_t>> index;
};

// ---- pickle ------------------------------------------------------------------

// What one pickle program may cost. Values are shared through the memo, so
// input size alone bounds nothing: every kind of growth has its own budget.
// With the defaults the worst case stays under about half a GiB; a real
// state dict uses a tiny fraction (a few values per tensor).
struct PickleLimits {
  uint64_t max_program = 64ull << 20;       // bytes of data.pkl
  size_t max_values = 1 << 19;              // values created (~300 bytes each)
  size_t max_items = 1 << 21;               // elements put into tuples, lists and dicts, in total
  uint64_t max_string_bytes = 128ull << 20;  // str/bytes contents created, in total
  size_t max_key_bytes = 1024;              // one dict key (keys are hashed and compared)
  size_t max_stack = 1 << 20;               // stack entries
  size_t max_marks = 1 << 16;               // open MARKs
  size_t max_memo = 1 << 19;                // memo entries
  size_t max_depth = 256;                   // nesting of the result
  uint64_t max_tree = 1ull << 26;           // result size counting shared values each time they appear
  int max_ndim = 64;                        // tensor rank
};

struct StorageInfo {
  DType dtype = DType::Float32;
  int64_t numel = 0;  // elements, as the persistent id says
};

// The result of running a pickle program: the root value, the arena that
// owns every value, and the storages referenced by persistent ids.
class PickleDoc {
 public:
  PickleDoc() = default;
  PickleDoc(PickleDoc&&) = default;
  PickleDoc& operator=(PickleDoc&&) = default;
  const PickleValue& root() const { return *root_; }
  const std::map<std::string, StorageInfo>& storages() const { return storages_; }
  size_t value_count() const { return arena_.size(); }

 private:
  friend class Unpickler;
  std::vector<std::unique_ptr<PickleValue>> arena_;
  PickleValue* root_ = nullptr;
  std::map<std::string, StorageInfo> storages_;
};

// Runs `program` (a pickle, protocols 0-5 as far as torch checkpoints use
// them) and returns the data it builds. Only these globals are accepted:
//   collections.OrderedDict (REDUCE/NEWOBJ with no items, BUILD ignored)
//   torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter /
//     _rebuild_parameter_with_state                  -> Tensor
//   torch._tensor._rebuild_from_type_v2(func, torch.Tensor|Parameter, args, state)
//                                                    -> func(*args), state dropped
//   torch.<X>Storage, torch.UntypedStorage           (inside persistent ids)
//   torch.<dtype> (torch.float32, torch.bfloat16, ...) -> DType
//   torch.Size(tuple)                                -> Tuple
//   torch.jit._pickle.restore_type_tag / build_intlist / build_doublelist /
//     build_boollist / build_tensorlist              (libtorch's pickler)
//   _codecs.encode(str, "latin1")                    -> Bytes (protocol 2 bytes)
// Any other global is an error naming it. `what` prefixes every error.
PickleDoc parse_pickle(std::string_view program, const std::string& what, const PickleLimits& limits = {});

// ---- zip ---------------------------------------------------------------------

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflated
  uint32_t crc = 0;
  uint64_t comp_size = 0, size = 0;
  uint64_t data_offset = 0;  // first byte of the (compressed) data
};

// The central directory of a ZIP held in memory. `bytes` must outlive the
// reader. Handles ZIP64 end records and extra fields; rejects multi-disk and
// encrypted archives.
class ZipReader {
 public:
  ZipReader(std::string_view bytes, std::string what, size_t max_entries = 1 << 16);
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(std::string_view name) const;
  // The entry's bytes, CRC-checked (a stored CRC of 0 is not checked: newer
  // torch can skip CRCs). Stored: a view into `bytes`. Deflated: inflated
  // into *scratch (at most max_size bytes) and a view of it returned.
  std::string_view read(const ZipEntry& e, std::string* scratch, uint64_t max_size) const;

 private:
  std::string_view bytes_;
  std::string what_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
};

// ---- torch archive -------------------------------------------------------------

struct ArchiveLimits {
  uint64_t max_file = 4ull << 30;          // whole archive
  uint64_t max_inflated = 2ull << 30;      // deflated entries, inflated (all storages together)
  uint64_t max_tensor_bytes = 4ull << 30;  // one tensor materialized (stride-0 views can be huge)
  size_t max_entries = 1 << 16;
  PickleLimits pickle;
};

class TorchArchive {
 public:
  // Reads and validates the whole archive: directory, data.pkl, and that
  // every storage the pickle names exists with exactly numel * dtype_size
  // bytes. Tensors are checked against their storage while unpickling.
  static TorchArchive open(const std::string& path, const ArchiveLimits& limits = {});
  static TorchArchive from_bytes(std::string bytes, const std::string& what, const ArchiveLimits& limits = {});

  TorchArchive(TorchArchive&&) = default;
  TorchArchive& operator=(TorchArchive&&) = default;

  const PickleValue& root() const { return doc_.root(); }
  const PickleDoc& doc() const { return doc_; }
  const std::string& what() const { return what_; }
  const std::string& prefix() const { return prefix_; }  // the archive's folder name
  uint64_t version() const { return version_; }

  // All bytes of storage `key`.
  std::string_view storage_bytes(std::string_view key) const;
  // The bytes a tensor spans: from its offset through its last element
  // (extent() * dtype_size bytes). For a contiguous tensor, exactly its data.
  // Checks the storage exists and covers the view; errors name the storage.
  std::string_view tensor_bytes(const TensorRef& t) const;
  // The tensor's elements in row-major order (numel() * dtype_size bytes).
  std::string contiguous_bytes(const TensorRef& t) const;

 private:
  TorchArchive() = default;
  void load(const ArchiveLimits& limits);

  std::unique_ptr<std::string> bytes_;  // the whole file (heap: views into it survive moves)
  std::string what_, prefix_;
  uint64_t version_ = 0;
  uint64_t max_tensor_bytes_ = 0;
  PickleDoc doc_;
  std::map<std::string, std::string_view, std::less<>> storages_;  // key -> bytes
  std::map<std::string, std::string> inflated_;  // storages that were deflated
};

// A CPU tensor owning a row-major copy of `t`'s elements (same dtype and
// sizes). Defined in torch_archive_tensor.cpp (links libtorch).
at::Tensor to_tensor(const TorchArchive& archive, const TensorRef& t);

// ---- parameter-golf artifacts ---------------------------------------------------

// zlib stream (RFC 1950, what Python's zlib.compress writes) -> bytes. More
// than max_size output bytes, truncation, a bad checksum or trailing bytes
// are errors naming `what`.
std::string zlib_inflate(std::string_view in, uint64_t max_size, const std::string& what);

// final_model.int8.ptz (root train_gpt.py): zlib(torch.save bytes).
TorchArchive open_int8_ptz(const std::string& path, uint64_t max_raw = 1ull << 30);
// final_model.int6.ptz (2026-04-10_VarLenAttn): brotli(BSHF byte shuffle(torch.save bytes)).
// Uses quant/codec.h (decompress + byte_unshuffle); like the reference
// reader, an unshuffled payload (no "BSHF" magic) is taken as is.
TorchArchive open_int6_ptz(const std::string& path, uint64_t max_raw = 1ull << 30);

}  // namespace pgolf::quant
