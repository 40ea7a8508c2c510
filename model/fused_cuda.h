// CUDA kernels behind model/fused.h (bf16 activations, float32 math). Only
// model/fused.cpp calls these; it has checked device, dtype and grad mode.
// Inputs: contiguous CUDA tensors; float32 parameters.
#pragma once
#include <ATen/core/Tensor.h>

#include <utility>

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
at::Tensor softcap_nll(const at::Tensor& logits, const at::Tensor& targets, double cap);

}  // namespace pgolf::fused::cuda
