// One TTT step on the device (ttt/ttt_runner.h runs them in order): the
// forward of the step's rows with their adapters -- its NLL is the step's
// scores --, the same rows without adapters (the base scores), then, when the
// step trains, the loss, its backward and one optimizer step. Scores come
// from the forward, so they are final before the update (score first).
//
// Every row scores its last `chunk` columns, where all of a step's scored
// targets lie (ttt/chunk_plan.h: width min((s+1) C, L), a chunk ends at the
// row's end or, for a short last chunk, inside those columns); the caller
// keeps the real ones. A step is then a function of its shape and a few
// device buffers, and TTT runs few shapes many times: the whole step -- ~1,000
// kernels forward, backward and Adam -- is replayed from a CUDA graph, one
// launch instead of milliseconds of host work per step. The caller announces
// the plan's shapes first (expect); a shape that comes more than once gets a
// graph, one that comes once runs eagerly. Recording a graph takes the host
// tens of milliseconds, and the device runs only a few steps ahead of the
// host (launches block), so the graphs are recorded by a second host thread
// (start_captures), in the order the shapes first come, while this one keeps
// the device busy; a step whose graph is not recorded yet waits for it.
// Graphs keep their memory: once they hold half of the device, the shapes
// not yet recorded run eagerly.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <exception>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
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
// every row's last `chunk` columns (0 elsewhere); base: without adapters
// (undefined unless the shape asks). From a replay these are the graph's own
// buffers, and graphs share one memory pool: copy them out (HostCopy) before
// the next run().
struct TttStepScores {
  at::Tensor nll, base;
};

// Host seconds per part of the eager steps and of the graph launches.
struct TttStepSeconds {
  double forward = 0, backward = 0, update = 0, replay = 0;
  double capture_wait = 0;  // waiting for the capture thread to record a step's graph
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
  // between batches keeps the graphs. Not while captures run.
  void bind(BatchAdapters* adapters, FlatAdam* adam);
  // One step of this shape will come (before the first run).
  void expect(const TttStepShape& shape) {
    if (expected_[shape]++ == 0) order_.push_back(shape);
  }
  // One eager step of shape on in (dummy rows: it trains the adapters), on
  // this thread and, with graphs, on the capture thread, which it starts:
  // what a capture must not do -- create cuBLAS handles and workspaces for
  // the thread and stream, load kernels -- is done then. Waits for both.
  void warm_up(const TttStepShape& shape, const TttStepInputs& in);
  // The capture thread records a graph for each expected shape that comes
  // more than once, in order of first expect (after warm_up; a no-op
  // without graphs). finish_captures() waits for it to end.
  void start_captures();
  void finish_captures();
  TttStepScores run(const TttStepShape& shape, const TttStepInputs& in);

  // How the last run() ran its step -- run: 'e' eagerly, 'f' the first replay
  // of its graph, 'r' a replay -- and its host milliseconds waiting for its
  // graph to be recorded and in the launch with its input refill (0 where
  // none).
  struct LastRunTimes {
    char run = 0;
    double capture_wait_ms = 0, launch_ms = 0;
  };
  const LastRunTimes& last_run() const { return last_; }
  int64_t replays() const { return replays_; }
  int64_t captures() const;
  // Host seconds the capture thread spent recording and instantiating graphs.
  double capture_seconds() const;
  // Each graph as the capture thread made it: host ms preparing its inputs,
  // recording its launches and ending the capture (with instantiation), the
  // memory segments the allocator had to add meanwhile, and when it was done.
  struct CaptureTime {
    TttStepShape shape;
    double prep_ms = 0, record_ms = 0, end_ms = 0;
    int64_t new_segments = 0;
    std::chrono::steady_clock::time_point done;
  };
  std::vector<CaptureTime> capture_times() const;
  const TttStepSeconds& seconds() const { return seconds_; }

 private:
  struct Scored;  // a (rows, width)'s score mask and positions
  struct Graph;
  struct Capturer;  // the capture thread and its stream
  const Scored& scored(int64_t rows, int64_t width);
  TttStepScores step(const TttStepShape& shape, const TttStepInputs& b, bool timed);  // b on the device
  TttStepInputs upload(const TttStepInputs& in) const;
  void capture_all();  // the capture thread's work
  Graph* wait_for_graph(const TttStepShape& shape);

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
  std::vector<TttStepShape> order_;  // expected shapes, each once, in order of first expect
  // One autograd step at a time (this thread's eager steps, the capture
  // thread's recordings): they share the adapters' leaves and the caches.
  std::mutex step_mu_;
  // Guards graph_, to_capture_, capture_seconds_, capture_times_,
  // capture_error_ between the two threads.
  mutable std::mutex graph_mu_;
  std::map<TttStepShape, std::unique_ptr<Graph>> graph_;
  std::condition_variable graph_cv_;  // a shape left to_capture_
  std::set<TttStepShape> to_capture_;  // shapes the capture thread has yet to record or refuse
  double capture_seconds_ = 0;
  std::vector<CaptureTime> capture_times_;
  std::exception_ptr capture_error_;  // the capture thread's, for the step loop to rethrow
  std::unique_ptr<Capturer> capturer_;
  int64_t replays_ = 0;
  LastRunTimes last_;
  TttStepSeconds seconds_;
};

}  // namespace pgolf
