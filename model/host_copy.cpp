#include "model/host_copy.h"

#include "model/pch.h"

#if PGOLF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

namespace pgolf {

HostCopy::HostCopy(const at::Tensor& t) {
  if (!t.is_cuda()) {
    host_ = t;
    return;
  }
#if PGOLF_WITH_CUDA
  host_ = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
  host_.copy_(t, /*non_blocking=*/true);
  auto ev = std::make_shared<at::cuda::CUDAEvent>();
  ev->record(at::cuda::getCurrentCUDAStream());
  event_ = ev;
#endif
}

const at::Tensor& HostCopy::wait() {
#if PGOLF_WITH_CUDA
  if (event_) {
    static_cast<at::cuda::CUDAEvent*>(event_.get())->synchronize();
    event_.reset();
  }
#endif
  return host_;
}

}  // namespace pgolf
