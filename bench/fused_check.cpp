// Check-and-time program for the fused CUDA kernels of model/fused.h (in the
// spirit of llm.c's dev/cuda): each kernel against a float64 CPU reference and
// against the same step as plain ATen ops on the GPU, on eval-sized shapes.
// Prints max abs error (in bf16 steps of the output where useful), time per
// call and achieved bandwidth; then the same for forward + backward (the
// gradients of sum(out * u) for a fixed random u, against float64 autograd).
// Then odd shapes (row length not a multiple of 8, partial RoPE, other head
// dims, no gain) and the same values at unaligned pointers: the kernels'
// scalar paths, against ATen too, and where the vector path also applies, its
// output against the scalar path's bit for bit (column "vec==scalar": the two
// share one operation order, sum of squares included).
// Usage: pgolf_fused_check [rows]
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "model/fused.h"
#include "model/pch.h"
#include "ttt/adam.h"

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

using Tensors = std::map<std::string, at::Tensor>;
using Op = std::function<at::Tensor(const Tensors&, at::ScalarType act, at::ScalarType math)>;

// The same values (GPU), each floating tensor at a data pointer one element
// past a 16-byte boundary, still contiguous: every kernel takes its scalar path.
Tensors unaligned(const Tensors& gpu) {
  Tensors out;
  for (const auto& [name, t] : gpu) {
    if (!t.is_floating_point()) {
      out[name] = t;
      continue;
    }
    at::Tensor buf = at::empty({t.numel() + 8}, t.options());
    out[name] = buf.narrow(0, 1, t.numel()).view(t.sizes()).copy_(t);
  }
  return out;
}

void table_header() {
  std::printf("%-16s %-18s %9s %9s %9s %9s %8s %6s %8s %6s %s\n", "kernel", "path", "err krnl", "err aten", "max|ref|",
              "k!=aten%", "krnl ms", "GB/s", "aten ms", "speed", "vec==scalar");
}

