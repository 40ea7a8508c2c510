// Training: the Muon orthogonaliser, learning a simple sequence, determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>

#include "data/error.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "model/train.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

TEST(Train, NewtonSchulzGivesNearOrthogonalRows) {
  at::manual_seed(0);
  for (auto shape : {std::vector<int64_t>{16, 48}, std::vector<int64_t>{48, 16}}) {
    at::Tensor g = at::randn(shape);
    at::Tensor x = newton_schulz_orthogonalize(g, 5).to(at::kFloat);
    ASSERT_EQ(x.sizes(), g.sizes());
    at::Tensor sv = at::linalg_svdvals(x);
    // The quintic iteration maps singular values into roughly [0.7, 1.2].
    EXPECT_GT(sv.min().item<float>(), 0.5f);
    EXPECT_LT(sv.max().item<float>(), 1.3f);
  }
}

struct CyclicData {
  TempDir dir;
  CyclicData() {
    std::vector<uint16_t> tok;
    for (int i = 0; i < 20000; ++i) tok.push_back(uint16_t(i % 97 == 0 ? 1 : 4 + (i * 7) % 29));
    write_shard(dir / "fineweb_train_000000.bin", tok);
  }
};

TEST(Train, LearnsAPredictableSequenceAndIsDeterministic) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  ModelConfig c = tiny_config();
  TrainOptions o;
  o.iterations = 60;
  o.batch_tokens = 256;
  o.warmdown_iters = 10;
  auto run = [&]() {
    GptWeights w = init_gpt_weights(c, 3);
    std::vector<double> losses;
    train_gpt(w, s, o, [&](const TrainStep& st) {
      losses.push_back(st.loss);
      return true;
    });
    return std::make_pair(w, losses);
  };
  auto [w1, l1] = run();
  ASSERT_EQ(l1.size(), 60u);
  EXPECT_GT(l1.front(), 3.0);   // ~ln(37) at the start
  EXPECT_LT(l1.back(), 1.0);    // the sequence is almost deterministic
  auto [w2, l2] = run();
  EXPECT_EQ(l1, l2);
  for (const auto& [n, t] : w1.tensors) EXPECT_TRUE(at::equal(t, w2.tensors.at(n))) << n;
}

TEST(Train, StopsWhenTheCallbackSaysSo) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  GptWeights w = init_gpt_weights(tiny_config(), 1);
  TrainOptions o;
  o.iterations = 100;
  o.batch_tokens = 64;
  int64_t last = 0;
  train_gpt(w, s, o, [&](const TrainStep& st) {
    last = st.step;
    return st.step < 5;
  });
  EXPECT_EQ(last, 5);
  o.batch_tokens = 20;  // not a multiple of the sequence length
  EXPECT_THROW(train_gpt(w, s, o, nullptr), Error);
}

// The gradient of a step in 1 pass and in 3 (4 rows: 2, 1, 1), float64: the
// same gradient and mean loss to rounding.
TEST(Train, AccumulatedGradientsEqualTheOnePassGradient) {
  ModelConfig c = tiny_config();
  GptWeights w = random_weights(c, 4);  // no zero projections: every gradient is non-zero
  for (auto& [n, t] : w.tensors) t = t.to(at::kDouble).requires_grad_(true);
  const at::Tensor x = at::randint(c.vocab_size, {4, c.train_seq_len}, at::kLong);
  const at::Tensor y = at::randint(c.vocab_size, {4, c.train_seq_len}, at::kLong);
  ForwardOptions fo;
  fo.precision = Precision::F64;
  auto grads = [&](int64_t passes, double* loss) {
    for (auto& [n, t] : w.tensors) t.mutable_grad().reset();
    at::Tensor seen;
    *loss = accumulate_gradients(w, x, y, fo, passes, [&](const at::Tensor& l) { seen = l.clone(); }).item<double>();
    EXPECT_NEAR(seen.item<double>(), *loss, 1e-15);
    std::map<std::string, at::Tensor> g;
    for (const auto& [n, t] : w.tensors) g[n] = t.grad().clone();
    return g;
  };
  double l1 = 0, l3 = 0;
  const auto g1 = grads(1, &l1), g3 = grads(3, &l3);
  EXPECT_NEAR(l1, forward_nll(w, x, y, fo).mean().item<double>(), 1e-12);
  EXPECT_NEAR(l3, l1, 1e-12);
  for (const auto& [n, g] : g1) {
    const double scale = g.abs().max().item<double>();
    EXPECT_GT(scale, 0.0) << n;
    EXPECT_LT((g3.at(n) - g).abs().max().item<double>(), 1e-12 * (1 + scale)) << n;
  }
  double unused = 0;
  EXPECT_NE(error_of([&] { grads(5, &unused); }).find("into 5 passes"), std::string::npos);
}

