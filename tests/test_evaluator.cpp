// Evaluation: bpb of standard and sliding plans against an independent float64
// computation (loop reference + its own window loops), to 1e-9.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "data/byte_counter.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "eval/evaluator.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

struct Fixture {
  ModelConfig cfg = tiny_config();
  GptWeights w = random_weights(cfg, 21);
  std::vector<uint16_t> tok;
  ByteCounter bc{{0, 0, 0, 0}, {0, 0, 0, 0}, {1, 1, 1, 1}};
  TempDir dir;
  Fixture() {
    // Documents of random length, each starting with BOS (id 1); the stream starts mid-document.
    tok = synthetic_bos_stream({9, 14}, 203, cfg.vocab_size, 5);
    bc = synthetic_byte_counter(cfg.vocab_size);
    write_shard(dir / "fineweb_val_000000.bin", tok);
  }
  // Sum of NLL and bytes over windows given by (start, len, score_from), with
  // the loop reference; doc_mask cuts attention at BOS inputs.
  std::pair<double, double> expected(const std::vector<std::array<uint64_t, 3>>& wins, bool doc_mask) const {
    Ref ref{w, cfg, GptNumerics::norm_eps()};
    double nll = 0, bytes = 0;
    for (const auto& win : wins) {
      std::vector<int64_t> ids, tgt, seg;
      int64_t s = 0;
      for (uint64_t j = 0; j < win[1]; ++j) {
        ids.push_back(tok[win[0] + j]);
        tgt.push_back(tok[win[0] + j + 1]);
        if (doc_mask && tok[win[0] + j] == 1) ++s;
        seg.push_back(s);
      }
      std::vector<double> v = ref.nll(ids, tgt, seg);
      for (uint64_t j = win[2]; j < win[1]; ++j) {
        nll += v[j];
        bytes += bc.bytes(tok[win[0] + j], tok[win[0] + j + 1]);
      }
    }
    return {nll, bytes};
  }
};

double bpb_of(std::pair<double, double> p) { return p.first / std::log(2.0) / p.second; }

EvalOptions f64(PlanKind k, uint32_t L, uint32_t S, uint64_t batch_tokens) {
  EvalOptions o;
  o.plan = k;
  o.seq_len = L;
  o.stride = S;
  o.batch_tokens = batch_tokens;
  o.precision = Precision::F64;
  return o;
}

TEST(Evaluator, StandardBpbMatchesIndependentComputation) {
  Fixture f;
  TokenStream s({f.dir / "fineweb_val_*.bin"});
  const uint32_t L = 16;
  EvalResult r = evaluate(f.w, s, f.bc, f64(PlanKind::Standard, L, 0, 48));
  std::vector<std::array<uint64_t, 3>> wins;
  for (uint64_t i = 0; (i + 1) * L + 1 <= f.tok.size(); ++i) wins.push_back({i * L, L, 0});  // trimmed rows
  auto want = f.expected(wins, false);
  EXPECT_EQ(r.targets, wins.size() * L);
  EXPECT_EQ(double(r.bytes), want.second);
  EXPECT_NEAR(r.bpb(), bpb_of(want), 1e-9);
  EXPECT_GT(r.bpb_stderr(), 0.0);
}

TEST(Evaluator, CurrentSlidingBpbMatchesIndependentComputation) {
  Fixture f;
  TokenStream s({f.dir / "fineweb_val_*.bin"});
  const uint64_t L = 16, S = 4;
  for (bool doc_mask : {false, true}) {
    EvalOptions o = f64(PlanKind::Current, L, S, 80);
    o.doc_mask = doc_mask;
    EvalResult r = evaluate(f.w, s, f.bc, o);
    // The records' plan over the trimmed stream: T targets, starts 0, S, ... while ws + L - S < T.
    const uint64_t T = (f.tok.size() - 1) / L * L;
    std::vector<std::array<uint64_t, 3>> wins;
    for (uint64_t ws = 0; ws + (L - S) < T; ws += S) wins.push_back({ws, std::min(L, T - ws), ws == 0 ? 0 : L - S});
    auto want = f.expected(wins, doc_mask);
    EXPECT_EQ(r.targets, T) << "every target exactly once";
    EXPECT_NEAR(r.bpb(), bpb_of(want), 1e-9) << "doc_mask " << doc_mask;
  }
}

TEST(Evaluator, LegacySlidingCountsTheTailAgainLikeTheRecord) {
  Fixture f;
  TokenStream s({f.dir / "fineweb_val_*.bin"});
  const uint64_t L = 16, S = 8;
  EvalResult r = evaluate(f.w, s, f.bc, f64(PlanKind::Legacy, L, S, 64));
  const uint64_t T = (f.tok.size() - 1) / L * L;
  std::vector<std::array<uint64_t, 3>> wins;
  for (uint64_t ws = 0; ws < T; ws += S) {
    const uint64_t len = std::min(L, T - ws);
    if (len < S) continue;
    wins.push_back({ws, len, ws == 0 ? 0 : len - S});
  }
  auto want = f.expected(wins, false);
  EXPECT_GT(r.targets, T);
  EXPECT_NEAR(r.bpb(), bpb_of(want), 1e-9);
}

