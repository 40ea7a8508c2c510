#include <c10/core/GradMode.h>

#include "quant/calibration.h"

#include <algorithm>
#include <random>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf::quant {

namespace {

// Uniform in [0, n) by rejection: exact, and the same on every standard library.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = ~uint64_t(0) - (~uint64_t(0) % n);
  uint64_t x;
  do x = rng();
  while (x >= limit);
  return x % n;
}

struct ShardWindows {
  const MappedShard* shard;
  std::vector<uint64_t> starts;  // taken from the back
};

void refill(ShardWindows& s, int64_t L, std::mt19937_64& rng) {
  const int64_t n = int64_t(s.shard->size());
  const int64_t max_phase = std::min<int64_t>(L - 1, std::max<int64_t>(0, n - L - 1));
  const int64_t phase = max_phase > 0 ? int64_t(uniform_below(rng, uint64_t(max_phase + 1))) : 0;
  const int64_t count = n - 1 - phase >= 0 ? (n - 1 - phase) / L : 0;
  s.starts.resize(size_t(count));
  for (int64_t i = 0; i < count; ++i) s.starts[size_t(i)] = uint64_t(phase + i * L);
  for (int64_t i = count - 1; i > 0; --i) std::swap(s.starts[size_t(i)], s.starts[uniform_below(rng, uint64_t(i + 1))]);
}

}  // namespace

std::vector<at::Tensor> shard_calibration_batches(const TokenStream& s, const ShardCalibration& o) {
  if (o.batches < 1 || o.rows < 1 || o.seq_len < 1) throw Error("calibration: batches, rows and seq_len must be >= 1");
  std::mt19937_64 rng(o.seed);
  std::vector<ShardWindows> shards;
  for (size_t i = 0; i < s.num_shards(); ++i) shards.push_back({&s.shard(i), {}});
  auto refill_all = [&]() {
    uint64_t total = 0;
    for (auto& sh : shards) {
      refill(sh, o.seq_len, rng);
      total += sh.starts.size();
    }
    if (total == 0)
      fail(s.num_shards() ? s.shard(0).path() : "calibration",
           "no calibration window of " + std::to_string(o.seq_len + 1) + " tokens fits in the shards");
  };
  refill_all();
  std::vector<at::Tensor> out;
  for (int64_t b = 0; b < o.batches; ++b) {
    at::Tensor x = at::empty({o.rows, o.seq_len}, at::kLong);
    int64_t* px = x.data_ptr<int64_t>();
    for (int64_t r = 0; r < o.rows; ++r) {
      uint64_t total = 0;
      for (const auto& sh : shards) total += sh.starts.size();
      if (total == 0) {
        refill_all();
        for (const auto& sh : shards) total += sh.starts.size();
      }
      uint64_t pick = uniform_below(rng, total);  // shard chosen in proportion to its windows left
      size_t si = 0;
      while (pick >= shards[si].starts.size()) pick -= shards[si++].starts.size();
      const uint64_t start = shards[si].starts.back();
      shards[si].starts.pop_back();
      const uint16_t* tok = shards[si].shard->tokens() + start;
      for (int64_t t = 0; t < o.seq_len; ++t) px[r * o.seq_len + t] = tok[t];
    }
    out.push_back(x);
  }
  return out;
}

std::vector<at::Tensor> self_calibration_batches(const GptWeights& w, const SelfCalibration& o) {
  if (o.sequences < 1 || o.seq_len < 2 || o.batch < 1) throw Error("calibration: self needs sequences >= 1, seq_len >= 2");
  if (!(o.temperature > 0)) throw Error("calibration: the sampling temperature must be positive");
  const ModelConfig& cfg = w.config;
  const at::Device device = w.get("tok_emb.weight").device();
  const std::string head_name = cfg.tie_embeddings ? "tok_emb.weight" : "lm_head.weight";
  const at::ScalarType act = o.precision == Precision::F64 ? at::kDouble
                             : o.precision == Precision::BF16 ? at::kBFloat16 : at::kFloat;
  const at::Tensor head = w.get(head_name).to(act);
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  c10::NoGradGuard no_grad;

  at::Tensor h_last;  // the LM head's input at the last position, from the tap
  ForwardOptions fo;
  fo.precision = o.precision;
  fo.linear_input_tap = [&](const std::string& name, const at::Tensor& x) {
    if (name == head_name) h_last = x;
  };
  std::vector<at::Tensor> out;
  const int64_t total = o.sequences * o.seq_len;
  for (int64_t b0 = 0; b0 < o.sequences; b0 += o.batch) {
    const int64_t bs = std::min(o.batch, o.sequences - b0);
    at::Tensor tokens = at::randint(0, cfg.vocab_size, {bs, 1}, gen, at::TensorOptions().dtype(at::kLong));
    for (int64_t T = 1; T < o.seq_len; ++T) {
      const at::Tensor x = tokens.to(device);
      fo.score_mask = at::zeros({bs, T}, x.options().dtype(at::kBool));
      fo.score_mask.select(1, T - 1).fill_(true);
      forward_nll(w, x, x, fo);  // the head runs at the last position only; its input comes through the tap
      at::Tensor logits = at::linear(h_last, head).to(at::kFloat);  // [bs, V]
      logits = cfg.logit_softcap * at::tanh(logits / cfg.logit_softcap);
      const at::Tensor probs = at::softmax(logits / o.temperature, -1).cpu();
      tokens = at::cat({tokens, at::multinomial(probs, 1, /*replacement=*/false, gen)}, 1);
      if (o.progress) o.progress(b0 * o.seq_len + bs * (T + 1), total);
    }
    out.push_back(tokens);
  }
  return out;
}

}  // namespace pgolf::quant