// --grad-accum N: the rows of a step in N passes (here 4 rows in 3: 2, 1, 1),
// each loss weighted by its share: the same step as one pass, up to the
// order of the gradient sums (Muon's bf16 Newton-Schulz may round a few
// values the other way).
TEST(Train, GradientAccumulationGivesTheOnePassStep) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  const ModelConfig c = tiny_config();
  TrainOptions o;
  o.iterations = 3;
  o.batch_tokens = 4 * c.train_seq_len;
  o.warmdown_iters = 0;  // full learning rate: the steps move the weights
  o.precision = Precision::F64;
  auto run = [&](int64_t accum) {
    o.grad_accum = accum;
    GptWeights w = init_gpt_weights(c, 5);
    std::vector<double> losses;
    train_gpt(w, s, o, [&](const TrainStep& st) {
      losses.push_back(st.loss);
      return true;
    });
    return std::make_pair(w, losses);
  };
  const GptWeights init = init_gpt_weights(c, 5);
  const auto [w1, l1] = run(1);
  const auto [w3, l3] = run(3);
  ASSERT_EQ(l3.size(), 3u);
  EXPECT_NEAR(l3[0], l1[0], 1e-9);  // the same rows, the same mean loss
  double moved = 0, diff = 0;
  for (const auto& [n, t] : w1.tensors) {
    moved = std::max(moved, (t - init.tensors.at(n)).abs().max().item<double>());
    diff = std::max(diff, (t - w3.tensors.at(n)).abs().max().item<double>());
  }
  EXPECT_GT(moved, 0.05);
  EXPECT_LT(diff, 2e-3) << "moved " << moved;
  std::printf("grad accumulation: weights moved up to %.3g, one pass vs 3 passes differ by %.3g\n", moved, diff);
  o.grad_accum = 5;  // more passes than rows
  GptWeights w = init_gpt_weights(c, 5);
  EXPECT_NE(error_of([&] { train_gpt(w, s, o, nullptr); }).find("--grad-accum 5"), std::string::npos);
}

// --ema-decay d: training ends with e_k = d e_(k-1) + (1 - d) w_k, e_0 the
// initial weights, w_k the weights after step k.
TEST(Train, EmaEndsWithTheAverageOfTheWeights) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  TrainOptions o;
  o.iterations = 3;
  o.batch_tokens = 64;
  o.ema_decay = 0.75;
  GptWeights w = init_gpt_weights(tiny_config(), 2);
  std::map<std::string, at::Tensor> ema;
  for (const auto& [n, t] : w.tensors) ema[n] = t.to(at::kFloat).clone();
  train_gpt(w, s, o, [&](const TrainStep&) {
    for (auto& [n, e] : ema) e.mul_(0.75).add_(w.tensors.at(n).detach(), 0.25);
    return true;
  });
  for (const auto& [n, t] : w.tensors) {
    EXPECT_FALSE(t.requires_grad()) << n;
    EXPECT_TRUE(at::equal(t, ema.at(n))) << n;
  }
  o.ema_decay = 1.0;
  EXPECT_NE(error_of([&] { train_gpt(w, s, o, nullptr); }).find("--ema-decay"), std::string::npos);
}

