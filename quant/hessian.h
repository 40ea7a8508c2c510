// GPTQ's Hessians: H = sum of x^T x over every position of every calibration
// batch, for the input x of each weight matrix, divided by the number of
// batches -- as the reference's collect_hessians (2026-04-10_VarLenAttn).
//
// Inputs come from ForwardOptions::linear_input_tap, so every matrix the
// forward multiplies is covered: c_q / c_k / c_v (one shared input,
// computed once), attn.proj, mlp.fc, mlp.proj, embed_proj / head_proj, and
// the LM head (tok_emb.weight when tied: the final normed hidden state). A
// layer the forward runs several times (depth recurrence) accumulates every
// pass, as the reference's hooks do.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/gpt.h"

namespace pgolf::quant {

struct HessianOptions {
  Precision precision = Precision::F32;  // activations as the forward computes them (BF16 = the reference on CUDA)
  bool looping = true;
  // Divide by this instead of the number of batches (self-generated
  // calibration counts each sequence as a batch, as the reference did). 0 =
  // the number of batches.
  int64_t divide_by = 0;
  // x^T x with TF32 tensor cores on CUDA, as the reference (which sets
  // allow_tf32 globally); off = full float32 products.
  bool tf32 = true;
  std::function<void(int64_t done, int64_t total)> progress;  // after each batch
};

// batches: int64 token rows [B, T] (moved to the weights' device). Result:
// weight name -> H [in, in] on that device, float32 (float64 when the
// activations are float64).
std::map<std::string, at::Tensor> collect_hessians(const GptWeights& w, const std::vector<at::Tensor>& batches,
                                                   const HessianOptions& o = {});

}  // namespace pgolf::quant
