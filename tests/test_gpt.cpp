// The GPT forward against an independent float64 implementation written with
// plain loops (no libtorch), on small random models.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <c10/core/GradMode.h>

#include "data/error.h"
#include "model/gpt.h"
#include "model/pch.h"
#include "tests/gpt_reference.h"

namespace pgolf::test {
namespace {

// The scored positions found on the CPU: row-major flat positions, and per-row
// slots (padding slots read the row's first position).
TEST(Gpt, ScorePositionsPackEachRowsPositionsIntoSlots) {
  // Row 0 scores t = 1, 3; row 1 none; row 2 scores t = 0, 2, 3.
  const at::Tensor m = at::tensor({0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 1}, at::kLong).to(at::kBool).view({3, 4});
  const ScorePositions p = find_score_positions(m, at::kCPU);
  auto vec = [](const at::Tensor& t) { return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()); };
  EXPECT_EQ(vec(p.rows), (std::vector<int64_t>{1, 3, 8, 10, 11}));
  EXPECT_EQ(p.max_per_row, 3);
  EXPECT_EQ(vec(p.slot_src), (std::vector<int64_t>{1, 3, 0, 4, 4, 4, 8, 10, 11}));
  EXPECT_EQ(vec(p.slot_of), (std::vector<int64_t>{0, 1, 6, 7, 8}));
  EXPECT_EQ(p.first_col, 0);  // row 2 scores t = 0
  // slot_src[slot_of[j]] is rows[j]: the slots hold the scored positions.
  EXPECT_TRUE(p.slot_src.index_select(0, p.slot_of).equal(p.rows));
  const ScorePositions none = find_score_positions(at::zeros({2, 5}, at::kBool), at::kCPU);
  EXPECT_EQ(none.rows.numel(), 0);
  EXPECT_EQ(none.max_per_row, 0);
  EXPECT_EQ(none.first_col, 5);  // T: no column holds a scored position
  EXPECT_EQ(find_score_positions(m.narrow(0, 0, 1), at::kCPU).first_col, 1);
}

TEST(Gpt, Float64ForwardMatchesLoopReference) {
  ModelConfig c = tiny_config();
  GptWeights w = random_weights(c, 7);
  std::mt19937 rng(3);
  const int B = 2, T = 9;
  at::Tensor in = at::empty({B, T}, at::kLong), tg = at::empty({B, T}, at::kLong);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      in[b][t] = int64_t(rng() % c.vocab_size);
      tg[b][t] = int64_t(rng() % c.vocab_size);
    }
  ForwardOptions opt;
  opt.precision = Precision::F64;
  at::Tensor got = forward_nll(w, in, tg, opt);
  ASSERT_EQ(got.scalar_type(), at::kDouble);
  Ref ref{w, c, GptNumerics::norm_eps()};
  for (int b = 0; b < B; ++b) {
    std::vector<int64_t> ids(T), tgt(T), seg(T, 0);
    for (int t = 0; t < T; ++t) { ids[t] = in[b][t].item<int64_t>(); tgt[t] = tg[b][t].item<int64_t>(); }
    Vec want = ref.nll(ids, tgt, seg);
    for (int t = 0; t < T; ++t) EXPECT_NEAR(got[b][t].item<double>(), want[t], 1e-12) << "b " << b << " t " << t;
  }
}

TEST(Gpt, FrontierSwitchesMatchLoopReference) {
  for (bool tie : {true, false}) {
    ModelConfig c = tiny_frontier_config();
    c.tie_embeddings = tie;
    c.validate();
    GptWeights w = random_weights(c, 17);
    const int T = 9;
    at::Tensor in = at::randint(c.vocab_size, {2, T}, at::kLong), tg = at::randint(c.vocab_size, {2, T}, at::kLong);
    ForwardOptions opt;
    opt.precision = Precision::F64;
    at::Tensor got = forward_nll(w, in, tg, opt);
    Ref ref{w, c, GptNumerics::norm_eps()};
    for (int b = 0; b < 2; ++b) {
      std::vector<int64_t> ids(T), tgt(T), seg(T, 0);
      for (int t = 0; t < T; ++t) { ids[t] = in[b][t].item<int64_t>(); tgt[t] = tg[b][t].item<int64_t>(); }
      Vec want = ref.nll(ids, tgt, seg);
      for (int t = 0; t < T; ++t) EXPECT_NEAR(got[b][t].item<double>(), want[t], 1e-11) << "tie " << tie << " b " << b << " t " << t;
    }
  }
}

