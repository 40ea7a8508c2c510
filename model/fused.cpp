#include "model/fused.h"

#include <c10/core/GradMode.h>

#include <stdexcept>

#include "model/pch.h"
#if PGOLF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <torch/csrc/autograd/custom_function.h>

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

// A gradient to record through one of these inputs: the kernels then run
// inside an autograd Function with their backward kernels.
[[maybe_unused]] bool records_grad(std::initializer_list<at::Tensor> inputs) {  // CUDA builds only
  if (!c10::GradMode::is_enabled()) return false;
  for (const at::Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

}  // namespace

bool use_kernels(std::initializer_list<at::Tensor> inputs) {
#if PGOLF_WITH_CUDA
  if (inputs.size() == 0 || reference_only) return false;
  const at::Tensor& x = *inputs.begin();
  return x.is_cuda() && x.scalar_type() == at::kBFloat16;
#else
  (void)inputs;
  return false;
#endif
}

#if PGOLF_WITH_CUDA
namespace {

// Autograd Functions around the kernels: forward = the forward kernel,
// backward = the backward kernels of model/fused_cuda.h. They save the
// inputs (not the float32 intermediates the ATen graph would keep) and
// recompute the per-row norms. Gradients of outputs nobody used arrive
// undefined (materialize_grads off) and count as zero.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor contig(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

// Function inputs must be defined tensors: an absent optional input travels
// as an empty one (same device) and is turned back into "none" inside.
at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options().dtype(at::kFloat));
}
at::Tensor none_if_empty(const at::Tensor& t) { return t.numel() ? t : at::Tensor(); }

struct RmsNormFn : torch::autograd::Function<RmsNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double factor, double eps) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x});
    ctx->saved_data["factor"] = factor;
    ctx->saved_data["eps"] = eps;
    return cuda::rms_norm(x, factor, eps);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    if (!g[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor x = ctx->get_saved_variables()[0];
    return {cuda::rms_norm_backward(x, contig(g[0]), ctx->saved_data["factor"].toDouble(),
                                    ctx->saved_data["eps"].toDouble()),
            at::Tensor(), at::Tensor()};
  }
};

// (x_in, n) = mix_norm(x, x0, mix).
struct MixNormFn : torch::autograd::Function<MixNormFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& x0, const at::Tensor& mix,
                               double factor, double eps) {
    ctx->set_materialize_grads(false);
    auto [x_in, n] = cuda::mix_norm(x, x0, mix, factor, eps);
    ctx->save_for_backward({x, x0, mix, x_in});
    ctx->saved_data["factor"] = factor;
    ctx->saved_data["eps"] = eps;
    return {x_in, n};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &x0 = s[1], &mix = s[2], &x_in = s[3];
    if (!g[0].defined() && !g[1].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const bool gx = ctx->needs_input_grad(0), gx0 = ctx->needs_input_grad(1), gmix = ctx->needs_input_grad(2);
    cuda::NormGrads r = cuda::residual_norm_backward(x_in, contig(g[0]), contig(g[1]), gx ? mix[0] : at::Tensor(),
                                                     gx0 ? mix[1] : at::Tensor(), gmix,
                                                     ctx->saved_data["factor"].toDouble(),
                                                     ctx->saved_data["eps"].toDouble());
    at::Tensor dmix = gmix ? at::stack({cuda::col_dot(r.gt, x), cuda::col_dot(r.gt, x0)}) : at::Tensor();
    return {r.o1, r.o2, dmix, at::Tensor(), at::Tensor()};
  }
};

// y = x + scale a.
struct AddScaledFn : torch::autograd::Function<AddScaledFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({a, scale});
    return cuda::add_scaled(x, a, scale);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    if (!g[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor gy = g[0].contiguous();
    return {ctx->needs_input_grad(0) ? gy : at::Tensor(),
            ctx->needs_input_grad(1) ? cuda::scale_cols(gy, s[1]) : at::Tensor(),
            ctx->needs_input_grad(2) ? cuda::col_dot(gy, s[0]) : at::Tensor()};
  }
};

