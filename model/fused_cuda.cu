// CUDA kernels of model/fused.h: bf16 in and out, float32 math, each product
// and sum rounded on its own (__fmul_rn / __fadd_rn) as the ATen reference
// rounds it. Row kernels use one warp per row (qk_norm_rope: a group of lanes
// per head; xsa: per position and KV group); the sums across a row are the
// only place where the order of operations differs from the reference.
// Memory-bound kernels move 8 bf16 per lane in one 16-byte load / store where
// the row length and the pointers allow it (the "vector path"), else the same
// arithmetic one element at a time.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

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

// ---- 8 consecutive values per lane. kVec: one 16-byte access (two for
// float32), p + i 16-byte aligned; else n <= 8 scalar ones (the values past n
// read as 0, none written). bf16 <-> float32 conversions as the scalar code's.

// bf16 pairs in 32-bit words (element 0 in the low half) <-> float32, by bit
// operations, so the 16-byte access stays one instruction. Exact as
// __bfloat162float; __float2bfloat16_rn rounds as in the scalar code.
__device__ __forceinline__ void unpack8(const uint4& u, float (&v)[8]) {
  const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    v[2 * e] = __uint_as_float(w[e] << 16);
    v[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
  }
}

__device__ __forceinline__ unsigned pack2(float lo, float hi) {
  return unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}

template <bool kVec>
__device__ __forceinline__ void load8(const bf16* p, int64_t i, int n, float (&v)[8]) {
  if (kVec) {
    unpack8(*reinterpret_cast<const uint4*>(p + i), v);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = e < n ? ld(p, i + e) : 0.0f;
  }
}

template <bool kVec>
__device__ __forceinline__ void load8(const float* p, int64_t i, int n, float (&v)[8]) {
  if (kVec) {
    const float4 a = *reinterpret_cast<const float4*>(p + i), b = *reinterpret_cast<const float4*>(p + i + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = e < n ? ld(p, i + e) : 0.0f;
  }
}

template <bool kVec>
__device__ __forceinline__ void store8(bf16* p, int64_t i, int n, const float (&v)[8]) {
  if (kVec) {
    *reinterpret_cast<uint4*>(p + i) =
        make_uint4(pack2(v[0], v[1]), pack2(v[2], v[3]), pack2(v[4], v[5]), pack2(v[6], v[7]));
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (e < n) p[i + e] = __float2bfloat16_rn(v[e]);
  }
}

template <bool kVec>
__device__ __forceinline__ void store8(float* p, int64_t i, int n, const float (&v)[8]) {
  if (kVec) {
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (e < n) p[i + e] = v[e];
  }
}

// Columns of a row per lane: 8-column chunk j of a row belongs to lane j % 32,
// so a lane's chunks start at lane * 8 + 256 m. The number of them valid here.
template <bool kVec>
__device__ __forceinline__ int chunk_len(int c, int d) {
  return kVec ? 8 : min(8, d - c);
}

// A pass over a row whose order does not matter (no sum across columns): the
// vector path's chunks, or on the scalar path one column per lane and step,
// so that a warp's loads stay coalesced there too.
template <bool kVec>
constexpr int kPassLen = kVec ? 8 : 1;
template <bool kVec>
constexpr int kPassStep = kVec ? 256 : 32;

__device__ __forceinline__ float add_sq(float ss, float v) { return __fadd_rn(ss, __fmul_rn(v, v)); }

// x / sqrt(mean(x^2) + eps) factor: the multiplier for a row with sum of squares ss.
__device__ __forceinline__ float inv_rms(float ss, int d, float eps) {
  return rsqrtf(__fadd_rn(__fdiv_rn(ss, float(d)), eps));
}

// The multiplier of one row x[0, d) for a warp, in the one sum order of all
// the norm kernels, forward and backward: each lane adds the squares of its
// chunks (above) column by column, left to right, then warp_sum. The vector
// and the scalar loads give the same float; so does a group of 2^m >= d / 8
// lanes reducing among themselves (qk_norm_rope), since warp_sum's other
// steps would only add zeros to it.
template <bool kVec = false, class T>
__device__ __forceinline__ float row_inv_rms(const T* x, int d, float eps, int lane) {
  float ss = 0;
  for (int c = lane * 8; c < d; c += 256) {
    const int n = chunk_len<kVec>(c, d);
    float v[8];
    load8<kVec>(x, c, n, v);
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (e < n) ss = add_sq(ss, v[e]);
  }
  return inv_rms(warp_sum(ss), d, eps);
}

constexpr int kWarpsPerBlock = 4;

int row_blocks(int64_t rows) { return int((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// out[r] = bf16((x[r] * inv_rms) * factor)
// The norm's output pass: n = bf16((v * k) * factor) for the row's values v.
// mix_norm / add_norm read v back from the bf16 row the warp has just written
// (the scalar path reads other lanes' columns: __syncwarp orders those writes).
template <bool kVec, class T>
__device__ __forceinline__ void norm_row_out(const T* v_row, bf16* n_row, int d, int lane, float k, float factor,
                                             bool scale) {
  if (!kVec) __syncwarp();
  for (int c = lane * kPassLen<kVec>; c < d; c += kPassStep<kVec>) {
    float v[8];
    load8<kVec>(v_row, c, kPassLen<kVec>, v);
#pragma unroll
    for (int e = 0; e < kPassLen<kVec>; ++e) {
      v[e] = __fmul_rn(v[e], k);
      if (scale) v[e] = __fmul_rn(v[e], factor);
    }
    store8<kVec>(n_row, c, kPassLen<kVec>, v);
  }
}

template <bool kVec, class T>
__global__ void rms_norm_kernel(const T* __restrict__ x, bf16* __restrict__ out, int64_t rows, int d, float factor,
                                float eps, bool scale) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const T* xr = x + r * d;
  norm_row_out<kVec>(xr, out + r * d, d, lane, row_inv_rms<kVec>(xr, d, eps, lane), factor, scale);
}

// rms_norm's vector path for bf16 rows of d <= 256 kRmsChunks: a warp loads
// kRmsRows rows whole into registers first (more bytes in flight, no second
// read), then norms them one by one, in row_inv_rms's sum order.
constexpr int kRmsChunks = 2, kRmsRows = 2;
__global__ void rms_norm_rows_kernel(const bf16* __restrict__ x, bf16* __restrict__ out, int64_t rows, int d,
                                     float factor, float eps, bool scale) {
  const int64_t r0 = (int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32) * kRmsRows;
  const int lane = threadIdx.x % 32;
  uint4 raw[kRmsRows][kRmsChunks];
#pragma unroll
  for (int j = 0; j < kRmsRows; ++j)
#pragma unroll
    for (int m = 0; m < kRmsChunks; ++m) {
      const int c = lane * 8 + 256 * m;
      raw[j][m] = make_uint4(0, 0, 0, 0);
      if (r0 + j < rows && c < d) raw[j][m] = *reinterpret_cast<const uint4*>(x + (r0 + j) * d + c);
    }
#pragma unroll
  for (int j = 0; j < kRmsRows; ++j) {
    if (r0 + j >= rows) return;
    float ss = 0;
#pragma unroll
    for (int m = 0; m < kRmsChunks; ++m) {
      float v[8];
      unpack8(raw[j][m], v);
#pragma unroll
      for (int e = 0; e < 8; ++e) ss = add_sq(ss, v[e]);  // + 0 past the row's end
    }
    const float k = inv_rms(warp_sum(ss), d, eps);
#pragma unroll
    for (int m = 0; m < kRmsChunks; ++m) {
      const int c = lane * 8 + 256 * m;
      if (c >= d) break;
      float v[8];
      unpack8(raw[j][m], v);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[e] = __fmul_rn(v[e], k);
        if (scale) v[e] = __fmul_rn(v[e], factor);
      }
      store8<true>(out, (r0 + j) * d + c, 8, v);
    }
  }
}

// x_in = bf16(mix0 x + mix1 x0); n = bf16((x_in * inv_rms) * factor). The
// sum of squares is row_inv_rms's order over the rounded x_in values.
template <bool kVec>
__global__ void mix_norm_kernel(const bf16* __restrict__ x, const bf16* __restrict__ x0, const float* __restrict__ mix,
                                bf16* __restrict__ x_in, bf16* __restrict__ n, int64_t rows, int d, float factor,
                                float eps, bool scale) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int64_t o = r * d;
  float ss = 0;
  for (int c = lane * 8; c < d; c += 256) {
    const int len = chunk_len<kVec>(c, d);
    float a[8], b[8], m0[8], m1[8], v[8];
    load8<kVec>(x, o + c, len, a);
    load8<kVec>(x0, o + c, len, b);
    load8<kVec>(mix, c, len, m0);
    load8<kVec>(mix, d + c, len, m1);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      v[e] = round_bf16(__fadd_rn(__fmul_rn(m0[e], a[e]), __fmul_rn(m1[e], b[e])));
      if (e < len) ss = add_sq(ss, v[e]);
    }
    store8<kVec>(x_in, o + c, len, v);
  }
  norm_row_out<kVec>(x_in + o, n + o, d, lane, inv_rms(warp_sum(ss), d, eps), factor, scale);
}

