// The data-parallel gradient reducer (see grad_reducer.h). Its gradient hooks
// come from torch_compat.h (this file skips the precompiled header, so the
// define below reaches it).
#define PGOLF_COMPAT_GRAD_HOOKS
#include "model/grad_reducer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "data/error.h"
#include "model/distributed.h"
#include "model/torch_compat.h"

namespace pgolf {

std::vector<std::vector<size_t>> assign_buckets(const std::vector<int64_t>& sizes, int64_t cap) {
  std::vector<std::vector<size_t>> out;
  int64_t filled = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (out.empty() || (filled > 0 && filled + sizes[i] > cap)) {
      out.emplace_back();
      filled = 0;
    }
    out.back().push_back(i);
    filled += sizes[i];
  }
  return out;
}

struct GradReducer::State {
  struct Bucket {
    std::vector<size_t> params;
    std::vector<int64_t> offsets;  // of each parameter in flat
    int64_t grad_values = 0;       // flat = grads, then the extras (last bucket)
    at::Tensor flat;
    size_t pending = 0;            // parameters not ready yet (this step)
    std::unique_ptr<PendingSum> sum;
  };
  std::vector<at::Tensor> params;
  std::vector<size_t> bucket_of;
  std::vector<Bucket> buckets;
  std::vector<compat::GradReadyHook> hooks;
  int64_t extras = 0;
  bool overlap = false;
  // One step's state, under mu (hooks run on the autograd engine's threads).
  std::mutex mu;
  bool armed = false;
  double weight = 1;
  at::Tensor extra_values;
  std::vector<char> ready;
  size_t next = 0;  // the next bucket to start
  size_t started_early = 0, last_started_early = 0;
};

GradReducer::GradReducer(const std::vector<at::Tensor>& params, int64_t bucket_cap, int64_t extras, bool overlap)
    : s_(std::make_unique<State>()) {
  if (params.empty()) throw Error("internal: a gradient reducer without parameters");
  if (bucket_cap < 1) throw Error("internal: gradient buckets of " + std::to_string(bucket_cap) + " values");
  State& s = *s_;
  s.params = params;
  s.extras = extras;
  s.overlap = overlap;
  std::vector<int64_t> sizes;
  for (const at::Tensor& p : params) sizes.push_back(p.numel());
  s.bucket_of.resize(params.size());
  for (const std::vector<size_t>& group : assign_buckets(sizes, bucket_cap)) {
    State::Bucket b;
    for (size_t i : group) {
      s.bucket_of[i] = s.buckets.size();
      b.params.push_back(i);
      b.offsets.push_back(b.grad_values);
      b.grad_values += sizes[i];
    }
    s.buckets.push_back(std::move(b));
  }
  for (size_t k = 0; k < s.buckets.size(); ++k) {
    State::Bucket& b = s.buckets[k];
    const int64_t n = b.grad_values + (k + 1 == s.buckets.size() ? extras : 0);
    b.flat = at::zeros({n}, params[0].options().dtype(at::kFloat));
  }
  s.ready.assign(params.size(), 0);
  if (overlap)
    for (size_t i = 0; i < params.size(); ++i) s.hooks.push_back(compat::add_grad_ready_hook(params[i], [this, i] { on_ready(i); }));
}

GradReducer::~GradReducer() {
  for (compat::GradReadyHook& h : s_->hooks) compat::remove_grad_ready_hook(h);
}

void GradReducer::arm(double weight, const at::Tensor& extras) {
  State& s = *s_;
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.armed) throw Error("internal: the gradient reducer armed twice");
  if ((extras.defined() ? extras.numel() : 0) != s.extras) throw Error("internal: the gradient reducer got the wrong number of extras");
  s.weight = weight;
  s.extra_values = extras;
  s.armed = true;
  s.started_early = 0;
  for (State::Bucket& b : s.buckets) b.pending = b.params.size();
}

void GradReducer::on_ready(size_t i) {
  State& s = *s_;
  std::lock_guard<std::mutex> lk(s.mu);
  if (!s.armed || s.ready[i]) return;  // an earlier micro-batch, or a second pass
  s.ready[i] = 1;
  --s.buckets[s.bucket_of[i]].pending;
  const size_t before = s.next;
  start_ready_buckets();
  s.started_early += s.next - before;
}

// Only in index order: a ready bucket waits for every bucket before it.
void GradReducer::start_ready_buckets() {
  State& s = *s_;
  while (s.next < s.buckets.size() && s.buckets[s.next].pending == 0) start(s.next++);
}

// weight * grad of every parameter (zeros without one), the extras after them
// in the last bucket -- the values and the float32 arithmetic of the
// post-backward reduction -- then the sum starts.
void GradReducer::start(size_t k) {
  State& s = *s_;
  State::Bucket& b = s.buckets[k];
  c10::NoGradGuard no_grad;
  for (size_t j = 0; j < b.params.size(); ++j) {
    const at::Tensor& p = s.params[b.params[j]];
    at::Tensor dst = b.flat.narrow(0, b.offsets[j], p.numel());
    const at::Tensor& g = p.grad();
    if (g.defined()) dst.view(p.sizes()).copy_(g);
    else dst.zero_();
  }
  b.flat.narrow(0, 0, b.grad_values).mul_(s.weight);
  if (k + 1 == s.buckets.size() && s.extras > 0)
    b.flat.narrow(0, b.grad_values, s.extras).copy_(s.extra_values.reshape({-1}));
  b.sum = all_reduce_sum_start(b.flat);
}

std::vector<double> GradReducer::finish() {
  State& s = *s_;
  std::lock_guard<std::mutex> lk(s.mu);
  if (!s.armed) throw Error("internal: the gradient reducer finished without arm()");
  while (s.next < s.buckets.size()) start(s.next++);  // parameters backward never reached: zeros
  c10::NoGradGuard no_grad;
  for (State::Bucket& b : s.buckets) {
    b.sum->wait();
    b.sum.reset();
    for (size_t j = 0; j < b.params.size(); ++j) {
      at::Tensor& p = s.params[b.params[j]];
      const at::Tensor sum = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(sum);
      else p.mutable_grad() = sum.clone();
    }
  }
  std::vector<double> extras(size_t(s.extras), 0.0);
  if (s.extras > 0) {
    const State::Bucket& last = s.buckets.back();
    const at::Tensor v = last.flat.narrow(0, last.grad_values, s.extras).to(at::kCPU).to(at::kDouble).contiguous();
    for (int64_t i = 0; i < s.extras; ++i) extras[size_t(i)] = v.data_ptr<double>()[i];
  }
  s.armed = false;
  s.next = 0;
  std::fill(s.ready.begin(), s.ready.end(), 0);
  s.last_started_early = s.started_early;
  return extras;
}

size_t GradReducer::buckets() const { return s_->buckets.size(); }

size_t GradReducer::started_in_backward() const { return s_->last_started_early; }

}  // namespace pgolf
