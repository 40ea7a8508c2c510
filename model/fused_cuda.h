// CUDA kernels behind model/fused.h (bf16 activations, float32 math). Only
// model/fused.cpp calls these; it has checked device, dtype and grad mode.
// Inputs: contiguous CUDA tensors; float32 parameters.
#pragma once
#include <ATen/core/Tensor.h>

#include <utility>

#include "model/fused.h"  // FlatParts

namespace pgolf::fused::cuda {

at::Tensor rms_norm(const at::Tensor& x, double factor, double eps);  // x bf16 or float32
std::pair<at::Tensor, at::Tensor> mix_norm(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& mix,
                                           double factor, double eps);
at::Tensor add_scaled(const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale);
std::pair<at::Tensor, at::Tensor> add_norm(const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale,
                                           double factor, double eps);
at::Tensor qk_norm_rope(const at::Tensor& q, int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& gain, double eps);
at::Tensor relu_square(const at::Tensor& h, double slope);
// logits [n, V] (+ delta [n, V], optional, added in float32) -> (NLL [n],
// log-sum-exp [n] when want_lse; float32).
std::pair<at::Tensor, at::Tensor> softcap_nll(const at::Tensor& logits, const at::Tensor& delta,
                                              const at::Tensor& targets, double cap, bool want_lse);

// y [..., H, hd], v [..., KV, hd] bf16 (the same positions) -> XSA's output
// like y (model/fused.h xsa); hd <= 256, KV dividing H.
at::Tensor xsa(const at::Tensor& y, const at::Tensor& v);

// Backward kernels. g* are the gradients of the outputs (contiguous, the
// outputs' types); results are gradients of the inputs in their types, the
// parameter ones float32.
// x bf16 or float32 -> gx: through round(rms(x) * factor).
at::Tensor rms_norm_backward(const at::Tensor& x, const at::Tensor& g, double factor, double eps);
// y = the residual value normed into n = round(rms(y) * factor); g_res its own
// gradient and g_n n's (either undefined when absent). gt = round(g_res +
// round(dn/dy . g_n)) if want_gt; o1 = round(c1 gt), o2 = round(c2 gt) for
// the columns scales c1 / c2 that are defined.
struct NormGrads {
  at::Tensor gt, o1, o2;
};
NormGrads residual_norm_backward(const at::Tensor& y, const at::Tensor& g_res, const at::Tensor& g_n,
                                 const at::Tensor& c1, const at::Tensor& c2, bool want_gt, double factor, double eps);
// round(scale[col] g) for g [..., d].
at::Tensor scale_cols(const at::Tensor& g, const at::Tensor& scale);
// a, b bf16 [..., d] -> float32 [d]: sum over rows of a * b (deterministic).
at::Tensor col_dot(const at::Tensor& a, const at::Tensor& b);
// q [B, T, heads * hd], gy [B, T, heads, hd] -> (gq like q, ggain [heads] if want_ggain).
std::pair<at::Tensor, at::Tensor> qk_norm_rope_backward(const at::Tensor& q, const at::Tensor& gy, int64_t heads,
                                                        const at::Tensor& cos, const at::Tensor& sin,
                                                        const at::Tensor& gain, bool want_ggain, double eps);
at::Tensor relu_square_backward(const at::Tensor& h, const at::Tensor& g, double slope);
// g [n] float32 -> the gradient of the logits (and of the delta: the same values).
at::Tensor softcap_nll_backward(const at::Tensor& logits, const at::Tensor& delta, const at::Tensor& targets,
                                const at::Tensor& lse, const at::Tensor& g, double cap);

// g like y -> (gy, gv if want_gv).
std::pair<at::Tensor, at::Tensor> xsa_backward(const at::Tensor& y, const at::Tensor& v, const at::Tensor& g,
                                               bool want_gv);

// One Adam / AdamW step in place (model/fused.h adam_update): p, m, v float32;
// g float32 or bf16; factors float32 [2]; mirror (optional) float32 or bf16;
// parts (optional, checked): only those elements.
void adam_update(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                 const at::Tensor& factors, double lr, double beta1, double beta2, double eps, double weight_decay,
                 bool decoupled, const at::Tensor& mirror, const FlatParts* parts);

}  // namespace pgolf::fused::cuda
