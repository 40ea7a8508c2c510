// GPTQ against a plain float64 column loop, GPTQ vs RTN, SDClip scales, the
// quantization policy, Hessian collection, calibration sources, and the
// quantize -> artifact -> dequantize round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "data/error.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "quant/artifact.h"
#include "quant/calibration.h"
#include "quant/fit.h"
#include "quant/gptq.h"
#include "quant/hessian.h"
#include "quant/model_files.h"
#include "quant/quant_policy.h"
#include "quant/quantize.h"
#include "quant/size_budget.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

using quant::QuantizedMatrix;

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::empty(shape, at::kDouble).normal_(0.0, 1.0, g);
}

// A layer whose inputs are strongly correlated with unequal column scales:
// X = Z A diag(c), H = X^T X / N.
at::Tensor correlated_hessian(int64_t cols, int64_t samples, uint64_t seed) {
  at::Tensor Z = randn({samples, cols}, seed);
  at::Tensor A = at::eye(cols, at::kDouble) + 0.6 * randn({cols, cols}, seed + 1) / std::sqrt(double(cols));
  at::Tensor c = at::exp(randn({cols}, seed + 2));
  at::Tensor X = Z.mm(A) * c;
  return X.t().mm(X) / double(samples);
}

// SDClip by hand: std with n - 1, s = clip * std / r, clamp 1e-10, fp16.
std::vector<double> hand_scales(const at::Tensor& W, int bits, double clip) {
  const int r = (1 << (bits - 1)) - 1;
  auto a = W.accessor<double, 2>();
  std::vector<double> out;
  for (int64_t i = 0; i < W.size(0); ++i) {
    double mean = 0, ss = 0;
    for (int64_t j = 0; j < W.size(1); ++j) mean += a[i][j];
    mean /= double(W.size(1));
    for (int64_t j = 0; j < W.size(1); ++j) ss += (a[i][j] - mean) * (a[i][j] - mean);
    const double s = std::max(clip * std::sqrt(ss / double(W.size(1) - 1)) / r, 1e-10);
    out.push_back(double(static_cast<float>(c10::Half(static_cast<float>(s)))));
  }
  return out;
}

// GPTQ written plainly: one column at a time, the update applied to every
// later column at once (no blocks), float64 throughout.
at::Tensor plain_gptq(const at::Tensor& W0, const at::Tensor& H0, int bits, double clip) {
  const int r = (1 << (bits - 1)) - 1;
  const int64_t R = W0.size(0), C = W0.size(1);
  at::Tensor H = H0.clone();
  std::vector<bool> dead(static_cast<size_t>(C));
  for (int64_t i = 0; i < C; ++i) {
    dead[size_t(i)] = H[i][i].item<double>() == 0;
    if (dead[size_t(i)]) H[i][i] = 1.0;
  }
  double mean_diag = 0;
  for (int64_t i = 0; i < C; ++i) mean_diag += H[i][i].item<double>();
  mean_diag /= double(C);
  for (int64_t i = 0; i < C; ++i) H[i][i] = H[i][i].item<double>() + 0.01 * mean_diag;
  std::vector<int64_t> perm(static_cast<size_t>(C));
  for (int64_t i = 0; i < C; ++i) perm[size_t(i)] = i;
  std::stable_sort(perm.begin(), perm.end(),
                   [&](int64_t a, int64_t b) { return H[a][a].item<double>() > H[b][b].item<double>(); });
  at::Tensor P = at::tensor(perm, at::kLong);
  at::Tensor Hp = H.index_select(0, P).index_select(1, P);
  at::Tensor U = at::linalg_cholesky(at::inverse(Hp), /*upper=*/true);
  at::Tensor W = W0.index_select(1, P).clone();
  auto w = W.accessor<double, 2>();
  auto u = U.accessor<double, 2>();
  for (int64_t k = 0; k < C; ++k)
    if (dead[size_t(perm[size_t(k)])])
      for (int64_t i = 0; i < R; ++i) w[i][k] = 0;
  const std::vector<double> s = hand_scales(W0, bits, clip);
  at::Tensor Q = at::zeros({R, C}, at::kLong);
  auto q = Q.accessor<int64_t, 2>();
  for (int64_t j = 0; j < C; ++j)
    for (int64_t i = 0; i < R; ++i) {
      if (s[size_t(i)] == 0) continue;
      const double qi = std::min<double>(r, std::max<double>(-r, std::nearbyint(w[i][j] / s[size_t(i)])));
      q[i][perm[size_t(j)]] = int64_t(qi);
      const double err = (w[i][j] - qi * s[size_t(i)]) / u[j][j];
      for (int64_t k = j + 1; k < C; ++k) w[i][k] -= err * u[j][k];
    }
  return Q;
}