// (y, n) = add_norm(x, a, scale).
struct AddNormFn : torch::autograd::Function<AddNormFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale,
                               double factor, double eps) {
    ctx->set_materialize_grads(false);
    auto [y, n] = cuda::add_norm(x, a, scale, factor, eps);
    ctx->save_for_backward({a, scale, y});
    ctx->saved_data["factor"] = factor;
    ctx->saved_data["eps"] = eps;
    return {y, n};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &a = s[0], &scale = s[1], &y = s[2];
    if (!g[0].defined() && !g[1].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const bool gx = ctx->needs_input_grad(0), ga = ctx->needs_input_grad(1), gs = ctx->needs_input_grad(2);
    cuda::NormGrads r = cuda::residual_norm_backward(y, contig(g[0]), contig(g[1]), ga ? scale : at::Tensor(),
                                                     at::Tensor(), gx || gs, ctx->saved_data["factor"].toDouble(),
                                                     ctx->saved_data["eps"].toDouble());
    return {gx ? r.gt : at::Tensor(), r.o1, gs ? cuda::col_dot(r.gt, a) : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct QkNormRopeFn : torch::autograd::Function<QkNormRopeFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& gain, int64_t heads,
                            const at::Tensor& cos, const at::Tensor& sin, double eps) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({q, gain, cos, sin});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["eps"] = eps;
    return cuda::qk_norm_rope(q, heads, cos, sin, none_if_empty(gain), eps);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list none(6);
    if (!g[0].defined()) return none;
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor q = s[0], gain = none_if_empty(s[1]);
    auto [gq, ggain] = cuda::qk_norm_rope_backward(q, g[0].contiguous(), ctx->saved_data["heads"].toInt(), s[2], s[3],
                                                   gain, gain.defined() && ctx->needs_input_grad(1),
                                                   ctx->saved_data["eps"].toDouble());
    variable_list out = none;
    if (ctx->needs_input_grad(0)) out[0] = gq;
    out[1] = ggain;
    return out;
  }
};

struct ReluSquareFn : torch::autograd::Function<ReluSquareFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h, double slope) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({h});
    ctx->saved_data["slope"] = slope;
    return cuda::relu_square(h, slope);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    if (!g[0].defined()) return {at::Tensor(), at::Tensor()};
    return {cuda::relu_square_backward(ctx->get_saved_variables()[0], g[0].contiguous(),
                                       ctx->saved_data["slope"].toDouble()),
            at::Tensor()};
  }
};

// nll = softcap_nll(logits (+ delta)); the targets are not differentiable.
struct SoftcapNllFn : torch::autograd::Function<SoftcapNllFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& delta,
                            const at::Tensor& targets, double cap) {
    ctx->set_materialize_grads(false);
    auto [nll, lse] = cuda::softcap_nll(logits, none_if_empty(delta), targets, cap, true);
    ctx->save_for_backward({logits, delta, targets, lse});
    ctx->saved_data["cap"] = cap;
    return nll;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list none(4);
    if (!g[0].defined()) return none;
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor delta = none_if_empty(s[1]);
    at::Tensor gl = cuda::softcap_nll_backward(s[0], delta, s[2], s[3], g[0].to(at::kFloat).contiguous(),
                                               ctx->saved_data["cap"].toDouble());
    variable_list out = none;
    if (ctx->needs_input_grad(0)) out[0] = gl;
    if (delta.defined() && ctx->needs_input_grad(1)) out[1] = gl;
    return out;
  }
};

struct XsaFn : torch::autograd::Function<XsaFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& v) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({y, v});
    return cuda::xsa(y, v);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    if (!g[0].defined()) return {at::Tensor(), at::Tensor()};
    const variable_list s = ctx->get_saved_variables();
    auto [gy, gv] = cuda::xsa_backward(s[0], s[1], g[0].contiguous(), ctx->needs_input_grad(1));
    return {ctx->needs_input_grad(0) ? gy : at::Tensor(), gv};
  }
};

