// The LoRA adapters of one TTT batch: one adapter per batch row at every site
// the TTT targets name, all held in one flat parameter buffer (one autograd
// leaf: one gradient to read, one batched optimizer update).
//
// Initialisation as the reference's BatchedLinearLoRA.reset(): A ~ U(+-1/sqrt(in)),
// B = 0. The uniform numbers come from a counter-based generator keyed by
// (seed, row key, site, element): the row key is the document's index, so a
// document's initial adapters do not depend on its batch, its row, the rank
// or the device (the reference draws them from the global RNG in row order).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/fused.h"  // FlatParts
#include "model/gpt.h"

namespace pgolf {

// TTT target names (CLI --targets) and the model sites they adapt:
//   q, k, v -> "q", "k", "v" of every unrolled step;  o -> "o_norm" (0410's O
//   adapter, reading the block's normed input);  mlp -> "mlp";  head -> "head".
const std::vector<std::string>& lora_target_names();

struct LoraSiteSpec {
  std::string key;  // ForwardOptions / LoraSet key (lora_key(step, site) or "head")
  int64_t in = 0, out = 0;
};

// Sites for `targets` on a model with this config (looping: the layer
// sequence forward_nll runs). Throws pgolf::Error on an unknown target.
std::vector<LoraSiteSpec> lora_sites(const ModelConfig& cfg, const std::vector<std::string>& targets,
                                     bool looping = true);

// The generator: U(-bound, bound) value of element i of the A matrix of
// (seed, row_key, site), i row-major over the reference's [r, in] layout
// (pgolf's A[b] is that matrix transposed) -- what BatchAdapters::reset writes, as a host
// function (tests compare against it).
double lora_init_value(uint64_t seed, uint64_t row_key, const std::string& site, uint64_t i, double bound);

// All of a batch's adapters in one flat buffer: the optimizer updates every
// row of every site with a handful of kernels. Each site's A and B are
// autograd leaves viewing the buffer, whose gradients are views of one flat
// gradient buffer: backward adds each site's gradient in place, where one
// leaf for the whole buffer would have each site's slice backward build and
// sum buffer-sized gradients.
//
// With a compute type other than the parameters' (bf16 activations over
// float32 parameters on the GPU) the leaves view a copy of the parameters in
// that type, and their gradients are in that type too: the forward would
// round A and B to it anyway (the reference's autocast), and each gradient
// arrives in it, so nothing is lost -- the optimizer reads the rounded
// gradient, updates the float32 parameters and refreshes the copy
// (FlatAdam::apply's mirror). That spares a cast of every adapter in every
// forward and of every gradient in every backward.
class BatchAdapters {
 public:
  // rows adapters of rank r per site; dtype float32 or float64; compute the
  // leaves' type (undefined: dtype).
  BatchAdapters(std::vector<LoraSiteSpec> sites, int64_t rows, int64_t rank, at::ScalarType dtype,
                const at::Device& device, std::optional<at::ScalarType> compute = std::nullopt);

  int64_t rows() const { return rows_; }
  int64_t rank() const { return rank_; }
  // A of row b from (seed, row_keys[b], site), B = 0; the gradient is zeroed.
  void reset(uint64_t seed, const std::vector<uint64_t>& row_keys);
  // The leaves, one LoraAdapter per site: A [rows, in, r], B [rows, r, out].
  LoraSet views() const;
  // Rows [first, first + count) of every site: leaves of their own over that
  // part of the buffer and of the gradient (made once per range).
  LoraSet views(int64_t first, int64_t count) const;
  // The rows `rows` lists (int64 [n] on the buffer's device): differentiable
  // copies (gradients flow back to those rows).
  LoraSet views(const at::Tensor& rows) const;
  // Where rows [first, first + count) of every site lie in the flat buffer
  // (made once per range): the optimizer updates only the rows a step
  // trained -- the others belong to finished documents, whose scores are
  // final -- where the whole buffer would cost a step of one row as much as
  // one of every row.
  const FlatParts& row_parts(int64_t first, int64_t count) const;
  // The flat parameters [total] (dtype) and gradient [total] (the compute
  // type), in place: graphs and the optimizer hold them. Backward adds into
  // grad(); zero it first. mirror(): the leaves' copy of the parameters when
  // it is a tensor of its own (else undefined): refresh it after an update.
  at::Tensor& params() { return params_; }
  at::Tensor& grad() { return grad_; }
  at::Tensor& mirror() { return mirror_; }
  void zero_grad();

 private:
  std::vector<LoraSiteSpec> sites_;
  int64_t rows_, rank_;
  std::vector<int64_t> a_offsets_, b_offsets_;  // per site: where its A, its B start (every A first)
  struct InitRun {
    size_t first, count;  // sites whose A blocks reset() fills together
  };
  std::vector<InitRun> init_runs_;
  at::Tensor params_, grad_, mirror_;
  // Leaves over rows [first, first + count) of every site, gradients set to
  // the same part of grad_.
  LoraSet make_leaves(int64_t first, int64_t count) const;
  LoraSet leaves_;
  mutable std::map<std::pair<int64_t, int64_t>, LoraSet> range_leaves_;  // by (first, count)
  mutable std::map<std::pair<int64_t, int64_t>, FlatParts> range_parts_;  // by (first, count)
};

}  // namespace pgolf
