// Adam / AdamW on one flat parameter tensor, written with plain tensor ops:
// every element (so every batch row's adapter) is updated independently, in a
// handful of kernels. The update is torch.optim.Adam's (decoupled = false:
// L2 weight decay added to the gradient) or torch.optim.AdamW's (decoupled:
// p *= 1 - lr * wd first), with bias correction:
//   t += 1; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace pgolf {

struct AdamConfig {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled = false;  // AdamW
};

class FlatAdam {
 public:
  explicit FlatAdam(const AdamConfig& c) : c_(c) {}
  // Fresh state (zero moments, step 0) shaped like p.
  void reset(const at::Tensor& p);
  // One update of p in place (no autograd recording) from gradient g.
  void step(at::Tensor& p, const at::Tensor& g);
  int64_t steps() const { return t_; }

 private:
  AdamConfig c_;
  at::Tensor m_, v_;
  int64_t t_ = 0;
};

}  // namespace pgolf
