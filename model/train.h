// Training a parameter-golf GPT (the reference's recipe, root train_gpt.py):
// Muon (Newton-Schulz orthogonalised momentum) for the block matrices, Adam
// for the embedding and the small control tensors, a linear warmdown over the
// last steps, a wall-clock cap. Data: the training shards read in order, each
// step a contiguous span of batch_tokens + 1 tokens cut into rows of seq_len
// (as the reference's loader does).
//
// Data parallel (world > 1, model/distributed.h): every rank reads the same
// global span and trains on its own contiguous block of rows (even_split of
// the rows; each rank's inputs and targets overlap its neighbour's by one
// token, exactly as the one-rank rows do). The reference's
// DistributedTokenLoader instead gives each rank a span of its own with one
// extra token, so its token stream shifts with the world size; here a step's
// batch is the one-rank batch whatever the world. Gradients are weighted by
// each rank's share of the tokens and summed in flat float32 buckets of
// ~allreduce_bucket_mb, in about the order backward finishes them, each
// bucket's all-reduce started by gradient hooks while backward still runs
// (model/grad_reducer.h; overlap_allreduce = false starts them all after
// backward: the same sums); every rank then runs the same optimizer step, so
// the weights stay identical (rank 0's initial weights are broadcast first;
// identity is checked at the end). With max_seconds, rank 0's clock decides
// the warmdown and the stop.
//
// Gradient accumulation (grad_accum > 1): each rank's rows run as that many
// micro-batches (even_split of the rows), each backward adding its share of
// the rank's mean loss into the gradients; the all-reduce is armed for the
// last one only. The gradient is the one-pass gradient of the same rows (up
// to the order of the sums), in a fraction of the activation memory.
//
// EMA (ema_decay > 0, the frontier's): a float32 average of the weights,
// updated after every optimizer step as ema = decay ema + (1 - decay) w from
// the initial weights; training ends by replacing the weights with it.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "model/gpt.h"