// y = bf16(x + scale a); n = bf16((y * inv_rms) * factor)
template <bool kVec>
__global__ void add_norm_kernel(const bf16* __restrict__ x, const bf16* __restrict__ a,
                                const float* __restrict__ sc, bf16* __restrict__ y, bf16* __restrict__ n,
                                int64_t rows, int d, float factor, float eps, bool scale) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int64_t o = r * d;
  float ss = 0;
  for (int c = lane * 8; c < d; c += 256) {
    const int len = chunk_len<kVec>(c, d);
    float xv[8], av[8], s[8], v[8];
    load8<kVec>(x, o + c, len, xv);
    load8<kVec>(a, o + c, len, av);
    load8<kVec>(sc, c, len, s);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      v[e] = round_bf16(__fadd_rn(xv[e], __fmul_rn(s[e], av[e])));
      if (e < len) ss = add_sq(ss, v[e]);
    }
    store8<kVec>(y, o + c, len, v);
  }
  norm_row_out<kVec>(y + o, n + o, d, lane, inv_rms(warp_sum(ss), d, eps), factor, scale);
}

// Elementwise kernels: each thread takes 8 elements (one 16-byte load per
// input) per step over the first nvec * 8 elements, then the rest one at a
// time; nvec = 0 is the scalar path.
__device__ __forceinline__ float add_scaled_one(float x, float s, float a) { return __fadd_rn(x, __fmul_rn(s, a)); }

// y = bf16(x + scale[i % d] a); the vector path needs d % 8 == 0 (a chunk is
// inside one row, its 8 scales contiguous and 32-byte aligned).
__global__ void add_scaled_kernel(const bf16* __restrict__ x, const bf16* __restrict__ a,
                                  const float* __restrict__ sc, bf16* __restrict__ y, int64_t numel, int d,
                                  int64_t nvec) {
  const int64_t i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = i0; v < nvec; v += stride) {
    float xv[8], av[8], s[8];
    load8<true>(x, v * 8, 8, xv);
    load8<true>(a, v * 8, 8, av);
    load8<true>(sc, (v * 8) % d, 8, s);
#pragma unroll
    for (int e = 0; e < 8; ++e) xv[e] = add_scaled_one(xv[e], s[e], av[e]);
    store8<true>(y, v * 8, 8, xv);
  }
  for (int64_t i = nvec * 8 + i0; i < numel; i += stride)
    y[i] = __float2bfloat16_rn(add_scaled_one(ld(x, i), sc[i % d], ld(a, i)));
}

// One warp per (row position, head): q [rows = B*T, heads, hd] -> out, same
// layout. Any hd and half (the scalar path).
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

// The vector path of qk_norm_rope (hd % 8 == 0, hd <= 256, half % 8 == 0,
// 16-byte aligned q / out / cos / sin, units * lanes < 2^31): a group of
// `lanes` (2^m >= hd / 8) lanes per unit, one 8-column chunk (16 bytes) per
// lane, 32 / lanes units per warp at a time (hd 64: 4 heads), kQkSteps such
// steps per warp with all their loads issued first (more bytes in flight).
// The group reduces its sum of squares alone (row_inv_rms's order); a rotated
// chunk's partner columns (+-half) are the chunk of the lane half / 8 away,
// fetched by shuffles. Both rotated halves take one code path: with P = own
// value * k, Q = partner's * k, column p gives P c + Q s and column p + half
// Q (-s) + P c = P c + Q (-s), the same two rounded products and sum.
constexpr int kQkThreads = 256, kQkSteps = 2;
__global__ void __launch_bounds__(kQkThreads) qk_norm_rope_vec_kernel(
    const bf16* __restrict__ q, const float* __restrict__ cos, const float* __restrict__ sin,
    const float* __restrict__ gain, bf16* __restrict__ out, unsigned units, unsigned T, unsigned heads, int hd, int half,
    int lanes, float eps) {
  const int lane = threadIdx.x % 32, gl = lane & (lanes - 1), c = gl * 8;
  const unsigned per_step = 32 / lanes, warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const unsigned u0 = warp * per_step * kQkSteps + unsigned(lane / lanes);  // + per_step each step
  const int hb = half / 8;  // chunks in each rotated half
  const bool first = gl < hb, rotated = gl < 2 * hb;
  const int src = first ? lane + hb : rotated ? lane - hb : lane, p = first ? c : c - half;
  uint4 raw[kQkSteps];
#pragma unroll
  for (int i = 0; i < kQkSteps; ++i) {
    const unsigned u = u0 + i * per_step;
    raw[i] = make_uint4(0, 0, 0, 0);
    if (u < units && c < hd) raw[i] = *reinterpret_cast<const uint4*>(q + int64_t(u) * hd + c);
  }
#pragma unroll
  for (int i = 0; i < kQkSteps; ++i) {
    const unsigned u = u0 + i * per_step;
    const bool live = u < units && c < hd;  // dead lanes still take part in the shuffles
    float x[8];
    unpack8(raw[i], x);
    float ss = 0;
#pragma unroll
    for (int e = 0; e < 8; ++e) ss = add_sq(ss, x[e]);
    for (int o = lanes / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float k = inv_rms(ss, hd, eps);
    uint4 pr;
    pr.x = __shfl_sync(0xffffffffu, raw[i].x, src);
    pr.y = __shfl_sync(0xffffffffu, raw[i].y, src);
    pr.z = __shfl_sync(0xffffffffu, raw[i].z, src);
    pr.w = __shfl_sync(0xffffffffu, raw[i].w, src);
    if (!live) continue;
    const unsigned row = u / heads, h = u - row * heads, t = row % T;
    const float g = gain ? gain[h] : 1.0f;
    float y[8];
    if (rotated) {
      float xp[8], cs[8], sn[8];
      unpack8(pr, xp);
      load8<true>(cos, int64_t(t) * half + p, 8, cs);
      load8<true>(sin, int64_t(t) * half + p, 8, sn);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float P = __fmul_rn(x[e], k), Q = __fmul_rn(xp[e], k);
        y[e] = __fadd_rn(__fmul_rn(P, cs[e]), __fmul_rn(Q, first ? sn[e] : -sn[e]));
        if (gain) y[e] = __fmul_rn(y[e], g);
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        y[e] = __fmul_rn(x[e], k);
        if (gain) y[e] = __fmul_rn(y[e], g);
      }
    }
    store8<true>(out, int64_t(u) * hd + c, 8, y);
  }
}

