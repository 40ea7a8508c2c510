// `pgolf ttt`: the bpb of a model with score-first per-document LoRA
// test-time training (ttt/ttt_runner.h), next to its bpb on the same targets
// without TTT; `--audit` checks the pipeline's legality instead.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "cli/command.h"
#include "data/byte_counter.h"
#include "data/error.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "data/atomic_file.h"
#include "eval/eval_dump.h"
#include "eval/scoring_setup.h"
#include "model/distributed.h"
#include "model/runtime.h"
#include "quant/model_files.h"
#include "ttt/ttt_audit.h"
#include "ttt/ttt_runner.h"

namespace pgolf {

namespace {

struct TttArgs {
  ModelSource model;
  std::vector<std::string> val;
  std::string tokenizer, recipe = "lora-0317", device = "auto", precision;
  // Overrides of the recipe, applied when given.
  int lora_rank = 0;
  std::string targets, betas;
  double lr = 0, wd = 0;
  uint32_t chunk = 0, context = 0, batch_docs = 0, grad_steps = 0, trim = 0;
  uint64_t seed = 0, max_docs = 0;
  bool json = false, audit = false, quiet = false, no_base = false, no_cuda_graphs = false;
  std::string dump;     // --dump FILE.h5
  std::string profile;  // --profile FILE.json
  std::string timeline;  // --timeline FILE.tsv
  std::map<std::string, CLI::Option*> given;
};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');)
    if (!part.empty()) out.push_back(part);
  return out;
}

TttOptions options_from(const TttArgs& a) {
  TttOptions o = TttOptions::from_recipe(a.recipe);
  auto has = [&](const char* name) { return a.given.at(name)->count() > 0; };
  if (has("--rank")) o.lora_rank = a.lora_rank;
  if (has("--targets")) o.targets = split_commas(a.targets);
  if (has("--lr")) o.lr = a.lr;
  if (has("--betas")) {
    const std::vector<std::string> b = split_commas(a.betas);
    try {
      if (b.size() != 2) throw std::invalid_argument("count");
      o.beta1 = std::stod(b[0]);
      o.beta2 = std::stod(b[1]);
    } catch (const std::exception&) {
      throw Error("ttt: --betas takes two numbers, like 0.9,0.95; got '" + a.betas + "'");
    }
  }
  if (has("--wd")) o.weight_decay = a.wd;
  if (has("--chunk")) o.chunk = a.chunk;
  if (has("--context")) o.context = a.context;
  if (has("--batch-docs")) o.batch_docs = a.batch_docs;
  if (has("--grad-steps")) o.grad_steps = a.grad_steps;
  if (has("--trim")) o.trim = a.trim;
  o.seed = a.seed;
  o.max_docs = a.max_docs;
  o.base = !a.no_base;
  o.cuda_graphs = !a.no_cuda_graphs;
  o.validate();
  return o;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

nlohmann::json knobs_json(const TttOptions& o) {
  return {{"recipe", o.recipe},     {"rank", o.lora_rank},       {"targets", o.targets},
          {"lr", o.lr},             {"betas", {o.beta1, o.beta2}}, {"eps", o.eps},
          {"weight_decay", o.weight_decay}, {"optimizer", o.adamw ? "adamw" : "adam"},
          {"chunk", o.chunk},       {"context", o.context},      {"batch_docs", o.batch_docs},
          {"grad_steps", o.grad_steps}, {"trim", o.trim},        {"seed", o.seed},
          {"max_docs", o.max_docs}};
}

void run_audit(const TttArgs& a, const GptWeights& w, const std::vector<uint16_t>& tokens, const ByteCounter& bc,
               const TttOptions& o, const ScoringDevice& dev) {
  const TttAudit audit = audit_ttt(w, tokens, bc, o);
  std::fprintf(stderr, "%-10s %s on %s documents (%s targets), %s, %s\n", "ttt audit", o.recipe.c_str(),
               with_commas(audit.sample_docs).c_str(), with_commas(audit.sample_targets).c_str(),
               dev.device_name.c_str(), dev.precision_name.c_str());
  nlohmann::json checks = nlohmann::json::array();
  size_t failed = 0;
  for (const TttAuditCheck& c : audit.checks) {
    std::fprintf(stderr, "%-4s %-14s %s\n", c.ok ? "ok" : "FAIL", c.name.c_str(), c.detail.c_str());
    checks.push_back({{"name", c.name}, {"ok", c.ok}, {"detail", c.detail}});
    failed += !c.ok;
  }
  if (a.json) {
    nlohmann::json j = knobs_json(o);
    j["audit"] = checks;
    j["ok"] = audit.ok();
    std::printf("%s\n", j.dump().c_str());
  }
  if (!audit.ok())
    throw Error("ttt --audit: " + std::to_string(failed) + " of " + std::to_string(audit.checks.size()) +
                " checks failed");
}

// Every rank's chunk totals on rank 0, in (document, chunk) order: each chunk
// ran on exactly one rank, so the gather is exact. Collective: all ranks call it.
std::vector<TttChunkTotals> gather_chunks(const std::vector<TttChunkTotals>& mine) {
  constexpr size_t kFields = 5;
  std::vector<double> flat;
  flat.reserve(mine.size() * kFields);
  for (const TttChunkTotals& c : mine)
    flat.insert(flat.end(), {double(c.doc), double(c.index), double(c.bytes), c.nll, c.base_nll});
  const std::vector<double> all = ranks().multi() ? gather_concat(flat) : flat;
  std::vector<TttChunkTotals> out(all.size() / kFields);
  for (size_t i = 0; i < out.size(); ++i) {
    const double* f = &all[i * kFields];
    out[i].doc = uint32_t(f[0]);
    out[i].index = uint32_t(f[1]);
    out[i].bytes = uint64_t(f[2]);
    out[i].nll = f[3];
    out[i].base_nll = f[4];
  }
  std::sort(out.begin(), out.end(), [](const TttChunkTotals& x, const TttChunkTotals& y) {
    return x.doc != y.doc ? x.doc < y.doc : x.index < y.index;
  });
  return out;
}

// --dump: per-document totals with and without TTT and per-chunk totals
// (docs/DUMP_FORMAT.md, kind "ttt"; no per-target arrays).
void write_ttt_dump(const TttArgs& a, const TttOptions& o, const TttResult& r,
                    const std::vector<TttChunkTotals>& chunks, const std::vector<uint16_t>& tokens,
                    const std::string& precision) {
  // The documents of the run's plan (the plan is a pure function of the stream and the knobs).
  const TttPlan plan = make_ttt_plan(tokens.data(), r.used_tokens, o.bos_id, o.chunk, o.context, o.batch_docs, 0, 1,
                                     TttSchedule{o.split, 0});
  if (plan.docs.size() != r.docs.size())
    throw Error("ttt --dump: the plan has " + std::to_string(plan.docs.size()) + " documents, the run " +
                std::to_string(r.docs.size()));
  EvalDump d;
  d.kind = "ttt";
  d.model = a.model.path;
  d.tokenizer = a.tokenizer;
  d.val = a.val;
  d.plan = o.recipe;
  d.precision = precision;
  d.seq_len = o.context;
  d.stride = o.chunk;
  d.bpb = r.bpb();
  d.bpb_stderr = r.bpb_stderr();
  d.loss = r.loss();
  d.nll_sum = r.nll_sum;
  d.targets = r.targets;
  d.bytes = r.bytes;
  d.notes["ttt"] = knobs_json(o).dump();
  for (size_t i = 0; i < plan.docs.size(); ++i) {
    const TttDocument& doc = plan.docs[i];
    // Length with its BOS, up to the next document's BOS (its last target).
    d.doc_start.push_back(doc.bos);
    d.doc_length.push_back(doc.end - doc.bos - (tokens[doc.end - 1] == o.bos_id ? 1 : 0));
    d.doc_nll.push_back(r.docs[i].nll);
    d.doc_bytes.push_back(r.docs[i].bytes);
    d.doc_targets.push_back(r.docs[i].targets);
    if (r.has_base) d.doc_nll_base.push_back(r.base_docs[i].nll);
  }
  for (const TttChunkTotals& c : chunks) {
    d.chunk_doc.push_back(c.doc);
    d.chunk_index.push_back(c.index);
    d.chunk_nll.push_back(c.nll);
    if (r.has_base) d.chunk_nll_base.push_back(c.base_nll);
    d.chunk_bytes.push_back(c.bytes);
  }
  write_eval_dump(a.dump, d);
  std::fprintf(stderr, "%-10s %s (%s documents, %s chunks)\n", "dump", a.dump.c_str(),
               with_commas(d.doc_start.size()).c_str(), with_commas(d.chunk_doc.size()).c_str());
}

// One line per step (rank 0's): milliseconds from the step loop's start.
void write_timeline(const std::string& path, const std::vector<TttStepTime>& steps) {
  std::string out =
      "batch\tstep\trows\twidth\tupdate\trun\tgraphs_captured\thost_begin_ms\thost_end_ms\tdevice_end_ms\t"
      "capture_ms\tinstantiate_ms\tlaunch_ms\treserved_mib\n";
  char line[320];
  for (const TttStepTime& s : steps) {
    std::snprintf(line, sizeof line, "%u\t%u\t%lld\t%lld\t%d\t%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.0f\n",
                  s.batch, s.step, static_cast<long long>(s.rows), static_cast<long long>(s.width), int(s.update),
                  s.run == 'e' ? "eager" : s.run == 'c' ? "capture" : "replay", s.captures, s.host_begin, s.host_end, s.device_end,
                  s.capture, s.instantiate, s.launch, s.reserved_mib);
    out += line;
  }
  write_file_atomic(path, out);
  std::fprintf(stderr, "%-10s %s (%zu steps)\n", "timeline", path.c_str(), steps.size());
}

void run_ttt_command(const TttArgs& a) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  TttOptions o = options_from(a);  // bad knobs fail before anything is loaded
  const ScoringDevice dev = choose_scoring_device(a.device, a.precision);
  if (a.audit && ranks_from_env().multi())
    throw Error("ttt --audit runs on one rank: launch it without torchrun (WORLD_SIZE=" +
                std::to_string(ranks_from_env().world) + ")");
  // Join the job before anything touches a GPU or a file (see eval).
  const Ranks& rk = init_ranks(dev.cuda);
  o.rank = rk.rank;  // whole batches of the one-rank plan, balanced by cost
  o.world = rk.world;
  const bool quiet = a.quiet || !rk.root();
  ScoringInputs in(a.model, a.tokenizer, a.val, quiet);
  GptWeights& w = in.w;
  const Tokenizer& tok = in.tok;
  const TokenStream& stream = in.stream;
  const ByteCounter& bc = in.bc;
  place_weights(w, dev);
  o.precision = dev.precision;
  o.bos_id = uint16_t(tok.bos_id());
  const std::vector<uint16_t> tokens = stream.slice(0, stream.size());
  if (a.audit) return run_audit(a, w, tokens, bc, o, dev);
  if (!a.dump.empty() && rk.root()) AtomicFile probe(a.dump);  // an unwritable --dump fails now
  if (!a.timeline.empty() && rk.root()) AtomicFile probe(a.timeline);
  o.timeline = !a.timeline.empty();

  auto last = clock::now();
  const auto start = clock::now();
  o.progress = [&](uint64_t done, uint64_t total) {
    if (quiet || clock::now() - last < std::chrono::seconds(5)) return;
    last = clock::now();
    const double s = std::chrono::duration<double>(last - start).count(), rate = double(done) / s;
    std::fprintf(stderr, "ttt: %5.1f%%  %s targets/s  ETA %.0f s\n", 100.0 * double(done) / double(total),
                 with_commas(uint64_t(rate)).c_str(), double(total - done) / std::max(rate, 1.0));
  };
  const bool profile = !a.profile.empty() && rk.root();
  if (profile) start_profile();
  TttResult r = run_ttt(w, tokens, bc, o);
  if (profile) stop_profile(a.profile);
  r.all_reduce_ranks();     // exact float64 sums: each document ran on one rank
  std::vector<TttChunkTotals> chunks;
  if (!a.dump.empty()) chunks = gather_chunks(r.chunks);
  if (!rk.root()) return;   // rank 0 reports
  // The TTT work's seconds: the one-time device warm-up is reported apart.
  const double ttt_s = std::chrono::duration<double>(clock::now() - start).count() - r.warmup_seconds;
  const double wall = std::chrono::duration<double>(clock::now() - t0).count();
  uint64_t docs = 0;
  for (const DocumentTotals& d : r.docs) docs += d.targets > 0;

  std::fprintf(stderr, "%-10s %s (rank %d on %s; C=%u, L=%u, %u docs/batch; %s lr %g betas %g,%g wd %g), %s, %s\n",
               "ttt", o.recipe.c_str(), o.lora_rank, join(o.targets).c_str(), o.chunk, o.context, o.batch_docs,
               o.adamw ? "adamw" : "adam", o.lr, o.beta1, o.beta2, o.weight_decay,
               (dev.device_name + (rk.multi() ? " x " + std::to_string(rk.world) + " ranks" : "")).c_str(),
               dev.precision_name.c_str());
  std::fprintf(stderr, "%-10s %.6f ± %.6f (stderr over %s documents)\n", "bpb", r.bpb(), r.bpb_stderr(),
               with_commas(docs).c_str());
  if (r.has_base) {
    std::fprintf(stderr, "%-10s %.6f (the same targets without TTT)\n", "bpb base", r.base_bpb());
    std::fprintf(stderr, "%-10s %+.6f ± %.6f bpb\n", "gain", r.bpb() - r.base_bpb(), r.gain_stderr());
    std::fprintf(stderr, "%-10s %.6f nats/target (base %.6f)\n", "loss", r.loss(), r.base_loss());
  } else {
    std::fprintf(stderr, "%-10s %.6f nats/target\n", "loss", r.loss());
  }
  std::fprintf(stderr, "%-10s %s\n%-10s %s\n", "targets", with_commas(r.targets).c_str(), "bytes",
               with_commas(r.bytes).c_str());
  std::fprintf(stderr, "%-10s %s (%s batches, %s steps, %s replayed from %s CUDA graphs, %s updates)\n", "docs",
               with_commas(docs).c_str(), with_commas(r.batches).c_str(), with_commas(r.steps).c_str(),
               with_commas(uint64_t(r.graph_replays)).c_str(), with_commas(uint64_t(r.graph_captures)).c_str(),
               with_commas(r.updates).c_str());
  std::fprintf(stderr, "%-10s %s scored targets/s (%.2f s ttt, %.2f s device warm-up, %.2f s wall)\n", "speed",
               with_commas(uint64_t(double(r.targets) / std::max(ttt_s, 1e-9))).c_str(), ttt_s, r.warmup_seconds,
               wall);
  if (a.json) {
    nlohmann::json j = knobs_json(o);
    j.update({{"bpb", r.bpb()},
              {"bpb_base", r.has_base ? nlohmann::json(r.base_bpb()) : nlohmann::json(nullptr)},
              {"bpb_stderr", r.bpb_stderr()},
              {"gain", r.has_base ? nlohmann::json(r.bpb() - r.base_bpb()) : nlohmann::json(nullptr)},
              {"gain_stderr", r.has_base ? nlohmann::json(r.gain_stderr()) : nlohmann::json(nullptr)},
              {"loss", r.loss()},
              {"loss_base", r.has_base ? nlohmann::json(r.base_loss()) : nlohmann::json(nullptr)},
              {"targets", r.targets},
              {"bytes", r.bytes},
              {"docs", docs},
              {"batches", r.batches},
              {"steps", r.steps},
              {"updates", r.updates},
              {"seconds", wall},
              {"ttt_seconds", ttt_s},
              {"warmup_seconds", r.warmup_seconds},
              {"host_seconds", {{"prepare", r.host_prepare}, {"forward", r.host_forward},
                                {"backward", r.host_backward}, {"update", r.host_update},
                                {"replay", r.host_replay}, {"read_back", r.host_read_back},
                                {"base", r.host_base}}},
              {"graph_replays", r.graph_replays},
              {"graph_captures", r.graph_captures},
              {"targets_per_second", double(r.targets) / std::max(ttt_s, 1e-9)},
              {"device", dev.device_name},
              {"precision", dev.precision_name},
              {"ranks", rk.world}});
    std::printf("%s\n", j.dump().c_str());
  }
  if (!a.dump.empty()) write_ttt_dump(a, o, r, chunks, tokens, dev.precision_name);
  if (!a.timeline.empty()) write_timeline(a.timeline, r.timeline);
}

}  // namespace

