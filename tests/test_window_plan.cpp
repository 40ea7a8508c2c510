// Evaluation plans: window lists, per-target multiplicities and rank slices,
// checked against brute-force re-statements of the reference loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "data/error.h"
#include "eval/stream_plan.h"
#include "eval/window_plan.h"

namespace pgolf::test {
namespace {

using Counts = std::vector<uint32_t>;

// ---- Brute-force re-statements of the reference loops (T = number of targets) ----

// 2026-04-10_VarLenAttn: starts range(0, T, S) kept while ws + (L - S) < T;
// scored offsets [0 if ws == 0 else L - S, wlen).
std::vector<Window> ref_current(uint64_t T, uint64_t L, uint64_t S) {
  std::vector<Window> out;
  for (uint64_t ws = 0; ws < T; ws += S) {
    if (!(ws + (L - S) < T)) continue;
    uint64_t end = std::min(ws + L, T), wlen = end - ws;
    uint64_t s = ws == 0 ? 0 : L - S;
    out.push_back({ws, uint32_t(wlen), uint32_t(s)});
  }
  return out;
}

// 2026-03-19_SlidingWindowEval: starts range(0, T, S) kept if wlen >= S;
// scored offsets [0 if ws == 0 else wlen - S, wlen).
std::vector<Window> ref_legacy(uint64_t T, uint64_t L, uint64_t S) {
  std::vector<Window> out;
  for (uint64_t ws = 0; ws < T; ws += S) {
    uint64_t wlen = std::min(ws + L, T) - ws;
    if (wlen < S) continue;
    uint64_t s = ws == 0 ? 0 : wlen - S;
    out.push_back({ws, uint32_t(wlen), uint32_t(s)});
  }
  return out;
}

// Root eval_val: rows of L over the first (T // L) * L targets.
std::vector<Window> ref_standard(uint64_t T, uint64_t L) {
  std::vector<Window> out;
  for (uint64_t i = 0; i < T / L; ++i) out.push_back({i * L, uint32_t(L), 0});
  return out;
}

// Naive multiplicity: walk every scored position of every window.
Counts naive_counts(const std::vector<Window>& ws, uint64_t T) {
  Counts c(T, 0);
  for (const Window& w : ws)
    for (uint64_t o = w.score_from; o < w.len; ++o) c.at(w.start + o) += 1;
  return c;
}

// ---- Parameter grid: primes, powers of two, off-by-ones, N < L ----

struct Case {
  uint64_t N;
  uint32_t L, S;
};

std::string name(const Case& c) {
  return "N=" + std::to_string(c.N) + " L=" + std::to_string(c.L) + " S=" + std::to_string(c.S);
}

std::vector<Case> grid() {
  const uint64_t Ns[] = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 31, 32, 33, 63, 64, 65,
                         97, 100, 101, 127, 128, 129, 257, 1000, 1031, 2048, 2049, 4099};
  const uint32_t Ls[] = {1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 32, 64, 97, 128};
  std::vector<Case> out;
  for (uint32_t L : Ls) {
    std::vector<uint32_t> Ss;
    if (L <= 16) {
      for (uint32_t s = 1; s <= L; ++s) Ss.push_back(s);
    } else {
      for (uint32_t s : {1u, 2u, 3u, 7u, 13u, L / 2, L / 2 + 1, L - 1, L}) Ss.push_back(s);
    }
    for (uint32_t S : Ss)
      for (uint64_t N : Ns) out.push_back({N, L, S});
  }
  return out;
}

// ---- Argument validation ----

void expect_one_line_error(const std::function<void()>& fn) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_FALSE(m.empty());
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

TEST(WindowPlan, RejectsBadArguments) {
  expect_one_line_error([] { make_standard_plan(100, 0); });
  expect_one_line_error([] { make_standard_plan(1, 4); });
  expect_one_line_error([] { make_standard_plan(0, 4); });
  expect_one_line_error([] { make_standard_plan(4, 4); });  // 3 targets: no full row of 4
  expect_one_line_error([] { make_sliding_plan(100, 0, 1, PlanKind::Current); });
  expect_one_line_error([] { make_sliding_plan(100, 8, 0, PlanKind::Current); });
  expect_one_line_error([] { make_sliding_plan(100, 8, 9, PlanKind::Legacy); });
  expect_one_line_error([] { make_sliding_plan(1, 8, 4, PlanKind::Current); });
  expect_one_line_error([] { make_sliding_plan(100, 8, 4, PlanKind::Standard); });
  expect_one_line_error([] { make_sliding_plan(4, 8, 4, PlanKind::Legacy); });  // 3 targets < stride
  expect_one_line_error([] { make_record_sliding_plan(8, 8, 4, PlanKind::Current); });
  expect_one_line_error([] { trimmed_token_count(8, 8); });
  WindowPlan p = make_sliding_plan(100, 8, 4, PlanKind::Current);
  expect_one_line_error([&] { rank_slice(p, 0, 0); });
  expect_one_line_error([&] { rank_slice(p, -1, 4); });
  expect_one_line_error([&] { rank_slice(p, 4, 4); });
  expect_one_line_error([&] { rank_slice_whole_batches(p, 0, 1, 0); });
}

TEST(WindowPlan, AcceptsBoundaryArguments) {
  EXPECT_NO_THROW(make_sliding_plan(2, 1, 1, PlanKind::Current));
  EXPECT_NO_THROW(make_sliding_plan(2, 1, 1, PlanKind::Legacy));
  EXPECT_NO_THROW(make_standard_plan(2, 1));
  EXPECT_NO_THROW(make_sliding_plan(5, 8, 8, PlanKind::Current));
  EXPECT_NO_THROW(make_sliding_plan(5, 8, 4, PlanKind::Legacy));  // 4 targets = one stride
  EXPECT_STREQ(plan_kind_name(PlanKind::Standard), "standard");
  EXPECT_STREQ(plan_kind_name(PlanKind::Current), "current");
  EXPECT_STREQ(plan_kind_name(PlanKind::Legacy), "legacy");
}

// ---- Standard plan ----

TEST(WindowPlan, StandardTrimsToWholeRows) {
  for (uint64_t N : {2ull, 3ull, 8ull, 9ull, 10ull, 17ull, 100ull, 1031ull, 62021847ull}) {
    for (uint32_t L : {1u, 2u, 7u, 8u, 1024u, 2048u}) {
      if (N - 1 < L || (N > 100000 && L < 1024)) continue;  // keep the plan small
      SCOPED_TRACE("N=" + std::to_string(N) + " L=" + std::to_string(L));
      const uint64_t rows = (N - 1) / L;
      EXPECT_EQ(trimmed_token_count(N, L), rows * L + 1);
      WindowPlan p = make_standard_plan(N, L);
      EXPECT_EQ(p.kind, PlanKind::Standard);
      EXPECT_EQ(p.stride, L);
      EXPECT_EQ(p.num_tokens, N);
      ASSERT_EQ(p.windows.size(), rows);
      EXPECT_EQ(p.windows.front(), (Window{0, L, 0}));
      EXPECT_EQ(p.windows.back(), (Window{(rows - 1) * L, L, 0}));
      EXPECT_EQ(p.scored_targets(), rows * L);
      if (N < 100000) {
        EXPECT_EQ(p.windows, ref_standard(N - 1, L));
        Counts c = target_counts(p);
        for (uint64_t t = 0; t < N - 1; ++t) ASSERT_EQ(c[t], t < rows * L ? 1u : 0u) << "t=" << t;
      }
    }
  }
}

// ---- Current plan ----

TEST(WindowPlan, CurrentMatchesReferenceAndScoresEveryTargetOnce) {
  size_t cases = 0;
  for (const Case& c : grid()) {
    SCOPED_TRACE(name(c));
    const uint64_t T = c.N - 1;
    WindowPlan p = make_sliding_plan(c.N, c.L, c.S, PlanKind::Current);
    std::vector<Window> ref = ref_current(T, c.L, c.S);
    if (T > uint64_t(c.L - c.S)) {
      ASSERT_EQ(p.windows, ref);
    } else {
      // The one deliberate difference: the reference keeps no window here.
      ASSERT_TRUE(ref.empty());
      ASSERT_EQ(p.windows, (std::vector<Window>{{0, uint32_t(T), 0}}));
    }
    Counts counts = target_counts(p);
    ASSERT_EQ(counts, naive_counts(p.windows, T));
    for (uint64_t t = 0; t < T; ++t) ASSERT_EQ(counts[t], 1u) << "t=" << t;
    ASSERT_EQ(p.scored_targets(), T);
    for (const Window& w : p.windows) {
      ASSERT_GE(w.len, 1u);
      ASSERT_LE(w.len, c.L);
      ASSERT_LT(w.score_from, w.len);
    }
    ++cases;
  }
  EXPECT_GT(cases, 2000u);
}

TEST(WindowPlan, CurrentFirstAndLastWindows) {
  for (const Case& c : grid()) {
    SCOPED_TRACE(name(c));
    const uint64_t T = c.N - 1;
    WindowPlan p = make_sliding_plan(c.N, c.L, c.S, PlanKind::Current);
    ASSERT_FALSE(p.windows.empty());
    EXPECT_EQ(p.windows.front(), (Window{0, uint32_t(std::min<uint64_t>(c.L, T)), 0}));
    const Window& last = p.windows.back();
    EXPECT_EQ(last.start + last.len, T);  // the last window always reaches the end
    EXPECT_EQ(last.start % c.S, 0u);
    // The next stride step would score nothing: its scored part starts at or past T.
    EXPECT_GE(last.start + c.S + (c.L - c.S), T);
    // Later windows score from L - S and are full unless they hit the end.
    for (size_t i = 1; i < p.windows.size(); ++i) {
      EXPECT_EQ(p.windows[i].score_from, c.L - c.S);
      if (i + 1 < p.windows.size()) {
        EXPECT_EQ(p.windows[i].len, c.L);
      }
    }
  }
}

TEST(WindowPlan, CurrentShortStreams) {
  // N < L: one window holding every target, all scored with the context so far.
  WindowPlan p = make_sliding_plan(6, 16, 4, PlanKind::Current);
  EXPECT_EQ(p.windows, (std::vector<Window>{{0, 5, 0}}));
  // N = L + 1 exactly: one full window.
  p = make_sliding_plan(17, 16, 4, PlanKind::Current);
  EXPECT_EQ(p.windows, (std::vector<Window>{{0, 16, 0}}));
  // One more target: a second window that scores only the new one.
  p = make_sliding_plan(18, 16, 4, PlanKind::Current);
  EXPECT_EQ(p.windows, (std::vector<Window>{{0, 16, 0}, {4, 13, 12}}));
  // T = L - S + 1 < L: window 0 only (the next would start scoring at L >= T).
  p = make_sliding_plan(14, 16, 4, PlanKind::Current);
  EXPECT_EQ(p.windows, (std::vector<Window>{{0, 13, 0}}));
}

TEST(WindowPlan, CurrentHandWorkedExample) {
  // T = 20, L = 8, S = 3: starts while ws + 5 < 20 -> 0, 3, 6, 9, 12.
  WindowPlan p = make_sliding_plan(21, 8, 3, PlanKind::Current);
  std::vector<Window> want = {{0, 8, 0}, {3, 8, 5}, {6, 8, 5}, {9, 8, 5}, {12, 8, 5}};
  EXPECT_EQ(p.windows, want);
}

TEST(WindowPlan, StrideEqualToLengthIsStandardPlusTail) {
  for (const Case& c : grid()) {
    if (c.S != c.L) continue;
    SCOPED_TRACE(name(c));
    const uint64_t T = c.N - 1, rows = T / c.L, tail = T % c.L;
    WindowPlan cur = make_sliding_plan(c.N, c.L, c.L, PlanKind::Current);
    std::vector<Window> want = ref_standard(T, c.L);
    if (tail > 0) want.push_back({rows * c.L, uint32_t(tail), 0});
    ASSERT_EQ(cur.windows, want);
    if (rows > 0) {
      WindowPlan std_plan = make_standard_plan(c.N, c.L);
      ASSERT_TRUE(std::equal(std_plan.windows.begin(), std_plan.windows.end(), cur.windows.begin()));
      ASSERT_EQ(cur.scored_targets(), std_plan.scored_targets() + tail);
    }
    // Legacy with S = L keeps only full windows: exactly the standard rows, no tail.
    if (rows > 0) {
      ASSERT_EQ(make_sliding_plan(c.N, c.L, c.L, PlanKind::Legacy).windows, ref_standard(T, c.L));
    }
  }
}

// ---- Legacy plan ----

TEST(WindowPlan, LegacyMatchesReferenceLoopAndMultiplicities) {
  size_t cases = 0, double_counted = 0;
  for (const Case& c : grid()) {
    const uint64_t T = c.N - 1;
    if (T < c.S) continue;  // no window: rejected (tested above)
    SCOPED_TRACE(name(c));
    WindowPlan p = make_sliding_plan(c.N, c.L, c.S, PlanKind::Legacy);
    ASSERT_EQ(p.windows, ref_legacy(T, c.L, c.S));
    Counts counts = target_counts(p);
    Counts naive = naive_counts(ref_legacy(T, c.L, c.S), T);
    ASSERT_EQ(counts, naive);
    uint64_t sum = 0;
    for (uint32_t k : counts) sum += k;
    ASSERT_EQ(p.scored_targets(), sum);
    // Only the final S targets can be miscounted; all earlier ones count once.
    for (uint64_t t = 0; t + c.S < T; ++t) ASSERT_EQ(counts[t], 1u) << "t=" << t;
    // They drop to zero only when S > L / 2.
    if (2 * c.S <= c.L) {
      for (uint64_t t = T - c.S; t < T; ++t) ASSERT_GE(counts[t], 1u) << "t=" << t;
    }
    for (uint64_t t = T - c.S; t < T; ++t) double_counted += counts[t] > 1;
    ++cases;
  }
  EXPECT_GT(cases, 1500u);
  EXPECT_GT(double_counted, 1000u);  // the bug is real across the grid
}

TEST(WindowPlan, LegacyHandWorkedDoubleCounting) {
  // T = 20, L = 8, S = 2: windows at 0..18; 14, 16, 18 run past the end and,
  // with the full window at 12, all score targets 18 and 19.
  WindowPlan p = make_sliding_plan(21, 8, 2, PlanKind::Legacy);
  ASSERT_EQ(p.windows.size(), 10u);
  EXPECT_EQ(p.windows[0], (Window{0, 8, 0}));
  EXPECT_EQ(p.windows[6], (Window{12, 8, 6}));
  EXPECT_EQ(p.windows[7], (Window{14, 6, 4}));
  EXPECT_EQ(p.windows[8], (Window{16, 4, 2}));
  EXPECT_EQ(p.windows[9], (Window{18, 2, 0}));
  Counts c = target_counts(p);
  for (uint64_t t = 0; t < 18; ++t) EXPECT_EQ(c[t], 1u) << t;
  EXPECT_EQ(c[18], 4u);
  EXPECT_EQ(c[19], 4u);
  EXPECT_EQ(p.scored_targets(), 26u);

  // T = 20, L = 8, S = 3: the window at 18 (2 targets) is skipped; 15 rescans 17..19.
  p = make_sliding_plan(21, 8, 3, PlanKind::Legacy);
  std::vector<Window> want = {{0, 8, 0}, {3, 8, 5}, {6, 8, 5}, {9, 8, 5}, {12, 8, 5}, {15, 5, 2}};
  EXPECT_EQ(p.windows, want);
  c = target_counts(p);
  EXPECT_EQ(c[16], 1u);
  EXPECT_EQ(c[17], 2u);
  EXPECT_EQ(c[19], 2u);

  // S > L / 2 can leave a target unscored: T = 19, L = 8, S = 5 -> target 18 never scored.
  p = make_sliding_plan(20, 8, 5, PlanKind::Legacy);
  c = target_counts(p);
  EXPECT_EQ(c[17], 1u);
  EXPECT_EQ(c[18], 0u);
}

TEST(WindowPlan, LegacyShortStream) {
  // N < L: the first window scores every target, later ones rescore the last S.
  WindowPlan p = make_sliding_plan(11, 16, 4, PlanKind::Legacy);  // T = 10
  EXPECT_EQ(p.windows, (std::vector<Window>{{0, 10, 0}, {4, 6, 2}}));
  Counts c = target_counts(p);
  EXPECT_EQ(c, (Counts{1, 1, 1, 1, 1, 1, 2, 2, 2, 2}));
}

TEST(WindowPlan, RecordPlansRunOnTheTrimmedStream) {
  // As the records ran: T a multiple of L, so the current plan has no partial
  // window and legacy scores the last S targets exactly L / S times.
  for (uint64_t N : {1025ull, 3000ull, 4097ull, 10007ull}) {
    const uint32_t L = 1024, S = 64;
    SCOPED_TRACE("N=" + std::to_string(N));
    const uint64_t kept = trimmed_token_count(N, L) - 1;
    WindowPlan cur = make_record_sliding_plan(N, L, S, PlanKind::Current);
    EXPECT_EQ(cur.num_tokens, N);
    EXPECT_EQ(cur.windows, make_sliding_plan(kept + 1, L, S, PlanKind::Current).windows);
    for (const Window& w : cur.windows) EXPECT_EQ(w.len, L);
    Counts c = target_counts(cur);
    ASSERT_EQ(c.size(), N - 1);
    for (uint64_t t = 0; t < N - 1; ++t) ASSERT_EQ(c[t], t < kept ? 1u : 0u) << t;

    WindowPlan leg = make_record_sliding_plan(N, L, S, PlanKind::Legacy);
    c = target_counts(leg);
    for (uint64_t t = 0; t < N - 1; ++t) {
      uint32_t want = t >= kept ? 0u : t + S >= kept ? L / S : 1u;
      ASSERT_EQ(c[t], want) << t;
    }
    EXPECT_EQ(leg.scored_targets(), kept + uint64_t(S) * (L / S - 1));
  }
}

// ---- Rank slices ----

TEST(WindowPlan, RankSlicesMatchReferenceFormulaAndCoverOnce) {
  const std::tuple<uint64_t, uint32_t, uint32_t, PlanKind> plans[] = {
      {2, 1, 1, PlanKind::Current},        {9, 8, 8, PlanKind::Standard},   {100, 8, 3, PlanKind::Current},
      {1031, 16, 5, PlanKind::Legacy},     {4099, 13, 13, PlanKind::Standard}, {40961, 1024, 64, PlanKind::Current},
      {65537, 2048, 64, PlanKind::Legacy}, {101, 7, 2, PlanKind::Legacy}};
  for (const auto& [N, L, S, kind] : plans) {
    WindowPlan p = kind == PlanKind::Standard ? make_standard_plan(N, L) : make_sliding_plan(N, L, S, kind);
    const size_t W = p.windows.size();
    for (int world : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 31, 64, 1000}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " W=" + std::to_string(W) + " world=" + std::to_string(world));
      std::vector<int> owner(W, -1);
      size_t expected_begin = 0;
      for (int r = 0; r < world; ++r) {
        auto [b, e] = rank_slice(p, r, world);
        EXPECT_EQ(b, W * size_t(r) / size_t(world));  // the reference: (W * rank) // world
        EXPECT_EQ(e, W * size_t(r + 1) / size_t(world));
        EXPECT_EQ(b, expected_begin);  // contiguous, in rank order
        EXPECT_LE(b, e);
        for (size_t i = b; i < e; ++i) {
          EXPECT_EQ(owner[i], -1) << "window " << i << " given twice";
          owner[i] = r;
        }
        expected_begin = e;
      }
      EXPECT_EQ(expected_begin, W);
      for (size_t i = 0; i < W; ++i) EXPECT_NE(owner[i], -1) << "window " << i << " unassigned";
    }
  }
}

