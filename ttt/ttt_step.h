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
// device buffers, and TTT runs few shapes many times: the whole step -- ~700-800
// kernels forward, backward and Adam -- is replayed from a CUDA graph, one
// launch instead of milliseconds of host work per step.
//
// Which shapes get graphs, and when. The caller announces every step's shape
// in run order first (expect). The shapes that come more than once are
// candidates, the most frequent first (run eagerly, a small step costs the
// host ~10x its device time, a large one about its device time), up to 128
// graphs and while the graphs hold less than half of the device; the others
// run eagerly, and so does the warm-up step before the first run (warm_up: it
// sets up what a capture must not -- cuBLAS handles and workspaces on the
// stream and the autograd thread, kernel attributes). A capture costs the
// host tens of milliseconds in which it issues nothing, so captures go where
// the device has work queued to hide them: when the caller has issued a step
// while the device still has more than a few earlier steps to run
// (capture_ahead), the next candidate in run order is captured ahead of its
// first step; a candidate whose first step comes before that is captured at
// it. (A capture ahead takes the host 60-140 ms, against ~25-30 ms for the
// first ones, with or without CUDA's lazy module loading; why is not known,
// so lora-0317 gains little from them.) All graphs
// share one memory pool and the largest candidate is captured first, so that
// its blocks serve the others: captured in the order the plan meets them
// (growing widths), each new graph added segments of its own.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

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
  // The next step announced will be of this shape: call once per step, in
  // run order, before the first run().
  void expect(const TttStepShape& shape);
  // One step of this shape outside the announced ones, eagerly, on rows of
  // token 0 that train nothing (its scores are returned like run()'s): the
  // device warm-up before the first run().
  TttStepScores warm_up(const TttStepShape& shape);
  // The next announced step; throws std::logic_error if its shape is not the
  // one announced next.
  TttStepScores run(const TttStepShape& shape, const TttStepInputs& in);
  // Host time to spare after a run(): captures the next candidate in run
  // order if the device still has steps queued before the last one (counted
  // in last_run()).
  void capture_ahead();

  // How the last run() ran its step -- run: 'e' eagerly, 'c' captured (then
  // replayed), 'r' replayed --, the graphs it captured (its own and those
  // captured ahead after its launch), their host milliseconds (instantiations
  // included), their instantiations alone, and the launch with its input
  // refill (0 where none); reserved_mib: the device memory the caching
  // allocator held right after (graphs' pool included; 0 on the CPU).
  struct LastRunTimes {
    char run = 0;
    int captures = 0;
    double capture_ms = 0, instantiate_ms = 0, launch_ms = 0, reserved_mib = 0;
  };
  const LastRunTimes& last_run() const { return last_; }
  int64_t replays() const { return replays_; }
  int64_t captures() const { return captures_; }
  const TttStepSeconds& seconds() const { return seconds_; }

 private:
  struct Scored;  // a (rows, width)'s score mask and positions
  struct Graph;
  struct Launched;  // device events of the steps issued and not yet known done
  const Scored& scored(int64_t rows, int64_t width);
  TttStepScores step(const TttStepShape& shape, const TttStepInputs& b, bool timed);  // b on the device
  TttStepScores run_eagerly(const TttStepShape& shape, const TttStepInputs& in);    // no graph
  void upload(const TttStepInputs& in, TttStepInputs& b) const;                      // to the device
  void capture(const TttStepShape& shape);        // a graph of its step, reading buffers_[shape]
  void choose_candidates();  // buffers_, largest_ from the announced shapes
  // Token-0 inputs of the shape's sizes that train nothing, on `device`.
  TttStepInputs placeholder_inputs(const TttStepShape& shape, const at::Device& device) const;
  // Captures the shape's graph (the largest candidate's first, when it is
  // the first) if it is a candidate without one and the graphs have room.
  bool capture_if_room(const TttStepShape& shape);

  const GptWeights& w_;
  const CastWeights& cast_;
  Precision precision_;
  uint32_t chunk_, grad_steps_;
  bool graphs_;
  at::Device device_;
  BatchAdapters* adapters_ = nullptr;
  FlatAdam* adam_ = nullptr;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Scored>> scored_;
  std::map<TttStepShape, int> expected_;   // steps announced per shape
  std::vector<TttStepShape> sequence_;     // every announced step's shape, in run order
  size_t next_ = 0;                        // sequence_ index of the next run()
  size_t ahead_ = 0;                       // no candidate without a graph in sequence_ [next_, ahead_)
  bool chosen_ = false;                    // candidates chosen (at the first run())
  // The candidates (the shapes that may get a graph) and their device inputs,
  // which their graphs read.
  std::map<TttStepShape, TttStepInputs> buffers_;
  TttStepShape largest_;                   // the candidate with the most rows x width, captured first
  bool warm_ = false, warm_update_ = false;  // an eager step, an eager step with an update have run
  bool full_ = false;                          // no more captures: the graphs hold half the device
  std::map<TttStepShape, std::unique_ptr<Graph>> graph_;
  std::unique_ptr<Launched> launched_;
  int64_t replays_ = 0, captures_ = 0;
  LastRunTimes last_;
  TttStepSeconds seconds_;
};

}  // namespace pgolf