// One table row: errors against the float64 reference, the share of outputs
// where kernel and ATen differ, times. With `path_check`, the kernel on
// unaligned copies of the inputs (scalar path) must equal the aligned run.
void report(const char* name, const char* path, double bytes, const Inputs& in, const Op& op,
            bool path_check = false) {
  at::Tensor ref = op(in.cpu, at::kDouble, at::kDouble).to(at::kDouble);
  at::Tensor kg = run(true, [&] { return op(in.gpu, at::kBFloat16, at::kFloat); });
  at::Tensor k = kg.cpu().to(at::kDouble);
  at::Tensor a = run(false, [&] { return op(in.gpu, at::kBFloat16, at::kFloat); }).cpu().to(at::kDouble);
  const double ek = (k - ref).abs().max().item<double>(), ea = (a - ref).abs().max().item<double>();
  const double scale = ref.abs().max().item<double>();
  const double diff = (k - a).ne(0).to(at::kDouble).mean().item<double>();
  std::string same = "-";
  if (path_check) {
    const Tensors shifted = unaligned(in.gpu);
    const at::Tensor ks = run(true, [&] { return op(shifted, at::kBFloat16, at::kFloat); });
    const double d = ks.ne(kg).to(at::kDouble).mean().item<double>();
    same = d == 0 ? "yes" : "NO (" + std::to_string(100 * d) + "% differ)";
  }
  const double tk = time_ms([&] { run(true, [&] { return op(in.gpu, at::kBFloat16, at::kFloat); }); });
  const double ta = time_ms([&] { run(false, [&] { return op(in.gpu, at::kBFloat16, at::kFloat); }); });
  std::printf("%-16s %-18s %9.3g %9.3g %9.3g %9.4f %8.3f %6.0f %8.3f %5.1fx %s\n", name, path, ek, ea, scale, 100 * diff,
              tk, bytes / tk / 1e6, ta, ta / tk, same.c_str());
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

// Causal attention backends on the eval shape (q [B, T, H, hd], k/v with KV
// heads): flash (what forward_nll runs) and cuDNN (k/v expanded to H heads),
// each against float64 attention on the CPU over the first two rows; time per
// call and FLOP/s (causal: half of 4 B H T^2 hd). Then forward + backward as
// training runs them (flash, SDPA, cuDNN), dq against float64.
void attention_check(int64_t B, int64_t T, int64_t H, int64_t KV, int64_t hd) {
  const auto bf = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const at::Tensor q = at::randn({B, T, H, hd}, bf), k = at::randn({B, T, KV, hd}, bf), v = at::randn({B, T, KV, hd}, bf);
  // float64 reference on rows 0..1: the output, and dq for the upstream gradient `up`.
  const at::Tensor up = at::randn({B, T, H, hd}, bf);
  auto expand = [&](const at::Tensor& t) { return t.repeat_interleave(H / KV, 2); };
  std::vector<at::Tensor> ref_leaves;
  for (const at::Tensor& t : {q, k, v}) ref_leaves.push_back(t.narrow(0, 0, 2).cpu().to(at::kDouble).requires_grad_(true));
  const at::Tensor qr = ref_leaves[0].transpose(1, 2), kr = expand(ref_leaves[1]).transpose(1, 2),
                   vr = expand(ref_leaves[2]).transpose(1, 2);
  at::Tensor sc = at::matmul(qr, kr.transpose(-1, -2)) / std::sqrt(double(hd));
  sc = sc.masked_fill(at::ones({T, T}, at::kBool).triu(1), -INFINITY);
  const at::Tensor y_ref = at::matmul(at::softmax(sc, -1), vr).transpose(1, 2);  // [2, T, H, hd]
  (y_ref * up.narrow(0, 0, 2).cpu().to(at::kDouble)).sum().backward();
  const at::Tensor ref = y_ref.detach(), dq_ref = ref_leaves[0].grad();
  const double flops = 2.0 * B * H * T * T * hd;  // causal half of 4 B H T^2 hd
  // One row: f's result on rows 0..1 against `want`, then f timed.
  auto report_row = [&](const char* name, const std::function<at::Tensor()>& f, const at::Tensor& want, double fl) {
    at::Tensor out;
    try {
      out = f();
    } catch (const std::exception& e) {
      std::printf("%-30s failed: %.200s\n", name, e.what());
      return;
    }
    const double err = (out.narrow(0, 0, 2).cpu().to(at::kDouble) - want).abs().max().item<double>();
    const double ms = time_ms([&] { f(); });
    std::printf("%-30s %10.3g %9.3f %9.1f\n", name, err, ms, fl / ms / 1e9);
  };
  std::printf("\nattention, causal: B %ld T %ld H %ld KV %ld hd %ld\n", long(B), long(T), long(H), long(KV), long(hd));
  std::printf("%-30s %10s %9s %9s\n", "backend", "max err", "ms", "TFLOP/s");
  auto row = [&](const char* name, const std::function<at::Tensor()>& f) { report_row(name, f, ref, flops); };
  row("flash (GQA, [B,T,H,hd])", [&] { return compat::dense_flash_attention(q, k, v, -1); });
  row("fused::causal_attention", [&] { return fused::causal_attention(q, k, v); });  // what evaluation runs
  if (compat::has_cudnn_attention) {
    const at::Tensor qh = q.transpose(1, 2), kh = expand(k).transpose(1, 2), vh = expand(v).transpose(1, 2);
    row("cudnn (k/v expanded)", [&] { return compat::cudnn_causal_attention(qh, kh, vh).transpose(1, 2); });
    row("cudnn (GQA: KV heads)", [&] {
      return compat::cudnn_causal_attention(qh, k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2);
    });
    row("cudnn + the expansion", [&] {
      return compat::cudnn_causal_attention(qh, expand(k).transpose(1, 2), expand(v).transpose(1, 2)).transpose(1, 2);
    });
  }
  // Training: forward + backward for `up`, dq on rows 0..1 against float64.
  std::printf("\nattention forward + backward (training): dq error on rows 0..1; FLOPs 3.5x the forward's\n");
  std::printf("%-30s %10s %9s %9s\n", "backend", "dq err", "ms", "TFLOP/s");
  using Attention = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>;
  auto train_row = [&](const char* name, const Attention& f) {
    report_row(name, [&] {
      std::vector<at::Tensor> l;
      for (const at::Tensor& t : {q, k, v}) l.push_back(t.detach().requires_grad_(true));
      const at::Tensor y = f(l[0], l[1], l[2]);
      return torch::autograd::grad({(y.to(at::kFloat) * up.to(at::kFloat)).sum()}, l)[0];
    }, dq_ref, 3.5 * flops);
  };
  train_row("flash, deterministic backward", [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
    return fused::flash_attention(a, b, c, -1, true);
  });
  train_row("flash, default backward", [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
    return fused::flash_attention(a, b, c, -1, false);
  });
  train_row("sdpa (k/v expanded)", [&](const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
    return compat::fused_causal_attention(a.transpose(1, 2), expand(b).transpose(1, 2), expand(c).transpose(1, 2))
        .transpose(1, 2);
  });
  if (fused::cudnn_attention_applies(q))
    train_row("fused::cudnn_attention (GQA)", [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
      return fused::cudnn_attention(a, b, c);
    });
}

// TTT's optimizer step (ttt/adam.h) on n flat float32 parameters with bf16
// gradients and a bf16 mirror, as TTT runs it: the fused kernel against the
// ATen ops (ReferenceOnly) and both against float64 on the CPU, after three
// steps of Adam (b1 0.9) and AdamW (b1 0, weight decay 0.5: varlen-0410's).
void adam_check(int64_t n) {
  std::printf("\nTTT Adam over %lld float32 parameters, bf16 gradients and mirror, 3 steps\n", (long long)n);
  std::printf("%-8s %12s %12s %12s %10s %9s %7s %9s %7s\n", "variant", "err fused", "err aten", "fused!=aten",
              "max|p|", "fused ms", "GB/s", "aten ms", "speed");
  for (const bool w : {false, true}) {
    const AdamConfig cfg = w ? AdamConfig{1e-4, 0.0, 0.999, 1e-10, 0.5, true} : AdamConfig{1e-2, 0.9, 0.95, 1e-10, 0.0, false};
    const at::Tensor p0 = at::randn({n}) * 0.05;
    std::vector<at::Tensor> g;
    for (int t = 0; t < 3; ++t) g.push_back((at::randn({n}) * 1e-3).to(at::kBFloat16));
    auto run_steps = [&](bool kernels, const at::Device& dev, at::ScalarType type) {
      std::optional<fused::ReferenceOnly> ref;
      if (!kernels) ref.emplace();
      at::Tensor p = p0.to(dev, type);
      at::Tensor mirror = dev.is_cuda() ? at::empty({n}, p.options().dtype(at::kBFloat16)) : at::Tensor();
      FlatAdam adam(cfg);
      adam.reset(p);
      for (const at::Tensor& gt : g) {
        adam.prepare();
        adam.apply(p, dev.is_cuda() ? gt.to(dev) : gt.to(type), mirror);
      }
      return std::make_pair(p, mirror);
    };
    const at::Tensor ref = run_steps(false, at::kCPU, at::kDouble).first;
    const auto [pf, mf] = run_steps(true, at::kCUDA, at::kFloat);
    const auto [pa, ma] = run_steps(false, at::kCUDA, at::kFloat);
    const double ef = (pf.cpu().to(at::kDouble) - ref).abs().max().item<double>();
    const double ea = (pa.cpu().to(at::kDouble) - ref).abs().max().item<double>();
    const double diff = pf.ne(pa).sum().item<double>() / double(n);
    const bool mirror_ok = at::equal(mf, pf.to(at::kBFloat16)) && at::equal(ma, pa.to(at::kBFloat16));
    // Timing: one step each (the factors stay those of the last step).
    at::Tensor p = p0.cuda(), mirror = at::empty({n}, p.options().dtype(at::kBFloat16)), gt = g[0].cuda();
    FlatAdam adam(cfg);
    adam.reset(p);
    adam.prepare();
    const double fms = time_ms([&] { adam.apply(p, gt, mirror); });
    const double ams = time_ms([&] {
      fused::ReferenceOnly r;
      adam.apply(p, gt, mirror);
    });
    const double bytes = 28.0 * double(n);  // p, m, v read and written; g read; mirror written
    std::printf("%-8s %12.3g %12.3g %11.5f%% %10.3g %9.3f %7.0f %9.3f %6.1fx%s\n", w ? "adamw" : "adam", ef, ea,
                100.0 * diff, ref.abs().max().item<double>(), fms, bytes / fms / 1e6, ams, ams / fms,
                mirror_ok ? "" : "  MIRROR MISMATCH");
  }
}

int main(int argc, char** argv) {
  const int64_t N = argc > 1 ? std::atoll(argv[1]) : 65536, d = 512, H = 8, KV = 4, hd = 64, F = 1024, V = 8192;
  const double eps = 1.1920928955078125e-07;
  at::manual_seed(0);
  // Inputs as bf16 values (what the kernels see); the references read the same values.
  auto bf = [](at::Tensor t) { return t.to(at::kBFloat16); };
  const at::Tensor x = bf(at::randn({N, d})), x0 = bf(at::randn({N, d})), a = bf(at::randn({N, d}));
  const at::Tensor mix = at::randn({2, d}), scale = at::randn({d});
  const int64_t B = N / 1024, T = 1024;
  // RoPE tables [T, half] for `half` rotated pairs.
  auto rope = [](int64_t T_, int64_t half) {
    const at::Tensor pos = at::arange(T_, at::kFloat).unsqueeze(1);
    const at::Tensor inv = at::pow(10000.0, -at::arange(0, 2 * half, 2, at::kFloat) / double(2 * half));
    return std::make_pair((pos * inv).cos(), (pos * inv).sin());
  };
  const at::Tensor q = bf(at::randn({B, T, H * hd})), gain = at::rand({H}) + 1.0;
  const auto [cos, sin] = rope(T, hd / 2);
  const at::Tensor h = bf(at::randn({N, F}));
  const int64_t n_logits = std::min<int64_t>(N, 8192);
  const at::Tensor logits = bf(at::randn({n_logits, V}) * 8), tg = at::randint(V, {n_logits}, at::kLong);
  const at::Tensor delta = bf(at::randn({n_logits, V}));
  Inputs in;
  in.add("x", x), in.add("x0", x0), in.add("a", a), in.add("mix", mix), in.add("scale", scale);
  in.add("q", q), in.add("gain", gain), in.add("cos", cos), in.add("sin", sin), in.add("h", h);
  in.add("logits", logits), in.add("tg", tg), in.add("delta", delta);
  in.add("y", bf(at::randn({B, T, H, hd}))), in.add("vx", bf(at::randn({B, T, KV, hd})));
  std::printf("fused kernels vs a float64 CPU reference and ATen ops on the GPU; rows %lld, d %lld\n",
              (long long)N, (long long)d);
  table_header();
  using M = const Tensors&;
  report("rms_norm", "vec", 4.0 * N * d, in, [&](M t, at::ScalarType act, at::ScalarType m) {
    return fused::rms_norm(t.at("x"), 0.5, eps, act, m);
  });
  report("mix_norm", "vec", 8.0 * N * d, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::mix_norm(t.at("x"), t.at("x0"), t.at("mix"), 1.0, eps, m).second;
  });
  report("add_scaled", "vec", 6.0 * N * d, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::add_scaled(t.at("x"), t.at("a"), t.at("scale"), m);
  });
  report("add_norm", "vec", 8.0 * N * d, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::add_norm(t.at("x"), t.at("a"), t.at("scale"), 1.0, eps, m).second;
  });
  report("qk_norm_rope", "vec, 8 lanes/head", 4.0 * B * T * H * hd, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::qk_norm_rope(t.at("q"), H, t.at("cos"), t.at("sin"), t.at("gain"), eps, m);
  });
  report("relu_square", "vec", 4.0 * N * F, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::relu_square(t.at("h"), 0.5, m);
  });
  // XSA on the frontier's attention shape: y [B, T, H, hd], v [B, T, KV, hd].
  const double xsa_fwd_bytes = 2.0 * B * T * (2 * H + KV) * hd, xsa_bytes = 2.0 * B * T * (5 * H + 3 * KV) * hd;
  report("xsa", "vec, 8 lanes/group", xsa_fwd_bytes, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::xsa(t.at("y"), t.at("vx"), m);
  });
  report("softcap_nll", "vec, two passes", 2.0 * n_logits * V, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::softcap_nll(t.at("logits"), at::Tensor(), t.at("tg"), 30.0, m);
  });
  report("softcap+delta", "vec, two passes", 4.0 * n_logits * V, in, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::softcap_nll(t.at("logits"), t.at("delta"), t.at("tg"), 30.0, m);
  });

  // Odd shapes and the scalar paths, on fewer rows: each row also runs on
  // unaligned copies (scalar path) where the aligned run takes the vector one.
  const int64_t Ns = std::max<int64_t>(N / 16, 256), d_odd = 100, Ts = 256, Bs = std::max<int64_t>(Ns / Ts, 1);
  std::printf("\nodd shapes and scalar paths (rows %lld; vec==scalar: the same values at unaligned pointers)\n",
              (long long)Ns);
  table_header();
  Inputs odd;
  odd.add("x", x.narrow(0, 0, Ns)), odd.add("x0", x0.narrow(0, 0, Ns)), odd.add("a", a.narrow(0, 0, Ns));
  odd.add("mix", mix), odd.add("scale", scale), odd.add("xf", at::randn({Ns, d}));
  odd.add("xo", bf(at::randn({Ns, d_odd}))), odd.add("x0o", bf(at::randn({Ns, d_odd})));
  odd.add("ao", bf(at::randn({Ns, d_odd}))), odd.add("mixo", at::randn({2, d_odd})), odd.add("scaleo", at::randn({d_odd}));
  odd.add("h_odd", bf(at::randn({Ns + 1, 1001})));  // numel % 8 != 0: vector chunks + a scalar tail
  report("rms_norm", "vec", 4.0 * Ns * d, odd, [&](M t, at::ScalarType act, at::ScalarType m) {
    return fused::rms_norm(t.at("x"), 0.5, eps, act, m);
  }, true);
  report("rms_norm f32 in", "vec (float4)", 6.0 * Ns * d, odd, [&](M t, at::ScalarType act, at::ScalarType m) {
    return fused::rms_norm(t.at("xf"), 1.0, eps, act, m);
  }, true);
  report("rms_norm d=100", "scalar (d%8)", 4.0 * Ns * d_odd, odd, [&](M t, at::ScalarType act, at::ScalarType m) {
    return fused::rms_norm(t.at("xo"), 0.5, eps, act, m);
  });
  report("mix_norm", "vec", 8.0 * Ns * d, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    auto [x_in, n] = fused::mix_norm(t.at("x"), t.at("x0"), t.at("mix"), 0.5, eps, m);
    return at::cat({x_in, n}, 1);
  }, true);
  report("mix_norm d=100", "scalar (d%8)", 8.0 * Ns * d_odd, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    auto [x_in, n] = fused::mix_norm(t.at("xo"), t.at("x0o"), t.at("mixo"), 1.0, eps, m);
    return at::cat({x_in, n}, 1);
  });
  report("add_scaled", "vec", 6.0 * Ns * d, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::add_scaled(t.at("x"), t.at("a"), t.at("scale"), m);
  }, true);
  report("add_scaled d=100", "scalar (d%8)", 6.0 * Ns * d_odd, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::add_scaled(t.at("xo"), t.at("ao"), t.at("scaleo"), m);
  });
  report("add_norm", "vec", 8.0 * Ns * d, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    auto [y, n] = fused::add_norm(t.at("x"), t.at("a"), t.at("scale"), 0.5, eps, m);
    return at::cat({y, n}, 1);
  }, true);
  report("add_norm d=100", "scalar (d%8)", 8.0 * Ns * d_odd, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    auto [y, n] = fused::add_norm(t.at("xo"), t.at("ao"), t.at("scaleo"), 1.0, eps, m);
    return at::cat({y, n}, 1);
  });
  odd.add("y", bf(at::randn({Bs, Ts, H, hd}))), odd.add("vx", bf(at::randn({Bs, Ts, KV, hd})));
  odd.add("yo", bf(at::randn({Bs, Ts, 2, 100}))), odd.add("vo", bf(at::randn({Bs, Ts, 1, 100})));
  report("xsa", "vec", 2.0 * Bs * Ts * (2 * H + KV) * hd, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::xsa(t.at("y"), t.at("vx"), m);
  }, true);
  report("xsa hd=100", "scalar (hd%8)", 2.0 * Bs * Ts * 5 * 100, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::xsa(t.at("yo"), t.at("vo"), m);
  });
  report("relu_square odd", "vec + scalar tail", 4.0 * (Ns + 1) * 1001, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::relu_square(t.at("h_odd"), 0.5, m);
  }, true);
  odd.add("logits", logits.narrow(0, 0, Ns)), odd.add("tg", tg.narrow(0, 0, Ns)), odd.add("delta", delta.narrow(0, 0, Ns));
  odd.add("lo", bf(at::randn({Ns, 1001}) * 8)), odd.add("tgo", at::randint(1001, {Ns}, at::kLong));
  report("softcap_nll", "vec, two passes", 2.0 * Ns * V, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::softcap_nll(t.at("logits"), t.at("delta"), t.at("tg"), 30.0, m);
  }, true);
  report("softcap_nll V=1001", "scalar (V%8)", 2.0 * Ns * 1001, odd, [&](M t, at::ScalarType, at::ScalarType m) {
    return fused::softcap_nll(t.at("lo"), at::Tensor(), t.at("tgo"), 30.0, m);
  });
  // qk_norm_rope: (head dim, rotated pairs, gain); the vector path needs
  // hd % 8 == 0, hd <= 256 and half % 8 == 0.
  struct QkCase {
    int64_t hd, half;
    bool gain;
  };
  for (const QkCase& c : {QkCase{64, 32, true}, QkCase{64, 8, true}, QkCase{64, 32, false}, QkCase{128, 64, true},
                          QkCase{128, 16, true}, QkCase{32, 16, true}, QkCase{48, 24, true}, QkCase{256, 128, true},
                          QkCase{64, 4, true}, QkCase{64, 12, true}, QkCase{20, 10, true}, QkCase{40, 8, true},
                          QkCase{512, 256, true}}) {
    const bool vec = c.hd % 8 == 0 && c.hd <= 256 && c.half % 8 == 0;
    int lanes = 1;
    while (lanes * 8 < c.hd) lanes *= 2;
    Inputs qi;
    const auto [qc, qs] = rope(Ts, c.half);
    qi.add("q", bf(at::randn({Bs, Ts, H * c.hd}))), qi.add("cos", qc), qi.add("sin", qs), qi.add("gain", gain);
    const std::string name = "qk hd" + std::to_string(c.hd) + " half" + std::to_string(c.half) + (c.gain ? "" : " -g");
    const std::string path = vec ? "vec, " + std::to_string(lanes) + " lanes/head" : "scalar";
    report(name.c_str(), path.c_str(), 4.0 * Bs * Ts * H * c.hd, qi, [&](M t, at::ScalarType, at::ScalarType m) {
      return fused::qk_norm_rope(t.at("q"), H, t.at("cos"), t.at("sin"), c.gain ? t.at("gain") : at::Tensor(), eps, m);
    }, vec);
  }

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
  report_grad("xsa", xsa_bytes, in, {"y", "vx"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::xsa(t.at("y"), t.at("vx"), m)};
  });
  report_grad("softcap_nll", 6.0 * n_logits * V, in, {"logits"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::softcap_nll(t.at("logits"), at::Tensor(), t.at("tg"), 30.0, m)};
  });
  report_grad("softcap+delta", 10.0 * n_logits * V, in, {"logits", "delta"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::softcap_nll(t.at("logits"), t.at("delta"), t.at("tg"), 30.0, m)};
  });
  // The backward kernels' scalar paths (d % 8 != 0) and a partial-RoPE head.
  report_grad("rms_norm d=100", 8.0 * Ns * d_odd, odd, {"xo"}, [&](M t, at::ScalarType act, at::ScalarType m) {
    return Outs{fused::rms_norm(t.at("xo"), 0.5, eps, act, m)};
  });
  report_grad("mix_norm d=100", 20.0 * Ns * d_odd, odd, {"xo", "x0o", "mixo"}, [&](M t, at::ScalarType, at::ScalarType m) {
    auto [x_in, n] = fused::mix_norm(t.at("xo"), t.at("x0o"), t.at("mixo"), 1.0, eps, m);
    return Outs{x_in, n};
  });
  report_grad("add_norm d=100", 20.0 * Ns * d_odd, odd, {"xo", "ao", "scaleo"}, [&](M t, at::ScalarType, at::ScalarType m) {
    auto [y, n] = fused::add_norm(t.at("xo"), t.at("ao"), t.at("scaleo"), 1.0, eps, m);
    return Outs{y, n};
  });
  report_grad("xsa hd=100", 2.0 * Bs * Ts * 13 * 100, odd, {"yo", "vo"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::xsa(t.at("yo"), t.at("vo"), m)};
  });
  odd.add("dlo", bf(at::randn({Ns, 1001})));
  report_grad("softcap V=1001", 10.0 * Ns * 1001, odd, {"lo", "dlo"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::softcap_nll(t.at("lo"), t.at("dlo"), t.at("tgo"), 30.0, m)};
  });
  report_grad("relu_sq odd", 10.0 * (Ns + 1) * 1001, odd, {"h_odd"}, [&](M t, at::ScalarType, at::ScalarType m) {
    return Outs{fused::relu_square(t.at("h_odd"), 0.5, m)};
  });
  {
    Inputs qi;
    const auto [qc, qs] = rope(Ts, 8);
    qi.add("q", bf(at::randn({Bs, Ts, H * hd}))), qi.add("cos", qc), qi.add("sin", qs), qi.add("gain", gain);
    report_grad("qk half8", 10.0 * Bs * Ts * H * hd, qi, {"q", "gain"}, [&](M t, at::ScalarType, at::ScalarType m) {
      return Outs{fused::qk_norm_rope(t.at("q"), H, t.at("cos"), t.at("sin"), t.at("gain"), eps, m)};
    });
  }
  attention_check(B, T, H, KV, hd);
  adam_check(int64_t(64) << 20);
  return 0;
}
