// TTT chunk plans: documents, chunks, windows, rank splits and batch steps,
// checked by hand on small streams and against a brute-force restatement of
// the reference's loops (ttt/chunk_plan.h names the reference files).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "data/error.h"
#include "data/token_stream.h"
#include "tests/test_util.h"
#include "ttt/chunk_plan.h"
#include "ttt/step_shapes.h"

namespace pgolf {
namespace {

constexpr uint16_t B = 1;  // BOS
using Tokens = std::vector<uint16_t>;
using Split = TttSchedule::Split;

TttPlan plan_of(const Tokens& t, uint32_t chunk, uint32_t context, uint32_t batch = 64, int rank = 0,
                int world = 1, TttSchedule s = TttSchedule::lora_ttt_0317()) {
  return make_ttt_plan(t.data(), t.size(), B, chunk, context, batch, rank, world, s);
}

std::vector<TttPlan> all_ranks(const Tokens& t, uint32_t chunk, uint32_t context, uint32_t batch,
                               int world, TttSchedule s) {
  std::vector<TttPlan> out;
  for (int r = 0; r < world; ++r) out.push_back(plan_of(t, chunk, context, batch, r, world, s));
  return out;
}

// ---------------------------------------------------------------- by hand

TEST(ChunkPlan, DocumentsIncludeTheNextBosAsLastTarget) {
  //            0  1  2  3  4  5  6  7  8
  Tokens t = {B, 5, 6, 7, B, 8, 9, B, 4};
  TttPlan p = plan_of(t, 2, 3);
  ASSERT_EQ(p.docs.size(), 3u);
  EXPECT_EQ(p.docs[0].bos, 0u);
  EXPECT_EQ(p.docs[0].end, 5u);  // targets 1..4, the last being the next BOS
  EXPECT_EQ(p.docs[0].num_targets(), 4u);
  EXPECT_EQ(p.docs[0].num_chunks, 2u);
  EXPECT_EQ(p.docs[1].bos, 4u);
  EXPECT_EQ(p.docs[1].end, 8u);
  EXPECT_EQ(p.docs[1].num_chunks, 2u);
  EXPECT_EQ(p.docs[2].bos, 7u);
  EXPECT_EQ(p.docs[2].end, 9u);  // the last document runs to the stream end
  EXPECT_EQ(p.docs[2].num_chunks, 1u);
  EXPECT_FALSE(p.dropped_empty_last_doc);
}

TEST(ChunkPlan, ChunkTargetsAndWindowsExact) {
  Tokens t = {B, 5, 6, 7, B, 8, 9, B, 4};
  TttPlan p = plan_of(t, 2, 3);
  TttChunk c0 = chunk_at(p, 0, 0);
  EXPECT_EQ(c0.target_begin, 1u);
  EXPECT_EQ(c0.target_end, 3u);
  EXPECT_EQ(c0.context_begin, 0u);  // inputs tok[0..2) -> targets tok[1..3)
  EXPECT_EQ(c0.input_len(), 2u);
  EXPECT_EQ(c0.score_offset(), 0u);
  EXPECT_FALSE(c0.last);
  TttChunk c1 = chunk_at(p, 0, 1);
  EXPECT_EQ(c1.target_begin, 3u);
  EXPECT_EQ(c1.target_end, 5u);
  EXPECT_EQ(c1.context_begin, 1u);  // last 3 inputs before target 4: tok[1..4)
  EXPECT_EQ(c1.input_len(), 3u);
  EXPECT_EQ(c1.score_offset(), 1u);
  EXPECT_TRUE(c1.last);
  TttChunk d1 = chunk_at(p, 1, 1);  // short last chunk: one target (tok[7], the next BOS)
  EXPECT_EQ(d1.target_begin, 7u);
  EXPECT_EQ(d1.target_end, 8u);
  EXPECT_EQ(d1.context_begin, 4u);  // 3 inputs, starting at the document's BOS
  EXPECT_EQ(d1.input_len(), 3u);
  EXPECT_EQ(d1.score_offset(), 2u);
  EXPECT_THROW(chunk_at(p, 1, 2), Error);
  EXPECT_THROW(chunk_at(p, 3, 0), Error);
}

TEST(ChunkPlan, StreamNotStartingWithBosSkipsThePrefix) {
  Tokens t = {7, 8, 9, B, 5, 6};
  TttPlan p = plan_of(t, 4, 8);
  ASSERT_EQ(p.docs.size(), 1u);
  EXPECT_EQ(p.docs[0].bos, 3u);
  TttChunk c = chunk_at(p, 0, 0);
  EXPECT_EQ(c.target_begin, 4u);  // targets 1..3 (the first BOS included) are never scored
  EXPECT_EQ(c.target_end, 6u);
  EXPECT_EQ(c.context_begin, 3u);  // the window never reaches into the prefix
  EXPECT_EQ(p.rank_targets(), 2u);
}

TEST(ChunkPlan, EmptyDocumentHasOneTargetItsSuccessorsBos) {
  Tokens t = {B, B, 5};
  TttPlan p = plan_of(t, 4, 8);
  ASSERT_EQ(p.docs.size(), 2u);
  EXPECT_EQ(p.docs[0].num_targets(), 1u);
  TttChunk c = chunk_at(p, 0, 0);
  EXPECT_EQ(c.target_begin, 1u);
  EXPECT_EQ(c.target_end, 2u);
  EXPECT_EQ(c.input_len(), 1u);
  EXPECT_TRUE(c.last);
}

TEST(ChunkPlan, TrailingLoneBosIsDroppedNotScoredTwice) {
  Tokens t = {B, 5, 6, B};
  TttPlan p = plan_of(t, 4, 8);
  ASSERT_EQ(p.docs.size(), 1u);  // the reference asserts here; we drop the empty document
  EXPECT_TRUE(p.dropped_empty_last_doc);
  EXPECT_EQ(p.docs[0].end, 4u);  // the trailing BOS is still scored, as doc 0's last target
  Tokens single = {3, B};
  TttPlan q = plan_of(single, 4, 8);
  EXPECT_TRUE(q.docs.empty());
  EXPECT_TRUE(q.batches.empty());
}

TEST(ChunkPlan, DocumentLongerThanContext) {
  Tokens t(22, 5);
  t[0] = B;  // one document, 21 targets
  TttPlan p = plan_of(t, 4, 8);
  ASSERT_EQ(p.docs[0].num_chunks, 6u);
  for (uint32_t c = 0; c < 6; ++c) {
    TttChunk k = chunk_at(p, 0, c);
    uint64_t end = std::min<uint64_t>(4 * (c + 1), 21);
    EXPECT_EQ(k.target_begin, 4 * c + 1u);
    EXPECT_EQ(k.target_end, end + 1);
    EXPECT_EQ(k.input_len(), std::min<uint64_t>(end, 8));
    EXPECT_EQ(k.context_begin, end > 8 ? end - 8 : 0);
  }
  TttChunk last = chunk_at(p, 0, 5);  // 1 target, window [13, 21)
  EXPECT_EQ(last.num_targets(), 1u);
  EXPECT_EQ(last.score_offset(), 7u);
}

TEST(ChunkPlan, RankSliceSortedByChunkCountStable) {
  // Documents of 5, 1, 9, 2, 5, 1 targets; chunk 4 -> 2, 1, 3, 1, 2, 1 chunks.
  Tokens t;
  for (int targets : {5, 1, 9, 2, 5, 1}) {
    t.push_back(B);
    for (int i = 1; i < targets; ++i) t.push_back(7);
  }
  t.push_back(9);  // the last document's final target
  TttPlan p = plan_of(t, 4, 16, 2);
  ASSERT_EQ(p.docs.size(), 6u);
  EXPECT_EQ(p.rank_docs, (std::vector<uint32_t>{1, 3, 5, 0, 4, 2}));
  ASSERT_EQ(p.batches.size(), 3u);
  EXPECT_EQ(p.batches[0].docs, (std::vector<uint32_t>{1, 3}));
  EXPECT_EQ(p.batches[0].num_steps, 1u);
  EXPECT_EQ(p.batches[2].docs, (std::vector<uint32_t>{4, 2}));
  EXPECT_EQ(p.batches[2].num_steps, 3u);
  // Two ranks: contiguous slices [0, 3) and [3, 6) of the stream order.
  TttPlan r0 = plan_of(t, 4, 16, 2, 0, 2), r1 = plan_of(t, 4, 16, 2, 1, 2);
  EXPECT_EQ(r0.rank_docs, (std::vector<uint32_t>{1, 0, 2}));
  EXPECT_EQ(r1.rank_docs, (std::vector<uint32_t>{3, 5, 4}));
  EXPECT_EQ(r0.total_batches, 4u);
}

TEST(ChunkPlan, StepRowsPaddingAndUpdates) {
  Tokens t;
  for (int targets : {9, 2}) {
    t.push_back(B);
    for (int i = 1; i < targets; ++i) t.push_back(7);
  }
  t.push_back(9);
  TttPlan p = plan_of(t, 4, 6, 2);
  ASSERT_EQ(p.batches.size(), 1u);
  const TttBatch& b = p.batches[0];
  EXPECT_EQ(b.docs, (std::vector<uint32_t>{1, 0}));
  ASSERT_EQ(b.num_steps, 3u);
  TttStep s0 = step_at(p, b, 0);
  EXPECT_EQ(s0.width, 4u);
  EXPECT_EQ(s0.train_offset, 0u);
  EXPECT_TRUE(s0.update);  // doc 0 goes on: its chunk 0 is trained on
  ASSERT_TRUE(s0.rows[0].has_value());
  EXPECT_TRUE(s0.rows[0]->last);  // doc 1's only chunk: scored, masked out of the update
  TttStep s1 = step_at(p, b, 1);
  EXPECT_FALSE(s1.rows[0].has_value());  // doc 1 is done
  EXPECT_EQ(s1.width, 6u);         // min(2 * 4, 6)
  EXPECT_EQ(s1.train_offset, 2u);  // 4 - (8 - 6)
  EXPECT_EQ(s1.rows[1]->score_offset(), 2u);
  EXPECT_TRUE(s1.update);
  TttStep s2 = step_at(p, b, 2);
  EXPECT_FALSE(s2.update);  // the last step only scores
  EXPECT_EQ(s2.rows[1]->num_targets(), 1u);
  EXPECT_THROW(step_at(p, b, 3), Error);
}

// Documents with these target counts, in stream order (each BOS-led, 7s after).
Tokens stream_of(std::initializer_list<int> targets) {
  Tokens t;
  for (int n : targets) {
    t.push_back(B);
    for (int i = 1; i < n; ++i) t.push_back(7);
  }
  t.push_back(9);
  return t;
}

using Shape = TttStepShape;

TEST(StepShapes, ShortBatchIsPaddedInFrontAndLastStepTrainsAsItsTwin) {
  // C 4, L 8, B 2: documents of 4, 4 and 9 targets (1, 1 and 3 chunks).
  const TttPlan p = plan_of(stream_of({4, 9, 4}), 4, 8, 2);
  ASSERT_EQ(p.batches.size(), 2u);
  EXPECT_EQ(ttt_batch_rows(p), 2);
  const TttStep s0 = ttt_padded_step(p, p.batches[1], 0, 2);
  ASSERT_EQ(s0.rows.size(), 2u);
  EXPECT_FALSE(s0.rows[0].has_value());  // the added row: finished from the start
  EXPECT_EQ(s0.rows[1]->doc, 1u);
  EXPECT_EQ(ttt_step_rows(s0, 1), (std::vector<int64_t>{1}));
  EXPECT_EQ(ttt_step_rows(s0, 2), (std::vector<int64_t>{0, 1}));
  const auto shapes = ttt_step_shapes(p);
  ASSERT_EQ(shapes.size(), 2u);
  // {batch rows, rows, width, first row, update}
  EXPECT_EQ(shapes[0], (std::vector<Shape>{{2, 2, 4, 0, false}}));
  // The last step (width 8, no update in the plan) runs as step 1's shape.
  EXPECT_EQ(shapes[1], (std::vector<Shape>{{2, 1, 4, 1, true}, {2, 1, 8, 1, true}, {2, 1, 8, 1, true}}));
  EXPECT_FALSE(step_at(p, p.batches[1], 2).update);  // the plan itself is unchanged
}

TEST(StepShapes, OnceOnlyShapeRunsAsTheSmallestRepeatingOneThatHoldsIt) {
  // C 4, L 8, B 4: seven documents of 2 chunks, then one of 3.
  const TttPlan p = plan_of(stream_of({8, 8, 8, 8, 8, 8, 8, 12}), 4, 8, 4);
  ASSERT_EQ(p.batches.size(), 2u);
  const auto shapes = ttt_step_shapes(p);
  const Shape first{4, 4, 4, 0, true}, wide{4, 4, 8, 0, true};
  EXPECT_EQ(shapes[0], (std::vector<Shape>{first, wide}));
  // Step 2 has one active row ({4, 1, 8, 3, false}, once): it runs as
  // the 4-row shape with an update, padded with finished rows.
  EXPECT_EQ(shapes[1], (std::vector<Shape>{first, wide, wide}));
  const TttStep s2 = ttt_padded_step(p, p.batches[1], 2, 4);
  EXPECT_EQ(ttt_step_rows(s2, 4), (std::vector<int64_t>{0, 1, 2, 3}));
}

// One-rank plans of the shared validation stream in both flavours, with the
// recipes' chunk and context: lora-0317 (C 256, L 1024), varlen-0410 (C 64, L 2048).
std::vector<TttPlan> shared_validation_plans() {
  TokenStream ts({test::kValShard});
  const Tokens tok = ts.slice(0, ts.size());
  return {make_ttt_plan(tok.data(), tok.size(), B, 256, 1024, 64, 0, 1, TttSchedule::lora_ttt_0317()),
          make_ttt_plan(tok.data(), tok.size(), B, 64, 2048, 64, 0, 1, TttSchedule::varlen_0410())};
}

// On the shared validation stream, both flavours: every step forwards its
// active rows within its shape, and no shape that comes once has a
// repeating one that could hold it.
TEST(StepShapes, SharedValidationPlansKeepEveryActiveRow) {
  for (const TttPlan& p : shared_validation_plans()) {
    const int64_t R = ttt_batch_rows(p);
    const auto shapes = ttt_step_shapes(p);
    ASSERT_EQ(shapes.size(), p.batches.size());
    std::map<Shape, int> count;
    for (size_t i = 0; i < p.batches.size(); ++i) {
      ASSERT_EQ(shapes[i].size(), p.batches[i].num_steps);
      for (uint32_t s = 0; s < p.batches[i].num_steps; ++s) {
        const Shape& sh = shapes[i][s];
        const TttStep st = ttt_padded_step(p, p.batches[i], s, R);
        const std::vector<int64_t> rows = ttt_step_rows(st, sh.rows);
        ASSERT_EQ(int64_t(rows.size()), sh.rows);
        EXPECT_EQ(sh.batch_rows, R);
        EXPECT_EQ(sh.width, int64_t(st.width));
        EXPECT_GE(sh.update, st.update);
        if (sh.first_row >= 0) {
          EXPECT_EQ(rows.front(), sh.first_row);
        }
        EXPECT_EQ(rows.back() - rows.front() + 1, int64_t(rows.size()));  // sorted batches: one range
        for (int64_t b = 0; b < R; ++b)
          if (st.rows[size_t(b)]) {
            EXPECT_TRUE(std::binary_search(rows.begin(), rows.end(), b));
          }
        ++count[sh];
      }
    }
    for (const auto& [sh, n] : count) {
      if (n > 1) continue;
      for (const auto& [c, m] : count)
        EXPECT_FALSE(m > 1 && c.width == sh.width && c.rows > sh.rows && c.update >= sh.update)
            << "C " << p.chunk << ": a once-only shape of " << sh.rows << " rows could run as one of " << c.rows;
    }
    std::printf("C %u, L %u: %zu batches of %lld rows, %zu device shapes\n", p.chunk, p.context, p.batches.size(),
                (long long)R, count.size());
  }
}

// Base windows: every target of a batch's documents after the first chunk
// exactly once, each from a window that starts where its chunk's window
// starts (so it sees the same tokens) and reaches it.
void expect_base_windows_cover_later_chunks(const TttPlan& p, uint64_t* positions = nullptr) {
  for (const TttBatch& batch : p.batches) {
    std::map<uint64_t, int> seen;  // target position -> times scored
    uint32_t prev_doc = UINT32_MAX;
    uint64_t prev_end = 0;
    for (const TttBaseWindow& w : ttt_base_windows(p, batch)) {
      const TttDocument& d = p.docs[w.doc];
      ASSERT_TRUE(std::count(batch.docs.begin(), batch.docs.end(), w.doc));
      if (w.doc == prev_doc) {
        EXPECT_EQ(w.target_begin, prev_end);  // a document's windows in target order, back to back
      }
      prev_doc = w.doc, prev_end = w.target_end;
      EXPECT_LE(w.input_len(), p.context);
      EXPECT_LT(w.target_begin, w.target_end);
      EXPECT_GE(w.context_begin, d.bos);
      EXPECT_LE(w.target_end, d.end);
      if (positions) *positions += w.input_len();
      for (uint64_t t = w.target_begin; t < w.target_end; ++t) {
        ++seen[t];
        const TttChunk ch = chunk_at(p, w.doc, uint32_t((t - d.bos - 1) / p.chunk));
        EXPECT_GT(ch.index, 0u);
        EXPECT_EQ(ch.context_begin, w.context_begin) << "target " << t;
      }
    }
    for (uint32_t di : batch.docs) {
      const TttDocument& d = p.docs[di];
      for (uint64_t t = d.bos + 1; t < d.end; ++t)
        EXPECT_EQ(seen.count(t) ? seen[t] : 0, t > d.bos + p.chunk ? 1 : 0) << "doc " << di << " target " << t;
    }
  }
}

TEST(ChunkPlan, BaseWindowsByHand) {
  // C 4, L 8: documents of 3 targets (one chunk: none), 10 (chunk 1 from the
  // BOS, chunk 2 slides) and 21 (chunk 1 from the BOS; chunks 2-5 slide).
  const TttPlan p = plan_of(stream_of({3, 10, 21}), 4, 8);
  ASSERT_EQ(p.batches.size(), 1u);
  const std::vector<TttBaseWindow> w = ttt_base_windows(p, p.batches[0]);
  std::vector<std::tuple<uint32_t, uint64_t, uint64_t, uint64_t>> got;  // doc, targets [begin, end), context
  for (const TttBaseWindow& x : w) got.emplace_back(x.doc, x.target_begin, x.target_end, x.context_begin);
  const uint64_t b1 = p.docs[1].bos, b2 = p.docs[2].bos;
  // The batch runs documents sorted by chunk count: 0, 1, 2.
  EXPECT_EQ(got, (std::vector<std::tuple<uint32_t, uint64_t, uint64_t, uint64_t>>{
                     {1, b1 + 5, b1 + 9, b1},        // chunk 1: targets 5..8 from the BOS
                     {1, b1 + 9, b1 + 11, b1 + 2},   // chunk 2 (ends at 10 > L): window [2, 10)
                     {2, b2 + 5, b2 + 9, b2},        // chunk 1 (ends at 8 = L)
                     {2, b2 + 9, b2 + 13, b2 + 4},   // chunk 2: window [4, 12)
                     {2, b2 + 13, b2 + 17, b2 + 8},
                     {2, b2 + 17, b2 + 21, b2 + 12},
                     {2, b2 + 21, b2 + 22, b2 + 13}}));  // the 1-target last chunk
  EXPECT_EQ(w[0].score_offset(), 4u);
  EXPECT_EQ(w[0].input_len(), 8u);
  EXPECT_EQ(w.back().score_offset(), 7u);
  EXPECT_EQ(w.back().input_len(), 8u);
  expect_base_windows_cover_later_chunks(p);
  // L 12: chunks 1 and 2 of the 10-target document read from the BOS, one window.
  const TttPlan q = plan_of(stream_of({10}), 4, 12);
  const std::vector<TttBaseWindow> v = ttt_base_windows(q, q.batches[0]);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].target_begin, 5u);
  EXPECT_EQ(v[0].target_end, 11u);
  EXPECT_EQ(v[0].context_begin, 0u);
  EXPECT_EQ(v[0].score_offset(), 4u);
  EXPECT_EQ(v[0].input_len(), 10u);
  expect_base_windows_cover_later_chunks(q);
}