struct FlashAttentionFn : torch::autograd::Function<FlashAttentionFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t window_left, bool deterministic) {
    ctx->set_materialize_grads(false);
    compat::FlashForward f = compat::dense_flash_attention_saved(q, k, v, window_left);
    ctx->save_for_backward({q, k, v, f.out, f.lse, f.rng_state, f.unused});
    ctx->saved_data["window_left"] = window_left;
    ctx->saved_data["deterministic"] = deterministic;
    return f.out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    if (!g[0].defined()) return variable_list(5);
    const variable_list s = ctx->get_saved_variables();
    auto [gq, gk, gv] = compat::dense_flash_attention_backward(
        g[0].contiguous(), s[0], s[1], s[2], {s[3], s[4], s[5], s[6]}, ctx->saved_data["window_left"].toInt(),
        ctx->saved_data["deterministic"].toBool());
    return {gq, gk, gv, at::Tensor(), at::Tensor()};
  }
};

struct VarlenFlashFn : torch::autograd::Function<VarlenFlashFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t window_left,
                            bool deterministic) {
    ctx->set_materialize_grads(false);
    compat::FlashForward f = compat::varlen_flash_attention_saved(q, k, v, cu_seqlens, max_seqlen, window_left);
    ctx->save_for_backward({q, k, v, f.out, f.lse, f.rng_state, f.unused, cu_seqlens});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["window_left"] = window_left;
    ctx->saved_data["deterministic"] = deterministic;
    return f.out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    if (!g[0].defined()) return variable_list(7);
    const variable_list s = ctx->get_saved_variables();
    auto [gq, gk, gv] = compat::varlen_flash_attention_backward(
        g[0].contiguous(), s[0], s[1], s[2], {s[3], s[4], s[5], s[6]}, s[7], ctx->saved_data["max_seqlen"].toInt(),
        ctx->saved_data["window_left"].toInt(), ctx->saved_data["deterministic"].toBool());
    return {gq, gk, gv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// cuDNN's attention on [B, H, T, hd] views (compat::cudnn_attention_saved).
struct CudnnAttentionFn : torch::autograd::Function<CudnnAttentionFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    ctx->set_materialize_grads(false);
    compat::CudnnForward f = compat::cudnn_attention_saved(q, k, v);
    // Undefined philox tensors (no dropout) cannot be saved as variables.
    ctx->save_for_backward({q, k, v, f.out, f.lse});
    ctx->saved_data["seed"] = f.seed.defined() ? c10::IValue(f.seed) : c10::IValue();
    ctx->saved_data["offset"] = f.offset.defined() ? c10::IValue(f.offset) : c10::IValue();
    return f.out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    if (!g[0].defined()) return variable_list(3);
    const variable_list s = ctx->get_saved_variables();
    auto [gq, gk, gv] = compat::cudnn_attention_backward(
        g[0], s[0], s[1], s[2],
        {s[3], s[4], compat::tensor_or_undefined(ctx->saved_data["seed"]),
         compat::tensor_or_undefined(ctx->saved_data["offset"])});
    return {gq, gk, gv};
  }
};

}  // namespace
#endif

bool cudnn_attention_applies(const at::Tensor& q) {
#if PGOLF_WITH_CUDA
  const int64_t hd = q.size(-1);
  return q.is_cuda() && q.scalar_type() == at::kBFloat16 && hd % 8 == 0 && hd <= 128 &&
         at::cuda::getDeviceProperties(q.get_device())->major >= 9 && compat::cudnn_training_attention_available();
#else
  (void)q;
  return false;
#endif
}

at::Tensor cudnn_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if PGOLF_WITH_CUDA
  // [B, T, H, hd] -> the [B, H, T, hd] views cuDNN takes, and back.
  return CudnnAttentionFn::apply(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2);
#else
  (void)q, (void)k, (void)v;
  throw std::logic_error("fused::cudnn_attention needs a CUDA build");
#endif
}

at::Tensor varlen_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t window_left,
                                  bool deterministic) {
#if PGOLF_WITH_CUDA
  if (records_grad({q, k, v}))
    return VarlenFlashFn::apply(q, k, v, cu_seqlens, max_seqlen, window_left, deterministic);
#endif
  return compat::varlen_flash_attention(q, k, v, cu_seqlens, max_seqlen, window_left);
}