TEST(WindowPlan, BatchAlignedRankSlicesKeepOneRankBatches) {
  // pgolf eval's split: whole batches, so every window keeps its one-rank batch.
  for (uint64_t N : {2ull, 100ull, 1031ull, 40961ull}) {
    const WindowPlan p = make_sliding_plan(N, 16, 3, PlanKind::Current);
    const size_t W = p.windows.size();
    for (size_t batch : {1u, 7u, 32u, 100000u})
      for (int world : {1, 2, 3, 8, 64}) {
        SCOPED_TRACE("N=" + std::to_string(N) + " batch=" + std::to_string(batch) + " world=" + std::to_string(world));
        size_t expected_begin = 0, most = 0, least = SIZE_MAX;
        for (int r = 0; r < world; ++r) {
          auto [b, e] = rank_slice_batch_aligned(p, r, world, batch);
          EXPECT_EQ(b, expected_begin);       // contiguous, in rank order
          EXPECT_EQ(b % batch, 0u);           // starts on a one-rank batch boundary
          EXPECT_TRUE(e % batch == 0 || e == W);
          most = std::max(most, (e - b + batch - 1) / batch);
          least = std::min(least, (e - b + batch - 1) / batch);
          expected_begin = e;
        }
        EXPECT_EQ(expected_begin, W);
        EXPECT_LE(most - least, 1u);  // batches per rank differ by at most one
      }
  }
  const WindowPlan p = make_standard_plan(100 * 8 + 1, 8);  // 100 rows, batches of 32: 4 batches
  EXPECT_EQ(rank_slice_batch_aligned(p, 0, 3, 32), (std::pair<size_t, size_t>{0, 32}));
  EXPECT_EQ(rank_slice_batch_aligned(p, 1, 3, 32), (std::pair<size_t, size_t>{32, 64}));
  EXPECT_EQ(rank_slice_batch_aligned(p, 2, 3, 32), (std::pair<size_t, size_t>{64, 100}));
  EXPECT_EQ(rank_slice_batch_aligned(p, 4, 8, 32), (std::pair<size_t, size_t>{64, 64}));  // nothing left
  expect_one_line_error([&] { rank_slice_batch_aligned(p, 0, 1, 0); });
  expect_one_line_error([&] { rank_slice_batch_aligned(p, 2, 2, 4); });
}

