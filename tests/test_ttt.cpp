// Score-first batched-LoRA TTT (ttt/ttt_runner.h) on tiny random models and a
// synthetic BOS-delimited stream: legality (causality, independence,
// coverage), equivalence with the plain model at lr 0, the optimizer's update,
// determinism, and the options' checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "data/byte_counter.h"
#include "data/error.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "eval/evaluator.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"
#include "ttt/adam.h"
#include "ttt/lora_adapters.h"
#include "ttt/ttt_audit.h"
#include "ttt/ttt_runner.h"

namespace pgolf::test {
namespace {

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Two leading tokens, then documents [BOS, 1..len tokens] of random lengths.
std::vector<uint16_t> doc_stream(int vocab, int docs, int min_len, int max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint16_t> tok = {9, 14};
  for (int d = 0; d < docs; ++d) {
    tok.push_back(1);
    const int len = min_len + int(rng() % uint32_t(max_len - min_len + 1));
    for (int i = 0; i < len; ++i) tok.push_back(uint16_t(4 + rng() % uint32_t(vocab - 4)));
  }
  return tok;
}

struct Fixture {
  ModelConfig cfg = tiny_config();
  GptWeights w64 = random_weights(cfg, 41), w32 = to_float(w64);
  ByteCounter bc = synthetic_byte_counter(cfg.vocab_size);
  std::vector<uint16_t> tok = doc_stream(cfg.vocab_size, 9, 3, 26, 7);

