#include "model/device_clock.h"

#include <chrono>

#include "model/pch.h"

#if PGOLF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace pgolf {

struct DeviceClock::Impl {
  bool cuda = false;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  std::vector<double> host;  // CPU marks
#if PGOLF_WITH_CUDA
  std::unique_ptr<at::cuda::CUDAEvent> start;
  std::vector<std::unique_ptr<at::cuda::CUDAEvent>> events;
#endif
};

DeviceClock::DeviceClock(const at::Device& device) : impl_(std::make_unique<Impl>()) {
#if PGOLF_WITH_CUDA
  impl_->cuda = device.is_cuda();
  if (impl_->cuda) {
    c10::cuda::device_synchronize();
    impl_->start = std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault);
    impl_->start->record(at::cuda::getCurrentCUDAStream());
  }
#else
  (void)device;
#endif
  impl_->t0 = std::chrono::steady_clock::now();
}

DeviceClock::~DeviceClock() = default;

void DeviceClock::mark() {
#if PGOLF_WITH_CUDA
  if (impl_->cuda) {
    impl_->events.push_back(std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault));
    impl_->events.back()->record(at::cuda::getCurrentCUDAStream());
    return;
  }
#endif
  impl_->host.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - impl_->t0).count());
}

std::vector<double> DeviceClock::millis() {
#if PGOLF_WITH_CUDA
  if (impl_->cuda) {
    std::vector<double> out;
    if (impl_->events.empty()) return out;
    impl_->events.back()->synchronize();
    for (const auto& e : impl_->events) out.push_back(impl_->start->elapsed_time(*e));
    return out;
  }
#endif
  return impl_->host;
}

}  // namespace pgolf
