// CUDA kernels of model/fused.h: bf16 in and out, float32 math, each product
// and sum rounded on its own (__fmul_rn / __fadd_rn) as the ATen reference
// rounds it. Row kernels use one warp per row; the sum of squares is the only
// place where the order of operations differs from the reference.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "model/fused_cuda.h"

namespace pgolf::fused::cuda {

namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float ld(const bf16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// x / sqrt(mean(x^2) + eps) factor: the multiplier for a row with sum of squares ss.
__device__ __forceinline__ float inv_rms(float ss, int d, float eps) {
  return rsqrtf(__fadd_rn(__fdiv_rn(ss, float(d)), eps));
}

constexpr int kWarpsPerBlock = 4;

int row_blocks(int64_t rows) { return int((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// out[r] = bf16((x[r] * inv_rms) * factor)
template <class T>
__global__ void rms_norm_kernel(const T* __restrict__ x, bf16* __restrict__ out, int64_t rows, int d, float factor,
                                float eps, bool scale) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const T* xr = x + r * d;
  float ss = 0;
  for (int i = lane; i < d; i += 32) {
    const float v = ld(xr, i);
    ss = __fadd_rn(ss, __fmul_rn(v, v));
  }
  const float k = inv_rms(warp_sum(ss), d, eps);
  for (int i = lane; i < d; i += 32) {
    float v = __fmul_rn(ld(xr, i), k);
    if (scale) v = __fmul_rn(v, factor);
    out[r * d + i] = __float2bfloat16_rn(v);
  }
}

// x_in = bf16(mix0 x + mix1 x0); n = bf16((x_in * inv_rms) * factor)
__global__ void mix_norm_kernel(const bf16* __restrict__ x, const bf16* __restrict__ x0, const float* __restrict__ mix,
                                bf16* __restrict__ x_in, bf16* __restrict__ n, int64_t rows, int d, float factor,
                                float eps, bool scale) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int64_t o = r * d;
  float ss = 0;
  for (int i = lane; i < d; i += 32) {
    const float v = round_bf16(__fadd_rn(__fmul_rn(mix[i], ld(x, o + i)), __fmul_rn(mix[d + i], ld(x0, o + i))));
    x_in[o + i] = __float2bfloat16_rn(v);
    ss = __fadd_rn(ss, __fmul_rn(v, v));
  }
  const float k = inv_rms(warp_sum(ss), d, eps);
  for (int i = lane; i < d; i += 32) {
    float v = __fmul_rn(ld(x_in, o + i), k);
    if (scale) v = __fmul_rn(v, factor);
    n[o + i] = __float2bfloat16_rn(v);
  }
}

// y = bf16(x + scale a); with `norm`, n = bf16((y * inv_rms) * factor)
__global__ void add_norm_kernel(const bf16* __restrict__ x, const bf16* __restrict__ a,
                                const float* __restrict__ sc, bf16* __restrict__ y, bf16* __restrict__ n,
                                int64_t rows, int d, float factor, float eps, bool scale) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int64_t o = r * d;
  float ss = 0;
  for (int i = lane; i < d; i += 32) {
    const float v = round_bf16(__fadd_rn(ld(x, o + i), __fmul_rn(sc[i], ld(a, o + i))));
    y[o + i] = __float2bfloat16_rn(v);
    ss = __fadd_rn(ss, __fmul_rn(v, v));
  }
  const float k = inv_rms(warp_sum(ss), d, eps);
  for (int i = lane; i < d; i += 32) {
    float v = __fmul_rn(ld(y, o + i), k);
    if (scale) v = __fmul_rn(v, factor);
    n[o + i] = __float2bfloat16_rn(v);
  }
}

// y = bf16(x + scale[i % d] a), 2 elements per thread.
__global__ void add_scaled_kernel(const bf16* __restrict__ x, const bf16* __restrict__ a,
                                  const float* __restrict__ sc, bf16* __restrict__ y, int64_t numel, int d) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x); i < numel; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(__fadd_rn(ld(x, i), __fmul_rn(sc[i % d], ld(a, i))));
}

