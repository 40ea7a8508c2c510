#include "model/train.h"

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <set>

#include "data/error.h"
#include "data/token_stream.h"
#include "model/distributed.h"
#include "model/grad_reducer.h"
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

// The parameters in a few flat float32 buffers (at most kBucketElems values
// each, in a fixed name order every rank shares): initial weights are
// broadcast one buffer per collective, and the end's weights compared.
class FlatBuckets {
 public:
  static constexpr int64_t kBucketElems = int64_t(1) << 24;  // 64 MB of float32

  explicit FlatBuckets(std::map<std::string, at::Tensor>& params) {
    int64_t size = 0;
    for (auto& [name, t] : params) {
      if (groups_.empty() || (size > 0 && size + t.numel() > kBucketElems)) {
        groups_.emplace_back();
        size = 0;
      }
      groups_.back().push_back(&t);
      size += t.numel();
    }
  }

  // Every rank's parameters become rank 0's.
  void broadcast_params() {
    c10::NoGradGuard no_grad;
    std::vector<at::Tensor> flat;
    for (const auto& g : groups_) {
      std::vector<at::Tensor> parts;
      for (at::Tensor* p : g) parts.push_back(p->detach().reshape({-1}));
      flat.push_back(at::cat(parts));
    }
    broadcast(flat, 0);
    copy_back(flat);
  }

  // Fails unless every rank holds bit-identical parameters (a cheap
  // fingerprint: sums of the values and of their squares, in float64).
  void check_identical() {
    c10::NoGradGuard no_grad;
    double sum = 0, sq = 0;
    for (const auto& g : groups_)
      for (at::Tensor* p : g) {
        const at::Tensor d = p->detach().to(at::kDouble);
        sum += d.sum().item<double>();
        sq += d.pow(2).sum().item<double>();
      }
    const Ranks& r = ranks();
    std::vector<double> v(2 * size_t(r.world), 0.0);
    v[2 * size_t(r.rank)] = sum;
    v[2 * size_t(r.rank) + 1] = sq;
    all_reduce_sum(v);
    for (int k = 1; k < r.world; ++k)
      if (v[2 * size_t(k)] != v[0] || v[2 * size_t(k) + 1] != v[1])
        throw Error("train: the weights of rank " + std::to_string(k) + " differ from rank 0's after training");
  }

 private:
  void copy_back(const std::vector<at::Tensor>& flat) {
    for (size_t k = 0; k < groups_.size(); ++k) {
      int64_t off = 0;
      for (at::Tensor* p : groups_[k]) {
        p->detach().copy_(flat[k].narrow(0, off, p->numel()).view_as(*p));
        off += p->numel();
      }
    }
  }

  std::vector<std::vector<at::Tensor*>> groups_;
};

// The parameters in about the order backward finishes their gradients: the
// reverse of their order of use, taken as the reverse of the registration
// order (parameter_specs); a tensor the config does not name goes last.
std::vector<at::Tensor> gradient_order(GptWeights& w) {
  std::vector<at::Tensor> out;
  std::set<std::string> taken;
  const std::vector<ParamSpec> specs = parameter_specs(w.config);
  for (auto it = specs.rbegin(); it != specs.rend(); ++it) {
    auto t = w.tensors.find(it->name);
    if (t == w.tensors.end()) continue;
    out.push_back(t->second);
    taken.insert(it->name);
  }
  for (auto& [name, t] : w.tensors)
    if (!taken.count(name)) out.push_back(t);
  return out;
}

std::unique_ptr<GradReducer> make_reducer(GptWeights& w, const TrainOptions& o) {
  const double values = o.allreduce_bucket_mb * double(1 << 20) / double(sizeof(float));
  const int64_t cap = int64_t(std::min(values, 1e15));
  return std::make_unique<GradReducer>(gradient_order(w), std::max<int64_t>(cap, 1), /*extras=*/1,
                                       o.overlap_allreduce);
}

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

std::vector<int64_t> packed_segments(const uint16_t* tokens, int64_t n, int64_t max_len, uint16_t bos) {
  std::vector<int64_t> id(size_t(std::max<int64_t>(n, 0)));
  int64_t seg = 0, start = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0 && (tokens[i] == bos || i - start == max_len)) ++seg, start = i;
    id[size_t(i)] = seg;
  }
  return id;
}

