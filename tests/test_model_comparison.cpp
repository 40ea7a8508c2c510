// eval --compare-to: KL divergence, top-1 agreement and both bpb against an
// independent float64 computation (the loop reference's log-probabilities),
// self-comparison, per-class substitution, and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "data/byte_counter.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "eval/model_comparison.h"
#include "quant/quant_policy.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

GptWeights perturbed(const GptWeights& w, double sigma, uint64_t seed, const std::string& group = "") {
  GptWeights p = w;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& [name, t] : p.tensors)
    if (group.empty() || quant::report_group(name, w.config) == group)
      t = t + at::empty(t.sizes(), t.options()).normal_(0.0, sigma, gen);
  return p;
}

struct Stream {
  std::vector<uint16_t> tok;
  ByteCounter bc{{0, 0, 0, 0}, {0, 0, 0, 0}, {1, 1, 1, 1}};
  TempDir dir;
  Stream(size_t n, int vocab) {
    tok = synthetic_bos_stream({9, 14}, n, vocab, 7);
    bc = synthetic_byte_counter(vocab);
    write_shard(dir / "fineweb_val_000000.bin", tok);
  }
  TokenStream stream() const { return TokenStream({dir / "fineweb_val_*.bin"}); }
};

EvalOptions f64(PlanKind k, uint32_t L, uint32_t S, uint64_t batch_tokens) {
  EvalOptions o;
  o.plan = k;
  o.seq_len = L;
  o.stride = S;
  o.batch_tokens = batch_tokens;
  o.precision = Precision::F64;
  return o;
}

// log P(v) at every position of one window, [T][V], from the loop reference:
// the NLL with every target set to v is -log P(v).
Mat log_probs(const GptWeights& w, const std::vector<int64_t>& ids, const std::vector<int64_t>& seg) {
  Ref ref{w, w.config, GptNumerics::norm_eps()};
  Mat lp(ids.size(), Vec(size_t(w.config.vocab_size)));
  for (int v = 0; v < w.config.vocab_size; ++v) {
    const Vec nll = ref.nll(ids, std::vector<int64_t>(ids.size(), v), seg);
    for (size_t t = 0; t < ids.size(); ++t) lp[t][size_t(v)] = -nll[t];
  }
  return lp;
}

struct Expected {
  double kl_sum = 0, kl_max = 0, nll_model = 0, nll_ref = 0, bytes = 0;
  uint64_t agree = 0, targets = 0;
  std::vector<double> kl;
};

// Windows (start, len, score_from); doc_mask cuts attention at BOS inputs.
Expected expected(const GptWeights& model, const GptWeights& reference, const Stream& s,
                  const std::vector<std::array<uint64_t, 3>>& wins, bool doc_mask) {
  Expected e;
  for (const auto& win : wins) {
    std::vector<int64_t> ids, seg;
    int64_t sg = 0;
    for (uint64_t j = 0; j < win[1]; ++j) {
      ids.push_back(s.tok[win[0] + j]);
      if (doc_mask && s.tok[win[0] + j] == 1) ++sg;
      seg.push_back(sg);
    }
    const Mat lm = log_probs(model, ids, seg), lr = log_probs(reference, ids, seg);
    for (uint64_t j = win[2]; j < win[1]; ++j) {
      const uint16_t target = s.tok[win[0] + j + 1];
      double kl = 0;
      for (size_t v = 0; v < lr[j].size(); ++v) kl += std::exp(lr[j][v]) * (lr[j][v] - lm[j][v]);
      e.kl.push_back(kl);
      e.kl_sum += kl;
      e.kl_max = std::max(e.kl_max, kl);
      e.agree += std::max_element(lr[j].begin(), lr[j].end()) - lr[j].begin() ==
                 std::max_element(lm[j].begin(), lm[j].end()) - lm[j].begin();
      e.nll_model -= lm[j][target];
      e.nll_ref -= lr[j][target];
      e.bytes += s.bc.bytes(s.tok[win[0] + j], target);
      e.targets += 1;
    }
  }
  return e;
}

double quantile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double pos = p * double(v.size() - 1);
  const size_t lo = size_t(pos);
  return lo + 1 < v.size() ? v[lo] + (pos - double(lo)) * (v[lo + 1] - v[lo]) : v[lo];
}

void expect_matches(const ComparisonResult& r, const Expected& e) {
  ASSERT_EQ(r.model.targets, e.targets);
  EXPECT_EQ(double(r.model.bytes), e.bytes);
  EXPECT_GT(e.kl_sum, 0.0);
  EXPECT_NEAR(r.kl_sum, e.kl_sum, 1e-9 * e.kl_sum);
  EXPECT_NEAR(r.kl_max, e.kl_max, 1e-9 * e.kl_max);
  EXPECT_NEAR(r.kl_quantile(0.99), quantile(e.kl, 0.99), 1e-6 * e.kl_max);  // per-target values kept as float32
  EXPECT_NEAR(r.kl_quantile(0.5), quantile(e.kl, 0.5), 1e-6 * e.kl_max);
  EXPECT_EQ(r.top1_agree, e.agree);
  EXPECT_LT(r.top1_agree, r.model.targets) << "the perturbation should flip some argmax";
  const double bits = std::log(2.0) * e.bytes;
  EXPECT_NEAR(r.model.bpb(), e.nll_model / bits, 1e-9);
  EXPECT_NEAR(r.reference.bpb(), e.nll_ref / bits, 1e-9);
  EXPECT_NEAR(r.delta_bpb(), (e.nll_model - e.nll_ref) / bits, 1e-9);
  EXPECT_GT(r.delta_bpb_stderr(), 0.0);
}

