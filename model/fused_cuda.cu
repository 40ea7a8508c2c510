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

// The multiplier of one row x[0, d) for a warp (each lane sums its columns):
// the forward kernels' sum order, so forward and backward agree.
template <class T>
__device__ __forceinline__ float row_inv_rms(const T* x, int d, float eps, int lane) {
  float ss = 0;
  for (int i = lane; i < d; i += 32) {
    const float v = ld(x, i);
    ss = __fadd_rn(ss, __fmul_rn(v, v));
  }
  return inv_rms(warp_sum(ss), d, eps);
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
  const float k = row_inv_rms(xr, d, eps, lane);
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
  const float k = row_inv_rms(x, hd, eps, lane);
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

// The logit a softcap sees: the head's output plus, when there is one, the
// TTT head adapter's delta, added in float32 (as the reference's fused kernel
// adds them).
__device__ __forceinline__ float logit(const bf16* l, const bf16* dl, int64_t i) {
  return dl ? __fadd_rn(ld(l, i), ld(dl, i)) : ld(l, i);
}

// One block per row: online max / sum of exp over z = cap * tanh(l / cap).
// lse (optional) keeps log-sum-exp for the backward.
constexpr int kNllThreads = 256;
__global__ void softcap_nll_kernel(const bf16* __restrict__ logits, const bf16* __restrict__ delta,
                                   const int64_t* __restrict__ targets, float* __restrict__ out,
                                   float* __restrict__ lse, int64_t V, float cap) {
  const int64_t r = blockIdx.x;
  const bf16* l = logits + r * V;
  const bf16* dl = delta ? delta + r * V : nullptr;
  float m = -INFINITY, s = 0.0f;
  for (int64_t i = threadIdx.x; i < V; i += kNllThreads) {
    const float z = __fmul_rn(cap, tanhf(__fdiv_rn(logit(l, dl, i), cap)));
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
    const float zt = __fmul_rn(cap, tanhf(__fdiv_rn(logit(l, dl, t), cap)));
    const float L = M + logf(S);
    out[r] = L - zt;
    if (lse) lse[r] = L;
  }
}

// ---- Backward kernels (training and TTT). Float32 math; each gradient is
// rounded to its tensor's type where the ATen graph would round it (at the
// casts between bf16 activations and float32 math), not inside the sums. ----

__device__ __forceinline__ void st(bf16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ float round_to(const bf16*, float v) { return round_bf16(v); }
__device__ __forceinline__ float round_to(const float*, float v) { return v; }

// Gradient through n = round(rms(y) * factor) plus a residual gradient:
// gt = round(g_res + round(d n / d y . g_n)). One warp per row. With c1 / c2
// (per column) it also writes o1 = round(c1 gt), o2 = round(c2 gt): the
// gradients of the inputs that made y (mix_norm: x, x0; add_norm: a).
// g_res, g_n, gt, o1, o2 may be null (no such gradient / not wanted).
template <class T>
__global__ void norm_bwd_kernel(const T* __restrict__ y, const bf16* __restrict__ g_res, const bf16* __restrict__ g_n,
                                const float* __restrict__ c1, const float* __restrict__ c2, T* __restrict__ gt,
                                bf16* __restrict__ o1, bf16* __restrict__ o2, int64_t rows, int d, float factor,
                                float eps) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int64_t o = r * d;
  float ss = 0, dot = 0;
  if (g_n)
    for (int i = lane; i < d; i += 32) {
      const float v = ld(y, o + i);
      ss = __fadd_rn(ss, __fmul_rn(v, v));  // as the forward sums, so k is the forward's
      dot += __fmul_rn(ld(g_n, o + i), factor) * v;
    }
  ss = warp_sum(ss);
  dot = warp_sum(dot);
  const float k = g_n ? inv_rms(ss, d, eps) : 0.0f;
  const float c = k * k * dot / float(d);
  for (int i = lane; i < d; i += 32) {
    float v = 0.0f;
    if (g_n) v = round_to(y, k * (__fmul_rn(ld(g_n, o + i), factor) - ld(y, o + i) * c));
    if (g_res) v = round_to(y, v + ld(g_res, o + i));
    if (gt) st(gt, o + i, v);
    if (o1) st(o1, o + i, c1[i] * v);
    if (o2) st(o2, o + i, c2[i] * v);
  }
}

// ga = round(scale[i % d] g): add_scaled's gradient for a.
__global__ void scale_cols_kernel(const bf16* __restrict__ g, const float* __restrict__ sc, bf16* __restrict__ out,
                                  int64_t numel, int d) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x); i < numel; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(sc[i % d] * ld(g, i));
}