// One warp per (row position, head): q [rows = B*T, heads, hd] -> out, same layout.
__global__ void qk_norm_rope_kernel(const bf16* __restrict__ q, const float* __restrict__ cos,
                                    const float* __restrict__ sin, const float* __restrict__ gain,
                                    bf16* __restrict__ out, int64_t units, int64_t T, int heads, int hd, int half,
                                    float eps) {
  const int64_t u = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (u >= units) return;
  const int h = int(u % heads);
  const int64_t t = (u / heads) % T;
  const bf16* x = q + u * hd;
  bf16* y = out + u * hd;
  float ss = 0;
  for (int i = lane; i < hd; i += 32) {
    const float v = ld(x, i);
    ss = __fadd_rn(ss, __fmul_rn(v, v));
  }
  const float k = inv_rms(warp_sum(ss), hd, eps);
  const float g = gain ? gain[h] : 1.0f;
  for (int p = lane; p < half; p += 32) {
    const float a = __fmul_rn(ld(x, p), k), b = __fmul_rn(ld(x, p + half), k);
    const float c = cos[t * half + p], s = sin[t * half + p];
    float o1 = __fadd_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    float o2 = __fadd_rn(__fmul_rn(a, -s), __fmul_rn(b, c));
    if (gain) {
      o1 = __fmul_rn(o1, g);
      o2 = __fmul_rn(o2, g);
    }
    y[p] = __float2bfloat16_rn(o1);
    y[p + half] = __float2bfloat16_rn(o2);
  }
  for (int i = 2 * half + lane; i < hd; i += 32) {
    float v = __fmul_rn(ld(x, i), k);
    if (gain) v = __fmul_rn(v, g);
    y[i] = __float2bfloat16_rn(v);
  }
}

__global__ void relu_square_kernel(const bf16* __restrict__ h, bf16* __restrict__ out, int64_t numel, float slope) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x); i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    float v = ld(h, i);
    if (v < 0.0f) v = __fmul_rn(v, slope);
    out[i] = __float2bfloat16_rn(__fmul_rn(v, v));
  }
}

// One block per row: online max / sum of exp over z = cap * tanh(l / cap).
constexpr int kNllThreads = 256;
__global__ void softcap_nll_kernel(const bf16* __restrict__ logits, const int64_t* __restrict__ targets,
                                   float* __restrict__ out, int64_t V, float cap) {
  const int64_t r = blockIdx.x;
  const bf16* l = logits + r * V;
  float m = -INFINITY, s = 0.0f;
  for (int64_t i = threadIdx.x; i < V; i += kNllThreads) {
    const float z = __fmul_rn(cap, tanhf(__fdiv_rn(ld(l, i), cap)));
    if (z > m) {
      s = s * expf(m - z) + 1.0f;
      m = z;
    } else {
      s += expf(z - m);
    }
  }
  // Combine (m, s) pairs: within the warp, then across warps.
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const float mm = fmaxf(m, m2);
    s = (m == -INFINITY ? 0.0f : s * expf(m - mm)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mm));
    m = mm;
  }
  __shared__ float sm[kNllThreads / 32], ssum[kNllThreads / 32];
  const int w = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    sm[w] = m;
    ssum[w] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = -INFINITY;
    for (int k = 0; k < kNllThreads / 32; ++k) M = fmaxf(M, sm[k]);
    float S = 0;
    for (int k = 0; k < kNllThreads / 32; ++k)
      if (sm[k] != -INFINITY) S += ssum[k] * expf(sm[k] - M);
    const int64_t t = targets[r];
    const float zt = __fmul_rn(cap, tanhf(__fdiv_rn(ld(l, t), cap)));
    out[r] = (M + logf(S)) - zt;
  }
}

int grid_for(int64_t numel, int threads) {
  return int(std::min<int64_t>((numel + threads - 1) / threads, int64_t(132) * 32));
}

const bf16* bp(const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.data_ptr()); }
bf16* bp_out(at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr()); }

