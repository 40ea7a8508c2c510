#include "ttt/adam.h"

#include <c10/core/GradMode.h>

#include <cmath>

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
  }
  t_ = 0;
}

void FlatAdam::step(at::Tensor& p, const at::Tensor& grad) {
  c10::NoGradGuard no_grad;
  ++t_;
  at::Tensor g = grad;
  if (c_.weight_decay != 0.0) {
    if (c_.decoupled)
      p.mul_(1.0 - c_.lr * c_.weight_decay);
    else
      g = g + c_.weight_decay * p;
  }
  m_.lerp_(g, 1.0 - c_.beta1);
  v_.mul_(c_.beta2).addcmul_(g, g, 1.0 - c_.beta2);
  const double bc1 = 1.0 - std::pow(c_.beta1, double(t_)), bc2 = 1.0 - std::pow(c_.beta2, double(t_));
  at::Tensor denom = (v_.sqrt() / std::sqrt(bc2)).add_(c_.eps);
  p.addcdiv_(m_, denom, -c_.lr / bc1);
}

}  // namespace pgolf