__device__ __forceinline__ float relu_square_one(float v, float slope) {
  if (v < 0.0f) v = __fmul_rn(v, slope);
  return __fmul_rn(v, v);
}

__global__ void relu_square_kernel(const bf16* __restrict__ h, bf16* __restrict__ out, int64_t numel, int64_t nvec,
                                   float slope) {
  const int64_t i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = i0; v < nvec; v += stride) {
    float x[8];
    load8<true>(h, v * 8, 8, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = relu_square_one(x[e], slope);
    store8<true>(out, v * 8, 8, x);
  }
  for (int64_t i = nvec * 8 + i0; i < numel; i += stride) out[i] = __float2bfloat16_rn(relu_square_one(ld(h, i), slope));
}

// The logits a softcap sees at columns [i, i + 8) of a row (n valid): the
// head's output plus, when there is one, the TTT head adapter's delta, added
// in float32 (as the reference's fused kernel adds them).
template <bool kVec>
__device__ __forceinline__ void logits8(const bf16* l, const bf16* dl, int64_t i, int n, float (&v)[8]) {
  load8<kVec>(l, i, n, v);
  if (dl) {
    float d[8];
    load8<kVec>(dl, i, n, d);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = __fadd_rn(v[e], d[e]);
  }
}

// z = cap * tanh(l / cap), the division as ATen's eager op on a scalar
// divisor computes it: times float(1 / cap).
__device__ __forceinline__ float softcap(float l, float cap, float inv_cap) {
  return __fmul_rn(cap, tanhf(__fmul_rn(l, inv_cap)));
}

// Block-wide max / sum of one float per thread (kNllThreads threads); every
// thread gets the result.
constexpr int kNllThreads = 256;
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v) {
  __shared__ float part[kNllThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, u) : v + u;
  }
  __syncthreads();  // part[] may still be read by a previous call
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  v = part[0];
  for (int k = 1; k < kNllThreads / 32; ++k) v = kMax ? fmaxf(v, part[k]) : v + part[k];
  return v;
}

// One block per row, two passes over it: the largest logit first (tanh is
// increasing, so its z is the largest z, the shift log-softmax subtracts),
// then the sum of exp(z - M), branch-free. Thread t takes the 8-column chunks
// t, t + kNllThreads, ... lse (optional) keeps log-sum-exp for the backward.
template <bool kVec>
__global__ void softcap_nll_kernel(const bf16* __restrict__ logits, const bf16* __restrict__ delta,
                                   const int64_t* __restrict__ targets, float* __restrict__ out,
                                   float* __restrict__ lse, int64_t V, float cap, float inv_cap) {
  const int64_t r = blockIdx.x;
  const bf16* l = logits + r * V;
  const bf16* dl = delta ? delta + r * V : nullptr;
  float mx = -INFINITY;
  for (int64_t i = int64_t(threadIdx.x) * 8; i < V; i += 8 * kNllThreads) {
    const int n = kVec ? 8 : int(V - i < 8 ? V - i : 8);
    float v[8];
    logits8<kVec>(l, dl, i, n, v);
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (kVec || e < n) mx = fmaxf(mx, v[e]);
  }
  const float M = softcap(block_reduce<true>(mx), cap, inv_cap);
  float s = 0.0f;
  for (int64_t i = int64_t(threadIdx.x) * 8; i < V; i += 8 * kNllThreads) {
    const int n = kVec ? 8 : int(V - i < 8 ? V - i : 8);
    float v[8];
    logits8<kVec>(l, dl, i, n, v);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = kVec || e < n ? expf(softcap(v[e], cap, inv_cap) - M) : 0.0f;
    s += ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
  }
  const float S = block_reduce<false>(s);
  if (threadIdx.x == 0) {
    const int64_t t = targets[r];
    const float zt = softcap(dl ? __fadd_rn(ld(l, t), ld(dl, t)) : ld(l, t), cap, inv_cap);
    const float L = M + logf(S);
    out[r] = L - zt;
    if (lse) lse[r] = L;
  }
}

// ---- Backward kernels (training and TTT). Float32 math; each gradient is
// rounded to its tensor's type where the ATen graph would round it (at the
// casts between bf16 activations and float32 math), not inside the sums. ----

__device__ __forceinline__ float round_to(const bf16*, float v) { return round_bf16(v); }
__device__ __forceinline__ float round_to(const float*, float v) { return v; }

