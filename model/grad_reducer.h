// Data-parallel gradient sums overlapped with the backward pass, as DDP's
// reducer does it, on pgolf's own c10d wiring (model/distributed.h).
//
// The parameters are grouped once, at construction, into flat float32 buckets
// of consecutive parameters in the order given (which should be roughly the
// order in which backward finishes them: the reverse of their order of use);
// every rank builds the same buckets. A hook on each parameter's gradient
// accumulator marks it ready once backward has added into its .grad(); when
// every parameter of the next bucket is ready, that bucket is filled (weight *
// grad, zeros for a parameter without a gradient) and its all-reduce started.
// Buckets start strictly in index order, so every rank issues the same
// collectives in the same order whatever order its hooks fire in. finish()
// starts whatever backward did not (parameters that got no gradient count as
// zeros, as ready), waits for every sum and writes it into .grad().
//
// The sums are those of the post-backward reduction with the same buckets
// (overlap = false: no hooks, every bucket starts in finish()): the same values
// summed by the same collectives, only started earlier.
//
// Gradient accumulation: arm() before the backward pass of the last micro-batch
// only; the hooks ignore passes that are not armed, and read .grad() (the
// accumulated sum) when the bucket is filled.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace at {
class Tensor;
}

namespace pgolf {

// Buckets of consecutive items, given their sizes in order: a bucket closes
// when the next item would take it past `cap` values (an item larger than
// `cap` gets a bucket of its own). Returns each bucket's item indices.
std::vector<std::vector<size_t>> assign_buckets(const std::vector<int64_t>& sizes, int64_t cap);

class GradReducer {
 public:
  // params: float32 leaves that require grad, on the job's device, in bucket
  // order (the same on every rank). extras: how many float32 values arm()
  // passes to be summed with the last bucket. overlap: start sums from the
  // gradient hooks during backward (else all in finish(); no hooks).
  GradReducer(const std::vector<at::Tensor>& params, int64_t bucket_cap, int64_t extras, bool overlap);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Before the backward pass that completes this step's gradients: every
  // gradient is summed as weight * grad; extras ([extras] float32, on the
  // device) are summed as they are.
  void arm(double weight, const at::Tensor& extras);
  // After that backward pass: every .grad() holds its sum over the ranks.
  // Returns the summed extras.
  std::vector<double> finish();

  size_t buckets() const;
  // Buckets of the last finished step whose sum started during backward.
  size_t started_in_backward() const;

 private:
  struct State;
  void on_ready(size_t param);
  void start_ready_buckets();
  void start(size_t bucket);
  std::unique_ptr<State> s_;
};

}  // namespace pgolf