TEST(Gpt, SegmentsAndScoreMaskMatchLoopReference) {
  ModelConfig c = tiny_config();
  c.num_layers = 4;
  GptWeights w = random_weights(c, 11);
  const int T = 10;
  at::Tensor in = at::randint(c.vocab_size, {1, T}, at::kLong), tg = at::randint(c.vocab_size, {1, T}, at::kLong);
  at::Tensor seg = at::tensor(std::vector<int64_t>{0, 0, 0, 1, 1, 1, 1, 2, 2, 2}).view({1, T});
  at::Tensor mask = at::tensor(std::vector<int64_t>{0, 1, 1, 0, 1, 0, 1, 1, 1, 0}).to(at::kBool).view({1, T});
  ForwardOptions opt;
  opt.precision = Precision::F64;
  opt.segment_ids = seg;
  opt.score_mask = mask;
  at::Tensor got = forward_nll(w, in, tg, opt);
  std::vector<int64_t> ids(T), tgt(T), sg(T);
  for (int t = 0; t < T; ++t) { ids[t] = in[0][t].item<int64_t>(); tgt[t] = tg[0][t].item<int64_t>(); sg[t] = seg[0][t].item<int64_t>(); }
  Vec want = Ref{w, c, GptNumerics::norm_eps()}.nll(ids, tgt, sg);
  for (int t = 0; t < T; ++t) {
    if (mask[0][t].item<bool>()) EXPECT_NEAR(got[0][t].item<double>(), want[t], 1e-12) << t;
    else EXPECT_EQ(got[0][t].item<double>(), 0.0) << t;
  }
}

// Sliding windows score a suffix of each row: the last unrolled step then
// computes queries, MLP and head for the last Q = T - first_col columns only
// (keys and values for all). Same values as the full forward and the loop
// reference, on every family switch that allows it; and the switches that
// need every column (lanes at the end, adapters, document masks, the tap,
// autograd) keep all T.
TEST(Gpt, LastStepOnlyComputesTheScoredSuffix) {
  ModelConfig windows = tiny_config();
  windows.attn_windows = {0, 0, 3};  // the trimmed step has a window
  ModelConfig frontier = tiny_frontier_config();
  frontier.parallel_start_layer = 0;  // no lanes: XSA, gates, loops, windows on the trimmed step
  ModelConfig lanes = tiny_frontier_config();
  const int B = 3, T = 10;
  // Row 0 scores t >= 6, row 1 t = 7 and 9, row 2 nothing: first_col 6, Q 4.
  at::Tensor mask = at::zeros({B, T}, at::kBool);
  mask[0].narrow(0, 6, 4).fill_(true);
  mask[1][7] = true;
  mask[1][9] = true;
  for (const ModelConfig* c : {&windows, &frontier, &lanes}) {
    GptWeights w = random_weights(*c, 23);
    at::Tensor in = at::randint(c->vocab_size, {B, T}, at::kLong), tg = at::randint(c->vocab_size, {B, T}, at::kLong);
    ForwardOptions opt;
    opt.precision = Precision::F64;
    opt.score_mask = mask;
    opt.positions = find_score_positions(mask, at::kCPU, /*slots=*/false);
    EXPECT_EQ(last_step_queries(w, opt, opt.positions, T), c == &lanes ? T : 4);
    at::Tensor got = forward_nll(w, in, tg, opt);
    ForwardOptions full = opt;
    full.trim_last_step = false;
    EXPECT_EQ(last_step_queries(w, full, full.positions, T), T);
    at::Tensor untrimmed = forward_nll(w, in, tg, full);
    Ref ref{w, *c, GptNumerics::norm_eps()};
    for (int b = 0; b < B; ++b) {
      std::vector<int64_t> ids(T), tgt(T), seg(T, 0);
      for (int t = 0; t < T; ++t) { ids[t] = in[b][t].item<int64_t>(); tgt[t] = tg[b][t].item<int64_t>(); }
      Vec want = ref.nll(ids, tgt, seg);
      for (int t = 0; t < T; ++t) {
        const double g = got[b][t].item<double>();
        EXPECT_NEAR(g, untrimmed[b][t].item<double>(), 1e-12) << "b " << b << " t " << t;
        if (mask[b][t].item<bool>()) EXPECT_NEAR(g, want[t], 1e-11) << "b " << b << " t " << t;
        else EXPECT_EQ(g, 0.0) << "b " << b << " t " << t;
      }
    }
  }
  // What keeps every column.
  GptWeights w = random_weights(frontier, 29);
  ForwardOptions opt;
  opt.score_mask = mask;
  opt.positions = find_score_positions(mask, at::kCPU, /*slots=*/false);
  ASSERT_EQ(last_step_queries(w, opt, opt.positions, T), 4);
  ForwardOptions seg = opt;
  seg.segment_ids = at::zeros({B, T}, at::kLong);
  EXPECT_EQ(last_step_queries(w, seg, seg.positions, T), T);
  ForwardOptions tap = opt;
  tap.linear_input_tap = [](const std::string&, const at::Tensor&) {};
  EXPECT_EQ(last_step_queries(w, tap, tap.positions, T), T);
  LoraSet lora;
  ForwardOptions adapted = opt;
  adapted.lora = &lora;
  EXPECT_EQ(last_step_queries(w, adapted, adapted.positions, T), T);
  ForwardOptions from0 = opt;
  from0.positions = find_score_positions(at::ones({B, T}, at::kBool), at::kCPU, /*slots=*/false);
  EXPECT_EQ(last_step_queries(w, from0, from0.positions, T), T);
  GptWeights trained = w;
  for (auto& [n, t] : trained.tensors) t = t.clone().requires_grad_(true);
  {
    c10::AutoGradMode grad(true);
    EXPECT_EQ(last_step_queries(trained, opt, opt.positions, T), T);
  }
  {
    c10::AutoGradMode grad(false);
    EXPECT_EQ(last_step_queries(trained, opt, opt.positions, T), 4);
  }
}