  static GptWeights to_float(GptWeights w) {
    for (auto& [n, t] : w.tensors) t = t.to(at::kFloat);
    return w;
  }
  // Small 0317-like options: C 4, L 10, 3 documents per batch, q/v/head.
  TttOptions options() const {
    TttOptions o;
    o.lora_rank = 2;
    o.chunk = 4;
    o.context = 10;
    o.batch_docs = 3;
    o.lr = 0.05;
    o.seed = 3;
    o.record_targets = true;
    return o;
  }
};

// BOS positions of a stream, plus its size.
std::vector<uint64_t> bos_positions(const std::vector<uint16_t>& tok) {
  std::vector<uint64_t> b;
  for (uint64_t i = 0; i < tok.size(); ++i)
    if (tok[i] == 1) b.push_back(i);
  b.push_back(tok.size());
  return b;
}

void edit(std::vector<uint16_t>& tok, uint64_t from, uint64_t to, int vocab) {
  for (uint64_t i = from; i < to; ++i) tok[i] = uint16_t(4 + (tok[i] - 4 + 5) % (vocab - 4));
}

uint64_t count_diff(const TttResult& a, const TttResult& b, uint64_t lo, uint64_t hi) {
  uint64_t n = 0;
  for (uint64_t t = lo; t < hi; ++t)
    n += !same_bits(a.target_nll[t], b.target_nll[t]) || !same_bits(a.target_base_nll[t], b.target_base_nll[t]);
  return n;
}

TEST(TttOptions, RecipesHoldTheReferenceValues) {
  TttOptions a = TttOptions::from_recipe("lora-0317");
  EXPECT_EQ(a.lora_rank, 8);
  EXPECT_EQ(a.targets, (std::vector<std::string>{"q", "v", "head"}));
  EXPECT_EQ(a.chunk, 256u);
  EXPECT_EQ(a.context, 1024u);
  EXPECT_EQ(a.batch_docs, 64u);
  EXPECT_DOUBLE_EQ(a.lr, 0.01);
  EXPECT_DOUBLE_EQ(a.beta1, 0.9);
  EXPECT_DOUBLE_EQ(a.beta2, 0.95);
  EXPECT_DOUBLE_EQ(a.eps, 1e-10);
  EXPECT_EQ(a.weight_decay, 0.0);
  EXPECT_FALSE(a.adamw);
  EXPECT_EQ(a.trim, 0u);
  TttOptions b = TttOptions::from_recipe("varlen-0410");
  EXPECT_EQ(b.lora_rank, 96);
  EXPECT_EQ(b.targets, (std::vector<std::string>{"q", "k", "v", "o", "mlp", "head"}));
  EXPECT_EQ(b.chunk, 64u);
  EXPECT_EQ(b.context, 2048u);
  EXPECT_DOUBLE_EQ(b.lr, 1e-4);
  EXPECT_EQ(b.beta1, 0.0);
  EXPECT_DOUBLE_EQ(b.beta2, 0.999);
  EXPECT_DOUBLE_EQ(b.weight_decay, 0.5);
  EXPECT_TRUE(b.adamw);
  EXPECT_EQ(b.trim, 2048u);
  EXPECT_EQ(b.split, TttSchedule::Split::GlobalQueue);
}

TEST(TttOptions, BadOptionsAreRejected) {
  auto err = [](auto change) {
    TttOptions o;
    change(o);
    return error_of([&] { o.validate(); });
  };
  EXPECT_EQ(err([](TttOptions&) {}), "");
  EXPECT_NE(err([](TttOptions& o) { o.lora_rank = 0; }).find("LoRA rank must be >= 1"), std::string::npos);
  EXPECT_NE(err([](TttOptions& o) { o.lora_rank = -3; }).find("got -3"), std::string::npos);
  EXPECT_NE(err([](TttOptions& o) { o.chunk = 300; o.context = 256; }).find("chunk size 300 exceeds the context length 256"),
            std::string::npos);
  EXPECT_NE(err([](TttOptions& o) { o.targets = {"q", "x"}; }).find("unknown LoRA target 'x'"), std::string::npos);
  EXPECT_NE(err([](TttOptions& o) { o.targets = {}; }), "");
  EXPECT_NE(err([](TttOptions& o) { o.beta1 = 1.0; }), "");
  EXPECT_NE(err([](TttOptions& o) { o.lr = -1; }), "");
  EXPECT_NE(err([](TttOptions& o) { o.grad_steps = 0; }), "");
  EXPECT_NE(err([](TttOptions& o) { o.batch_docs = 0; }), "");
  EXPECT_NE(error_of([] { TttOptions::from_recipe("nope"); }).find("unknown recipe 'nope'"), std::string::npos);
  // run_ttt checks too.
  Fixture f;
  TttOptions o = f.options();
  o.chunk = 11;
  EXPECT_NE(error_of([&] { run_ttt(f.w32, f.tok, f.bc, o); }).find("exceeds the context length"), std::string::npos);
}

TEST(TttAdam, MatchesAHandComputedUpdate) {
  for (bool decoupled : {false, true}) {
    AdamConfig c{0.1, 0.9, 0.95, 1e-10, decoupled ? 0.5 : 0.2, decoupled};
    FlatAdam adam(c);
    at::Tensor p = at::tensor(std::vector<double>{0.5, -1.0, 2.0}, at::kDouble);
    adam.reset(p);
    const std::vector<std::vector<double>> grads = {{0.3, -0.2, 0.0}, {-0.1, 0.4, 1.0}};
    std::vector<double> x = {0.5, -1.0, 2.0}, m(3, 0.0), v(3, 0.0);
    for (size_t t = 1; t <= grads.size(); ++t) {
      adam.step(p, at::tensor(grads[t - 1], at::kDouble));
      for (int i = 0; i < 3; ++i) {
        double g = grads[t - 1][size_t(i)];
        if (decoupled) x[i] *= 1 - c.lr * c.weight_decay;
        else g += c.weight_decay * x[i];
        m[i] = c.beta1 * m[i] + (1 - c.beta1) * g;
        v[i] = c.beta2 * v[i] + (1 - c.beta2) * g * g;
        const double mh = m[i] / (1 - std::pow(c.beta1, double(t))), vh = v[i] / (1 - std::pow(c.beta2, double(t)));
        x[i] -= c.lr * mh / (std::sqrt(vh) + c.eps);
      }
      for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i].item<double>(), x[i], 1e-12) << "t " << t << " decoupled " << decoupled;
    }
    EXPECT_EQ(adam.steps(), 2);
    adam.reset(p);
    EXPECT_EQ(adam.steps(), 0);
  }
}

