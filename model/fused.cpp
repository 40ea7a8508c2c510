#include "model/fused.h"

#include <c10/core/GradMode.h>

#include "model/pch.h"
#if PGOLF_WITH_CUDA
#include "model/fused_cuda.h"
#endif

namespace pgolf::fused {

namespace {

// x / sqrt(mean(x^2) + eps) over the last dim, in the type of x.
at::Tensor rms(const at::Tensor& xf, double eps) { return xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps); }

at::Tensor scaled(const at::Tensor& x, double factor) { return factor == 1.0 ? x : x * factor; }

}  // namespace

static thread_local bool reference_only = false;

ReferenceOnly::ReferenceOnly() : previous(reference_only) { reference_only = true; }
ReferenceOnly::~ReferenceOnly() { reference_only = previous; }

namespace {

// No ReferenceOnly in scope and no gradient to record through these inputs.
[[maybe_unused]] bool kernels_allowed(std::initializer_list<at::Tensor> inputs) {  // CUDA builds only
  if (reference_only) return false;
  if (c10::GradMode::is_enabled())
    for (const at::Tensor& t : inputs)
      if (t.defined() && t.requires_grad()) return false;
  return true;
}

}  // namespace

bool use_kernels(std::initializer_list<at::Tensor> inputs) {
#if PGOLF_WITH_CUDA
  if (inputs.size() == 0) return false;
  const at::Tensor& x = *inputs.begin();
  return x.is_cuda() && x.scalar_type() == at::kBFloat16 && kernels_allowed(inputs);
#else
  (void)inputs;
  return false;
#endif
}

at::Tensor rms_norm(const at::Tensor& x, double factor, double eps, at::ScalarType act, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (act == at::kBFloat16 && x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat) &&
      kernels_allowed({x}))
    return cuda::rms_norm(x, factor, eps);
#endif
  return scaled(rms(x.to(math), eps), factor).to(act);
}

std::pair<at::Tensor, at::Tensor> mix_norm(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& mix,
                                           double factor, double eps, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({x, x0, mix})) return cuda::mix_norm(x, x0, mix.to(at::kFloat), factor, eps);
#endif
  const at::Tensor m = mix.to(math);
  at::Tensor x_in = (m[0] * x.to(math) + m[1] * x0.to(math)).to(x.scalar_type());
  return {x_in, scaled(rms(x_in.to(math), eps), factor).to(x.scalar_type())};
}

at::Tensor add_scaled(const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({x, a, scale})) return cuda::add_scaled(x, a, scale.to(at::kFloat));
#endif
  return (x.to(math) + scale.to(math) * a.to(math)).to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> add_norm(const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale,
                                           double factor, double eps, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({x, a, scale})) return cuda::add_norm(x, a, scale.to(at::kFloat), factor, eps);
#endif
  at::Tensor y = add_scaled(x, a, scale, math);
  return {y, scaled(rms(y.to(math), eps), factor).to(x.scalar_type())};
}

at::Tensor qk_norm_rope(const at::Tensor& q, int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& gain, double eps, at::ScalarType math) {
  const int64_t B = q.size(0), T = q.size(1), hd = q.size(2) / heads, half = cos.size(-1);
#if PGOLF_WITH_CUDA
  if (use_kernels({q, gain})) return cuda::qk_norm_rope(q.contiguous(), heads, cos.to(at::kFloat).contiguous(),
                                                sin.to(at::kFloat).contiguous(),
                                                gain.defined() ? gain.to(at::kFloat).contiguous() : gain, eps);
#endif
  at::Tensor x = rms(q.reshape({B, T, heads, hd}).to(math), eps);
  const at::Tensor c = cos.to(math).unsqueeze(1), s = sin.to(math).unsqueeze(1);  // [T, 1, half]
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  std::vector<at::Tensor> parts = {x1 * c + x2 * s, x1 * (-s) + x2 * c};
  if (2 * half < hd) parts.push_back(x.narrow(-1, 2 * half, hd - 2 * half));
  at::Tensor y = at::cat(parts, -1);
  if (gain.defined()) y = y * gain.to(math).view({1, 1, heads, 1});
  return y.to(q.scalar_type());
}

at::Tensor relu_square(const at::Tensor& h, double slope, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({h})) return cuda::relu_square(h, slope);
#endif
  at::Tensor a = h.to(math);
  a = slope != 0.0 ? at::leaky_relu(a, slope) : at::relu(a);
  return (a * a).to(h.scalar_type());
}

at::Tensor softcap_nll(const at::Tensor& logits, const at::Tensor& targets, double cap, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({logits})) return cuda::softcap_nll(logits.contiguous(), targets.contiguous(), cap);
#endif
  at::Tensor z = logits.to(math);
  z = cap * at::tanh(z / cap);
  return at::logsumexp(z, -1) - z.gather(1, targets.unsqueeze(1)).squeeze(1);
}

}  // namespace pgolf::fused
