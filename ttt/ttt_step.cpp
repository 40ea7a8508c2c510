#include "ttt/ttt_step.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <thread>
#include <utility>

#include "data/lap_timer.h"
#include "model/host_copy.h"
#include "model/pch.h"
#include "ttt/adam.h"
#include "ttt/lora_adapters.h"

#if PGOLF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
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
int64_t segment_count(const at::Device& d) {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(d.index()).segment[0].current;
}
#endif

}  // namespace

struct TttStepRunner::Scored {
  at::Tensor mask;  // [rows, width] bool on the device: the last `chunk` columns
  ScorePositions positions;
};

struct TttStepRunner::Graph {
#if PGOLF_WITH_CUDA
  at::cuda::CUDAGraph graph;
#endif
  TttStepInputs in;   // what the graph reads, on the device
  TttStepScores out;  // what it writes
  bool launched = false;
};

// The capture thread records on a stream of its own, which it owns: a
// capture takes every launch into its stream, so never the step loop's.
struct TttStepRunner::Capturer {
#if PGOLF_WITH_CUDA
  cudaStream_t raw = nullptr;
  at::cuda::MempoolId_t pool = compat::new_graph_pool();  // the graphs' shared memory pool
#endif
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  bool warm = false, go = false, stop = false;  // under mu
  std::exception_ptr error;                      // under mu

#if PGOLF_WITH_CUDA
  Capturer() { C10_CUDA_CHECK(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking)); }
  ~Capturer() {
    if (thread.joinable()) thread.join();
    cudaStreamDestroy(raw);
  }
  at::cuda::CUDAStream stream(const at::Device& d) const { return at::cuda::getStreamFromExternal(raw, d.index()); }
#endif
  bool stopped() {
    std::lock_guard<std::mutex> lk(mu);
    return stop;
  }
};

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

TttStepRunner::~TttStepRunner() {
  try {
    finish_captures();
  } catch (...) {  // finish_captures() reports it when called; a destructor must not throw
  }
}

void TttStepRunner::bind(BatchAdapters* adapters, FlatAdam* adam) {
  if (capturer_) throw std::logic_error("TttStepRunner::bind while captures run");
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
  if (sh.base) {
    c10::NoGradGuard no_grad;
    ForwardOptions plain = fo;
    plain.lora = nullptr;
    out.base = forward_nll(w_, b.inputs, b.targets, plain);
  }
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

TttStepInputs TttStepRunner::upload(const TttStepInputs& in) const {
  return TttStepInputs{to_device(in.inputs, device_), to_device(in.targets, device_),
                       to_device(in.adapter_rows, device_), to_device(in.train_weight, device_)};
}

void TttStepRunner::warm_up(const TttStepShape& sh, const TttStepInputs& in) {
  if (!adapters_ || !adam_) throw std::logic_error("TttStepRunner::warm_up before bind");
  HostCopy(run(sh, in).nll).wait();  // this thread's step, its work done
#if PGOLF_WITH_CUDA
  if (!graphs_ || capturer_ || !compat::has_threaded_capture) return;
  capturer_ = std::make_unique<Capturer>();
  Capturer& c = *capturer_;
  c.thread = std::thread([this, &c, sh, in] {
    c10::cuda::CUDAGuard device(device_.index());
    c10::cuda::CUDAStreamGuard stream(c.stream(device_));
    std::exception_ptr error;
    try {
      std::lock_guard<std::mutex> one_step(step_mu_);
      if (sh.update) adam_->prepare();
      step(sh, upload(in), /*timed=*/false);
      c.stream(device_).synchronize();
    } catch (...) {
      error = std::current_exception();
    }
    std::unique_lock<std::mutex> lk(c.mu);
    c.error = error;
    c.warm = true;
    c.cv.notify_all();
    c.cv.wait(lk, [&] { return c.go || c.stop; });
    if (c.stop || error) return;
    lk.unlock();
    try {
      capture_all();
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> g(graph_mu_);  // nothing more comes: wake whoever waits
      capture_error_ = error;
      to_capture_.clear();
    }
    graph_cv_.notify_all();
  });
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lk(c.mu);
    c.cv.wait(lk, [&] { return c.warm; });
    error = c.error;
  }
  if (error) finish_captures();  // joins, rethrows
#endif
}

void TttStepRunner::start_captures() {
  if (!capturer_) return;
  {
    std::lock_guard<std::mutex> lk(graph_mu_);
    for (const TttStepShape& sh : order_)
      if (expected_.at(sh) >= 2 && !graph_.count(sh)) to_capture_.insert(sh);
  }
  std::lock_guard<std::mutex> lk(capturer_->mu);
  capturer_->go = true;
  capturer_->cv.notify_all();
}

void TttStepRunner::finish_captures() {
  if (!capturer_) return;
  {
    std::lock_guard<std::mutex> lk(capturer_->mu);
    capturer_->stop = true;  // checked between captures: the rest are not made
    capturer_->cv.notify_all();
  }
  if (capturer_->thread.joinable()) capturer_->thread.join();
  std::exception_ptr error = capturer_->error;  // the warm-up's
  {
    std::lock_guard<std::mutex> lk(graph_mu_);
    to_capture_.clear();
    if (!error) error = capture_error_;
    capture_error_ = nullptr;
  }
  capturer_.reset();
  if (error) std::rethrow_exception(error);
}