TEST(ChunkPlan, BaseWindowsOnTheSharedValidationSet) {
  for (const TttPlan& p : shared_validation_plans()) {
    uint64_t positions = 0, step_positions = 0;
    expect_base_windows_cover_later_chunks(p, &positions);
    for (const TttBatch& b : p.batches)
      for (uint32_t s = 1; s < b.num_steps; ++s) step_positions += b.docs.size() * step_at(p, b, s).width;
    std::printf("C %u, L %u: base windows forward %llu positions, the steps after the first %llu\n", p.chunk, p.context,
                (unsigned long long)positions, (unsigned long long)step_positions);
    EXPECT_LT(positions, step_positions);
  }
}

TEST(ChunkPlan, VarlenFlavourTrimsSortsByLengthAndQueuesLongestFirst) {
  // Documents of 3, 7, 2, 7, 4 targets, then a tail the trim cuts.
  Tokens t;
  for (int targets : {3, 7, 2, 7, 4}) {
    t.push_back(B);
    for (int i = 1; i < targets; ++i) t.push_back(7);
  }
  t.push_back(9);
  t.push_back(B);
  t.push_back(5);
  t.push_back(5);
  // 27 tokens; trim to ((27 - 1) // 5) * 5 + 1 = 26: the last document keeps 1 target.
  TttPlan p = plan_of(t, 2, 4, 2, 0, 1, TttSchedule::varlen_0410(5));
  EXPECT_EQ(p.num_tokens, 27u);
  EXPECT_EQ(p.used_tokens, 26u);
  ASSERT_EQ(p.docs.size(), 6u);
  EXPECT_EQ(p.docs[5].num_targets(), 1u);
  // Lengths 4, 8, 3, 8, 5, 2 -> order 5, 2, 0, 4, 1, 3 -> batches {5,2} {0,4} {1,3};
  // queued by longest member, descending.
  ASSERT_EQ(p.batches.size(), 3u);
  EXPECT_EQ(p.batches[0].index, 2u);
  EXPECT_EQ(p.batches[0].docs, (std::vector<uint32_t>{1, 3}));
  EXPECT_EQ(p.batches[1].index, 1u);
  EXPECT_EQ(p.batches[2].index, 0u);
  EXPECT_EQ(p.batches[2].docs, (std::vector<uint32_t>{5, 2}));
  TttPlan r1 = plan_of(t, 2, 4, 2, 1, 2, TttSchedule::varlen_0410(5));
  ASSERT_EQ(r1.batches.size(), 1u);  // queue positions 1 (rank 1) vs 0 and 2 (rank 0)
  EXPECT_EQ(r1.batches[0].index, 1u);
  EXPECT_THROW(plan_of(Tokens{B, 5, 6}, 2, 4, 2, 0, 1, TttSchedule::varlen_0410(5)), Error);
}

