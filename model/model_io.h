// Getting a model into memory: from a pgolf checkpoint (.h5), with the config
// it carries overridden by a config file, a reference training log and
// `--set key=value` assignments, in that order. And writing checkpoints.
#pragma once
#include <string>
#include <vector>

#include "model/gpt.h"

namespace pgolf {

struct ModelSource {
  std::string path;                 // .h5 checkpoint
  std::string config_path;          // --config FILE (JSON), optional
  std::string log_path;             // --config-from-log train.log, optional
  std::vector<std::string> sets;    // --set key=value, applied last
};

// Loads, validates the config, checks every tensor against it; one-line
// errors naming the file. Tensors stay in their stored dtypes, on the CPU.
GptWeights load_model(const ModelSource& src);
// Applies the overrides of src to cfg (used by load_model and by commands
// that build a config without a checkpoint, like `pgolf train`).
ModelConfig apply_config_overrides(ModelConfig cfg, const ModelSource& src);

// Atomic HDF5 checkpoint of the weights (their dtypes) and config.
void save_checkpoint(const std::string& path, const GptWeights& w);

}  // namespace pgolf
