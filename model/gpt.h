// The parameter-golf GPT: weights by the reference's (unbanked) state-dict
// names and one forward that returns per-token NLL. Plain structs of tensors,
// no module framework. Both families: the baseline (root train_gpt.py, SPEC
// §5) and the frontier switches of 2026-04-10_VarLenAttn (embedding
// projections, LeakyReLU^2, partial RoPE, NTK-scaled RoPE, q-gain, ln_scale,
// XSA, depth recurrence, skip gates, two-lane parallel residuals), plus
// per-layer sliding-window attention and document masking.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
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

struct GptWeights {
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors;
  const at::Tensor& get(const std::string& name) const;
};

// The reference initialisation, float32, deterministic for a seed (CPU
// generator): tied embedding ~ N(0, 0.005); output projections, MLP down
// projections, lm_head and skip gates 0; input projections nn.Linear's
// U(+-1/sqrt(in)) for the baseline, orthogonal for the frontier family (as
// its banks are); q_gain = qk_gain_init; scales and skip weights 1;
// resid_mix = [1; 0]; lane_merge 0.5.
GptWeights init_gpt_weights(const ModelConfig& cfg, uint64_t seed);
// Every expected tensor present with its shape and a float dtype, none extra;
// the error names `source` and the first offending tensor.
void check_weights(const GptWeights& w, const std::string& source);

// Activation precision. BF16 is the reference's compiled CUDA numerics
// (SPEC §6): matmul and attention inputs/outputs in bf16, the pointwise chains
// between them in float32 with parameters, RoPE tables and gates unrounded
// (Inductor keeps them float32 inside fused kernels), the residual stream
// stored as bf16. F32 / F64 run everything in that type (CPU, tests).
enum class Precision { F32, F64, BF16 };

// Low-rank adapters, one per batch row (test-time training): at a site with
// input x [B, T, in] and output y [B, T, out], row b's y gains (x_b A_b) B_b,
// with A [B, in, r] and B [B, r, out] (any float type, cast to the activation
// type; gradients reach A and B through forward_nll). The reference's A
// [r, in] and B [out, r] are these transposed: this layout makes both
// gradients come out of their batched matmuls contiguous, in the adapters'
// own layout, so accumulating them is a plain vectorised add.
// Sites, keyed lora_key(step, site) where step indexes layer_sequence() (one
// adapter per unrolled step of depth recurrence, the reference's "slot"):
//   "q", "k", "v"  x = the block's normed attention input n (after ln_scale),
//                  y = c_q / c_k / c_v's output (before the q/k norms).
//   "o"            x = the attention output (proj's input, after XSA), y = proj's
//                  output: the same as adding (A_b B_b)^T to proj.weight.
//   "o_norm"       x = n, y = proj's output (before attn_scale): the O adapter
//                  of 2026-04-10_VarLenAttn (_block_with_lora: o_loras(n)).
//   "mlp"          x = the MLP's normed input (after ln_scale), y = the MLP's
//                  output (before mlp_scale), d -> d: 0410's mlp_loras.
// and the unkeyed "head": x = the LM head's input (the final normed hidden
// state, after head_proj), y = the logits before the softcap; the sum is kept
// in the math type (the compiled reference adds it inside the softcap kernel).
// 2026-03-17_LoRA_TTT uses q, v, head; 2026-04-10_VarLenAttn q, k, v,
// o_norm, mlp, head.
struct LoraAdapter {
  at::Tensor A, B;
};
struct LoraSet {
  std::map<std::string, LoraAdapter> adapters;
};
std::string lora_key(int step, const std::string& site);

// Where a score mask is true, found on the CPU (finding them on the GPU would
// make the host wait for all queued GPU work). rows [n]: the flat positions
// b * T + t, row-major. For the TTT head adapter, the scored positions packed
// per row into R = max_per_row slots: slot_src [B * R] the flat position each
// slot reads (padding slots read their row's first position), slot_of [n] the
// slot of each scored position. Index tensors are int64 on the forward's device.
struct ScorePositions {
  at::Tensor rows;
  int64_t first_col = 0;  // the smallest column t holding a scored position (T when none)
  bool suffix = false;    // every row scores exactly its columns [first_col, T)
  int64_t max_per_row = 0;
  at::Tensor slot_src, slot_of;
};
// mask [B, T] bool on the CPU. Without `slots` only rows is filled (enough
// unless a head adapter is in the forward; forward_nll then finds the rest).
ScorePositions find_score_positions(const at::Tensor& mask, const at::Device& device, bool slots = true);

// A CPU tensor on `device` without making the host wait for the GPU: on CUDA
// through pinned memory and an asynchronous copy (a plain copy first waits for
// all queued GPU work).
at::Tensor to_device(const at::Tensor& cpu, const at::Device& device);

