// `pgolf train`: a model trained from scratch (or continued from a
// checkpoint) on training shards, validated with the evaluator, saved as an
// HDF5 checkpoint. Composes model/ (training) and eval/ (validation bpb).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>

#include "cli/command.h"
#include "data/byte_counter.h"
#include "data/error.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "eval/evaluator.h"
#include "model/distributed.h"
#include "model/model_io.h"
#include "model/pch.h"
#include "model/runtime.h"
#include "model/train.h"

namespace pgolf {

namespace {

// SIGINT / SIGTERM: finish the step, validate and save, then exit; a second
// signal ends the process at once (the handler restores the default).
std::atomic<bool> stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs a lock-free flag");

extern "C" void request_stop(int sig) {
  stop_requested.store(true);
  std::signal(sig, SIG_DFL);
}

// --rank-shapes "5*36x2048,3*10x6144": per rank ROWSxLENGTH, COUNT* repeats.
std::vector<std::pair<int64_t, int64_t>> parse_rank_shapes(const std::string& spec) {
  std::vector<std::pair<int64_t, int64_t>> out;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t end = std::min(spec.find(',', pos), spec.size());
    const std::string item = spec.substr(pos, end - pos);
    long long count = 1, rows = 0, len = 0;
    char extra = 0;
    const bool ok = item.find('*') != std::string::npos
                        ? std::sscanf(item.c_str(), "%lld*%lldx%lld%c", &count, &rows, &len, &extra) == 3
                        : std::sscanf(item.c_str(), "%lldx%lld%c", &rows, &len, &extra) == 2;
    if (!ok || count < 1 || count > 65536 || rows < 1 || len < 1)
      throw Error("--rank-shapes: '" + item + "' is not ROWSxLENGTH or COUNT*ROWSxLENGTH with positive numbers");
    for (long long i = 0; i < count; ++i) out.emplace_back(rows, len);
    pos = end + 1;
  }
  return out;
}

struct TrainArgs {
  ModelSource src;  // path: optional checkpoint to continue from
  std::string preset = "baseline", out, tokenizer, device = "auto";
  std::vector<std::string> train, val;
  TrainOptions opt;
  int64_t val_every = 0, log_every = 50, val_tokens = 0;
  std::string rank_shapes;
  std::string profile;  // --profile FILE.json
  bool json = false, no_overlap_allreduce = false;
};

// --preset frontier: the training hyperparameters of 2026-04-10_VarLenAttn's
// logged run (logs/train0.txt), for every option not given on the command line.
void apply_frontier_recipe(TrainOptions& o, const CLI::App& cmd) {
  auto set = [&](const char* flag, auto& field, auto value) {
    if (cmd.count(flag) == 0) field = value;
  };
  set("--matrix-lr", o.matrix_lr, 0.022);
  set("--scalar-lr", o.scalar_lr, 0.02);
  set("--tied-embed-lr", o.tied_embed_lr, 0.03);
  set("--embed-lr", o.embed_lr, 0.6);
  set("--head-lr", o.head_lr, 0.008);
  set("--muon-momentum", o.muon_momentum, 0.97);
  set("--muon-momentum-warmup-start", o.muon_momentum_warmup_start, 0.92);
  set("--muon-momentum-warmup-steps", o.muon_momentum_warmup_steps, int64_t(1500));
  set("--muon-row-normalize", o.muon_row_normalize, true);
  set("--muon-bf16-momentum", o.muon_bf16_momentum, true);
  set("--muon-wd", o.muon_wd, 0.095);
  set("--embed-wd", o.embed_wd, 0.095);
  set("--adam-wd", o.adam_wd, 0.02);
  set("--grad-clip-norm", o.grad_clip_norm, 0.3);
  set("--ema-decay", o.ema_decay, 0.997);
  set("--warmdown-frac", o.warmdown_frac, 0.667);
  set("--enable-looping-at", o.enable_looping_at, 0.35);
  set("--pack-documents", o.pack_documents, true);
}

// Validation bpb, sharded over the ranks like `pgolf eval` (every rank calls it).
EvalResult validate(const GptWeights& w, const TokenStream& val, const ByteCounter& bc, Precision p, uint16_t bos) {
  EvalOptions eo;
  eo.seq_len = uint32_t(w.config.train_seq_len);
  eo.precision = p;
  eo.bos_id = bos;
  eo.batch_tokens = 8 * uint64_t(eo.seq_len);
  eo.rank = ranks().rank;
  eo.world = ranks().world;
  EvalResult r = evaluate(w, val, bc, eo);
  r.all_reduce_ranks(false);
  return r;
}

void run_train(TrainArgs& a, const CLI::App& cmd) {
  // Join the job before anything touches a GPU or a file (see eval).
  const RuntimeInfo rt = runtime_info();
  const bool cuda = a.device == "cuda" || (a.device == "auto" && rt.cuda);
  if (a.device == "cuda" && !rt.cuda) throw Error("--device cuda: no CUDA device is available");
  const Ranks& rk = init_ranks(cuda);
  a.opt.rank = rk.rank;
  a.opt.world = rk.world;
  a.opt.overlap_allreduce = !a.no_overlap_allreduce;
  ModelConfig base = a.preset == "frontier" ? ModelConfig::frontier() : ModelConfig::baseline();
  if (a.preset != "baseline" && a.preset != "frontier") throw Error("--preset must be baseline or frontier");
  if (a.preset == "frontier") apply_frontier_recipe(a.opt, cmd);
  GptWeights w;
  if (!a.src.path.empty()) {
    w = load_model(a.src);
  } else {
    w = init_gpt_weights(apply_config_overrides(base, a.src), a.opt.seed);
  }
  Tokenizer tok(a.tokenizer);
  if (tok.vocab_size() != w.config.vocab_size)
    fail(a.tokenizer, "tokenizer has " + std::to_string(tok.vocab_size()) + " pieces but the model's vocab_size is " +
                          std::to_string(w.config.vocab_size));
  TokenStream train(a.train), val(a.val);
  train.check_ids_below(uint32_t(w.config.vocab_size), "the model (vocab_size)");
  val.check_ids_below(uint32_t(w.config.vocab_size), "the model (vocab_size)");
  ByteCounter bc(tok, w.config.vocab_size);

  if (!a.rank_shapes.empty()) {
    // The longest length becomes the config's train_seq_len, so evaluation defaults to it.
    a.opt.rank_shapes = parse_rank_shapes(a.rank_shapes);
    int64_t longest = 0, tokens = 0;
    for (const auto& [rows, len] : a.opt.rank_shapes) longest = std::max(longest, len), tokens += rows * len;
    if (cmd.count("--batch-tokens") && a.opt.batch_tokens != tokens)
      throw Error("--batch-tokens " + std::to_string(a.opt.batch_tokens) + " differs from --rank-shapes' " +
                  std::to_string(tokens) + " tokens");
    a.opt.batch_tokens = tokens;
    w.config.train_seq_len = int(longest);
    w.config.validate();
  }
  if (cuda) {
    for (auto& [n, t] : w.tensors) t = t.to(at::kCUDA);
    a.opt.precision = Precision::BF16;
  }
  if (a.opt.batch_tokens == 0) a.opt.batch_tokens = int64_t(w.config.train_seq_len) * (cuda ? 64 : 4);
  plan_train_shape(a.opt, w.config);  // every option checked before anything is printed or run
  int64_t params = 0;
  for (const auto& [n, t] : w.tensors) params += t.numel();
  const bool root = rk.root();  // rank 0 logs and writes
  char mode[160] = "";
  if (rk.multi())
    std::snprintf(mode, sizeof mode, " x %d ranks (data parallel; gradient all-reduce %s, buckets of %g MB)", rk.world,
                  a.opt.overlap_allreduce ? "overlapped with backward" : "after backward", a.opt.allreduce_bucket_mb);
  if (root)
    std::fprintf(stderr, "train: %lld parameters, %lld steps of %lld tokens (L=%d), %s%s\n", (long long)params,
                 (long long)a.opt.iterations, (long long)a.opt.batch_tokens, w.config.train_seq_len,
                 cuda ? rt.device_name.c_str() : "cpu", mode);
  const uint16_t bos = uint16_t(tok.bos_id());
  a.opt.stop = &stop_requested;
  a.opt.bos_id = bos;
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  const Precision eval_precision = cuda ? Precision::BF16 : Precision::F32;
  nlohmann::json history = nlohmann::json::array();
  double first_loss = 0, last_loss = 0;
  int64_t steps = 0, buckets = 0, buckets_in_backward = 0;
  double seconds = 0;
  const bool profile = !a.profile.empty() && root;
  if (profile) start_profile();
  train_gpt(w, train, a.opt, [&](const TrainStep& s) {
    if (s.step == 1) first_loss = s.loss;
    last_loss = s.loss;
    steps = s.step;
    seconds = s.seconds;
    buckets = s.allreduce_buckets;
    buckets_in_backward = s.allreduce_buckets_in_backward;
    if (root && (s.step == 1 || s.step % a.log_every == 0 || s.step == a.opt.iterations))
      std::fprintf(stderr, "%lld/%lld train_loss: %.4f lr_mult: %.3f time: %.1fs tok/s: %.0f\n", (long long)s.step,
                   (long long)a.opt.iterations, s.loss, s.lr_mult, s.seconds, s.tokens_per_second);
    if (a.val_every > 0 && s.step % a.val_every == 0 && s.step != a.opt.iterations) {
      EvalResult r = validate(w, val, bc, eval_precision, bos);
      if (root)
        std::fprintf(stderr, "%lld/%lld val_loss: %.4f val_bpb: %.4f\n", (long long)s.step,
                     (long long)a.opt.iterations, r.loss(), r.bpb());
      history.push_back({{"step", s.step}, {"val_loss", r.loss()}, {"val_bpb", r.bpb()}});
    }
    return true;
  });
  if (profile) stop_profile(a.profile);
  const bool interrupted = stop_requested.load();
  if (interrupted && root)
    std::fprintf(stderr, "train: interrupted after step %lld: validating and saving (a second signal stops at once)\n",
                 (long long)steps);
  EvalResult r = validate(w, val, bc, eval_precision, bos);
  if (!root) return;
  std::fprintf(stderr, "%lld/%lld val_loss: %.4f val_bpb: %.4f\n", (long long)steps, (long long)a.opt.iterations,
               r.loss(), r.bpb());
  if (rk.multi())
    std::fprintf(stderr, "gradient all-reduce: %s; buckets per step: %lld, started from backward's hooks: %lld (last step)\n",
                 a.opt.overlap_allreduce ? "overlapped" : "after backward", (long long)buckets,
                 (long long)buckets_in_backward);
  for (auto& [n, t] : w.tensors) t = t.to(at::kCPU);
  save_checkpoint(a.out, w);
  std::fprintf(stderr, "saved %s (%.1f s of training)\n", a.out.c_str(), seconds);
  if (a.json)
    std::printf("%s\n", nlohmann::json({{"steps", steps},
                                        {"seconds", seconds},
                                        {"first_train_loss", first_loss},
                                        {"last_train_loss", last_loss},
                                        {"val_loss", r.loss()},
                                        {"val_bpb", r.bpb()},
                                        {"val_history", history},
                                        {"interrupted", interrupted},
                                        {"grad_accum", a.opt.grad_accum},
                                        {"ema_decay", a.opt.ema_decay},
                                        {"recipe", {{"matrix_lr", a.opt.matrix_lr},
                                                    {"scalar_lr", a.opt.scalar_lr},
                                                    {"tied_embed_lr", a.opt.tied_embed_lr},
                                                    {"muon_momentum", a.opt.muon_momentum},
                                                    {"muon_row_normalize", a.opt.muon_row_normalize},
                                                    {"muon_bf16_momentum", a.opt.muon_bf16_momentum},
                                                    {"muon_wd", a.opt.muon_wd},
                                                    {"embed_wd", a.opt.embed_wd},
                                                    {"adam_wd", a.opt.adam_wd},
                                                    {"grad_clip_norm", a.opt.grad_clip_norm},
                                                    {"warmdown_frac", a.opt.warmdown_frac},
                                                    {"warmdown_iters", a.opt.warmdown_iters},
                                                    {"enable_looping_at", a.opt.enable_looping_at},
                                                    {"pack_documents", a.opt.pack_documents},
                                                    {"deterministic", a.opt.deterministic}}},
                                        {"ranks", rk.world},
                                        {"allreduce", !rk.multi()              ? "none"
                                                      : a.opt.overlap_allreduce ? "overlap"
                                                                                : "after_backward"},
                                        {"allreduce_buckets", buckets},
                                        {"allreduce_buckets_in_backward", buckets_in_backward},
                                        {"out", a.out}})
                            .dump()
                            .c_str());
}

}  // namespace

