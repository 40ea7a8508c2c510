// The pgolf checkpoint: an HDF5 file anyone can open with h5py.
//
//   /                          root group
//     @format         = "pgolf-checkpoint"   (string attribute)
//     @format_version = 1                     (int64 attribute)
//     @config         = model config JSON     (string attribute)
//     @<key>          = extra string attributes (training state JSON, ...)
//     <param name>               one dataset per parameter, the tensor's shape,
//                                e.g. "blocks.0.attn.c_q.weight" (dots, no slashes)
//     state/<name>               optional extra tensors (optimizer moments, ...)
//
// Datasets are contiguous and uncompressed, in little-endian standard types.
// float16 is HDF5's IEEE half layout (h5py reads numpy float16), bool is h5py's
// FALSE/TRUE int8 enum (numpy bool), and bfloat16 is a uint16 dataset of the raw
// bits with a string attribute dtype="bfloat16" (checkpoint.cpp says why).
// Datasets keep their write order (link creation order is tracked).
// Files are byte-reproducible: no timestamps are stored.
//
// Strings (config, attribute keys/values, names) must not contain NUL bytes.
// HDF5 (serial build) is not thread-safe: call these from one thread at a time.
// No libtorch here: tensors are plain bytes; model/ converts.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/dtype.h"

namespace pgolf {

inline constexpr const char* kCheckpointFormat = "pgolf-checkpoint";
inline constexpr int64_t kCheckpointFormatVersion = 1;
inline constexpr int kCheckpointMaxRank = 8;

// A tensor as bytes: data holds prod(shape) * dtype_size(dtype) bytes, row-major,
// little-endian. shape {} is a scalar (one element). A name is either a
// parameter name ("tok_emb.weight") or "state/<name>" for the /state group.
struct CheckpointTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

struct Checkpoint {
  std::string config_json;
  std::map<std::string, std::string> attrs;  // extra root string attributes (not format/format_version/config)
  std::vector<CheckpointTensor> tensors;     // in write order; /state tensors last

  const CheckpointTensor* find(const std::string& name) const;  // nullptr when absent
};

// What list_checkpoint reports per tensor: everything but the data.
struct CheckpointTensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;  // prod(shape) * dtype_size(dtype)
};

struct CheckpointInfo {
  std::string config_json;
  std::map<std::string, std::string> attrs;
  std::vector<CheckpointTensorInfo> tensors;
  uint64_t file_bytes = 0;
};

// Writes atomically: the HDF5 file is built in memory, written to
// PATH.tmp.XXXXXX in the same directory (parents created), fsynced and renamed
// (data/atomic_file.h). On failure the temporary is removed, PATH is left as it
// was and pgolf::Error names PATH. Everything is validated before a byte is
// written; reserved attribute keys (format, format_version, config) are
// rejected. Peak memory: the tensors plus about twice the file size.
void write_checkpoint(const std::string& path, const std::string& config_json,
                      const std::vector<CheckpointTensor>& tensors,
                      const std::map<std::string, std::string>& attrs = {});

// Reads everything; throws pgolf::Error (one line naming PATH) on any problem.
Checkpoint read_checkpoint(const std::string& path);

// Names, dtypes, shapes and sizes without reading tensor data (`pgolf inspect`).
CheckpointInfo list_checkpoint(const std::string& path);

}  // namespace pgolf
