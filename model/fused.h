// The pointwise steps between the forward's matrix products, each as one
// function with two implementations: a reference in plain ATen ops (any
// device, float32 / float64 / bf16 activations, differentiable) and, in CUDA
// builds, one fused kernel for bf16 activations (model/fused_cuda.cu). The
// kernels read and write each activation once instead of once per ATen op;
// on the eval shapes that traffic, not the matmuls, was the cost.
//
// Rounding. `act` is the stored activation type, `math` the type of the
// pointwise math (see Precision in model/gpt.h). Every function rounds where
// the reference code rounds: math in float32, one rounding to bf16 at the
// end; each product and sum rounded as its own ATen op would round it (the
// kernels use __fmul_rn / __fadd_rn, no contraction into FMAs), so the two
// implementations differ only in the order of the sum inside the RMS norm.
//
// Backward: when autograd records (grad mode on, an input that requires
// grad), the kernels run inside an autograd Function whose backward is made
// of CUDA kernels too (model/fused_cuda.h): float32 math, each gradient
// rounded to its tensor's type where the ATen graph rounds it; the sums
// inside differ in order from ATen's, so gradients agree to bf16 rounding,
// not bit for bit.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

namespace pgolf {

// Adam / AdamW hyper-parameters (ttt/adam.h's FlatAdam; fused::adam_update).
struct AdamConfig {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled = false;  // AdamW
};

// Parts of a flat tensor: (start, length) pairs in elements, ascending and
// disjoint, on the host and as an int64 [n, 2] tensor on the tensor's device
// (a CUDA graph that replays an update reads that one).
struct FlatParts {
  std::vector<std::pair<int64_t, int64_t>> host;
  at::Tensor device;
};

}  // namespace pgolf

namespace pgolf::fused {

// True when the CUDA kernels apply to these inputs: a CUDA build, the first a
// CUDA bf16 tensor, no ReferenceOnly in scope.
bool use_kernels(std::initializer_list<at::Tensor> inputs);

// While one is alive (on this thread), every function takes its reference
// path: the GPU tests and the kernel check program compare the two with it.
struct ReferenceOnly {
  ReferenceOnly();
  ~ReferenceOnly();
  ReferenceOnly(const ReferenceOnly&) = delete;
  ReferenceOnly& operator=(const ReferenceOnly&) = delete;
  bool previous;
};

// x [N, d] (act or float32) -> act [N, d]: round(rms(x) * factor), where
// rms(x) = x / sqrt(mean(x^2) + eps) in `math`.
at::Tensor rms_norm(const at::Tensor& x, double factor, double eps, at::ScalarType act, at::ScalarType math);

// x, x0 [N, d] act; mix [2, d] -> x_in = round(mix[0] x + mix[1] x0),
// n = round(rms(x_in) * factor).
std::pair<at::Tensor, at::Tensor> mix_norm(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& mix,
                                           double factor, double eps, at::ScalarType math);

// x, a [N, d] act; scale [d] -> y = round(x + scale a).
at::Tensor add_scaled(const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale, at::ScalarType math);

// As add_scaled, plus n = round(rms(y) * factor).
std::pair<at::Tensor, at::Tensor> add_norm(const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale,
                                           double factor, double eps, at::ScalarType math);

// q [B, T, heads * hd] act (a projection's output) -> act [B, T, heads, hd]:
// per head, rms over hd, then RoPE on the first 2 * half dims (half-split
// rotation with cos/sin [T, half] in `math`, position = column in the row),
// then times gain[head] if gain [heads] is defined.
at::Tensor qk_norm_rope(const at::Tensor& q, int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& gain, double eps, at::ScalarType math);

// h [N, F] act -> round(a^2), a = leaky_relu(h, slope) (slope 0: relu).
at::Tensor relu_square(const at::Tensor& h, double slope, at::ScalarType math);

// logits [n, V] act, delta [n, V] act or undefined, targets [n] int64 -> NLL
// [n] in `math`: logsumexp(z) - z[target], z = cap * tanh(l / cap), l =
// logits + delta summed in `math` (the TTT head adapter's delta: the compiled
// reference adds it inside the softcap's fused kernel).
at::Tensor softcap_nll(const at::Tensor& logits, const at::Tensor& delta, const at::Tensor& targets, double cap,
                       at::ScalarType math);

// XSA (the frontier's last n layers): y [B, Q, H, hd] attention output, v
// [B, Q, KV, hd] the values at the same positions -> y - (y . u) u per head,
// u = v / max(|v|, 1e-12) the unit value vector of the head's KV group, in
// `math` (F.normalize runs in float32 under the reference's autocast),
// rounded to y's type (the next matmul rounds it there anyway).
at::Tensor xsa(const at::Tensor& y, const at::Tensor& v, at::ScalarType math);

// Causal flash attention (CUDA bf16, libtorch >= 2.6): q [B, Q, H, hd], k/v
// [B, T, KV, hd] with Q <= T (the queries are the last Q positions), KV
// dividing H, at most window_left + 1 keys per query (< 0: all) -> [B, Q, H,
// hd]. Under autograd its backward is flash's (deterministic: the kernels
// without atomics in dq, the same bits run to run): the same kernels whatever
// the shape (SDPA's cuDNN backend builds a plan per new shape, tens of
// milliseconds each, and TTT's shapes change every step).
at::Tensor flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window_left,
                           bool deterministic);

// Causal flash attention over packed sequences (CUDA bf16): q [total, H,
// hd], k/v [total, KV, hd], cu_seqlens int32 [n + 1] (sequence starts, then
// total), the same window rule -> [total, H, hd]. Under autograd its backward
// is flash's, deterministic as above (training on document-packed rows).
at::Tensor varlen_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t window_left,
                                  bool deterministic);

// Whole-window causal attention for inference (no gradient), with the shapes
// of flash_attention and Q = T, all keys: cuDNN's fused kernels where they
// are faster (Hopper and newer: bench/fused_check times both), else flash.
// Not for TTT: cuDNN builds a plan per new shape and a CUDA graph capture
// must not be the first to run one.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Causal attention for training on Hopper: cuDNN's fused kernels forward and
// backward (faster than flash's there; the backward is not deterministic, so
// TTT keeps flash_attention). q [B, T, H, hd], k/v [B, T, KV, hd] -> [B, T,
// H, hd]. Dense rows only: libtorch 2.11 builds cuDNN's graph for packed
// sequences anew at every call, so packed rows keep varlen_flash_attention.
// cudnn_attention_applies: whether it runs these (CUDA bf16, compute
// capability >= 9, head dim a multiple of 8 up to 128, a libtorch with the
// operators); callers take flash or SDPA otherwise.
bool cudnn_attention_applies(const at::Tensor& q);
at::Tensor cudnn_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// One Adam / AdamW step over flat tensors (ttt/adam.h's update, the same
// order of operations and roundings), as one kernel: p, m, v float32 CUDA
// tensors, g float32 or bf16, factors float32 [2] = (-lr / (1 - b1^t),
// sqrt(1 - b2^t)) on the device, mirror (optional, float32 or bf16) receives
// the new p. One pass over the memory where the ATen ops make about 24.
// parts (optional): only those elements are read and written.
// adam_available: a CUDA build, no ReferenceOnly in scope, and tensors of
// those types, contiguous, of one size on one device.
bool adam_available(const at::Tensor& p, const at::Tensor& g, const at::Tensor& mirror);
void adam_update(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const at::Tensor& factors,
                 const AdamConfig& c, const at::Tensor& mirror, const FlatParts* parts = nullptr);

}  // namespace pgolf::fused
