// `pgolf init`: a freshly initialised model, as training starts from it.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>

#include "cli/command.h"
#include "data/error.h"
#include "model/model_io.h"
#include "model/pch.h"

namespace pgolf {

namespace {

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

}

}  // namespace pgolf