// partial[blk][c] = sum over the block's rows of a[r][c] b[r][c]: the
// per-column parameter gradients (mix, scales). A fixed split of rows into
// blocks and a fixed order inside each, so the sums are deterministic.
__global__ void col_dot_kernel(const bf16* __restrict__ a, const bf16* __restrict__ b, float* __restrict__ partial,
                               int64_t rows, int d, int64_t rows_per_block) {
  const int64_t r0 = int64_t(blockIdx.x) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float s = 0.0f;
    for (int64_t r = r0; r < r1; ++r) s += ld(a, r * d + c) * ld(b, r * d + c);
    partial[int64_t(blockIdx.x) * d + c] = s;
  }
}

// Backward of qk_norm_rope, one warp per (position, head): gy [units, hd] ->
// gq (same layout) = round(d y / d q . gy); gain_partial[u] (optional) = the
// unit's sum of gy * (its output before the gain).
__global__ void qk_norm_rope_bwd_kernel(const bf16* __restrict__ q, const bf16* __restrict__ gy,
                                        const float* __restrict__ cos, const float* __restrict__ sin,
                                        const float* __restrict__ gain, bf16* __restrict__ gq,
                                        float* __restrict__ gain_partial, int64_t units, int64_t T, int heads, int hd,
                                        int half, float eps) {
  const int64_t u = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (u >= units) return;
  const int h = int(u % heads);
  const int64_t t = (u / heads) % T;
  const bf16* x = q + u * hd;
  const bf16* g = gy + u * hd;
  const float k = row_inv_rms(x, hd, eps, lane);
  const float gn = gain ? gain[h] : 1.0f;
  // Pass 1: the gradient at the normed values (before the rotation), its dot
  // with x (for the norm's backward) and the gain's partial sum.
  float dot = 0.0f, gsum = 0.0f;
  for (int p = lane; p < half; p += 32) {
    const float a = __fmul_rn(ld(x, p), k), b = __fmul_rn(ld(x, p + half), k);
    const float c = cos[t * half + p], s = sin[t * half + p];
    const float g1 = ld(g, p), g2 = ld(g, p + half);
    gsum += g1 * (a * c + b * s) + g2 * (b * c - a * s);
    const float z1 = g1 * gn, z2 = g2 * gn;
    dot += (z1 * c - z2 * s) * ld(x, p) + (z1 * s + z2 * c) * ld(x, p + half);
  }
  for (int i = 2 * half + lane; i < hd; i += 32) {
    const float g1 = ld(g, i);
    gsum += g1 * __fmul_rn(ld(x, i), k);
    dot += g1 * gn * ld(x, i);
  }
  dot = warp_sum(dot);
  const float cc = k * k * dot / float(hd);
  bf16* out = gq + u * hd;
  for (int p = lane; p < half; p += 32) {
    const float c = cos[t * half + p], s = sin[t * half + p];
    const float z1 = ld(g, p) * gn, z2 = ld(g, p + half) * gn;
    out[p] = __float2bfloat16_rn(k * ((z1 * c - z2 * s) - ld(x, p) * cc));
    out[p + half] = __float2bfloat16_rn(k * ((z1 * s + z2 * c) - ld(x, p + half) * cc));
  }
  for (int i = 2 * half + lane; i < hd; i += 32) out[i] = __float2bfloat16_rn(k * (ld(g, i) * gn - ld(x, i) * cc));
  if (gain_partial) {
    gsum = warp_sum(gsum);
    if (lane == 0) gain_partial[u] = gsum;
  }
}