at::Tensor flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window_left,
                           bool deterministic) {
#if PGOLF_WITH_CUDA
  if (records_grad({q, k, v})) return FlashAttentionFn::apply(q, k, v, window_left, deterministic);
#endif
  return compat::dense_flash_attention(q, k, v, window_left);
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if PGOLF_WITH_CUDA
  const int64_t hd = q.size(3);
  const bool hopper = q.is_cuda() && at::cuda::getDeviceProperties(q.get_device())->major >= 9;
  if (compat::has_cudnn_attention && hopper && q.size(1) == k.size(1) && hd % 8 == 0 && hd <= 128 &&
      !records_grad({q, k, v}))
    return compat::cudnn_causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2);
#endif
  return flash_attention(q, k, v, -1, /*deterministic=*/true);  // no gradient here
}

at::Tensor rms_norm(const at::Tensor& x, double factor, double eps, at::ScalarType act, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (act == at::kBFloat16 && x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat) &&
      !reference_only) {
    const at::Tensor xc = x.contiguous();
    return records_grad({xc}) ? RmsNormFn::apply(xc, factor, eps) : cuda::rms_norm(xc, factor, eps);
  }
#endif
  return scaled(rms(x.to(math), eps), factor).to(act);
}

std::pair<at::Tensor, at::Tensor> mix_norm(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& mix,
                                           double factor, double eps, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({x, x0, mix})) {
    const at::Tensor xc = x.contiguous(), x0c = x0.contiguous(), m = mix.to(at::kFloat).contiguous();
    if (!records_grad({xc, x0c, m})) return cuda::mix_norm(xc, x0c, m, factor, eps);
    variable_list r = MixNormFn::apply(xc, x0c, m, factor, eps);
    return {r[0], r[1]};
  }
#endif
  const at::Tensor m = mix.to(math);
  at::Tensor x_in = (m[0] * x.to(math) + m[1] * x0.to(math)).to(x.scalar_type());
  return {x_in, scaled(rms(x_in.to(math), eps), factor).to(x.scalar_type())};
}

at::Tensor add_scaled(const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({x, a, scale})) {
    const at::Tensor xc = x.contiguous(), ac = a.contiguous(), sc = scale.to(at::kFloat).contiguous();
    return records_grad({xc, ac, sc}) ? AddScaledFn::apply(xc, ac, sc) : cuda::add_scaled(xc, ac, sc);
  }
#endif
  return (x.to(math) + scale.to(math) * a.to(math)).to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> add_norm(const at::Tensor& x, const at::Tensor& a, const at::Tensor& scale,
                                           double factor, double eps, at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({x, a, scale})) {
    const at::Tensor xc = x.contiguous(), ac = a.contiguous(), sc = scale.to(at::kFloat).contiguous();
    if (!records_grad({xc, ac, sc})) return cuda::add_norm(xc, ac, sc, factor, eps);
    variable_list r = AddNormFn::apply(xc, ac, sc, factor, eps);
    return {r[0], r[1]};
  }
#endif
  at::Tensor y = add_scaled(x, a, scale, math);
  return {y, scaled(rms(y.to(math), eps), factor).to(x.scalar_type())};
}

at::Tensor qk_norm_rope(const at::Tensor& q, int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& gain, double eps, at::ScalarType math) {
  const int64_t B = q.size(0), T = q.size(1), hd = q.size(2) / heads, half = cos.size(-1);
#if PGOLF_WITH_CUDA
  if (use_kernels({q, gain})) {
    const at::Tensor qc = q.contiguous(), g = gain.defined() ? gain.to(at::kFloat).contiguous() : gain;
    const at::Tensor c = cos.to(at::kFloat).contiguous(), s = sin.to(at::kFloat).contiguous();
    if (!records_grad({qc, g})) return cuda::qk_norm_rope(qc, heads, c, s, g, eps);
    return QkNormRopeFn::apply(qc, or_empty(g, qc), heads, c, s, eps);
  }
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
  if (use_kernels({h})) {
    const at::Tensor hc = h.contiguous();
    return records_grad({hc}) ? ReluSquareFn::apply(hc, slope) : cuda::relu_square(hc, slope);
  }
#endif
  at::Tensor a = h.to(math);
  a = slope != 0.0 ? at::leaky_relu(a, slope) : at::relu(a);
  return (a * a).to(h.scalar_type());
}