int64_t mismatches(const at::Tensor& a, const at::Tensor& b) { return (a.to(at::kLong) != b.to(at::kLong)).sum().item<int64_t>(); }

TEST(Gptq, ScalesMatchAHandComputation) {
  at::Tensor W = randn({9, 40}, 1) * 0.02;
  W[3].zero_();  // an all-zero row: scale 0, q 0
  for (int bits : {2, 4, 6, 8}) {
    const at::Tensor s = quant::sdclip_scales(W, bits, 12.85);
    ASSERT_EQ(s.scalar_type(), at::kHalf);
    const std::vector<double> want = hand_scales(W, bits, 12.85);
    for (int64_t i = 0; i < 9; ++i) EXPECT_EQ(s[i].item<double>(), want[size_t(i)]) << "bits " << bits << " row " << i;
    EXPECT_EQ(s[3].item<double>(), 0.0);
    const QuantizedMatrix m = quant::quantize_rtn(W, bits, 12.85);
    EXPECT_EQ(m.q[3].abs().sum().item<int64_t>(), 0);
  }
}

TEST(Gptq, RtnRoundsToNearestWithinTheClipRange) {
  const at::Tensor W = randn({16, 64}, 2);
  const QuantizedMatrix m = quant::quantize_rtn(W, 3, 2.0);  // narrow clip: many values saturate at +-3
  const at::Tensor sf = m.scale.to(at::kDouble).unsqueeze(1);
  const at::Tensor want = at::round(W / sf).clamp(-3, 3);
  EXPECT_EQ(mismatches(m.q, want), 0);
  EXPECT_GT((m.q.abs() == 3).sum().item<int64_t>(), 0);
}

TEST(Gptq, EqualsAPlainColumnLoopForSeveralBitsAndBlockSizes) {
  int64_t compared = 0, differ = 0;
  for (int bits : {2, 3, 4, 6, 8}) {
    const at::Tensor W = randn({24, 96}, 10 + uint64_t(bits)) * 0.05;
    const at::Tensor H = correlated_hessian(96, 400, 20 + uint64_t(bits));
    const at::Tensor want = plain_gptq(W, H, bits, 12.85);
    for (int block : {7, 32, 128}) {
      const QuantizedMatrix m = quant::quantize_gptq(W, H, bits, 12.85, block);
      ASSERT_EQ(m.q.scalar_type(), at::kChar);
      compared += W.numel();
      differ += mismatches(m.q, want);
    }
  }
  // Measured: none (blocking only reorders float64 sums; a flip needs an exact tie).
  EXPECT_EQ(differ, 0) << differ << " of " << compared;
}

TEST(Gptq, LowersTheHessianWeightedErrorAgainstRtn) {
  const at::Tensor W = randn({64, 128}, 3) * 0.05;
  const at::Tensor H = correlated_hessian(128, 1000, 4);
  for (int bits : {3, 4, 6}) {
    const QuantizedMatrix g = quant::quantize_gptq(W, H, bits, 12.85);
    const QuantizedMatrix r = quant::quantize_rtn(W, bits, 12.85);
    const double eg = quant::hessian_weighted_error(W, quant::dequantize(g, at::kDouble), H);
    const double er = quant::hessian_weighted_error(W, quant::dequantize(r, at::kDouble), H);
    // Measured ratios: 0.60 (3 bits), 0.53 (4), 0.53 (6).
    EXPECT_LT(eg, 0.7 * er) << "bits " << bits << ": gptq " << eg << " rtn " << er;
  }
}