// The matrix weights (every 2-D "*.weight") already in the activation type
// of a precision: forwards over weights that do not change (evaluation, TTT's
// frozen base) cast them once instead of once per forward.
struct CastWeights {
  at::ScalarType type = at::kFloat;
  std::map<std::string, at::Tensor> tensors;
};
CastWeights cast_matrix_weights(const GptWeights& w, Precision precision);

// Keys and values of earlier positions, per unrolled step, carried from one
// forward to the next (eval's streaming plan): each forward's queries attend
// over the kept positions and its own, at most keep + 1 keys each (itself and
// `keep` before it), then the last `keep` are kept. Keys are stored normed and
// rotated at their positions; `position` is the next forward's first.
// k, v: [B, kept, KV, hd] in the activation type.
struct KvCache {
  int64_t keep = 0;
  int64_t position = 0;
  std::vector<at::Tensor> k, v;
};

struct ForwardOptions {
  Precision precision = Precision::F32;
  // Optional: w's matrix weights pre-cast (cast_matrix_weights of the same w).
  const CastWeights* cast = nullptr;
  // [B, T] bool: positions whose NLL is computed (the LM head and the
  // cross-entropy run only there). Undefined = every position.
  at::Tensor score_mask;
  // score_mask's positions, when the caller has them (optional).
  ScorePositions positions;
  // [B, T] int64: attention only between positions with equal ids (document
  // masking). Undefined = plain causal attention over the row. On the CPU
  // with CUDA inputs, varlen attention's sequence starts are found on the
  // host (no wait for the device; training passes them so).
  at::Tensor segment_ids;
  // Per-row adapters; null = none.
  const LoraSet* lora = nullptr;
  // Depth recurrence on (evaluation, and training once past enable_looping_at).
  bool looping = true;
  // Earlier positions to attend over, updated by the forward; null = none.
  // Not with segment_ids. Rows carry on from the same rows of the last call.
  KvCache* kv = nullptr;
  // With a score mask whose positions all lie in the last Q columns of each
  // row, the last unrolled step computes its queries, and everything after
  // attention, only for those Q columns (keys and values for all T): sliding
  // windows with stride S score S of every L. Taken when nothing needs the
  // other rows: no adapters, no input tap, no gradients, no document masking,
  // no parallel lanes at the end. The same values; false for tests.
  bool trim_last_step = true;
  // Under autograd, attention through flash (fused::flash_attention, its
  // deterministic backward) instead of cuDNN: no per-shape cuDNN plans (TTT's
  // shapes change every step), grouped KV heads and windows without copies
  // or masks. Training keeps cuDNN on Hopper: one shape, faster kernels.
  bool flash_backward = false;
  // Under autograd, attention's backward only through kernels that give the
  // same bits run to run: flash's deterministic ones, not cuDNN's or flash's
  // default ones (which add into dq with atomics). pgolf train
  // --deterministic; implied by flash_backward.
  bool deterministic_attention = false;
  // Called with the input of every weight matrix product before it runs
  // (act type, [..., in]) and the weight's name -- including the LM head
  // ("tok_emb.weight" when tied), whose input is the final normed hidden state
  // at every position. GPTQ collects its Hessians with it. Null = none.
  std::function<void(const std::string& weight, const at::Tensor& input)> linear_input_tap;
};

// Constants the reference's numerics imply.
struct GptNumerics {
  // F.rms_norm's default eps (eps=None) as the reference runs it; see model/gpt.cpp.
  static double norm_eps();
};

// How many trailing positions of T the last unrolled step computes queries
// (and everything after attention) for: T - pos.first_col when
// opt.trim_last_step allows it (see there), else T.
int64_t last_step_queries(const GptWeights& w, const ForwardOptions& opt, const ScorePositions& pos, int64_t T);

// inputs, targets: [B, T] int64 -> NLL [B, T] (float32; float64 under F64),
// 0 at positions not in score_mask.
at::Tensor forward_nll(const GptWeights& w, const at::Tensor& inputs, const at::Tensor& targets,
                       const ForwardOptions& opt = {});

// The RoPE cos/sin tables for positions [start, start + T): [T, rotary_dims
// / 2] each, in `dtype` (float32 or float64). inv_freq[p] = 1 / base^(2p /
// rotary_dims), rounded to bf16 as the reference's module buffer is; with
// rope_yarn and a context (default T) longer than train_seq_len the base is
// scaled by (context / train_seq_len)^(r / (r - 2)) and inv_freq is not
// rounded (the reference recomputes it in float32). From start 0 the angles
// are the reference's (position * inv_freq in `dtype`); later positions (a
// KV cache's, far past any window) take them in float64 first.
std::pair<at::Tensor, at::Tensor> rope_tables(const ModelConfig& cfg, int64_t T, at::ScalarType dtype,
                                              const at::Device& device, int64_t start = 0, int64_t context = 0);

}  // namespace pgolf