int64_t TttStepRunner::captures() const {
  std::lock_guard<std::mutex> lk(graph_mu_);
  return int64_t(graph_.size());
}

double TttStepRunner::capture_seconds() const {
  std::lock_guard<std::mutex> lk(graph_mu_);
  return capture_seconds_;
}

std::vector<TttStepRunner::CaptureTime> TttStepRunner::capture_times() const {
  std::lock_guard<std::mutex> lk(graph_mu_);
  return capture_times_;
}

void TttStepRunner::capture_all() {
#if PGOLF_WITH_CUDA
  Capturer& c = *capturer_;
  const at::cuda::CUDAStream stream = c.stream(device_);
  for (const TttStepShape& sh : order_) {
    size_t held;
    {
      std::lock_guard<std::mutex> lk(graph_mu_);
      if (!to_capture_.count(sh)) continue;
      held = graph_.size();
    }
    if (c.stopped() || held >= kMaxGraphs || !room_for_a_graph(device_)) return;  // the rest run eagerly
    std::unique_ptr<Graph> g = std::make_unique<Graph>();
    CaptureTime ct;
    ct.shape = sh;
    LapTimer t;
    {
      std::lock_guard<std::mutex> one_step(step_mu_);
      const int64_t segments = segment_count(device_);
      // Placeholder inputs (each launch refills them) and the score mask,
      // written on this stream and finished before the graph is handed over:
      // the step loop's stream reads them with no event to wait for.
      const auto on = at::TensorOptions().device(device_).dtype(at::kLong);
      const int64_t first = std::max<int64_t>(sh.first_row, 0);
      g->in = TttStepInputs{at::zeros({sh.rows, sh.width}, on), at::zeros({sh.rows, sh.width}, on),
                            at::arange(first, first + sh.rows, on),
                            at::zeros({sh.rows}, on.dtype(adapters_->params().scalar_type()))};
      scored(sh.rows, sh.width);
      stream.synchronize();
      ct.prep_ms = 1e3 * t.lap();
      // Nothing runs during a capture. One memory pool for all the graphs:
      // their launches never overlap (one stream) and each keeps its outputs
      // alive. Thread-local mode: the step loop goes on calling CUDA.
      compat::capture_begin_thread_local(g->graph, c.pool);
      g->out = step(sh, g->in, /*timed=*/false);
      ct.record_ms = 1e3 * t.lap();
      g->graph.capture_end();  // and instantiation
      ct.end_ms = 1e3 * t.lap();
      ct.new_segments = segment_count(device_) - segments;
    }
    ct.done = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lk(graph_mu_);
      capture_seconds_ += 1e-3 * (ct.prep_ms + ct.record_ms + ct.end_ms);
      capture_times_.push_back(ct);
      graph_.emplace(sh, std::move(g));
      to_capture_.erase(sh);
    }
    graph_cv_.notify_all();
  }
#endif
}

TttStepRunner::Graph* TttStepRunner::wait_for_graph(const TttStepShape& sh) {
  std::unique_lock<std::mutex> lk(graph_mu_);
  if (to_capture_.count(sh)) {
    LapTimer t;
    graph_cv_.wait(lk, [&] { return !to_capture_.count(sh); });
    last_.capture_wait_ms = 1e3 * t.lap();
    seconds_.capture_wait += 1e-3 * last_.capture_wait_ms;
  }
  if (capture_error_) {
    lk.unlock();
    finish_captures();  // joins, rethrows
  }
  const auto it = graph_.find(sh);
  return it == graph_.end() ? nullptr : it->second.get();
}

TttStepScores TttStepRunner::run(const TttStepShape& sh, const TttStepInputs& in) {
  if (!adapters_ || !adam_) throw std::logic_error("TttStepRunner::run before bind");
  last_ = LastRunTimes{};
  if (sh.update) adam_->prepare();  // host side of the update: queued before the step reads it
  Graph* g = graphs_ ? wait_for_graph(sh) : nullptr;
  if (!g) {
    std::lock_guard<std::mutex> one_step(step_mu_);
    last_.run = 'e';
    return step(sh, upload(in), /*timed=*/true);
  }
#if PGOLF_WITH_CUDA
  LapTimer t;
  TttStepInputs& b = g->in;  // the graph reads these buffers: refill them in place
  for (auto [dst, src] : {std::pair{&b.inputs, &in.inputs}, {&b.targets, &in.targets},
                          {&b.adapter_rows, &in.adapter_rows}, {&b.train_weight, &in.train_weight}})
    dst->copy_(src->pin_memory(), /*non_blocking=*/true);
  g->graph.replay();
  last_.run = g->launched ? 'r' : 'f';
  g->launched = true;
  ++replays_;
  last_.launch_ms = 1e3 * t.lap();
  seconds_.replay += 1e-3 * last_.launch_ms;
  return g->out;
#else
  throw std::logic_error("TttStepRunner: graphs need a CUDA build");
#endif
}

}  // namespace pgolf
