#include "quant/model_files.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include "data/error.h"
#include "model/pch.h"
#include "quant/artifact.h"
#include "quant/quantize.h"
#include "quant/torch_archive.h"

namespace pgolf {

namespace {

std::string head_bytes(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open");
  std::string s(n, '\0');
  in.read(&s[0], std::streamsize(n));
  s.resize(size_t(in.gcount()));
  return s;
}

const quant::PickleValue& need(const quant::PickleValue* v, const std::string& path, const std::string& what) {
  if (!v) fail(path, "not a parameter-golf file: no '" + what + "' entry");
  return *v;
}

// {name: tensor} of a pickled dict (other value kinds are an error).
std::map<std::string, at::Tensor> tensor_dict(const quant::TorchArchive& a, const quant::PickleValue& d,
                                              const std::string& path, const std::string& what) {
  if (!d.is(quant::PickleValue::Kind::Dict)) fail(path, "'" + what + "' is not a dict");
  std::map<std::string, at::Tensor> out;
  for (const auto& [k, v] : d.entries) {
    if (!k->is(quant::PickleValue::Kind::Str)) fail(path, "'" + what + "' has a non-string key");
    if (!v->is(quant::PickleValue::Kind::Tensor)) fail(path, "'" + what + "' entry " + k->s + " is not a tensor");
    out[k->s] = quant::to_tensor(a, v->tensor);
  }
  return out;
}

std::map<std::string, std::string> string_dict(const quant::PickleValue* d) {
  std::map<std::string, std::string> out;
  if (!d || !d->is(quant::PickleValue::Kind::Dict)) return out;
  for (const auto& [k, v] : d->entries)
    if (k->is(quant::PickleValue::Kind::Str) && v->is(quant::PickleValue::Kind::Str)) out[k->s] = v->s;
  return out;
}

at::ScalarType dtype_from_text(const std::string& s, const std::string& path) {
  if (s == "float32") return at::kFloat;
  if (s == "bfloat16") return at::kBFloat16;
  if (s == "float16") return at::kHalf;
  if (s == "float64") return at::kDouble;
  fail(path, "unsupported original dtype '" + s + "'");
}

// Per-row (2-D scale vector) or per-tensor (0-d scale) dequantization.
at::Tensor dequantize(const at::Tensor& q, const at::Tensor& s) {
  at::Tensor qf = q.to(at::kFloat);
  if (s.dim() == 0) return qf * s.to(at::kFloat).item<float>();
  std::vector<int64_t> shape(size_t(q.dim()), 1);
  shape[0] = q.size(0);
  return qf * s.to(at::kFloat).view(shape);
}

// The baseline artifact (SPEC §7).
std::map<std::string, at::Tensor> read_int8_ptz(const std::string& path) {
  quant::TorchArchive a = quant::open_int8_ptz(path);
  const quant::PickleValue& root = a.root();
  const quant::PickleValue* fmt = root.find("__quant_format__");
  if (!fmt || !fmt->is(quant::PickleValue::Kind::Str) || fmt->s != "int8_clean_per_row_v1")
    fail(path, "not an int8_clean_per_row_v1 artifact");
  auto quantized = tensor_dict(a, need(root.find("quantized"), path, "quantized"), path, "quantized");
  auto scales = tensor_dict(a, need(root.find("scales"), path, "scales"), path, "scales");
  auto passthrough = tensor_dict(a, need(root.find("passthrough"), path, "passthrough"), path, "passthrough");
  auto dtypes = string_dict(root.find("dtypes"));
  auto orig = string_dict(root.find("passthrough_orig_dtypes"));
  std::map<std::string, at::Tensor> out;
  for (auto& [name, q] : quantized) {
    auto s = scales.find(name);
    if (s == scales.end()) fail(path, "no scale for quantized tensor " + name);
    if (s->second.dim() > 0 && (q.dim() == 0 || s->second.numel() != q.size(0)))
      fail(path, "scale of " + name + " does not match its rows");
    auto dt = dtypes.find(name);
    out[name] = dequantize(q, s->second).to(dt == dtypes.end() ? at::kFloat : dtype_from_text(dt->second, path));
  }
  for (auto& [name, t] : passthrough) {
    auto o = orig.find(name);
    out[name] = o == orig.end() ? t : t.to(dtype_from_text(o->second, path));
  }
  return out;
}

// The frontier artifact (SPEC §11): {"w": tensors, "m": {name: kind}}.
std::map<std::string, at::Tensor> read_int6_ptz(const std::string& path) {
  quant::TorchArchive a = quant::open_int6_ptz(path);
  auto w = tensor_dict(a, need(a.root().find("w"), path, "w"), path, "w");
  auto meta = string_dict(a.root().find("m"));
  if (meta.empty()) fail(path, "not an int6 artifact: no 'm' entries");
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, kind] : meta) {
    if (kind.rfind("passthrough", 0) == 0) {
      auto t = w.find(name);
      if (t == w.end()) fail(path, "missing passthrough tensor " + name);
      out[name] = at::isFloatingType(t->second.scalar_type()) ? t->second.to(at::kFloat) : t->second;
    } else if (kind.rfind("gptq", 0) == 0) {
      auto q = w.find(name + ".q"), s = w.find(name + ".scale");
      if (q == w.end() || s == w.end()) fail(path, "missing .q or .scale of " + name);
      if (q->second.dim() < 1 || s->second.dim() != 1 || s->second.numel() != q->second.size(0))
        fail(path, "scale of " + name + " does not match its rows");
      // The reference restores each tensor to its template dtype: bf16 for the embedding, float32 otherwise.
      out[name] = dequantize(q->second, s->second).to(name == "tok_emb.weight" ? at::kBFloat16 : at::kFloat);
    } else {
      fail(path, "unknown quantization '" + kind + "' for " + name);
    }
  }
  return out;
}

