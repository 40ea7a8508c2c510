#include "model/gpt.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "data/error.h"
#include "model/fused.h"
#include "model/pch.h"

namespace pgolf {

namespace {

std::string block(int i) { return "blocks." + std::to_string(i) + "."; }

at::ScalarType act_type(Precision p) {
  return p == Precision::F64 ? at::kDouble : p == Precision::BF16 ? at::kBFloat16 : at::kFloat;
}

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
  const CastWeights* cast = nullptr;
  KvCache* kv = nullptr;
  bool flash_backward = false;
  bool deterministic = false;  // attention's backward (ForwardOptions::deterministic_attention)

  at::Tensor mm_weight(const std::string& n) const {
    if (cast && cast->type == act) {
      auto it = cast->tensors.find(n);
      if (it != cast->tensors.end()) return it->second;
    }
    return w.get(n).to(act);
  }
  at::Tensor pw(const std::string& n) const { return w.get(n).to(math); }  // pointwise parameter, unrounded
  at::Tensor up(const at::Tensor& x) const { return x.to(math); }
  at::Tensor store(const at::Tensor& x) const { return x.to(act); }
  at::Tensor linear(const at::Tensor& x, const std::string& n) const {
    at::Tensor xs = store(x);
    if (tap && *tap) (*tap)(n, xs);
    return at::linear(xs, mm_weight(n));
  }
  double ln_factor(int layer) const { return cfg.ln_scale ? 1.0 / std::sqrt(double(layer + 1)) : 1.0; }
  const LoraAdapter* adapter(const std::string& key) const {
    if (!lora) return nullptr;
    auto it = lora->adapters.find(key);
    return it == lora->adapters.end() ? nullptr : &it->second;
  }
  // y [B, T, out] plus the adapter's (x A) B for x [B, T, in], if there is one.
  at::Tensor with_lora(const at::Tensor& y, const at::Tensor& x, const std::string& key) const {
    const LoraAdapter* a = adapter(key);
    if (!a) return y;
    at::Tensor xa = at::bmm(store(x), a->A.to(act));  // [B, T, r]
    // One add in the activation type: ATen adds bf16 in float32 and rounds
    // once, the same value as round(float(y) + float(delta)).
    return y + at::bmm(xa, a->B.to(act));
  }
};

// The last Q positions along dim: t itself when that is all of them (a
// full-range narrow still costs autograd a zero-filled copy in backward).
at::Tensor last_positions(const at::Tensor& t, int64_t dim, int64_t Q) {
  return t.size(dim) == Q ? t : t.narrow(dim, t.size(dim) - Q, Q);
}

// Which key positions each query may see: [Q, T] or [B, 1, Q, T] bool, the
// queries being the last Q of the T positions; at most `window` keys each
// (itself included; 0 = no limit).
at::Tensor attention_mask(const Ctx& c, int64_t window, int64_t T, int64_t Q, const at::Device& dev) {
  at::Tensor pos = at::arange(T, at::TensorOptions().dtype(at::kLong).device(dev));
  at::Tensor diff = pos.narrow(0, T - Q, Q).unsqueeze(1) - pos.unsqueeze(0);  // query - key
  at::Tensor allowed = diff >= 0;
  if (window > 0) allowed = allowed & (diff < window);
  if (c.segment_ids.defined())
    allowed = (allowed & (c.segment_ids.narrow(1, T - Q, Q).unsqueeze(2) == c.segment_ids.unsqueeze(1))).unsqueeze(1);
  return allowed;
}

// q [B, H, Q, hd], k/v [B, KV, T, hd] (act type) -> [B, H, Q, hd] (math type).
// Scores and softmax in the math type; rows processed in groups to bound memory.
at::Tensor attention(const Ctx& c, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& allowed) {
  const int64_t B = q.size(0), H = q.size(1), KV = k.size(1), Q = q.size(2), T = k.size(2), hd = q.size(3);
  const at::Tensor kk = KV == H ? k : k.repeat_interleave(H / KV, 1);
  const at::Tensor vv = KV == H ? v : v.repeat_interleave(H / KV, 1);
  const double scale = 1.0 / std::sqrt(double(hd));
  const int64_t per_row = H * Q * T * 4;
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
// normed input n [B, T, d] (act type) -> [B, Q, d] (act type) for the last Q
// positions (queries there, keys and values everywhere).
// q [B, Q, H, hd], k/v [B, T, KV, hd], y [B, Q, H, hd].
at::Tensor attn_forward(const Ctx& c, int step, int layer, const at::Tensor& n, const at::Tensor& cos,
                        const at::Tensor& sin, int64_t Q) {
  const ModelConfig& cfg = c.cfg;
  const int64_t B = n.size(0), T = n.size(1), H = cfg.num_heads, KV = cfg.num_kv_heads, hd = cfg.head_dim();
  const std::string pre = block(layer) + "attn.";
  const at::Tensor nq = last_positions(n, 1, Q);
  at::Tensor q = c.with_lora(c.linear(nq, pre + "c_q.weight"), nq, lora_key(step, "q"));
  at::Tensor k = c.with_lora(c.linear(n, pre + "c_k.weight"), n, lora_key(step, "k"));
  at::Tensor v = c.with_lora(c.linear(n, pre + "c_v.weight"), n, lora_key(step, "v")).view({B, T, KV, hd});
  q = fused::qk_norm_rope(q, H, cos.narrow(0, T - Q, Q), sin.narrow(0, T - Q, Q), c.pw(pre + "q_gain"), c.eps, c.math);
  k = fused::qk_norm_rope(k, KV, cos, sin, at::Tensor(), c.eps, c.math);
  int64_t window = cfg.attn_windows.empty() ? 0 : cfg.attn_windows[layer];  // keys per query, 0 = all
  at::Tensor keys = k, values = v;  // a KV cache's positions first, then these
  if (c.kv) {
    KvCache& kv = *c.kv;
    if (kv.k.size() <= size_t(step)) kv.k.resize(size_t(step) + 1), kv.v.resize(size_t(step) + 1);
    if (kv.k[size_t(step)].defined()) {
      keys = at::cat({kv.k[size_t(step)], k}, 1);
      values = at::cat({kv.v[size_t(step)], v}, 1);
    }
    const int64_t total = keys.size(1), kept = std::min(kv.keep, total);
    kv.k[size_t(step)] = keys.narrow(1, total - kept, kept);
    kv.v[size_t(step)] = values.narrow(1, total - kept, kept);
    window = window > 0 ? std::min(window, kv.keep + 1) : kv.keep + 1;
  }
  const int64_t window_left = window > 0 ? window - 1 : -1;
  // Flash kernels take head dims that are multiples of 8 up to 256.
  const bool flash = c.act == at::kBFloat16 && q.is_cuda() && compat::has_varlen_flash_attention && hd % 8 == 0 &&
                     hd <= 256;
  const bool grad = c10::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  at::Tensor y;
  if (flash && c.segment_ids.defined()) {
    // Documents (and rows) as packed sequences; the window as flash's left window.
    TORCH_CHECK(Q == T && !c.kv, "attention: no query suffix or KV cache with document masking on flash");
    y = fused::varlen_flash_attention(q.view({B * T, H, hd}), k.view({B * T, KV, hd}), v.reshape({B * T, KV, hd}),
                                      c.cu_seqlens, c.max_seqlen, window_left, c.deterministic)
            .view({B, T, H, hd});
  } else if (flash && grad && window_left < 0 && Q == T && !c.kv && !c.deterministic &&
             fused::cudnn_attention_applies(q)) {
    // Training (a gradient recorded, no determinism asked for): cuDNN's kernels on Hopper.
    y = fused::cudnn_attention(q, k, v);
  } else if (flash && (c.flash_backward || !grad)) {
    // Causal mask aligned bottom-right: the queries are the last of the keys.
    // Evaluation's whole windows take cuDNN where faster; TTT stays on flash.
    if (!c.flash_backward && window_left < 0 && Q == keys.size(1))
      y = fused::causal_attention(q, keys, values);
    else
      y = fused::flash_attention(q, keys.contiguous(), values.contiguous(), window_left, c.deterministic);
  } else if (flash && (window > 0 || c.deterministic) && Q == T && !c.kv) {
    // Training with a window, or deterministic: flash's kernels, not the masked scores or SDPA below.
    y = fused::flash_attention(q, k.contiguous(), v.contiguous(), window_left, c.deterministic);
  } else if (flash && window == 0 && compat::has_fused_causal_attention) {
    // Training: SDPA, whose backward is known to work with every libtorch here.
    TORCH_CHECK(Q == T && !c.kv, "attention: no query suffix or KV cache under autograd");
    at::Tensor qh = q.transpose(1, 2), kh = k.transpose(1, 2), vh = v.transpose(1, 2);
    if (KV != H) kh = kh.repeat_interleave(H / KV, 1), vh = vh.repeat_interleave(H / KV, 1);
    y = compat::fused_causal_attention(qh, kh, vh).transpose(1, 2);
  } else {
    y = attention(c, q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                  attention_mask(c, window, keys.size(1), Q, n.device()))
            .transpose(1, 2);
  }
  // XSA: each head's output without its component along its KV group's value.
  if (layer >= cfg.num_layers - cfg.xsa_last_n) y = fused::xsa(y, last_positions(v, 1, Q), c.math);
  y = y.reshape({B, Q, H * hd});
  at::Tensor out = c.with_lora(c.linear(y, pre + "proj.weight"), y, lora_key(step, "o"));
  return c.with_lora(out, nq, lora_key(step, "o_norm"));  // 0410's O adapter reads the block's normed input
}

// n [B, T, d] -> [B, T, d], act type; hidden [B, T, mlp_hidden]. Unrolled
// step `step` (for the "mlp" adapter, which reads n).
at::Tensor mlp_forward(const Ctx& c, int step, int layer, const at::Tensor& n) {
  at::Tensor h = c.linear(n, block(layer) + "mlp.fc.weight");
  h = fused::relu_square(h, c.cfg.mlp_activation == "leaky_relu2" ? c.cfg.mlp_leaky_slope : 0.0, c.math);
  return c.with_lora(c.linear(h, block(layer) + "mlp.proj.weight"), n, lora_key(step, "mlp"));
}

// x_in = mix0 x + mix1 x0; returns x_in + attn_scale * Attn(rms(x_in) * s).
at::Tensor attn_half(const Ctx& c, int step, int layer, const at::Tensor& x, const at::Tensor& x0,
                     const at::Tensor& cos, const at::Tensor& sin) {
  const std::string pre = block(layer);
  auto [x_in, n] = fused::mix_norm(x, x0, c.pw(pre + "resid_mix"), c.ln_factor(layer), c.eps, c.math);
  at::Tensor a = attn_forward(c, step, layer, n, cos, sin, n.size(1));
  return fused::add_scaled(x_in, a, c.pw(pre + "attn_scale"), c.math);
}

// x + mlp_scale * MLP(rms(x) * s).
at::Tensor mlp_half(const Ctx& c, int step, int layer, const at::Tensor& x) {
  at::Tensor m = mlp_forward(c, step, layer, fused::rms_norm(x, c.ln_factor(layer), c.eps, c.act, c.math));
  return fused::add_scaled(x, m, c.pw(block(layer) + "mlp_scale"), c.math);
}

// mlp_half(attn_half(x)) with the residual add and the MLP's norm in one step;
// x [B, T, d] -> [B, Q, d], the last Q positions.
at::Tensor block_forward(const Ctx& c, int step, int layer, const at::Tensor& x, const at::Tensor& x0,
                         const at::Tensor& cos, const at::Tensor& sin, int64_t Q) {
  const std::string pre = block(layer);
  auto [x_in, n] = fused::mix_norm(x, x0, c.pw(pre + "resid_mix"), c.ln_factor(layer), c.eps, c.math);
  at::Tensor a = attn_forward(c, step, layer, n, cos, sin, Q);
  x_in = last_positions(x_in, 1, Q);
  auto [y, n2] = fused::add_norm(x_in, a, c.pw(pre + "attn_scale"), c.ln_factor(layer), c.eps, c.math);
  return fused::add_scaled(y, mlp_forward(c, step, layer, n2), c.pw(pre + "mlp_scale"), c.math);
}

// Decoder skip: x + w*skip, or lerp(w*skip, x, sigmoid(gate)) with gates.
at::Tensor add_skip(const Ctx& c, int j, const at::Tensor& x, const at::Tensor& skip) {
  // round(x + w * skip): add_scaled's rounding exactly.
  if (!c.cfg.skip_gates_enabled) return fused::add_scaled(x, skip, c.pw("skip_weights")[j], c.math);
  at::Tensor sk = c.pw("skip_weights")[j] * c.up(skip);
  at::Tensor g = at::sigmoid(c.pw("skip_gates")[j]);
  return c.store(sk + g * (c.up(x) - sk));
}

// The "head" adapter's (x A_b) B_b at the positions `pos` (all of x's
// when null), in row-major order: [n, V] act; undefined without one. x
// [B, T, E] is the head's input.
at::Tensor head_lora_delta(const Ctx& c, const at::Tensor& x, const ScorePositions* pos) {
  const LoraAdapter* a = c.adapter("head");
  if (!a) return {};
  // x [B, T, E] -> xa [B, T, r] -> the scored positions in per-row slots
  // [B, R, r] -> delta [B, R, V] -> [n, V] in row-major order.
  const int64_t B = x.size(0), T = x.size(1), R = pos ? pos->max_per_row : T, V = a->B.size(2);
  if (R == 0) return at::zeros({0, V}, x.options().dtype(c.act));
  at::Tensor xa = at::bmm(c.store(x), a->A.to(c.act));
  if (!pos) return at::bmm(xa, a->B.to(c.act)).reshape({B * T, V});
  xa = xa.reshape({B * T, xa.size(2)}).index_select(0, pos->slot_src).view({B, R, -1});
  const at::Tensor d = at::bmm(xa, a->B.to(c.act));
  return d.reshape({B * R, V}).index_select(0, pos->slot_of);
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

at::Tensor to_device(const at::Tensor& cpu, const at::Device& device) {
  if (!device.is_cuda()) return cpu.to(device);
  return cpu.pin_memory().to(device, /*non_blocking=*/true);
}

ScorePositions find_score_positions(const at::Tensor& mask, const at::Device& device, bool slots) {
  TORCH_CHECK(mask.dim() == 2 && mask.device().is_cpu(), "find_score_positions: mask must be [B, T] on the CPU");
  const at::Tensor m = mask.to(at::kBool).contiguous();
  const int64_t B = m.size(0), T = m.size(1);
  const bool* pm = m.data_ptr<bool>();
  std::vector<int64_t> rows, counts(size_t(B), 0);
  int64_t first_col = T;
  for (int64_t i = 0; i < B * T; ++i)
    if (pm[i]) rows.push_back(i), ++counts[size_t(i / T)], first_col = std::min(first_col, i % T);
  ScorePositions p;
  p.first_col = first_col;
  p.suffix = first_col < T && int64_t(rows.size()) == B * (T - first_col);
  auto dev = [&](const std::vector<int64_t>& v) { return to_device(at::tensor(v, at::kLong), device); };
  p.rows = dev(rows);
  if (!slots) return p;
  p.max_per_row = B ? *std::max_element(counts.begin(), counts.end()) : 0;
  const int64_t R = p.max_per_row;
  std::vector<int64_t> src(size_t(B * R)), slot(rows.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < R; ++k) src[size_t(b * R + k)] = b * T;
  std::vector<int64_t> seen(size_t(B), 0);
  for (size_t j = 0; j < rows.size(); ++j) {
    const int64_t b = rows[j] / T, k = seen[size_t(b)]++;
    src[size_t(b * R + k)] = rows[j];
    slot[j] = b * R + k;
  }
  p.slot_src = dev(src);
  p.slot_of = dev(slot);
  return p;
}

int64_t last_step_queries(const GptWeights& w, const ForwardOptions& opt, const ScorePositions& pos, int64_t T) {
  const ModelConfig& cfg = w.config;
  if (!opt.trim_last_step || !opt.score_mask.defined() || (opt.lora && !pos.suffix) || opt.linear_input_tap || opt.kv ||
      opt.segment_ids.defined() || pos.first_col <= 0 || pos.first_col >= T)
    return T;
  const std::vector<int> seq = cfg.layer_sequence(opt.looping);
  if (cfg.parallel_start_layer > 0 && seq.back() >= cfg.parallel_start_layer) return T;
  if (c10::GradMode::is_enabled()) {
    for (const auto& [n, t] : w.tensors)
      if (t.requires_grad()) return T;  // autograd wants every position's activations
    // Adapters under autograd with bf16 attention on CUDA: a query suffix
    // needs flash's backward (SDPA's takes whole windows only).
    if (opt.lora && !opt.flash_backward && opt.precision == Precision::BF16 && w.get("tok_emb.weight").is_cuda())
      return T;
  }
  return T - pos.first_col;
}

CastWeights cast_matrix_weights(const GptWeights& w, Precision precision) {
  at::NoGradGuard no_grad;  // frozen copies: nothing flows back to w
  CastWeights c;
  c.type = act_type(precision);
  for (const auto& [name, t] : w.tensors)
    if (t.dim() == 2 && ends_with(name, ".weight")) c.tensors[name] = t.to(c.type);
  return c;
}

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
                                              const at::Device& device, int64_t start, int64_t context) {
  const int64_t r = cfg.rotary_dims();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor j = at::arange(0, r, 2, f32);
  at::Tensor inv_freq;
  if (context <= 0) context = T;
  if (cfg.rope_yarn && context > cfg.train_seq_len) {
    const double scale = double(context) / double(cfg.train_seq_len);
    const double base = cfg.rope_base * std::pow(scale, double(r) / double(r - 2));
    inv_freq = 1.0 / at::pow(at::scalar_tensor(base, f32), j / double(r));
  } else {
    inv_freq = (1.0 / at::pow(at::scalar_tensor(cfg.rope_base, f32), j / double(r))).to(at::kBFloat16);
  }
  if (start > 0) {
    at::Tensor pos = at::arange(start, start + T, f32.dtype(at::kDouble));
    at::Tensor freqs = at::outer(pos, inv_freq.to(at::kDouble));
    return {freqs.cos().to(dtype), freqs.sin().to(dtype)};
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
  const at::ScalarType act = act_type(opt.precision);
  const at::ScalarType math = opt.precision == Precision::F64 ? at::kDouble : at::kFloat;
  Ctx c{w, cfg, act, math, GptNumerics::norm_eps(), opt.segment_ids, opt.lora, at::Tensor(), 0, &opt.linear_input_tap,
        opt.cast, opt.kv, opt.flash_backward, opt.flash_backward || opt.deterministic_attention};
  TORCH_CHECK(!opt.kv || !opt.segment_ids.defined(), "forward_nll: a KV cache with document masking");
  const int64_t B = inputs.size(0), T = inputs.size(1), d = cfg.model_dim;
  if (opt.segment_ids.defined() && inputs.is_cuda() && !opt.segment_ids.is_cuda()) {
    // Sequence starts found on the host, copied without a device wait.
    const at::Tensor seg = opt.segment_ids.to(at::kLong).contiguous();
    const int64_t* ps = seg.data_ptr<int64_t>();
    std::vector<int32_t> cu;
    int64_t longest = 0;
    for (int64_t i = 0; i < B * T; ++i)
      if (i % T == 0 || ps[i] != ps[i - 1]) {
        if (!cu.empty()) longest = std::max<int64_t>(longest, i - cu.back());
        cu.push_back(int32_t(i));
      }
    if (!cu.empty()) longest = std::max<int64_t>(longest, B * T - cu.back());
    cu.push_back(int32_t(B * T));
    c.cu_seqlens = to_device(at::tensor(cu, at::kInt), inputs.device());
    c.max_seqlen = longest;
    c.segment_ids = to_device(seg, inputs.device());  // the explicit-mask path reads them on the device
  } else if (inputs.is_cuda() && act == at::kBFloat16 && opt.segment_ids.defined()) {
    // Sequence starts for varlen attention: each row, and each segment change within a row.
    at::Tensor starts = at::zeros({B, T}, inputs.options().dtype(at::kBool));
    starts.select(1, 0).fill_(true);
    starts.narrow(1, 1, T - 1).copy_(opt.segment_ids.narrow(1, 1, T - 1) != opt.segment_ids.narrow(1, 0, T - 1));
    at::Tensor pos = starts.reshape({-1}).nonzero().squeeze(1);
    at::Tensor cu = at::cat({pos, at::full({1}, B * T, pos.options())}).to(at::kInt);
    c.cu_seqlens = cu;
    c.max_seqlen = (cu.narrow(0, 1, cu.size(0) - 1) - cu.narrow(0, 0, cu.size(0) - 1)).max().item<int64_t>();
  }
  auto [cos, sin] = opt.kv ? rope_tables(cfg, T, math, inputs.device(), opt.kv->position, opt.kv->keep + 1)
                           : rope_tables(cfg, T, math, inputs.device());
  if (opt.kv) opt.kv->position += T;

  // The scored positions: the caller's, else found here (a wait for the GPU).
  ScorePositions pos = opt.positions;
  const bool head_adapter = opt.lora && opt.lora->adapters.count("head");
  if (opt.score_mask.defined() && (!pos.rows.defined() || (head_adapter && !pos.suffix && !pos.slot_src.defined())))
    pos = find_score_positions(opt.score_mask.to(at::kCPU), inputs.device());
  const std::vector<int> seq = cfg.layer_sequence(opt.looping);
  const int64_t Q = last_step_queries(w, opt, pos, T);

  at::Tensor x = fused::rms_norm(at::embedding(w.get("tok_emb.weight"), inputs), 1.0, c.eps, act, math);
  if (cfg.embed_dim() != d) x = c.linear(x, "embed_proj.weight");
  const at::Tensor x0 = x;

  const size_t enc = seq.size() / 2;
  const int S = cfg.num_skips();
  std::vector<at::Tensor> skips;
  for (size_t s = 0; s < enc; ++s) {
    x = block_forward(c, int(s), seq[s], x, x0, cos, sin, T);
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
        lane1 = mlp_half(c, int(enc + j), i, x);
      } else {
        const bool last = j + enc + 1 == seq.size();
        x = block_forward(c, int(enc + j), i, x, x0, cos, sin, last ? Q : T);
      }
    } else {
      if (skip) {
        lane0 = add_skip(c, int(j), lane0, skips.back());
        skips.pop_back();
      }
      lane0 = attn_half(c, int(enc + j), i, lane0, x0, cos, sin);
      lane1 = mlp_half(c, int(enc + j), i, lane1);
    }
  }
  if (lane0.defined()) {
    at::Tensor lam = c.pw("lane_merge");
    x = c.store(lam * c.up(lane0) + (1.0 - lam) * c.up(lane1));
  }
  x = fused::rms_norm(x, 1.0, c.eps, act, math);
  if (cfg.embed_dim() != d) x = c.linear(x, "head_proj.weight");

  // The head and the loss only where scored, a bounded number of rows at a time.
  // A scored suffix (TTT's rows, most sliding batches) needs no gathers: its
  // positions are the last Qs columns, row-major.
  const int64_t Qs = opt.score_mask.defined() && pos.suffix ? T - pos.first_col : 0;
  if (Qs > 0) x = last_positions(x, 1, Qs);
  at::Tensor h = x.reshape({-1, x.size(-1)});
  at::Tensor tgt = targets.narrow(1, T - x.size(1), x.size(1)).reshape({-1});
  at::Tensor rows;
  if (opt.score_mask.defined() && Qs == 0) {
    rows = pos.rows;
    // Flat positions b * T + t in the [B, Q] suffix: b * Q + t - (T - Q).
    const at::Tensor rq = Q < T ? rows.div(T, "floor") * Q + rows.remainder(T) - (T - Q) : rows;
    h = h.index_select(0, rq);
    tgt = tgt.index_select(0, rq);
  }
  const std::string head_name = cfg.tie_embeddings ? "tok_emb.weight" : "lm_head.weight";
  if (*c.tap) (*c.tap)(head_name, h);
  const at::Tensor head = c.mm_weight(head_name);
  // Per-row head adapter: its delta at the scored positions, [n, V] act.
  const at::Tensor head_delta = head_lora_delta(c, x, Qs > 0 || !opt.score_mask.defined() ? nullptr : &pos);
  // Logit rows per head matmul: under the allocator's mmap threshold on the CPU, large on the GPU.
  const int64_t chunk_bytes = h.is_cuda() ? (int64_t(1) << 30) : (int64_t(16) << 20);
  const int64_t chunk = std::max<int64_t>(1, chunk_bytes / (4 * int64_t(cfg.vocab_size)));
  std::vector<at::Tensor> parts;
  for (int64_t r = 0; r < h.size(0); r += chunk) {
    const int64_t n = std::min(chunk, h.size(0) - r);
    const at::Tensor logits = at::linear(h.narrow(0, r, n), head);
    const at::Tensor delta = head_delta.defined() ? head_delta.narrow(0, r, n) : at::Tensor();
    parts.push_back(fused::softcap_nll(logits, delta, tgt.narrow(0, r, n), cfg.logit_softcap, c.math));
  }
  at::Tensor nll = parts.empty() ? at::zeros({0}, h.options().dtype(math)) : parts.size() == 1 ? parts[0] : at::cat(parts);
  if (Qs > 0) return Qs == T ? nll.view({B, T}) : at::constant_pad_nd(nll.view({B, Qs}), {T - Qs, 0}, 0.0);
  if (!rows.defined()) return nll.view({B, T});
  return at::zeros({B * T}, nll.options()).index_copy_(0, rows, nll).view({B, T});
}

}  // namespace pgolf