TEST(TttAdapters, InitIsKeyedUniformAndMatchesTheHostGenerator) {
  ModelConfig c = tiny_config();
  std::vector<LoraSiteSpec> sites = lora_sites(c, {"q", "k", "v", "o", "mlp", "head"});
  EXPECT_EQ(sites.size(), size_t(5 * c.num_layers + 1));
  EXPECT_EQ(sites.back().key, "head");
  EXPECT_EQ(sites.back().out, c.vocab_size);
  EXPECT_NE(error_of([&] { lora_sites(c, {"x"}); }).find("unknown LoRA target"), std::string::npos);
  BatchAdapters a(sites, 3, 4, at::kDouble, at::kCPU);
  a.reset(11, {5, 2, 9});
  LoraSet set = a.views();
  const LoraAdapter& q = set.adapters.at(lora_key(1, "q"));
  ASSERT_EQ(q.A.sizes(), (std::vector<int64_t>{3, c.model_dim, 4}));  // [rows, in, r]
  ASSERT_EQ(q.B.sizes(), (std::vector<int64_t>{3, 4, c.model_dim}));  // [rows, r, out]
  EXPECT_EQ(q.B.abs().sum().item<double>(), 0.0);
  const double bound = 1.0 / std::sqrt(double(c.model_dim));
  at::Tensor row1 = q.A[1].t().reshape({-1});  // the reference's [r, in] order
  for (int64_t i = 0; i < row1.numel(); ++i)
    EXPECT_EQ(row1[i].item<double>(), lora_init_value(11, 2, lora_key(1, "q"), uint64_t(i), bound));
  EXPECT_LE(q.A.abs().max().item<double>(), bound);
  // Same document key, same values, whatever the row.
  BatchAdapters b(sites, 2, 4, at::kDouble, at::kCPU);
  b.reset(11, {2, 7});
  EXPECT_TRUE(at::equal(b.views().adapters.at(lora_key(1, "q")).A[0], q.A[1]));
  // Uniform: mean ~ 0, variance ~ bound^2 / 3 over many draws.
  BatchAdapters big({{"head", 400, 3}}, 8, 50, at::kDouble, at::kCPU);
  big.reset(1, {0, 1, 2, 3, 4, 5, 6, 7});
  at::Tensor A = big.views().adapters.at("head").A / (1.0 / std::sqrt(400.0));
  EXPECT_NEAR(A.mean().item<double>(), 0.0, 0.01);
  EXPECT_NEAR(A.pow(2).mean().item<double>(), 1.0 / 3.0, 0.01);
}

// Backward through any of the views adds each site's gradient into the flat
// gradient at that site's rows, in place, and nowhere else; the optimizer
// then moves exactly those rows.
TEST(TttAdapters, GradientsLandInTheFlatBufferRows) {
  const std::vector<LoraSiteSpec> sites = {{"q", 6, 6}, {"head", 6, 10}};
  BatchAdapters a(sites, 4, 2, at::kDouble, at::kCPU);
  a.reset(3, {0, 1, 2, 3});
  const at::Tensor grad_storage = a.grad();
  auto loss_of = [](const LoraSet& set) {
    at::Tensor l = at::zeros({}, at::kDouble);
    for (const auto& [key, ad] : set.adapters) l = l + (ad.A * 2.0).sum() + (ad.B + 1.0).pow(2).sum();
    return l;
  };
  // A row range is a leaf set of its own over those rows of the buffer
  // (made once): its backward needs no whole-site zero-filled gradient.
  const LoraSet r12 = a.views(1, 2);
  for (const auto& [key, ad] : r12.adapters) {
    EXPECT_TRUE(ad.A.is_leaf() && ad.B.is_leaf()) << key;
    EXPECT_EQ(ad.A.data_ptr(), a.views().adapters.at(key).A[1].data_ptr()) << key;
    EXPECT_EQ(ad.B.grad().data_ptr(), a.views().adapters.at(key).B.grad()[1].data_ptr()) << key;
    EXPECT_TRUE(ad.A.is_same(a.views(1, 2).adapters.at(key).A)) << key;
  }
  EXPECT_NE(error_of([&] { a.views(3, 2); }).find("out of range"), std::string::npos);
  loss_of(r12).backward();                                 // rows 1, 2
  loss_of(a.views(at::tensor({3}, at::kLong))).backward();  // row 3
  EXPECT_TRUE(a.grad().is_same(grad_storage));  // accumulated in place
  for (const auto& [key, ad] : a.views().adapters) {
    const at::Tensor gA = ad.A.grad(), gB = ad.B.grad();
    ASSERT_TRUE(gA.defined() && gB.defined()) << key;
    EXPECT_EQ(gA[0].abs().sum().item<double>(), 0.0) << key;  // row 0 was in neither view
    EXPECT_EQ(gB[0].abs().sum().item<double>(), 0.0) << key;
    for (int r = 1; r < 4; ++r) {
      EXPECT_TRUE(at::allclose(gA[r], at::full_like(gA[r], 2.0))) << key << " row " << r;
      EXPECT_TRUE(at::allclose(gB[r], 2.0 * (ad.B[r] + 1.0))) << key << " row " << r;
    }
  }
  // The flat gradient is the leaves' gradients (one buffer).
  EXPECT_NEAR(a.grad().abs().sum().item<double>(), 2.0 * 3 * 2 * (6 + 6) + 2.0 * 3 * (6 * 2 + 10 * 2), 1e-9);
  const at::Tensor before = a.params().clone();
  FlatAdam adam(AdamConfig{0.1, 0.9, 0.95, 1e-10, 0.0, false});
  adam.reset(a.params());
  adam.step(a.params(), a.grad());
  const at::Tensor moved = (a.params() != before);
  EXPECT_EQ(moved.sum().item<int64_t>(), (a.grad() != 0).sum().item<int64_t>());
  a.zero_grad();
  EXPECT_EQ(a.grad().abs().sum().item<double>(), 0.0);
}