// The streaming plan equals, per segment, one forward over the segment's fed
// tokens with every layer's attention cut to the last L keys (the KV cache's
// semantics), scored from the segment's first own target -- for any chunk
// size, on both families (depth recurrence: a cache per unrolled step).
TEST(Evaluator, StreamingMatchesWholeSegmentsWithLKeyWindows) {
  Fixture f;
  TokenStream s({f.dir / "fineweb_val_*.bin"});
  const uint64_t L = 16, segments = 4;
  const uint64_t T = (f.tok.size() - 1) / L * L;  // the trimmed stream's targets
  for (ModelConfig cfg : {tiny_config(), tiny_frontier_config()}) {
    const GptWeights w = random_weights(cfg, 31);
    ModelConfig cut = cfg;
    cut.attn_windows.resize(size_t(cut.num_layers), 0);
    for (int& win : cut.attn_windows) win = win > 0 ? std::min<int>(win, int(L)) : int(L);
    Ref ref{w, cut, GptNumerics::norm_eps()};
    double nll = 0, bytes = 0;
    for (uint64_t i = 0; i < segments; ++i) {
      const uint64_t from = T * i / segments, end = T * (i + 1) / segments, feed = from > L - 1 ? from - (L - 1) : 0;
      std::vector<int64_t> ids, tgt, seg;
      for (uint64_t t = feed; t < end; ++t) ids.push_back(f.tok[t]), tgt.push_back(f.tok[t + 1]), seg.push_back(0);
      const std::vector<double> v = ref.nll(ids, tgt, seg);
      for (uint64_t t = from; t < end; ++t) nll += v[t - feed], bytes += f.bc.bytes(f.tok[t], f.tok[t + 1]);
    }
    for (uint32_t chunk : {16u, 5u, 1u}) {
      EvalOptions o = f64(PlanKind::Streaming, uint32_t(L), chunk, segments * chunk);
      const EvalResult r = evaluate(w, s, f.bc, o);
      EXPECT_EQ(r.targets, T) << "every target exactly once";
      EXPECT_EQ(double(r.bytes), bytes);
      EXPECT_EQ(r.windows, segments);
      EXPECT_NEAR(r.nll_sum, nll, 1e-9 * nll) << "layers " << cfg.num_layers << " chunk " << chunk;
    }
    // Ranks split the segments; the sums add up.
    EvalResult sum;
    for (int rank = 0; rank < 2; ++rank) {
      EvalOptions o = f64(PlanKind::Streaming, uint32_t(L), 8, 2 * 8);
      o.rank = rank;
      o.world = 2;
      sum.add(evaluate(w, s, f.bc, o));
    }
    EXPECT_EQ(sum.targets, T);
    EXPECT_NEAR(sum.nll_sum, nll, 1e-9 * nll);
  }
}

TEST(Evaluator, BatchSizeAndRankSplitDoNotChangeTheSums) {
  Fixture f;
  TokenStream s({f.dir / "fineweb_val_*.bin"});
  EvalResult whole = evaluate(f.w, s, f.bc, f64(PlanKind::Current, 16, 4, 16));
  EvalResult big = evaluate(f.w, s, f.bc, f64(PlanKind::Current, 16, 4, 1 << 20));
  EXPECT_NEAR(whole.bpb(), big.bpb(), 1e-12);
  EvalResult sum;
  for (int rank = 0; rank < 3; ++rank) {
    EvalOptions o = f64(PlanKind::Current, 16, 4, 32);
    o.rank = rank;
    o.world = 3;
    sum.add(evaluate(f.w, s, f.bc, o));
  }
  EXPECT_EQ(sum.targets, whole.targets);
  EXPECT_EQ(sum.bytes, whole.bytes);
  EXPECT_NEAR(sum.bpb(), whole.bpb(), 1e-12);
  EXPECT_NEAR(sum.bpb_stderr(), whole.bpb_stderr(), 1e-12);
}

TEST(Evaluator, StderrIsTheRatioEstimatorOverDocuments) {
  EvalResult r;
  r.docs = {{2.0, 10, 5}, {6.0, 20, 9}, {1.0, 10, 3}};
  for (auto& d : r.docs) { r.nll_sum += d.nll; r.bytes += d.bytes; r.targets += d.targets; }
  const double rr = 9.0 / 40.0;
  const double ss = std::pow(2 - rr * 10, 2) + std::pow(6 - rr * 20, 2) + std::pow(1 - rr * 10, 2);
  EXPECT_NEAR(r.bpb_stderr(), std::sqrt(3.0 / 2.0 * ss) / 40.0 / std::log(2.0), 1e-15);
}

}  // namespace
}  // namespace pgolf::test
