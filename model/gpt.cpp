#include "model/gpt.h"

#include <cfloat>
#include <cmath>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf {

namespace {

std::string block(int i) { return "blocks." + std::to_string(i) + "."; }

bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// Per-forward state: where values are rounded and in which type math happens.
struct Ctx {
  const GptWeights& w;
  const ModelConfig& cfg;
  at::ScalarType act;   // matmul/attention operands and stored activations
  at::ScalarType math;  // pointwise math
  double eps;
  at::Tensor segment_ids;  // [B, T] or undefined
  const LoraSet* lora = nullptr;
  at::Tensor cu_seqlens;  // int32 [n + 1]: packed sequence starts (rows, and documents within rows)
  int64_t max_seqlen = 0;
  const std::function<void(const std::string&, const at::Tensor&)>* tap = nullptr;

  at::Tensor mm_weight(const std::string& n) const { return w.get(n).to(act); }
  at::Tensor pw(const std::string& n) const { return w.get(n).to(math); }  // pointwise parameter, unrounded
  at::Tensor up(const at::Tensor& x) const { return x.to(math); }
  at::Tensor store(const at::Tensor& x) const { return x.to(act); }
  at::Tensor linear(const at::Tensor& x, const std::string& n) const {
    at::Tensor xs = store(x);
    if (tap && *tap) (*tap)(n, xs);
    return at::linear(xs, mm_weight(n));
  }
  // F.rms_norm over the last dim (no weight), result in the math type.
  at::Tensor rms(const at::Tensor& x) const {
    at::Tensor xf = up(x);
    return xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  }
  double ln_factor(int layer) const { return cfg.ln_scale ? 1.0 / std::sqrt(double(layer + 1)) : 1.0; }
  const LoraAdapter* adapter(const std::string& key) const {
    if (!lora) return nullptr;
    auto it = lora->adapters.find(key);
    return it == lora->adapters.end() ? nullptr : &it->second;
  }
  // y [B, T, out] plus the adapter's (x A^T) B^T for x [B, T, in], if there is one.
  at::Tensor with_lora(const at::Tensor& y, const at::Tensor& x, const std::string& key) const {
    const LoraAdapter* a = adapter(key);
    if (!a) return y;
    at::Tensor xa = at::bmm(store(x), a->A.to(act).transpose(1, 2));  // [B, T, r]
    return store(up(y) + up(at::bmm(xa, a->B.to(act).transpose(1, 2))));
  }
};

// Half-split rotation of the first 2 * cos.size(-1) dims of x [B, H, T, hd]
// (math type); the rest passes through.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = cos.size(-1), hd = x.size(-1);
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  std::vector<at::Tensor> parts = {x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos};
  if (2 * half < hd) parts.push_back(x.narrow(-1, 2 * half, hd - 2 * half));
  return at::cat(parts, -1);
}

// Which key positions each query may see: [T, T] or [B, 1, T, T] bool.
at::Tensor attention_mask(const Ctx& c, int layer, int64_t T, const at::Device& dev) {
  at::Tensor pos = at::arange(T, at::TensorOptions().dtype(at::kLong).device(dev));
  at::Tensor diff = pos.unsqueeze(1) - pos.unsqueeze(0);  // query - key
  at::Tensor allowed = diff >= 0;
  const int window = c.cfg.attn_windows.empty() ? 0 : c.cfg.attn_windows[layer];
  if (window > 0) allowed = allowed & (diff < window);
  if (c.segment_ids.defined())
    allowed = (allowed & (c.segment_ids.unsqueeze(2) == c.segment_ids.unsqueeze(1))).unsqueeze(1);
  return allowed;
}

