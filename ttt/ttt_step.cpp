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
// Whether another graph may be captured: each keeps its step's peak memory
// in the shared pool (shapes differ, so blocks are rarely reused), and a
// plan of many shapes (varlen-0410 with a small chunk: dozens of widths)
// would fill the device. Captures stop once half of it is held after the
// allocator's free cached blocks are released; later new shapes run eagerly.
bool room_for_a_graph(const at::Device& device) {
  const size_t half = at::cuda::getDeviceProperties(device.index())->totalGlobalMem / 2;
  auto held = [&] {  // reserved in all pools ([0]: the aggregate)
    return size_t(c10::cuda::CUDACachingAllocator::getDeviceStats(device.index()).reserved_bytes[0].current);
  };
  if (held() < half) return true;
  c10::cuda::CUDACachingAllocator::emptyCache();  // waits for the device: only when it may matter
  return held() < half;
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
    adam_->apply(adapters_->params(), adapters_->grad());
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

int TttStepRunner::captures_ahead() const {
  if (!graphs_ || full_) return 0;
  int n = 0;
  for (const auto& [sh, count] : expected_) n += count >= 2 && !graph_.count(sh);
  return std::min<int>(n, int(kMaxGraphs - graph_.size()));
}

TttStepScores TttStepRunner::run(const TttStepShape& sh, const TttStepInputs& in) {
  if (!adapters_ || !adam_) throw std::logic_error("TttStepRunner::run before bind");
  if (sh.update) adam_->prepare();  // host side of the update: queued before the step reads it
  auto upload = [&](TttStepInputs& b) {
    b.inputs = to_device(in.inputs, device_);
    b.targets = to_device(in.targets, device_);
    b.adapter_rows = to_device(in.adapter_rows, device_);
    b.train_weight = to_device(in.train_weight, device_);
  };
  last_ = LastRunTimes{};
  auto it = graph_.find(sh);
  bool capture = would_capture(sh);
#if PGOLF_WITH_CUDA
  if (capture && !room_for_a_graph(device_)) full_ = true, capture = false;
#endif
  if (it == graph_.end() && !capture) {
    TttStepInputs b;
    upload(b);
    warm_ = true;
    warm_update_ |= sh.update;
    last_.run = 'e';
    return step(sh, b, /*timed=*/true);
  }
#if PGOLF_WITH_CUDA
  LapTimer t;
  if (it == graph_.end()) {
    // Capture this shape's step. Nothing runs during a capture, so the step
    // still has to be replayed below. One memory pool for all the graphs
    // (the first one's): their replays never overlap (one stream) and each
    // keeps its outputs alive.
    auto g = std::make_unique<Graph>();
    upload(g->in);
    scored(sh.rows, sh.width);  // its host-to-device copies must not be captured
    if (graph_.empty())
      g->graph.capture_begin();
    else
      g->graph.capture_begin(graph_.begin()->second->graph.pool());
    g->out = step(sh, g->in, /*timed=*/false);
    last_.capture_ms = 1e3 * t.lap();
    g->graph.capture_end();  // and instantiation
    last_.instantiate_ms = 1e3 * t.lap();
    it = graph_.emplace(sh, std::move(g)).first;
    ++captures_;
    last_.run = 'c';
  } else {
    last_.run = 'r';
    TttStepInputs& g = it->second->in;  // the graph reads these buffers: refill them in place
    for (auto [dst, src] : {std::pair{&g.inputs, &in.inputs}, {&g.targets, &in.targets},
                            {&g.adapter_rows, &in.adapter_rows}, {&g.train_weight, &in.train_weight}})
      dst->copy_(src->pin_memory(), /*non_blocking=*/true);
  }
  it->second->graph.replay();
  ++replays_;
  last_.launch_ms = 1e3 * t.lap();
  seconds_.replay += 1e-3 * (last_.capture_ms + last_.instantiate_ms + last_.launch_ms);
  return it->second->out;
#else
  throw std::logic_error("TttStepRunner: graphs need a CUDA build");
#endif
}

}  // namespace pgolf
