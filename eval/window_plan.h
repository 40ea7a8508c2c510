// Evaluation plans: which windows of the validation stream the model runs on,
// and which of each window's targets are scored (SPEC §3, §4). Pure functions
// over plain data -- no tensors, no tokens (except segment_starts below).
//
// Indexing. The stream has N = num_tokens tokens tok[0..N) and T = N - 1 targets;
// target t is the prediction of tok[t + 1] from tok[0..t] (its "previous token",
// for byte counting, is tok[t]). A Window {start, len, score_from} feeds the
// model the inputs tok[start, start + len) -- targets start .. start + len - 1,
// i.e. the tokens tok[start + 1 .. start + len] -- and scores the targets at
// window offsets [score_from, len): target indices [start + score_from, start + len).
// Every window has 1 <= len <= seq_len and score_from < len.
//
// Plans, as the public parameter-golf reference computes them:
// - Standard (root train_gpt.py eval_val): only the first R = (N - 1) // L full
//   rows are used -- the stream is trimmed to R * L + 1 tokens -- row i is
//   {i * L, L, 0}. Every kept target is scored once; the last (N - 1) % L
//   targets are never scored. R = 0 is an error (the reference refuses it).
// - Current (2026-04-10_VarLenAttn eval_val_sliding): starts ws = 0, S, 2S, ...
//   while ws + (L - S) < T; len = min(L, T - ws); score_from = 0 for ws = 0,
//   else L - S. One deliberate difference: the window at 0 is always kept --
//   the reference's test drops it too when T <= L - S (only possible on an
//   untrimmed stream), leaving nothing scored and dividing by zero.
//   Every target is scored exactly once; a later window's scored
//   targets see at least L - S + 1 input tokens (attention is further cut at
//   BOS in that record: see segment_starts).
// - Legacy (2026-03-19_SlidingWindowEval eval_val_sliding): starts ws = 0, S,
//   2S, ... < T, keeping only windows with len = min(L, T - ws) >= S;
//   score_from = 0 for ws = 0, else len - S. Windows that run past the end all
//   score the final S targets again, so the tail is counted many times over
//   (L / S times on the records' trimmed stream when S divides L). Targets
//   before T - S are scored exactly once; some of the final S can be scored 0
//   times when S > L / 2 (e.g. S = L drops a tail of T % L). T < S leaves no
//   window at all (the reference then divides by zero): an error here.
// Both sliding records ran on the *trimmed* stream (they load validation tokens
// with the same trimming as standard eval, using the window length), so their
// T was a multiple of L. make_sliding_plan plans over all N tokens as given;
// make_record_sliding_plan applies the records' trimming first.
//
// Ranks. Window list of size W, world w: rank r gets the contiguous index range
// [W * r // w, W * (r + 1) // w) -- the same formula for standard rows and for
// both sliding plans. (2026-04-10_VarLenAttn's standard eval additionally drops
// each rank's rows beyond a whole number of batches: rank_slice_whole_batches.)
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace pgolf {

struct Window {
  uint64_t start;       // first input token (= first target index)
  uint32_t len;         // inputs / targets in the window
  uint32_t score_from;  // first scored offset; offsets [score_from, len) count
  uint64_t scored() const { return len - score_from; }
  bool operator==(const Window& o) const {
    return start == o.start && len == o.len && score_from == o.score_from;
  }
};

// Streaming is not a window plan: eval/stream_plan.h.
enum class PlanKind { Standard, Current, Legacy, Streaming };

struct WindowPlan {
  PlanKind kind;
  uint32_t seq_len;     // L: window length
  uint32_t stride;      // S (= L for Standard)
  uint64_t num_tokens;  // N as given (before any trimming)
  std::vector<Window> windows;
  uint64_t scored_targets() const;  // sum of scored(), multiplicity included
};

const char* plan_kind_name(PlanKind kind);  // "standard", "current", "legacy", "streaming"

// The reference's trimmed stream length ((N - 1) // L) * L + 1; throws if that
// leaves no full row (N - 1 < L).
uint64_t trimmed_token_count(uint64_t num_tokens, uint32_t seq_len);

WindowPlan make_standard_plan(uint64_t num_tokens, uint32_t seq_len);
// kind must be Current or Legacy. Plans over all N tokens (no trimming).
WindowPlan make_sliding_plan(uint64_t num_tokens, uint32_t seq_len, uint32_t stride, PlanKind kind);
// As the sliding records ran: make_sliding_plan(trimmed_token_count(N, L), L, S, kind).
WindowPlan make_record_sliding_plan(uint64_t num_tokens, uint32_t seq_len, uint32_t stride, PlanKind kind);

// Rank r of world w: windows [begin, end) = [W*r/w, W*(r+1)/w) (floor division).
std::pair<size_t, size_t> rank_slice(const WindowPlan& plan, int rank, int world);
// 2026-04-10_VarLenAttn standard eval: rank_slice, then end cut back so that
// end - begin is a multiple of batch_windows (the rest of the rank is skipped).
// There batch_windows = val_batch_tokens // (world * grad_accum) // L, with
// grad_accum = 8 // world: 32 rows at its defaults (524288 tokens, L = 2048).
std::pair<size_t, size_t> rank_slice_whole_batches(const WindowPlan& plan, int rank, int world,
                                                   size_t batch_windows);

// pgolf's split (what `pgolf eval` runs): whole batches of batch_windows
// consecutive windows, the B = ceil(W / batch_windows) batches cut as
// rank_slice cuts windows -- batches [B r / w, B (r+1) / w) -- returned as
// window indices. Every window then shares its batch with the same windows as
// on one rank, so its scores do not depend on the world size (kernels choose
// by shape); ranks differ by at most one batch.
std::pair<size_t, size_t> rank_slice_batch_aligned(const WindowPlan& plan, int rank, int world,
                                                   size_t batch_windows);

// How many times each target 0 .. N-2 is scored (size N - 1).
std::vector<uint32_t> target_counts(const WindowPlan& plan);

// Attention segments of the current plan (2026-04-10_VarLenAttn): within a
// window's inputs in[0, len), a segment starts at offset 0 and at every offset
// whose input is BOS; tokens attend only inside their segment. With
// max_segment > 0 a segment is also cut every max_segment tokens from its start
// (that record's standard eval does this with L over a whole batch of rows;
// its sliding eval does not cut, which is the same since len <= L).
// Returns the ascending segment start offsets (begins with 0; empty if len = 0).
std::vector<uint32_t> segment_starts(const uint16_t* in, uint32_t len, uint16_t bos_id,
                                     uint32_t max_segment = 0);

}  // namespace pgolf
