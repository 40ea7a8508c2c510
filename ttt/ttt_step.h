// One TTT step on the device (ttt/ttt_runner.h runs them in order): the
// forward of the step's rows with their adapters -- its NLL is the step's
// scores --, then, when the step trains, the loss, its backward and one
// optimizer step. Scores come from the forward, so they are final before the
// update (score first).
//
// Every row scores its last `chunk` columns, where all of a step's scored
// targets lie (ttt/chunk_plan.h: width min((s+1) C, L), a chunk ends at the
// row's end or, for a short last chunk, inside those columns); the caller
// keeps the real ones. A step is then a function of its shape and a few
// device buffers, and TTT runs few shapes many times: from a shape's second
// step on, the whole step -- ~700-800 kernels forward, backward and Adam --
// is replayed from a CUDA graph, one launch instead of milliseconds of host
// work per step. The caller announces the plan's shapes first (expect): the
// shapes that come more than once are all captured when the first of them
// comes, the largest first (they share one memory pool, which the largest
// sizes for all), one that comes once runs eagerly, and so does the run's
// first step (it sets up what a capture must not: cuBLAS handles and
// workspaces on the stream and the autograd thread, kernel attributes).
// Graphs keep their memory: once they hold half of the device, or past 64
// graphs, the remaining shapes run eagerly.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>

#include "model/gpt.h"
#include "ttt/step_shapes.h"

namespace pgolf {

class BatchAdapters;
class FlatAdam;

// What one step reads, on the CPU: inputs, targets [rows, width] int64;
// adapter_rows [rows] int64, the batch rows whose adapters the step's rows
// use (ascending); train_weight [rows] float, 1 where the row's chunk loss
// counts in the update (it has a next chunk) and 0 where it does not.
struct TttStepInputs {
  at::Tensor inputs, targets, adapter_rows, train_weight;
};

// A step's NLL [rows, width] (float32; float64 under F64) on the device, at
// every row's last `chunk` columns (0 elsewhere). From a replay it is the
// graph's own buffer, and graphs share one memory pool: copy it out
// (HostCopy) before the next run().
struct TttStepScores {
  at::Tensor nll;
};

// Host seconds per part of the eager steps and of the graph launches.
struct TttStepSeconds {
  double forward = 0, backward = 0, update = 0, replay = 0;
};

class TttStepRunner {
 public:
  // w, cast must outlive the runner. grad_steps > 1 re-forwards the window
  // for each extra update (eagerly: no graphs then).
  TttStepRunner(const GptWeights& w, const CastWeights& cast, Precision precision, uint32_t chunk,
                uint32_t grad_steps, bool graphs);
  ~TttStepRunner();
  TttStepRunner(const TttStepRunner&) = delete;
  TttStepRunner& operator=(const TttStepRunner&) = delete;

  // The batch's adapters and optimizer; call again after either is rebuilt
  // (drops the graphs, which hold their tensors). Resetting them in place
  // between batches keeps the graphs.
  void bind(BatchAdapters* adapters, FlatAdam* adam);
  // One step of this shape will come (before the first run).
  void expect(const TttStepShape& shape) { ++expected_[shape]; }
  // Whether run(shape) would capture a graph now (unless the graphs hold
  // too much memory): a new shape that comes again. Such a run captures
  // every shape for which this holds, the largest first, then replays its own.
  bool would_capture(const TttStepShape& shape) const;
  TttStepScores run(const TttStepShape& shape, const TttStepInputs& in);

  // How the last run() ran its step -- run: 'e' eagerly, 'c' captured (then
  // replayed), 'r' replayed -- and its host milliseconds in the captures
  // (every graph captured with it; instantiations included), their
  // instantiations alone, and the launch with its input refill (0 where none);
  // reserved_mib: the device memory the caching allocator held right after
  // (graphs' pool included; 0 on the CPU).
  struct LastRunTimes {
    char run = 0;
    double capture_ms = 0, instantiate_ms = 0, launch_ms = 0, reserved_mib = 0;
  };
  const LastRunTimes& last_run() const { return last_; }
  int64_t replays() const { return replays_; }
  int64_t captures() const { return captures_; }
  const TttStepSeconds& seconds() const { return seconds_; }

 private:
  struct Scored;  // a (rows, width)'s score mask and positions
  struct Graph;
  const Scored& scored(int64_t rows, int64_t width);
  TttStepScores step(const TttStepShape& shape, const TttStepInputs& b, bool timed);  // b on the device
  TttStepScores run_eagerly(const TttStepShape& shape, const TttStepInputs& in);    // no graph
  void upload(const TttStepInputs& in, TttStepInputs& b) const;                      // to the device
  void capture(const TttStepShape& shape, const TttStepInputs& in);                  // a graph of its step

  const GptWeights& w_;
  const CastWeights& cast_;
  Precision precision_;
  uint32_t chunk_, grad_steps_;
  bool graphs_;
  at::Device device_;
  BatchAdapters* adapters_ = nullptr;
  FlatAdam* adam_ = nullptr;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Scored>> scored_;
  std::map<TttStepShape, int> expected_;
  bool warm_ = false, warm_update_ = false;  // an eager step, an eager step with an update have run
  bool full_ = false;                          // no more captures: the graphs hold half the device
  std::map<TttStepShape, std::unique_ptr<Graph>> graph_;
  int64_t replays_ = 0, captures_ = 0;
  LastRunTimes last_;
  TttStepSeconds seconds_;
};

}  // namespace pgolf