at::Tensor softcap_nll(const at::Tensor& logits, const at::Tensor& delta, const at::Tensor& targets, double cap,
                       at::ScalarType math) {
#if PGOLF_WITH_CUDA
  if (use_kernels({logits, delta}) && (!delta.defined() || delta.scalar_type() == at::kBFloat16)) {
    const at::Tensor l = logits.contiguous(), dl = contig(delta), t = targets.contiguous();
    if (!records_grad({l, dl})) return cuda::softcap_nll(l, dl, t, cap, false).first;
    return SoftcapNllFn::apply(l, or_empty(dl, l), t, cap);
  }
#endif
  at::Tensor z = logits.to(math);
  if (delta.defined()) z = z + delta.to(math);
  z = cap * at::tanh(z / cap);
  return at::logsumexp(z, -1) - z.gather(1, targets.unsqueeze(1)).squeeze(1);
}

at::Tensor xsa(const at::Tensor& y, const at::Tensor& v, at::ScalarType math) {
  const int64_t H = y.size(2), KV = v.size(2);
#if PGOLF_WITH_CUDA
  if (use_kernels({y, v}) && v.scalar_type() == at::kBFloat16 && y.size(3) <= 256) {
    const at::Tensor yc = y.contiguous(), vc = v.contiguous();
    return records_grad({yc, vc}) ? XsaFn::apply(yc, vc) : cuda::xsa(yc, vc);
  }
#endif
  const at::Tensor vf = v.to(math);
  at::Tensor u = vf / at::clamp_min(vf.norm(2, -1, true), 1e-12);
  if (KV != H) u = u.repeat_interleave(H / KV, 2);
  const at::Tensor yf = y.to(math);
  return (yf - (yf * u).sum(-1, true) * u).to(y.scalar_type());
}

bool adam_available(const at::Tensor& p, const at::Tensor& g, const at::Tensor& mirror) {
#if PGOLF_WITH_CUDA
  if (reference_only || !p.is_cuda() || p.scalar_type() != at::kFloat || !p.is_contiguous()) return false;
  auto fits = [&](const at::Tensor& t) {
    return t.device() == p.device() && t.numel() == p.numel() && t.is_contiguous() &&
           (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
  };
  return fits(g) && (!mirror.defined() || fits(mirror));
#else
  (void)p, (void)g, (void)mirror;
  return false;
#endif
}

void adam_update(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const at::Tensor& factors,
                 const AdamConfig& c, const at::Tensor& mirror, const FlatParts* parts) {
#if PGOLF_WITH_CUDA
  if (!adam_available(p, g, mirror) || !m.is_contiguous() || !v.is_contiguous() || m.numel() != p.numel() ||
      v.numel() != p.numel() || factors.scalar_type() != at::kFloat || factors.numel() != 2)
    throw std::invalid_argument("fused::adam_update: unsupported tensors");
  if (parts) {
    for (const auto& [start, length] : parts->host)
      if (start < 0 || length < 0 || start + length > p.numel())
        throw std::invalid_argument("fused::adam_update: a part outside the tensor");
    if (parts->device.scalar_type() != at::kLong || parts->device.device() != p.device() ||
        parts->device.numel() != 2 * int64_t(parts->host.size()))
      throw std::invalid_argument("fused::adam_update: parts do not match their device copy");
  }
  cuda::adam_update(p, g, m, v, factors.contiguous(), c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, c.decoupled,
                    mirror, parts);
#else
  (void)p, (void)g, (void)m, (void)v, (void)factors, (void)c, (void)mirror, (void)parts;
  throw std::logic_error("fused::adam_update: not a CUDA build");
#endif
}

}  // namespace pgolf::fused
