// Per-row symmetric quantization of weight matrices: round-to-nearest and
// GPTQ with the reference's SDClip scales (2026-04-10_VarLenAttn,
// gptq_quantize_weight; SPEC §11).
//
// A matrix W [rows, cols] becomes q [rows, cols] (int8 holding values in
// [-r, r], r = 2^(bits-1) - 1) and one fp16 scale per row; its value is
// q * scale[row]. Everything runs on the device of W, in float32 (float64
// when W is float64: tests), without host synchronisation inside the loops.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace pgolf::quant {

struct QuantizedMatrix {
  at::Tensor q;      // int8 [rows, cols] (or [n, rows, cols] from the batched call)
  at::Tensor scale;  // fp16 [rows]        (or [n, rows])
};

// r = 2^(bits-1) - 1; bits must be in 2..8.
int clip_range(int bits);

// SDClip: s = clip_sigmas * std(row) / r, std with Bessel's correction (as
// torch.std), clamped below at 1e-10 and then rounded to fp16. Rows whose
// fp16 scale is 0 (all-zero rows: 1e-10 underflows fp16) quantize to q = 0;
// the reference divides by zero there and its dequantized row is 0 too.
// W [..., rows, cols] -> fp16 [..., rows].
at::Tensor sdclip_scales(const at::Tensor& W, int bits, double clip_sigmas);

// q = clamp(round(W / s), -r, r), rounding half to even (torch.round).
QuantizedMatrix quantize_rtn(const at::Tensor& W, int bits, double clip_sigmas);

// GPTQ as the reference runs it: dead columns (H_ii = 0) get H_ii = 1 and
// W[:, i] = 0; H += damp * mean(diag H) * I; columns ordered by descending
// diag(H) (stable); U = upper Cholesky factor of H^-1; quantize column by
// column with error feedback inside blocks of `block` columns and one matmul
// per block for the columns after it; q back in the original column order.
// Scales are sdclip_scales(W) (before zeroing dead columns). W [rows, cols],
// H [cols, cols] (any float type; symmetric positive semi-definite).
QuantizedMatrix quantize_gptq(const at::Tensor& W, const at::Tensor& H, int bits, double clip_sigmas, int block = 128,
                              double damp = 0.01);

// The same for n matrices of one shape at once (W [n, rows, cols], H [n,
// cols, cols] -> q [n, rows, cols], scale [n, rows]): one kernel per step
// serves every matrix, so the column loop's launch cost is paid once per
// group (the GPU case). `what[i]` names matrix i in errors (a Hessian that is
// not positive definite after damping, e.g. one with NaNs).
QuantizedMatrix quantize_gptq_batch(const at::Tensor& W, const at::Tensor& H, int bits, double clip_sigmas,
                                    const std::vector<std::string>& what, int block = 128, double damp = 0.01);

// q * scale[row] in `dtype`.
at::Tensor dequantize(const QuantizedMatrix& m, at::ScalarType dtype);

// trace((W - Wq) H (W - Wq)^T): the calibration inputs' summed squared output
// error (divided like H). W, Wq [rows, cols], H [cols, cols]; computed in
// float64.
double hessian_weighted_error(const at::Tensor& W, const at::Tensor& Wq, const at::Tensor& H);

}  // namespace pgolf::quant