// Gradient through n = round(rms(y) * factor) plus a residual gradient:
// gt = round(g_res + round(d n / d y . g_n)). One warp per row, the columns in
// row_inv_rms's chunks (so k is the forward's, bit for bit). With c1 / c2 (per
// column) it also writes o1 = round(c1 gt), o2 = round(c2 gt): the gradients
// of the inputs that made y (mix_norm: x, x0; add_norm: a). g_res, g_n, gt,
// o1, o2 may be null (no such gradient / not wanted).
template <bool kVec, class T>
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
    for (int c = lane * 8; c < d; c += 256) {
      const int n = chunk_len<kVec>(c, d);
      float v[8], gv[8];
      load8<kVec>(y, o + c, n, v);
      load8<kVec>(g_n, o + c, n, gv);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (e < n) {
          ss = add_sq(ss, v[e]);  // as the forward sums, so k is the forward's
          dot += __fmul_rn(gv[e], factor) * v[e];
        }
    }
  ss = warp_sum(ss);
  dot = warp_sum(dot);
  const float k = g_n ? inv_rms(ss, d, eps) : 0.0f;
  const float cc = k * k * dot / float(d);
  constexpr int kLen = kPassLen<kVec>;
  for (int c = lane * kLen; c < d; c += kPassStep<kVec>) {
    float w[8] = {};
    if (g_n) {
      float v[8], gv[8];
      load8<kVec>(y, o + c, kLen, v);
      load8<kVec>(g_n, o + c, kLen, gv);
#pragma unroll
      for (int e = 0; e < kLen; ++e) w[e] = round_to(y, k * (__fmul_rn(gv[e], factor) - v[e] * cc));
    }
    if (g_res) {
      float gr[8];
      load8<kVec>(g_res, o + c, kLen, gr);
#pragma unroll
      for (int e = 0; e < kLen; ++e) w[e] = round_to(y, w[e] + gr[e]);
    }
    if (gt) store8<kVec>(gt, o + c, kLen, w);
    for (int j = 0; j < 2; ++j) {
      const float* cj = j ? c2 : c1;
      bf16* oj = j ? o2 : o1;
      if (!oj) continue;
      float s[8];
      load8<kVec>(cj, c, kLen, s);
#pragma unroll
      for (int e = 0; e < kLen; ++e) s[e] = s[e] * w[e];
      store8<kVec>(oj, o + c, kLen, s);
    }
  }
}

// ga = round(scale[i % d] g): add_scaled's gradient for a; vector path as
// add_scaled_kernel's.
__global__ void scale_cols_kernel(const bf16* __restrict__ g, const float* __restrict__ sc, bf16* __restrict__ out,
                                  int64_t numel, int d, int64_t nvec) {
  const int64_t i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = i0; v < nvec; v += stride) {
    float gv[8], s[8];
    load8<true>(g, v * 8, 8, gv);
    load8<true>(sc, (v * 8) % d, 8, s);
#pragma unroll
    for (int e = 0; e < 8; ++e) gv[e] = s[e] * gv[e];
    store8<true>(out, v * 8, 8, gv);
  }
  for (int64_t i = nvec * 8 + i0; i < numel; i += stride) out[i] = __float2bfloat16_rn(sc[i % d] * ld(g, i));
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

// The vector path of qk_norm_rope's backward, on the forward's conditions
// and lane layout (qk_norm_rope_vec_kernel): a group of `lanes` lanes per
// unit, 8 columns each, 16-byte loads; the rotation partner's gradient (and,
// for the gain's sum, its value) by shuffles. With z = gy * gain, a column's
// gradient at its normed value is z c + z_partner (first half ? -s : s); the
// norm's backward needs that gradient's dot with x over the unit, reduced in
// the group.
__global__ void __launch_bounds__(kQkThreads) qk_norm_rope_bwd_vec_kernel(
    const bf16* __restrict__ q, const bf16* __restrict__ gy, const float* __restrict__ cos,
    const float* __restrict__ sin, const float* __restrict__ gain, bf16* __restrict__ gq,
    float* __restrict__ gain_partial, unsigned units, unsigned T, unsigned heads, int hd, int half, int lanes,
    float eps) {
  const int lane = threadIdx.x % 32, gl = lane & (lanes - 1), c = gl * 8;
  const unsigned warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const unsigned u = warp * unsigned(32 / lanes) + unsigned(lane / lanes);
  const int hb = half / 8;
  const bool first = gl < hb, rotated = gl < 2 * hb;
  const int src = first ? lane + hb : rotated ? lane - hb : lane, p = first ? c : c - half;
  const bool live = u < units && c < hd;  // dead lanes still take part in the shuffles
  uint4 xr = make_uint4(0, 0, 0, 0), gr = xr;
  if (live) {
    xr = *reinterpret_cast<const uint4*>(q + int64_t(u) * hd + c);
    gr = *reinterpret_cast<const uint4*>(gy + int64_t(u) * hd + c);
  }
  float x[8], g[8];
  unpack8(xr, x);
  unpack8(gr, g);
  float ss = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) ss = add_sq(ss, x[e]);
  for (int o = lanes / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float k = inv_rms(ss, hd, eps);
  uint4 pg, px;
  pg.x = __shfl_sync(0xffffffffu, gr.x, src);
  pg.y = __shfl_sync(0xffffffffu, gr.y, src);
  pg.z = __shfl_sync(0xffffffffu, gr.z, src);
  pg.w = __shfl_sync(0xffffffffu, gr.w, src);
  px.x = __shfl_sync(0xffffffffu, xr.x, src);
  px.y = __shfl_sync(0xffffffffu, xr.y, src);
  px.z = __shfl_sync(0xffffffffu, xr.z, src);
  px.w = __shfl_sync(0xffffffffu, xr.w, src);
  float dn[8], dot = 0.0f, gsum = 0.0f;
  if (live) {
    const unsigned row = u / heads, h = u - row * heads, t = row % T;
    const float gn = gain ? gain[h] : 1.0f;
    if (rotated) {
      float gp[8], xp[8], cs[8], sn[8];
      unpack8(pg, gp);
      unpack8(px, xp);
      load8<true>(cos, int64_t(t) * half + p, 8, cs);
      load8<true>(sin, int64_t(t) * half + p, 8, sn);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float sg = first ? -sn[e] : sn[e];
        dn[e] = (g[e] * gn) * cs[e] + (gp[e] * gn) * sg;
        dot += dn[e] * x[e];
        gsum += g[e] * (__fmul_rn(x[e], k) * cs[e] - __fmul_rn(xp[e], k) * sg);
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        dn[e] = g[e] * gn;
        dot += dn[e] * x[e];
        gsum += g[e] * __fmul_rn(x[e], k);
      }
    }
  }
  for (int o = lanes / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  if (gain_partial)
    for (int o = lanes / 2; o > 0; o >>= 1) gsum += __shfl_xor_sync(0xffffffffu, gsum, o);
  if (!live) return;
  const float cc = k * k * dot / float(hd);
  float out[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = k * (dn[e] - x[e] * cc);
  store8<true>(gq, int64_t(u) * hd + c, 8, out);
  if (gain_partial && gl == 0) gain_partial[u] = gsum;
}

// gh = round(2 g a (h > 0 ? 1 : slope)), a = leaky_relu(h, slope); vector
// path as relu_square_kernel's.
__device__ __forceinline__ float relu_square_grad(float v, float g, float slope) {
  const float a = v < 0.0f ? __fmul_rn(v, slope) : v;
  float r = 2.0f * (g * a);
  if (!(v > 0.0f)) r *= slope;
  return r;
}

__global__ void relu_square_bwd_kernel(const bf16* __restrict__ h, const bf16* __restrict__ g, bf16* __restrict__ gh,
                                       int64_t numel, int64_t nvec, float slope) {
  const int64_t i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = i0; v < nvec; v += stride) {
    float hv[8], gv[8];
    load8<true>(h, v * 8, 8, hv);
    load8<true>(g, v * 8, 8, gv);
#pragma unroll
    for (int e = 0; e < 8; ++e) hv[e] = relu_square_grad(hv[e], gv[e], slope);
    store8<true>(gh, v * 8, 8, hv);
  }
  for (int64_t i = nvec * 8 + i0; i < numel; i += stride)
    gh[i] = __float2bfloat16_rn(relu_square_grad(ld(h, i), ld(g, i), slope));
}