TEST(Gptq, DeadColumnsQuantizeToZeroAndMatchThePlainLoop) {
  const int64_t C = 48;
  at::Tensor Z = randn({300, C}, 5);
  for (int64_t c : {0, 7, 8, 30, 47}) Z.select(1, c).zero_();  // inputs that never fire
  const at::Tensor H = Z.t().mm(Z) / 300.0;
  const at::Tensor W = randn({12, C}, 6) * 0.1;
  const QuantizedMatrix m = quant::quantize_gptq(W, H, 4, 12.85, 16);
  for (int64_t c : {0, 7, 8, 30, 47}) EXPECT_EQ(m.q.select(1, c).abs().sum().item<int64_t>(), 0) << c;
  EXPECT_EQ(mismatches(m.q, plain_gptq(W, H, 4, 12.85)), 0);
  // An all-dead Hessian (no calibration signal at all) still quantizes.
  const QuantizedMatrix z = quant::quantize_gptq(W, at::zeros({C, C}, at::kDouble), 4, 12.85);
  EXPECT_EQ(z.q.abs().sum().item<int64_t>(), 0);
}

TEST(Gptq, BatchedEqualsOneAtATimeAndFloat32IsClose) {
  const at::Tensor W = randn({3, 16, 40}, 7) * 0.05;
  at::Tensor H = at::stack({correlated_hessian(40, 200, 8), correlated_hessian(40, 200, 9), correlated_hessian(40, 200, 10)});
  const QuantizedMatrix b = quant::quantize_gptq_batch(W, H, 5, 12.85, {"a", "b", "c"}, 16);
  for (int64_t i = 0; i < 3; ++i) {
    const QuantizedMatrix one = quant::quantize_gptq(W[i], H[i], 5, 12.85, 16);
    EXPECT_EQ(mismatches(b.q[i], one.q), 0);
    EXPECT_TRUE(at::equal(b.scale[i], one.scale));
  }
  const QuantizedMatrix f = quant::quantize_gptq(W[0].to(at::kFloat), H[0].to(at::kFloat), 5, 12.85, 16);
  EXPECT_LE(mismatches(f.q, b.q[0]), W[0].numel() / 50);  // float32 rounding moves a few values by one step
  EXPECT_LE((f.q.to(at::kInt) - b.q[0].to(at::kInt)).abs().max().item<int>(), 1);
  // A Hessian with a NaN is named.
  H[1][2][2] = NAN;
  const std::string e = error_of([&] { quant::quantize_gptq_batch(W, H, 5, 12.85, {"a", "b", "c"}); });
  EXPECT_NE(e.find("b: Hessian is not positive definite"), std::string::npos) << e;
}

// On a CUDA machine (skipped elsewhere): the GPU path agrees with the CPU one.
TEST(Gptq, CudaMatchesTheCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Tensor W = (randn({2, 256, 512}, 11) * 0.02).to(at::kFloat);
  const at::Tensor H = at::stack({correlated_hessian(512, 2000, 12), correlated_hessian(512, 2000, 13)}).to(at::kFloat);
  const QuantizedMatrix c = quant::quantize_gptq_batch(W, H, 6, 12.85, {"a", "b"});
  const QuantizedMatrix g = quant::quantize_gptq_batch(W.cuda(), H.cuda(), 6, 12.85, {"a", "b"});
  EXPECT_TRUE(g.q.is_cuda());
  EXPECT_TRUE(at::equal(g.scale.cpu(), c.scale));
  // float32 sums in another order: a few values one step apart.
  const at::Tensor d = (g.q.cpu().to(at::kInt) - c.q.to(at::kInt)).abs();
  EXPECT_LE(d.max().item<int>(), 1);
  EXPECT_LE(d.sum().item<int64_t>(), W.numel() / 100);
  const QuantizedMatrix r = quant::quantize_rtn(W.cuda(), 6, 12.85);
  EXPECT_TRUE(at::equal(r.q.cpu(), quant::quantize_rtn(W, 6, 12.85).q));
}

// ---- policy ----------------------------------------------------------------------

// Weights of the right shapes without the cost of the initialiser.
GptWeights shaped_weights(const ModelConfig& c) {
  GptWeights w;
  w.config = c;
  for (const ParamSpec& p : parameter_specs(c)) w.tensors[p.name] = at::empty(p.shape, at::kFloat);
  return w;
}

std::map<std::string, quant::TensorPlan> plan_map(const GptWeights& w, const quant::QuantPolicy& p) {
  std::map<std::string, quant::TensorPlan> m;
  for (const auto& t : quant::plan_tensors(w, p)) m[t.name] = t;
  return m;
}