// row_parts(first, count): exactly the elements of the leaves of those rows,
// merged where contiguous; Adam over them updates those elements as the
// whole-buffer update does and leaves every other element (and its moments)
// as it was.
TEST(TttAdapters, RowPartsAreTheRowsAndAdamUpdatesOnlyThem) {
  const std::vector<LoraSiteSpec> sites = {{"q", 6, 6}, {"v", 6, 3}, {"head", 6, 10}};
  BatchAdapters a(sites, 5, 2, at::kDouble, at::kCPU);
  for (const auto& [first, count] : std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {1, 2}, {4, 1}, {0, 1}, {2, 3}}) {
    const FlatParts& parts = a.row_parts(first, count);
    EXPECT_EQ(&parts, &a.row_parts(first, count));  // made once
    at::Tensor covered = at::zeros_like(a.params());
    for (const auto& [start, length] : parts.host) covered.narrow(0, start, length).add_(1.0);
    std::vector<int64_t> flat;
    for (const auto& [start, length] : parts.host) flat.push_back(start), flat.push_back(length);
    EXPECT_TRUE(at::equal(parts.device, at::tensor(flat, at::kLong).view({-1, 2})));
    a.params().zero_();
    for (const auto& [key, ad] : a.views(first, count).adapters) ad.A.detach().fill_(1.0), ad.B.detach().fill_(1.0);
    EXPECT_TRUE(at::equal(covered, a.params())) << first << " " << count;
    if (count == 5) EXPECT_EQ(parts.host.size(), 1u);  // every row: one part, the whole buffer
  }
  EXPECT_NE(error_of([&] { a.row_parts(4, 2); }).find("out of range"), std::string::npos);
  // Two steps of Adam over rows 1-2 against two over everything.
  for (const bool decoupled : {false, true}) {
    const AdamConfig cfg{0.05, 0.9, 0.95, 1e-10, 0.1, decoupled};
    a.reset(7, {0, 1, 2, 3, 4});
    const at::Tensor p0 = a.params().clone(), g = at::randn_like(p0);
    const FlatParts& parts = a.row_parts(1, 2);
    at::Tensor whole = p0.clone(), some = p0.clone();
    FlatAdam all(cfg), rows(cfg);
    all.reset(whole), rows.reset(some);
    for (int t = 0; t < 2; ++t) {
      all.prepare(), rows.prepare();
      all.apply(whole, g);
      rows.apply(some, g, {}, &parts);
    }
    at::Tensor in = at::zeros_like(p0, at::kBool);
    for (const auto& [start, length] : parts.host) in.narrow(0, start, length).fill_(true);
    EXPECT_TRUE(at::equal(some.masked_select(in), whole.masked_select(in))) << decoupled;
    EXPECT_TRUE(at::equal(some.masked_select(in.logical_not()), p0.masked_select(in.logical_not()))) << decoupled;
    EXPECT_FALSE(at::equal(some, p0)) << decoupled;
  }
}