TEST(ChunkPlan, RejectsBadArguments) {
  Tokens t = {B, 5, 6};
  EXPECT_THROW(plan_of(t, 0, 8), Error);
  EXPECT_THROW(plan_of(t, 9, 8), Error);
  EXPECT_THROW(plan_of(t, 4, 8, 0), Error);
  EXPECT_THROW(plan_of(t, 4, 8, 2, 0, 0), Error);
  EXPECT_THROW(plan_of(t, 4, 8, 2, -1, 2), Error);
  EXPECT_THROW(plan_of(t, 4, 8, 2, 2, 2), Error);
  EXPECT_THROW(plan_of(Tokens{5, 6, 7}, 4, 8), Error);  // no BOS: nothing to score
  EXPECT_NO_THROW(plan_of(t, 8, 8));
  try {
    plan_of(t, 9, 8);
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos);
    EXPECT_NE(m.find("chunk"), std::string::npos);
  }
}

// ---------------------------------------------------------- brute force

// The reference's loops restated directly on (start, doc_len) pairs.
struct RefDoc {
  uint64_t start, len;
};
struct RefRow {  // one active row of one step
  uint64_t tok_start, win_len, chunk_offset, chunk_len;
  bool trains;
};
struct RefStep {
  uint64_t context_size, chunk_offset;
  bool needs_train;
  std::vector<std::pair<bool, RefRow>> rows;
};
using RefBatch = std::pair<std::vector<RefDoc>, std::vector<RefStep>>;

