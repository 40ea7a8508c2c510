#include "model/train.h"

#include <chrono>
#include <cmath>

#include "data/error.h"
#include "data/token_stream.h"
#include "model/pch.h"

#include <c10/core/GradMode.h>

namespace pgolf {

namespace {

bool is_control(const std::string& name) {
  for (const char* p : {"attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight", "skip_gates", "lane_merge"})
    if (name.find(p) != std::string::npos) return true;
  return false;
}

struct AdamState {
  at::Tensor m, v;
};

// Reads the training stream in order, wrapping around at its end.
class SpanReader {
 public:
  explicit SpanReader(const TokenStream& s) : s_(s) {
    if (s.size() < 2) throw Error("train: the training stream has fewer than 2 tokens");
  }
  std::vector<uint16_t> take(size_t n) {
    std::vector<uint16_t> out(n);
    size_t got = 0;
    while (got < n) {
      if (pos_ == s_.size()) pos_ = 0;
      const size_t k = std::min<size_t>(n - got, s_.size() - pos_);
      s_.copy(pos_, k, out.data() + got);
      pos_ += k;
      got += k;
    }
    return out;
  }

 private:
  const TokenStream& s_;
  uint64_t pos_ = 0;
};

}  // namespace

at::Tensor newton_schulz_orthogonalize(const at::Tensor& g, int steps) {
  const double a = 3.4445, b = -4.7750, c = 2.0315;
  at::Tensor x = g.to(at::kBFloat16);
  x = x / (x.norm() + 1e-7);
  const bool transposed = g.size(0) > g.size(1);
  if (transposed) x = x.t();
  for (int i = 0; i < steps; ++i) {
    at::Tensor A = at::matmul(x, x.t());
    at::Tensor B = b * A + c * at::matmul(A, A);
    x = a * x + at::matmul(B, x);
  }
  return transposed ? x.t() : x;
}

void train_gpt(GptWeights& w, const TokenStream& train, const TrainOptions& o,
               const std::function<bool(const TrainStep&)>& on_step) {
  const ModelConfig& cfg = w.config;
  const int64_t L = cfg.train_seq_len;
  if (o.batch_tokens < L || o.batch_tokens % L != 0)
    throw Error("train: --batch-tokens must be a positive multiple of the sequence length " + std::to_string(L));
  if (o.iterations <= 0) throw Error("train: --iterations must be positive");
  at::manual_seed(o.seed);

  // Parameters: float32 leaves. Matrices of the blocks -> Muon; the rest -> Adam.
  std::vector<std::string> muon_names, adam_names;
  for (auto& [name, t] : w.tensors) {
    t = t.detach().to(at::kFloat).clone();
    t.set_requires_grad(true);
    const bool matrix = t.dim() == 2 && name.rfind("blocks.", 0) == 0 && !is_control(name);
    (matrix ? muon_names : adam_names).push_back(name);
  }
  std::map<std::string, at::Tensor> momentum;
  std::map<std::string, AdamState> adam;
  for (const std::string& n : muon_names) momentum[n] = at::zeros_like(w.tensors[n]);
  for (const std::string& n : adam_names) adam[n] = {at::zeros_like(w.tensors[n]), at::zeros_like(w.tensors[n])};
  auto adam_lr = [&](const std::string& n) {
    if (n == "tok_emb.weight") return cfg.tie_embeddings ? o.tied_embed_lr : o.embed_lr;
    if (n == "lm_head.weight") return o.head_lr;
    return o.scalar_lr;
  };

  SpanReader reader(train);
  const at::Device device = w.get("tok_emb.weight").device();
  const auto t0 = std::chrono::steady_clock::now();
  ForwardOptions fo;
  fo.precision = o.precision;
  for (int64_t step = 1; step <= o.iterations; ++step) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Linear warmdown over the last warmdown_iters steps (or the matching share of the time cap).
    double lr_mult = 1.0;
    if (o.warmdown_iters > 0) {
      const double by_step = double(o.iterations - step + 1) / double(o.warmdown_iters);
      lr_mult = std::min(1.0, by_step);
      if (o.max_seconds > 0 && step > 1) {
        const double step_s = elapsed / double(step - 1);
        const double left_steps = (o.max_seconds - elapsed) / std::max(step_s, 1e-9);
        lr_mult = std::min(lr_mult, std::max(0.0, left_steps / double(o.warmdown_iters)));
      }
    }
    std::vector<uint16_t> span = reader.take(size_t(o.batch_tokens) + 1);
    at::Tensor buf = at::empty({int64_t(span.size())}, at::kLong);
    auto pb = buf.accessor<int64_t, 1>();
    for (size_t i = 0; i < span.size(); ++i) pb[int64_t(i)] = span[i];
    at::Tensor x = buf.narrow(0, 0, o.batch_tokens).view({-1, L}).to(device);
    at::Tensor y = buf.narrow(0, 1, o.batch_tokens).view({-1, L}).to(device);

    const double progress = o.max_seconds > 0 ? elapsed / o.max_seconds : double(step - 1) / double(o.iterations);
    fo.looping = progress >= o.enable_looping_at;
    at::Tensor loss = forward_nll(w, x, y, fo).mean();
    loss.backward();
    {
      c10::NoGradGuard no_grad;
      if (o.grad_clip_norm > 0) {
        double sq = 0;
        for (auto& [n, t] : w.tensors) sq += t.grad().to(at::kDouble).pow(2).sum().item<double>();
        const double norm = std::sqrt(sq);
        if (norm > o.grad_clip_norm)
          for (auto& [n, t] : w.tensors) t.mutable_grad().mul_(o.grad_clip_norm / (norm + 1e-6));
      }
      const double frac = std::min(1.0, double(step) / double(std::max<int64_t>(o.muon_momentum_warmup_steps, 1)));
      const double mu = (1 - frac) * o.muon_momentum_warmup_start + frac * o.muon_momentum;
      for (const std::string& n : muon_names) {
        at::Tensor& p = w.tensors[n];
        at::Tensor g = p.grad();
        at::Tensor& buf_m = momentum[n];
        buf_m.mul_(mu).add_(g);
        at::Tensor u = newton_schulz_orthogonalize(g.add(buf_m, mu), o.muon_backend_steps).to(at::kFloat);
        u = u * std::sqrt(std::max(1.0, double(p.size(0)) / double(p.size(1))));
        p.add_(u, -o.matrix_lr * lr_mult);
      }
      for (const std::string& n : adam_names) {
        at::Tensor& p = w.tensors[n];
        at::Tensor g = p.grad();
        AdamState& s = adam[n];
        s.m.mul_(o.beta1).add_(g, 1 - o.beta1);
        s.v.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
        const double bc1 = 1 - std::pow(o.beta1, double(step)), bc2 = 1 - std::pow(o.beta2, double(step));
        at::Tensor denom = (s.v / bc2).sqrt_().add_(o.adam_eps);
        p.addcdiv_(s.m, denom, -adam_lr(n) * lr_mult / bc1);
      }
      for (auto& [n, t] : w.tensors) t.mutable_grad().reset();
    }
    TrainStep st;
    st.step = step;
    st.loss = loss.item<double>();
    st.lr_mult = lr_mult;
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.tokens_per_second = double(step * o.batch_tokens) / std::max(st.seconds, 1e-9);
    const bool go_on = !on_step || on_step(st);
    if (!go_on || (o.max_seconds > 0 && st.seconds >= o.max_seconds)) break;
  }
  for (auto& [n, t] : w.tensors) t = t.detach();
}

}  // namespace pgolf
