// The parameter-golf GPT: weights by the reference's state-dict names and one
// forward that returns per-token NLL. Plain structs of tensors, no module
// framework. Supported now: the baseline family (SPEC §5) -- the frontier
// switches of ModelConfig are rejected by check_supported() until they land.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"

namespace pgolf {

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every parameter the config implies, in the reference's (unbanked) names.
std::vector<ParamSpec> parameter_specs(const ModelConfig& cfg);
// Throws "config: <switch> is not supported yet" for switches the forward lacks.
void check_supported(const ModelConfig& cfg);

struct GptWeights {
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors;
  const at::Tensor& get(const std::string& name) const;
};

// The reference initialisation (tied embedding ~ N(0, 0.005), zero-init
// output projections, nn.Linear's U(+-1/sqrt(in)) elsewhere, q_gain =
// qk_gain_init, scales 1, resid_mix = [1; 0], skip weights 1), float32,
// deterministic for a seed (CPU generator).
GptWeights init_gpt_weights(const ModelConfig& cfg, uint64_t seed);
// Every expected tensor present with its shape and a float dtype, none extra;
// the error names `source` and the first offending tensor.
void check_weights(const GptWeights& w, const std::string& source);

// Activation precision. BF16 is the reference's CUDA numerics (SPEC §6):
// matmuls and attention in bf16, pointwise math in float32, activations
// stored as bf16. F32 / F64 run everything in that type (CPU, tests).
enum class Precision { F32, F64, BF16 };

struct ForwardOptions {
  Precision precision = Precision::F32;
  // [B, T] bool: positions whose NLL is computed (the LM head and the
  // cross-entropy run only there). Undefined = every position.
  at::Tensor score_mask;
  // [B, T] int64: attention only between positions with equal ids (document
  // masking). Undefined = plain causal attention over the row.
  at::Tensor segment_ids;
};

// Constants the reference's numerics imply.
struct GptNumerics {
  // F.rms_norm's default eps (eps=None) as the reference runs it; see model/gpt.cpp.
  static double norm_eps();
};

// inputs, targets: [B, T] int64 -> NLL [B, T] (float32; float64 under F64),
// 0 at positions not in score_mask.
at::Tensor forward_nll(const GptWeights& w, const at::Tensor& inputs, const at::Tensor& targets,
                       const ForwardOptions& opt = {});

// The RoPE cos/sin tables for positions [0, T): [T, rotary_dims / 2] each, in
// `dtype`. inv_freq is rounded to bf16 as in the reference (its module was
// cast with .bfloat16()); positions and products stay in float32 (or float64).
std::pair<at::Tensor, at::Tensor> rope_tables(const ModelConfig& cfg, int64_t T, at::ScalarType dtype,
                                              const at::Device& device);

}  // namespace pgolf
