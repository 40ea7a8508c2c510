// Calibration tokens for GPTQ's Hessians: rows read from training shards, or
// sequences sampled from the model itself.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "data/token_stream.h"
#include "model/gpt.h"

namespace pgolf::quant {

// The reference's ShuffledSequenceLoader (2026-04-10_VarLenAttn) for one
// process: each shard is cut into non-overlapping windows of seq_len + 1
// tokens starting at a random phase in [0, seq_len - 1], visited in a random
// order; each row draws a shard with probability proportional to the windows
// it has left and takes its next window (all shards refill once all are
// used). The row is the window's first seq_len tokens (the reference's
// inputs). Same scheme, but pgolf's random stream (mt19937_64 with its own
// integer draws, the same on every platform), not numpy's.
struct ShardCalibration {
  int64_t batches = 64;
  int64_t rows = 48;       // the reference: 786,432 tokens / 8 GPUs / 2,048
  int64_t seq_len = 2048;
  uint64_t seed = 0;       // the reference seeds with its rank (0)
};
// -> `batches` int64 tensors [rows, seq_len] on the CPU.
std::vector<at::Tensor> shard_calibration_batches(const TokenStream& s, const ShardCalibration& o);

// Self-generated calibration, as the March 2026 records' generate_autoregressive_calib:
// each sequence starts from a uniformly random token and is extended one
// token at a time by sampling softmax(logits / temperature) (logits after the
// softcap), `batch` sequences at a time, from one seeded generator (sampling
// runs on the CPU, so the draws do not depend on the device). No KV cache:
// every step re-runs the prefix, as the reference did.
struct SelfCalibration {
  int64_t sequences = 64;
  int64_t seq_len = 2048;
  int64_t batch = 8;
  double temperature = 0.8;
  uint64_t seed = 42;
  Precision precision = Precision::F32;
  std::function<void(int64_t done, int64_t total)> progress;  // tokens generated so far
};
// -> int64 tensors [<= batch, seq_len] on the CPU, `sequences` rows in all.
std::vector<at::Tensor> self_calibration_batches(const GptWeights& w, const SelfCalibration& o);

}  // namespace pgolf::quant