// gl = round(g[r] (softmax(z) - onehot(target)) (1 - tanh(l / cap)^2)), one
// block per row, 8 columns per thread and step; also the gradient of the
// delta (the same values).
template <bool kVec>
__global__ void softcap_nll_bwd_kernel(const bf16* __restrict__ logits, const bf16* __restrict__ delta,
                                       const int64_t* __restrict__ targets, const float* __restrict__ lse,
                                       const float* __restrict__ g, bf16* __restrict__ gl, int64_t V, float cap,
                                       float inv_cap) {
  const int64_t r = blockIdx.x;
  const bf16* l = logits + r * V;
  const bf16* dl = delta ? delta + r * V : nullptr;
  const float L = lse[r], gr = g[r];
  const int64_t t = targets[r];
  for (int64_t i = int64_t(threadIdx.x) * 8; i < V; i += 8 * kNllThreads) {
    const int n = kVec ? 8 : int(V - i < 8 ? V - i : 8);
    float v[8];
    logits8<kVec>(l, dl, i, n, v);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float th = tanhf(__fmul_rn(v[e], inv_cap));
      const float p = expf(__fmul_rn(cap, th) - L) - (i + e == t ? 1.0f : 0.0f);
      v[e] = gr * p * (1.0f - th * th);
    }
    store8<kVec>(gl + r * V, i, n, v);
  }
}

// ---- XSA: out = y - (y . u) u for each head of a KV group, u = v / max(|v|,
// 1e-12) the group's unit value vector; float32 math with each product, sum
// and quotient rounded on its own as the reference's ATen ops round them
// (only the order inside the two dot products differs). A team of `lanes`
// lanes (a power of two, lanes * 8 >= hd) per (position, KV group) reads v
// once, then the group's heads in turn; lane l holds columns [8 l, 8 l + 8).
// kVec: 16-byte accesses (hd % 8 == 0, aligned pointers); else the same
// arithmetic element by element.
constexpr int kXsaThreads = 256;
constexpr float kXsaEps = 1e-12f;

__device__ __forceinline__ float team_sum(float v, int lanes) {
  for (int o = lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The lane's n columns of u; returns |v|. Every lane of the warp calls it
// (the shuffles), n = 0 for lanes past the row or the units.
template <bool kVec>
__device__ __forceinline__ float xsa_unit(const bf16* v, int n, int lanes, float (&u)[8]) {
  float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (n > 0) load8<kVec>(v, 0, n, x);
  float ss = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e)
    if (e < n) ss = add_sq(ss, x[e]);
  const float norm = sqrtf(team_sum(ss, lanes));
  const float den = fmaxf(norm, kXsaEps);
#pragma unroll
  for (int e = 0; e < 8; ++e) u[e] = __fdiv_rn(x[e], den);
  return norm;
}

// sum over the team of a[e] b[e], each product rounded.
__device__ __forceinline__ float team_dot(const float (&a)[8], const float (&b)[8], int n, int lanes) {
  float s = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e)
    if (e < n) s = __fadd_rn(s, __fmul_rn(a[e], b[e]));
  return team_sum(s, lanes);
}

template <bool kVec>
__global__ void __launch_bounds__(kXsaThreads) xsa_kernel(const bf16* __restrict__ y, const bf16* __restrict__ v,
                                                          bf16* __restrict__ out, unsigned units, int group, int hd,
                                                          int lanes) {
  const int c = ((threadIdx.x % 32) & (lanes - 1)) * 8;
  const unsigned p = (blockIdx.x * blockDim.x + threadIdx.x) / lanes;  // (position, KV group)
  const int n = p < units && c < hd ? min(8, hd - c) : 0;
  float u[8];
  xsa_unit<kVec>(v + int64_t(p < units ? p : 0) * hd + c, n, lanes, u);
  for (int j = 0; j < group; ++j) {
    const int64_t i = (int64_t(p) * group + j) * hd + c;
    float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (n > 0) load8<kVec>(y, i, n, x);
    const float s = team_dot(x, u, n, lanes);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = __fsub_rn(x[e], __fmul_rn(s, u[e]));
    if (n > 0) store8<kVec>(out, i, n, x);
  }
}

// Backward for the output gradient g: gy = g - (g . u) u per head; the
// group's gu = -sum over heads of ((g . u) y + (y . u) g), then through u =
// v / |v|: gv = (gu - (gu . u) u) / |v| (gu / 1e-12 where the norm was
// clamped, as clamp_min passes no gradient to the norm). gv may be null.
template <bool kVec>
__global__ void __launch_bounds__(kXsaThreads) xsa_bwd_kernel(const bf16* __restrict__ y, const bf16* __restrict__ v,
                                                              const bf16* __restrict__ g, bf16* __restrict__ gy,
                                                              bf16* __restrict__ gv, unsigned units, int group, int hd,
                                                              int lanes) {
  const int c = ((threadIdx.x % 32) & (lanes - 1)) * 8;
  const unsigned p = (blockIdx.x * blockDim.x + threadIdx.x) / lanes;
  const int n = p < units && c < hd ? min(8, hd - c) : 0;
  float u[8], gu[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const float norm = xsa_unit<kVec>(v + int64_t(p < units ? p : 0) * hd + c, n, lanes, u);
  for (int j = 0; j < group; ++j) {
    const int64_t i = (int64_t(p) * group + j) * hd + c;
    float x[8] = {0, 0, 0, 0, 0, 0, 0, 0}, gg[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (n > 0) load8<kVec>(y, i, n, x), load8<kVec>(g, i, n, gg);
    const float s = team_dot(x, u, n, lanes), t = team_dot(gg, u, n, lanes);
    float r[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      r[e] = gg[e] - t * u[e];
      gu[e] -= t * x[e] + s * gg[e];
    }
    if (n > 0) store8<kVec>(gy, i, n, r);
  }
  if (!gv) return;
  const bool clamped = !(norm >= kXsaEps);
  const float d = team_dot(gu, u, n, lanes);
  float r[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) r[e] = clamped ? gu[e] / kXsaEps : (gu[e] - d * u[e]) / norm;
  if (n > 0) store8<kVec>(gv, int64_t(p) * hd + c, n, r);
}

int grid_for(int64_t numel, int threads) {
  return int(std::min<int64_t>((numel + threads - 1) / threads, int64_t(132) * 32));
}

const bf16* bp(const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.data_ptr()); }
bf16* bp_out(at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr()); }