// With a narrower compute type (bf16 under bf16 activations) the leaves are
// a copy of the float32 parameters in that type, their gradients are in it,
// and the optimizer updates the float32 parameters from them and refreshes
// the copy: the same update as from the gradient widened to float32.
TEST(TttAdapters, NarrowLeavesMirrorTheParameters) {
  const std::vector<LoraSiteSpec> sites = {{"q", 8, 8}, {"head", 8, 12}};
  BatchAdapters a(sites, 2, 4, at::kFloat, at::kCPU, at::kBFloat16);
  a.reset(5, {0, 1});
  ASSERT_TRUE(a.mirror().defined());
  EXPECT_EQ(a.mirror().scalar_type(), at::kBFloat16);
  EXPECT_EQ(a.grad().scalar_type(), at::kBFloat16);
  EXPECT_EQ(a.params().scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(a.mirror(), a.params().to(at::kBFloat16)));
  for (const auto& [key, ad] : a.views().adapters) {
    EXPECT_EQ(ad.A.scalar_type(), at::kBFloat16) << key;
    EXPECT_EQ(ad.A.data_ptr(), a.mirror().data_ptr<at::BFloat16>() + (key == "q" ? 0 : 2 * 4 * 8)) << key;
  }
  at::Tensor loss = at::zeros({}, at::kFloat);
  for (const auto& [key, ad] : a.views().adapters)
    loss = loss + (ad.A.to(at::kFloat) * 3.0).sum() + (ad.B.to(at::kFloat) - 0.5).pow(2).sum();
  loss.backward();
  EXPECT_GT(a.grad().abs().sum().item<double>(), 0.0);
  // The same step from the gradient widened to float32, with no mirror.
  at::Tensor p_ref = a.params().clone();
  const at::Tensor g_wide = a.grad().to(at::kFloat);
  for (const bool decoupled : {false, true}) {
    const AdamConfig cfg{0.05, 0.9, 0.95, 1e-10, 0.1, decoupled};
    FlatAdam narrow(cfg), wide(cfg);
    at::Tensor p = a.params().clone(), q = p_ref.clone(), mirror = at::empty_like(a.mirror());
    narrow.reset(p), wide.reset(q);
    for (int t = 0; t < 2; ++t) {
      narrow.prepare(), wide.prepare();
      narrow.apply(p, a.grad(), mirror);
      wide.apply(q, g_wide);
    }
    EXPECT_TRUE(at::equal(p, q)) << decoupled;
    EXPECT_TRUE(at::equal(mirror, p.to(at::kBFloat16))) << decoupled;
    EXPECT_FALSE(at::equal(p, a.params())) << decoupled;
  }
  // reset() refreshes the mirror too.
  a.params().add_(1.0);
  a.reset(6, {0, 1});
  EXPECT_TRUE(at::equal(a.mirror(), a.params().to(at::kBFloat16)));
}

TEST(Ttt, EveryTargetIsScoredExactlyOnce) {
  Fixture f;
  TttResult r = run_ttt(f.w32, f.tok, f.bc, f.options());
  const uint64_t first = 2, n = f.tok.size();
  EXPECT_EQ(r.targets, n - 1 - first);
  for (uint64_t t = 0; t < n; ++t) EXPECT_EQ(r.target_times[t], t > first ? 1 : 0) << t;
  ByteTotals all = f.bc.count(f.tok.data() + first, n - first);
  EXPECT_EQ(r.bytes, all.bytes);
  const std::vector<uint64_t> b = bos_positions(f.tok);
  for (size_t d = 0; d + 1 < b.size(); ++d)
    EXPECT_EQ(r.docs[d].targets, (d + 2 < b.size() ? b[d + 1] + 1 : n) - b[d] - 1) << d;
  uint64_t chunk_targets = 0;
  for (const TttChunkTotals& c : r.chunks) chunk_targets += c.targets;
  EXPECT_EQ(chunk_targets, r.targets);
  EXPECT_GT(r.updates, 0u);
  // Something moved, and the first chunk of every document is scored without adaptation.
  EXPECT_NE(r.nll_sum, r.base_nll_sum);
  for (const TttChunkTotals& c : r.chunks) {
    if (c.index == 0) {
      EXPECT_EQ(c.nll, c.base_nll);
    }
  }
}

TEST(Ttt, ScoresNeverSeeLaterTokens) {
  Fixture f;
  for (bool frontier : {false, true}) {
    ModelConfig cfg = frontier ? tiny_frontier_config() : tiny_config();
    GptWeights w = Fixture::to_float(random_weights(cfg, 43));
    TttOptions o = f.options();
    if (frontier) o.targets = {"q", "k", "v", "o", "mlp", "head"}, o.adamw = true, o.weight_decay = 0.5, o.beta1 = 0;
    const TttResult a = run_ttt(w, f.tok, f.bc, o);
    const std::vector<uint64_t> b = bos_positions(f.tok);
    // The longest document, edited after several positions p of its chunks.
    size_t d = 0;
    for (size_t i = 0; i + 1 < b.size(); ++i)
      if (b[i + 1] - b[i] > b[d + 1] - b[d]) d = i;
    const uint64_t bos = b[d], last = b[d + 1];  // the document's tokens: (bos, last); its last target: last
    ASSERT_GT(last - bos, 3 * o.chunk);
    for (uint64_t off : {uint64_t(1), uint64_t(o.chunk), uint64_t(o.chunk + 1), uint64_t(2 * o.chunk + 2)}) {
      const uint64_t p = bos + off;
      std::vector<uint16_t> tok = f.tok;
      edit(tok, p + 1, last, cfg.vocab_size);
      const TttResult c = run_ttt(w, tok, f.bc, o);
      EXPECT_EQ(count_diff(a, c, 0, p + 1), 0u) << "frontier " << frontier << " p " << p;
      EXPECT_EQ(count_diff(a, c, last + 1, f.tok.size()), 0u) << "other documents";
      EXPECT_FALSE(same_bits(a.target_nll[p + 1], c.target_nll[p + 1])) << "the edit must matter";
    }
  }
}

