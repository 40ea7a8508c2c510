// Test-time-training work plan: which documents a rank adapts on, in which
// batches, and -- for every step of a batch -- which chunk of which document is
// scored, from which input window (SPEC §8). Pure functions over a token
// stream: no tensors, no model.
//
// Reference: openai/parameter-golf, records/track_10min_16mb/
//   2026-03-17_LoRA_TTT/train_gpt.py   (_find_docs, _compute_chunk_window,
//                                       eval_val_ttt_lora)        -- "0317"
//   2026-04-10_VarLenAttn/train_gpt.py (_find_docs, _build_ttt_global_batches,
//                                       _claim_next_batch, _compute_chunk_window,
//                                       eval_val_ttt_lora)        -- "0410"
//
// Indexing. tok[0..N) is the stream (after the 0410 trim, below). Target p is
// the prediction of tok[p] from tok[..p-1]; its "previous token" (for byte
// counting) is tok[p-1]. Positions below are absolute stream positions.
//
// Documents (same in both flavours). One document per BOS, at position b_i.
// Its tokens are [b_i, end_i) with end_i = b_{i+1} + 1 -- the next document's
// BOS is the document's last *target* -- and end_i = N for the last document.
// Its targets are b_i + 1 .. end_i - 1 (P = end_i - b_i - 1 of them, the
// reference's pred_len; doc_len = P + 1). So every target after the first BOS
// is scored exactly once; tokens before the first BOS, and the first BOS itself
// as a target, are never scored. A stream with no BOS is an error here (the
// reference ends up dividing by zero). A stream ending in a lone BOS gives a
// last document with no target: the reference asserts doc_len >= 2 and stops;
// this plan drops that empty document instead (it has nothing to score) and
// sets dropped_empty_last_doc.
//
// Chunks (same in both flavours). A document has K = ceil(P / C) chunks of C
// targets (chunk size C); the last one holds the remaining P - (K-1) C. Chunk c
// (0-based) scores targets b + cC + 1 .. b + e, e = min((c+1) C, P), i.e. the
// half-open [target_begin, target_end) = [b + cC + 1, b + e + 1). Its input
// window is the last <= L tokens (context L) ending right before its last
// target, never reaching before the document's own BOS:
//   inputs  tok[context_begin, target_end - 1),  context_begin = b + max(0, e - L)
//   targets tok[context_begin + 1, target_end)   (row i predicts tok[context_begin + i + 1])
// and the scored rows are [score_offset(), input_len()). Positions restart at 0
// at context_begin (the window is a fresh sequence). Requires 1 <= C <= L.
//
// Batches and steps (same in both flavours). A batch of B documents runs
// S = max K steps. At step s every document with s < K is "active": its chunk
// s is forwarded with the batch's current adapters (rows right-padded with
// token 0 to width min((s+1) C, L)), scored, and then -- unless s is that
// document's last chunk -- trained on: one optimizer step on the sum over the
// batch of each row's mean loss over the C columns [train_offset, train_offset
// + C), a column range that equals every non-last active chunk's scored rows.
// The update at step s happens iff some document has s < K - 1, i.e. iff
// s < S - 1. Adapters and optimizer state are fresh for every batch, one
// adapter per batch row, so a document's result does not depend on its
// batch-mates or on the rank that runs it (up to floating-point kernels).
//
// Where the flavours differ (TttSchedule):
// - 0317 (Split::RankSlices): the untrimmed stream; documents in stream order
//   are cut into contiguous rank slices [D r / w, D (r+1) / w); each rank
//   stable-sorts its slice by chunk count (the key (doc_len - 2) // C is K - 1)
//   and takes consecutive batches of B. Defaults C = 256, L = 1024, B = 64.
// - 0410 (Split::GlobalQueue): the stream is first trimmed like standard eval,
//   to ((N - 1) // E) E + 1 tokens with E = EVAL_SEQ_LEN (2048; not the TTT
//   context), so the last document is cut short. All documents are stable-
//   sorted by doc_len (not chunk count), cut into consecutive global batches
//   of B (batch index = position in that order), and the batches are queued
//   longest first (stable sort by descending longest doc_len). Ranks claim
//   queue entries dynamically through a locked file counter, so the reference's
//   batch-to-rank map depends on timing; here rank r takes queue positions
//   q with q % w == r (results are the same -- see above). Defaults C = 64 in
//   the stored script and its logs (SPEC §10 says 32), L = 2048, B = 64.
//   Inside a TTT row the 0410 model uses dense causal attention (no cu_seqlens):
//   a row holds one document window, so no packing happens in TTT. Its extra
//   knobs are trainer-side, not schedule: TTT_GRAD_STEPS (>1 re-forwards the
//   same window for more updates; scores come from the first forward) and
//   VAL_DOC_FRACTION (a seeded random subset of documents; not supported here).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace pgolf {

struct TttSchedule {
  enum class Split {
    RankSlices,   // 0317: contiguous per-rank slices, sorted by chunk count
    GlobalQueue,  // 0410: global batches sorted by length, longest batch first
  };
  Split split = Split::RankSlices;
  uint32_t trim_multiple = 0;  // E > 0: keep ((N - 1) // E) E + 1 tokens first

  static TttSchedule lora_ttt_0317() { return {Split::RankSlices, 0}; }
  static TttSchedule varlen_0410(uint32_t eval_seq_len = 2048) {
    return {Split::GlobalQueue, eval_seq_len};
  }
};

