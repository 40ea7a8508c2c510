#include "model/gpt.h"

#include <cfloat>
#include <cmath>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf {

namespace {

at::ScalarType act_type(Precision p) {
  return p == Precision::F64 ? at::kDouble : p == Precision::BF16 ? at::kBFloat16 : at::kFloat;
}
// Pointwise math happens in float32 unless the whole forward is float64.
at::ScalarType math_type(Precision p) { return p == Precision::F64 ? at::kDouble : at::kFloat; }

std::string block(int i) { return "blocks." + std::to_string(i) + "."; }

struct Ctx {
  const GptWeights& w;
  at::ScalarType act, math;
  double eps;
  // A parameter cast to the activation type, as the reference's `.to(x.dtype)`.
  at::Tensor p(const std::string& name) const { return w.get(name).to(act); }
  at::Tensor up(const at::Tensor& x) const { return x.to(math); }
  at::Tensor down(const at::Tensor& x) const { return x.to(act); }
  at::Tensor rms(const at::Tensor& x) const {  // F.rms_norm over the last dim, no weight
    at::Tensor xf = up(x);
    return down(xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps));
  }
  at::Tensor linear(const at::Tensor& x, const std::string& weight) const { return at::linear(x, p(weight)); }
};

// Half-split rotation of the first 2*cos.size(-1) dims of x [B, H, T, hd].
at::Tensor apply_rope(const Ctx& c, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = cos.size(-1);
  at::Tensor xf = c.up(x);
  at::Tensor x1 = xf.narrow(-1, 0, half), x2 = xf.narrow(-1, half, half);
  at::Tensor cf = c.up(cos), sf = c.up(sin);
  std::vector<at::Tensor> parts = {x1 * cf + x2 * sf, x1 * (-sf) + x2 * cf};
  if (2 * half < x.size(-1)) parts.push_back(xf.narrow(-1, 2 * half, x.size(-1) - 2 * half));
  return c.down(at::cat(parts, -1));
}

// q [B, H, T, hd], k/v [B, KV, T, hd] -> [B, H, T, hd]. Causal, restricted to
// equal segment ids when given. Scores and softmax in the math type.
at::Tensor attention(const Ctx& c, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& segment_ids) {
  const int64_t H = q.size(1), KV = k.size(1), T = q.size(2), hd = q.size(3);
  at::Tensor kk = KV == H ? k : k.repeat_interleave(H / KV, 1);
  at::Tensor vv = KV == H ? v : v.repeat_interleave(H / KV, 1);
  at::Tensor scores = at::matmul(c.up(q), c.up(kk).transpose(-2, -1)) * (1.0 / std::sqrt(double(hd)));
  at::Tensor allowed = at::ones({T, T}, q.options().dtype(at::kBool)).tril();  // [T, T]
  if (segment_ids.defined()) {  // [B, T] -> [B, 1, T, T]
    at::Tensor same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1);
    allowed = (same & allowed).unsqueeze(1);
  }
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  at::Tensor probs = at::softmax(scores, -1);
  return c.down(at::matmul(probs, c.up(vv)));
}

// Attention sublayer. x [B, T, d] (already normed) -> [B, T, d].
at::Tensor attn_forward(const Ctx& c, int layer, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& segment_ids) {
  const ModelConfig& cfg = c.w.config;
  const int64_t B = x.size(0), T = x.size(1), H = cfg.num_heads, KV = cfg.num_kv_heads, hd = cfg.head_dim();
  const std::string pre = block(layer) + "attn.";
  at::Tensor q = c.linear(x, pre + "c_q.weight").view({B, T, H, hd}).transpose(1, 2);
  at::Tensor k = c.linear(x, pre + "c_k.weight").view({B, T, KV, hd}).transpose(1, 2);
  at::Tensor v = c.linear(x, pre + "c_v.weight").view({B, T, KV, hd}).transpose(1, 2);
  q = c.rms(q);
  k = c.rms(k);
  q = apply_rope(c, q, cos, sin);
  k = apply_rope(c, k, cos, sin);
  q = c.down(c.up(q) * c.up(c.p(pre + "q_gain")).view({1, H, 1, 1}));
  at::Tensor y = attention(c, q, k, v, segment_ids);  // [B, H, T, hd]
  y = y.transpose(1, 2).reshape({B, T, H * hd});
  return c.linear(y, pre + "proj.weight");
}

at::Tensor mlp_forward(const Ctx& c, int layer, const at::Tensor& x) {
  at::Tensor h = c.up(c.linear(x, block(layer) + "mlp.fc.weight"));
  h = at::relu(h);
  h = c.down(h * h);
  return c.linear(h, block(layer) + "mlp.proj.weight");
}