std::vector<RefDoc> ref_find_docs(const Tokens& t, uint64_t n) {
  std::vector<uint64_t> bos;
  for (uint64_t i = 0; i < n; ++i)
    if (t[i] == B) bos.push_back(i);
  std::vector<RefDoc> docs;
  for (size_t i = 0; i < bos.size(); ++i) {
    uint64_t end = i + 1 < bos.size() ? bos[i + 1] + 1 : n;
    if (end - bos[i] >= 2) docs.push_back({bos[i], end - bos[i]});
  }
  return docs;
}

std::tuple<uint64_t, uint64_t, uint64_t, uint64_t> ref_window(uint64_t ci, uint64_t pred_len,
                                                              uint64_t nc, uint64_t cs, uint64_t L) {
  uint64_t chunk_start = ci * cs;
  uint64_t chunk_end = ci == nc - 1 ? pred_len : (ci + 1) * cs;
  uint64_t win_start = chunk_end > L ? chunk_end - L : 0;
  return {win_start, chunk_end - win_start, chunk_start - win_start, chunk_end - chunk_start};
}

std::vector<RefStep> ref_run_batch(const std::vector<RefDoc>& batch, uint64_t cs, uint64_t L) {
  std::vector<uint64_t> pl, nc;
  for (const RefDoc& d : batch) {
    pl.push_back(d.len - 1);
    nc.push_back((d.len - 1 + cs - 1) / cs);
  }
  uint64_t max_nc = *std::max_element(nc.begin(), nc.end());
  std::vector<RefStep> steps;
  for (uint64_t ci = 0; ci < max_nc; ++ci) {
    auto [ws0, ctx, off0, cl0] = ref_window(ci, (ci + 1) * cs, ci + 1, cs, L);
    (void)ws0, (void)cl0;
    RefStep s{ctx, off0, false, {}};
    for (size_t b = 0; b < batch.size(); ++b) {
      s.needs_train = s.needs_train || ci + 1 < nc[b];
      if (ci >= nc[b]) {
        s.rows.push_back({false, {}});
        continue;
      }
      auto [ws, wl, co, cl] = ref_window(ci, pl[b], nc[b], cs, L);
      s.rows.push_back({true, {batch[b].start + ws, wl, co, cl, ci + 1 < nc[b]}});
    }
    steps.push_back(s);
  }
  return steps;
}