// ---- Adam / AdamW over flat float32 parameters (ttt/adam.h), one element
// per step of the loop, in the order and with the roundings of FlatAdam's
// ATen ops (each product and sum rounded on its own). f[0] = -lr / (1 - b1^t),
// f[1] = sqrt(1 - b2^t), written on the device by FlatAdam::prepare.
struct AdamArgs {
  float decay;   // decoupled: p *= decay (1 - lr wd); 1 when not
  float l2;      // not decoupled: g += l2 * p (wd); 0 when not
  float w1;      // 1 - b1, lerp's weight
  float b2, c2;  // b2, 1 - b2
  float eps;
};

__device__ __forceinline__ void adam_one(float& p, float g, float& m, float& v, const AdamArgs& a, float f0, float f1) {
  if (a.decay != 1.0f) p = __fmul_rn(p, a.decay);
  if (a.l2 != 0.0f) g = __fadd_rn(g, __fmul_rn(p, a.l2));
  // torch.lerp: self + w (end - self) for |w| < 0.5, else end - (end - self)(1 - w).
  const float diff = __fsub_rn(g, m);
  m = a.w1 < 0.5f ? __fadd_rn(m, __fmul_rn(a.w1, diff)) : __fsub_rn(g, __fmul_rn(diff, __fsub_rn(1.0f, a.w1)));
  v = __fadd_rn(__fmul_rn(v, a.b2), __fmul_rn(__fmul_rn(a.c2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), f1), a.eps);
  p = __fadd_rn(p, __fmul_rn(__fdiv_rn(m, denom), f0));
}

__device__ __forceinline__ float ld_grad(const float* g, int64_t i) { return g[i]; }
__device__ __forceinline__ float ld_grad(const bf16* g, int64_t i) { return __bfloat162float(g[i]); }
__device__ __forceinline__ void st_mirror(float* o, int64_t i, float v) { o[i] = v; }
__device__ __forceinline__ void st_mirror(bf16* o, int64_t i, float v) { o[i] = __float2bfloat16_rn(v); }

// kVec: four elements per access (float4 for p, m, v; the gradient and the
// mirror as their 4-element words), every pointer 16-byte aligned. parts
// (optional): blockIdx.y's (start, length) pair is the range this block works
// on; else all n elements.
template <typename G, typename M, bool kVec>
__global__ void adam_kernel(float* __restrict__ p, const G* __restrict__ g, float* __restrict__ m,
                            float* __restrict__ v, M* __restrict__ mirror, const float* __restrict__ f, int64_t n,
                            const int64_t* __restrict__ parts, AdamArgs a) {
  const float f0 = f[0], f1 = f[1];
  if (parts) {
    const int64_t start = parts[2 * blockIdx.y];
    n = parts[2 * blockIdx.y + 1];
    p += start, g += start, m += start, v += start;
    if (mirror) mirror += start;
  }
  const int64_t i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t nvec = kVec ? n / 4 : 0;
  for (int64_t k = i0; k < nvec; k += stride) {
    float4 pp = reinterpret_cast<float4*>(p)[k], mm = reinterpret_cast<float4*>(m)[k],
           vv = reinterpret_cast<float4*>(v)[k];
    float gg[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) gg[e] = ld_grad(g, 4 * k + e);
    adam_one(pp.x, gg[0], mm.x, vv.x, a, f0, f1);
    adam_one(pp.y, gg[1], mm.y, vv.y, a, f0, f1);
    adam_one(pp.z, gg[2], mm.z, vv.z, a, f0, f1);
    adam_one(pp.w, gg[3], mm.w, vv.w, a, f0, f1);
    reinterpret_cast<float4*>(p)[k] = pp;
    reinterpret_cast<float4*>(m)[k] = mm;
    reinterpret_cast<float4*>(v)[k] = vv;
    if (mirror) {
      st_mirror(mirror, 4 * k, pp.x);
      st_mirror(mirror, 4 * k + 1, pp.y);
      st_mirror(mirror, 4 * k + 2, pp.z);
      st_mirror(mirror, 4 * k + 3, pp.w);
    }
  }
  for (int64_t i = 4 * nvec + i0; i < n; i += stride) {
    float pi = p[i], mi = m[i], vi = v[i];
    adam_one(pi, ld_grad(g, i), mi, vi, a, f0, f1);
    p[i] = pi, m[i] = mi, v[i] = vi;
    if (mirror) st_mirror(mirror, i, pi);
  }
}

template <typename G, typename M>
void launch_adam(bool vec, dim3 grid, cudaStream_t stream, float* p, const G* g, float* m, float* v, M* mirror,
                 const float* f, int64_t n, const int64_t* parts, const AdamArgs& a) {
  if (vec)
    adam_kernel<G, M, true><<<grid, 256, 0, stream>>>(p, g, m, v, mirror, f, n, parts, a);
  else
    adam_kernel<G, M, false><<<grid, 256, 0, stream>>>(p, g, m, v, mirror, f, n, parts, a);
}

void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

