// `pgolf init` (a freshly initialised model) and `pgolf inspect` (what a
// model file holds).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>

#include "cli/command.h"
#include "data/error.h"
#include "model/checkpoint.h"
#include "model/model_io.h"
#include "model/pch.h"

namespace pgolf {

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out;
  for (int64_t v : s) out += (out.empty() ? "" : "x") + std::to_string(v);
  return out.empty() ? "scalar" : out;
}

struct InitArgs {
  ModelSource src;  // path unused; config overrides only
  std::string preset = "baseline", out;
  uint64_t seed = 1337;
};

void run_init(const InitArgs& a) {
  ModelConfig base;
  if (a.preset == "baseline") base = ModelConfig::baseline();
  else if (a.preset == "frontier") base = ModelConfig::frontier();
  else throw Error("--preset must be baseline or frontier");
  ModelConfig cfg = apply_config_overrides(base, a.src);
  GptWeights w = init_gpt_weights(cfg, a.seed);
  save_checkpoint(a.out, w);
  int64_t n = 0;
  for (const auto& [name, t] : w.tensors) n += t.numel();
  std::fprintf(stderr, "%s: %zu tensors, %lld parameters (seed %llu)\n", a.out.c_str(), w.tensors.size(), (long long)n,
               (unsigned long long)a.seed);
}

void run_inspect(const std::string& path, bool json) {
  CheckpointInfo info = list_checkpoint(path);
  uint64_t params = 0, bytes = 0;
  nlohmann::json tensors = nlohmann::json::array();
  std::fprintf(stderr, "%-44s %-12s %-10s %12s\n", "tensor", "shape", "dtype", "bytes");
  for (const CheckpointTensorInfo& t : info.tensors) {
    uint64_t n = 1;
    for (int64_t s : t.shape) n *= uint64_t(s);
    params += n;
    bytes += t.bytes;
    std::fprintf(stderr, "%-44s %-12s %-10s %12llu\n", t.name.c_str(), shape_text(t.shape).c_str(), dtype_name(t.dtype),
                 (unsigned long long)t.bytes);
    tensors.push_back({{"name", t.name}, {"shape", t.shape}, {"dtype", dtype_name(t.dtype)}, {"bytes", t.bytes}});
  }
  std::fprintf(stderr, "%zu tensors, %llu parameters, %llu bytes of tensor data, file %llu bytes\nconfig: %s\n",
               info.tensors.size(), (unsigned long long)params, (unsigned long long)bytes,
               (unsigned long long)info.file_bytes, info.config_json.c_str());
  if (json) {
    nlohmann::json cfg = nlohmann::json::parse(info.config_json, nullptr, false);
    std::printf("%s\n", nlohmann::json({{"file", path},
                                        {"format", kCheckpointFormat},
                                        {"tensors", tensors},
                                        {"parameters", params},
                                        {"tensor_bytes", bytes},
                                        {"file_bytes", info.file_bytes},
                                        {"config", cfg.is_discarded() ? nlohmann::json(info.config_json) : cfg}})
                            .dump()
                            .c_str());
  }
}

}  // namespace

void register_model_commands(CLI::App& app) {
  auto a = std::make_shared<InitArgs>();
  CLI::App* init = app.add_subcommand("init", "Write a freshly initialised model (the reference's init) as a checkpoint");
  init->add_option("--preset", a->preset, "baseline or frontier")->capture_default_str();
  init->add_option("--config", a->src.config_path, "model config JSON applied over the preset");
  init->add_option("--config-from-log", a->src.log_path, "reference training log: its Hyperparameters block");
  init->add_option("--set", a->src.sets, "override one config field: key=value (repeatable)");
  init->add_option("--seed", a->seed, "initialisation seed")->capture_default_str();
  init->add_option("--out", a->out, "checkpoint to write (.h5)")->required();
  init->callback([a]() { run_init(*a); });

  auto path = std::make_shared<std::pair<std::string, bool>>();
  CLI::App* ins = app.add_subcommand("inspect", "Names, shapes, dtypes, bytes and config of a model file");
  ins->add_option("file", path->first, "a pgolf checkpoint (.h5)")->required();
  ins->add_flag("--json", path->second, "print one JSON object on stdout");
  ins->callback([path]() { run_inspect(path->first, path->second); });
}

}  // namespace pgolf