TEST(ModelComparison, KlTop1AndBpbMatchIndependentComputationStandard) {
  const ModelConfig cfg = tiny_config();
  const GptWeights ref = random_weights(cfg, 21), model = perturbed(ref, 0.05, 5);
  const Stream s(120, cfg.vocab_size);
  const uint32_t L = 16;
  auto r = compare_models(ref, {&model}, s.stream(), s.bc, f64(PlanKind::Standard, L, 0, 48));
  ASSERT_EQ(r.size(), 1u);
  std::vector<std::array<uint64_t, 3>> wins;
  for (uint64_t i = 0; (i + 1) * L + 1 <= s.tok.size(); ++i) wins.push_back({i * L, L, 0});  // trimmed rows
  expect_matches(r[0], expected(model, ref, s, wins, false));
}

TEST(ModelComparison, KlTop1AndBpbMatchIndependentComputationSlidingDocMaskUntiedProjectedHead) {
  ModelConfig cfg = tiny_frontier_config();  // embed / head projections, loops, XSA, lanes
  cfg.tie_embeddings = false;                // the head is lm_head.weight
  const GptWeights ref = random_weights(cfg, 3), model = perturbed(ref, 0.05, 6);
  const Stream s(90, cfg.vocab_size);
  const uint64_t L = 16, S = 4;
  EvalOptions o = f64(PlanKind::Current, L, S, 48);
  o.doc_mask = true;
  auto r = compare_models(ref, {&model}, s.stream(), s.bc, o);
  const uint64_t T = (s.tok.size() - 1) / L * L;
  std::vector<std::array<uint64_t, 3>> wins;
  for (uint64_t ws = 0; ws + (L - S) < T; ws += S) wins.push_back({ws, std::min(L, T - ws), ws == 0 ? 0 : L - S});
  expect_matches(r[0], expected(model, ref, s, wins, true));
}

TEST(ModelComparison, AModelAgainstItselfHasZeroKlFullAgreementAndEvalsBpb) {
  const ModelConfig cfg = tiny_config();
  const GptWeights w = random_weights(cfg, 21);
  const Stream s(300, cfg.vocab_size);
  for (Precision p : {Precision::F64, Precision::F32}) {
    GptWeights wp = w;
    if (p == Precision::F32)
      for (auto& [n, t] : wp.tensors) t = t.to(at::kFloat);
    EvalOptions o = f64(PlanKind::Current, 16, 4, 64);
    o.precision = p;
    o.doc_mask = true;
    auto r = compare_models(wp, {&wp}, s.stream(), s.bc, o);
    const EvalResult e = evaluate(wp, s.stream(), s.bc, o);
    EXPECT_EQ(r[0].kl_sum, 0.0);
    EXPECT_EQ(r[0].kl_max, 0.0);
    EXPECT_EQ(r[0].kl_quantile(0.99), 0.0);
    EXPECT_EQ(r[0].top1_agree, r[0].model.targets);
    EXPECT_EQ(r[0].top1_agreement(), 1.0);
    EXPECT_EQ(r[0].model.targets, e.targets);
    EXPECT_EQ(r[0].model.bpb(), r[0].reference.bpb());
    EXPECT_EQ(r[0].model.bpb(), e.bpb()) << "the same NLL as pgolf eval";
    EXPECT_EQ(r[0].model.bpb_stderr(), e.bpb_stderr());
    EXPECT_EQ(r[0].delta_bpb(), 0.0);
  }
}

TEST(ModelComparison, RanksAndBatchSizesAddUpToTheWhole) {
  const ModelConfig cfg = tiny_config();
  const GptWeights ref = random_weights(cfg, 21), model = perturbed(ref, 0.05, 5);
  const Stream s(300, cfg.vocab_size);
  const ComparisonResult whole = compare_models(ref, {&model}, s.stream(), s.bc, f64(PlanKind::Current, 16, 4, 1 << 20))[0];
  ComparisonResult sum;
  for (int rank = 0; rank < 3; ++rank) {
    EvalOptions o = f64(PlanKind::Current, 16, 4, 32);
    o.rank = rank;
    o.world = 3;
    sum.add(compare_models(ref, {&model}, s.stream(), s.bc, o)[0]);
  }
  EXPECT_EQ(sum.model.targets, whole.model.targets);
  EXPECT_EQ(sum.top1_agree, whole.top1_agree);
  EXPECT_NEAR(sum.kl_sum, whole.kl_sum, 1e-12 * whole.kl_sum);
  EXPECT_NEAR(sum.delta_bpb(), whole.delta_bpb(), 1e-12);
  EXPECT_NEAR(sum.kl_quantile(0.99), whole.kl_quantile(0.99), 1e-6 * whole.kl_max);
}