// The stop flag (pgolf train's SIGINT / SIGTERM handler sets it): training
// ends before the step after the one that saw it set.
TEST(Train, StopFlagEndsTrainingBeforeTheNextStep) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  GptWeights w = init_gpt_weights(tiny_config(), 1);
  std::atomic<bool> stop{false};
  TrainOptions o;
  o.iterations = 100;
  o.batch_tokens = 64;
  o.stop = &stop;
  int64_t last = 0;
  train_gpt(w, s, o, [&](const TrainStep& st) {
    last = st.step;
    if (st.step == 3) stop = true;
    return true;
  });
  EXPECT_EQ(last, 3);
}

// --warmdown-frac F --min-lr M (the frontier's schedule): 1 until the run's
// fraction f = (step - 1) / iterations reaches 1 - F, then max((1 - f) / F, M).
TEST(Train, WarmdownFractionSchedule) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  GptWeights w = init_gpt_weights(tiny_config(), 1);
  TrainOptions o;
  o.iterations = 10;
  o.batch_tokens = 64;
  o.warmdown_frac = 0.5;
  o.min_lr = 0.5;
  std::vector<double> got;
  train_gpt(w, s, o, [&](const TrainStep& st) {
    got.push_back(st.lr_mult);
    return true;
  });
  const std::vector<double> want = {1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.5, 0.5};
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "step " << i + 1;
}

// Decoupled weight decay: after one step from the same weights, each decayed
// tensor differs from the undecayed run by exactly -lr wd p0 (the update
// itself depends only on the gradient).
TEST(Train, WeightDecaysShrinkTheWeightsBeforeTheUpdate) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  const ModelConfig c = tiny_config();
  TrainOptions o;
  o.iterations = 1;
  o.batch_tokens = 64;
  o.warmdown_iters = 0;
  auto run = [&](double muon_wd, double embed_wd, double adam_wd) {
    o.muon_wd = muon_wd, o.embed_wd = embed_wd, o.adam_wd = adam_wd;
    GptWeights w = random_weights(c, 6);
    train_gpt(w, s, o, nullptr);
    return w;
  };
  const GptWeights p0 = random_weights(c, 6), plain = run(0, 0, 0), decayed = run(0.5, 0.25, 0.125);
  for (const auto& [n, t] : plain.tensors) {
    const bool muon = t.dim() == 2 && n.rfind("blocks.", 0) == 0 && n.find("resid_mix") == std::string::npos;
    const double lr = muon ? o.matrix_lr : n == "tok_emb.weight" ? o.tied_embed_lr : o.scalar_lr;
    const double wd = muon ? 0.5 : n == "tok_emb.weight" ? 0.25 : 0.125;
    const at::Tensor want = t.to(at::kDouble) - lr * wd * p0.tensors.at(n).to(at::kFloat).to(at::kDouble);
    EXPECT_LT((decayed.tensors.at(n).to(at::kDouble) - want).abs().max().item<double>(), 1e-6) << n;
  }
}

// Row normalisation makes Muon's direction blind to the scale of each row of
// the update; without it the rows' scales matter.
TEST(Train, RowNormalizedMuonIgnoresRowScales) {
  at::manual_seed(3);
  const at::Tensor g = at::randn({24, 40}), scales = at::rand({24, 1}) * 10 + 0.1;
  auto dir = [](const at::Tensor& grad, bool rows) {
    at::Tensor buf = at::zeros_like(grad);
    at::Tensor d = muon_direction(grad, buf, 0.95, 5, rows);
    EXPECT_TRUE(at::allclose(buf, grad));  // buf = 0.95 * 0 + g
    return d;
  };
  EXPECT_LT((dir(g * scales, true) - dir(g, true)).abs().max().item<double>(), 2e-2);
  EXPECT_GT((dir(g * scales, false) - dir(g, false)).abs().max().item<double>(), 0.1);
  // A bf16 buffer (the frontier's): it stays bf16, holds the float32
  // buffer's sums to bf16 rounding (not the same bits), and the direction is
  // the float32 one to that rounding.
  at::Tensor b16 = at::zeros({24, 40}, at::kBFloat16), b32 = at::zeros({24, 40});
  at::Tensor d16, d32;
  for (int t = 0; t < 3; ++t) {
    const at::Tensor gt = at::randn({24, 40});
    d16 = muon_direction(gt, b16, 0.9, 5, true);
    d32 = muon_direction(gt, b32, 0.9, 5, true);
    EXPECT_EQ(b16.scalar_type(), at::kBFloat16);
    EXPECT_LT((b16.to(at::kFloat) - b32).abs().max().item<double>(), 3e-2 * b32.abs().max().item<double>()) << t;
  }
  EXPECT_FALSE(at::equal(b16.to(at::kFloat), b32));
  EXPECT_LT((d16 - d32).abs().max().item<double>(), 5e-2);
  // sqrt(rows / cols) for tall matrices.
  const at::Tensor tall = at::randn({40, 10});
  at::Tensor buf = at::zeros_like(tall);
  const at::Tensor d = muon_direction(tall, buf, 0.0, 5, false);
  EXPECT_NEAR(d.pow(2).sum().item<double>() / (40.0 / 10.0), 10.0, 4.0);  // ~ cols singular values near 1
}