namespace pgolf {

class TokenStream;

struct TrainOptions {
  int64_t iterations = 1000;
  int64_t batch_tokens = 65536;     // per step (rows = batch_tokens / seq_len)
  int64_t warmdown_iters = 150;     // LR goes linearly to 0 over the last this-many steps
  double max_seconds = 0;           // wall-clock cap (0 = none); the warmdown then follows elapsed time
  double matrix_lr = 0.04, scalar_lr = 0.04, tied_embed_lr = 0.05, embed_lr = 0.6, head_lr = 0.008;
  double muon_momentum = 0.95, muon_momentum_warmup_start = 0.85;
  int64_t muon_momentum_warmup_steps = 500;
  int muon_backend_steps = 5;
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip_norm = 0;        // 0 = off
  // The frontier's schedule and decays (2026-04-10_VarLenAttn): warmdown_frac
  // > 0 replaces warmdown_iters: the LR multiplier is max((1 - f) / frac,
  // min_lr) once the run's fraction f (of iterations, or of max_seconds)
  // reaches 1 - frac. Decoupled weight decay (p *= 1 - lr wd before the
  // update): muon_wd on the Muon matrices, embed_wd on the token embedding,
  // adam_wd on the other Adam tensors except an untied head.
  double warmdown_frac = 0, min_lr = 0;
  double muon_wd = 0, embed_wd = 0, adam_wd = 0;
  bool muon_row_normalize = false;  // each row of Muon's update scaled to unit norm before Newton-Schulz
  bool muon_bf16_momentum = false;  // the frontier's bf16 momentum buffers (its sums round in bf16)
  // Document-packed batches (the frontier's DocumentPackingLoader): each
  // micro-batch is one row of the rank's tokens / grad_accum, attention only
  // within documents (packed_segments), RoPE positions the offsets in the row.
  bool pack_documents = false;
  uint16_t bos_id = 1;
  double enable_looping_at = 0;     // depth recurrence from this fraction of the run on (of iterations, or of max_seconds)
  Precision precision = Precision::F32;
  // Attention's backward by kernels that repeat their bits (ForwardOptions::
  // deterministic_attention): runs repeat on the same GPU, a few % slower.
  bool deterministic = false;
  uint64_t seed = 1337;
  int rank = 0, world = 1;          // data parallel: the ranks joined with init_ranks
  bool overlap_allreduce = true;    // data parallel: gradient sums start during backward
  double allreduce_bucket_mb = 25;  // data parallel: gradient bucket size, MB of 2^20 bytes (DDP's bucket_cap_mb)
  // Data parallel with a shape per rank (PR #1212's mixed lengths): (rows,
  // sequence length) of each rank's part of the step, in rank order; the
  // step's batch is their sum, each rank's gradient weighted by its tokens.
  // Lengths at most the config's train_seq_len. Empty: batch_tokens split
  // evenly into rows of train_seq_len.
  std::vector<std::pair<int64_t, int64_t>> rank_shapes;
  int64_t grad_accum = 1;           // micro-batches per step
  double ema_decay = 0;             // > 0: end with the EMA of the weights
  // When it reads true (a signal handler sets it): stop before the next step;
  // with world > 1 the ranks agree (any rank's flag stops them all).
  const std::atomic<bool>* stop = nullptr;
};

struct TrainStep {
  int64_t step = 0;
  double loss = 0, lr_mult = 0, seconds = 0, tokens_per_second = 0;
  // Data parallel: the gradient buckets, and how many of this step's sums
  // started during backward (0 without overlap).
  int64_t allreduce_buckets = 0, allreduce_buckets_in_backward = 0;
};

// This rank's part of every step: my_rows rows of L tokens, from token
// my_first of the step's batch_tokens (+ 1) token span.
struct TrainShape {
  int64_t L, batch_tokens, my_rows, my_first;
};
// The shape, after checking every option against the config (pgolf::Error
// naming the option): what train_gpt runs, for callers to check first.
TrainShape plan_train_shape(const TrainOptions& opt, const ModelConfig& cfg);

// Trains w in place (its tensors become float32 parameters on their device).
// on_step runs after every step; returning false stops training early (with
// world > 1 every rank must return the same).
void train_gpt(GptWeights& w, const TokenStream& train, const TrainOptions& opt,
               const std::function<bool(const TrainStep&)>& on_step);

// One step's gradient: the mean NLL over the rows of x, y [rows, L] (on the
// weights' device), backward in `passes` micro-batches of consecutive rows
// (even_split), each loss weighted by its share of the rows, so that the
// .grad() of w's leaves gains the gradient of the mean. before_last_backward
// (optional) gets the mean loss (float64 [] on the device) before the last
// backward (the data-parallel reducer is armed there). Returns the mean loss.
at::Tensor accumulate_gradients(const GptWeights& w, const at::Tensor& x, const at::Tensor& y, const ForwardOptions& fo,
                                int64_t passes, const std::function<void(const at::Tensor&)>& before_last_backward);

// Segment ids [n] for document-packed training: a new segment at position 0,
// at every BOS, and every max_len tokens into a longer document (as the
// reference's _build_cu_seqlens splits them).
std::vector<int64_t> packed_segments(const uint16_t* tokens, int64_t n, int64_t max_len, uint16_t bos);

// Muon's direction for gradient g (float32 [rows, cols]) with momentum
// buffer buf (updated in place: buf = momentum buf + g): the Nesterov update g
// + momentum buf, each row scaled to unit norm first if row_normalize (norms
// in float32, clamped at 1e-7), orthogonalised by `steps` Newton-Schulz
// iterations, times sqrt(max(1, rows / cols)); float32. The sums and the
// division run in buf's type (float32, or bf16 as the frontier's Muon).
at::Tensor muon_direction(const at::Tensor& g, at::Tensor& buf, double momentum, int steps, bool row_normalize);

// Newton-Schulz iteration for the orthogonal factor of G (the reference's
// zeropower_via_newtonschulz5), in bf16, as Muon uses it. Exposed for tests.
at::Tensor newton_schulz_orthogonalize(const at::Tensor& g, int steps);

}  // namespace pgolf