TEST(ModelComparison, QuantileInterpolatesBetweenOrderStatistics) {
  ComparisonResult r;
  r.kl = {5, 1, 4, 2, 3};
  EXPECT_DOUBLE_EQ(r.kl_quantile(0.0), 1.0);
  EXPECT_DOUBLE_EQ(r.kl_quantile(0.5), 3.0);
  EXPECT_DOUBLE_EQ(r.kl_quantile(0.99), 4.96);
  EXPECT_DOUBLE_EQ(r.kl_quantile(1.0), 5.0);
  EXPECT_EQ(ComparisonResult().kl_quantile(0.99), 0.0);
}

TEST(ModelComparison, PerClassRowsIsolateTheChangedGroup) {
  const ModelConfig cfg = tiny_frontier_config();  // groups embed, looped, attn, mlp, other
  const GptWeights ref = random_weights(cfg, 3), model = perturbed(ref, 0.05, 9, "mlp");
  const auto subs = per_class_substitutions(model, ref, "model", "ref");
  std::vector<std::string> groups;
  size_t tensors = 0;
  for (const auto& c : subs) {
    groups.push_back(c.group);
    tensors += c.tensors.size();
    EXPECT_EQ(c.changed, c.group == "mlp" ? c.tensors.size() : 0u) << c.group;
  }
  EXPECT_EQ(groups, (std::vector<std::string>{"embed", "looped", "attn", "mlp", "other"}));
  EXPECT_EQ(tensors, ref.tensors.size()) << "the groups partition the tensors";

  const Stream s(90, cfg.vocab_size);
  std::vector<const GptWeights*> models{&model};
  for (const auto& c : subs) models.push_back(&c.weights);
  const auto r = compare_models(ref, models, s.stream(), s.bc, f64(PlanKind::Standard, 16, 0, 48));
  ASSERT_EQ(r.size(), subs.size() + 1);
  EXPECT_GT(r[0].kl_sum, 0.0);
  for (size_t i = 0; i < subs.size(); ++i) {
    const ComparisonResult& c = r[i + 1];
    if (subs[i].group == "mlp") {  // the only changed group: exactly the whole model
      EXPECT_EQ(c.kl_sum, r[0].kl_sum);
      EXPECT_EQ(c.top1_agree, r[0].top1_agree);
      EXPECT_EQ(c.delta_bpb(), r[0].delta_bpb());
    } else {  // untouched: the reference itself
      EXPECT_EQ(c.kl_sum, 0.0) << subs[i].group;
      EXPECT_EQ(c.top1_agree, c.model.targets) << subs[i].group;
      EXPECT_EQ(c.delta_bpb(), 0.0) << subs[i].group;
    }
  }

  // Everything perturbed: every row moves, none more than a few times the whole model's KL.
  const GptWeights all = perturbed(ref, 0.05, 10);
  const auto subs2 = per_class_substitutions(all, ref, "model", "ref");
  std::vector<const GptWeights*> models2{&all};
  for (const auto& c : subs2) models2.push_back(&c.weights);
  const auto r2 = compare_models(ref, models2, s.stream(), s.bc, f64(PlanKind::Standard, 16, 0, 48));
  for (size_t i = 0; i < subs2.size(); ++i) {
    EXPECT_EQ(subs2[i].changed, subs2[i].tensors.size());
    EXPECT_GT(r2[i + 1].kl_sum, 0.0) << subs2[i].group;
    EXPECT_TRUE(std::isfinite(r2[i + 1].kl_quantile(0.99)));
  }
}

TEST(ModelComparison, MismatchedModelsAreOneLineErrors) {
  ModelConfig cfg = tiny_config();
  const GptWeights ref = random_weights(cfg, 21);
  cfg.vocab_size = 40;
  const GptWeights other_vocab = random_weights(cfg, 21);
  const Stream s(120, 40);
  std::string e = error_of([&] { compare_models(ref, {&other_vocab}, s.stream(), s.bc, f64(PlanKind::Standard, 16, 0, 48)); });
  EXPECT_NE(e.find("vocab_size 37 but the model has 40"), std::string::npos) << e;
  e = error_of([&] { check_comparable(other_vocab, ref, "q.pgz", "f.h5"); });
  EXPECT_EQ(e, "f.h5: vocab_size 37 but q.pgz has 40: models compared must share a tokenizer");

  cfg = tiny_config();
  cfg.num_layers = 4;
  const GptWeights deeper = random_weights(cfg, 21);
  e = error_of([&] { per_class_substitutions(deeper, ref, "q.pgz", "f.h5"); });
  EXPECT_NE(e.find("f.h5: config differs from q.pgz's (\"num_layers\": 3 against \"num_layers\": 4)"),
            std::string::npos)
      << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);
}

}  // namespace
}  // namespace pgolf::test
