#include "ttt/adam.h"

#include <c10/core/GradMode.h>

#include <cmath>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf {

void FlatAdam::reset(const at::Tensor& p) {
  c10::NoGradGuard no_grad;
  if (m_.defined() && m_.sizes() == p.sizes() && m_.options().type_equal(p.options())) {
    m_.zero_();
    v_.zero_();
  } else {
    m_ = at::zeros_like(p);
    v_ = at::zeros_like(p);
    factors_ = at::zeros({2}, p.options().requires_grad(false));
  }
  t_ = 0;
}

void FlatAdam::prepare() {
  if (!factors_.defined()) throw Error("adam: prepare() before reset()");
  ++t_;
  const double bc1 = 1.0 - std::pow(c_.beta1, double(t_)), bc2 = 1.0 - std::pow(c_.beta2, double(t_));
  const at::Tensor host = at::tensor({-c_.lr / bc1, std::sqrt(bc2)}, at::kDouble).to(factors_.scalar_type());
  c10::NoGradGuard no_grad;
  // Pinned and asynchronous on CUDA: queued in order before the update.
  if (factors_.is_cuda())
    factors_.copy_(host.pin_memory(), /*non_blocking=*/true);
  else
    factors_.copy_(host);
}

void FlatAdam::apply(at::Tensor& p, const at::Tensor& grad, const at::Tensor& mirror, const FlatParts* parts) {
  c10::NoGradGuard no_grad;
  if (fused::adam_available(p, grad, mirror)) {
    fused::adam_update(p, grad, m_, v_, factors_, c_, mirror, parts);
    return;
  }
  if (!parts) {
    update(p, grad, m_, v_, mirror);
    return;
  }
  for (const auto& [start, length] : parts->host) {
    if (start < 0 || length < 0 || start + length > p.numel()) throw Error("adam: a part outside the parameters");
    at::Tensor ps = p.narrow(0, start, length), ms = m_.narrow(0, start, length), vs = v_.narrow(0, start, length);
    update(ps, grad.narrow(0, start, length), ms, vs, mirror.defined() ? mirror.narrow(0, start, length) : mirror);
  }
}

void FlatAdam::update(at::Tensor& p, const at::Tensor& grad, at::Tensor& m, at::Tensor& v,
                      const at::Tensor& mirror) const {
  at::Tensor g = grad.to(p.scalar_type());
  if (c_.weight_decay != 0.0) {
    if (c_.decoupled)
      p.mul_(1.0 - c_.lr * c_.weight_decay);
    else
      g = g + c_.weight_decay * p;
  }
  m.lerp_(g, 1.0 - c_.beta1);
  v.mul_(c_.beta2).addcmul_(g, g, 1.0 - c_.beta2);
  at::Tensor denom = (v.sqrt() / factors_.select(0, 1)).add_(c_.eps);
  p.add_(m / denom * factors_.select(0, 0));
  if (mirror.defined()) mirror.copy_(p);
}

}  // namespace pgolf