std::vector<RefBatch> ref_0317(const Tokens& t, uint64_t cs, uint64_t L, uint64_t bs, int rank,
                               int world) {
  std::vector<RefDoc> docs = ref_find_docs(t, t.size());
  std::vector<RefDoc> mine(docs.begin() + docs.size() * rank / world,
                           docs.begin() + docs.size() * (rank + 1) / world);
  std::stable_sort(mine.begin(), mine.end(), [&](const RefDoc& a, const RefDoc& b) {
    return (a.len - 2) / cs < (b.len - 2) / cs;
  });
  std::vector<RefBatch> out;
  for (size_t i = 0; i < mine.size(); i += bs) {
    std::vector<RefDoc> batch(mine.begin() + i, mine.begin() + std::min(mine.size(), i + bs));
    out.push_back({batch, ref_run_batch(batch, cs, L)});
  }
  return out;
}

std::vector<RefBatch> ref_0410(const Tokens& t, uint64_t cs, uint64_t L, uint64_t bs, uint64_t E,
                               int rank, int world) {
  uint64_t n = (t.size() - 1) / E * E + 1;
  std::vector<RefDoc> docs = ref_find_docs(t, n);
  std::stable_sort(docs.begin(), docs.end(),
                   [](const RefDoc& a, const RefDoc& b) { return a.len < b.len; });
  std::vector<std::vector<RefDoc>> batches;
  for (size_t i = 0; i < docs.size(); i += bs)
    batches.emplace_back(docs.begin() + i, docs.begin() + std::min(docs.size(), i + bs));
  auto longest = [](const std::vector<RefDoc>& b) {
    uint64_t m = 0;
    for (const RefDoc& d : b) m = std::max(m, d.len);
    return m;
  };
  std::stable_sort(batches.begin(), batches.end(),
                   [&](const auto& a, const auto& b) { return longest(a) > longest(b); });
  std::vector<RefBatch> out;
  for (size_t q = rank; q < batches.size(); q += world)
    out.push_back({batches[q], ref_run_batch(batches[q], cs, L)});
  return out;
}

