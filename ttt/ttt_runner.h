// Score-first test-time training with per-document batched LoRA (SPEC §8):
// for every batch of ttt/chunk_plan.h, fresh adapters per row; at every step
// each active row's chunk is forwarded, its targets are scored, and only then
// one optimizer step on the chunk's loss adapts the row's adapters for its
// next chunk. Documents never share adapters, so a document's scores depend
// on nothing but its own tokens, up to floating-point kernels.
//
// Reference: openai/parameter-golf, records/track_10min_16mb/
//   2026-03-17_LoRA_TTT/train_gpt.py   (BatchedTTTLoRA, _build_ttt_optimizer,
//                                       eval_val_ttt_lora)         "lora-0317"
//   2026-04-10_VarLenAttn/train_gpt.py (Hyperparameters ttt_*, BatchedTTTLoRA,
//                                       GPT.forward_ttt, eval_val_ttt_lora) "varlen-0410"
// Both sum the scored NLL and bytes in float64; the training loss is the sum
// over the rows that have a next chunk of each row's mean NLL over the step's
// C train columns (the reference multiplies the other rows' means by 0).
// Unlike the reference, a step forwards its active rows and only as many
// finished ones as padding as keep the device shapes few (ttt/step_shapes.h;
// the reference forwards every row; finished rows only ever produce discarded
// scores).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/evaluator.h"
#include "model/gpt.h"
#include "ttt/chunk_plan.h"

namespace pgolf {

class ByteCounter;

struct TttOptions {
  std::string recipe = "lora-0317";
  // Adapters.
  int lora_rank = 8;
  std::vector<std::string> targets = {"q", "v", "head"};  // of lora_target_names()
  // Optimizer: Adam (adamw = false, L2 decay) or AdamW (decoupled decay).
  double lr = 0.01, beta1 = 0.9, beta2 = 0.95, eps = 1e-10, weight_decay = 0.0;
  bool adamw = false;
  uint32_t grad_steps = 1;  // optimizer steps per chunk (> 1 re-forwards the window; scores come from the first)
  // Plan.
  uint32_t chunk = 256, context = 1024, batch_docs = 64;
  uint32_t trim = 0;  // E > 0: first keep ((N - 1) // E) E + 1 tokens (0410's eval-length trim)
  TttSchedule::Split split = TttSchedule::Split::RankSlices;
  uint64_t max_docs = 0;  // > 0: only the stream's first documents (a prefix, after the trim)
  // This rank's share of the one-rank plan's batches (keep_rank_batches in
  // ttt/chunk_plan.h): a document's result does not depend on the world size.
  int rank = 0, world = 1;
  // Numerics and reporting.
  uint64_t seed = 0;
  Precision precision = Precision::F32;
  uint16_t bos_id = 1;
  bool base = true;             // also score the same targets without TTT (ttt_base_windows)
  bool record_targets = false;  // fill TttResult::target_* (tests, --audit)
  bool cuda_graphs = true;      // replay repeated step shapes from CUDA graphs (ttt/ttt_step.h)
  bool timeline = false;        // fill TttResult::timeline
  std::function<void(uint64_t done, uint64_t total)> progress;  // targets scored so far, to score