at::Tensor block_forward(const Ctx& c, int layer, const at::Tensor& x_in, const at::Tensor& x0, const at::Tensor& cos,
                         const at::Tensor& sin, const at::Tensor& segment_ids) {
  const std::string pre = block(layer);
  at::Tensor mix = c.up(c.p(pre + "resid_mix"));  // [2, d]
  at::Tensor x = c.down(mix[0] * c.up(x_in) + mix[1] * c.up(x0));
  at::Tensor a = attn_forward(c, layer, c.rms(x), cos, sin, segment_ids);
  x = c.down(c.up(x) + c.up(c.p(pre + "attn_scale")) * c.up(a));
  at::Tensor m = mlp_forward(c, layer, c.rms(x));
  return c.down(c.up(x) + c.up(c.p(pre + "mlp_scale")) * c.up(m));
}

}  // namespace

double GptNumerics::norm_eps() {
  // The reference calls F.rms_norm(x, (d,)) with eps=None. ATen's rms_norm
  // then uses the epsilon of its float32 accumulation type for float32 and
  // bf16 inputs alike.
  return FLT_EPSILON;
}

void check_supported(const ModelConfig& cfg) {
  auto no = [](bool unsupported, const char* what) {
    if (unsupported) throw Error(std::string("config: ") + what + " is not supported by pgolf's forward yet");
  };
  no(cfg.embedding_dim != 0 && cfg.embedding_dim != cfg.model_dim, "embedding_dim != model_dim");
  no(cfg.mlp_activation != "relu2", "mlp_activation other than relu2");
  no(cfg.rope_dims != 0 && cfg.rope_dims != cfg.head_dim(), "partial RoPE (rope_dims)");
  no(cfg.rope_yarn, "rope_yarn");
  no(cfg.xsa_last_n != 0, "xsa_last_n");
  no(!cfg.attn_windows.empty(), "attn_windows");
  no(cfg.ln_scale, "ln_scale");
  no(cfg.skip_gates_enabled, "skip_gates_enabled");
  no(cfg.parallel_start_layer >= 0, "parallel residuals (parallel_start_layer)");
  no(cfg.num_loops != 0, "depth recurrence (num_loops)");
  no(!cfg.tie_embeddings, "untied embeddings");
}

std::vector<ParamSpec> parameter_specs(const ModelConfig& cfg) {
  const int64_t d = cfg.model_dim, V = cfg.vocab_size, kv = int64_t(cfg.num_kv_heads) * cfg.head_dim();
  const int64_t hidden = cfg.mlp_hidden();
  const int enc = cfg.num_layers / 2, dec = cfg.num_layers - enc;
  std::vector<ParamSpec> s = {{"tok_emb.weight", {V, d}}};
  if (std::min(enc, dec) > 0) s.push_back({"skip_weights", {std::min(enc, dec), d}});
  for (int i = 0; i < cfg.num_layers; ++i) {
    const std::string b = block(i);
    s.push_back({b + "attn.c_q.weight", {d, d}});
    s.push_back({b + "attn.c_k.weight", {kv, d}});
    s.push_back({b + "attn.c_v.weight", {kv, d}});
    s.push_back({b + "attn.proj.weight", {d, d}});
    s.push_back({b + "attn.q_gain", {cfg.num_heads}});
    s.push_back({b + "attn_scale", {d}});
    s.push_back({b + "mlp_scale", {d}});
    s.push_back({b + "resid_mix", {2, d}});
    s.push_back({b + "mlp.fc.weight", {hidden, d}});
    s.push_back({b + "mlp.proj.weight", {d, hidden}});
  }
  if (!cfg.tie_embeddings) s.push_back({"lm_head.weight", {V, d}});
  return s;
}

const at::Tensor& GptWeights::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw Error("model: missing tensor " + name);
  return it->second;
}

GptWeights init_gpt_weights(const ModelConfig& cfg, uint64_t seed) {
  cfg.validate();
  check_supported(cfg);
  at::Generator gen = at::detail::createCPUGenerator(seed);
  GptWeights w{cfg, {}};
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto ends_with = [](const std::string& s, const std::string& t) {
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
  };
  for (const ParamSpec& p : parameter_specs(cfg)) {
    at::Tensor t;
    if (p.name == "tok_emb.weight") {
      t = at::empty(p.shape, f32).normal_(0.0, 0.005, gen);
    } else if (ends_with(p.name, "attn.proj.weight") || ends_with(p.name, "mlp.proj.weight") || p.name == "lm_head.weight") {
      t = at::zeros(p.shape, f32);  // _zero_init
    } else if (ends_with(p.name, ".weight")) {
      const double bound = 1.0 / std::sqrt(double(p.shape[1]));
      t = at::empty(p.shape, f32).uniform_(-bound, bound, gen);
    } else if (ends_with(p.name, "q_gain")) {
      t = at::full(p.shape, cfg.qk_gain_init, f32);
    } else if (ends_with(p.name, "resid_mix")) {
      t = at::stack({at::ones({p.shape[1]}, f32), at::zeros({p.shape[1]}, f32)});
    } else {
      t = at::ones(p.shape, f32);  // attn_scale, mlp_scale, skip_weights
    }
    w.tensors[p.name] = t;
  }
  return w;
}