TEST(Ttt, DocumentsAreIndependent) {
  Fixture f;
  TttOptions o = f.options();
  const TttResult a = run_ttt(f.w32, f.tok, f.bc, o);
  const TttPlan plan = make_ttt_plan(f.tok.data(), f.tok.size(), 1, o.chunk, o.context, o.batch_docs, 0, 1);
  const std::vector<uint64_t> b = bos_positions(f.tok);
  // Edit each document of the first batch in turn (its batch-mates share the forward), then one of another batch.
  std::vector<uint32_t> edited = plan.batches[0].docs;
  edited.push_back(plan.batches.back().docs[0]);
  for (uint32_t d : edited) {
    std::vector<uint16_t> tok = f.tok;
    edit(tok, b[d] + 1, b[d + 1], f.cfg.vocab_size);  // same length, no BOS
    const TttResult c = run_ttt(f.w32, tok, f.bc, o);
    EXPECT_EQ(count_diff(a, c, 0, b[d] + 1) + count_diff(a, c, b[d + 1] + 1, f.tok.size()), 0u) << "doc " << d;
    EXPECT_GT(count_diff(a, c, b[d] + 1, b[d + 1]), 0u);
  }
}

TEST(Ttt, LrZeroEqualsThePlainModelAndTheLoopReference) {
  Fixture f;
  TttOptions o = f.options();
  o.lr = 0;
  o.precision = Precision::F64;
  // L 10: each base window holds one chunk; L 13: chunks 1 and 2 share one.
  for (uint32_t L : {10u, 13u}) {
    o.context = L;
    const TttResult r = run_ttt(f.w64, f.tok, f.bc, o);
    // The base scores come from windows of their own: the same contexts, so
    // equal up to float64 rounding.
    for (uint64_t t = 3; t < f.tok.size(); ++t) EXPECT_NEAR(r.target_nll[t], r.target_base_nll[t], 1e-12) << t;
    EXPECT_NEAR(r.nll_sum, r.base_nll_sum, 1e-10);
    // Each chunk's window through the float64 loop reference, with and without TTT.
    const TttPlan plan = make_ttt_plan(f.tok.data(), f.tok.size(), 1, o.chunk, o.context, o.batch_docs, 0, 1);
    Ref ref{f.w64, f.cfg, GptNumerics::norm_eps()};
    for (uint32_t d = 0; d < plan.docs.size(); ++d)
      for (uint32_t c = 0; c < plan.docs[d].num_chunks; ++c) {
        const TttChunk ch = chunk_at(plan, d, c);
        std::vector<int64_t> ids, tgt, seg(ch.input_len(), 0);
        for (uint64_t j = 0; j < ch.input_len(); ++j) {
          ids.push_back(f.tok[ch.context_begin + j]);
          tgt.push_back(f.tok[ch.context_begin + j + 1]);
        }
        const Vec want = ref.nll(ids, tgt, seg);
        for (uint64_t j = ch.score_offset(); j < ch.input_len(); ++j) {
          const uint64_t t = ch.context_begin + j + 1;
          EXPECT_NEAR(r.target_nll[t], want[j], 1e-11) << "L " << L << " doc " << d << " chunk " << c;
          EXPECT_NEAR(r.target_base_nll[t], want[j], 1e-11) << "L " << L << " doc " << d << " chunk " << c;
        }
      }
  }
}

