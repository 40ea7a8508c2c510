#include "ttt/ttt_step.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <deque>
#include <stdexcept>
#include <utility>

#include "data/lap_timer.h"
#include "model/pch.h"
#include "ttt/adam.h"
#include "ttt/lora_adapters.h"

#if PGOLF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace pgolf {

namespace {

// Graphs kept at most (the less frequent shapes past this run eagerly):
// their memory comes from one pool, so this bounds launches kept, not memory.
constexpr size_t kMaxGraphs = 128;
// Steps the device must still have queued before the one just issued for a
// graph to be captured ahead of its first step (a step takes it ~3-300 ms).
constexpr size_t kAheadDepth = 3;

#if PGOLF_WITH_CUDA
// Bytes the caching allocator holds on the device, in all pools ([0]: the aggregate).
size_t reserved_bytes(const at::Device& device) {
  return size_t(c10::cuda::CUDACachingAllocator::getDeviceStats(device.index()).reserved_bytes[0].current);
}

// Whether another graph may be captured: each adds to the shared pool what
// the blocks of the graphs before it cannot hold (little, the largest
// captured first, but not nothing), and a plan of many shapes (varlen-0410
// with a small chunk: dozens of widths) could fill the device. Captures stop
// once half of it is held after the allocator's free cached blocks are
// released; the shapes not captured by then run eagerly.
bool room_for_a_graph(const at::Device& device) {
  const size_t half = at::cuda::getDeviceProperties(device.index())->totalGlobalMem / 2;
  if (reserved_bytes(device) < half) return true;
  c10::cuda::CUDACachingAllocator::emptyCache();  // waits for the device: only when it may matter
  return reserved_bytes(device) < half;
}
#endif

}  // namespace

struct TttStepRunner::Scored {
  at::Tensor mask;  // [rows, width] bool on the device: the last `chunk` columns
  ScorePositions positions;
};

#if PGOLF_WITH_CUDA
struct TttStepRunner::Graph {
  at::cuda::CUDAGraph graph;
  TttStepInputs in;     // what the graph reads, on the device
  TttStepScores out;    // what it writes
};
struct TttStepRunner::Launched {
  std::deque<at::cuda::CUDAEvent> events;  // one per issued step, oldest first
};
#else
struct TttStepRunner::Graph {};
struct TttStepRunner::Launched {};
#endif

TttStepRunner::TttStepRunner(const GptWeights& w, const CastWeights& cast, Precision precision, uint32_t chunk,
                             uint32_t grad_steps, bool graphs)
    : w_(w),
      cast_(cast),
      precision_(precision),
      chunk_(chunk),
      grad_steps_(grad_steps),
      device_(w.get("tok_emb.weight").device()) {
  graphs_ = graphs && device_.is_cuda() && grad_steps == 1;
}

TttStepRunner::~TttStepRunner() = default;

void TttStepRunner::bind(BatchAdapters* adapters, FlatAdam* adam) {
  if (adapters != adapters_ || adam != adam_) graph_.clear();
  adapters_ = adapters;
  adam_ = adam;
}

const TttStepRunner::Scored& TttStepRunner::scored(int64_t rows, int64_t width) {
  std::unique_ptr<Scored>& s = scored_[{rows, width}];
  if (!s) {
    at::Tensor mask = at::zeros({rows, width}, at::kBool);
    mask.narrow(1, width - std::min<int64_t>(chunk_, width), std::min<int64_t>(chunk_, width)).fill_(true);
    s = std::make_unique<Scored>();
    s->mask = to_device(mask, device_);
    s->positions = find_score_positions(mask, device_);
  }
  return *s;
}