void expect_same(const TttPlan& p, const std::vector<RefBatch>& ref, const std::string& what) {
  ASSERT_EQ(p.batches.size(), ref.size()) << what;
  for (size_t bi = 0; bi < ref.size(); ++bi) {
    const TttBatch& b = p.batches[bi];
    const auto& [rdocs, rsteps] = ref[bi];
    ASSERT_EQ(b.docs.size(), rdocs.size()) << what;
    for (size_t r = 0; r < rdocs.size(); ++r) {
      EXPECT_EQ(p.docs[b.docs[r]].bos, rdocs[r].start) << what;
      EXPECT_EQ(p.docs[b.docs[r]].length(), rdocs[r].len) << what;
    }
    ASSERT_EQ(b.num_steps, rsteps.size()) << what;
    for (uint32_t s = 0; s < b.num_steps; ++s) {
      TttStep st = step_at(p, b, s);
      const RefStep& rs = rsteps[s];
      EXPECT_EQ(st.width, rs.context_size) << what;
      EXPECT_EQ(st.train_offset, rs.chunk_offset) << what;
      EXPECT_EQ(st.update, rs.needs_train) << what;
      for (size_t r = 0; r < rdocs.size(); ++r) {
        ASSERT_EQ(st.rows[r].has_value(), rs.rows[r].first) << what;
        if (!rs.rows[r].first) continue;
        const TttChunk& c = *st.rows[r];
        const RefRow& rr = rs.rows[r].second;
        EXPECT_EQ(c.context_begin, rr.tok_start) << what;
        EXPECT_EQ(c.input_len(), rr.win_len) << what;
        EXPECT_EQ(c.score_offset(), rr.chunk_offset) << what;
        EXPECT_EQ(c.num_targets(), rr.chunk_len) << what;
        EXPECT_EQ(c.last, !rr.trains) << what;
      }
    }
  }
}

