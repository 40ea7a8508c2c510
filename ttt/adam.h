// Adam / AdamW on one flat parameter tensor: every element (so every batch
// row's adapter) is updated independently -- one fused kernel for float32 on
// CUDA (fused::adam_update), plain tensor ops elsewhere. The update is torch.optim.Adam's (decoupled = false:
// L2 weight decay added to the gradient) or torch.optim.AdamW's (decoupled:
// p *= 1 - lr * wd first), with bias correction:
//   t += 1; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The step-dependent factors live in a device tensor written by prepare(),
// so apply() is a fixed sequence of device ops that a CUDA graph can hold
// (ttt/ttt_step.h replays it).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/fused.h"  // AdamConfig, FlatParts (its fused update takes them too)

namespace pgolf {

class FlatAdam {
 public:
  explicit FlatAdam(const AdamConfig& c) : c_(c) {}
  // Fresh state (zero moments, step 0) shaped like p; in place when the
  // shape and type are kept (a captured graph holds the tensors).
  void reset(const at::Tensor& p);
  // t += 1 and queue that step's bias corrections to the device (host side).
  void prepare();
  // The update of p in place from gradient g (p's type, or a narrower one:
  // read as p's) with the prepared step's factors (device ops only, no
  // autograd recording); mirror, when defined, receives the new p in its own
  // type (BatchAdapters::mirror). parts (optional): only those elements are
  // updated (BatchAdapters::row_parts: the rows a step trains).
  void apply(at::Tensor& p, const at::Tensor& g, const at::Tensor& mirror = {}, const FlatParts* parts = nullptr);
  // prepare() then apply().
  void step(at::Tensor& p, const at::Tensor& g) {
    prepare();
    apply(p, g);
  }
  int64_t steps() const { return t_; }

 private:
  // The ATen ops' update of p from grad with moments m, v (views of m_, v_).
  void update(at::Tensor& p, const at::Tensor& grad, at::Tensor& m, at::Tensor& v, const at::Tensor& mirror) const;

  AdamConfig c_;
  at::Tensor m_, v_;
  at::Tensor factors_;  // [2] like p: -lr / (1 - b1^t), sqrt(1 - b2^t)
  int64_t t_ = 0;
};

}  // namespace pgolf
