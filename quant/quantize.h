// A model -> pgolf's artifact (quant/artifact.h), and back.
//
// quantize_model follows the policy (quant/quant_policy.h): matrices are
// quantized per row with SDClip scales, by GPTQ with the calibration
// Hessians (method "gptq") or by rounding to nearest ("rtn"); small float
// tensors are stored as fp16, non-floats as they are. The artifact carries
// the config, the tokenizer fingerprint and, in its meta JSON, how it was
// made plus each tensor's original dtype (restored on load).
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/gpt.h"
#include "quant/artifact.h"
#include "quant/gptq.h"
#include "quant/quant_policy.h"

namespace pgolf::quant {

struct QuantizeOptions {
  QuantPolicy policy;
  std::string method = "gptq";  // "gptq" | "rtn"
  // gptq: weight name -> H [in, in]. A quantized tensor without one (an
  // untied tok_emb, which no matrix product reads) is rounded to nearest.
  std::map<std::string, at::Tensor> hessians;
  int block = 128;
  double damp = 0.01;
  at::Device device = at::kCPU;  // where GPTQ runs
  std::string tokenizer_fingerprint;
  std::string calibration_json = "null";  // how the Hessians were made (JSON), kept in the meta
  std::function<void(const std::string&)> log;  // progress lines
};

// One tensor's outcome.
struct TensorResult {
  TensorPlan plan;
  std::string method;  // "gptq" | "rtn" | "" (not quantized)
  QuantizedMatrix qm;  // Quantize only; on the CPU
  int64_t numel = 0;
  // Quantize only: trace(D H D^T) with D = W - dequantized W (the
  // calibration's summed squared output error), or sum(D^2) without a Hessian.
  double error = 0;
};

// The quantized tensors of `plans` (others pass through untouched here).
// Matrices of one shape and setting share one batched GPTQ call.
std::map<std::string, TensorResult> quantize_tensors(const GptWeights& w, const std::vector<TensorPlan>& plans,
                                                     const QuantizeOptions& o);
// Results (every tensor of w in `plans`, quantized ones in `results`) -> artifact.
Artifact build_artifact(const GptWeights& w, const std::vector<TensorPlan>& plans,
                        const std::map<std::string, TensorResult>& results, const QuantizeOptions& o);

Artifact quantize_model(const GptWeights& w, const QuantizeOptions& o, std::vector<TensorResult>* results = nullptr);

// The weights an artifact holds: config parsed and validated, every tensor
// dequantized (q * scale[row], float32 or the recorded original dtype) and
// checked against the config (check_weights). Errors name `what`.
GptWeights dequantize_artifact(const Artifact& a, const std::string& what);

}  // namespace pgolf::quant