TEST(Train, PackedSegmentsSplitAtBosAndEveryMaxLen) {
  const std::vector<uint16_t> t = {5, 6, 1, 7, 8, 9, 10, 11, 1, 3};
  EXPECT_EQ(packed_segments(t.data(), int64_t(t.size()), 3, 1), (std::vector<int64_t>{0, 0, 1, 1, 1, 2, 2, 2, 3, 3}));
  EXPECT_EQ(packed_segments(t.data(), int64_t(t.size()), 100, 1), (std::vector<int64_t>{0, 0, 1, 1, 1, 1, 1, 1, 2, 2}));
}

// Document-packed training: the first step's loss (the initial weights) is
// the mean over the packed row of each document segment's own NLL, as if
// every segment were a sequence of its own (float64; RoPE's absolute offsets
// in the row change nothing but rounding). Two micro-batches: two rows.
TEST(Train, PackedTrainingScoresEachDocumentAlone) {
  CyclicData data;  // BOS every 97 tokens: documents cross the rows
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  ModelConfig c = tiny_config();
  c.train_seq_len = 40;  // the longest segment: documents of 97 tokens split
  TrainOptions o;
  o.iterations = 1;
  o.batch_tokens = 4 * c.train_seq_len;
  o.precision = Precision::F64;
  o.pack_documents = true;
  o.grad_accum = 2;
  const GptWeights w0 = random_weights(c, 8);
  GptWeights w = w0;
  double loss = 0;
  train_gpt(w, s, o, [&](const TrainStep& st) {
    loss = st.loss;
    return true;
  });
  // By hand: the first batch_tokens + 1 tokens, two rows, their segments.
  const std::vector<uint16_t> tok = s.slice(0, size_t(o.batch_tokens) + 1);
  GptWeights w32 = w0;
  for (auto& [n, t] : w32.tensors) t = t.to(at::kFloat);  // what training starts from
  ForwardOptions f64;
  f64.precision = Precision::F64;
  double sum = 0;
  const int64_t row = o.batch_tokens / 2;
  int segments = 0;
  for (int64_t r = 0; r < 2; ++r) {
    const std::vector<int64_t> seg = packed_segments(tok.data() + r * row, row, c.train_seq_len, 1);
    for (int64_t a = 0; a < row;) {
      int64_t b = a;
      while (b < row && seg[size_t(b)] == seg[size_t(a)]) ++b;
      std::vector<int64_t> in, tg;
      for (int64_t i = a; i < b; ++i) in.push_back(tok[size_t(r * row + i)]), tg.push_back(tok[size_t(r * row + i + 1)]);
      const at::Tensor x = at::tensor(in, at::kLong).view({1, -1}), y = at::tensor(tg, at::kLong).view({1, -1});
      sum += forward_nll(w32, x, y, f64).sum().item<double>();
      ++segments;
      a = b;
    }
  }
  EXPECT_EQ(segments, 5);  // rows [0, 80), [80, 160): split at 40, at the BOS at 97 and at 137
  EXPECT_NEAR(loss, sum / double(o.batch_tokens), 1e-9);
}

}  // namespace
}  // namespace pgolf::test
