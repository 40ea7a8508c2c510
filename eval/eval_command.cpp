// `pgolf eval`: the bpb of a model on a token stream, standard or sliding.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "cli/command.h"
#include "data/atomic_file.h"
#include "data/byte_counter.h"
#include "data/document_index.h"
#include "data/error.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "eval/eval_dump.h"
#include "eval/evaluator.h"
#include "eval/model_comparison.h"
#include "eval/scoring_setup.h"
#include "quant/model_files.h"
#include "model/distributed.h"
#include "model/pch.h"
#include "model/runtime.h"

namespace pgolf {

namespace {

struct EvalArgs {
  ModelSource model;
  std::vector<std::string> val;
  std::string tokenizer, plan = "current", device = "auto", precision;
  uint32_t seq_len = 0, stride = 0;
  bool doc_mask = false, json = false, quiet = false;
  uint64_t batch_tokens = 0;
  std::string dump;  // --dump FILE.h5
  std::string profile;  // --profile FILE.json
  std::string compare_to;  // --compare-to REF (eval/model_comparison.h)
  bool per_class = false;
  bool no_cuda_graphs = false;
};

// --dump: per-target scores and per-document totals (docs/DUMP_FORMAT.md).
void write_dump(const EvalArgs& a, const EvalOptions& o, EvalResult& r, const TokenStream& stream,
                const std::string& precision) {
  EvalDump d = eval_dump_from(r, DocumentIndex(stream, o.bos_id));
  std::vector<ScoredTarget>().swap(r.scored);  // the dump holds them now: free the memory
  d.model = a.model.path;
  d.tokenizer = a.tokenizer;
  d.val = a.val;
  d.plan = plan_kind_name(o.plan);
  d.precision = precision;
  d.seq_len = o.seq_len;
  d.stride = o.stride;
  d.doc_mask = o.doc_mask;
  write_eval_dump(a.dump, d);
  std::fprintf(stderr, "%-10s %s (%s scored targets)\n", "dump", a.dump.c_str(), with_commas(d.token_nll.size()).c_str());
}

void check_compare_flags(const EvalArgs& a) {
  if (a.per_class && a.compare_to.empty()) throw Error("--per-class needs --compare-to");
  if (!a.compare_to.empty() && (!a.dump.empty() || !a.profile.empty()))
    throw Error("--dump and --profile do not apply with --compare-to");
}

void run_eval(const EvalArgs& a) {
  check_compare_flags(a);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  // Join the job first (multi-rank: before anything touches a GPU or a file, so
  // a rank that fails on its input stops the others).
  const ScoringDevice dev = choose_scoring_device(a.device, a.precision);
  const Ranks& rk = init_ranks(dev.cuda);
  const bool quiet = a.quiet || !rk.root();
  ScoringInputs in(a.model, a.tokenizer, a.val, quiet);
  GptWeights& w = in.w;
  const Tokenizer& tok = in.tok;
  const TokenStream& stream = in.stream;
  const ByteCounter& bc = in.bc;

  const RuntimeInfo rt = runtime_info();
  const bool cuda = dev.cuda;
  const std::string prec = dev.precision_name;
  EvalOptions o;
  o.precision = dev.precision;
  place_weights(w, dev);

  o.seq_len = a.seq_len ? a.seq_len : uint32_t(w.config.eval_length());
  if (a.plan != "current" && a.plan != "legacy" && a.plan != "streaming")
    throw Error("--plan must be current, legacy or streaming, got '" + a.plan + "'");
  if (a.plan == "streaming") {
    o.plan = PlanKind::Streaming;
    o.stride = a.stride;  // the chunk; 0 = L
    if (o.stride > o.seq_len)
      throw Error("--stride (the streaming chunk) must be in [1, L=" + std::to_string(o.seq_len) + "]");
    if (a.doc_mask) throw Error("--doc-mask does not apply to --plan streaming");
  } else if (a.stride) {
    o.stride = a.stride;
    o.plan = a.plan == "legacy" ? PlanKind::Legacy : PlanKind::Current;
  } else if (a.doc_mask) {
    throw Error("--doc-mask applies to sliding windows: give --stride");
  }
  o.doc_mask = a.doc_mask;
  o.cuda_graphs = !a.no_cuda_graphs;
  o.rank = rk.rank;  // contiguous window slices (window_plan.h)
  o.world = rk.world;
  o.bos_id = uint16_t(tok.bos_id());
  o.batch_tokens = a.batch_tokens ? a.batch_tokens : (cuda ? 32 * uint64_t(o.seq_len) : 8 * uint64_t(o.seq_len));
  auto last = clock::now();
  const auto start = clock::now();
  o.progress = [&](uint64_t done, uint64_t total) {
    if (quiet || clock::now() - last < std::chrono::seconds(5)) return;
    last = clock::now();
    const double s = std::chrono::duration<double>(last - start).count();
    const double rate = double(done) / s;
    std::fprintf(stderr, "eval: %5.1f%%  %s targets/s  ETA %.0f s\n", 100.0 * double(done) / double(total),
                 with_commas(uint64_t(rate)).c_str(), double(total - done) / std::max(rate, 1.0));
  };
  if (!a.compare_to.empty()) {
    if (rk.multi()) throw Error("--compare-to runs on one rank: launch it without torchrun");
    if (o.plan == PlanKind::Streaming) throw Error("--compare-to runs on window plans, not --plan streaming");
    ModelSource ref = a.model;  // --config, --config-from-log and --set apply to both
    ref.path = a.compare_to;
    run_model_comparison({a.model.path, a.compare_to, a.tokenizer, a.per_class, a.json, a.quiet}, w, ref, tok, stream,
                         bc, dev, o);
    return;
  }
  o.capture_targets = !a.dump.empty();
  // An unwritable --dump fails now, not after the evaluation (rank 0 writes it).
  if (o.capture_targets && rk.root()) AtomicFile probe(a.dump);
  const bool profile = !a.profile.empty() && rk.root();
  const auto e0 = clock::now();
  if (profile) start_profile();
  EvalResult r = evaluate(w, stream, bc, o);
  if (profile) stop_profile(a.profile);
  r.all_reduce_ranks(o.capture_targets);  // float64 sums of all ranks; the dump's scorings to rank 0
  if (!rk.root()) return;                 // rank 0 reports
  // The evaluation's seconds: the one-time device warm-up is reported apart.
  const double eval_s = std::chrono::duration<double>(clock::now() - e0).count() - r.warmup_seconds;
  const double wall = std::chrono::duration<double>(clock::now() - t0).count();

  const char* plan = plan_kind_name(o.plan);
  const std::string where = (cuda ? rt.device_name : std::string("cpu")) +
                            (rk.multi() ? " x " + std::to_string(rk.world) + " ranks" : "");
  std::fprintf(stderr, "%-10s %s (L=%u%s%s), %s, %s\n", "eval", plan, o.seq_len,
               o.stride ? (", S=" + std::to_string(o.stride)).c_str() : "", o.doc_mask ? ", doc-mask" : "",
               where.c_str(), prec.c_str());
  std::fprintf(stderr, "%-10s %.6f ± %.6f (stderr over %zu documents)\n", "bpb", r.bpb(), r.bpb_stderr(),
               r.docs.size() - (r.docs.back().targets ? 0 : 1));
  std::fprintf(stderr, "%-10s %.6f nats/target\n", "loss", r.loss());
  std::fprintf(stderr, "%-10s %s\n%-10s %s\n%-10s %s\n", "targets", with_commas(r.targets).c_str(), "bytes",
               with_commas(r.bytes).c_str(), "windows", with_commas(r.windows).c_str());
  std::fprintf(stderr, "%-10s %s scored targets/s (%.2f s eval, %.2f s device warm-up, %.2f s wall)\n", "speed",
               with_commas(uint64_t(double(r.targets) / std::max(eval_s, 1e-9))).c_str(), eval_s, r.warmup_seconds,
               wall);
  if (!a.dump.empty()) write_dump(a, o, r, stream, prec);
  if (a.json) {
    nlohmann::json j = {{"bpb", r.bpb()},       {"bpb_stderr", r.bpb_stderr()}, {"loss", r.loss()},
                        {"targets", r.targets}, {"bytes", r.bytes},             {"windows", r.windows},
                        {"seconds", wall},      {"eval_seconds", eval_s},       {"warmup_seconds", r.warmup_seconds},
                        {"plan", plan},
                        {"seq_len", o.seq_len}, {"stride", o.stride},           {"doc_mask", o.doc_mask},
                        {"device", cuda ? rt.device_name : "cpu"}, {"precision", prec}, {"ranks", rk.world},
                        {"targets_per_second", double(r.targets) / std::max(eval_s, 1e-9)},
                        {"graph_replays", r.graph_replays},
                        {"host_seconds", {{"prepare", r.host_prepare}, {"forward", r.host_forward},
                                          {"read_back", r.host_read_back}}}};
    std::printf("%s\n", j.dump().c_str());
  }
}

}  // namespace

void add_model_options(CLI::App* cmd, ModelSource& m) {
  cmd->add_option("--model", m.path, "pgolf checkpoint (.h5) or parameter-golf final_model.pt / .int8.ptz / .int6.ptz")
      ->required();
  cmd->add_option("--config", m.config_path, "model config JSON overriding the checkpoint's");
  cmd->add_option("--config-from-log", m.log_path, "reference training log: its Hyperparameters block");
  cmd->add_option("--set", m.sets, "override one config field: key=value (repeatable)");
}

const char* const kCompareHelp = R"(Quantization quality (--compare-to REF):
  pgolf eval --model model.pgz --compare-to model.h5 --val 'data/fineweb_val_*.bin' --tokenizer tok.model
             [--per-class] [--stride 64 ...] [--json]
  Both models run over the same windows (--seq-len, --stride, --plan, --doc-mask, --precision apply) and
  at every scored target give their NLL, the KL divergence KL(P_ref || P_model) of their next-token
  distributions (softmax of the softcapped logits, in float64) and whether their argmax tokens agree.
  Printed: the bpb of both, delta bpb with its standard error paired over documents, KL mean, median,
  p99 and max in nats per target (quantiles exact over the per-target values kept as float32: 4 bytes a
  target a model), top-1 agreement. --json adds bpb_reference, delta_bpb, delta_bpb_stderr, kl_mean,
  kl_median, kl_p99, kl_max, top1_agreement (a fraction) to eval's keys; bpb is --model's. --config,
  --config-from-log and --set apply to both models; they must have the same vocab_size.
  --per-class: a row per tensor group (embed, looped, attn, mlp, other, as pgolf inspect groups them):
  the reference with only that group's tensors taken from --model, the rest float. With a .pgz and the
  checkpoint it came from, that is quantizing one class at a time with the artifact's own values (GPTQ
  takes every Hessian from the float model, so a tensor's values do not depend on the other classes').
  Both models need the same config. Each row costs one more forward per batch. To try another recipe
  per class, quantize it (pgolf quantize --bits ... --out x.pgz) and compare that.)";