TEST(QuantPolicy, ClassesOfTheFrontierAndTheBaseline) {
  const ModelConfig f = ModelConfig::frontier();  // loops layers 3..5
  using V = std::vector<std::string>;
  EXPECT_EQ(quant::tensor_classes("blocks.3.attn.c_q.weight", f), (V{"matrices", "attn", "looped"}));
  EXPECT_EQ(quant::tensor_classes("blocks.5.mlp.proj.weight", f), (V{"matrices", "mlp", "looped"}));
  EXPECT_EQ(quant::tensor_classes("blocks.6.mlp.fc.weight", f), (V{"matrices", "mlp"}));
  EXPECT_EQ(quant::tensor_classes("blocks.0.attn.proj.weight", f), (V{"matrices", "attn"}));
  EXPECT_EQ(quant::tensor_classes("tok_emb.weight", f), (V{"embed"}));
  EXPECT_EQ(quant::tensor_classes("blocks.3.attn.q_gain", f), V{});
  EXPECT_EQ(quant::report_group("blocks.4.attn.c_v.weight", f), "looped");
  EXPECT_EQ(quant::report_group("blocks.1.attn.c_v.weight", f), "attn");
  EXPECT_EQ(quant::report_group("skip_weights", f), "other");
  const ModelConfig b = ModelConfig::baseline();
  EXPECT_EQ(quant::tensor_classes("blocks.3.attn.c_q.weight", b), (V{"matrices", "attn"}));
}

TEST(QuantPolicy, DefaultsAreTheReference) {
  const GptWeights w = shaped_weights(ModelConfig::frontier());
  const auto m = plan_map(w, {});
  EXPECT_EQ(m.at("tok_emb.weight").action, quant::TensorAction::Quantize);
  EXPECT_EQ(m.at("tok_emb.weight").bits, 8);
  EXPECT_EQ(m.at("tok_emb.weight").clip_sigmas, 20.0);
  EXPECT_EQ(m.at("blocks.3.mlp.fc.weight").bits, 6);
  EXPECT_EQ(m.at("blocks.3.mlp.fc.weight").clip_sigmas, 12.85);
  EXPECT_EQ(m.at("blocks.0.attn.c_k.weight").bits, 6);  // 256 x 512 = 131,072 > 65,536
  EXPECT_EQ(m.at("blocks.0.attn.q_gain").action, quant::TensorAction::Float16);
  EXPECT_EQ(m.at("skip_weights").action, quant::TensorAction::Float16);
  int quantized = 0;
  for (const auto& [n, t] : m) quantized += t.action == quant::TensorAction::Quantize;
  EXPECT_EQ(quantized, 11 * 6 + 1);  // the logged run's 66 matrices + the embedding (67 Hessians)
  // The baseline's embedding (1024 x 512) is quantized too; a non-float tensor is kept.
  GptWeights bw = shaped_weights(ModelConfig::baseline());
  bw.tensors["blocks.0.attn.q_gain"] = at::zeros({8}, at::kLong);
  const auto bm = plan_map(bw, {});
  EXPECT_EQ(bm.at("tok_emb.weight").bits, 8);
  EXPECT_EQ(bm.at("blocks.0.attn.q_gain").action, quant::TensorAction::Keep);
}

TEST(QuantPolicy, RulesApplyByClassSpecificity) {
  const GptWeights w = shaped_weights(ModelConfig::frontier());
  for (const char* spec : {"matrices=5,looped=4,pattern:blocks.0.*=8", "pattern:blocks.0.*=8,looped=4,matrices=5"}) {
    quant::QuantPolicy p;
    p.add_bits(spec);
    p.add_clip_sigmas("mlp=10, embed=15");
    const auto m = plan_map(w, p);
    EXPECT_EQ(m.at("blocks.0.attn.c_q.weight").bits, 8) << spec;
    EXPECT_EQ(m.at("blocks.1.attn.c_k.weight").bits, 5) << spec;
    EXPECT_EQ(m.at("blocks.4.mlp.fc.weight").bits, 4) << spec;
    EXPECT_EQ(m.at("tok_emb.weight").bits, 8) << spec;
    EXPECT_EQ(m.at("blocks.4.mlp.fc.weight").clip_sigmas, 10.0);
    EXPECT_EQ(m.at("blocks.4.attn.c_q.weight").clip_sigmas, 12.85);
    EXPECT_EQ(m.at("tok_emb.weight").clip_sigmas, 15.0);
  }
  quant::QuantPolicy p;
  p.add_bits("embed=fp16");
  p.add_bits("attn=7");  // flags accumulate
  const auto m = plan_map(w, p);
  EXPECT_EQ(m.at("tok_emb.weight").action, quant::TensorAction::Float16);
  EXPECT_EQ(m.at("blocks.2.attn.proj.weight").bits, 7);
}

