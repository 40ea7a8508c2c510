// What libtorch pgolf runs on: version, devices, threads, BLAS, and the
// measured matmul rate that benchmarks report their ratios against.
#pragma once
#include <string>

namespace pgolf {

struct RuntimeInfo {
  std::string torch_version;   // e.g. "1.13.1"
  bool cuda = false;           // built with CUDA and a device is visible
  int cuda_devices = 0;
  std::string device_name;     // first CUDA device, or "cpu"
  int threads = 0;             // intra-op threads
  std::string blas;            // BLAS/LAPACK backend as libtorch reports it
};

RuntimeInfo runtime_info();

// Median GFLOP/s of an n x n x n matmul: float32 on CPU, bfloat16 on CUDA.
double measure_matmul_gflops(bool cuda, int n, int repeats);

// A Kineto trace (Chrome-trace JSON) of the work between these calls, for
// finding where GPU time goes (`--profile` on eval). CUDA builds only: the
// start throws a pgolf::Error elsewhere.
void start_profile();
void stop_profile(const std::string& path);

}  // namespace pgolf