TEST(Ttt, LrZeroEqualsTheEvaluatorOnTheSameWindows) {
  // One document of 4 L targets with C = L: the chunk windows are standard evaluation's rows.
  Fixture f;
  const uint32_t L = 8;
  std::vector<uint16_t> tok = doc_stream(f.cfg.vocab_size, 1, 4 * L, 4 * L, 9);
  tok.erase(tok.begin(), tok.begin() + 2);  // starts with its BOS
  ASSERT_EQ(tok.size(), 4 * L + 1);
  TempDir dir;
  write_shard(dir / "fineweb_val_000000.bin", tok);
  TokenStream s({dir / "fineweb_val_000000.bin"});
  EvalOptions eo;
  eo.seq_len = L;
  eo.batch_tokens = L;
  eo.precision = Precision::F64;
  const EvalResult e = evaluate(f.w64, s, f.bc, eo);
  TttOptions o = f.options();
  o.chunk = o.context = L;
  o.precision = Precision::F64;
  for (double lr : {0.0, 0.05}) {
    o.lr = lr;
    const TttResult r = run_ttt(f.w64, tok, f.bc, o);
    EXPECT_EQ(r.targets, e.targets);
    EXPECT_EQ(r.bytes, e.bytes);
    EXPECT_NEAR(r.base_nll_sum, e.nll_sum, 1e-10) << "lr " << lr;
    if (lr == 0) {
      EXPECT_NEAR(r.nll_sum, e.nll_sum, 1e-10);
    } else {
      EXPECT_GT(std::abs(r.nll_sum - e.nll_sum), 1e-6);
    }
  }
}

TEST(Ttt, ChunkTwoIsScoredAfterOneAdamStepOnChunkOne) {
  // One document of 2 chunks, by hand: score chunk 0, mean loss over its C
  // columns, backward, Adam, then chunk 1's window with the updated adapters.
  Fixture f;
  std::vector<uint16_t> tok = doc_stream(f.cfg.vocab_size, 1, 6, 6, 5);
  tok.erase(tok.begin(), tok.begin() + 2);
  tok.push_back(1);  // the document's last target is the next BOS: 7 targets, chunks of 4 and 3
  TttOptions o = f.options();
  o.precision = Precision::F64;
  for (const char* recipe : {"adam", "adamw"}) {
    o.adamw = std::string(recipe) == "adamw";
    o.weight_decay = o.adamw ? 0.5 : 0.0;
    const TttResult r = run_ttt(f.w64, tok, f.bc, o);
    BatchAdapters ad(lora_sites(f.cfg, o.targets), 1, o.lora_rank, at::kDouble, at::kCPU);
    ad.reset(o.seed, {0});
    FlatAdam adam(AdamConfig{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.adamw});
    adam.reset(ad.params());
    auto ids = [&](uint64_t a, uint64_t n) {
      std::vector<int64_t> v(tok.begin() + int64_t(a), tok.begin() + int64_t(a + n));
      return at::tensor(v, at::kLong).view({1, int64_t(n)});
    };
    ForwardOptions fo;
    fo.precision = Precision::F64;
    LoraSet lora = ad.views();
    fo.lora = &lora;
    at::Tensor nll0 = forward_nll(f.w64, ids(0, 4), ids(1, 4), fo);
    nll0.mean().backward();
    adam.step(ad.params(), ad.grad());
    lora = ad.views();
    at::Tensor nll1 = forward_nll(f.w64, ids(0, 7), ids(1, 7), fo);  // chunk 1: targets 5..7, window from the BOS
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(r.target_nll[size_t(j + 1)], nll0[0][j].item<double>(), 1e-12);
    for (int j = 4; j < 7; ++j) EXPECT_NEAR(r.target_nll[size_t(j + 1)], nll1[0][j].item<double>(), 1e-12) << recipe;
  }
}

// --timeline: one entry per step in order, times that only go forward, and
// the same scores as without it.
TEST(Ttt, TimelineHasEveryStepInOrder) {
  Fixture f;
  TttOptions o = f.options();
  const TttResult plain = run_ttt(f.w32, f.tok, f.bc, o);
  o.timeline = true;
  const TttResult r = run_ttt(f.w32, f.tok, f.bc, o);
  EXPECT_EQ(count_diff(plain, r, 0, f.tok.size()), 0u);
  EXPECT_TRUE(plain.timeline.empty());
  ASSERT_EQ(r.timeline.size(), r.steps);
  double last_end = 0, last_device = 0;
  for (const TttStepTime& s : r.timeline) {
    EXPECT_GT(s.rows, 0);
    EXPECT_GT(s.width, 0);
    EXPECT_EQ(s.run, 'e');  // the CPU runs every step eagerly
    EXPECT_GE(s.host_begin, last_end);
    EXPECT_GE(s.host_end, s.host_begin);
    EXPECT_GE(s.device_end, last_device);
    last_end = s.host_end;
    last_device = s.device_end;
  }
  EXPECT_EQ(r.timeline.front().step, 0u);
  EXPECT_GT(last_device, 0.0);
}