TEST(QuantPolicy, BadSpecsAreClearErrors) {
  auto bits_error = [](const std::string& s) {
    return error_of([&] {
      quant::QuantPolicy p;
      p.add_bits(s);
    });
  };
  auto clip_error = [](const std::string& s) {
    return error_of([&] {
      quant::QuantPolicy p;
      p.add_clip_sigmas(s);
    });
  };
  EXPECT_EQ(bits_error("mat=6"), "--bits: unknown class 'mat' (classes: matrices, attn, mlp, embed, looped, pattern:GLOB)");
  EXPECT_EQ(bits_error("matrices=9"), "--bits: 'matrices=9': bits must be in 2..8 (or fp16), got 9");
  EXPECT_EQ(bits_error("matrices=1"), "--bits: 'matrices=1': bits must be in 2..8 (or fp16), got 1");
  EXPECT_EQ(bits_error("matrices=6.5"), "--bits: 'matrices=6.5': bits must be an integer in 2..8 or fp16");
  EXPECT_EQ(bits_error("matrices"), "--bits: 'matrices' is not CLASS=VALUE");
  EXPECT_EQ(bits_error("matrices=6,"), "--bits: empty entry in 'matrices=6,' (expected CLASS=VALUE, comma-separated)");
  EXPECT_EQ(bits_error("pattern:=6"), "--bits: 'pattern:=6': empty pattern");
  EXPECT_EQ(clip_error("embed=-1"), "--clip-sigmas: 'embed=-1': clip sigmas must be positive");
  EXPECT_EQ(clip_error("embed=abc"), "--clip-sigmas: 'embed=abc': not a number");
  EXPECT_EQ(clip_error("embed=inf"), "--clip-sigmas: 'embed=inf': not a number");
  quant::QuantPolicy p;
  p.add_bits("pattern:block.*=6");
  EXPECT_EQ(error_of([&] { quant::plan_tensors(shaped_weights(tiny_config()), p); }),
            "quantize: pattern:block.* matches no tensor of the model");
}

// ---- Hessians and calibration ----------------------------------------------------

TEST(Hessians, EveryMatrixGetsOneAndSharedInputsShareIt) {
  const ModelConfig c = tiny_frontier_config();
  const GptWeights w = random_weights(c, 3);
  at::Generator g = at::detail::createCPUGenerator(4);
  const at::Tensor b1 = at::randint(0, c.vocab_size, {2, 9}, g, at::TensorOptions().dtype(at::kLong));
  const at::Tensor b2 = at::randint(0, c.vocab_size, {2, 9}, g, at::TensorOptions().dtype(at::kLong));
  quant::HessianOptions o;
  o.precision = Precision::F64;
  const auto H = quant::collect_hessians(w, {b1, b2}, o);
  std::set<std::string> want;
  for (const auto& [n, t] : w.tensors)
    if (t.dim() == 2 && (n.find(".weight") != std::string::npos)) want.insert(n);
  std::set<std::string> got;
  for (const auto& [n, h] : H) {
    got.insert(n);
    const int64_t in = w.get(n).size(1);
    EXPECT_EQ(h.sizes(), (std::vector<int64_t>{in, in})) << n;
    EXPECT_EQ(h.scalar_type(), at::kDouble);
    EXPECT_TRUE(at::allclose(h, h.t())) << n;
  }
  EXPECT_EQ(got, want);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".attn.";
    EXPECT_TRUE(at::equal(H.at(b + "c_q.weight"), H.at(b + "c_k.weight")));
    EXPECT_TRUE(at::equal(H.at(b + "c_q.weight"), H.at(b + "c_v.weight")));
  }
  // Divided by the batch count: one batch twice gives that batch's Hessians.
  const auto H1 = quant::collect_hessians(w, {b1}, o), H11 = quant::collect_hessians(w, {b1, b1}, o);
  for (const auto& [n, h] : H1) EXPECT_TRUE(at::allclose(h, H11.at(n), 1e-12, 0)) << n;
  // The tied head's Hessian is the final hidden state's x^T x over every position.
  at::Tensor head_in;
  ForwardOptions fo;
  fo.precision = Precision::F64;
  fo.linear_input_tap = [&](const std::string& n, const at::Tensor& x) {
    if (n == "tok_emb.weight") head_in = x;
  };
  forward_nll(w, b1, b1, fo);
  EXPECT_TRUE(at::allclose(H1.at("tok_emb.weight"), head_in.t().mm(head_in), 1e-10, 1e-12));
}

