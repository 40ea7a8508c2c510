// Timestamps taken by the device in stream order: where a run's GPU time goes
// without a profiler (which slows the host several-fold and so hides what a
// host-bound step costs). mark() queues a timed event on the current CUDA
// stream; on the CPU it reads the host clock. Times are milliseconds since
// construction, which first waits for the device, so host and device clocks
// start together.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

namespace pgolf {

class DeviceClock {
 public:
  explicit DeviceClock(const at::Device& device);
  ~DeviceClock();
  DeviceClock(const DeviceClock&) = delete;
  DeviceClock& operator=(const DeviceClock&) = delete;

  void mark();
  // Every mark's time, in order; waits for the last mark.
  std::vector<double> millis();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pgolf
