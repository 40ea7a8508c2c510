// Tests that need a CUDA device (label "gpu"; run on the GPU machine by
// scripts/gpu_build.sh, not by CI). The same model on CUDA and on the CPU.
#include <gtest/gtest.h>

#include <ATen/TensorIndexing.h>

#include <c10/core/GradMode.h>

#include "model/fused.h"
#include "model/gpt.h"
#include "model/pch.h"
#include "model/runtime.h"
#include "tests/gpt_reference.h"

namespace pgolf::test {
namespace {

GptWeights on_cuda(GptWeights w, at::ScalarType t) {
  for (auto& [n, x] : w.tensors) x = x.to(at::kCUDA).to(t);
  return w;
}

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!runtime_info().cuda) GTEST_FAIL() << "no CUDA device: run the gpu label on the GPU machine";
  }
};

TEST_F(Cuda, Float32ForwardMatchesCpuFloat64) {
  for (ModelConfig c : {tiny_config(), tiny_frontier_config()}) {
    GptWeights w = random_weights(c, 3);
    at::Tensor in = at::randint(c.vocab_size, {3, 11}, at::kLong), tg = at::randint(c.vocab_size, {3, 11}, at::kLong);
    ForwardOptions f64;
    f64.precision = Precision::F64;
    at::Tensor ref = forward_nll(w, in, tg, f64);
    at::Tensor got = forward_nll(on_cuda(w, at::kFloat), in.cuda(), tg.cuda()).cpu().to(at::kDouble);
    EXPECT_LT((got - ref).abs().max().item<double>(), 1e-3);  // TF32 may be on for CUDA matmuls
  }
}

TEST_F(Cuda, Bf16FusedAttentionPathStaysCloseToFloat64) {
  ModelConfig c = tiny_config();
  c.vocab_size = 512;
  c.model_dim = 128;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  GptWeights w = random_weights(c, 4);
  at::Tensor in = at::randint(c.vocab_size, {4, 64}, at::kLong), tg = at::randint(c.vocab_size, {4, 64}, at::kLong);
  ForwardOptions f64, bf;
  f64.precision = Precision::F64;
  bf.precision = Precision::BF16;
  at::Tensor ref = forward_nll(w, in, tg, f64);
  at::Tensor got = forward_nll(on_cuda(w, at::kFloat), in.cuda(), tg.cuda(), bf).cpu().to(at::kDouble);
  const double rel = ((got - ref).abs().mean() / ref.abs().mean()).item<double>();
  EXPECT_LT(rel, 2e-2) << "bf16 relative error";
  // Batch composition does not change a row's result beyond bf16 noise.
  at::Tensor one = forward_nll(on_cuda(w, at::kFloat), in.narrow(0, 2, 1).cuda(), tg.narrow(0, 2, 1).cuda(), bf).cpu();
  EXPECT_LT((one[0].to(at::kDouble) - got[2]).abs().max().item<double>(), 1e-2);
}

TEST_F(Cuda, VarlenFlashWithDocumentsAndWindowsMatchesFloat64) {
  ModelConfig c = tiny_config();
  c.vocab_size = 512;
  c.model_dim = 128;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.num_layers = 3;
  c.attn_windows = {0, 5, 0};
  GptWeights w = random_weights(c, 6);
  const int B = 3, T = 40;
  at::Tensor in = at::randint(4, c.vocab_size, {B, T}, at::kLong), tg = at::randint(c.vocab_size, {B, T}, at::kLong);
  in.index_put_({at::indexing::Slice(), 17}, 1);  // a BOS in every row
  ForwardOptions f64, bf;
  f64.precision = Precision::F64;
  bf.precision = Precision::BF16;
  f64.segment_ids = (in == 1).to(at::kLong).cumsum(1);
  bf.segment_ids = f64.segment_ids.cuda();
  at::Tensor ref = forward_nll(w, in, tg, f64);
  at::Tensor got = forward_nll(on_cuda(w, at::kFloat), in.cuda(), tg.cuda(), bf).cpu().to(at::kDouble);
  const double rel = ((got - ref).abs().mean() / ref.abs().mean()).item<double>();
  EXPECT_LT(rel, 2e-2) << "bf16 relative error";
}

// The fused kernels against their ATen reference on the same GPU, whole
// forwards of both families (plain, windows, documents): the two may differ
// only where the RMS norm's sum order flips a bf16 rounding.
TEST_F(Cuda, FusedKernelsMatchTheirReferenceInWholeForwards) {
  ModelConfig base = tiny_config(), front = tiny_frontier_config();
  base.vocab_size = front.vocab_size = 512;
  ModelConfig windowed = base;
  windowed.attn_windows.assign(size_t(windowed.num_layers), 0);
  windowed.attn_windows[1] = 7;
  ModelConfig wide = base;  // head dim 64: the flash kernels run
  wide.model_dim = 128;
  wide.num_heads = 2;
  wide.num_kv_heads = 1;
  ModelConfig wide_windowed = wide;
  wide_windowed.attn_windows.assign(size_t(wide.num_layers), 0);
  wide_windowed.attn_windows[0] = 9;
  for (const ModelConfig& c : {base, front, windowed, wide, wide_windowed}) {
    for (bool docs : {false, true}) {
      GptWeights w = on_cuda(random_weights(c, 8), at::kFloat);
      const int B = 4, T = 96;
      at::Tensor in = at::randint(4, c.vocab_size, {B, T}, at::kLong), tg = at::randint(c.vocab_size, {B, T}, at::kLong);
      in.index_put_({at::indexing::Slice(), 40}, 1);
      ForwardOptions bf;
      bf.precision = Precision::BF16;
      if (docs) bf.segment_ids = (in == 1).to(at::kLong).cumsum(1).cuda();
      bf.score_mask = (at::arange(T) >= 20).unsqueeze(0).expand({B, T}).contiguous().cuda();
      c10::NoGradGuard no_grad;
      at::Tensor got = forward_nll(w, in.cuda(), tg.cuda(), bf).cpu().to(at::kDouble);
      at::Tensor ref;
      {
        fused::ReferenceOnly only;
        ref = forward_nll(w, in.cuda(), tg.cuda(), bf).cpu().to(at::kDouble);
      }
      EXPECT_LT((got - ref).abs().mean().item<double>(), 2e-3) << "docs " << docs;
      EXPECT_LT((got - ref).abs().max().item<double>(), 0.1) << "docs " << docs;
      EXPECT_EQ(got.eq(0).sum().item<int64_t>(), ref.eq(0).sum().item<int64_t>());
    }
  }
}

}  // namespace
}  // namespace pgolf::test
