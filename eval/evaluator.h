// Scores a token stream with a model: standard or sliding-window evaluation
// (SPEC §3, §4), NLL and bytes summed in float64, per-document totals for the
// standard error. Work is split over ranks in whole batches of windows
// (rank_slice_batch_aligned); each rank returns its own sums and the caller
// reduces them (EvalResult::all_reduce_ranks).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/window_plan.h"
#include "model/gpt.h"

namespace pgolf {

class TokenStream;
class ByteCounter;

struct EvalOptions {
  PlanKind plan = PlanKind::Standard;
  uint32_t seq_len = 1024;
  uint32_t stride = 0;          // sliding plans only
  bool doc_mask = false;        // attention restricted to documents inside a window
  uint64_t batch_tokens = 65536;  // tokens per forward (windows per batch = batch_tokens / seq_len)
  Precision precision = Precision::F32;
  uint16_t bos_id = 1;
  int rank = 0, world = 1;
  // Replay repeated batches from a CUDA graph (model/forward_graph.h); the
  // same kernels on the same shapes, so the same numbers. Off: every batch
  // launched from the host (for comparison).
  bool cuda_graphs = true;
  bool capture_targets = false;  // fill EvalResult::scored (eval --dump); off costs one branch per target
  // Called after each batch with (scored targets so far, total to score).
  std::function<void(uint64_t, uint64_t)> progress;
};

struct DocumentTotals {
  double nll = 0;
  uint64_t bytes = 0, targets = 0;
};

// One scoring of one target, as captured with EvalOptions::capture_targets.
struct ScoredTarget {
  uint64_t target;  // target index t: the prediction of tok[t + 1] after tok[t]
  double nll;       // nats
  uint32_t bytes;
  uint32_t doc;  // index into EvalResult::docs
};

struct EvalResult {
  double nll_sum = 0;       // nats, over scored targets (repeats included, as the reference counts them)
  uint64_t targets = 0;     // scored targets (repeats included)
  uint64_t bytes = 0;       // bytes of the scored targets (repeats included)
  uint64_t windows = 0;     // windows this rank ran
  uint64_t tokens_in = 0;   // input tokens fed to the model
  uint64_t graph_replays = 0;  // batches replayed from a CUDA graph
  // Host seconds building batches, queueing forwards, and reading scores back
  // (waiting for the GPU shows up there). This rank's, not reduced.
  double host_prepare = 0, host_forward = 0, host_read_back = 0;
  // CUDA: the one-time device warm-up before the timed batches (this rank's):
  // kernel loading, library handles, the first shape's attention plan.
  double warmup_seconds = 0;
  // By document index (a target belongs to the document of the token before
  // it); targets whose context starts before the first BOS go to the last entry.
  std::vector<DocumentTotals> docs;
  std::vector<ScoredTarget> scored;  // every scoring in plan order (capture_targets only)

  // One scoring of a target of document `doc` (an index into docs).
  void count(double nll, uint32_t nbytes, size_t doc) {
    DocumentTotals& d = docs[doc];
    d.nll += nll;
    d.bytes += nbytes;
    d.targets += 1;
    nll_sum += nll;
    bytes += nbytes;
    targets += 1;
  }
  double loss() const { return targets ? nll_sum / double(targets) : 0.0; }
  double bpb() const;
  // Standard error of bpb with documents as the sampling unit (ratio estimator).
  double bpb_stderr() const;
  void add(const EvalResult& other);  // reduction across ranks (sums; per-document sums; scored appended)
  // Sums every rank's totals and per-document totals (one float64 all-reduce);
  // every rank ends with the job's result. With gather_scored, rank 0's
  // `scored` becomes every rank's in rank order -- plan order, since ranks run
  // contiguous window slices -- exactly as captured; the others' is emptied.
  // A single rank: nothing to do.
  void all_reduce_ranks(bool gather_scored);
};

WindowPlan make_eval_plan(uint64_t num_tokens, const EvalOptions& opt);

// Windows [b0, b0 + nb) of a list (a plan's, or any) as CPU tensors: inputs / targets [nb, L]
// int64 (short windows padded with 0), score mask [nb, L] bool; `scored` the
// number of scored targets.
struct WindowBatch {
  at::Tensor inputs, targets, mask;
  int64_t scored = 0;
};
WindowBatch make_window_batch(const std::vector<Window>& windows, size_t b0, size_t nb,
                              const std::vector<uint16_t>& tok, int64_t L);
EvalResult evaluate(const GptWeights& w, const TokenStream& stream, const ByteCounter& bytes, const EvalOptions& opt);

}  // namespace pgolf
