#include "model/model_io.h"

#include <cstring>

#include "data/atomic_file.h"
#include "data/error.h"
#include "model/checkpoint.h"
#include "model/pch.h"

namespace pgolf {

namespace {

at::ScalarType to_scalar_type(DType t, const std::string& path, const std::string& name) {
  switch (t) {
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::F64: return at::kDouble;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::I16: return at::kShort;
    case DType::I32: return at::kInt;
    case DType::I64: return at::kLong;
    case DType::Bool: return at::kBool;
    default: fail(path, "tensor " + name + " has a dtype libtorch cannot hold (" + dtype_name(t) + ")");
  }
}

DType to_dtype(at::ScalarType t, const std::string& name) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kDouble: return DType::F64;
    case at::kChar: return DType::I8;
    case at::kByte: return DType::U8;
    case at::kShort: return DType::I16;
    case at::kInt: return DType::I32;
    case at::kLong: return DType::I64;
    case at::kBool: return DType::Bool;
    default: throw Error("checkpoint: tensor " + name + " has an unsupported dtype");
  }
}

}  // namespace

ModelConfig apply_config_overrides(ModelConfig cfg, const ModelSource& src) {
  if (!src.config_path.empty()) cfg = ModelConfig::from_json(read_file(src.config_path), src.config_path, cfg);
  if (!src.log_path.empty()) {
    const auto hp = parse_hyperparameters_log(read_file(src.log_path), src.log_path);
    apply_hyperparameters(cfg, hp, src.log_path);
  }
  for (const std::string& s : src.sets) cfg.set(s);
  cfg.validate();
  return cfg;
}

GptWeights load_model(const ModelSource& src) {
  Checkpoint ck = read_checkpoint(src.path);
  GptWeights w;
  try {
    w.config = apply_config_overrides(ModelConfig::from_json(ck.config_json, src.path + " (config attribute)"), src);
  } catch (const Error& e) {
    fail(src.path, e.what());
  }
  for (CheckpointTensor& t : ck.tensors) {
    if (t.name.rfind("state/", 0) == 0) continue;  // training state, not weights
    const at::ScalarType st = to_scalar_type(t.dtype, src.path, t.name);
    at::Tensor x = at::empty(t.shape, at::TensorOptions().dtype(st));
    if (size_t(x.nbytes()) != t.data.size()) fail(src.path, "tensor " + t.name + " has the wrong byte size");
    if (!t.data.empty()) std::memcpy(x.data_ptr(), t.data.data(), t.data.size());
    w.tensors[t.name] = x;
    std::vector<uint8_t>().swap(t.data);  // release as we go
  }
  check_weights(w, src.path);
  return w;
}

void save_checkpoint(const std::string& path, const GptWeights& w) {
  std::vector<CheckpointTensor> out;
  for (const ParamSpec& p : parameter_specs(w.config)) {
    at::Tensor t = w.get(p.name).detach().to(at::kCPU).contiguous();
    CheckpointTensor c;
    c.name = p.name;
    c.dtype = to_dtype(t.scalar_type(), p.name);
    c.shape = t.sizes().vec();
    c.data.resize(t.nbytes());
    if (!c.data.empty()) std::memcpy(c.data.data(), t.data_ptr(), c.data.size());
    out.push_back(std::move(c));
  }
  write_checkpoint(path, w.config.to_json(), out);
}

}  // namespace pgolf