// gh = round(2 g a (h > 0 ? 1 : slope)), a = leaky_relu(h, slope).
__global__ void relu_square_bwd_kernel(const bf16* __restrict__ h, const bf16* __restrict__ g, bf16* __restrict__ gh,
                                       int64_t numel, float slope) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x); i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = ld(h, i);
    const float a = v < 0.0f ? __fmul_rn(v, slope) : v;
    float r = 2.0f * (ld(g, i) * a);
    if (!(v > 0.0f)) r *= slope;
    gh[i] = __float2bfloat16_rn(r);
  }
}

// gl = round(g[r] (softmax(z) - onehot(target)) (1 - tanh(l / cap)^2)), one
// block per row; also the gradient of the delta (the same values).
__global__ void softcap_nll_bwd_kernel(const bf16* __restrict__ logits, const bf16* __restrict__ delta,
                                       const int64_t* __restrict__ targets, const float* __restrict__ lse,
                                       const float* __restrict__ g, bf16* __restrict__ gl, int64_t V, float cap) {
  const int64_t r = blockIdx.x;
  const bf16* l = logits + r * V;
  const bf16* dl = delta ? delta + r * V : nullptr;
  const float L = lse[r], gr = g[r];
  const int64_t t = targets[r];
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float th = tanhf(__fdiv_rn(logit(l, dl, i), cap));
    const float p = expf(__fmul_rn(cap, th) - L) - (i == t ? 1.0f : 0.0f);
    st(gl, r * V + i, gr * p * (1.0f - th * th));
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

std::pair<at::Tensor, at::Tensor> softcap_nll(const at::Tensor& logits, const at::Tensor& delta,
                                              const at::Tensor& targets, double cap, bool want_lse) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(0), V = logits.size(1);
  at::Tensor out = at::empty({n}, logits.options().dtype(at::kFloat));
  at::Tensor lse = want_lse ? at::empty({n}, logits.options().dtype(at::kFloat)) : at::Tensor();
  if (n == 0) return {out, lse};
  auto stream = at::cuda::getCurrentCUDAStream();
  float* lp = want_lse ? lse.data_ptr<float>() : nullptr;
  softcap_nll_kernel<<<int(n), kNllThreads, 0, stream>>>(bp(logits), delta.defined() ? bp(delta) : nullptr,
                                                         targets.data_ptr<int64_t>(), out.data_ptr<float>(), lp, V,
                                                         float(cap));
  check_launch();
  return {out, lse};
}

// ---- Backward ----

namespace {

const bf16* bp_or_null(const at::Tensor& t) { return t.defined() ? bp(t) : nullptr; }
const float* fp_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

}  // namespace

at::Tensor rms_norm_backward(const at::Tensor& x, const at::Tensor& g, double factor, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int d = int(x.size(-1));
  const int64_t rows = x.numel() / d;
  at::Tensor gx = at::empty_like(x);
  if (rows == 0) return gx;
  auto stream = at::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kFloat)
    norm_bwd_kernel<float><<<row_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(
        x.data_ptr<float>(), nullptr, bp(g), nullptr, nullptr, gx.data_ptr<float>(), nullptr, nullptr, rows, d,
        float(factor), float(eps));
  else
    norm_bwd_kernel<bf16><<<row_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(
        bp(x), nullptr, bp(g), nullptr, nullptr, bp_out(gx), nullptr, nullptr, rows, d, float(factor), float(eps));
  check_launch();
  return gx;
}

