// Evaluation plans (see window_plan.h for the exact semantics of each plan).
#include "eval/window_plan.h"

#include <algorithm>
#include <string>

#include "data/error.h"

namespace pgolf {

namespace {

const char* const kWhat = "window plan";

void check_common(uint64_t num_tokens, uint32_t seq_len) {
  if (seq_len < 1) fail(kWhat, "seq_len must be >= 1, got 0");
  if (num_tokens < 2)
    fail(kWhat, "need at least 2 tokens (one target), got " + std::to_string(num_tokens));
}

void check_stride(uint32_t seq_len, uint32_t stride) {
  if (stride < 1 || stride > seq_len)
    fail(kWhat, "stride must be in [1, seq_len=" + std::to_string(seq_len) + "], got " +
                    std::to_string(stride));
}

WindowPlan empty_plan(PlanKind kind, uint64_t n, uint32_t seq_len, uint32_t stride) {
  WindowPlan p;
  p.kind = kind;
  p.seq_len = seq_len;
  p.stride = stride;
  p.num_tokens = n;
  return p;
}

// Current plan: a window exists while its scored part (from L - S on) still
// holds a target, so each target lands in exactly one window's scored part.
void add_current_windows(WindowPlan& p, uint64_t targets) {
  const uint64_t L = p.seq_len, S = p.stride, context = L - S;
  // ws = 0 is always kept (see window_plan.h): it scores from offset 0.
  for (uint64_t ws = 0; ws == 0 || ws + context < targets; ws += S) {
    const uint64_t len = std::min(L, targets - ws);
    p.windows.push_back({ws, uint32_t(len), ws == 0 ? 0u : uint32_t(context)});
  }
}

// Legacy plan: every stride step that still has S targets ahead; a short final
// window scores its last S targets, which earlier windows already scored.
void add_legacy_windows(WindowPlan& p, uint64_t targets) {
  const uint64_t L = p.seq_len, S = p.stride;
  for (uint64_t ws = 0; ws < targets; ws += S) {
    const uint64_t len = std::min(L, targets - ws);
    if (len < S) continue;  // the reference skips windows shorter than a stride
    p.windows.push_back({ws, uint32_t(len), ws == 0 ? 0u : uint32_t(len - S)});
  }
}

void check_rank(int rank, int world) {
  if (world < 1) fail(kWhat, "world size must be >= 1, got " + std::to_string(world));
  if (rank < 0 || rank >= world)
    fail(kWhat, "rank must be in [0, " + std::to_string(world) + "), got " + std::to_string(rank));
}

// floor(total * r / w) without overflow: total = q*w + m gives q*r + floor(m*r/w).
uint64_t split_point(uint64_t total, uint64_t r, uint64_t w) {
  return (total / w) * r + (total % w) * r / w;
}

}  // namespace

uint64_t WindowPlan::scored_targets() const {
  uint64_t sum = 0;
  for (const Window& w : windows) sum += w.scored();
  return sum;
}

const char* plan_kind_name(PlanKind kind) {
  switch (kind) {
    case PlanKind::Standard: return "standard";
    case PlanKind::Current: return "current";
    case PlanKind::Legacy: return "legacy";
    case PlanKind::Streaming: return "streaming";
  }
  return "?";
}

uint64_t trimmed_token_count(uint64_t num_tokens, uint32_t seq_len) {
  check_common(num_tokens, seq_len);
  const uint64_t rows = (num_tokens - 1) / seq_len;
  if (rows == 0)
    fail(kWhat, std::to_string(num_tokens) + " tokens hold no full row of seq_len " +
                    std::to_string(seq_len) + " (need at least " + std::to_string(uint64_t(seq_len) + 1) +
                    ")");
  return rows * seq_len + 1;
}

WindowPlan make_standard_plan(uint64_t num_tokens, uint32_t seq_len) {
  const uint64_t rows = (trimmed_token_count(num_tokens, seq_len) - 1) / seq_len;
  WindowPlan p = empty_plan(PlanKind::Standard, num_tokens, seq_len, seq_len);
  p.windows.reserve(rows);
  for (uint64_t i = 0; i < rows; ++i) p.windows.push_back({i * seq_len, seq_len, 0});
  return p;
}

WindowPlan make_sliding_plan(uint64_t num_tokens, uint32_t seq_len, uint32_t stride, PlanKind kind) {
  check_common(num_tokens, seq_len);
  check_stride(seq_len, stride);
  const uint64_t targets = num_tokens - 1;
  WindowPlan p = empty_plan(kind, num_tokens, seq_len, stride);
  p.windows.reserve(targets / stride + 1);
  if (kind == PlanKind::Current) {
    add_current_windows(p, targets);
  } else if (kind == PlanKind::Legacy) {
    add_legacy_windows(p, targets);
    if (p.windows.empty())
      fail(kWhat, "legacy plan: " + std::to_string(targets) + " targets is fewer than one stride (" +
                      std::to_string(stride) + "), so no window would be scored");
  } else {
    fail(kWhat, std::string("make_sliding_plan takes the current or legacy plan, not ") + plan_kind_name(kind));
  }
  return p;
}

WindowPlan make_record_sliding_plan(uint64_t num_tokens, uint32_t seq_len, uint32_t stride, PlanKind kind) {
  WindowPlan p = make_sliding_plan(trimmed_token_count(num_tokens, seq_len), seq_len, stride, kind);
  p.num_tokens = num_tokens;  // target_counts then shows the trimmed tail as 0
  return p;
}

std::pair<size_t, size_t> rank_slice(const WindowPlan& plan, int rank, int world) {
  check_rank(rank, world);
  const uint64_t total = plan.windows.size();
  return {size_t(split_point(total, rank, world)), size_t(split_point(total, rank + 1, world))};
}

std::pair<size_t, size_t> rank_slice_whole_batches(const WindowPlan& plan, int rank, int world,
                                                   size_t batch_windows) {
  if (batch_windows < 1) fail(kWhat, "batch size must be >= 1 window, got 0");
  auto [begin, end] = rank_slice(plan, rank, world);
  return {begin, begin + (end - begin) / batch_windows * batch_windows};
}

std::pair<size_t, size_t> rank_slice_batch_aligned(const WindowPlan& plan, int rank, int world,
                                                   size_t batch_windows) {
  check_rank(rank, world);
  if (batch_windows < 1) fail(kWhat, "batch size must be >= 1 window, got 0");
  const uint64_t total = plan.windows.size(), batches = (total + batch_windows - 1) / batch_windows;
  const uint64_t b0 = split_point(batches, rank, world), b1 = split_point(batches, rank + 1, world);
  return {size_t(std::min(total, b0 * batch_windows)), size_t(std::min(total, b1 * batch_windows))};
}

std::vector<uint32_t> target_counts(const WindowPlan& plan) {
  // Difference array over target indices: O(windows + targets).
  const uint64_t targets = plan.num_tokens - 1;
  std::vector<int64_t> delta(targets + 1, 0);
  for (const Window& w : plan.windows) {
    const uint64_t lo = w.start + w.score_from, hi = w.start + w.len;
    if (hi > targets) fail(kWhat, "window ends past the last target");  // malformed plan
    delta[lo] += 1;
    delta[hi] -= 1;
  }
  std::vector<uint32_t> counts(targets);
  int64_t run = 0;
  for (uint64_t t = 0; t < targets; ++t) counts[t] = uint32_t(run += delta[t]);
  return counts;
}

std::vector<uint32_t> segment_starts(const uint16_t* in, uint32_t len, uint16_t bos_id, uint32_t max_segment) {
  std::vector<uint32_t> starts;
  if (len == 0) return starts;
  uint32_t seg = 0;  // start of the current segment
  starts.push_back(0);
  for (uint32_t i = 1; i < len; ++i) {
    if (in[i] == bos_id || (max_segment > 0 && i - seg == max_segment)) {
      starts.push_back(i);
      seg = i;
    }
  }
  return starts;
}

}  // namespace pgolf
