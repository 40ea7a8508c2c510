#include <c10/core/GradMode.h>

#include "quant/hessian.h"

#include "data/error.h"
#include "model/pch.h"

namespace pgolf::quant {

std::map<std::string, at::Tensor> collect_hessians(const GptWeights& w, const std::vector<at::Tensor>& batches,
                                                   const HessianOptions& o) {
  if (batches.empty()) throw Error("calibration: no batches");
  const at::Device device = w.get("tok_emb.weight").device();
  std::map<std::string, at::Tensor> H;
  // The last input and its x^T x: c_q, c_k and c_v read one tensor, so the
  // product is computed once per block (the comparison is cheap next to it).
  at::Tensor last_in, last_xtx;
  ForwardOptions fo;
  fo.precision = o.precision;
  fo.looping = o.looping;
  fo.linear_input_tap = [&](const std::string& name, const at::Tensor& x) {
    at::Tensor xtx;
    if (last_in.defined() && (last_in.is_same(x) || (last_in.sizes() == x.sizes() &&
                                                      last_in.scalar_type() == x.scalar_type() && at::equal(last_in, x)))) {
      xtx = last_xtx;
    } else {
      const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      const at::Tensor x2 = x.reshape({-1, x.size(-1)}).to(acc);  // [positions, in]
      xtx = x2.t().mm(x2);                                          // [in, in]
      last_in = x;
      last_xtx = xtx;
    }
    at::Tensor& h = H[name];
    if (!h.defined()) h = xtx.clone();
    else h.add_(xtx);
  };
  c10::NoGradGuard no_grad;
  compat::Tf32MatmulGuard tf32(o.tf32 && device.is_cuda());
  for (size_t i = 0; i < batches.size(); ++i) {
    const at::Tensor& b = batches[i];
    if (b.dim() != 2 || b.size(1) < 1) throw Error("calibration: a batch must be [rows, T] tokens");
    const at::Tensor x = b.to(device, at::kLong);
    forward_nll(w, x, x, fo);  // targets are unused: any valid ids will do
    last_in = at::Tensor();
    last_xtx = at::Tensor();
    if (o.progress) o.progress(int64_t(i + 1), int64_t(batches.size()));
  }
  const double div = double(o.divide_by > 0 ? o.divide_by : int64_t(batches.size()));
  for (auto& [n, h] : H) h.div_(div);
  return H;
}

}  // namespace pgolf::quant