TEST(Calibration, ShardRowsAreWholeWindowsWithoutRepeats) {
  TempDir d;
  std::vector<uint16_t> a(1000), b(300);  // distinct contents: a row's first token names its shard and start
  for (size_t i = 0; i < a.size(); ++i) a[i] = uint16_t(i);
  for (size_t i = 0; i < b.size(); ++i) b[i] = uint16_t(2000 + i);
  write_shard(d / "fineweb_train_000000.bin", a);
  write_shard(d / "fineweb_train_000001.bin", b);
  TokenStream s({d / "fineweb_train_*.bin"});
  quant::ShardCalibration o;
  o.batches = 3;
  o.rows = 4;
  o.seq_len = 50;
  o.seed = 7;
  const auto batches = quant::shard_calibration_batches(s, o);
  ASSERT_EQ(batches.size(), 3u);
  std::set<int64_t> firsts;
  std::set<int64_t> phases[2];
  for (const at::Tensor& t : batches) {
    ASSERT_EQ(t.sizes(), (std::vector<int64_t>{4, 50}));
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t first = t[r][0].item<int64_t>();
      for (int64_t k = 1; k < 50; ++k) ASSERT_EQ(t[r][k].item<int64_t>(), first + k);  // one contiguous window
      const bool second = first >= 2000;
      const int64_t start = second ? first - 2000 : first;
      EXPECT_LE(start + 51, second ? 300 : 1000);  // the window's 51st token (the reference's last target) exists
      phases[second].insert(start % 50);
      EXPECT_TRUE(firsts.insert(first).second) << "window at " << first << " drawn twice";
    }
  }
  // 12 rows out of 19 + 5 windows; each shard's windows share one phase.
  EXPECT_LE(phases[0].size(), 1u);
  EXPECT_LE(phases[1].size(), 1u);
  // Deterministic for a seed, different for another.
  EXPECT_TRUE(at::equal(quant::shard_calibration_batches(s, o)[2], batches[2]));
  o.seed = 8;
  EXPECT_FALSE(at::equal(quant::shard_calibration_batches(s, o)[0], batches[0]));
  // More rows than windows: every shard refills.
  o.batches = 1;
  o.rows = 30;
  EXPECT_EQ(quant::shard_calibration_batches(s, o)[0].size(0), 30);
  o.seq_len = 1000;
  EXPECT_NE(error_of([&] { quant::shard_calibration_batches(s, o); }).find("no calibration window of 1001 tokens"),
            std::string::npos);
}

TEST(Calibration, SelfGeneratedSequencesAreSeededSamples) {
  const ModelConfig c = tiny_config();
  const GptWeights w = random_weights(c, 5);
  quant::SelfCalibration o;
  o.sequences = 3;
  o.seq_len = 6;
  o.batch = 2;
  const auto a = quant::self_calibration_batches(w, o), b = quant::self_calibration_batches(w, o);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].sizes(), (std::vector<int64_t>{2, 6}));
  EXPECT_EQ(a[1].sizes(), (std::vector<int64_t>{1, 6}));
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::equal(a[i], b[i]));
    EXPECT_GE(a[i].min().item<int64_t>(), 0);
    EXPECT_LT(a[i].max().item<int64_t>(), c.vocab_size);
  }
  o.seed = 43;
  EXPECT_FALSE(at::equal(quant::self_calibration_batches(w, o)[0], a[0]));
}

// ---- the model round trip ------------------------------------------------------------