TEST(WindowPlan, RankSliceHandlesHugeCounts) {
  // The split formula must not overflow for large window counts.
  WindowPlan p{PlanKind::Current, 1, 1, 0, {}};
  p.windows.resize(3000001);
  auto [b, e] = rank_slice(p, 6, 7);
  EXPECT_EQ(b, 3000001ull * 6 / 7);
  EXPECT_EQ(e, 3000001u);
}

TEST(WindowPlan, RankSliceWholeBatchesDropsTheRemainder) {
  // 2026-04-10_VarLenAttn standard eval: each rank keeps whole batches only.
  WindowPlan p = make_standard_plan(100 * 8 + 1, 8);  // 100 rows
  auto [b0, e0] = rank_slice_whole_batches(p, 0, 3, 32);  // rank 0: rows [0, 33) -> [0, 32)
  EXPECT_EQ(b0, 0u);
  EXPECT_EQ(e0, 32u);
  auto [b1, e1] = rank_slice_whole_batches(p, 1, 3, 32);  // rows [33, 66) -> [33, 65)
  EXPECT_EQ(b1, 33u);
  EXPECT_EQ(e1, 65u);
  auto [b2, e2] = rank_slice_whole_batches(p, 2, 3, 64);  // rows [66, 100): 34 < 64 -> none
  EXPECT_EQ(b2, 66u);
  EXPECT_EQ(e2, 66u);
  auto [b3, e3] = rank_slice_whole_batches(p, 0, 1, 1);
  EXPECT_EQ(b3, 0u);
  EXPECT_EQ(e3, 100u);
}