// Banked frontier weights -> the unbanked per-layer names (SPEC §10).
void unbank(std::map<std::string, at::Tensor>& s, const std::string& path) {
  if (!s.count("qo_bank")) return;
  for (const char* b : {"kv_bank", "mlp_up_bank", "mlp_down_bank"})
    if (!s.count(b)) fail(path, std::string("banked state dict without ") + b);
  const at::Tensor qo = s["qo_bank"], kv = s["kv_bank"], up = s["mlp_up_bank"], down = s["mlp_down_bank"];
  if (qo.dim() != 3 || qo.size(0) % 2 != 0) fail(path, "qo_bank must be [2n, d, d]");
  const int64_t n = qo.size(0) / 2;
  if (kv.dim() != 3 || kv.size(0) != 2 * n || up.dim() != 3 || up.size(0) != n || down.dim() != 3 || down.size(0) != n)
    fail(path, "bank sizes disagree with qo_bank's layer count");
  for (int64_t i = 0; i < n; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    s[b + "attn.c_q.weight"] = qo[i].clone();
    s[b + "attn.proj.weight"] = qo[n + i].clone();
    s[b + "attn.c_k.weight"] = kv[i].clone();
    s[b + "attn.c_v.weight"] = kv[n + i].clone();
    s[b + "mlp.fc.weight"] = up[i].clone();
    s[b + "mlp.proj.weight"] = down[i].clone();
  }
  for (const char* b : {"qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank"}) s.erase(b);
}

std::map<std::string, at::Tensor> read_state_dict(const std::string& path) {
  quant::TorchArchive a = quant::TorchArchive::open(path);
  const quant::PickleValue& root = a.root();
  // A bare state dict, or one wrapped as {"model" | "state_dict": ...}.
  const quant::PickleValue* d = &root;
  for (const char* key : {"state_dict", "model"})
    if (const quant::PickleValue* inner = root.find(key); inner && inner->is(quant::PickleValue::Kind::Dict)) d = inner;
  auto s = tensor_dict(a, *d, path, "state dict");
  unbank(s, path);
  return s;
}

int64_t dim(const std::map<std::string, at::Tensor>& s, const std::string& name, int axis, const std::string& path) {
  auto it = s.find(name);
  if (it == s.end()) fail(path, "cannot infer the config: no tensor " + name);
  if (it->second.dim() <= axis) fail(path, "cannot infer the config: " + name + " has too few dimensions");
  return it->second.size(axis);
}

}  // namespace

const char* model_file_kind_name(ModelFileKind k) {
  switch (k) {
    case ModelFileKind::Checkpoint: return "pgolf checkpoint (HDF5)";
    case ModelFileKind::TorchStateDict: return "torch.save state dict";
    case ModelFileKind::Int8Ptz: return "int8 + zlib artifact (baseline)";
    case ModelFileKind::Int6Ptz: return "int6 + brotli artifact (frontier)";
    case ModelFileKind::Artifact: return "pgolf artifact";
  }
  return "?";
}