// q [B, H, T, hd], k/v [B, KV, T, hd] (act type) -> [B, H, T, hd] (math type).
// Scores and softmax in the math type; rows processed in groups to bound memory.
at::Tensor attention(const Ctx& c, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& allowed) {
  const int64_t B = q.size(0), H = q.size(1), KV = k.size(1), T = q.size(2), hd = q.size(3);
  const at::Tensor kk = KV == H ? k : k.repeat_interleave(H / KV, 1);
  const at::Tensor vv = KV == H ? v : v.repeat_interleave(H / KV, 1);
  const double scale = 1.0 / std::sqrt(double(hd));
  const int64_t per_row = H * T * T * 4;
  const int64_t rows = std::max<int64_t>(1, (int64_t(256) << 20) / std::max<int64_t>(per_row, 1));
  std::vector<at::Tensor> outs;
  for (int64_t b = 0; b < B; b += rows) {
    const int64_t n = std::min(rows, B - b);
    at::Tensor s = at::matmul(c.up(q.narrow(0, b, n)), c.up(kk.narrow(0, b, n)).transpose(-2, -1)) * scale;
    at::Tensor m = allowed.dim() == 4 ? allowed.narrow(0, b, n) : allowed;
    s = s.masked_fill(m.logical_not(), -std::numeric_limits<double>::infinity());
    outs.push_back(at::matmul(c.store(at::softmax(s, -1)).to(c.math), c.up(vv.narrow(0, b, n))));
  }
  return outs.size() == 1 ? outs[0] : at::cat(outs, 0);
}

// Attention sublayer of unrolled step `step` (physical layer `layer`) on the
// normed input n [B, T, d] -> [B, T, d] (act type).
at::Tensor attn_forward(const Ctx& c, int step, int layer, const at::Tensor& n, const at::Tensor& cos,
                        const at::Tensor& sin) {
  const ModelConfig& cfg = c.cfg;
  const int64_t B = n.size(0), T = n.size(1), H = cfg.num_heads, KV = cfg.num_kv_heads, hd = cfg.head_dim();
  const std::string pre = block(layer) + "attn.";
  at::Tensor q = c.with_lora(c.linear(n, pre + "c_q.weight"), n, lora_key(step, "q")).view({B, T, H, hd}).transpose(1, 2);
  at::Tensor k = c.with_lora(c.linear(n, pre + "c_k.weight"), n, lora_key(step, "k")).view({B, T, KV, hd}).transpose(1, 2);
  at::Tensor v = c.with_lora(c.linear(n, pre + "c_v.weight"), n, lora_key(step, "v")).view({B, T, KV, hd}).transpose(1, 2);
  q = c.store(apply_rope(c.rms(q), cos, sin) * c.pw(pre + "q_gain").view({1, H, 1, 1}));
  k = c.store(apply_rope(c.rms(k), cos, sin));
  const int window = cfg.attn_windows.empty() ? 0 : cfg.attn_windows[layer];
  const bool plain_causal = !c.segment_ids.defined() && window == 0;
  const bool flash = c.act == at::kBFloat16 && q.is_cuda();
  at::Tensor y;  // [B, H, T, hd], math type
  if (flash && plain_causal && compat::has_fused_causal_attention) {
    at::Tensor kk = KV == H ? k : k.repeat_interleave(H / KV, 1), vv = KV == H ? v : v.repeat_interleave(H / KV, 1);
    y = c.up(compat::fused_causal_attention(q, kk, vv));
  } else if (flash && compat::has_varlen_flash_attention) {
    // Documents (and rows) as packed sequences; the window as flash's left window.
    at::Tensor qp = q.transpose(1, 2).reshape({B * T, H, hd}).contiguous();
    at::Tensor kp = k.transpose(1, 2).reshape({B * T, KV, hd}).contiguous();
    at::Tensor vp = v.transpose(1, 2).reshape({B * T, KV, hd}).contiguous();
    y = c.up(compat::varlen_flash_attention(qp, kp, vp, c.cu_seqlens, c.max_seqlen, window > 0 ? window - 1 : -1))
            .view({B, T, H, hd})
            .transpose(1, 2);
  } else {
    y = attention(c, q, k, v, attention_mask(c, layer, T, n.device()));
  }
  if (layer >= cfg.num_layers - cfg.xsa_last_n) {
    // XSA: remove from each head's output its component along the unit value
    // vector of its KV group at the same position (float32, as F.normalize
    // runs under autocast).
    at::Tensor vf = c.up(v);
    at::Tensor vhat = vf / at::clamp_min(vf.norm(2, -1, true), 1e-12);
    if (KV != H) vhat = vhat.repeat_interleave(H / KV, 1);
    y = y - (y * vhat).sum(-1, true) * vhat;
  }
  y = y.transpose(1, 2).reshape({B, T, H * hd});
  return c.with_lora(c.linear(y, pre + "proj.weight"), y, lora_key(step, "o"));
}

