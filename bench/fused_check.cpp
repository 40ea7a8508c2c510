// Check-and-time program for the fused CUDA kernels of model/fused.h (in the
// spirit of llm.c's dev/cuda): each kernel against a float64 CPU reference and
// against the same step as plain ATen ops on the GPU, on eval-sized shapes.
// Prints max abs error (in bf16 steps of the output where useful), time per
// call and achieved bandwidth; then the same for forward + backward (the
// gradients of sum(out * u) for a fixed random u, against float64 autograd).
// Usage: pgolf_fused_check [rows]
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>

#include "model/fused.h"
#include "model/pch.h"

using namespace pgolf;

namespace {

double time_ms(const std::function<void()>& f) {
  for (int i = 0; i < 3; ++i) f();
  c10::cuda::device_synchronize();
  const int reps = 20;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  c10::cuda::device_synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// Runs f with the kernels or with the ATen reference.
at::Tensor run(bool kernels, const std::function<at::Tensor()>& f) {
  if (kernels) return f();
  fused::ReferenceOnly ref;
  return f();
}

// The same inputs as float64 on the CPU (the reference) and on the GPU.
struct Inputs {
  std::map<std::string, at::Tensor> cpu, gpu;
  void add(const std::string& name, const at::Tensor& t) {
    cpu[name] = t.is_floating_point() ? t.to(at::kDouble) : t;
    gpu[name] = t.to(at::kCUDA);
  }
};

using Op = std::function<at::Tensor(const std::map<std::string, at::Tensor>&, at::ScalarType act, at::ScalarType math)>;

void report(const char* name, double bytes, const Inputs& in, const Op& op) {
  at::Tensor ref = op(in.cpu, at::kDouble, at::kDouble).to(at::kDouble);
  at::Tensor k = run(true, [&] { return op(in.gpu, at::kBFloat16, at::kFloat); }).cpu().to(at::kDouble);
  at::Tensor a = run(false, [&] { return op(in.gpu, at::kBFloat16, at::kFloat); }).cpu().to(at::kDouble);
  const double ek = (k - ref).abs().max().item<double>(), ea = (a - ref).abs().max().item<double>();
  const double scale = ref.abs().max().item<double>();
  const double diff = (k - a).ne(0).to(at::kDouble).mean().item<double>();
  const double tk = time_ms([&] { run(true, [&] { return op(in.gpu, at::kBFloat16, at::kFloat); }); });
  const double ta = time_ms([&] { run(false, [&] { return op(in.gpu, at::kBFloat16, at::kFloat); }); });
  std::printf("%-13s err kernel %.3g aten %.3g (max|ref| %.3g; kernel != aten on %.4f%%) | kernel %.3f ms "
              "%5.0f GB/s | aten %.3f ms | %.1fx\n",
              name, ek, ea, scale, 100 * diff, tk, bytes / tk / 1e6, ta, ta / tk);
}

using GradOp = std::function<std::vector<at::Tensor>(const std::map<std::string, at::Tensor>&, at::ScalarType act,
                                                      at::ScalarType math)>;

// The inputs `wrt` of `base` as leaves that require grad.
std::map<std::string, at::Tensor> with_leaves(const std::map<std::string, at::Tensor>& base,
                                              const std::vector<std::string>& wrt, std::vector<at::Tensor>& leaves) {
  std::map<std::string, at::Tensor> t = base;
  leaves.clear();
  for (const std::string& n : wrt) leaves.push_back(t[n] = base.at(n).detach().clone().requires_grad_(true));
  return t;
}

// Forward, then the gradients of the leaves for upstream gradients `ups`
// (one per output, in the outputs' types and device).
std::vector<at::Tensor> grads(const std::map<std::string, at::Tensor>& t, const std::vector<at::Tensor>& leaves,
                              at::ScalarType act, at::ScalarType math, const GradOp& op,
                              const std::vector<at::Tensor>& ups) {
  return torch::autograd::grad(op(t, act, math), leaves, ups);
}

void report_grad(const char* name, double bytes, const Inputs& in, const std::vector<std::string>& wrt,
                 const GradOp& op) {
  std::vector<at::Tensor> lc, lg;
  const auto tc = with_leaves(in.cpu, wrt, lc), tg = with_leaves(in.gpu, wrt, lg);
  std::vector<at::Tensor> up_c, up_g;  // upstream gradients: bf16 values, fixed per op
  for (const at::Tensor& o : op(tc, at::kDouble, at::kDouble))
    up_c.push_back(at::randn(o.sizes(), at::kDouble).to(at::kBFloat16).to(at::kDouble));
  const std::vector<at::Tensor> outs_g = op(tg, at::kBFloat16, at::kFloat);
  for (size_t i = 0; i < up_c.size(); ++i) up_g.push_back(up_c[i].to(outs_g[i].scalar_type()).to(at::kCUDA));
  const std::vector<at::Tensor> ref = grads(tc, lc, at::kDouble, at::kDouble, op, up_c);
  std::vector<at::Tensor> k, a;
  k = grads(tg, lg, at::kBFloat16, at::kFloat, op, up_g);
  {
    fused::ReferenceOnly only;
    a = grads(tg, lg, at::kBFloat16, at::kFloat, op, up_g);
  }
  std::printf("%-13s grad", name);
  for (size_t i = 0; i < wrt.size(); ++i) {
    const at::Tensor r = ref[i], gk = k[i].cpu().to(at::kDouble), ga = a[i].cpu().to(at::kDouble);
    const double scale = r.abs().max().item<double>();
    std::printf(" %s: kernel %.3g aten %.3g (max|ref| %.3g);", wrt[i].c_str(), (gk - r).abs().max().item<double>(),
                (ga - r).abs().max().item<double>(), scale);
  }
  const double tk = time_ms([&] { grads(tg, lg, at::kBFloat16, at::kFloat, op, up_g); });
  const double ta = time_ms([&] {
    fused::ReferenceOnly only;
    grads(tg, lg, at::kBFloat16, at::kFloat, op, up_g);
  });
  std::printf(" | fwd+bwd kernel %.3f ms %5.0f GB/s | aten %.3f ms | %.1fx\n", tk, bytes / tk / 1e6, ta, ta / tk);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t N = argc > 1 ? std::atoll(argv[1]) : 65536, d = 512, H = 8, KV = 4, hd = 64, F = 1024, V = 8192;
  const double eps = 1.1920928955078125e-07;
  at::manual_seed(0);
  // Inputs as bf16 values (what the kernels see); the references read the same values.
  auto bf = [](at::Tensor t) { return t.to(at::kBFloat16); };
  const at::Tensor x = bf(at::randn({N, d})), x0 = bf(at::randn({N, d})), a = bf(at::randn({N, d}));
  const at::Tensor mix = at::randn({2, d}), scale = at::randn({d});
  const int64_t B = N / 1024, T = 1024;
  const at::Tensor q = bf(at::randn({B, T, H * hd})), gain = at::rand({H}) + 1.0;
  const at::Tensor pos = at::arange(T, at::kFloat).unsqueeze(1), inv = at::pow(10000.0, -at::arange(0, hd, 2, at::kFloat) / hd);
  const at::Tensor cos = (pos * inv).cos(), sin = (pos * inv).sin();
  const at::Tensor h = bf(at::randn({N, F}));
  const int64_t n_logits = std::min<int64_t>(N, 8192);
  const at::Tensor logits = bf(at::randn({n_logits, V}) * 8), tg = at::randint(V, {n_logits}, at::kLong);
  const at::Tensor delta = bf(at::randn({n_logits, V}));
  Inputs in;
  in.add("x", x), in.add("x0", x0), in.add("a", a), in.add("mix", mix), in.add("scale", scale);
  in.add("q", q), in.add("gain", gain), in.add("cos", cos), in.add("sin", sin), in.add("h", h);
  in.add("logits", logits), in.add("tg", tg), in.add("delta", delta);
  std::printf("fused kernels vs a float64 CPU reference and ATen ops on the GPU; rows %lld, d %lld\n",
              (long long)N, (long long)d);
  using M = const std::map<std::string, at::Tensor>&;
  report("rms_norm", 4.0 * N * d, in, [&](M t, at::ScalarType act, at::ScalarType m) {
    return fused::rms_norm(t.at("x"), 0.5, eps, act, m);
  });
  report("mix_norm", 8.0 * N * d, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::mix_norm(t.at("x"), t.at("x0"), t.at("mix"), 1.0, eps, m).second;
  });
  report("add_scaled", 6.0 * N * d, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::add_scaled(t.at("x"), t.at("a"), t.at("scale"), m);
  });
  report("add_norm", 8.0 * N * d, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::add_norm(t.at("x"), t.at("a"), t.at("scale"), 1.0, eps, m).second;
  });
  report("qk_norm_rope", 4.0 * B * T * H * hd, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::qk_norm_rope(t.at("q"), H, t.at("cos"), t.at("sin"), t.at("gain"), eps, m);
  });
  report("relu_square", 4.0 * N * F, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::relu_square(t.at("h"), 0.5, m);
  });
  report("softcap_nll", 2.0 * n_logits * V, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::softcap_nll(t.at("logits"), at::Tensor(), t.at("tg"), 30.0, m);
  });
  report("softcap+delta", 4.0 * n_logits * V, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::softcap_nll(t.at("logits"), t.at("delta"), t.at("tg"), 30.0, m);
  });

  // Forward + backward. Bytes: the backward's own traffic (inputs re-read,
  // upstream gradients read, input gradients written) plus the forward's.
  std::printf("\nforward + backward: gradients vs float64 autograd on the CPU, kernels vs ATen on the GPU\n");
  using Outs = std::vector<at::Tensor>;
  report_grad("rms_norm", 8.0 * N * d, in, {"x"}, [&](M t, at::ScalarType act, at::ScalarType m) {
    return Outs{fused::rms_norm(t.at("x"), 0.5, eps, act, m)};
  });
  report_grad("mix_norm", 20.0 * N * d, in, {"x", "x0", "mix"}, [&](M t, at::ScalarType, at::ScalarType m) {
    auto [x_in, n] = fused::mix_norm(t.at("x"), t.at("x0"), t.at("mix"), 1.0, eps, m);
    return Outs{x_in, n};
  });
  report_grad("add_scaled", 14.0 * N * d, in, {"x", "a", "scale"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::add_scaled(t.at("x"), t.at("a"), t.at("scale"), m)};
  });
  report_grad("add_norm", 20.0 * N * d, in, {"x", "a", "scale"}, [&](M t, at::ScalarType, at::ScalarType m) {
    auto [y, n] = fused::add_norm(t.at("x"), t.at("a"), t.at("scale"), 1.0, eps, m);
    return Outs{y, n};
  });
  report_grad("qk_norm_rope", 10.0 * B * T * H * hd, in, {"q", "gain"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::qk_norm_rope(t.at("q"), H, t.at("cos"), t.at("sin"), t.at("gain"), eps, m)};
  });
  report_grad("relu_square", 10.0 * N * F, in, {"h"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::relu_square(t.at("h"), 0.5, m)};
  });
  report_grad("softcap_nll", 6.0 * n_logits * V, in, {"logits"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::softcap_nll(t.at("logits"), at::Tensor(), t.at("tg"), 30.0, m)};
  });
  report_grad("softcap+delta", 10.0 * n_logits * V, in, {"logits", "delta"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::softcap_nll(t.at("logits"), t.at("delta"), t.at("tg"), 30.0, m)};
  });
  (void)KV;
  return 0;
}