TEST(QuantizeModel, RtnRoundTripIsWithinHalfAScale) {
  const ModelConfig c = tiny_config();
  const GptWeights w = random_weights(c, 6);  // float64
  quant::QuantizeOptions o;
  o.method = "rtn";
  o.policy.passthrough_max_numel = 100;  // quantize this tiny model's matrices
  o.tokenizer_fingerprint = "abc";
  std::vector<quant::TensorResult> results;
  const quant::Artifact a = quant::quantize_model(w, o, &results);
  EXPECT_EQ(a.tokenizer_fingerprint, "abc");
  const GptWeights back = quant::dequantize_artifact(a, "mem.pgz");
  EXPECT_EQ(back.config.to_json(), c.to_json());
  int quantized = 0;
  for (const quant::ArtifactTensor& t : a.tensors) {
    const at::Tensor& orig = w.get(t.name);
    const at::Tensor& got = back.get(t.name);
    EXPECT_EQ(got.scalar_type(), at::kDouble) << t.name;  // the original dtype, from the meta
    if (t.kind == quant::ArtifactTensor::Kind::Quantized) {
      ++quantized;
      EXPECT_EQ(t.bits, t.name == "tok_emb.weight" ? 8 : 6);
      EXPECT_EQ(t.method, "rtn");
      at::Tensor s = at::from_blob(const_cast<uint16_t*>(t.scales.data()), {t.shape[0]}, at::kHalf).to(at::kDouble);
      at::Tensor bound = (s / 2).unsqueeze(1) * (1 + 1e-9);
      EXPECT_TRUE(((got - orig).abs() <= bound).all().item<bool>()) << t.name;
    } else {
      EXPECT_EQ(t.dtype, "float16");
      EXPECT_TRUE(at::allclose(got, orig, 1e-3, 1e-4)) << t.name;
    }
  }
  EXPECT_EQ(quantized, 1 + 3 * 6);  // tok_emb and the block matrices (resid_mix, 2 x 16, stays fp16)
}

TEST(QuantizeModel, GptqModelStaysCloseAndBadArtifactsAreNamed) {
  const ModelConfig c = tiny_frontier_config();
  const GptWeights w = random_weights(c, 8);
  at::Generator g = at::detail::createCPUGenerator(9);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i)
    batches.push_back(at::randint(0, c.vocab_size, {3, 12}, g, at::TensorOptions().dtype(at::kLong)));
  quant::HessianOptions ho;
  ho.precision = Precision::F64;
  quant::QuantizeOptions o;
  o.hessians = quant::collect_hessians(w, batches, ho);
  o.policy.passthrough_max_numel = 60;
  o.policy.add_bits("matrices=8,embed=8");
  std::vector<quant::TensorResult> results;
  const quant::Artifact a = quant::quantize_model(w, o, &results);
  for (const auto& r : results) EXPECT_EQ(r.method, "gptq") << r.plan.name;
  GptWeights back = quant::dequantize_artifact(a, "mem.pgz");
  ForwardOptions fo;
  fo.precision = Precision::F64;
  const at::Tensor x = batches[0];
  const double l0 = forward_nll(w, x, x, fo).mean().item<double>();
  const double l1 = forward_nll(back, x, x, fo).mean().item<double>();
  EXPECT_NEAR(l1, l0, 0.05 * l0);
  // GPTQ beats RTN on the calibration's own weighted error, summed over tensors.
  quant::QuantizeOptions r = o;
  r.method = "rtn";
  std::vector<quant::TensorResult> rtn;
  quant::quantize_model(w, r, &rtn);
  double eg = 0, er = 0;
  for (const auto& t : results) eg += t.error;
  for (const auto& t : rtn) er += t.error;
  EXPECT_LT(eg, er);

  quant::Artifact bad = a;
  bad.tensors.pop_back();
  EXPECT_NE(error_of([&] { quant::dequantize_artifact(bad, "x.pgz"); }).find("x.pgz: missing tensor"), std::string::npos);
  bad = a;
  bad.config_json = "{\"num_layers\": 0}";
  EXPECT_EQ(error_of([&] { quant::dequantize_artifact(bad, "x.pgz"); }).rfind("x.pgz: ", 0), 0u);
  bad = a;
  bad.tensors[0].shape[0] += 1;
  EXPECT_NE(error_of([&] { quant::dequantize_artifact(bad, "x.pgz"); }).find("x.pgz: "), std::string::npos);
}

TEST(QuantizeModel, ArtifactFilesLoadAsModels) {
  TempDir d;
  const ModelConfig c = tiny_config();
  const GptWeights w = random_weights(c, 12);
  quant::QuantizeOptions o;
  o.method = "rtn";
  o.policy.passthrough_max_numel = 100;
  const quant::Artifact a = quant::quantize_model(w, o);
  quant::save_artifact(d / "m.pgz", a);
  EXPECT_EQ(detect_model_file(d / "m.pgz"), ModelFileKind::Artifact);
  ModelSource src;
  src.path = d / "m.pgz";
  src.sets = {"logit_softcap=7"};
  const GptWeights got = load_model_file(src);
  const GptWeights want = quant::dequantize_artifact(a, "mem");
  EXPECT_EQ(got.config.logit_softcap, 7.0);
  ASSERT_EQ(got.tensors.size(), want.tensors.size());
  for (const auto& [n, t] : want.tensors) EXPECT_TRUE(at::equal(got.get(n), t)) << n;
  // A truncated artifact is named by path.
  std::string bytes = quant::encode_artifact(a);
  write_file_atomic(d / "bad.pgz", bytes.substr(0, bytes.size() / 2));
  src.path = d / "bad.pgz";
  EXPECT_EQ(error_of([&] { load_model_file(src); }).rfind(d / "bad.pgz", 0), 0u);
}