at::Tensor mlp_forward(const Ctx& c, int layer, const at::Tensor& n) {
  at::Tensor h = c.up(c.linear(n, block(layer) + "mlp.fc.weight"));
  h = c.cfg.mlp_activation == "leaky_relu2" ? at::leaky_relu(h, c.cfg.mlp_leaky_slope) : at::relu(h);
  return c.linear(h * h, block(layer) + "mlp.proj.weight");
}

// x_in = mix0 x + mix1 x0; returns x_in + attn_scale * Attn(rms(x_in) * s).
at::Tensor attn_half(const Ctx& c, int step, int layer, const at::Tensor& x, const at::Tensor& x0,
                     const at::Tensor& cos, const at::Tensor& sin) {
  const std::string pre = block(layer);
  at::Tensor mix = c.pw(pre + "resid_mix");  // [2, d]
  at::Tensor x_in = c.store(mix[0] * c.up(x) + mix[1] * c.up(x0));
  at::Tensor a = attn_forward(c, step, layer, c.rms(x_in) * c.ln_factor(layer), cos, sin);
  return c.store(c.up(x_in) + c.pw(pre + "attn_scale") * c.up(a));
}

// x + mlp_scale * MLP(rms(x) * s).
at::Tensor mlp_half(const Ctx& c, int layer, const at::Tensor& x) {
  at::Tensor m = mlp_forward(c, layer, c.rms(x) * c.ln_factor(layer));
  return c.store(c.up(x) + c.pw(block(layer) + "mlp_scale") * c.up(m));
}

// Decoder skip: x + w*skip, or lerp(w*skip, x, sigmoid(gate)) with gates.
at::Tensor add_skip(const Ctx& c, int j, const at::Tensor& x, const at::Tensor& skip) {
  at::Tensor sk = c.pw("skip_weights")[j] * c.up(skip);
  if (!c.cfg.skip_gates_enabled) return c.store(c.up(x) + sk);
  at::Tensor g = at::sigmoid(c.pw("skip_gates")[j]);
  return c.store(sk + g * (c.up(x) - sk));
}

at::Tensor orthogonal(const std::vector<int64_t>& shape, at::Generator& gen) {
  // QR of a Gaussian matrix, signs fixed by R's diagonal (torch's orthogonal_).
  const int64_t rows = shape[0], cols = shape[1];
  const bool tall = rows >= cols;
  at::Tensor a = at::empty({tall ? rows : cols, tall ? cols : rows}, at::kFloat).normal_(0.0, 1.0, gen);
  auto qr = at::linalg_qr(a);
  at::Tensor q = std::get<0>(qr) * std::get<1>(qr).diagonal().sign().unsqueeze(0);
  return tall ? q.contiguous() : q.t().contiguous();
}

}  // namespace

std::string lora_key(int step, const std::string& site) { return "step." + std::to_string(step) + "." + site; }

double GptNumerics::norm_eps() {
  // The reference calls F.rms_norm(x, (d,)) with eps=None. ATen then uses the
  // epsilon of its float32 accumulation type, for float32 and bf16 inputs alike.
  return FLT_EPSILON;
}