ModelFileKind detect_model_file(const std::string& path) {
  const std::string h = head_bytes(path, 8);
  if (h.size() < 2) fail(path, "too short to be a model file");
  if (h.compare(0, 8, "\x89HDF\r\n\x1a\n", 8) == 0) return ModelFileKind::Checkpoint;
  if (quant::is_artifact(h)) return ModelFileKind::Artifact;
  if (h.compare(0, 4, "PK\x03\x04", 4) == 0) return ModelFileKind::TorchStateDict;
  const unsigned cmf = static_cast<unsigned char>(h[0]), flg = static_cast<unsigned char>(h[1]);
  if ((cmf & 0x0F) == 8 && (cmf >> 4) <= 7 && (cmf * 256 + flg) % 31 == 0) return ModelFileKind::Int8Ptz;
  return ModelFileKind::Int6Ptz;  // brotli has no magic: its reader says so if it is not one
}

std::map<std::string, at::Tensor> read_reference_state(const std::string& path, ModelFileKind kind) {
  switch (kind) {
    case ModelFileKind::TorchStateDict: return read_state_dict(path);
    case ModelFileKind::Int8Ptz: return read_int8_ptz(path);
    case ModelFileKind::Int6Ptz: return read_int6_ptz(path);
    default: fail(path, "not a torch file");
  }
}

ModelConfig infer_config(const std::map<std::string, at::Tensor>& s, const std::string& path, std::string* notes) {
  const bool frontier = s.count("skip_gates") || s.count("lane_merge") || s.count("embed_proj.weight");
  ModelConfig c = frontier ? ModelConfig::frontier() : ModelConfig::baseline();
  int layers = 0;
  while (s.count("blocks." + std::to_string(layers) + ".attn_scale")) ++layers;
  if (layers == 0) fail(path, "cannot infer the config: no blocks.N.attn_scale tensors (is this a parameter-golf model?)");
  c.num_layers = layers;
  c.vocab_size = int(dim(s, "tok_emb.weight", 0, path));
  const int64_t E = dim(s, "tok_emb.weight", 1, path);
  c.model_dim = int(dim(s, "blocks.0.attn_scale", 0, path));
  c.embedding_dim = E == c.model_dim ? (frontier ? int(E) : 0) : int(E);
  c.num_heads = int(dim(s, "blocks.0.attn.q_gain", 0, path));
  const int64_t hd = c.model_dim / std::max(c.num_heads, 1);
  c.num_kv_heads = int(dim(s, "blocks.0.attn.c_k.weight", 0, path) / std::max<int64_t>(hd, 1));
  const int64_t hidden = dim(s, "blocks.0.mlp.fc.weight", 0, path);
  // The smallest multiplier with int(mult * d) == hidden (the reference's truncation).
  c.mlp_mult = double(hidden) / double(c.model_dim);
  while (c.mlp_hidden() < hidden) c.mlp_mult = std::nextafter(c.mlp_mult, 1e300);
  c.tie_embeddings = !s.count("lm_head.weight");
  c.skip_gates_enabled = s.count("skip_gates") > 0;
  if (!s.count("lane_merge")) c.parallel_start_layer = 0;
  if (c.loop_end >= c.num_layers) c.num_loops = 0;
  if (c.xsa_last_n > c.num_layers) c.xsa_last_n = c.num_layers;
  if (c.parallel_start_layer >= c.num_layers) c.parallel_start_layer = 0;
  if (notes)
    *notes = frontier ? "config inferred from tensor shapes; XSA, depth recurrence, RoPE dims, ln_scale, "
                        "parallel_start_layer, rope base and softcap are the 2026-04-10_VarLenAttn preset's: "
                        "pass --config-from-log train.log for the run's own values"
                      : "config inferred from tensor shapes; rope base and softcap are the reference defaults";
  return c;
}

GptWeights load_model_file(const ModelSource& src, std::string* notes) {
  const ModelFileKind kind = detect_model_file(src.path);
  if (kind == ModelFileKind::Checkpoint) return load_model(src);
  if (kind == ModelFileKind::Artifact) {
    GptWeights w = quant::dequantize_artifact(quant::load_artifact(src.path), src.path);
    w.config = apply_config_overrides(w.config, src);
    check_weights(w, src.path);
    return w;
  }
  std::map<std::string, at::Tensor> state = read_reference_state(src.path, kind);
  GptWeights w;
  try {
    w.config = apply_config_overrides(infer_config(state, src.path, notes), src);
  } catch (const Error& e) {
    const std::string m = e.what();
    throw Error(m.rfind(src.path, 0) == 0 ? m : src.path + ": " + m);
  }
  w.tensors = std::move(state);
  check_weights(w, src.path);
  return w;
}

}  // namespace pgolf
