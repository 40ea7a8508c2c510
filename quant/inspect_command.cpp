// `pgolf inspect`: what a model file holds -- tensors (names, shapes, dtypes,
// bytes) and the config, for every format pgolf reads.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <sys/stat.h>

#include "cli/command.h"
#include "data/error.h"
#include "model/checkpoint.h"
#include "model/pch.h"
#include "quant/model_files.h"

namespace pgolf {

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out;
  for (int64_t v : s) out += (out.empty() ? "" : "x") + std::to_string(v);
  return out.empty() ? "scalar" : out;
}

struct Row {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t bytes;
};

void run_inspect(const std::string& path, bool json) {
  const ModelFileKind kind = detect_model_file(path);
  std::vector<Row> rows;
  std::string config_json, notes;
  if (kind == ModelFileKind::Checkpoint) {
    CheckpointInfo info = list_checkpoint(path);
    for (const CheckpointTensorInfo& t : info.tensors) rows.push_back({t.name, dtype_name(t.dtype), t.shape, t.bytes});
    config_json = info.config_json;
  } else {
    auto state = read_reference_state(path, kind);
    for (const auto& [name, t] : state)
      rows.push_back({name, std::string(c10::toString(t.scalar_type())), t.sizes().vec(), uint64_t(t.nbytes())});
    config_json = infer_config(state, path, &notes).to_json();
  }
  struct stat st {};
  ::stat(path.c_str(), &st);
  uint64_t params = 0, bytes = 0;
  nlohmann::json tensors = nlohmann::json::array();
  std::fprintf(stderr, "%s: %s\n%-44s %-14s %-10s %12s\n", path.c_str(), model_file_kind_name(kind), "tensor", "shape",
               "dtype", "bytes");
  for (const Row& r : rows) {
    uint64_t n = 1;
    for (int64_t s : r.shape) n *= uint64_t(s);
    params += n;
    bytes += r.bytes;
    std::fprintf(stderr, "%-44s %-14s %-10s %12llu\n", r.name.c_str(), shape_text(r.shape).c_str(), r.dtype.c_str(),
                 (unsigned long long)r.bytes);
    tensors.push_back({{"name", r.name}, {"shape", r.shape}, {"dtype", r.dtype}, {"bytes", r.bytes}});
  }
  std::fprintf(stderr, "%zu tensors, %llu parameters, %llu bytes of tensors (%s), file %lld bytes\nconfig%s: %s\n",
               rows.size(), (unsigned long long)params, (unsigned long long)bytes,
               kind == ModelFileKind::Checkpoint ? "as stored" : "dequantized", (long long)st.st_size,
               notes.empty() ? "" : (" (" + notes + ")").c_str(), config_json.c_str());
  if (json) {
    nlohmann::json cfg = nlohmann::json::parse(config_json, nullptr, false);
    nlohmann::json j = {{"file", path},       {"kind", model_file_kind_name(kind)}, {"tensors", tensors},
                        {"parameters", params}, {"tensor_bytes", bytes},            {"file_bytes", st.st_size},
                        {"config", cfg.is_discarded() ? nlohmann::json(config_json) : cfg}};
    if (!notes.empty()) j["config_notes"] = notes;
    std::printf("%s\n", j.dump().c_str());
  }
}

}  // namespace

void register_inspect_command(CLI::App& app) {
  auto a = std::make_shared<std::pair<std::string, bool>>();
  CLI::App* ins = app.add_subcommand("inspect", "Names, shapes, dtypes, bytes and config of a model file (.h5, .pt, .ptz)");
  ins->add_option("file", a->first, "a pgolf checkpoint or a parameter-golf final_model.pt / .int8.ptz / .int6.ptz")
      ->required();
  ins->add_flag("--json", a->second, "print one JSON object on stdout");
  ins->callback([a]() { run_inspect(a->first, a->second); });
}

}  // namespace pgolf