at::Tensor accumulate_gradients(const GptWeights& w, const at::Tensor& x, const at::Tensor& y, const ForwardOptions& fo,
                                int64_t passes, const std::function<void(const at::Tensor&)>& before_last_backward) {
  // Rows [a, b) per pass, each loss weighted by its share of the rows, so the
  // summed gradient is that of the mean over all of them.
  const int64_t rows = x.size(0);
  if (passes < 1 || passes > rows) throw Error("train: cannot split " + std::to_string(rows) + " rows into " +
                                               std::to_string(passes) + " passes");
  at::Tensor mean;  // float64, on the device
  for (int64_t k = 0; k < passes; ++k) {
    const auto [a, b] = even_split(uint64_t(rows), int(k), int(passes));
    const double share = double(b - a) / double(rows);
    const at::Tensor xk = passes == 1 ? x : x.narrow(0, int64_t(a), int64_t(b - a));
    const at::Tensor yk = passes == 1 ? y : y.narrow(0, int64_t(a), int64_t(b - a));
    ForwardOptions fk = fo;
    if (fo.segment_ids.defined() && passes > 1) fk.segment_ids = fo.segment_ids.narrow(0, int64_t(a), int64_t(b - a));
    at::Tensor loss = forward_nll(w, xk, yk, fk).mean();
    const at::Tensor part = loss.detach().to(at::kDouble) * share;
    mean = mean.defined() ? mean + part : part;
    if (passes > 1) loss = loss * share;
    if (k + 1 == passes && before_last_backward) before_last_backward(mean);
    loss.backward();
  }
  return mean;
}

at::Tensor muon_direction(const at::Tensor& g, at::Tensor& buf, double momentum, int steps, bool row_normalize) {
  const at::Tensor gb = g.to(buf.scalar_type());  // the buffer's type decides where the sums round
  buf.mul_(momentum).add_(gb);
  at::Tensor u = gb.add(buf, momentum);
  if (row_normalize) u = u / u.to(at::kFloat).norm(2, -1, true).clamp_min(1e-7).to(u.scalar_type());
  u = newton_schulz_orthogonalize(u, steps).to(at::kFloat);
  return u * std::sqrt(std::max(1.0, double(u.size(0)) / double(u.size(1))));
}

TrainShape plan_train_shape(const TrainOptions& o, const ModelConfig& cfg) {
  if (o.iterations <= 0) throw Error("train: --iterations must be positive");
  if (!(o.allreduce_bucket_mb > 0)) throw Error("train: --allreduce-bucket-mb must be positive");
  if (o.grad_accum < 1) throw Error("train: --grad-accum must be at least 1");
  if (!(o.ema_decay >= 0 && o.ema_decay < 1)) throw Error("train: --ema-decay must be in [0, 1)");
  if (!(o.warmdown_frac >= 0 && o.warmdown_frac <= 1)) throw Error("train: --warmdown-frac must be in [0, 1]");
  if (!(o.min_lr >= 0 && o.min_lr <= 1)) throw Error("train: --min-lr must be in [0, 1]");
  for (const double wd : {o.muon_wd, o.embed_wd, o.adam_wd})
    if (!(wd >= 0)) throw Error("train: weight decays must be >= 0");
  // This rank's rows of every step's batch (all of them on a single rank):
  // my_rows of L tokens from token my_first of the step's span.
  int64_t L = cfg.train_seq_len, batch_tokens = o.batch_tokens, my_rows = 0, my_first = 0;
  if (!o.rank_shapes.empty()) {
    if (int64_t(o.rank_shapes.size()) != o.world)
      throw Error("train: --rank-shapes gives " + std::to_string(o.rank_shapes.size()) + " shapes for " +
                  std::to_string(o.world) + " ranks");
    batch_tokens = 0;
    for (size_t r = 0; r < o.rank_shapes.size(); ++r) {
      const auto [n, len] = o.rank_shapes[r];
      if (n < 1 || len < 1 || len > cfg.train_seq_len)
        throw Error("train: --rank-shapes: rank " + std::to_string(r) + " has " + std::to_string(n) + " rows of " +
                    std::to_string(len) + " tokens; rows must be positive and lengths in 1.." +
                    std::to_string(cfg.train_seq_len) + " (the config's train_seq_len)");
      if (int(r) < o.rank) my_first += n * len;
      batch_tokens += n * len;
    }
    my_rows = o.rank_shapes[size_t(o.rank)].first;
    L = o.rank_shapes[size_t(o.rank)].second;
  } else {
    if (batch_tokens < L || batch_tokens % L != 0)
      throw Error("train: --batch-tokens must be a positive multiple of the sequence length " + std::to_string(L));
    const int64_t rows = batch_tokens / L;
    if (rows < o.world)
      throw Error("train: --batch-tokens gives " + std::to_string(rows) + " rows of " + std::to_string(L) +
                  " tokens for " + std::to_string(o.world) + " ranks: each rank needs at least one row");
    const auto [row_begin, row_end] = even_split(uint64_t(rows), o.rank, o.world);
    my_rows = int64_t(row_end - row_begin);
    my_first = int64_t(row_begin) * L;
  }
  const int64_t my_tokens = my_rows * L;
  if (o.pack_documents && my_tokens % o.grad_accum != 0)
    throw Error("train: packed documents: this rank's " + std::to_string(my_tokens) + " tokens do not split into " +
                std::to_string(o.grad_accum) + " equal micro-batches");
  if (my_rows < o.grad_accum)
    throw Error("train: --grad-accum " + std::to_string(o.grad_accum) + " needs at least that many rows of " +
                std::to_string(L) + " tokens per rank; this rank has " + std::to_string(my_rows));
  return {L, batch_tokens, my_rows, my_first};
}