TttStepScores TttStepRunner::step(const TttStepShape& sh, const TttStepInputs& b, bool timed) {
  // Shapes: inputs, targets [R, W]; the loss reads each row's last C columns.
  LapTimer t;
  const Scored& sc = scored(sh.rows, sh.width);
  ForwardOptions fo;
  fo.precision = precision_;
  fo.cast = &cast_;
  fo.score_mask = sc.mask;
  fo.positions = sc.positions;
  fo.flash_backward = true;
  auto adapters = [&] {
    return sh.first_row >= 0 ? adapters_->views(sh.first_row, sh.rows) : adapters_->views(b.adapter_rows);
  };
  LoraSet lora = adapters();
  fo.lora = &lora;
  TttStepScores out;
  at::Tensor nll;
  {
    c10::AutoGradMode grad(sh.update);  // the graph is kept only when an update follows
    nll = forward_nll(w_, b.inputs, b.targets, fo);
  }
  out.nll = nll.detach();
  if (timed) seconds_.forward += t.lap();
  if (!sh.update) return out;
  const int64_t C = std::min<int64_t>(chunk_, sh.width);
  for (uint32_t g = 0; g < grad_steps_; ++g) {
    c10::AutoGradMode grad(true);
    if (g > 0) {  // more steps on the same window (TTT_GRAD_STEPS)
      adam_->prepare();
      lora = adapters();
      nll = forward_nll(w_, b.inputs, b.targets, fo);
    }
    // The sum over trained rows of each row's mean NLL over its chunk; the
    // other rows weigh 0, so their adapters get exactly zero gradient.
    adapters_->zero_grad();
    (nll.narrow(1, sh.width - C, C).mean(1) * b.train_weight).sum().backward();
    nll = at::Tensor();  // frees the graph's activations before the update
    if (timed) seconds_.backward += t.lap();
    adam_->apply(adapters_->params(), adapters_->grad(), adapters_->mirror(),
                 sh.first_row >= 0 ? &adapters_->row_parts(sh.first_row, sh.rows) : nullptr);
    if (timed) seconds_.update += t.lap();
  }
  return out;
}

void TttStepRunner::expect(const TttStepShape& shape) {
  if (chosen_) throw std::logic_error("TttStepRunner::expect after the first run");
  ++expected_[shape];
  sequence_.push_back(shape);
}

void TttStepRunner::choose_candidates() {
  chosen_ = true;
  if (!graphs_) return;
  // The most frequent repeating shapes (ties: the larger first).
  std::vector<std::pair<int, TttStepShape>> by_count;
  for (const auto& [shape, count] : expected_)
    if (count >= 2) by_count.emplace_back(count, shape);
  const auto size = [](const TttStepShape& a) { return std::make_pair(a.rows * a.width, int(a.update)); };
  std::stable_sort(by_count.begin(), by_count.end(), [&](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : size(a.second) > size(b.second);
  });
  if (by_count.size() > kMaxGraphs) by_count.resize(kMaxGraphs);
  // Their device buffers and score masks now, while the device is idle: a
  // host-to-device copy goes through page-locked host memory, whose
  // allocation can wait for the device (a capture ahead would then wait).
  for (const auto& [count, shape] : by_count) {
    if (buffers_.empty() || size(shape) > size(largest_)) largest_ = shape;
    scored(shape.rows, shape.width);
    buffers_[shape] = placeholder_inputs(shape, device_);
    if (shape.update && shape.first_row >= 0) adapters_->row_parts(shape.first_row, shape.rows);
  }
}

TttStepInputs TttStepRunner::placeholder_inputs(const TttStepShape& sh, const at::Device& device) const {
  const at::TensorOptions id = at::TensorOptions(at::kLong).device(device);
  const int64_t first = std::max<int64_t>(sh.first_row, 0);
  return {at::zeros({sh.rows, sh.width}, id), at::zeros({sh.rows, sh.width}, id), at::arange(first, first + sh.rows, id),
          at::zeros({sh.rows}, adapters_->params().options().device(device))};
}

bool TttStepRunner::capture_if_room(const TttStepShape& sh) {
  auto may = [&](const TttStepShape& x) {
    if (!graphs_ || full_ || !buffers_.count(x) || graph_.count(x)) return false;
    if (!warm_ || (x.update && !warm_update_)) return false;  // what a capture must not set up
#if PGOLF_WITH_CUDA
    if (room_for_a_graph(device_)) return true;
#endif
    full_ = true;
    return false;
  };
  if (!may(sh)) return false;
  if (graph_.empty() && !(largest_ == sh) && may(largest_)) capture(largest_);  // its blocks serve the others
  if (!may(sh)) return false;  // the largest may have used the room
  capture(sh);
  return true;
}

TttStepScores TttStepRunner::warm_up(const TttStepShape& sh) {
  if (!adapters_ || !adam_) throw std::logic_error("TttStepRunner::warm_up before bind");
  if (sh.update) adam_->prepare();
  last_ = LastRunTimes{};
  return run_eagerly(sh, placeholder_inputs(sh, at::kCPU));  // uploaded as a step's inputs are
}

