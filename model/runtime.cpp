// This file alone sees libtorch's profiler (model/torch_compat.h); it skips
// the precompiled header so the define below takes effect.
#define PGOLF_COMPAT_PROFILER 1
#include "model/runtime.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <vector>

#include "cli/command.h"
#include "data/error.h"
#include "model/pch.h"

#if PGOLF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace pgolf {

void start_profile() {
  if (!compat::has_profiler) throw Error("--profile: needs a CUDA build of libtorch >= 2.0");
  compat::start_profiler();
}

void stop_profile(const std::string& path) {
  if (compat::has_profiler) compat::stop_profiler(path);
}

RuntimeInfo runtime_info() {
  RuntimeInfo r;
  r.torch_version = std::to_string(compat::torch_major) + "." + std::to_string(compat::torch_minor) + "." +
                    std::to_string(compat::torch_patch);
  r.threads = at::get_num_threads();
  r.device_name = "cpu";
#if PGOLF_WITH_CUDA
  r.cuda_devices = static_cast<int>(c10::cuda::device_count());
  r.cuda = r.cuda_devices > 0;
  if (r.cuda) r.device_name = at::cuda::getDeviceProperties(0)->name;
#endif
  // at::show_config() lists the build settings; keep the BLAS line.
  std::istringstream cfg(at::show_config());
  for (std::string line; std::getline(cfg, line);) {
    auto p = line.find("BLAS_INFO=");
    if (p != std::string::npos) {
      r.blas = line.substr(p + 10);
      r.blas = r.blas.substr(0, r.blas.find(','));
    }
  }
  return r;
}

double measure_matmul_gflops(bool cuda, int n, int repeats) {
  const auto opts = cuda ? at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA) : at::TensorOptions().dtype(at::kFloat);
  // Random operands: zeros run faster than real data on some hardware.
  at::Tensor a = at::randn({n, n}, opts), b = at::randn({n, n}, opts), c = at::empty({n, n}, opts);
  auto sync = [&]() {
#if PGOLF_WITH_CUDA
    if (cuda) c10::cuda::device_synchronize();
#endif
  };
  at::mm_out(c, a, b);
  sync();
  std::vector<double> secs;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    at::mm_out(c, a, b);
    sync();
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(secs.begin(), secs.end());
  return 2.0 * double(n) * n * n / secs[secs.size() / 2] / 1e9;
}

void register_env_command(CLI::App& app) {
  struct Args { bool bench = false, json = false; int n = 0; };
  auto a = std::make_shared<Args>();
  CLI::App* env = app.add_subcommand("env", "libtorch version, devices, threads, BLAS; --bench measures the matmul peak");
  env->add_flag("--bench", a->bench, "measure matmul GFLOP/s (float32 on CPU, bfloat16 on CUDA)");
  env->add_option("--n", a->n, "matrix size for --bench (default 2048 on CPU, 8192 on CUDA)");
  env->add_flag("--json", a->json, "print a JSON object on stdout");
  env->callback([a]() {
    RuntimeInfo r = runtime_info();
    nlohmann::json j = {{"torch", r.torch_version}, {"cuda", r.cuda}, {"cuda_devices", r.cuda_devices},
                        {"device", r.device_name}, {"threads", r.threads}, {"blas", r.blas}};
    std::fprintf(stderr, "libtorch %s | device %s | CUDA devices %d | threads %d | BLAS %s\n", r.torch_version.c_str(),
                 r.device_name.c_str(), r.cuda_devices, r.threads, r.blas.empty() ? "?" : r.blas.c_str());
    if (a->bench) {
      const int n = a->n > 0 ? a->n : (r.cuda ? 8192 : 2048);
      const double gf = measure_matmul_gflops(r.cuda, n, r.cuda ? 20 : 5);
      std::fprintf(stderr, "matmul %dx%dx%d %s: %.1f GFLOP/s (median)\n", n, n, n, r.cuda ? "bf16" : "fp32", gf);
      j["matmul_n"] = n;
      j["matmul_gflops"] = gf;
    }
    if (a->json) std::printf("%s\n", j.dump().c_str());
  });
}

}  // namespace pgolf