void register_ttt_command(CLI::App& app) {
  auto a = std::make_shared<TttArgs>();
  CLI::App* cmd = app.add_subcommand("ttt", "The bpb with score-first per-document LoRA test-time training");
  add_model_options(cmd, a->model);
  cmd->add_option("--val", a->val, "validation shards: files or quoted globs")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "the model's SentencePiece .model (byte counting)")->required();
  cmd->add_option("--recipe", a->recipe, "lora-0317 (2026-03-17_LoRA_TTT) or varlen-0410 (2026-04-10_VarLenAttn)")
      ->capture_default_str();
  auto& g = a->given;
  g["--rank"] = cmd->add_option("--rank", a->lora_rank, "LoRA rank (0317: 8, 0410: 96)");
  g["--targets"] = cmd->add_option("--targets", a->targets, "adapted sites, some of q,k,v,o,mlp,head");
  g["--lr"] = cmd->add_option("--lr", a->lr, "Adam learning rate (0317: 0.01, 0410: 1e-4)");
  g["--betas"] = cmd->add_option("--betas", a->betas, "Adam betas b1,b2 (0317: 0.9,0.95, 0410: 0,0.999)");
  g["--wd"] = cmd->add_option("--wd", a->wd, "weight decay (0317: 0, Adam; 0410: 0.5, AdamW)");
  g["--chunk"] = cmd->add_option("--chunk", a->chunk, "targets per chunk C (0317: 256, 0410: 64)");
  g["--context"] = cmd->add_option("--context", a->context, "window length L (0317: 1024, 0410: 2048)");
  g["--batch-docs"] = cmd->add_option("--batch-docs", a->batch_docs, "documents per batch (64)");
  g["--grad-steps"] = cmd->add_option("--grad-steps", a->grad_steps, "optimizer steps per chunk (1)");
  g["--trim"] = cmd->add_option("--trim", a->trim, "trim the stream to whole rows of E first (0410: 2048; 0: none)");
  cmd->add_option("--seed", a->seed, "seed of the adapters' initialisation")->capture_default_str();
  cmd->add_option("--max-docs", a->max_docs, "only the first N documents (quick runs; 0: all)");
  cmd->add_option("--device", a->device, "auto, cpu or cuda")->capture_default_str();
  cmd->add_option("--precision", a->precision, "bf16 (CUDA default, the reference's numerics), f32 (CPU default), f64");
  cmd->add_flag("--no-base", a->no_base, "skip the score without TTT (saves the forwards of every document's chunks after its first)");
  cmd->add_flag("--no-cuda-graphs", a->no_cuda_graphs,
                "launch every step from the host instead of replaying repeated step shapes from CUDA graphs");
  cmd->add_flag("--audit", a->audit, "legality checks on a sample of documents instead of the run; exit 1 on failure");
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->add_option("--dump", a->dump, "write per-document totals with and without TTT and per-chunk totals to this HDF5 file (pgolf report draws them)");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  cmd->add_option("--profile", a->profile, "write a Kineto (Chrome-trace JSON) profile of the run (CUDA builds)");
  cmd->add_option("--timeline", a->timeline,
                  "write each step's host issue times and device finish time (ms) to this TSV file; no profiler needed");
  cmd->callback([a]() { run_ttt_command(*a); });
}

}  // namespace pgolf
