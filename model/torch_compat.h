// The one place where pgolf bridges libtorch versions: Debian 12's 1.13.1
// (CPU) and the 2.11 + CUDA build inside the GPU machine's PyTorch wheel.
// Everything version-dependent goes here, nowhere else.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/api/include/torch/version.h>

#include <optional>
#include <stdexcept>

#define PGOLF_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

#if PGOLF_TORCH_AT_LEAST(2, 0)
#include <optional>
#else
#include <c10/util/Optional.h>
#endif

namespace pgolf::compat {

// libtorch 2.x takes std::optional in its operator signatures; 1.13 takes c10::optional.
#if PGOLF_TORCH_AT_LEAST(2, 0)
template <class T>
using optional = std::optional<T>;
inline constexpr auto nullopt = std::nullopt;
#else
template <class T>
using optional = c10::optional<T>;
inline constexpr auto nullopt = c10::nullopt;
#endif

// Fused causal attention (flash / memory-efficient SDPA kernels) exists from
// libtorch 2.0 on; 1.13 has only the explicit path.
#if PGOLF_TORCH_AT_LEAST(2, 0)
constexpr bool has_fused_causal_attention = true;
// q [B, H, T, hd], k/v [B, H, T, hd] (same heads), bf16 on CUDA -> [B, H, T, hd].
inline at::Tensor fused_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
}
#else
constexpr bool has_fused_causal_attention = false;
inline at::Tensor fused_causal_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw std::runtime_error("fused attention needs libtorch >= 2.0");
}
#endif

// Variable-length flash attention with a causal sliding window (ATen's
// _flash_attention_forward with cumulative sequence lengths) from 2.6 on.
#if PGOLF_TORCH_AT_LEAST(2, 6)
constexpr bool has_varlen_flash_attention = true;
// q [total, H, hd], k/v [total, KV, hd] packed sequences (bf16, CUDA);
// cu_seqlens int32 [n + 1]; a key j is visible to query i of its sequence if
// j <= i and i - j <= window_left (window_left < 0: unlimited). -> [total, H, hd].
inline at::Tensor varlen_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t window_left) {
  auto out = at::_flash_attention_forward(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                          /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false,
                                          /*scale=*/std::nullopt, /*window_size_left=*/window_left,
                                          /*window_size_right=*/int64_t(0));
  return std::get<0>(out);
}
#else
constexpr bool has_varlen_flash_attention = false;
inline at::Tensor varlen_flash_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t, int64_t) {
  throw std::runtime_error("varlen flash attention needs libtorch >= 2.6");
}
#endif

constexpr int torch_major = TORCH_VERSION_MAJOR;
constexpr int torch_minor = TORCH_VERSION_MINOR;
constexpr int torch_patch = TORCH_VERSION_PATCH;

}  // namespace pgolf::compat