TttStepScores TttStepRunner::run(const TttStepShape& sh, const TttStepInputs& in) {
  if (!adapters_ || !adam_) throw std::logic_error("TttStepRunner::run before bind");
  if (next_ >= sequence_.size() || !(sequence_[next_] == sh))
    throw std::logic_error("TttStepRunner::run: not the shape announced next");
  if (!chosen_) choose_candidates();
  ++next_;
  if (sh.update) adam_->prepare();  // host side of the update: queued before the step reads it
  last_ = LastRunTimes{};
  TttStepScores out;
#if PGOLF_WITH_CUDA
  LapTimer t;
  auto it = graph_.find(sh);
  if (it == graph_.end()) {
    const bool captured = capture_if_room(sh);
    if (last_.captures) last_.capture_ms = 1e3 * t.lap();
    if (captured) it = graph_.find(sh), last_.run = 'c';
  }
  if (it == graph_.end()) {
    out = run_eagerly(sh, in);
  } else {
    if (last_.run != 'c') last_.run = 'r';
    TttStepInputs& g = it->second->in;  // the graph reads these buffers: refill them in place
    for (auto [dst, src] : {std::pair{&g.inputs, &in.inputs}, {&g.targets, &in.targets},
                            {&g.adapter_rows, &in.adapter_rows}, {&g.train_weight, &in.train_weight}})
      dst->copy_(src->pin_memory(), /*non_blocking=*/true);
    it->second->graph.replay();
    ++replays_;
    last_.launch_ms = 1e3 * t.lap();
    seconds_.replay += 1e-3 * (last_.capture_ms + last_.launch_ms);  // capture_ms includes the instantiations
    out = it->second->out;
  }
  if (graphs_ && !full_ && graph_.size() < buffers_.size()) {  // the device's progress, for capture_ahead
    if (!launched_) launched_ = std::make_unique<Launched>();
    launched_->events.emplace_back();
    launched_->events.back().record(at::cuda::getCurrentCUDAStream());
  }
  if (device_.is_cuda()) last_.reserved_mib = double(reserved_bytes(device_)) / double(1 << 20);
  return out;
#else
  (void)in;
  return run_eagerly(sh, in);
#endif
}

void TttStepRunner::capture_ahead() {
#if PGOLF_WITH_CUDA
  if (!launched_) return;
  // Whether the device is still busy with kAheadDepth steps before the last
  // one issued: then a capture now (tens of milliseconds of host time; it
  // runs nothing on the device) costs the device little or nothing.
  std::deque<at::cuda::CUDAEvent>& ev = launched_->events;
  while (!ev.empty() && ev.front().query()) ev.pop_front();
  if (ev.size() <= kAheadDepth || full_) return;
  LapTimer t;
  for (ahead_ = std::max(ahead_, next_); ahead_ < sequence_.size(); ++ahead_) {
    const TttStepShape& sh = sequence_[ahead_];
    if (!buffers_.count(sh) || graph_.count(sh)) continue;
    if (capture_if_room(sh)) ++ahead_;
    break;  // one capture per call: the device's queue is short
  }
  const double ms = 1e3 * t.lap();
  last_.capture_ms += ms;
  seconds_.replay += 1e-3 * ms;
  if (last_.captures) last_.reserved_mib = double(reserved_bytes(device_)) / double(1 << 20);
#endif
}

TttStepScores TttStepRunner::run_eagerly(const TttStepShape& sh, const TttStepInputs& in) {
  TttStepInputs b;
  upload(in, b);
  warm_ = true;
  warm_update_ |= sh.update;
  last_.run = 'e';
  return step(sh, b, /*timed=*/true);
}

void TttStepRunner::upload(const TttStepInputs& in, TttStepInputs& b) const {
  b.inputs = to_device(in.inputs, device_);
  b.targets = to_device(in.targets, device_);
  b.adapter_rows = to_device(in.adapter_rows, device_);
  b.train_weight = to_device(in.train_weight, device_);
}

void TttStepRunner::capture(const TttStepShape& sh) {
#if PGOLF_WITH_CUDA
  // Nothing runs during a capture: the step is replayed after, from its
  // buffers (buffers_, refilled before each replay). One memory pool for all
  // the graphs (the first one's): their replays never overlap (one stream)
  // and each keeps its outputs alive.
  LapTimer t;
  auto g = std::make_unique<Graph>();
  g->in = buffers_.at(sh);
  if (sh.update && sh.first_row >= 0) adapters_->row_parts(sh.first_row, sh.rows);  // its copy, outside the capture
  if (graph_.empty())
    g->graph.capture_begin();
  else
    g->graph.capture_begin(graph_.begin()->second->graph.pool());
  g->out = step(sh, g->in, /*timed=*/false);
  t.lap();
  g->graph.capture_end();  // and instantiation
  last_.instantiate_ms += 1e3 * t.lap();
  graph_.emplace(sh, std::move(g));
  ++captures_;
  ++last_.captures;
#else
  (void)sh;
  throw std::logic_error("TttStepRunner: graphs need a CUDA build");
#endif
}

}  // namespace pgolf
