#include "quant/quantize.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf::quant {

namespace {

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {{at::kHalf, "float16"}, {at::kBFloat16, "bfloat16"}, {at::kFloat, "float32"},
                                 {at::kDouble, "float64"}, {at::kChar, "int8"},       {at::kShort, "int16"},
                                 {at::kInt, "int32"},      {at::kLong, "int64"},      {at::kByte, "uint8"},
                                 {at::kBool, "bool"}};

const char* dtype_name(at::ScalarType t, const std::string& tensor) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  throw Error("quantize: tensor " + tensor + " has a dtype the artifact cannot hold (" + std::string(at::toString(t)) + ")");
}

bool dtype_of(const std::string& name, at::ScalarType* t) {
  for (const auto& d : kDtypes)
    if (name == d.name) {
      *t = d.type;
      return true;
    }
  return false;
}

std::string tensor_bytes(const at::Tensor& t) {
  const at::Tensor c = t.cpu().contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), size_t(c.numel()) * c.element_size());
}

// Bound on one batched GPTQ call's working memory (H, its factors, W copies), in bytes.
constexpr int64_t kGroupBytes = int64_t(1) << 31;

double plain_error(const at::Tensor& W, const at::Tensor& Wq) {
  return (W.to(at::kDouble) - Wq.to(at::kDouble)).pow(2).sum().item<double>();
}

}  // namespace