std::vector<ParamSpec> parameter_specs(const ModelConfig& cfg) {
  const int64_t d = cfg.model_dim, E = cfg.embed_dim(), V = cfg.vocab_size;
  const int64_t kv = int64_t(cfg.num_kv_heads) * cfg.head_dim(), hidden = cfg.mlp_hidden();
  const int64_t S = cfg.num_skips();
  std::vector<ParamSpec> s;
  if (S > 0) s.push_back({"skip_weights", {S, d}});
  if (S > 0 && cfg.skip_gates_enabled) s.push_back({"skip_gates", {S, d}});
  if (cfg.parallel_start_layer > 0) s.push_back({"lane_merge", {}});
  s.push_back({"tok_emb.weight", {V, E}});
  if (E != d) {
    s.push_back({"embed_proj.weight", {d, E}});
    s.push_back({"head_proj.weight", {E, d}});
  }
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
  if (!cfg.tie_embeddings) s.push_back({"lm_head.weight", {V, E}});
  return s;
}

const at::Tensor& GptWeights::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw Error("model: missing tensor " + name);
  return it->second;
}

GptWeights init_gpt_weights(const ModelConfig& cfg, uint64_t seed) {
  cfg.validate();
  at::Generator gen = at::detail::createCPUGenerator(seed);
  GptWeights w{cfg, {}};
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const bool frontier_init = cfg.num_loops > 0 || cfg.xsa_last_n > 0 || cfg.parallel_start_layer > 0;
  for (const ParamSpec& p : parameter_specs(cfg)) {
    at::Tensor t;
    if (p.name == "tok_emb.weight") {
      t = cfg.tie_embeddings ? at::empty(p.shape, f32).normal_(0.0, 0.005, gen) : at::empty(p.shape, f32).normal_(0.0, 1.0, gen);
    } else if (ends_with(p.name, "attn.proj.weight") || ends_with(p.name, "mlp.proj.weight") || p.name == "lm_head.weight" ||
               p.name == "skip_gates") {
      t = at::zeros(p.shape, f32);
    } else if (ends_with(p.name, ".weight")) {
      if (frontier_init) {
        t = orthogonal(p.shape, gen);
      } else {
        const double bound = 1.0 / std::sqrt(double(p.shape[1]));
        t = at::empty(p.shape, f32).uniform_(-bound, bound, gen);
      }
    } else if (ends_with(p.name, "q_gain")) {
      t = at::full(p.shape, cfg.qk_gain_init, f32);
    } else if (ends_with(p.name, "resid_mix")) {
      t = at::stack({at::ones({p.shape[1]}, f32), at::zeros({p.shape[1]}, f32)});
    } else if (p.name == "lane_merge") {
      t = at::full({}, 0.5, f32);
    } else {
      t = at::ones(p.shape, f32);  // attn_scale, mlp_scale, skip_weights
    }
    w.tensors[p.name] = t;
  }
  return w;
}