// A random stream: documents of random lengths (some empty), maybe a prefix
// before the first BOS, maybe a trailing lone BOS.
Tokens random_stream(std::mt19937& rng) {
  Tokens t;
  std::uniform_int_distribution<int> coin(0, 3), len(0, 60), tok(2, 50);
  if (coin(rng) == 0)
    for (int i = len(rng) % 7; i >= 0; --i) t.push_back(static_cast<uint16_t>(tok(rng)));
  int docs = 1 + len(rng) % 25;
  for (int d = 0; d < docs; ++d) {
    t.push_back(B);
    int l = coin(rng) == 0 ? len(rng) % 3 : len(rng) * (coin(rng) == 0 ? 4 : 1);
    for (int i = 0; i < l; ++i) t.push_back(static_cast<uint16_t>(tok(rng)));
  }
  if (coin(rng) == 0) t.push_back(B);
  return t;
}

// Over all ranks: every target after the first BOS scored exactly once, every
// window maximal (the last <= L tokens of its own document), every document on
// exactly one rank.
void expect_coverage(const Tokens& t, const std::vector<TttPlan>& ranks, const std::string& what) {
  const TttPlan& p0 = ranks[0];
  uint64_t n = p0.used_tokens;
  std::vector<int> scored(n, 0), owner(p0.docs.size(), 0);
  for (const TttPlan& p : ranks) {
    for (const TttBatch& b : p.batches)
      for (uint32_t s = 0; s < b.num_steps; ++s)
        for (const auto& row : step_at(p, b, s).rows) {
          if (!row) continue;
          const TttChunk& c = *row;
          const TttDocument& d = p.docs[c.doc];
          for (uint64_t i = c.target_begin; i < c.target_end; ++i) ++scored[i];
          EXPECT_GE(c.context_begin, d.bos) << what;
          EXPECT_LE(c.input_len(), p.context) << what;
          EXPECT_EQ(c.input_len(), std::min<uint64_t>(p.context, c.target_end - 1 - d.bos)) << what;
          EXPECT_LE(c.num_targets(), p.chunk) << what;
          EXPECT_GE(c.num_targets(), 1u) << what;
          EXPECT_LE(c.input_len(), step_at(p, b, s).width) << what;
          if (!c.last) {
            EXPECT_EQ(c.num_targets(), p.chunk) << what;
            EXPECT_EQ(c.score_offset(), step_at(p, b, s).train_offset) << what;
          }
        }
    for (uint32_t d : p.rank_docs) ++owner[d];
  }
  uint64_t start = std::find(t.begin(), t.begin() + n, B) - t.begin();  // first BOS
  for (uint64_t i = 0; i < n; ++i) EXPECT_EQ(scored[i], i > start ? 1 : 0) << what << " target " << i;
  for (size_t d = 0; d < owner.size(); ++d) EXPECT_EQ(owner[d], 1) << what << " doc " << d;
}

TEST(ChunkPlan, MatchesReferenceLoops0317) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 400; ++trial) {
    Tokens t = random_stream(rng);
    uint32_t cs = 1 + rng() % 12, L = cs + rng() % 30, bs = 1 + rng() % 6;
    int world = 1 + rng() % 5;
    std::string what = "trial " + std::to_string(trial);
    auto ranks = all_ranks(t, cs, L, bs, world, TttSchedule::lora_ttt_0317());
    for (int r = 0; r < world; ++r) expect_same(ranks[r], ref_0317(t, cs, L, bs, r, world), what);
    expect_coverage(t, ranks, what);
  }
}

TEST(ChunkPlan, MatchesReferenceLoops0410) {
  std::mt19937 rng(99);
  int planned = 0;
  for (int trial = 0; trial < 400; ++trial) {
    Tokens t = random_stream(rng);
    uint32_t cs = 1 + rng() % 12, L = cs + rng() % 30, bs = 1 + rng() % 6, E = 1 + rng() % 40;
    int world = 1 + rng() % 5;
    std::string what = "trial " + std::to_string(trial);
    TttSchedule s = TttSchedule::varlen_0410(E);
    if (t.size() < E + 1 || std::find(t.begin(), t.begin() + (t.size() - 1) / E * E + 1, B) ==
                                 t.begin() + (t.size() - 1) / E * E + 1) {
      EXPECT_THROW(plan_of(t, cs, L, bs, 0, world, s), Error) << what;
      continue;
    }
    auto ranks = all_ranks(t, cs, L, bs, world, s);
    for (int r = 0; r < world; ++r) expect_same(ranks[r], ref_0410(t, cs, L, bs, E, r, world), what);
    expect_coverage(t, ranks, what);
    ++planned;
  }
  EXPECT_GT(planned, 300);
}