std::map<std::string, TensorResult> quantize_tensors(const GptWeights& w, const std::vector<TensorPlan>& plans,
                                                     const QuantizeOptions& o) {
  if (o.method != "gptq" && o.method != "rtn") throw Error("--method must be gptq or rtn, got '" + o.method + "'");
  std::map<std::string, TensorResult> out;
  // GPTQ groups: same shape, bits and clip sigmas.
  std::map<std::tuple<std::vector<int64_t>, int, double>, std::vector<std::string>> groups;
  for (const TensorPlan& p : plans) {
    if (p.action != TensorAction::Quantize) continue;
    const at::Tensor& t = w.get(p.name);
    if (!at::isfinite(t).all().item<bool>()) throw Error("quantize: tensor " + p.name + " has NaN or Inf values");
    TensorResult r;
    r.plan = p;
    r.numel = t.numel();
    const bool gptq = o.method == "gptq" && o.hessians.count(p.name);
    if (gptq) {
      groups[{t.sizes().vec(), p.bits, p.clip_sigmas}].push_back(p.name);
      out[p.name] = r;
      continue;
    }
    const at::Tensor W = t.to(o.device);
    r.method = "rtn";
    r.qm = quantize_rtn(W, p.bits, p.clip_sigmas);
    const at::Tensor deq = dequantize(r.qm, W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
    r.error = o.hessians.count(p.name) ? hessian_weighted_error(W, deq, o.hessians.at(p.name).to(o.device))
                                       : plain_error(W, deq);
    r.qm = {r.qm.q.cpu(), r.qm.scale.cpu()};
    if (o.log) o.log("rtn " + p.name);
    out[p.name] = r;
  }
  for (const auto& [key, names] : groups) {
    const auto& shape = std::get<0>(key);
    const int64_t per = (3 * shape[1] * shape[1] + 3 * shape[0] * shape[1]) * 4;
    const size_t chunk = size_t(std::max<int64_t>(1, kGroupBytes / per));
    for (size_t c0 = 0; c0 < names.size(); c0 += chunk) {
      const std::vector<std::string> part(names.begin() + long(c0), names.begin() + long(std::min(names.size(), c0 + chunk)));
      std::vector<at::Tensor> Ws, Hs;
      for (const std::string& n : part) {
        Ws.push_back(w.get(n).to(o.device));
        Hs.push_back(o.hessians.at(n).to(o.device));
      }
      const at::Tensor W = at::stack(Ws), H = at::stack(Hs);
      const QuantizedMatrix qm = quantize_gptq_batch(W, H, std::get<1>(key), std::get<2>(key), part, o.block, o.damp);
      const at::Tensor deq = dequantize(qm, W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
      for (size_t i = 0; i < part.size(); ++i) {
        TensorResult& r = out[part[i]];
        r.method = "gptq";
        r.qm = {qm.q[long(i)].cpu(), qm.scale[long(i)].cpu()};
        r.error = hessian_weighted_error(W[long(i)], deq[long(i)], H[long(i)]);
      }
      if (o.log) o.log("gptq " + part.front() + (part.size() > 1 ? " and " + std::to_string(part.size() - 1) + " more" : ""));
    }
  }
  return out;
}

Artifact build_artifact(const GptWeights& w, const std::vector<TensorPlan>& plans,
                        const std::map<std::string, TensorResult>& results, const QuantizeOptions& o) {
  Artifact a;
  a.config_json = w.config.to_json();
  a.tokenizer_fingerprint = o.tokenizer_fingerprint;
  nlohmann::json meta = {{"method", o.method}, {"block", o.block}, {"damp", o.damp},
                         {"passthrough_max_numel", o.policy.passthrough_max_numel}};
  nlohmann::json calib = nlohmann::json::parse(o.calibration_json, nullptr, false);
  meta["calibration"] = calib.is_discarded() ? nlohmann::json(o.calibration_json) : calib;
  nlohmann::json dtypes = nlohmann::json::object(), clips = nlohmann::json::object();
  for (const TensorPlan& p : plans) {
    const at::Tensor& t = w.get(p.name);
    ArtifactTensor at_;
    at_.name = p.name;
    at_.shape = t.sizes().vec();
    dtypes[p.name] = dtype_name(t.scalar_type(), p.name);
    if (p.action == TensorAction::Quantize) {
      auto it = results.find(p.name);
      if (it == results.end() || !it->second.qm.q.defined()) throw Error("quantize: no result for " + p.name);
      const QuantizedMatrix& qm = it->second.qm;
      at_.kind = ArtifactTensor::Kind::Quantized;
      at_.bits = p.bits;
      at_.method = it->second.method;
      const at::Tensor q = qm.q.contiguous();
      at_.values.assign(q.data_ptr<int8_t>(), q.data_ptr<int8_t>() + q.numel());
      const at::Tensor s = qm.scale.contiguous();
      at_.scales.resize(size_t(s.numel()));
      std::memcpy(at_.scales.data(), s.data_ptr(), at_.scales.size() * 2);
      clips[p.name] = p.clip_sigmas;
    } else {
      const at::Tensor stored = p.action == TensorAction::Float16 ? t.to(at::kHalf) : t;
      at_.kind = ArtifactTensor::Kind::Raw;
      at_.dtype = dtype_name(stored.scalar_type(), p.name);
      at_.data = tensor_bytes(stored);
    }
    a.tensors.push_back(std::move(at_));
  }
  meta["dtypes"] = dtypes;
  meta["clip_sigmas"] = clips;
  a.meta_json = meta.dump();
  return a;
}

Artifact quantize_model(const GptWeights& w, const QuantizeOptions& o, std::vector<TensorResult>* results) {
  const std::vector<TensorPlan> plans = plan_tensors(w, o.policy);
  const auto r = quantize_tensors(w, plans, o);
  if (results) {
    results->clear();
    for (const auto& [n, t] : r) results->push_back(t);
  }
  return build_artifact(w, plans, r, o);
}

GptWeights dequantize_artifact(const Artifact& a, const std::string& what) {
  GptWeights w;
  try {
    w.config = ModelConfig::from_json(a.config_json, what);
    w.config.validate();
  } catch (const Error& e) {
    const std::string m = e.what();
    throw Error(m.rfind(what, 0) == 0 ? m : what + ": " + m);
  }
  const nlohmann::json meta = nlohmann::json::parse(a.meta_json, nullptr, false);
  auto original_dtype = [&](const std::string& name, at::ScalarType fallback) {
    at::ScalarType t;
    if (meta.is_object() && meta.contains("dtypes") && meta["dtypes"].is_object() && meta["dtypes"].contains(name) &&
        meta["dtypes"][name].is_string() && dtype_of(meta["dtypes"][name].get<std::string>(), &t) &&
        at::isFloatingType(t))
      return t;
    return fallback;
  };
  for (const ArtifactTensor& t : a.tensors) {
    if (w.tensors.count(t.name)) fail(what, "tensor " + t.name + " appears twice");
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail(what, "tensor " + t.name + " has a negative dimension");
      numel *= d;
    }
    at::Tensor v;
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      if (t.shape.empty()) fail(what, "quantized tensor " + t.name + " has no rows");
      if (int64_t(t.values.size()) != numel || int64_t(t.scales.size()) != t.shape[0])
        fail(what, "quantized tensor " + t.name + ": value or scale count does not match its shape");
      const at::Tensor q = at::from_blob(const_cast<int8_t*>(t.values.data()), t.shape, at::kChar);
      const at::Tensor s = at::from_blob(const_cast<uint16_t*>(t.scales.data()), {t.shape[0]}, at::kHalf);
      std::vector<int64_t> sshape(t.shape.size(), 1);
      sshape[0] = t.shape[0];
      v = (q.to(at::kFloat) * s.to(at::kFloat).view(sshape)).to(original_dtype(t.name, at::kFloat));
    } else {
      at::ScalarType dt;
      if (!dtype_of(t.dtype, &dt)) fail(what, "tensor " + t.name + " has unknown dtype '" + t.dtype + "'");
      const int64_t esize = int64_t(c10::elementSize(dt));
      if (int64_t(t.data.size()) != numel * esize) fail(what, "tensor " + t.name + ": data size does not match its shape");
      v = at::empty(t.shape, at::TensorOptions().dtype(dt));
      if (!t.data.empty()) std::memcpy(v.data_ptr(), t.data.data(), t.data.size());
      if (dt == at::kHalf) v = v.to(original_dtype(t.name, at::kFloat));
    }
    w.tensors[t.name] = v;
  }
  check_weights(w, what);
  return w;
}

}  // namespace pgolf::quant
