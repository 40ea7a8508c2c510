// `pgolf quantize`: a model -> a pgolf artifact (.pgz) under the size cap.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <set>

#include "cli/command.h"
#include "data/atomic_file.h"
#include "data/error.h"
#include "data/sha256.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "model/pch.h"
#include "model/runtime.h"
#include "quant/calibration.h"
#include "quant/fit.h"
#include "quant/hessian.h"
#include "quant/model_files.h"
#include "quant/quantize.h"
#include "quant/size_budget.h"

namespace pgolf {

namespace {

using clock_type = std::chrono::steady_clock;

struct QuantizeArgs {
  ModelSource model;
  std::string calib, out, method = "gptq", codec = "auto", device = "auto", precision, tokenizer;
  std::vector<std::string> bits, clips, code;
  int64_t calib_batches = 64, calib_rows = 0, calib_seq_len = 0;
  int64_t calib_seed = -1;
  double temperature = 0.8;
  uint64_t cap = quant::kDefaultCap;
  int64_t passthrough_max_numel = 65536;
  int block = 128;
  double damp = 0.01;
  bool fit = false, json = false, quiet = false;
};

double since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

// Progress lines at most every 5 s.
struct Progress {
  bool quiet;
  clock_type::time_point last = clock_type::now();
  void operator()(const char* what, int64_t done, int64_t total) {
    if (quiet || (done < total && clock_type::now() - last < std::chrono::seconds(5))) return;
    last = clock_type::now();
    std::fprintf(stderr, "%s: %lld / %lld\n", what, (long long)done, (long long)total);
  }
};

struct ClassRow {
  int tensors = 0;
  std::set<int> bits;
  uint64_t params = 0, stored = 0;
  double error = 0;
};

void run_quantize(const QuantizeArgs& a) {
  const auto t_start = clock_type::now();
  nlohmann::json seconds = nlohmann::json::object();

  // Model, device, precision.
  auto t0 = clock_type::now();
  std::string notes;
  GptWeights w = load_model_file(a.model, &notes);
  if (!notes.empty() && !a.quiet) std::fprintf(stderr, "%s: %s\n", a.model.path.c_str(), notes.c_str());
  const RuntimeInfo rt = runtime_info();
  if (a.device != "auto" && a.device != "cpu" && a.device != "cuda") throw Error("--device must be auto, cpu or cuda");
  if (a.device == "cuda" && !rt.cuda) throw Error("--device cuda: no CUDA device is available");
  const bool cuda = a.device == "cuda" || (a.device == "auto" && rt.cuda);
  const std::string prec = a.precision.empty() ? (cuda ? "bf16" : "f32") : a.precision;
  Precision precision;
  if (prec == "bf16") precision = Precision::BF16;
  else if (prec == "f32") precision = Precision::F32;
  else if (prec == "f64") precision = Precision::F64;
  else throw Error("--precision must be bf16, f32 or f64");
  const at::Device device = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  const GptWeights original = w;  // quantized from these (their own dtype; GPTQ math is float32)
  for (auto& [n, t] : w.tensors) t = t.to(device, precision == Precision::F64 ? at::kDouble : t.scalar_type());
  seconds["load"] = since(t0);

  quant::QuantizeOptions qo;
  qo.method = a.method;
  if (a.method != "gptq" && a.method != "rtn") throw Error("--method must be gptq or rtn, got '" + a.method + "'");
  qo.policy.passthrough_max_numel = a.passthrough_max_numel;
  for (const auto& s : a.bits) qo.policy.add_bits(s);
  for (const auto& s : a.clips) qo.policy.add_clip_sigmas(s, "--clip-sigmas");
  qo.block = a.block;
  qo.damp = a.damp;
  qo.device = device;
  if (a.block < 1) throw Error("--block must be >= 1");
  if (!(a.damp > 0)) throw Error("--damp must be positive");
  quant::ArtifactWriteOptions wo;
  wo.values = quant::parse_value_coding(a.codec);
  const std::vector<quant::CodeFile> code = quant::code_files(a.code);
  uint64_t code_bytes = 0;
  for (const auto& c : code) code_bytes += c.bytes;
  if (a.cap > 0 && code_bytes >= a.cap)
    throw Error("--code: the code alone (" + quant::with_commas(code_bytes) + " bytes) reaches the cap");
  quant::plan_tensors(original, qo.policy);  // policy errors before any long work

  if (!a.tokenizer.empty()) {
    Tokenizer tok(a.tokenizer);
    if (tok.vocab_size() != w.config.vocab_size)
      fail(a.tokenizer, "tokenizer has " + std::to_string(tok.vocab_size()) + " pieces but the model's vocab_size is " +
                            std::to_string(w.config.vocab_size) + ": not the model's tokenizer");
    qo.tokenizer_fingerprint = sha256_file_hex(a.tokenizer);
  }

  // Calibration and Hessians.
  nlohmann::json calib = nullptr;
  Progress progress{a.quiet};
  if (a.method == "gptq") {
    if (a.calib.empty()) throw Error("--calib is required for --method gptq (a shard glob, or self)");
    const int64_t L = a.calib_seq_len > 0 ? a.calib_seq_len : w.config.train_seq_len;
    if (a.calib_batches < 1) throw Error("--calib-batches must be >= 1");
    t0 = clock_type::now();
    std::vector<at::Tensor> batches;
    quant::HessianOptions ho;
    ho.precision = precision;
    if (a.calib == "self") {
      quant::SelfCalibration sc;
      sc.sequences = a.calib_batches;
      sc.seq_len = L;
      sc.batch = a.calib_rows > 0 ? a.calib_rows : 8;
      sc.temperature = a.temperature;
      sc.seed = a.calib_seed >= 0 ? uint64_t(a.calib_seed) : 42;
      sc.precision = precision;
      sc.progress = [&](int64_t d, int64_t t) { progress("calibration tokens generated", d, t); };
      batches = quant::self_calibration_batches(w, sc);
      // Each sequence counts as one batch, and its last token is only a target (the reference).
      for (auto& b : batches) b = b.narrow(1, 0, L - 1);
      ho.divide_by = sc.sequences;
      calib = {{"source", "self"},        {"sequences", sc.sequences}, {"seq_len", L},
               {"temperature", sc.temperature}, {"seed", sc.seed},    {"batch", sc.batch}};
    } else {
      TokenStream stream({a.calib});
      stream.check_ids_below(uint32_t(w.config.vocab_size), "the model (vocab_size)");
      quant::ShardCalibration sc;
      sc.batches = a.calib_batches;
      sc.seq_len = L;
      sc.rows = a.calib_rows > 0 ? a.calib_rows : std::max<int64_t>(1, 98304 / L);
      sc.seed = a.calib_seed >= 0 ? uint64_t(a.calib_seed) : 0;
      batches = quant::shard_calibration_batches(stream, sc);
      calib = {{"source", "shards"}, {"glob", a.calib}, {"batches", sc.batches},
               {"rows", sc.rows},    {"seq_len", L},    {"seed", sc.seed}};
    }
    seconds["calibration_tokens"] = since(t0);
    t0 = clock_type::now();
    ho.progress = [&](int64_t d, int64_t t) { progress("hessian batches", d, t); };
    qo.hessians = quant::collect_hessians(w, batches, ho);
    seconds["hessians"] = since(t0);
    calib["precision"] = prec;
    calib["hessians"] = qo.hessians.size();
    if (!a.quiet)
      std::fprintf(stderr, "hessians: %zu from %zu batches in %.1f s\n", qo.hessians.size(), batches.size(),
                   seconds["hessians"].get<double>());
  }
  if (a.method == "rtn" && !a.calib.empty() && !a.quiet) std::fprintf(stderr, "--method rtn: --calib is not used\n");
  qo.calibration_json = calib.dump();
  if (!a.quiet) qo.log = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  // Quantize from the original weights: the forward's copy may be float64 or on the device.
  const uint64_t artifact_cap = a.cap == 0 ? 0 : a.cap - code_bytes;
  quant::FitResult f = quant::quantize_to_fit(original, qo, wo, artifact_cap, a.fit);
  seconds["quantize"] = f.quantize_seconds;
  seconds["encode"] = f.encode_seconds;
  t0 = clock_type::now();
  write_file_atomic(a.out, f.bytes);
  seconds["write"] = since(t0);
  seconds["total"] = since(t_start);

  // Report: per class, then totals against the cap.
  std::map<std::string, ClassRow> rows;
  std::map<std::string, const quant::ArtifactTensorLayout*> lay;
  for (const auto& t : f.layout.tensors) lay[t.name] = &t;
  for (const quant::TensorPlan& p : f.plans) {
    const std::string key = p.action == quant::TensorAction::Quantize ? p.group
                            : p.action == quant::TensorAction::Float16 ? "fp16" : "raw";
    ClassRow& r = rows[key];
    ++r.tensors;
    if (p.action == quant::TensorAction::Quantize) {
      r.bits.insert(p.bits);
      r.error += f.results.at(p.name).error;
    }
    r.params += uint64_t(original.get(p.name).numel());
    if (lay.count(p.name)) r.stored += lay.at(p.name)->stored_bytes;
  }
  quant::SizeBudget b;
  b.artifact_bytes = f.bytes.size();
  b.code_bytes = code_bytes;
  b.cap = a.cap;
  auto bits_text = [](const std::set<int>& s) {
    if (s.empty()) return std::string("-");
    if (s.size() == 1) return std::to_string(*s.begin());
    return std::to_string(*s.begin()) + "-" + std::to_string(*s.rbegin());
  };
  std::fprintf(stderr, "%-8s %7s %5s %14s %14s\n", "class", "tensors", "bits", "params", "stored bytes");
  nlohmann::json classes = nlohmann::json::array();
  for (const auto& [k, r] : rows) {
    std::fprintf(stderr, "%-8s %7d %5s %14s %14s\n", k.c_str(), r.tensors, bits_text(r.bits).c_str(),
                 quant::with_commas(r.params).c_str(), quant::with_commas(r.stored).c_str());
    classes.push_back({{"class", k}, {"tensors", r.tensors}, {"bits", std::vector<int>(r.bits.begin(), r.bits.end())},
                       {"params", r.params}, {"stored_bytes", r.stored}, {"weighted_error", r.error}});
  }
  std::fprintf(stderr, "%-8s %7s %5s %14s %14s\n", "header", "", "", "", quant::with_commas(f.layout.header_bytes).c_str());
  std::fprintf(stderr, "%-28s %14s bytes  %s\n", "artifact", quant::with_commas(b.artifact_bytes).c_str(), a.out.c_str());
  std::fprintf(stderr, "%-28s %14s bytes  (%zu file%s, counted as given)\n", "code",
               quant::with_commas(b.code_bytes).c_str(), code.size(), code.size() == 1 ? "" : "s");
  if (a.cap > 0)
    std::fprintf(stderr, "%-28s %14s bytes  of %s: %s %s\n", "total", quant::with_commas(b.total()).c_str(),
                 quant::with_commas(b.cap).c_str(), b.fits() ? "fits," : "OVER by",
                 (b.fits() ? quant::with_commas(uint64_t(b.headroom())) + " to spare"
                           : quant::with_commas(uint64_t(-b.headroom())) + " bytes")
                     .c_str());
  for (const auto& s : f.steps)
    std::fprintf(stderr, "fit: %-8s %s bits  (+%.4g weighted error, ~%s bytes saved) -> artifact %s bytes\n",
                 s.group.c_str(), s.bits.c_str(), s.error_increase,
                 quant::with_commas(uint64_t(s.bytes_saved_estimate)).c_str(),
                 quant::with_commas(s.artifact_bytes).c_str());
  std::fprintf(stderr, "time: load %.1f s", seconds["load"].get<double>());
  if (seconds.contains("hessians"))
    std::fprintf(stderr, ", calibration %.1f s, hessians %.1f s", seconds["calibration_tokens"].get<double>(),
                 seconds["hessians"].get<double>());
  std::fprintf(stderr, ", %s %.1f s, encode %.1f s, total %.1f s (%s, %s)\n", a.method.c_str(), f.quantize_seconds,
               f.encode_seconds, seconds["total"].get<double>(), cuda ? rt.device_name.c_str() : "cpu", prec.c_str());
  if (!b.fits()) std::fprintf(stderr, "%s", quant::over_cap_report(b, f.layout).c_str());

  if (a.json) {
    nlohmann::json largest = nlohmann::json::array();
    for (const auto& t : quant::largest_tensors(f.layout, 10))
      largest.push_back({{"name", t.name},
                         {"kind", t.kind},
                         {"bits", t.bits},
                         {"dtype", t.dtype},
                         {"coding", t.coding},
                         {"stored_bytes", t.stored_bytes}});
    nlohmann::json steps = nlohmann::json::array();
    for (const auto& s : f.steps)
      steps.push_back({{"group", s.group}, {"bits", s.bits}, {"error_increase", s.error_increase},
                       {"bytes_saved_estimate", s.bytes_saved_estimate}, {"artifact_bytes", s.artifact_bytes}});
    nlohmann::json code_j = nlohmann::json::array();
    for (const auto& c : code) code_j.push_back({{"path", c.path}, {"bytes", c.bytes}});
    nlohmann::json j = {{"out", a.out},
                        {"method", a.method},
                        {"codec", a.codec},
                        {"artifact_bytes", b.artifact_bytes},
                        {"code_bytes", b.code_bytes},
                        {"code_files", code_j},
                        {"total_bytes", b.total()},
                        {"cap", b.cap},
                        {"fits", b.fits()},
                        {"headroom", b.headroom()},
                        {"header_bytes", f.layout.header_bytes},
                        {"classes", classes},
                        {"largest_tensors", largest},
                        {"fit_steps", steps},
                        {"calibration", calib},
                        {"tokenizer_fingerprint", qo.tokenizer_fingerprint},
                        {"device", cuda ? rt.device_name : "cpu"},
                        {"precision", prec},
                        {"seconds", seconds}};
    std::printf("%s\n", j.dump().c_str());
  }
  if (!b.fits())
    fail(a.out, "written, but " + quant::with_commas(uint64_t(-b.headroom())) + " bytes over the " +
                    quant::with_commas(b.cap) + "-byte cap" + (a.fit ? " even after --fit" : " (try --fit)"));
}

}  // namespace

void register_quantize_command(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "A model -> a pgolf artifact (.pgz): GPTQ or round-to-nearest, entropy-coded, under the size cap");
  cmd->add_option("--checkpoint", a->model.path,
                  "the model: pgolf checkpoint (.h5), parameter-golf .pt / .int8.ptz / .int6.ptz, or an artifact")
      ->required();
  cmd->add_option("--config", a->model.config_path, "model config JSON overriding the checkpoint's");
  cmd->add_option("--config-from-log", a->model.log_path, "reference training log: its Hyperparameters block");
  cmd->add_option("--set", a->model.sets, "override one config field: key=value (repeatable)");
  cmd->add_option("--out", a->out, "the artifact to write (.pgz)")->required();
  cmd->add_option("--calib", a->calib,
                  "calibration for GPTQ: training shards (a quoted glob), or 'self' (sequences sampled from the model)");
  cmd->add_option("--calib-batches", a->calib_batches,
                  "calibration batches (self: sequences, each counted as one batch, as the reference did)")
      ->capture_default_str();
  cmd->add_option("--calib-seq-len", a->calib_seq_len, "tokens per calibration row (default: the config's train_seq_len)");
  cmd->add_option("--calib-rows", a->calib_rows,
                  "rows per batch (default: 98,304 tokens / seq len, the reference's per-GPU batch; self: sequences "
                  "generated together, default 8)");
  cmd->add_option("--calib-seed", a->calib_seed, "calibration sampling seed (default: shards 0, self 42)");
  cmd->add_option("--temperature", a->temperature, "self calibration: sampling temperature")->capture_default_str();
  cmd->add_option("--method", a->method, "gptq or rtn (round to nearest; needs no calibration)")->capture_default_str();
  cmd->add_option("--bits", a->bits,
                  "bit widths: CLASS=BITS,... with classes matrices, attn, mlp, embed, looped, pattern:GLOB and bits "
                  "2..8 or fp16 (default: int6, tok_emb.weight int8; repeatable)");
  cmd->add_option("--clip-sigmas", a->clips,
                  "SDClip widths: CLASS=SIGMAS,... (default: 12.85, tok_emb.weight 20; repeatable)");
  cmd->add_option("--passthrough-max-numel", a->passthrough_max_numel,
                  "float tensors up to this many elements are stored as fp16")
      ->capture_default_str();
  cmd->add_option("--block", a->block, "GPTQ block size (columns)")->capture_default_str();
  cmd->add_option("--damp", a->damp, "GPTQ damping, as a fraction of mean(diag H)")->capture_default_str();
  cmd->add_option("--codec", a->codec, "value coding: auto (smallest), context (adaptive), context+linear (adaptive, predicts embedding rows), entropy (static rANS), brotli or zstd (bit-packed)")
      ->capture_default_str();
  cmd->add_option("--cap", a->cap, "size cap in bytes for artifact + code (0 = none); over it the artifact is still "
                                   "written and the exit code is 1")
      ->capture_default_str();
  cmd->add_option("--code", a->code,
                  "code files counted toward the cap, byte for byte as given (pass the form you ship, e.g. the "
                  "minified or compressed script)");
  cmd->add_flag("--fit", a->fit,
                "over the cap: lower the bits of the class that loses least Hessian-weighted error per byte saved, "
                "until it fits");
  cmd->add_option("--device", a->device, "auto, cpu or cuda (calibration forward and GPTQ)")->capture_default_str();
  cmd->add_option("--precision", a->precision, "calibration activations: bf16 (CUDA default), f32 (CPU default), f64");
  cmd->add_option("--tokenizer", a->tokenizer, "the model's SentencePiece .model: its SHA-256 goes into the artifact");
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  cmd->callback([a]() { run_quantize(*a); });
}

}  // namespace pgolf