TEST(WindowPlan, VarLenAttnLoggedStandardEvalSkipsPartialBatches) {
  // Its log: val_tokens 40540160 (already trimmed), L = 2048, 8 ranks, and
  // 524288 // 8 tokens per rank per batch = 32 rows. Each rank holds 2474 or
  // 2475 rows and keeps 77 * 32 = 2464 of them: 19712 of 19795 rows scored.
  WindowPlan p = make_standard_plan(40540160 + 1, 2048);
  ASSERT_EQ(p.windows.size(), 19795u);
  size_t kept = 0;
  for (int r = 0; r < 8; ++r) {
    auto [b, e] = rank_slice_whole_batches(p, r, 8, 32);
    EXPECT_EQ(e - b, 2464u) << "rank " << r;
    kept += e - b;
  }
  EXPECT_EQ(kept, 19712u);
}

// ---- target_counts on malformed plans ----

TEST(WindowPlan, TargetCountsRejectsWindowsPastTheEnd) {
  WindowPlan p{PlanKind::Current, 4, 4, 5, {{2, 4, 0}}};  // targets 2..5, but only 4 exist
  expect_one_line_error([&] { target_counts(p); });
}

// ---- Document segments (current plan's attention mask) ----

TEST(WindowPlan, SegmentStartsCutAtBos) {
  const uint16_t B = 1;
  std::vector<uint16_t> in = {5, 6, B, 7, 8, 9, B, B, 4};
  EXPECT_EQ(segment_starts(in.data(), 9, B), (std::vector<uint32_t>{0, 2, 6, 7}));
  in[0] = B;  // a BOS at offset 0 does not add a second start
  EXPECT_EQ(segment_starts(in.data(), 9, B), (std::vector<uint32_t>{0, 2, 6, 7}));
  // Only the inputs count: a BOS right after the window (its last target) is not a start.
  EXPECT_EQ(segment_starts(in.data(), 6, B), (std::vector<uint32_t>{0, 2}));
  EXPECT_EQ(segment_starts(in.data(), 1, B), (std::vector<uint32_t>{0}));
  EXPECT_TRUE(segment_starts(in.data(), 0, B).empty());
  std::vector<uint16_t> none(10, 3);
  EXPECT_EQ(segment_starts(none.data(), 10, B), (std::vector<uint32_t>{0}));
}