void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

}  // namespace

at::Tensor rms_norm(const at::Tensor& x_, double factor, double eps) {
  const at::Tensor x = x_.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  const int d = int(x.size(-1));
  const int64_t rows = x.numel() / d;
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  if (rows == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kFloat)
    rms_norm_kernel<float><<<row_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(
        x.data_ptr<float>(), bp_out(out), rows, d, float(factor), float(eps), factor != 1.0);
  else
    rms_norm_kernel<bf16><<<row_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(bp(x), bp_out(out), rows, d,
                                                                                 float(factor), float(eps),
                                                                                 factor != 1.0);
  check_launch();
  return out;
}

std::pair<at::Tensor, at::Tensor> mix_norm(const at::Tensor& x_, const at::Tensor& x0_, const at::Tensor& mix,
                                           double factor, double eps) {
  const at::Tensor x = x_.contiguous(), x0 = x0_.contiguous(), m = mix.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  const int d = int(x.size(-1));
  const int64_t rows = x.numel() / d;
  at::Tensor x_in = at::empty_like(x), n = at::empty_like(x);
  if (rows == 0) return {x_in, n};
  mix_norm_kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(x), bp(x0), m.data_ptr<float>(), bp_out(x_in), bp_out(n), rows, d, float(factor), float(eps),
      factor != 1.0);
  check_launch();
  return {x_in, n};
}

at::Tensor add_scaled(const at::Tensor& x_, const at::Tensor& a_, const at::Tensor& scale) {
  const at::Tensor x = x_.contiguous(), a = a_.contiguous(), sc = scale.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  add_scaled_kernel<<<grid_for(x.numel(), 256), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(x), bp(a), sc.data_ptr<float>(), bp_out(y), x.numel(), int(x.size(-1)));
  check_launch();
  return y;
}

std::pair<at::Tensor, at::Tensor> add_norm(const at::Tensor& x_, const at::Tensor& a_, const at::Tensor& scale,
                                           double factor, double eps) {
  const at::Tensor x = x_.contiguous(), a = a_.contiguous(), sc = scale.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  const int d = int(x.size(-1));
  const int64_t rows = x.numel() / d;
  at::Tensor y = at::empty_like(x), n = at::empty_like(x);
  if (rows == 0) return {y, n};
  add_norm_kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(x), bp(a), sc.data_ptr<float>(), bp_out(y), bp_out(n), rows, d, float(factor), float(eps), factor != 1.0);
  check_launch();
  return {y, n};
}

at::Tensor qk_norm_rope(const at::Tensor& q, int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& gain, double eps) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), T = q.size(1), hd = q.size(2) / heads, half = cos.size(-1);
  at::Tensor out = at::empty({B, T, heads, hd}, q.options());
  const int64_t units = B * T * heads;
  if (units == 0) return out;
  qk_norm_rope_kernel<<<row_blocks(units), 32 * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(q), cos.data_ptr<float>(), sin.data_ptr<float>(), gain.defined() ? gain.data_ptr<float>() : nullptr,
      bp_out(out), units, T, int(heads), int(hd), int(half), float(eps));
  check_launch();
  return out;
}

at::Tensor relu_square(const at::Tensor& h_, double slope) {
  const at::Tensor h = h_.contiguous();
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor out = at::empty_like(h);
  if (h.numel() == 0) return out;
  relu_square_kernel<<<grid_for(h.numel(), 256), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(h), bp_out(out), h.numel(), float(slope));
  check_launch();
  return out;
}

at::Tensor softcap_nll(const at::Tensor& logits, const at::Tensor& targets, double cap) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(0), V = logits.size(1);
  at::Tensor out = at::empty({n}, logits.options().dtype(at::kFloat));
  if (n == 0) return out;
  softcap_nll_kernel<<<int(n), kNllThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(logits), targets.data_ptr<int64_t>(), out.data_ptr<float>(), V, float(cap));
  check_launch();
  return out;
}

}  // namespace pgolf::fused::cuda