TEST(ChunkPlan, DocumentResultsDoNotDependOnTheSplit) {
  // The same document gets the same chunks whatever the flavour, rank or world.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    Tokens t = random_stream(rng);
    uint32_t cs = 1 + rng() % 8, L = cs + rng() % 20;
    std::map<uint64_t, std::vector<std::tuple<uint64_t, uint64_t, uint64_t>>> seen;
    for (TttSchedule s : {TttSchedule::lora_ttt_0317(), TttSchedule{Split::GlobalQueue, 0}})
      for (int world : {1, 3})
        for (const TttPlan& p : all_ranks(t, cs, L, 4, world, s))
          for (uint32_t d : p.rank_docs) {
            std::vector<std::tuple<uint64_t, uint64_t, uint64_t>> cs_of_d;
            for (uint32_t c = 0; c < p.docs[d].num_chunks; ++c) {
              TttChunk k = chunk_at(p, d, c);
              cs_of_d.emplace_back(k.target_begin, k.target_end, k.context_begin);
            }
            auto [it, fresh] = seen.emplace(p.docs[d].bos, cs_of_d);
            if (!fresh) {
              EXPECT_EQ(it->second, cs_of_d);
            }
          }
  }
}


// ---------------------------------------------------------- balanced ranks

TEST(ChunkPlan, BatchCostCountsForwardedRowTokens) {
  // Documents of 9 and 2 targets, chunk 4, context 6, one batch: 3 steps.
  Tokens t;
  for (int targets : {9, 2}) {
    t.push_back(B);
    for (int i = 1; i < targets; ++i) t.push_back(7);
  }
  t.push_back(9);
  TttPlan p = plan_of(t, 4, 6, 2);
  ASSERT_EQ(p.batches.size(), 1u);
  // Step widths 4, 6, 6; steps 0 and 1 update (x3). Doc 0: 3 chunks, doc 1: 1.
  EXPECT_EQ(batch_cost(p, p.batches[0]), (4u * 3 + 6u * 3 + 6u) + 4u * 3);
}

TEST(ChunkPlan, BalancedSplitKeepsOneRankBatchesAndBalancesCost) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    Tokens t = random_stream(rng);
    const uint32_t cs = 1 + rng() % 8, L = cs + rng() % 20, bs = 1 + rng() % 4;
    const int world = 1 + int(rng() % 5);
    const TttSchedule s = trial % 2 ? TttSchedule::lora_ttt_0317() : TttSchedule{Split::GlobalQueue, 0};
    const std::string what = "trial " + std::to_string(trial);
    const TttPlan whole = plan_of(t, cs, L, bs, 0, 1, s);
    std::vector<TttPlan> ranks;
    std::vector<uint64_t> load;
    std::map<uint32_t, int> batch_owner;  // one-rank batch index -> rank
    for (int r = 0; r < world; ++r) {
      TttPlan p = whole;
      keep_rank_batches(p, r, world);
      EXPECT_EQ(p.rank, r);
      EXPECT_EQ(p.world, world);
      uint64_t cost = 0;
      for (const TttBatch& b : p.batches) {
        cost += batch_cost(p, b);
        EXPECT_TRUE(batch_owner.emplace(b.index, r).second) << what;  // each batch on one rank
        // The batch is the one-rank plan's, rows in the same order.
        const auto same = std::find_if(whole.batches.begin(), whole.batches.end(),
                                       [&](const TttBatch& x) { return x.index == b.index; });
        ASSERT_NE(same, whole.batches.end()) << what;
        EXPECT_EQ(same->docs, b.docs) << what;
      }
      load.push_back(cost);
      ranks.push_back(std::move(p));
    }
    EXPECT_EQ(batch_owner.size(), whole.batches.size()) << what;
    expect_coverage(t, ranks, what);
    // Greedy LPT: no rank exceeds the lightest by more than the costliest batch.
    uint64_t biggest = 0;
    for (const TttBatch& b : whole.batches) biggest = std::max(biggest, batch_cost(whole, b));
    EXPECT_LE(*std::max_element(load.begin(), load.end()) - *std::min_element(load.begin(), load.end()), biggest)
        << what;
  }
}

TEST(ChunkPlan, BalancedSplitByCostNotCount) {
  // One long document (8 chunks) and six one-chunk documents, one per batch:
  // two ranks get the long batch alone and the six short ones.
  Tokens t;
  t.push_back(B);
  for (int i = 0; i < 31; ++i) t.push_back(7);
  for (int d = 0; d < 6; ++d) {
    t.push_back(B);
    t.push_back(7);
  }
  t.push_back(9);
  TttPlan p0 = plan_of(t, 4, 8, 1), p1 = p0;
  keep_rank_batches(p0, 0, 2);
  keep_rank_batches(p1, 1, 2);
  ASSERT_EQ(p0.batches.size(), 1u);
  EXPECT_EQ(p0.rank_docs, (std::vector<uint32_t>{0}));
  EXPECT_EQ(p1.batches.size(), 6u);
  EXPECT_THROW(keep_rank_batches(p1, 0, 2), Error);  // not a one-rank plan any more
  TttPlan q = plan_of(t, 4, 8, 1);
  EXPECT_THROW(keep_rank_batches(q, 2, 2), Error);
}

}  // namespace
}  // namespace pgolf