TEST(WindowPlan, SegmentStartsCutLongDocuments) {
  // max_segment restarts the count at each BOS, like the record's cu_seqlens builder.
  const uint16_t B = 1;
  std::vector<uint16_t> in(20, 9);
  in[7] = B;
  EXPECT_EQ(segment_starts(in.data(), 20, B, 4), (std::vector<uint32_t>{0, 4, 7, 11, 15, 19}));
  EXPECT_EQ(segment_starts(in.data(), 20, B, 0), (std::vector<uint32_t>{0, 7}));
  EXPECT_EQ(segment_starts(in.data(), 20, B, 20), (std::vector<uint32_t>{0, 7}));
}

// The streaming plan: contiguous segments of the trimmed stream, each scored
// target in exactly one, warm-up of L - 1 fed targets before each (fewer at
// the start), steps from the longest fed length, rank slices covering once.
TEST(StreamPlan, SegmentsCoverTheTrimmedStreamOnce) {
  for (uint64_t N : {uint64_t(17), uint64_t(100), uint64_t(1001)}) {
    for (uint32_t L : {1u, 4u, 16u}) {
      for (uint32_t n : {1u, 3u, 7u, 500u}) {
        if (N - 1 < L) continue;
        const StreamPlan p = make_stream_plan(N, L, 5, n);
        const uint64_t T = (N - 1) / L * L;
        EXPECT_EQ(p.num_targets, T);
        EXPECT_EQ(p.segments.size(), std::min<uint64_t>(n, T));
        Counts scored(T, 0);
        uint64_t longest = 0;
        for (const StreamSegment& s : p.segments) {
          EXPECT_LT(s.score_from, s.end);
          EXPECT_EQ(s.feed_from, s.score_from >= L - 1 ? s.score_from - (L - 1) : 0);
          for (uint64_t t = s.score_from; t < s.end; ++t) ++scored[t];
          longest = std::max(longest, s.fed());
        }
        EXPECT_EQ(scored, Counts(T, 1)) << "N " << N << " L " << L << " n " << n;
        EXPECT_EQ(p.steps(0, p.segments.size()), (longest + 4) / 5);
        for (int world : {1, 2, 3, 8}) {
          size_t next = 0;
          for (int r = 0; r < world; ++r) {
            const auto [b, e] = rank_slice(p, r, world);
            EXPECT_EQ(b, next);
            next = e;
          }
          EXPECT_EQ(next, p.segments.size());
        }
      }
    }
  }
  // Hand-worked: 33 tokens, L = 8: T = 32 in 3 segments [0, 10), [10, 21), [21, 32).
  const StreamPlan p = make_stream_plan(33, 8, 8, 3);
  ASSERT_EQ(p.segments.size(), 3u);
  EXPECT_EQ(p.segments[0].feed_from, 0u);
  EXPECT_EQ(p.segments[1].feed_from, 3u);
  EXPECT_EQ(p.segments[1].score_from, 10u);
  EXPECT_EQ(p.segments[2].feed_from, 14u);
  EXPECT_EQ(p.segments[2].end, 32u);
  EXPECT_EQ(p.steps(0, 3), 3u);  // the longest feeds 18
  expect_one_line_error([] { make_stream_plan(100, 8, 0, 2); });
  expect_one_line_error([] { make_stream_plan(100, 8, 4, 0); });
  expect_one_line_error([] { make_stream_plan(8, 8, 4, 2); });  // 7 targets: no full row of 8
  expect_one_line_error([] { make_stream_plan(100, 0, 4, 2); });
  expect_one_line_error([&] { rank_slice(p, 3, 3); });
}

}  // namespace
}  // namespace pgolf::test