void register_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "The bpb of a model on a token stream (standard or sliding windows)");
  add_model_options(cmd, a->model);
  cmd->add_option("--val", a->val, "validation shards: files or quoted globs")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "the model's SentencePiece .model (byte counting)")->required();
  cmd->add_option("--seq-len", a->seq_len, "window length L (default: the config's eval length)");
  cmd->add_option("--stride", a->stride,
                  "sliding-window stride S; without it, standard evaluation (streaming: tokens per stream per "
                  "forward, default L)");
  cmd->add_option("--plan", a->plan,
                  "current (sliding, each target once), legacy (2026-03-19 numbers), or streaming (KV cache over "
                  "the L - 1 tokens before each chunk: every target sees L tokens; docs/USER_GUIDE.md)")
      ->capture_default_str();
  cmd->add_flag("--no-cuda-graphs", a->no_cuda_graphs,
                "launch every batch from the host instead of replaying repeated ones from a CUDA graph");
  cmd->add_flag("--doc-mask", a->doc_mask, "restrict attention inside a window to documents (BOS starts one)");
  cmd->add_option("--batch-tokens", a->batch_tokens, "tokens per forward (default 32 windows on CUDA, 8 on CPU)");
  cmd->add_option("--device", a->device, "auto, cpu or cuda")->capture_default_str();
  cmd->add_option("--precision", a->precision, "bf16 (CUDA default, the reference's numerics), f32 (CPU default), f64");
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  cmd->add_option("--profile", a->profile, "write a Kineto (Chrome-trace JSON) profile of the evaluation (CUDA builds)");
  cmd->add_option("--dump", a->dump, "write per-target NLL and bytes and per-document totals to this HDF5 file");
  cmd->add_option("--compare-to", a->compare_to,
                  "reference model (the float checkpoint): bpb of both, KL(reference || model), top-1 agreement");
  cmd->add_flag("--per-class", a->per_class,
                "with --compare-to: a row per tensor group, the reference with only that group from --model");
  cmd->footer(kCompareHelp);
  cmd->callback([a]() { run_eval(*a); });
}

}  // namespace pgolf