TEST(Ttt, DeterministicForASeedAndRankSplitsSum) {
  Fixture f;
  TttOptions o = f.options();
  const TttResult a = run_ttt(f.w32, f.tok, f.bc, o), b = run_ttt(f.w32, f.tok, f.bc, o);
  EXPECT_EQ(count_diff(a, b, 0, f.tok.size()), 0u);
  o.seed = 4;
  const TttResult c = run_ttt(f.w32, f.tok, f.bc, o);
  EXPECT_GT(count_diff(a, c, 0, f.tok.size()), 0u);
  for (TttSchedule::Split split : {TttSchedule::Split::RankSlices, TttSchedule::Split::GlobalQueue}) {
    o = f.options();
    o.split = split;
    o.precision = Precision::F64;
    const TttResult whole = run_ttt(f.w64, f.tok, f.bc, o);
    TttResult sum;
    for (int rank = 0; rank < 3; ++rank) {
      o.rank = rank;
      o.world = 3;
      sum.add(run_ttt(f.w64, f.tok, f.bc, o));
    }
    sum.totals_from_docs();
    EXPECT_EQ(sum.targets, whole.targets);
    EXPECT_EQ(sum.bytes, whole.bytes);
    EXPECT_EQ(sum.batches, whole.batches);
    // Ranks run whole batches of the one-rank plan, adapters keyed by document:
    // the same bits per document, and totals summed in document order.
    for (size_t d = 0; d < whole.docs.size(); ++d) {
      EXPECT_EQ(sum.docs[d].nll, whole.docs[d].nll) << "doc " << d;
      EXPECT_EQ(sum.base_docs[d].nll, whole.base_docs[d].nll) << "doc " << d;
    }
    EXPECT_EQ(sum.nll_sum, whole.nll_sum);
    EXPECT_EQ(sum.bpb_stderr(), whole.bpb_stderr());
  }
}

TEST(Ttt, TrimAndDocumentPrefix) {
  Fixture f;
  TttOptions o = f.options();
  const std::vector<uint64_t> b = bos_positions(f.tok);
  o.max_docs = 3;
  EXPECT_EQ(ttt_used_tokens(f.tok, o), b[3] + 1);
  const TttResult r = run_ttt(f.w32, f.tok, f.bc, o);
  EXPECT_EQ(r.targets, b[3] - b[0]);
  EXPECT_EQ(r.num_docs, 3u);
  o.max_docs = 0;
  o.trim = 16;
  EXPECT_EQ(ttt_used_tokens(f.tok, o), (f.tok.size() - 1) / 16 * 16 + 1);
  o.trim = uint32_t(f.tok.size());
  EXPECT_NE(error_of([&] { ttt_used_tokens(f.tok, o); }), "");
}

TEST(Ttt, GradStepsAndBf16Run) {
  Fixture f;
  TttOptions o = f.options();
  o.grad_steps = 2;
  const TttResult two = run_ttt(f.w32, f.tok, f.bc, o);
  o.grad_steps = 1;
  const TttResult one = run_ttt(f.w32, f.tok, f.bc, o);
  EXPECT_EQ(two.updates, 2 * one.updates);
  EXPECT_NE(two.nll_sum, one.nll_sum);
  o.precision = Precision::BF16;
  const TttResult bf = run_ttt(f.w32, f.tok, f.bc, o);
  EXPECT_TRUE(std::isfinite(bf.nll_sum));
  EXPECT_NE(bf.nll_sum, bf.base_nll_sum);
  EXPECT_NEAR(bf.bpb(), one.bpb(), 0.1);
}

TEST(Ttt, AuditPassesOnAGoodPipeline) {
  Fixture f;
  TttOptions o = f.options();
  o.record_targets = false;
  const TttAudit a = audit_ttt(f.w32, f.tok, f.bc, o, 6, 3);
  EXPECT_EQ(a.sample_docs, 6u);
  ASSERT_EQ(a.checks.size(), 5u);
  for (const TttAuditCheck& c : a.checks) EXPECT_TRUE(c.ok) << c.name << ": " << c.detail;
  EXPECT_TRUE(a.ok());
}

}  // namespace
}  // namespace pgolf::test
