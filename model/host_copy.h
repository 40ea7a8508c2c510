// A device tensor's copy to pinned host memory, queued on the current stream
// when made; wait() waits for that copy alone. Reading results back with a
// plain .to(kCPU) queues the copy behind everything queued since -- the next
// batches -- and so drains the GPU's queue every time the host reads.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>

namespace pgolf {

class HostCopy {
 public:
  HostCopy() = default;
  explicit HostCopy(const at::Tensor& t);  // CPU tensors: kept as they are
  // The host tensor, once the copy has landed.
  const at::Tensor& wait();
  bool defined() const { return host_.defined(); }

 private:
  at::Tensor host_;
  std::shared_ptr<void> event_;  // the CUDA event recorded after the copy (CUDA builds)
};

}  // namespace pgolf
