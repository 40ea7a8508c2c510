#include "quant/gptq.h"

#include <algorithm>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf::quant {

namespace {

at::ScalarType math_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Scales as the divisor: rows with a zero scale divide by 1 (their q is
// zeroed afterwards), so no NaN ever enters the error feedback.
at::Tensor safe_divisor(const at::Tensor& sf) { return sf.masked_fill(sf == 0, 1.0); }

void check_bits(int bits) {
  if (bits < 2 || bits > 8) throw Error("quantize: bits must be in 2..8, got " + std::to_string(bits));
}

}  // namespace

int clip_range(int bits) {
  check_bits(bits);
  return (1 << (bits - 1)) - 1;
}

at::Tensor sdclip_scales(const at::Tensor& W, int bits, double clip_sigmas) {
  const int r = clip_range(bits);
  at::Tensor row_std = W.to(math_type(W)).std(at::IntArrayRef{-1}, /*unbiased=*/true, /*keepdim=*/false);
  // Same operation order as the reference: (clip * std) / r, then the clamp, then fp16.
  return (row_std * clip_sigmas / double(r)).clamp_min(1e-10).to(at::kHalf);
}

QuantizedMatrix quantize_rtn(const at::Tensor& W, int bits, double clip_sigmas) {
  const int r = clip_range(bits);
  at::Tensor s = sdclip_scales(W, bits, clip_sigmas);
  at::Tensor sf = s.to(math_type(W));
  at::Tensor q = at::round(W.to(math_type(W)) / safe_divisor(sf).unsqueeze(-1)).clamp_(-r, r);
  q.masked_fill_((sf == 0).unsqueeze(-1), 0.0);
  return {q.to(at::kChar), s};
}

QuantizedMatrix quantize_gptq_batch(const at::Tensor& W_in, const at::Tensor& H_in, int bits, double clip_sigmas,
                                    const std::vector<std::string>& what, int block, double damp) {
  const int r = clip_range(bits);
  if (W_in.dim() != 3 || H_in.dim() != 3 || H_in.size(0) != W_in.size(0) || H_in.size(1) != W_in.size(2) ||
      H_in.size(2) != W_in.size(2) || int64_t(what.size()) != W_in.size(0))
    throw Error("gptq: W must be [n, rows, cols] and H [n, cols, cols] with n names");
  if (block < 1) throw Error("gptq: block must be >= 1");
  const at::ScalarType math = math_type(W_in);
  const at::Tensor W = W_in.to(math);  // [n, R, C]
  const int64_t n = W.size(0), R = W.size(1), C = W.size(2);

  // Dead columns and damping, on a copy of H.
  at::Tensor H = H_in.to(W.device(), math, /*non_blocking=*/false, /*copy=*/true);  // [n, C, C]
  at::Tensor diag = H.diagonal(0, -2, -1);                                            // [n, C] view of H
  const at::Tensor dead = diag == 0;
  diag.masked_fill_(dead, 1.0);
  diag.add_(diag.mean(-1, /*keepdim=*/true) * damp);

  // Most-used columns first (stable, so ties keep their order on every device).
  const at::Tensor perm = std::get<1>(at::sort(diag, /*stable=*/true, /*dim=*/-1, /*descending=*/true));  // [n, C]
  const at::Tensor invperm =
      at::empty_like(perm).scatter_(1, perm, at::arange(C, perm.options()).unsqueeze(0).expand({n, C}).contiguous());
  at::Tensor Wp = W.gather(2, perm.unsqueeze(1).expand({n, R, C}));
  Wp.masked_fill_(dead.gather(1, perm).unsqueeze(1), 0.0);
  const at::Tensor Hp =
      H.gather(1, perm.unsqueeze(2).expand({n, C, C})).gather(2, perm.unsqueeze(1).expand({n, C, C}));

  // U: upper Cholesky factor of H^-1 (H^-1 = U^T U). One host sync for the checks.
  auto [L, info] = at::linalg_cholesky_ex(Hp, /*upper=*/false, /*check_errors=*/false);
  at::Tensor Hinv = at::empty_like(Hp);
  for (int64_t i = 0; i < n; ++i) Hinv.select(0, i).copy_(at::cholesky_inverse(L.select(0, i)));
  auto [U, info2] = at::linalg_cholesky_ex(Hinv, /*upper=*/true, /*check_errors=*/false);
  // LAPACK lets NaNs through without an error code: check the factor too.
  const at::Tensor bad = (info.ne(0) | info2.ne(0) | U.isfinite().flatten(1).all(1).logical_not()).cpu();
  for (int64_t i = 0; i < n; ++i)
    if (bad[i].item<bool>()) fail(what[size_t(i)], "Hessian is not positive definite after damping (NaN or Inf in it?)");

  const at::Tensor s = sdclip_scales(W, bits, clip_sigmas);  // fp16 [n, R]
  const at::Tensor sf = s.to(math), sdiv = safe_divisor(sf);

  // Transposed working copy: column j of W is the contiguous row WT[:, j].
  at::Tensor WT = Wp.transpose(1, 2).contiguous();  // [n, C, R]
  at::Tensor QT = at::empty_like(WT);               // q as floats, permuted columns
  at::Tensor E = at::empty({n, std::min<int64_t>(block, C), R}, WT.options());
  for (int64_t i1 = 0; i1 < C; i1 += block) {
    const int64_t bs = std::min<int64_t>(block, C - i1), rest = C - i1 - bs;
    at::Tensor WB = WT.narrow(1, i1, bs);                                  // [n, bs, R], updated in place
    const at::Tensor UB = U.narrow(1, i1, bs).narrow(2, i1, bs);           // [n, bs, bs]
    const at::Tensor d = UB.diagonal(0, -2, -1).unsqueeze(-1).contiguous();  // [n, bs, 1]
    at::Tensor EB = E.narrow(1, 0, bs);                                    // [n, bs, R]
    for (int64_t j = 0; j < bs; ++j) {
      const at::Tensor w = WB.select(1, j);  // [n, R]
      at::Tensor q = QT.select(1, i1 + j), e = EB.select(1, j);
      at::div_out(q, w, sdiv);
      q.round_().clamp_(-r, r);
      at::addcmul_out(e, w, q, sf, -1);  // w - q * s
      e.div_(d.select(1, j));
      if (j + 1 < bs)  // the block's later columns: W[:, j'] -= e * U[j, j'] for j' > j
        WB.narrow(1, j + 1, bs - j - 1)
            .baddbmm_(UB.select(1, j).narrow(1, j + 1, bs - j - 1).unsqueeze(2), e.unsqueeze(1), 1, -1);
    }
    if (rest > 0)  // every column after the block, in one matmul
      WT.narrow(1, i1 + bs, rest).baddbmm_(U.narrow(1, i1, bs).narrow(2, i1 + bs, rest).transpose(1, 2), EB, 1, -1);
  }
  at::Tensor Q = QT.transpose(1, 2).gather(2, invperm.unsqueeze(1).expand({n, R, C}));  // [n, R, C]
  Q.masked_fill_((sf == 0).unsqueeze(-1), 0.0);
  return {Q.to(at::kChar), s};
}

QuantizedMatrix quantize_gptq(const at::Tensor& W, const at::Tensor& H, int bits, double clip_sigmas, int block,
                              double damp) {
  if (W.dim() != 2 || H.dim() != 2) throw Error("gptq: W must be [rows, cols] and H [cols, cols]");
  QuantizedMatrix m = quantize_gptq_batch(W.unsqueeze(0), H.unsqueeze(0), bits, clip_sigmas, {"gptq"}, block, damp);
  return {m.q.squeeze(0), m.scale.squeeze(0)};
}

at::Tensor dequantize(const QuantizedMatrix& m, at::ScalarType dtype) {
  // q * s is exact in float32 (7-bit integers times 11-bit fp16 mantissas).
  return (m.q.to(at::kFloat) * m.scale.to(at::kFloat).unsqueeze(-1)).to(dtype);
}

double hessian_weighted_error(const at::Tensor& W, const at::Tensor& Wq, const at::Tensor& H) {
  const at::Tensor D = W.to(at::kDouble) - Wq.to(W.device(), at::kDouble);
  return (D.mm(H.to(W.device(), at::kDouble)) * D).sum().item<double>();
}

}  // namespace pgolf::quant
