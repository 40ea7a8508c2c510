#include "ttt/ttt_step.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "data/lap_timer.h"
#include "model/pch.h"
#include "ttt/adam.h"
#include "ttt/lora_adapters.h"

#if PGOLF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace pgolf {

namespace {

// Graphs kept at most (each new shape past this runs eagerly): their memory
// comes from one pool, so this bounds launches kept, not memory.
constexpr size_t kMaxGraphs = 64;

#if PGOLF_WITH_CUDA
// Bytes the caching allocator holds on the device, in all pools ([0]: the aggregate).
size_t reserved_bytes(const at::Device& device) {
  return size_t(c10::cuda::CUDACachingAllocator::getDeviceStats(device.index()).reserved_bytes[0].current);
}

// Whether another graph may be captured: each adds to the shared pool what
// the blocks of the graphs before it cannot hold (little, captured largest
// first, but not nothing), and a plan of many shapes (varlen-0410 with a
// small chunk: dozens of widths) could fill the device. Captures stop once half of it is held after the
// allocator's free cached blocks are released; later new shapes run eagerly.
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
#else
struct TttStepRunner::Graph {};
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
    adam_->apply(adapters_->params(), adapters_->grad(), adapters_->mirror());
    if (timed) seconds_.update += t.lap();
  }
  return out;
}

bool TttStepRunner::would_capture(const TttStepShape& sh) const {
  const bool warm = warm_ && (warm_update_ || !sh.update);
  const auto e = expected_.find(sh);
  return graphs_ && warm && !graph_.count(sh) && e != expected_.end() && e->second >= 2 &&
         graph_.size() < kMaxGraphs && !full_;
}

TttStepScores TttStepRunner::run(const TttStepShape& sh, const TttStepInputs& in) {
  if (!adapters_ || !adam_) throw std::logic_error("TttStepRunner::run before bind");
  if (sh.update) adam_->prepare();  // host side of the update: queued before the step reads it
  last_ = LastRunTimes{};
  auto it = graph_.find(sh);
  if (it == graph_.end() && !would_capture(sh)) return run_eagerly(sh, in);
#if PGOLF_WITH_CUDA
  LapTimer t;
  if (it == graph_.end()) {
    // Capture every shape that may be captured now, this one included, the
    // largest first. The graphs share one memory pool, and a capture reuses
    // the blocks its predecessors freed only where they are large enough:
    // captured in the order the plan meets them (growing widths) each new
    // graph added segments of its own, and varlen-0410's graphs filled half
    // the device by width 1408 of 2048. Largest first, the first graph's
    // blocks serve all the others.
    std::vector<TttStepShape> todo;
    for (const auto& [shape, count] : expected_)
      if (would_capture(shape)) todo.push_back(shape);
    std::stable_sort(todo.begin(), todo.end(), [](const TttStepShape& a, const TttStepShape& b) {
      return std::make_pair(a.rows * a.width, int(a.update)) > std::make_pair(b.rows * b.width, int(b.update));
    });
    const at::ScalarType weight_type = adapters_->params().scalar_type();
    for (const TttStepShape& shape : todo) {
      if (graph_.size() >= kMaxGraphs || !room_for_a_graph(device_)) {
        full_ = true;
        break;
      }
      // Inputs: this step's own, or placeholders of the shape's sizes (a
      // capture runs nothing; replays refill them).
      const int64_t first = std::max<int64_t>(shape.first_row, 0);
      capture(shape, shape == sh ? in
                                 : TttStepInputs{at::zeros({shape.rows, shape.width}, at::kLong),
                                                 at::zeros({shape.rows, shape.width}, at::kLong),
                                                 at::arange(first, first + shape.rows, at::kLong),
                                                 at::zeros({shape.rows}, weight_type)});
    }
    last_.capture_ms = 1e3 * t.lap();
    it = graph_.find(sh);
    if (it == graph_.end()) return run_eagerly(sh, in);  // no room was left for it
    last_.run = 'c';
  } else {
    last_.run = 'r';
  }
  TttStepInputs& g = it->second->in;  // the graph reads these buffers: refill them in place
  for (auto [dst, src] : {std::pair{&g.inputs, &in.inputs}, {&g.targets, &in.targets},
                          {&g.adapter_rows, &in.adapter_rows}, {&g.train_weight, &in.train_weight}})
    dst->copy_(src->pin_memory(), /*non_blocking=*/true);
  it->second->graph.replay();
  ++replays_;
  last_.launch_ms = 1e3 * t.lap();
  last_.reserved_mib = double(reserved_bytes(device_)) / double(1 << 20);
  seconds_.replay += 1e-3 * (last_.capture_ms + last_.launch_ms);  // capture_ms includes the instantiations
  return it->second->out;
#else
  throw std::logic_error("TttStepRunner: graphs need a CUDA build");
#endif
}

TttStepScores TttStepRunner::run_eagerly(const TttStepShape& sh, const TttStepInputs& in) {
  TttStepInputs b;
  upload(in, b);
  warm_ = true;
  warm_update_ |= sh.update;
  last_.run = 'e';
  TttStepScores out = step(sh, b, /*timed=*/true);
#if PGOLF_WITH_CUDA
  if (device_.is_cuda()) last_.reserved_mib = double(reserved_bytes(device_)) / double(1 << 20);
#endif
  return out;
}

void TttStepRunner::upload(const TttStepInputs& in, TttStepInputs& b) const {
  b.inputs = to_device(in.inputs, device_);
  b.targets = to_device(in.targets, device_);
  b.adapter_rows = to_device(in.adapter_rows, device_);
  b.train_weight = to_device(in.train_weight, device_);
}

void TttStepRunner::capture(const TttStepShape& sh, const TttStepInputs& in) {
#if PGOLF_WITH_CUDA
  // Nothing runs during a capture: the step is replayed after. One memory
  // pool for all the graphs (the first one's): their replays never overlap
  // (one stream) and each keeps its outputs alive.
  LapTimer t;
  auto g = std::make_unique<Graph>();
  upload(in, g->in);
  scored(sh.rows, sh.width);  // its host-to-device copies must not be captured
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
#else
  (void)sh, (void)in;
  throw std::logic_error("TttStepRunner: graphs need a CUDA build");
#endif
}

}  // namespace pgolf
