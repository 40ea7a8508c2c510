#include "model/forward_graph.h"

#include "model/pch.h"

#include <c10/core/GradMode.h>

#if PGOLF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace pgolf {

#if PGOLF_WITH_CUDA
struct ForwardGraph::Graph {
  at::cuda::CUDAGraph graph;
  at::Tensor mask;               // CPU, the mask it was captured for
  at::Tensor inputs, targets;    // device buffers the graph reads
  ForwardOptions fo;             // its mask and positions on the device, read by the graph too
  at::Tensor nll;                // device buffer the graph writes
};
#else
struct ForwardGraph::Graph {};
#endif

ForwardGraph::ForwardGraph(const GptWeights& w, bool enabled) : w_(w), enabled_(enabled) {}
ForwardGraph::~ForwardGraph() = default;

at::Tensor ForwardGraph::run(const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& mask,
                             ForwardOptions fo) {
  const at::Device device = w_.get("tok_emb.weight").device();
  auto plain = [&] {
    fo.score_mask = to_device(mask, device);
    fo.positions = find_score_positions(mask, device, /*slots=*/false);
    return forward_nll(w_, to_device(inputs, device), to_device(targets, device), fo);
  };
  const bool graphable = enabled_ && device.is_cuda() && !fo.segment_ids.defined() && !fo.lora &&
                         !fo.linear_input_tap && !c10::GradMode::is_enabled();
  if (!graphable) return plain();
#if PGOLF_WITH_CUDA
  auto same = [&](const at::Tensor& m) { return m.defined() && m.sizes() == mask.sizes() && m.equal(mask); };
  const bool repeat = same(last_mask_);
  last_mask_ = mask;
  const bool matches = graph_ && same(graph_->mask);
  if (!matches && !repeat) return plain();
  if (!matches) {
    // Capture on a side stream (graphs cannot capture the legacy default
    // stream), after one plain forward there: its cuBLAS workspace and
    // flash buffers exist before the capture starts.
    graph_.reset();
    c10::cuda::device_synchronize();
    auto g = std::make_unique<Graph>();
    g->mask = mask.clone();
    g->inputs = inputs.to(device);
    g->targets = targets.to(device);
    g->fo = fo;
    g->fo.score_mask = mask.to(device);
    g->fo.positions = find_score_positions(mask, device, /*slots=*/false);
    {
      c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool());
      forward_nll(w_, g->inputs, g->targets, g->fo);
      c10::cuda::device_synchronize();
      g->graph.capture_begin();
      g->nll = forward_nll(w_, g->inputs, g->targets, g->fo);
      g->graph.capture_end();
    }
    c10::cuda::device_synchronize();
    graph_ = std::move(g);
  }
  // The copies and the replay queue on the current stream, in order.
  graph_->inputs.copy_(inputs.pin_memory(), /*non_blocking=*/true);
  graph_->targets.copy_(targets.pin_memory(), /*non_blocking=*/true);
  graph_->graph.replay();
  ++replays_;
  return graph_->nll.clone();  // the next replay overwrites the buffer
#else
  return at::Tensor();  // unreachable: graphable needs a CUDA device
#endif
}

}  // namespace pgolf