void check_weights(const GptWeights& w, const std::string& source) {
  const std::vector<ParamSpec> specs = parameter_specs(w.config);
  for (const ParamSpec& p : specs) {
    auto it = w.tensors.find(p.name);
    if (it == w.tensors.end()) fail(source, "missing tensor " + p.name);
    const at::Tensor& t = it->second;
    if (t.sizes().vec() != p.shape) {
      std::string want, got;
      for (int64_t s : p.shape) want += (want.empty() ? "" : "x") + std::to_string(s);
      for (int64_t s : t.sizes()) got += (got.empty() ? "" : "x") + std::to_string(s);
      fail(source, "tensor " + p.name + " has shape " + (got.empty() ? "scalar" : got) + ", the config implies " +
                       (want.empty() ? "scalar" : want));
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
  const int64_t r = cfg.rotary_dims();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor j = at::arange(0, r, 2, f32);
  at::Tensor inv_freq;
  if (cfg.rope_yarn && T > cfg.train_seq_len) {
    const double scale = double(T) / double(cfg.train_seq_len);
    const double base = cfg.rope_base * std::pow(scale, double(r) / double(r - 2));
    inv_freq = 1.0 / at::pow(at::scalar_tensor(base, f32), j / double(r));
  } else {
    inv_freq = (1.0 / at::pow(at::scalar_tensor(cfg.rope_base, f32), j / double(r))).to(at::kBFloat16);
  }
  at::Tensor pos = at::arange(T, f32.dtype(dtype));
  at::Tensor freqs = at::outer(pos, inv_freq.to(dtype));
  return {freqs.cos(), freqs.sin()};
}

at::Tensor forward_nll(const GptWeights& w, const at::Tensor& inputs, const at::Tensor& targets,
                       const ForwardOptions& opt) {
  // Shapes: inputs, targets [B, T]; residual stream [B, T, d]; heads [B, H, T, hd].
  const ModelConfig& cfg = w.config;
  TORCH_CHECK(inputs.dim() == 2 && targets.sizes() == inputs.sizes(), "forward_nll: inputs/targets must be [B, T]");
  const at::ScalarType act = opt.precision == Precision::F64 ? at::kDouble
                             : opt.precision == Precision::BF16 ? at::kBFloat16 : at::kFloat;
  const at::ScalarType math = opt.precision == Precision::F64 ? at::kDouble : at::kFloat;
  Ctx c{w, cfg, act, math, GptNumerics::norm_eps(), opt.segment_ids, opt.lora};
  c.tap = &opt.linear_input_tap;
  const int64_t B = inputs.size(0), T = inputs.size(1), d = cfg.model_dim;
  bool windows = false;
  for (int wdw : cfg.attn_windows) windows |= wdw > 0;
  if (inputs.is_cuda() && act == at::kBFloat16 && (opt.segment_ids.defined() || windows)) {
    // Sequence starts for varlen attention (only needed when attention is not plain causal): each row, and each segment change within a row.
    at::Tensor starts = at::zeros({B, T}, inputs.options().dtype(at::kBool));
    starts.select(1, 0).fill_(true);
    if (opt.segment_ids.defined())
      starts.narrow(1, 1, T - 1).copy_(opt.segment_ids.narrow(1, 1, T - 1) != opt.segment_ids.narrow(1, 0, T - 1));
    at::Tensor pos = starts.reshape({-1}).nonzero().squeeze(1);
    at::Tensor cu = at::cat({pos, at::full({1}, B * T, pos.options())}).to(at::kInt);
    c.cu_seqlens = cu;
    c.max_seqlen = (cu.narrow(0, 1, cu.size(0) - 1) - cu.narrow(0, 0, cu.size(0) - 1)).max().item<int64_t>();
  }
  auto [cos, sin] = rope_tables(cfg, T, math, inputs.device());

  at::Tensor x = c.store(c.rms(at::embedding(w.get("tok_emb.weight"), inputs)));
  if (cfg.embed_dim() != d) x = c.linear(x, "embed_proj.weight");
  const at::Tensor x0 = x;

  const std::vector<int> seq = cfg.layer_sequence(opt.looping);
  const size_t enc = seq.size() / 2;
  const int S = cfg.num_skips();
  std::vector<at::Tensor> skips;
  for (size_t s = 0; s < enc; ++s) {
    x = mlp_half(c, seq[s], attn_half(c, int(s), seq[s], x, x0, cos, sin));
    skips.push_back(x);
  }
  at::Tensor lane0, lane1;  // two-lane parallel residuals, once started
  for (size_t j = 0; j + enc < seq.size(); ++j) {
    const int i = seq[enc + j];
    const bool skip = int(j) < S && !skips.empty();
    if (!lane0.defined()) {
      if (skip) {
        x = add_skip(c, int(j), x, skips.back());
        skips.pop_back();
      }
      if (cfg.parallel_start_layer > 0 && i >= cfg.parallel_start_layer) {
        lane0 = attn_half(c, int(enc + j), i, x, x0, cos, sin);
        lane1 = mlp_half(c, i, x);
      } else {
        x = mlp_half(c, i, attn_half(c, int(enc + j), i, x, x0, cos, sin));
      }
    } else {
      if (skip) {
        lane0 = add_skip(c, int(j), lane0, skips.back());
        skips.pop_back();
      }
      lane0 = attn_half(c, int(enc + j), i, lane0, x0, cos, sin);
      lane1 = mlp_half(c, i, lane1);
    }
  }
  if (lane0.defined()) {
    at::Tensor lam = c.pw("lane_merge");
    x = c.store(lam * c.up(lane0) + (1.0 - lam) * c.up(lane1));
  }
  x = c.store(c.rms(x));
  if (cfg.embed_dim() != d) x = c.linear(x, "head_proj.weight");

  // The head and the loss only where scored, a bounded number of rows at a time.
  at::Tensor h = x.reshape({B * T, x.size(-1)});
  at::Tensor tgt = targets.reshape({-1});
  at::Tensor rows;
  if (opt.score_mask.defined()) {
    rows = opt.score_mask.reshape({-1}).nonzero().squeeze(1);
    h = h.index_select(0, rows);
    tgt = tgt.index_select(0, rows);
  }
  const std::string head_name = cfg.tie_embeddings ? "tok_emb.weight" : "lm_head.weight";
  if (*c.tap) (*c.tap)(head_name, h);
  const at::Tensor head = c.mm_weight(head_name);
  auto nll_of = [&](const at::Tensor& logits_proj, const at::Tensor& t) {  // [n, V] act, [n] -> [n] math
    at::Tensor logits = c.up(logits_proj);
    logits = cfg.logit_softcap * at::tanh(logits / cfg.logit_softcap);
    return at::logsumexp(logits, -1) - logits.gather(1, t.unsqueeze(1)).squeeze(1);
  };
  if (const LoraAdapter* a = c.adapter("head")) {
    // Each batch row has its own head delta: rows of one batch row at a time.
    at::Tensor row_ids = rows.defined() ? rows : at::arange(B * T, tgt.options());
    at::Tensor batch_of = at::div(row_ids, T, "floor");
    at::Tensor nll = at::zeros({h.size(0)}, h.options().dtype(math));
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor idx = (batch_of == b).nonzero().squeeze(1);
      if (idx.numel() == 0) continue;
      at::Tensor hb = h.index_select(0, idx);
      at::Tensor lp = c.store(c.up(at::linear(hb, head)) +
                              c.up(at::linear(at::linear(hb, a->A[b].to(act)), a->B[b].to(act))));
      nll = nll.index_copy(0, idx, nll_of(lp, tgt.index_select(0, idx)));
    }
    if (!rows.defined()) return nll.view({B, T});
    return at::zeros({B * T}, nll.options()).index_copy_(0, rows, nll).view({B, T});
  }
  const int64_t chunk = std::max<int64_t>(1, (int64_t(16) << 20) / (4 * int64_t(cfg.vocab_size)));  // < the mmap threshold
  std::vector<at::Tensor> parts;
  for (int64_t r = 0; r < h.size(0); r += chunk) {
    const int64_t n = std::min(chunk, h.size(0) - r);
    parts.push_back(nll_of(at::linear(h.narrow(0, r, n), head), tgt.narrow(0, r, n)));
  }
  at::Tensor nll = parts.empty() ? at::zeros({0}, h.options().dtype(math)) : parts.size() == 1 ? parts[0] : at::cat(parts);
  if (!rows.defined()) return nll.view({B, T});
  return at::zeros({B * T}, nll.options()).index_copy_(0, rows, nll).view({B, T});
}

}  // namespace pgolf