struct TttDocument {
  uint64_t bos;         // position of its BOS (its first input token)
  uint64_t end;         // one past its last target (next BOS + 1, or the stream end)
  uint32_t num_chunks;  // K = ceil(num_targets / C)
  uint64_t length() const { return end - bos; }           // the reference's doc_len
  uint64_t num_targets() const { return end - bos - 1; }  // pred_len
};

struct TttChunk {
  uint32_t doc;            // index into TttPlan::docs
  uint32_t index;          // chunk number in its document = the batch step that runs it
  uint64_t target_begin;   // first scored target position
  uint64_t target_end;     // one past the last scored target
  uint64_t context_begin;  // first input token; inputs are [context_begin, target_end - 1)
  bool last;               // the document's last chunk: scored, never trained on
  uint64_t num_targets() const { return target_end - target_begin; }
  uint64_t input_len() const { return target_end - 1 - context_begin; }      // <= L
  uint64_t score_offset() const { return target_begin - 1 - context_begin; }  // first scored row
};

struct TttBatch {
  uint32_t index;             // 0317: batch number on this rank; 0410: global batch number
  std::vector<uint32_t> docs; // indices into TttPlan::docs, one per row, in row order
  uint32_t num_steps;         // max num_chunks over its documents
};

// One step of one batch: what each row runs.
struct TttStep {
  uint32_t index;          // step s = the chunk number every active row runs
  uint64_t width;          // padded row width min((s+1) C, L)
  uint64_t train_offset;   // loss columns [train_offset, train_offset + C)
  bool update;             // an optimizer step follows (s < num_steps - 1)
  std::vector<std::optional<TttChunk>> rows;  // nullopt: the row's document is done
};

struct TttPlan {
  TttSchedule schedule;
  uint32_t chunk = 0;       // C
  uint32_t context = 0;     // L
  uint32_t batch_docs = 0;  // B
  int rank = 0, world = 1;
  uint64_t num_tokens = 0;   // N as given
  uint64_t used_tokens = 0;  // after the 0410 trim (= num_tokens for 0317)
  bool dropped_empty_last_doc = false;
  std::vector<TttDocument> docs;   // every document of the stream, in stream order
  std::vector<uint32_t> rank_docs; // this rank's documents in processing order
  std::vector<TttBatch> batches;   // this rank's batches in processing order
  uint64_t total_batches = 0;      // over all ranks
  uint64_t rank_targets() const;   // targets this rank scores
};

// Throws pgolf::Error on chunk < 1, chunk > context, batch_docs < 1, world < 1,
// rank outside [0, world), a stream with no BOS, or a trim that keeps no row.
TttPlan make_ttt_plan(const uint16_t* tokens, size_t n, uint16_t bos, uint32_t chunk,
                      uint32_t context, uint32_t batch_docs, int rank, int world,
                      const TttSchedule& schedule = TttSchedule::lora_ttt_0317());

// pgolf's own multi-rank split (what `pgolf ttt` runs; the reference splits
// above stay for reference). Results per document must not depend on the world
// size, and a document's numbers depend on its batch-mates' shapes through the
// kernels, so every rank forms the one-rank plan's batches (make_ttt_plan with
// rank 0 of world 1) and runs a share of whole batches, balanced by predicted
// cost rather than by count.
//
// The predicted cost of a batch: the row-tokens its steps forward, an update
// step counted 3 times (forward + backward): sum over steps s of
// (active rows at s) * width(s) * (s < S - 1 ? 3 : 1).
uint64_t batch_cost(const TttPlan& plan, const TttBatch& batch);
// The owner rank of each of plan.batches (plan: a one-rank plan) among
// `world` ranks: longest processing time first -- batches by descending cost
// (ties: plan order) each to the least-loaded rank (ties: the lowest rank).
std::vector<int> balance_batches(const TttPlan& plan, int world);
// Restricts a one-rank plan to the batches balance_batches gives `rank` (in
// plan order) and sets rank, world and rank_docs; total_batches stays the
// plan's. Throws pgolf::Error on a plan that is not one-rank or a bad rank.
void keep_rank_batches(TttPlan& plan, int rank, int world);

// Chunk chunk_index of document doc (throws if either is out of range).
TttChunk chunk_at(const TttPlan& plan, uint32_t doc, uint32_t chunk_index);

// Step `step` of `batch` (throws if step >= batch.num_steps).
TttStep step_at(const TttPlan& plan, const TttBatch& batch, uint32_t step);

// The base scores (the same targets without TTT, for comparison) need no
// adapters, so they need not come from the steps' windows. A target's score
// depends only on the inputs from its chunk's context_begin up to it (causal
// attention; positions restart at context_begin), so a document's chunks
// whose window starts at its BOS -- those ending within L targets -- are all
// scored by one window, their last chunk's, and each later chunk by its own.
// A document's first chunk is left out: its TTT scores come from fresh
// adapters (B = 0, an exact zero delta), so they are its base scores.
struct TttBaseWindow {
  uint32_t doc;            // index into TttPlan::docs
  uint64_t target_begin;   // first scored target position
  uint64_t target_end;     // one past the last scored target
  uint64_t context_begin;  // first input token; inputs are [context_begin, target_end - 1)
  uint64_t input_len() const { return target_end - 1 - context_begin; }
  uint64_t score_offset() const { return target_begin - 1 - context_begin; }
};

// The base windows of a batch's documents, document by document in the
// batch's row order, each document's in target order; together they score
// every target of those documents after the first chunk exactly once.
std::vector<TttBaseWindow> ttt_base_windows(const TttPlan& plan, const TttBatch& batch);

}  // namespace pgolf