  // The reference recipes: "lora-0317" (rank 8 on q, v, head; C 256, L 1024;
  // Adam lr 0.01, betas 0.9 / 0.95, eps 1e-10, no decay) and "varlen-0410"
  // (rank 96 on q, k, v, o, mlp, head; C 64, L 2048, trim 2048; AdamW lr 1e-4,
  // betas 0 / 0.999, eps 1e-10, decay 0.5; 64 documents per batch, 1 step).
  static TttOptions from_recipe(const std::string& name);
  // Throws pgolf::Error ("ttt: ...") on a bad knob.
  void validate() const;
};

// One chunk's totals (processing order): the dump hook's per-chunk arrays.
struct TttChunkTotals {
  uint32_t doc = 0, index = 0;  // TttPlan::docs index, chunk number in the document
  uint64_t target_begin = 0;    // first target position
  uint32_t targets = 0;
  uint64_t bytes = 0;
  double nll = 0, base_nll = 0;  // base_nll: NaN when not computed
};

// One step's times (TttOptions::timeline), in milliseconds from the loop's
// start: when the host began and finished issuing it, and when the device
// finished it (a mark queued after it; on the CPU, host time). Where the
// device finished a step before the host had issued the next, it waited.
struct TttStepTime {
  uint32_t batch = 0, step = 0;
  int64_t rows = 0, width = 0;
  bool update = false;
  char run = 0;  // TttStepRunner::last_run(): 'e' eager, 'c' capture, 'r' replay
  int captures = 0;  // graphs captured in it: its own and those captured ahead after its launch
  double host_begin = 0, host_end = 0, device_end = 0;
  double capture = 0, instantiate = 0, launch = 0;  // host ms in each (TttStepRunner::last_run())
  double reserved_mib = 0;  // device memory the allocator held after it (TttStepRunner::last_run())
};

struct TttResult {
  double nll_sum = 0, base_nll_sum = 0;  // nats over the scored targets, with / without TTT
  uint64_t targets = 0, bytes = 0;
  bool has_base = false;
  uint64_t num_docs = 0, batches = 0, steps = 0, updates = 0, tokens_in = 0;
  uint64_t used_tokens = 0;  // stream length after the trim and the document prefix
  // Host seconds spent in each phase of the step loop (where a run's time
  // goes: the GPU runs behind the host, so a phase that waits on it shows
  // here too): building step inputs, forwards, backward,
  // optimizer, reading scores back, queueing the base forwards.
  // With CUDA graphs a step's forward, backward and update are one replay.
  double host_prepare = 0, host_forward = 0, host_backward = 0, host_update = 0, host_replay = 0,
         host_read_back = 0, host_base = 0;
  int64_t graph_replays = 0, graph_captures = 0;  // steps replayed from a CUDA graph; graphs captured
  double warmup_seconds = 0;  // the device warm-up before the steps (CUDA), not part of the TTT work
  // Per document (TttPlan::docs index; the dump hook's per-document arrays).
  std::vector<DocumentTotals> docs, base_docs;
  std::vector<TttChunkTotals> chunks;
  std::vector<TttStepTime> timeline;  // with TttOptions::timeline, in step order
  // With TttOptions::record_targets, by target position (size used_tokens):
  // the NLL with and without TTT (NaN where not scored) and the times scored.
  std::vector<double> target_nll, target_base_nll;
  std::vector<uint8_t> target_times;

  double loss() const { return targets ? nll_sum / double(targets) : 0.0; }
  double base_loss() const { return targets ? base_nll_sum / double(targets) : 0.0; }
  double bpb() const;
  double base_bpb() const;
  double bpb_stderr() const;   // documents as the sampling unit (as EvalResult)
  double gain_stderr() const;  // of bpb - base_bpb, paired by document
  void add(const TttResult& other);  // reduction across ranks (then totals_from_docs for exact totals)
  // nll_sum and base_nll_sum as the sums of the per-document totals in
  // document order: the same bits whichever ranks ran which documents.
  void totals_from_docs();
  // Sums every rank's counts and per-document totals (one float64 all-reduce,
  // exact: each document belongs to one rank), then totals_from_docs; every
  // rank ends with the job's result. chunks and target_* stay this rank's own.
  // A single rank: nothing to do.
  void all_reduce_ranks();
};

// Runs TTT on `tokens` (the whole validation stream) with the model's weights
// where they are (CPU or CUDA; F64 wants float64 weights).
TttResult run_ttt(const GptWeights& w, const std::vector<uint16_t>& tokens, const ByteCounter& bytes,
                  const TttOptions& opt);

// The stream length run_ttt uses: the trim, then the first max_docs documents
// (up to and including the BOS that ends the last one).
uint64_t ttt_used_tokens(const std::vector<uint16_t>& tokens, const TttOptions& opt);

}  // namespace pgolf