// The vector path's condition: rows of whole 8-column chunks, every pointer
// (null: absent) 16-byte aligned.
bool vec_ok(int64_t d, std::initializer_list<const void*> ptrs) {
  if (d % 8 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// q/k norm + RoPE's vector path (forward and backward share its lane layout):
// lanes per unit, the power of two >= hd / 8, or 0 where the path does not
// apply (head dims over 256, rotated halves not in whole chunks, too many
// threads, unaligned pointers).
int qk_vec_lanes(int64_t hd, int64_t half, int64_t units, std::initializer_list<const void*> ptrs) {
  int lanes = 1;
  while (lanes * 8 < hd) lanes *= 2;
  const bool ok = hd <= 256 && half % 8 == 0 && 2 * half <= hd && units * lanes < (int64_t(1) << 31) &&
                  vec_ok(hd, ptrs);
  return ok ? lanes : 0;
}

// Elementwise kernels: chunks of 8 for the vector path (the tail after them
// scalar), else 0; the grid for that much work.
int64_t vec_chunks(bool vec, int64_t numel) { return vec ? numel / 8 : 0; }
int elementwise_grid(int64_t numel, int64_t nvec) { return grid_for(std::max(nvec, numel - 8 * nvec), 256); }

}  // namespace

at::Tensor rms_norm(const at::Tensor& x_, double factor, double eps) {
  const at::Tensor x = x_.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  const int d = int(x.size(-1));
  const int64_t rows = x.numel() / d;
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  if (rows == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool vec = vec_ok(d, {x.data_ptr(), out.data_ptr()});
  if (x.scalar_type() == at::kFloat) {
    auto kernel = vec ? rms_norm_kernel<true, float> : rms_norm_kernel<false, float>;
    kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(x.data_ptr<float>(), bp_out(out), rows, d,
                                                                 float(factor), float(eps), factor != 1.0);
  } else if (vec && d <= 256 * kRmsChunks) {
    const int64_t per_block = int64_t(kWarpsPerBlock) * kRmsRows;
    rms_norm_rows_kernel<<<int((rows + per_block - 1) / per_block), 32 * kWarpsPerBlock, 0, stream>>>(
        bp(x), bp_out(out), rows, d, float(factor), float(eps), factor != 1.0);
  } else {
    auto kernel = vec ? rms_norm_kernel<true, bf16> : rms_norm_kernel<false, bf16>;
    kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(bp(x), bp_out(out), rows, d, float(factor),
                                                                 float(eps), factor != 1.0);
  }
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
  const bool vec = vec_ok(d, {x.data_ptr(), x0.data_ptr(), m.data_ptr(), x_in.data_ptr(), n.data_ptr()});
  auto kernel = vec ? mix_norm_kernel<true> : mix_norm_kernel<false>;
  kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
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
  const int d = int(x.size(-1));
  const int64_t nvec =
      vec_chunks(vec_ok(d, {x.data_ptr(), a.data_ptr(), sc.data_ptr(), y.data_ptr()}), x.numel());
  add_scaled_kernel<<<elementwise_grid(x.numel(), nvec), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(x), bp(a), sc.data_ptr<float>(), bp_out(y), x.numel(), d, nvec);
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
  const bool vec = vec_ok(d, {x.data_ptr(), a.data_ptr(), sc.data_ptr(), y.data_ptr(), n.data_ptr()});
  auto kernel = vec ? add_norm_kernel<true> : add_norm_kernel<false>;
  kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
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
  const float* g = gain.defined() ? gain.data_ptr<float>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int lanes = qk_vec_lanes(hd, half, units, {q.data_ptr(), out.data_ptr(), cos.data_ptr(), sin.data_ptr()});
  if (lanes > 0) {
    const int64_t per_block = int64_t(kQkThreads / lanes) * kQkSteps;  // units
    qk_norm_rope_vec_kernel<<<int((units + per_block - 1) / per_block), kQkThreads, 0, stream>>>(
        bp(q), cos.data_ptr<float>(), sin.data_ptr<float>(), g, bp_out(out), unsigned(units), unsigned(T),
        unsigned(heads), int(hd), int(half), lanes, float(eps));
  } else {
    qk_norm_rope_kernel<<<row_blocks(units), 32 * kWarpsPerBlock, 0, stream>>>(
        bp(q), cos.data_ptr<float>(), sin.data_ptr<float>(), g, bp_out(out), units, T, int(heads), int(hd),
        int(half), float(eps));
  }
  check_launch();
  return out;
}

at::Tensor relu_square(const at::Tensor& h_, double slope) {
  const at::Tensor h = h_.contiguous();
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor out = at::empty_like(h);
  if (h.numel() == 0) return out;
  const int64_t nvec = vec_chunks(vec_ok(0, {h.data_ptr(), out.data_ptr()}), h.numel());
  relu_square_kernel<<<elementwise_grid(h.numel(), nvec), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(h), bp_out(out), h.numel(), nvec, float(slope));
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
  const bf16* dl = delta.defined() ? bp(delta) : nullptr;
  const float inv_cap = float(1.0 / cap);
  if (vec_ok(V, {logits.data_ptr(), dl}))
    softcap_nll_kernel<true><<<int(n), kNllThreads, 0, stream>>>(bp(logits), dl, targets.data_ptr<int64_t>(),
                                                                 out.data_ptr<float>(), lp, V, float(cap), inv_cap);
  else
    softcap_nll_kernel<false><<<int(n), kNllThreads, 0, stream>>>(bp(logits), dl, targets.data_ptr<int64_t>(),
                                                                  out.data_ptr<float>(), lp, V, float(cap), inv_cap);
  check_launch();
  return {out, lse};
}

// ---- Backward ----

namespace {

const bf16* bp_or_null(const at::Tensor& t) { return t.defined() ? bp(t) : nullptr; }
const float* fp_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

}  // namespace

at::Tensor rms_norm_backward(const at::Tensor& x, const at::Tensor& g, double factor, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int d = int(x.size(-1));
  const int64_t rows = x.numel() / d;
  at::Tensor gx = at::empty_like(x);
  if (rows == 0) return gx;
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool vec = vec_ok(d, {x.data_ptr(), g.data_ptr(), gx.data_ptr()});
  if (x.scalar_type() == at::kFloat) {
    auto kernel = vec ? norm_bwd_kernel<true, float> : norm_bwd_kernel<false, float>;
    kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(x.data_ptr<float>(), nullptr, bp(g), nullptr,
                                                                 nullptr, gx.data_ptr<float>(), nullptr, nullptr,
                                                                 rows, d, float(factor), float(eps));
  } else {
    auto kernel = vec ? norm_bwd_kernel<true, bf16> : norm_bwd_kernel<false, bf16>;
    kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(bp(x), nullptr, bp(g), nullptr, nullptr, bp_out(gx),
                                                                 nullptr, nullptr, rows, d, float(factor),
                                                                 float(eps));
  }
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
  const bool vec = vec_ok(d, {ptr_or_null(y), ptr_or_null(g_res), ptr_or_null(g_n), ptr_or_null(c1), ptr_or_null(c2),
                              ptr_or_null(r.gt), ptr_or_null(r.o1), ptr_or_null(r.o2)});
  auto kernel = vec ? norm_bwd_kernel<true, bf16> : norm_bwd_kernel<false, bf16>;
  kernel<<<row_blocks(rows), 32 * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
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
  const int d = int(g.size(-1));
  const int64_t nvec = vec_chunks(vec_ok(d, {g.data_ptr(), scale.data_ptr(), out.data_ptr()}), g.numel());
  scale_cols_kernel<<<elementwise_grid(g.numel(), nvec), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(g), scale.data_ptr<float>(), bp_out(out), g.numel(), d, nvec);
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
  float* gp = want_ggain ? partial.data_ptr<float>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int lanes = units == 0 ? 0
                                : qk_vec_lanes(hd, half, units,
                                               {q.data_ptr(), gy.data_ptr(), gq.data_ptr(), cos.data_ptr(), sin.data_ptr()});
  if (lanes > 0) {
    const int64_t per_block = kQkThreads / lanes;  // units
    qk_norm_rope_bwd_vec_kernel<<<int((units + per_block - 1) / per_block), kQkThreads, 0, stream>>>(
        bp(q), bp(gy), cos.data_ptr<float>(), sin.data_ptr<float>(), fp_or_null(gain), bp_out(gq), gp,
        unsigned(units), unsigned(T), unsigned(heads), int(hd), int(half), lanes, float(eps));
    check_launch();
  } else if (units > 0) {
    qk_norm_rope_bwd_kernel<<<row_blocks(units), 32 * kWarpsPerBlock, 0, stream>>>(
        bp(q), bp(gy), cos.data_ptr<float>(), sin.data_ptr<float>(), fp_or_null(gain), bp_out(gq), gp, units, T,
        int(heads), int(hd), int(half), float(eps));
    check_launch();
  }
  at::Tensor ggain = want_ggain ? partial.view({B * T, heads}).sum(0) : at::Tensor();
  return {gq, ggain};
}