void register_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model (the reference's Muon + Adam recipe) and save a checkpoint");
  cmd->add_option("--train", a->train, "training shards: files or quoted globs")->required();
  cmd->add_option("--val", a->val, "validation shards for val_bpb")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "the SentencePiece .model of the shards")->required();
  cmd->add_option("--out", a->out, "checkpoint to write (.h5)")->required();
  cmd->add_option("--init-from", a->src.path, "continue from this checkpoint instead of a fresh init");
  cmd->add_option("--preset", a->preset,
                  "baseline or frontier: the model of a fresh run and the training recipe (frontier: 2026-04-10_VarLenAttn's "
                  "learning rates, momentum, decays, EMA, clipping and schedule, each overridable)")
      ->capture_default_str();
  cmd->add_option("--config", a->src.config_path, "model config JSON applied over the preset");
  cmd->add_option("--config-from-log", a->src.log_path, "reference training log: its Hyperparameters block");
  cmd->add_option("--set", a->src.sets, "override one config field: key=value (repeatable)");
  cmd->add_option("--iterations", a->opt.iterations, "training steps")->capture_default_str();
  cmd->add_option("--batch-tokens", a->opt.batch_tokens, "tokens per step (default 64 rows on CUDA, 4 on CPU)");
  cmd->add_option("--warmdown-iters", a->opt.warmdown_iters, "linear LR decay over the last N steps")->capture_default_str();
  cmd->add_option("--max-seconds", a->opt.max_seconds, "wall-clock cap (0 = none)")->capture_default_str();
  cmd->add_option("--matrix-lr", a->opt.matrix_lr, "Muon learning rate")->capture_default_str();
  cmd->add_option("--scalar-lr", a->opt.scalar_lr, "Adam learning rate of control tensors")->capture_default_str();
  cmd->add_option("--tied-embed-lr", a->opt.tied_embed_lr, "Adam learning rate of the tied embedding")->capture_default_str();
  cmd->add_option("--embed-lr", a->opt.embed_lr, "Adam learning rate of an untied embedding")->capture_default_str();
  cmd->add_option("--head-lr", a->opt.head_lr, "Adam learning rate of an untied head")->capture_default_str();
  cmd->add_option("--muon-momentum", a->opt.muon_momentum, "Muon momentum")->capture_default_str();
  cmd->add_option("--muon-momentum-warmup-start", a->opt.muon_momentum_warmup_start,
                  "Muon momentum at step 1, rising linearly to --muon-momentum")
      ->capture_default_str();
  cmd->add_option("--muon-momentum-warmup-steps", a->opt.muon_momentum_warmup_steps, "steps of that rise")
      ->capture_default_str();
  cmd->add_option("--muon-row-normalize", a->opt.muon_row_normalize,
                  "true: scale each row of Muon's update to unit norm before Newton-Schulz")
      ->capture_default_str();
  cmd->add_option("--muon-bf16-momentum", a->opt.muon_bf16_momentum,
                  "true: Muon's momentum buffers and sums in bf16 (the frontier's), else float32")
      ->capture_default_str();
  cmd->add_option("--muon-wd", a->opt.muon_wd, "decoupled weight decay of the Muon matrices")->capture_default_str();
  cmd->add_option("--embed-wd", a->opt.embed_wd, "decoupled weight decay of the token embedding")->capture_default_str();
  cmd->add_option("--adam-wd", a->opt.adam_wd, "decoupled weight decay of the other Adam tensors (not an untied head)")
      ->capture_default_str();
  cmd->add_option("--warmdown-frac", a->opt.warmdown_frac,
                  "linear LR decay over this last fraction of the run (replaces --warmdown-iters; 0 = off)")
      ->capture_default_str();
  cmd->add_option("--min-lr", a->opt.min_lr, "with --warmdown-frac: the LR multiplier's floor")->capture_default_str();
  cmd->add_option("--pack-documents", a->opt.pack_documents,
                  "true: each micro-batch one row of packed documents, attention within documents (varlen on CUDA; "
                  "a document longer than the sequence length split every that many tokens)")
      ->capture_default_str();
  cmd->add_option("--grad-clip-norm", a->opt.grad_clip_norm, "clip the global gradient norm (0 = off)")->capture_default_str();
  cmd->add_option("--rank-shapes", a->rank_shapes,
                  "data parallel, a shape per rank: ROWSxLENGTH, COUNT*ROWSxLENGTH, comma-separated in rank order "
                  "(e.g. 5*36x2048,3*10x6144); the longest length is stored as train_seq_len");
  cmd->add_option("--grad-accum", a->opt.grad_accum,
                  "micro-batches per step: each rank's rows in this many passes, gradients summed (less memory)")
      ->capture_default_str();
  cmd->add_option("--ema-decay", a->opt.ema_decay,
                  "keep an EMA of the weights with this decay (the frontier's 0.997) and save it (0 = off)")
      ->capture_default_str();
  cmd->add_option("--enable-looping-at", a->opt.enable_looping_at,
                  "depth recurrence from this fraction of the run on (the frontier's enable_looping_at)")
      ->capture_default_str();
  cmd->add_option("--seed", a->opt.seed, "initialisation and data seed")->capture_default_str();
  cmd->add_flag("--deterministic", a->opt.deterministic,
                "CUDA: attention's backward by kernels that give the same bits run to run (flash's deterministic "
                "ones; a few % slower); without it, cuDNN's and flash's faster ones, whose sums vary in the last bits");
  cmd->add_flag("--no-overlap-allreduce", a->no_overlap_allreduce,
                "data parallel: sum the gradients after backward instead of during it (same sums; for measuring)");
  cmd->add_option("--allreduce-bucket-mb", a->opt.allreduce_bucket_mb,
                  "data parallel: gradient bucket size in MB (2^20 bytes)")
      ->capture_default_str();
  cmd->add_option("--val-every", a->val_every, "validate every N steps (0 = only at the end)");
  cmd->add_option("--log-every", a->log_every, "print the training loss every N steps")->capture_default_str();
  cmd->add_option("--device", a->device, "auto, cpu or cuda")->capture_default_str();
  cmd->add_flag("--json", a->json, "print a JSON summary on stdout");
  cmd->add_option("--profile", a->profile,
                  "write a Kineto (Chrome-trace JSON) profile of the training steps (CUDA builds; with a few "
                  "--iterations: every step is traced)");
  cmd->callback([a, cmd]() { run_train(*a, *cmd); });
}

}  // namespace pgolf
