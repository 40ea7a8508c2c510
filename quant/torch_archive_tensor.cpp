// TensorRef -> at::Tensor. The only part of the torch-archive reader that
// needs libtorch; kept apart so torch_archive.cpp compiles fast and without it.
#include <ATen/ATen.h>

#include <cstring>

#include "data/error.h"
#include "quant/torch_archive.h"

namespace pgolf::quant {

namespace {

at::ScalarType scalar_type(DType t) {
  switch (t) {
    case DType::Float32: return at::kFloat;
    case DType::Float64: return at::kDouble;
    case DType::Float16: return at::kHalf;
    case DType::BFloat16: return at::kBFloat16;
    case DType::Int8: return at::kChar;
    case DType::UInt8: return at::kByte;
    case DType::Int16: return at::kShort;
    case DType::Int32: return at::kInt;
    case DType::Int64: return at::kLong;
    case DType::Bool: return at::kBool;
  }
  return at::kByte;
}

}  // namespace

at::Tensor to_tensor(const TorchArchive& archive, const TensorRef& t) {
  // contiguous_bytes checks the view against its storage and the size limit;
  // copying (rather than wrapping the archive's bytes) gives the tensor its own
  // aligned memory and lets the archive go away.
  std::string bytes = archive.contiguous_bytes(t);
  at::Tensor out = at::empty(t.sizes, at::TensorOptions().dtype(scalar_type(t.dtype)));
  if (static_cast<uint64_t>(out.nbytes()) != bytes.size()) {
    fail(archive.what(), "tensor on storage '" + t.storage_key + "' has an inconsistent byte count");
  }
  if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
  return out;
}

}  // namespace pgolf::quant
