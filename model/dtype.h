// Element types of plain (libtorch-free) tensors: checkpoints, artifacts.
// Names follow numpy/torch spelling ("float32", "bfloat16", "bool") so they
// read the same in `pgolf inspect`, in JSON and in Python.
#pragma once
#include <cstddef>
#include <string>

namespace pgolf {

enum class DType { F32, F16, BF16, F64, I8, U8, I16, U16, I32, I64, Bool };

inline constexpr DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I8,  DType::U8,
                                       DType::I16, DType::U16, DType::I32,  DType::I64, DType::Bool};

// Bytes per element.
inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 2;
    case DType::I8: case DType::U8: case DType::Bool: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F64: return "float64";
    case DType::I8: return "int8";
    case DType::U8: return "uint8";
    case DType::I16: return "int16";
    case DType::U16: return "uint16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::Bool: return "bool";
  }
  return "?";
}

// Inverse of dtype_name; false for an unknown name.
inline bool parse_dtype(const std::string& name, DType* out) {
  for (DType t : kAllDTypes)
    if (name == dtype_name(t)) {
      *out = t;
      return true;
    }
  return false;
}

inline bool dtype_is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

}  // namespace pgolf