void train_gpt(GptWeights& w, const TokenStream& train, const TrainOptions& o,
               const std::function<bool(const TrainStep&)>& on_step) {
  const ModelConfig& cfg = w.config;
  const auto [L, batch_tokens, my_rows, my_first] = plan_train_shape(o, cfg);
  const int64_t my_tokens = my_rows * L;
  const double weight = double(my_tokens) / double(batch_tokens);  // this rank's share of the mean loss
  const bool multi = o.world > 1;
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
  std::unique_ptr<FlatBuckets> buckets;
  std::unique_ptr<GradReducer> reducer;
  if (multi) {
    buckets = std::make_unique<FlatBuckets>(w.tensors);
    buckets->broadcast_params();  // every rank starts from rank 0's weights
    reducer = make_reducer(w, o);
  }
  std::map<std::string, at::Tensor> ema;  // float32, like the parameters
  if (o.ema_decay > 0)
    for (const auto& [n, t] : w.tensors) ema[n] = t.detach().clone();
  for (const std::string& n : muon_names)
    momentum[n] = at::zeros_like(w.tensors[n], o.muon_bf16_momentum ? at::kBFloat16 : at::kFloat);
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
  fo.deterministic_attention = o.deterministic;
  for (int64_t step = 1; step <= o.iterations; ++step) {
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bool stop = o.stop && o.stop->load();
    if (multi && (o.max_seconds > 0 || o.stop)) {
      // Rank 0's clock for every rank: the warmdown, looping and the stop
      // agree; so does a stop request, from whichever rank got it.
      std::vector<double> t = {o.rank == 0 ? elapsed : 0.0, stop ? 1.0 : 0.0};
      all_reduce_sum(t);
      elapsed = t[0];
      stop = t[1] > 0;
      if (o.max_seconds > 0 && step > 1 && elapsed >= o.max_seconds) break;
    }
    if (stop) break;
    const double progress = o.max_seconds > 0 ? elapsed / o.max_seconds : double(step - 1) / double(o.iterations);
    // Linear warmdown: over the last warmdown_frac of the run, or over the
    // last warmdown_iters steps (or the matching share of the time cap).
    double lr_mult = 1.0;
    if (o.warmdown_frac > 0) {
      if (progress >= 1.0 - o.warmdown_frac) lr_mult = std::max((1.0 - progress) / o.warmdown_frac, o.min_lr);
    } else if (o.warmdown_iters > 0) {
      const double by_step = double(o.iterations - step + 1) / double(o.warmdown_iters);
      lr_mult = std::min(1.0, by_step);
      if (o.max_seconds > 0 && step > 1) {
        const double step_s = elapsed / double(step - 1);
        const double left_steps = (o.max_seconds - elapsed) / std::max(step_s, 1e-9);
        lr_mult = std::min(lr_mult, std::max(0.0, left_steps / double(o.warmdown_iters)));
      }
    }
    // The global span; this rank's my_rows rows of L tokens start at my_first.
    std::vector<uint16_t> span = reader.take(size_t(batch_tokens) + 1);
    const size_t first = size_t(my_first);
    at::Tensor buf = at::empty({my_tokens + 1}, at::kLong);
    auto pb = buf.accessor<int64_t, 1>();
    for (int64_t i = 0; i <= my_tokens; ++i) pb[i] = span[first + size_t(i)];
    // Rows of L tokens; packed: one row per micro-batch, attention within documents.
    const int64_t row_len = o.pack_documents ? my_tokens / o.grad_accum : L;
    const at::Tensor x_all = buf.narrow(0, 0, my_tokens).view({-1, row_len}).to(device);
    const at::Tensor y_all = buf.narrow(0, 1, my_tokens).view({-1, row_len}).to(device);
    if (o.pack_documents) {
      std::vector<int64_t> seg;
      for (int64_t r = 0; r < o.grad_accum; ++r) {
        const std::vector<int64_t> s = packed_segments(span.data() + first + size_t(r * row_len), row_len, L, o.bos_id);
        seg.insert(seg.end(), s.begin(), s.end());
      }
      fo.segment_ids = at::tensor(seg, at::kLong).view({o.grad_accum, row_len});  // on the host: no device wait
    }

    fo.looping = progress >= o.enable_looping_at;
    const at::Tensor rank_loss = accumulate_gradients(w, x_all, y_all, fo, o.grad_accum, [&](const at::Tensor& l) {
      // The global mean's gradient: sum over ranks of (tokens share) *
      // gradient, and the global mean loss beside it (float32 of the float64
      // product, on the device: no sync between forward and backward).
      if (multi) reducer->arm(weight, l.mul(weight).to(at::kFloat).reshape({1}));
    });
    const double loss_value = multi ? reducer->finish()[0] : rank_loss.item<double>();
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
        const at::Tensor u = muon_direction(p.grad(), momentum[n], mu, o.muon_backend_steps, o.muon_row_normalize);
        if (o.muon_wd > 0) p.mul_(1.0 - o.matrix_lr * lr_mult * o.muon_wd);
        p.add_(u, -o.matrix_lr * lr_mult);
      }
      for (const std::string& n : adam_names) {
        at::Tensor& p = w.tensors[n];
        at::Tensor g = p.grad();
        AdamState& s = adam[n];
        s.m.mul_(o.beta1).add_(g, 1 - o.beta1);
        s.v.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
        const double wd = n == "tok_emb.weight" ? o.embed_wd : n == "lm_head.weight" ? 0.0 : o.adam_wd;
        if (wd > 0) p.mul_(1.0 - adam_lr(n) * lr_mult * wd);  // AdamW: decay first
        const double bc1 = 1 - std::pow(o.beta1, double(step)), bc2 = 1 - std::pow(o.beta2, double(step));
        at::Tensor denom = (s.v / bc2).sqrt_().add_(o.adam_eps);
        p.addcdiv_(s.m, denom, -adam_lr(n) * lr_mult / bc1);
      }
      for (auto& [n, t] : w.tensors) t.mutable_grad().reset();
      for (auto& [n, e] : ema) e.mul_(o.ema_decay).add_(w.tensors[n], 1.0 - o.ema_decay);
    }
    TrainStep st;
    st.step = step;
    st.loss = loss_value;
    st.lr_mult = lr_mult;
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.tokens_per_second = double(step * batch_tokens) / std::max(st.seconds, 1e-9);
    if (multi) {
      st.allreduce_buckets = int64_t(reducer->buckets());
      st.allreduce_buckets_in_backward = int64_t(reducer->started_in_backward());
    }
    const bool go_on = !on_step || on_step(st);
    // Multi-rank: the next step's shared clock decides (above).
    if (!go_on || (!multi && o.max_seconds > 0 && st.seconds >= o.max_seconds)) break;
  }
  if (multi) buckets->check_identical();
  for (auto& [n, t] : w.tensors) t = ema.empty() ? t.detach() : ema[n];
}

}  // namespace pgolf
