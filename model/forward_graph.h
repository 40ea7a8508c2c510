// Forwards of one shape replayed from a CUDA graph. Evaluation runs hundreds
// of forwards whose shapes and score masks repeat batch after batch; launching
// each one's few hundred kernels from the host costs more than their GPU time
// on the standard plan. A mask seen twice in a row is captured once and then
// replayed while it repeats; anything else (the first and last batches of a
// plan, document masks, the CPU) runs the plain forward.
#pragma once
#include <cstdint>
#include <memory>

#include "model/gpt.h"

namespace pgolf {

class ForwardGraph {
 public:
  // w must outlive this; it must not change while a graph holds its tensors.
  explicit ForwardGraph(const GptWeights& w, bool enabled = true);
  ~ForwardGraph();
  ForwardGraph(const ForwardGraph&) = delete;
  ForwardGraph& operator=(const ForwardGraph&) = delete;

  // forward_nll(w, inputs, targets, fo) with fo.score_mask = mask and its
  // positions, fo otherwise as given (precision, cast, segment_ids; no
  // adapters, no tap). inputs, targets, mask: [B, T] on the CPU. Returns the
  // NLL [B, T] on the weights' device, the caller's to keep.
  at::Tensor run(const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& mask, ForwardOptions fo);

  int64_t replays() const { return replays_; }

 private:
  struct Graph;
  const GptWeights& w_;
  bool enabled_;
  at::Tensor last_mask_;  // the previous batch's, to spot a repeat
  std::unique_ptr<Graph> graph_;
  int64_t replays_ = 0;
};

}  // namespace pgolf