NormGrads residual_norm_backward(const at::Tensor& y, const at::Tensor& g_res, const at::Tensor& g_n,
                                 const at::Tensor& c1, const at::Tensor& c2, bool want_gt, double factor,
                                 double eps) {
  const c10::cuda::CUDAGuard guard(y.device());
  const int d = int(y.size(-1));
  const int64_t rows = y.numel() / d;
  NormGrads r;
  if (want_gt) r.gt = at::empty_like(y);
  if (c1.defined()) r.o1 = at::empty_like(y);
  if (c2.defined()) r.o2 = at::empty_like(y);
  if (rows == 0) return r;
  norm_bwd_kernel<bf16><<<row_blocks(rows), 32 * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(y), bp_or_null(g_res), bp_or_null(g_n), fp_or_null(c1), fp_or_null(c2),
      want_gt ? bp_out(r.gt) : nullptr, c1.defined() ? bp_out(r.o1) : nullptr, c2.defined() ? bp_out(r.o2) : nullptr,
      rows, d, float(factor), float(eps));
  check_launch();
  return r;
}

at::Tensor scale_cols(const at::Tensor& g, const at::Tensor& scale) {
  const c10::cuda::CUDAGuard guard(g.device());
  at::Tensor out = at::empty_like(g);
  if (g.numel() == 0) return out;
  scale_cols_kernel<<<grid_for(g.numel(), 256), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(g), scale.data_ptr<float>(), bp_out(out), g.numel(), int(g.size(-1)));
  check_launch();
  return out;
}

at::Tensor col_dot(const at::Tensor& a, const at::Tensor& b) {
  const c10::cuda::CUDAGuard guard(a.device());
  const int d = int(a.size(-1));
  const int64_t rows = a.numel() / d;
  const int64_t rows_per_block = std::max<int64_t>(64, (rows + 1023) / 1024);
  const int64_t blocks = std::max<int64_t>(1, (rows + rows_per_block - 1) / rows_per_block);
  at::Tensor partial = at::empty({blocks, d}, a.options().dtype(at::kFloat));
  if (rows == 0) return partial.zero_().sum(0);
  col_dot_kernel<<<int(blocks), 256, 0, at::cuda::getCurrentCUDAStream()>>>(bp(a), bp(b), partial.data_ptr<float>(),
                                                                            rows, d, rows_per_block);
  check_launch();
  return partial.sum(0);
}

std::pair<at::Tensor, at::Tensor> qk_norm_rope_backward(const at::Tensor& q, const at::Tensor& gy, int64_t heads,
                                                        const at::Tensor& cos, const at::Tensor& sin,
                                                        const at::Tensor& gain, bool want_ggain, double eps) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), T = q.size(1), hd = q.size(2) / heads, half = cos.size(-1);
  at::Tensor gq = at::empty_like(q);
  const int64_t units = B * T * heads;
  at::Tensor partial = want_ggain ? at::empty({units}, q.options().dtype(at::kFloat)) : at::Tensor();
  if (units > 0) {
    qk_norm_rope_bwd_kernel<<<row_blocks(units), 32 * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        bp(q), bp(gy), cos.data_ptr<float>(), sin.data_ptr<float>(), fp_or_null(gain), bp_out(gq),
        want_ggain ? partial.data_ptr<float>() : nullptr, units, T, int(heads), int(hd), int(half), float(eps));
    check_launch();
  }
  at::Tensor ggain = want_ggain ? partial.view({B * T, heads}).sum(0) : at::Tensor();
  return {gq, ggain};
}

at::Tensor relu_square_backward(const at::Tensor& h, const at::Tensor& g, double slope) {
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor gh = at::empty_like(h);
  if (h.numel() == 0) return gh;
  relu_square_bwd_kernel<<<grid_for(h.numel(), 256), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(h), bp(g), bp_out(gh), h.numel(), float(slope));
  check_launch();
  return gh;
}

at::Tensor softcap_nll_backward(const at::Tensor& logits, const at::Tensor& delta, const at::Tensor& targets,
                                const at::Tensor& lse, const at::Tensor& g, double cap) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(0), V = logits.size(1);
  at::Tensor gl = at::empty_like(logits);
  if (n == 0) return gl;
  softcap_nll_bwd_kernel<<<int(n), kNllThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(logits), bp_or_null(delta), targets.data_ptr<int64_t>(), lse.data_ptr<float>(), g.data_ptr<float>(),
      bp_out(gl), V, float(cap));
  check_launch();
  return gl;
}

}  // namespace pgolf::fused::cuda