at::Tensor relu_square_backward(const at::Tensor& h, const at::Tensor& g, double slope) {
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor gh = at::empty_like(h);
  if (h.numel() == 0) return gh;
  const int64_t nvec = vec_chunks(vec_ok(0, {h.data_ptr(), g.data_ptr(), gh.data_ptr()}), h.numel());
  relu_square_bwd_kernel<<<elementwise_grid(h.numel(), nvec), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(h), bp(g), bp_out(gh), h.numel(), nvec, float(slope));
  check_launch();
  return gh;
}

at::Tensor softcap_nll_backward(const at::Tensor& logits, const at::Tensor& delta, const at::Tensor& targets,
                                const at::Tensor& lse, const at::Tensor& g, double cap) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(0), V = logits.size(1);
  at::Tensor gl = at::empty_like(logits);
  if (n == 0) return gl;
  const bf16* dl = bp_or_null(delta);
  const float inv_cap = float(1.0 / cap);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (vec_ok(V, {logits.data_ptr(), dl, gl.data_ptr()}))
    softcap_nll_bwd_kernel<true><<<int(n), kNllThreads, 0, stream>>>(bp(logits), dl, targets.data_ptr<int64_t>(),
                                                                     lse.data_ptr<float>(), g.data_ptr<float>(),
                                                                     bp_out(gl), V, float(cap), inv_cap);
  else
    softcap_nll_bwd_kernel<false><<<int(n), kNllThreads, 0, stream>>>(bp(logits), dl, targets.data_ptr<int64_t>(),
                                                                      lse.data_ptr<float>(), g.data_ptr<float>(),
                                                                      bp_out(gl), V, float(cap), inv_cap);
  check_launch();
  return gl;
}

namespace {

// XSA's launch: lanes per (position, KV group) and the vector path.
struct XsaLaunch {
  unsigned units;
  int group, hd, lanes, blocks;
  bool vec;
};

XsaLaunch xsa_launch(const at::Tensor& y, const at::Tensor& v, std::initializer_list<const void*> ptrs) {
  const int64_t hd = y.size(-1), H = y.size(-2), KV = v.size(-2), units = v.numel() / std::max<int64_t>(hd, 1);
  TORCH_CHECK(hd <= 256 && H % KV == 0 && y.numel() == units * (H / KV) * hd, "fused xsa: unsupported shapes");
  int lanes = 1;
  while (lanes * 8 < hd) lanes *= 2;
  TORCH_CHECK(units * lanes < (int64_t(1) << 31), "fused xsa: too many rows");
  const int64_t per_block = kXsaThreads / lanes;
  return {unsigned(units), int(H / KV), int(hd), lanes, int((units + per_block - 1) / per_block), vec_ok(hd, ptrs)};
}

}  // namespace

at::Tensor xsa(const at::Tensor& y, const at::Tensor& v) {
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor out = at::empty_like(y);
  if (y.numel() == 0) return out;
  const XsaLaunch l = xsa_launch(y, v, {y.data_ptr(), v.data_ptr(), out.data_ptr()});
  auto kernel = l.vec ? xsa_kernel<true> : xsa_kernel<false>;
  kernel<<<l.blocks, kXsaThreads, 0, at::cuda::getCurrentCUDAStream()>>>(bp(y), bp(v), bp_out(out), l.units, l.group,
                                                                          l.hd, l.lanes);
  check_launch();
  return out;
}

std::pair<at::Tensor, at::Tensor> xsa_backward(const at::Tensor& y, const at::Tensor& v, const at::Tensor& g,
                                               bool want_gv) {
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor gy = at::empty_like(y), gv = want_gv ? at::empty_like(v) : at::Tensor();
  if (y.numel() == 0) return {gy, want_gv ? gv.zero_() : gv};
  const XsaLaunch l = xsa_launch(y, v, {y.data_ptr(), v.data_ptr(), g.data_ptr(), gy.data_ptr(),
                                        want_gv ? gv.data_ptr() : nullptr});
  auto kernel = l.vec ? xsa_bwd_kernel<true> : xsa_bwd_kernel<false>;
  kernel<<<l.blocks, kXsaThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      bp(y), bp(v), bp(g), bp_out(gy), want_gv ? bp_out(gv) : nullptr, l.units, l.group, l.hd, l.lanes);
  check_launch();
  return {gy, gv};
}

void adam_update(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                 const at::Tensor& factors, double lr, double beta1, double beta2, double eps, double weight_decay,
                 bool decoupled, const at::Tensor& mirror, const FlatParts* parts) {
  const c10::cuda::CUDAGuard guard(p.device());
  const int64_t n = p.numel();
  if (n == 0 || (parts && parts->host.empty())) return;
  AdamArgs a;
  a.decay = decoupled && weight_decay != 0.0 ? float(1.0 - lr * weight_decay) : 1.0f;
  a.l2 = decoupled ? 0.0f : float(weight_decay);
  a.w1 = float(1.0 - beta1);
  a.b2 = float(beta2);
  a.c2 = float(1.0 - beta2);
  a.eps = float(eps);
  bool vec = vec_ok(8, {p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(),
                        mirror.defined() ? mirror.data_ptr() : nullptr});
  // Parts: a row of blocks each, sized for four times the average part (the
  // longer ones loop), so that short parts do not launch idle blocks.
  int64_t work = n;
  if (parts) {
    TORCH_CHECK(parts->host.size() < 65536, "fused adam: too many parts");
    int64_t total = 0, longest = 0;
    for (const auto& [start, length] : parts->host) {
      total += length;
      longest = std::max(longest, length);
      vec = vec && start % 4 == 0;  // every part's float4s stay aligned
    }
    work = std::min(longest, 4 * (total / int64_t(parts->host.size()) + 1));
  }
  const dim3 grid(unsigned(grid_for(vec ? work / 4 + work % 4 : work, 256)), parts ? unsigned(parts->host.size()) : 1u);
  const int64_t* pp_parts = parts ? parts->device.data_ptr<int64_t>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  float* pp = p.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  const float* fp = factors.data_ptr<float>();
  // The kernel for the gradient's and the mirror's types (a null bf16 mirror when there is none).
  auto launch = [&](auto* out) {
    if (g.scalar_type() == at::kBFloat16)
      launch_adam(vec, grid, stream, pp, bp(g), mp, vp, out, fp, n, pp_parts, a);
    else
      launch_adam(vec, grid, stream, pp, g.data_ptr<float>(), mp, vp, out, fp, n, pp_parts, a);
  };
  at::Tensor mo = mirror;
  if (!mo.defined())
    launch(static_cast<bf16*>(nullptr));
  else if (mo.scalar_type() == at::kBFloat16)
    launch(bp_out(mo));
  else
    launch(mo.data_ptr<float>());
  check_launch();
}

}  // namespace pgolf::fused::cuda