TEST(QuantizeFit, LowersBitsUntilTheArtifactFits) {
  const ModelConfig c = tiny_config();
  const GptWeights w = random_weights(c, 13);
  quant::QuantizeOptions o;
  o.method = "rtn";
  o.policy.passthrough_max_numel = 100;
  const quant::FitResult full = quant::quantize_to_fit(w, o, {}, 0, false);
  EXPECT_TRUE(full.fits);
  EXPECT_TRUE(full.steps.empty());
  const uint64_t cap = full.bytes.size() * 3 / 4;
  const quant::FitResult no = quant::quantize_to_fit(w, o, {}, cap, false);
  EXPECT_FALSE(no.fits);
  EXPECT_EQ(no.bytes, full.bytes);
  const quant::FitResult f = quant::quantize_to_fit(w, o, {}, cap, true);
  EXPECT_TRUE(f.fits);
  EXPECT_LE(f.bytes.size(), cap);
  ASSERT_FALSE(f.steps.empty());
  for (size_t i = 1; i < f.steps.size(); ++i) EXPECT_LT(f.steps[i].artifact_bytes, f.steps[i - 1].artifact_bytes);
  EXPECT_EQ(f.steps.back().artifact_bytes, f.bytes.size());
  int lowered = 0;
  for (const auto& p : f.plans)
    if (p.action == quant::TensorAction::Quantize) lowered += p.bits < (p.name == "tok_emb.weight" ? 8 : 6);
  EXPECT_GT(lowered, 0);
  // The encoded bytes are the artifact's, and it decodes to a model.
  quant::dequantize_artifact(quant::decode_artifact(f.bytes, "fit"), "fit");
  // An impossible cap stops once no lower width saves bytes (at clip 12.85 and
  // 3 bits nearly every value is already 0).
  const quant::FitResult tiny = quant::quantize_to_fit(w, o, {}, 10, true);
  EXPECT_FALSE(tiny.fits);
  EXPECT_GE(tiny.steps.size(), f.steps.size());
  for (const auto& p : tiny.plans) {
    if (p.action == quant::TensorAction::Quantize) {
      EXPECT_LE(p.bits, 3) << p.name;
    }
  }
}

TEST(QuantizeFit, EntropyAndBudgetReport) {
  EXPECT_EQ(quant::value_entropy_bits(at::zeros({10}, at::kChar)), 0.0);
  EXPECT_NEAR(quant::value_entropy_bits(at::tensor(std::vector<int8_t>{-1, 1, -1, 1}, at::kChar)), 1.0, 1e-12);
  quant::ArtifactLayout l;
  l.tensors.push_back({"a", {2}, "raw", 0, "float16", "raw", 4, 40, 0});
  l.tensors.push_back({"b", {2}, "quantized", 6, "", "entropy", 4, 90, 0});
  quant::SizeBudget b;
  b.artifact_bytes = 150;
  b.code_bytes = 20;
  b.cap = 160;
  EXPECT_FALSE(b.fits());
  EXPECT_EQ(b.headroom(), -10);
  const std::string r = quant::over_cap_report(b, l, 5);
  EXPECT_EQ(r.rfind("over the 160-byte cap by 10 bytes (artifact 150 + code 20 = 170)\n", 0), 0u) << r;
  EXPECT_LT(r.find(" b "), r.find(" a "));  // largest first
  b.cap = 0;
  EXPECT_TRUE(b.fits());
  EXPECT_EQ(quant::with_commas(16000000), "16,000,000");
  EXPECT_EQ(error_of([] { quant::code_files({"/nonexistent/train_gpt.py"}); }),
            "/nonexistent/train_gpt.py: cannot open (code file)");
}

}  // namespace
}  // namespace pgolf::test