void check_weights(const GptWeights& w, const std::string& source) {
  check_supported(w.config);
  std::vector<ParamSpec> specs = parameter_specs(w.config);
  for (const ParamSpec& p : specs) {
    auto it = w.tensors.find(p.name);
    if (it == w.tensors.end()) fail(source, "missing tensor " + p.name);
    const at::Tensor& t = it->second;
    if (t.sizes().vec() != p.shape) {
      std::string want, got;
      for (int64_t s : p.shape) want += (want.empty() ? "" : "x") + std::to_string(s);
      for (int64_t s : t.sizes()) got += (got.empty() ? "" : "x") + std::to_string(s);
      fail(source, "tensor " + p.name + " has shape " + got + ", the config implies " + want);
    }
    if (!at::isFloatingType(t.scalar_type())) fail(source, "tensor " + p.name + " is not a float tensor");
  }
  if (w.tensors.size() != specs.size())
    for (const auto& [name, t] : w.tensors) {
      bool known = false;
      for (const ParamSpec& p : specs) known |= p.name == name;
      if (!known) fail(source, "unexpected tensor " + name + " for this config");
    }
}

std::pair<at::Tensor, at::Tensor> rope_tables(const ModelConfig& cfg, int64_t T, at::ScalarType dtype,
                                              const at::Device& device) {
  const int64_t rd = cfg.rotary_dims();
  const at::ScalarType math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor j = at::arange(0, rd, 2, f32);
  at::Tensor inv_freq = (1.0 / at::pow(at::scalar_tensor(cfg.rope_base, f32), j / double(rd)));
  inv_freq = inv_freq.to(at::kBFloat16).to(math);  // the module's bf16 buffer
  at::Tensor pos = at::arange(T, f32.dtype(math));
  at::Tensor freqs = at::outer(pos, inv_freq);
  return {freqs.cos().to(dtype), freqs.sin().to(dtype)};
}

at::Tensor forward_nll(const GptWeights& w, const at::Tensor& inputs, const at::Tensor& targets,
                       const ForwardOptions& opt) {
  // Shapes: inputs, targets [B, T]; h [B, T, d]; per-head [B, H, T, hd].
  const ModelConfig& cfg = w.config;
  TORCH_CHECK(inputs.dim() == 2 && targets.sizes() == inputs.sizes(), "forward_nll: inputs/targets must be [B, T]");
  Ctx c{w, act_type(opt.precision), math_type(opt.precision), GptNumerics::norm_eps()};
  const int64_t T = inputs.size(1);
  auto [cos, sin] = rope_tables(cfg, T, c.act, inputs.device());

  at::Tensor x = c.rms(at::embedding(c.p("tok_emb.weight"), inputs));
  at::Tensor x0 = x;
  const int enc = cfg.num_layers / 2, dec = cfg.num_layers - enc;
  std::vector<at::Tensor> skips;
  for (int i = 0; i < enc; ++i) {
    x = block_forward(c, i, x, x0, cos, sin, opt.segment_ids);
    skips.push_back(x);
  }
  for (int i = 0; i < dec; ++i) {
    if (!skips.empty()) {
      at::Tensor sw = c.up(c.p("skip_weights")[i]);
      x = c.down(c.up(x) + sw * c.up(skips.back()));
      skips.pop_back();
    }
    x = block_forward(c, enc + i, x, x0, cos, sin, opt.segment_ids);
  }
  x = c.rms(x);

  // The head and the loss only where scored.
  const int64_t B = inputs.size(0), d = cfg.model_dim;
  at::Tensor flat_mask = opt.score_mask.defined() ? opt.score_mask.reshape({-1}) : at::Tensor();
  at::Tensor h = x.reshape({B * T, d});
  at::Tensor tgt = targets.reshape({-1});
  at::Tensor rows;  // indices of the scored positions
  if (flat_mask.defined()) {
    rows = flat_mask.nonzero().squeeze(1);
    h = h.index_select(0, rows);
    tgt = tgt.index_select(0, rows);
  }
  const std::string head = cfg.tie_embeddings ? "tok_emb.weight" : "lm_head.weight";
  at::Tensor logits = c.up(at::linear(h, c.p(head)));
  logits = cfg.logit_softcap * at::tanh(logits / cfg.logit_softcap);
  at::Tensor nll = at::logsumexp(logits, -1) - logits.gather(1, tgt.unsqueeze(1)).squeeze(1);
  if (!flat_mask.defined()) return nll.view({B, T});
  return at::zeros({B * T}, nll.options()).index_copy_(0, rows, nll).view({B, T});
}

}  // namespace pgolf