TEST(Gpt, Float32AgreesWithFloat64AndBatchRowsAreIndependent) {
  ModelConfig c = tiny_config();
  GptWeights w64 = random_weights(c, 5);
  GptWeights w32 = w64;
  for (auto& [n, t] : w32.tensors) t = t.to(at::kFloat);
  at::Tensor in = at::randint(c.vocab_size, {3, 12}, at::kLong), tg = at::randint(c.vocab_size, {3, 12}, at::kLong);
  ForwardOptions o64;
  o64.precision = Precision::F64;
  at::Tensor a = forward_nll(w64, in, tg, o64);
  at::Tensor b = forward_nll(w32, in, tg);
  EXPECT_LT((a - b.to(at::kDouble)).abs().max().item<double>(), 1e-4);
  // Row 1 alone gives the same NLL as inside the batch.
  at::Tensor one = forward_nll(w64, in.narrow(0, 1, 1), tg.narrow(0, 1, 1), o64);
  EXPECT_LT((one[0] - a[1]).abs().max().item<double>(), 1e-12);
}

TEST(Gpt, Bf16PathStaysCloseToFloat32) {
  ModelConfig c = tiny_config();
  GptWeights w = random_weights(c, 9);
  for (auto& [n, t] : w.tensors) t = t.to(at::kFloat);
  at::Tensor in = at::randint(c.vocab_size, {2, 8}, at::kLong), tg = at::randint(c.vocab_size, {2, 8}, at::kLong);
  ForwardOptions bf;
  bf.precision = Precision::BF16;
  at::Tensor a = forward_nll(w, in, tg), b = forward_nll(w, in, tg, bf);
  EXPECT_EQ(b.scalar_type(), at::kFloat);
  EXPECT_LT((a - b).abs().mean().item<double>(), 0.05);
}

TEST(Gpt, RopeTableRoundsInvFreqToBf16) {
  ModelConfig c;  // head_dim 64
  auto [cos, sin] = rope_tables(c, 4, at::kFloat, at::kCPU);
  ASSERT_EQ(cos.sizes(), (std::vector<int64_t>{4, 32}));
  const float inv1 = 1.0f / std::pow(10000.0f, 2.0f / 64.0f);
  const float rounded = float(at::BFloat16(inv1));
  EXPECT_NE(inv1, rounded);
  EXPECT_FLOAT_EQ(cos[3][1].item<float>(), std::cos(3.0f * rounded));
}

