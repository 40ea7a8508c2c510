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

constexpr int torch_major = TORCH_VERSION_MAJOR;
constexpr int torch_minor = TORCH_VERSION_MINOR;
constexpr int torch_patch = TORCH_VERSION_PATCH;

}  // namespace pgolf::compat