TEST(Gpt, WeightsAreCheckedAgainstTheConfig) {
  ModelConfig c = tiny_config();
  GptWeights w = init_gpt_weights(c, 1);
  check_weights(w, "mem");
  EXPECT_EQ(w.tensors.size(), parameter_specs(c).size());
  GptWeights bad = w;
  bad.tensors["blocks.0.attn.c_q.weight"] = at::zeros({3, 3});
  try {
    check_weights(bad, "m.h5");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("m.h5: tensor blocks.0.attn.c_q.weight has shape 3x3, the config implies 16x16"),
              std::string::npos) << e.what();
  }
  bad = w;
  bad.tensors.erase("skip_weights");
  EXPECT_THROW(check_weights(bad, "m.h5"), Error);
  bad = w;
  bad.tensors["extra"] = at::zeros({1});
  EXPECT_THROW(check_weights(bad, "m.h5"), Error);
  // The frontier preset has 35,944,537 parameters (the reference log's model_params).
  GptWeights f = init_gpt_weights(ModelConfig::frontier(), 1);
  int64_t n = 0;
  for (const auto& [name, t] : f.tensors) n += t.numel();
  EXPECT_EQ(n, 35944537);
}

}  // namespace
}  // namespace pgolf::test

namespace pgolf::test {
namespace {

// Per-row adapters equal merging B_b A_b into that row's weights.
TEST(Gpt, LoopingOffRunsThePlainLayerOrder) {
  ModelConfig c = tiny_frontier_config();
  GptWeights w = random_weights(c, 12);
  ModelConfig plain = c;
  plain.num_loops = 0;  // same parameters: num_skips() counts the looped sequence
  at::Tensor in = at::randint(c.vocab_size, {2, 7}, at::kLong), tg = at::randint(c.vocab_size, {2, 7}, at::kLong);
  ForwardOptions off;
  off.precision = Precision::F64;
  off.looping = false;
  at::Tensor a = forward_nll(w, in, tg, off);
  std::vector<int64_t> ids(7), tgt(7), seg(7, 0);
  for (int t = 0; t < 7; ++t) { ids[t] = in[0][t].item<int64_t>(); tgt[t] = tg[0][t].item<int64_t>(); }
  Vec want = Ref{w, plain, GptNumerics::norm_eps()}.nll(ids, tgt, seg);
  for (int t = 0; t < 7; ++t) EXPECT_NEAR(a[0][t].item<double>(), want[t], 1e-11);
  ForwardOptions on;
  on.precision = Precision::F64;
  EXPECT_FALSE(at::allclose(a, forward_nll(w, in, tg, on)));
}

TEST(GptLora, EqualsMergedWeightsPerRow) {
  ModelConfig c = tiny_config();
  c.tie_embeddings = false;
  GptWeights w = random_weights(c, 31);
  const int B = 3, T = 8, r = 2;
  at::Tensor in = at::randint(c.vocab_size, {B, T}, at::kLong), tg = at::randint(c.vocab_size, {B, T}, at::kLong);
  LoraSet lora;
  const int64_t d = c.model_dim, kv = c.num_kv_heads * c.head_dim();
  auto adapter = [&](int64_t out, int64_t in_dim) {
    return LoraAdapter{at::randn({B, in_dim, r}, at::kDouble) * 0.2, at::randn({B, r, out}, at::kDouble) * 0.2};
  };
  for (int L = 0; L < c.num_layers; ++L) {
    lora.adapters[lora_key(L, "q")] = adapter(d, d);
    lora.adapters[lora_key(L, "v")] = adapter(kv, d);
    lora.adapters[lora_key(L, "o")] = adapter(d, d);
  }
  lora.adapters[lora_key(1, "k")] = adapter(kv, d);
  lora.adapters["head"] = adapter(c.vocab_size, d);
  ForwardOptions opt;
  opt.precision = Precision::F64;
  opt.lora = &lora;
  at::Tensor mask = at::rand({B, T}) > 0.3;
  opt.score_mask = mask;
  at::Tensor got = forward_nll(w, in, tg, opt);
  for (int b = 0; b < B; ++b) {
    GptWeights m = w;
    auto merge = [&](const std::string& key, const std::string& weight) {
      const LoraAdapter& a = lora.adapters.at(key);
      m.tensors[weight] = w.get(weight) + at::matmul(a.A[b], a.B[b]).t();
    };
    for (int L = 0; L < c.num_layers; ++L) {
      const std::string p = "blocks." + std::to_string(L) + ".attn.";
      merge(lora_key(L, "q"), p + "c_q.weight");
      merge(lora_key(L, "v"), p + "c_v.weight");
      merge(lora_key(L, "o"), p + "proj.weight");
    }
    merge(lora_key(1, "k"), "blocks.1.attn.c_k.weight");
    merge("head", "lm_head.weight");
    ForwardOptions plain;
    plain.precision = Precision::F64;
    plain.score_mask = mask.narrow(0, b, 1);
    at::Tensor want = forward_nll(m, in.narrow(0, b, 1), tg.narrow(0, b, 1), plain);
    EXPECT_LT((got[b] - want[0]).abs().max().item<double>(), 1e-11) << "row " << b;
  }
}

TEST(GptLora, ZeroBIsANoOpAndGradientsReachTheAdapters) {
  ModelConfig c = tiny_frontier_config();  // loops: steps are not layers
  GptWeights w = random_weights(c, 5);
  const int B = 2, T = 6, r = 3;
  const int steps = int(c.layer_sequence().size());
  at::Tensor in = at::randint(c.vocab_size, {B, T}, at::kLong), tg = at::randint(c.vocab_size, {B, T}, at::kLong);
  LoraSet lora;
  for (int s = 0; s < steps; ++s)
    lora.adapters[lora_key(s, "q")] = {at::randn({B, c.model_dim, r}, at::kDouble).requires_grad_(),
                                       at::zeros({B, r, c.model_dim}, at::kDouble).requires_grad_()};
  lora.adapters["head"] = {at::randn({B, c.embed_dim(), r}, at::kDouble).requires_grad_(),
                           at::zeros({B, r, c.vocab_size}, at::kDouble).requires_grad_()};
  ForwardOptions opt;
  opt.precision = Precision::F64;
  at::Tensor base = forward_nll(w, in, tg, opt);
  opt.lora = &lora;
  at::Tensor with = forward_nll(w, in, tg, opt);
  EXPECT_TRUE(at::equal(base, with.detach()));
  with.sum().backward();
  EXPECT_GT(lora.adapters.at(lora_key(steps - 1, "q")).B.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(lora.adapters.at("head").B.grad().abs().sum().item<double>(), 0.0);
  // Row 0's loss does not reach row 1's adapter.
  for (auto& [k, a] : lora.adapters) { a.A.mutable_grad().reset(); a.B.mutable_grad().reset(); }
  forward_nll(w, in, tg, opt)[0].sum().backward();
  EXPECT_EQ(lora.adapters.at("head").B.grad()[1].abs().sum().item<double>(), 0.0);
  EXPECT_GT(lora.adapters.at("head").B.grad()[0].abs().sum().item<double>(), 0.0);
}


// Row b's adapters as the loop reference's matrices.
RefLora ref_lora(const LoraSet& lora, int64_t b) {
  RefLora rl;
  for (const auto& [key, a] : lora.adapters) {
    // pgolf's A [in, r] and B [r, out] are the reference's A [r, in] and B [out, r] transposed.
    const int64_t r = a.A.size(2);
    Mat A(size_t(r), Vec(size_t(a.A.size(1)))), Bm(size_t(a.B.size(2)), Vec(size_t(r)));
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < a.A.size(1); ++j) A[size_t(i)][size_t(j)] = a.A[b][j][i].item<double>();
    for (int64_t o = 0; o < a.B.size(2); ++o)
      for (int64_t i = 0; i < r; ++i) Bm[size_t(o)][size_t(i)] = a.B[b][i][o].item<double>();
    rl.sites[key] = {A, Bm};
  }
  return rl;
}

// Every adapter site (q, k, v, o, o_norm, mlp per unrolled step, head) against
// the loop reference, per row, with a score mask that leaves a row empty.
TEST(GptLora, AllSitesMatchLoopReferencePerRow) {
  for (bool tie : {true, false}) {
    ModelConfig c = tiny_frontier_config();
    c.tie_embeddings = tie;
    c.validate();
    GptWeights w = random_weights(c, 23);
    const int B = 3, T = 7, r = 2;
    const int64_t d = c.model_dim, kv = int64_t(c.num_kv_heads) * c.head_dim();
    at::Tensor in = at::randint(c.vocab_size, {B, T}, at::kLong), tg = at::randint(c.vocab_size, {B, T}, at::kLong);
    LoraSet lora;
    auto adapter = [&](int64_t out, int64_t in_dim) {
      return LoraAdapter{at::randn({B, in_dim, r}, at::kDouble) * 0.3, at::randn({B, r, out}, at::kDouble) * 0.3};
    };
    const int steps = int(c.layer_sequence().size());
    for (int s = 0; s < steps; ++s) {
      lora.adapters[lora_key(s, "q")] = adapter(d, d);
      lora.adapters[lora_key(s, "k")] = adapter(kv, d);
      lora.adapters[lora_key(s, "v")] = adapter(kv, d);
      lora.adapters[lora_key(s, "o")] = adapter(d, d);
      lora.adapters[lora_key(s, "o_norm")] = adapter(d, d);
      lora.adapters[lora_key(s, "mlp")] = adapter(d, d);
    }
    lora.adapters["head"] = adapter(c.vocab_size, c.embed_dim());
    at::Tensor mask = at::rand({B, T}) > 0.4;
    mask[1].fill_(false);  // a row with nothing to score
    mask[0][T - 1] = true;
    ForwardOptions opt;
    opt.precision = Precision::F64;
    opt.lora = &lora;
    opt.score_mask = mask;
    at::Tensor got = forward_nll(w, in, tg, opt);
    Ref ref{w, c, GptNumerics::norm_eps()};
    for (int b = 0; b < B; ++b) {
      const RefLora rl = ref_lora(lora, b);
      std::vector<int64_t> ids(T), tgt(T), seg(T, 0);
      for (int t = 0; t < T; ++t) { ids[t] = in[b][t].item<int64_t>(); tgt[t] = tg[b][t].item<int64_t>(); }
      Vec want = ref.nll(ids, tgt, seg, &rl);
      for (int t = 0; t < T; ++t) {
        if (mask[b][t].item<bool>()) EXPECT_NEAR(got[b][t].item<double>(), want[t], 1e-10) << "tie " << tie << " b " << b << " t " << t;
        else EXPECT_EQ(got[b][t].item<double>(), 0.0);
      }
    }
  }
}

// TTT's rows score their last C columns: with adapters on every site the last
// step then runs only there, with the loop reference's scores and the
// untrimmed forward's adapter gradients.
TEST(GptLora, ScoredSuffixTrimsTheLastStepWithTheSameGradients) {
  ModelConfig frontier = tiny_frontier_config();
  frontier.parallel_start_layer = 0;  // lanes are never trimmed
  for (const ModelConfig& c : {tiny_config(), frontier}) {
    GptWeights w = random_weights(c, 31);
    const int B = 3, T = 8, r = 2, C = 3;
    const int64_t d = c.model_dim, kv = int64_t(c.num_kv_heads) * c.head_dim();
    at::Tensor in = at::randint(c.vocab_size, {B, T}, at::kLong), tg = at::randint(c.vocab_size, {B, T}, at::kLong);
    LoraSet lora;
    auto adapter = [&](int64_t out, int64_t in_dim) {
      return LoraAdapter{(at::randn({B, in_dim, r}, at::kDouble) * 0.3).requires_grad_(),
                         (at::randn({B, r, out}, at::kDouble) * 0.3).requires_grad_()};
    };
    for (int s = 0; s < int(c.layer_sequence().size()); ++s) {
      lora.adapters[lora_key(s, "q")] = adapter(d, d);
      lora.adapters[lora_key(s, "v")] = adapter(kv, d);
      lora.adapters[lora_key(s, "o_norm")] = adapter(d, d);
      lora.adapters[lora_key(s, "mlp")] = adapter(d, d);
    }
    lora.adapters["head"] = adapter(c.vocab_size, c.embed_dim());
    at::Tensor mask = at::zeros({B, T}, at::kBool);
    mask.narrow(1, T - C, C).fill_(true);
    ForwardOptions opt;
    opt.precision = Precision::F64;
    opt.lora = &lora;
    opt.score_mask = mask;
    opt.positions = find_score_positions(mask, at::kCPU);
    ASSERT_TRUE(opt.positions.suffix);
    EXPECT_EQ(last_step_queries(w, opt, opt.positions, T), C);
    ForwardOptions full = opt;
    full.trim_last_step = false;
    auto grads = [&](const ForwardOptions& o, at::Tensor& nll) {
      for (auto& [k, a] : lora.adapters) a.A.mutable_grad().reset(), a.B.mutable_grad().reset();
      nll = forward_nll(w, in, tg, o);
      (nll * at::arange(1, T + 1, at::kDouble)).sum().backward();
      std::vector<at::Tensor> g;
      for (auto& [k, a] : lora.adapters) g.push_back(a.A.grad().clone()), g.push_back(a.B.grad().clone());
      return g;
    };
    at::Tensor got, untrimmed;
    const std::vector<at::Tensor> g_trim = grads(opt, got), g_full = grads(full, untrimmed);
    for (size_t i = 0; i < g_trim.size(); ++i) EXPECT_TRUE(at::allclose(g_trim[i], g_full[i], 1e-10, 1e-12)) << i;
    EXPECT_TRUE(at::allclose(got, untrimmed, 0, 1e-12));
    Ref ref{w, c, GptNumerics::norm_eps()};
    for (int b = 0; b < B; ++b) {
      const RefLora rl = ref_lora(lora, b);
      std::vector<int64_t> ids(T), tgt(T), seg(T, 0);
      for (int t = 0; t < T; ++t) { ids[t] = in[b][t].item<int64_t>(); tgt[t] = tg[b][t].item<int64_t>(); }
      const Vec want = ref.nll(ids, tgt, seg, &rl);
      for (int t = 0; t < T; ++t) {
        if (t >= T - C) {
          EXPECT_NEAR(got[b][t].item<double>(), want[t], 1e-10) << "b " << b << " t " << t;
        } else {
          EXPECT_EQ(got[b][t].item<double>(), 0.0);
        }
      }
    }
  }
}

TEST(GptLora, GradientsReachEverySiteInFloat32AndBf16) {
  ModelConfig c = tiny_frontier_config();
  GptWeights w = random_weights(c, 29);
  for (auto& [n, t] : w.tensors) t = t.to(at::kFloat);
  const int B = 2, T = 6, r = 2;
  const int64_t d = c.model_dim, kv = int64_t(c.num_kv_heads) * c.head_dim();
  at::Tensor in = at::randint(c.vocab_size, {B, T}, at::kLong), tg = at::randint(c.vocab_size, {B, T}, at::kLong);
  for (Precision p : {Precision::F32, Precision::BF16}) {
    LoraSet lora;
    auto adapter = [&](int64_t out, int64_t in_dim) {
      return LoraAdapter{(at::randn({B, in_dim, r}) * 0.3).requires_grad_(), (at::randn({B, r, out}) * 0.3).requires_grad_()};
    };
    for (const char* site : {"q", "k", "v", "o_norm", "mlp"})
      lora.adapters[lora_key(2, site)] = adapter(std::string(site) == "k" || std::string(site) == "v" ? kv : d, d);
    lora.adapters["head"] = adapter(c.vocab_size, c.embed_dim());
    ForwardOptions opt;
    opt.precision = p;
    opt.lora = &lora;
    opt.score_mask = at::rand({B, T}) > 0.3;
    forward_nll(w, in, tg, opt).sum().backward();
    for (const auto& [key, a] : lora.adapters) {
      ASSERT_TRUE(a.A.grad().defined()) << key;
      EXPECT_EQ(a.A.grad().scalar_type(), at::kFloat);
      EXPECT_TRUE(at::isfinite(a.B.grad()).all().item<bool>()) << key;
      EXPECT_GT(a.A.grad().abs().sum().item<double>(), 0.0) << key << " precision " << int(p);
      EXPECT_GT(a.B.grad().abs().sum().item<double>(), 0.0) << key << " precision " << int(p);
    }
  }
}

}  // namespace
}  // namespace pgolf::test
