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
#include "quant/artifact.h"
#include "quant/codec.h"
#include "quant/model_files.h"
#include "quant/size_budget.h"

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

// A pgolf artifact: per tensor its bits, coding, raw and stored bytes, the
// order-0 entropy floor of its values; totals against the cap.
// The same values in the reference's layout (SPEC §11): int8 bytes per value,
// fp16 scales, raw tensors as stored, concatenated in tensor order (the
// pickle's framing, a few KB, left out), byte-shuffled at stride 2, brotli
// quality 11. What pgolf's format is measured against.
uint64_t reference_layout_bytes(const quant::Artifact& a) {
  std::string raw;
  for (const quant::ArtifactTensor& t : a.tensors) {
    if (t.kind == quant::ArtifactTensor::Kind::Quantized) {
      raw.append(reinterpret_cast<const char*>(t.values.data()), t.values.size());
      raw.append(reinterpret_cast<const char*>(t.scales.data()), t.scales.size() * 2);
    } else {
      raw += t.data;
    }
  }
  return quant::compress(quant::byte_shuffle(raw, 2), quant::Codec::Brotli).size();
}

void inspect_artifact(const std::string& path, bool json, uint64_t cap, const std::vector<std::string>& code,
                      bool reference_layout) {
  quant::ArtifactLayout layout;
  const quant::Artifact a = quant::load_artifact(path, &layout);
  quant::SizeBudget budget;
  budget.artifact_bytes = layout.file_bytes;
  for (const quant::CodeFile& f : quant::code_files(code)) budget.code_bytes += f.bytes;
  budget.cap = cap;
  std::fprintf(stderr, "%s: pgolf artifact, %zu tensors\n%-40s %-12s %-5s %-16s %12s %12s %9s\n", path.c_str(),
               a.tensors.size(), "tensor", "shape", "bits", "coding", "raw bytes", "stored", "H0 bytes");
  nlohmann::json tensors = nlohmann::json::array();
  uint64_t raw = 0, stored = 0;
  double floor_bits = 0;
  for (const quant::ArtifactTensorLayout& t : layout.tensors) {
    const std::string bits = t.kind == "quantized" ? "int" + std::to_string(t.bits) : t.dtype;
    std::fprintf(stderr, "%-40s %-12s %-5s %-16s %12s %12s %9s\n", t.name.c_str(), shape_text(t.shape).c_str(),
                 bits.c_str(), t.coding.c_str(), quant::with_commas(t.raw_bytes).c_str(),
                 quant::with_commas(t.stored_bytes).c_str(),
                 t.kind == "quantized" ? quant::with_commas(uint64_t(t.entropy_bits / 8)).c_str() : "-");
    raw += t.raw_bytes;
    stored += t.stored_bytes;
    floor_bits += t.entropy_bits;
    tensors.push_back({{"name", t.name}, {"shape", t.shape}, {"kind", t.kind}, {"bits", t.bits}, {"dtype", t.dtype},
                       {"coding", t.coding}, {"raw_bytes", t.raw_bytes}, {"stored_bytes", t.stored_bytes},
                       {"entropy_bits", t.entropy_bits}});
  }
  std::fprintf(stderr,
               "tensors: %s raw bytes -> %s stored; header + JSON %s; file %s bytes\n"
               "order-0 entropy of the quantized values: %s bytes\n"
               "total %s = artifact %s + code %s; cap %s: %s\n",
               quant::with_commas(raw).c_str(), quant::with_commas(stored).c_str(),
               quant::with_commas(layout.header_bytes).c_str(), quant::with_commas(layout.file_bytes).c_str(),
               quant::with_commas(uint64_t(floor_bits / 8)).c_str(), quant::with_commas(budget.total()).c_str(),
               quant::with_commas(budget.artifact_bytes).c_str(), quant::with_commas(budget.code_bytes).c_str(),
               cap ? quant::with_commas(cap).c_str() : "none",
               budget.fits() ? ("fits, " + quant::with_commas(uint64_t(budget.headroom())) + " bytes to spare").c_str()
                             : ("over by " + quant::with_commas(uint64_t(-budget.headroom())) + " bytes").c_str());
  uint64_t ref_bytes = 0;
  if (reference_layout) {
    ref_bytes = reference_layout_bytes(a);
    std::fprintf(stderr, "reference layout (int8 values + fp16 scales, BSHF, brotli-11): %s bytes; pgolf %s bytes = %.2f%% smaller\n",
                 quant::with_commas(ref_bytes).c_str(), quant::with_commas(layout.file_bytes).c_str(),
                 100.0 * (1.0 - double(layout.file_bytes) / double(ref_bytes)));
  }
  if (json) {
    nlohmann::json cfg = nlohmann::json::parse(a.config_json, nullptr, false);
    nlohmann::json meta = nlohmann::json::parse(a.meta_json, nullptr, false);
    nlohmann::json j = {{"file", path}, {"kind", "pgolf artifact"}, {"tensors", tensors},
                        {"file_bytes", layout.file_bytes}, {"header_bytes", layout.header_bytes},
                        {"code_bytes", budget.code_bytes}, {"total_bytes", budget.total()}, {"cap", cap},
                        {"fits", budget.fits()}, {"entropy_floor_bytes", floor_bits / 8},
                        {"tokenizer_fingerprint", a.tokenizer_fingerprint},
                        {"config", cfg.is_discarded() ? nlohmann::json(a.config_json) : cfg},
                        {"meta", meta.is_discarded() ? nlohmann::json(a.meta_json) : meta}};
    if (reference_layout) j["reference_layout_bytes"] = ref_bytes;
    std::printf("%s\n", j.dump().c_str());
  }
}

void run_inspect(const std::string& path, bool json, uint64_t cap, const std::vector<std::string>& code,
                 bool reference_layout) {
  const ModelFileKind kind = detect_model_file(path);
  if (kind == ModelFileKind::Artifact) return inspect_artifact(path, json, cap, code, reference_layout);
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
  struct Args {
    std::string file;
    bool json = false;
    uint64_t cap = quant::kDefaultCap;
    std::vector<std::string> code;
    bool reference_layout = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* ins =
      app.add_subcommand("inspect", "Names, shapes, dtypes, bytes and config of a model file (.h5, .pt, .ptz, .pgz)");
  ins->add_option("file", a->file,
                  "a pgolf checkpoint or artifact, or a parameter-golf final_model.pt / .int8.ptz / .int6.ptz")
      ->required();
  ins->add_flag("--json", a->json, "print one JSON object on stdout");
  ins->add_option("--cap", a->cap, "artifacts: the size cap in bytes (0 = none)")->capture_default_str();
  ins->add_option("--code", a->code, "artifacts: code files counted against the cap, byte for byte as given");
  ins->add_flag("--reference-layout", a->reference_layout,
                "artifacts: also size the same values in the reference's layout (int8 + BSHF + brotli-11; slow)");
  ins->callback([a]() { run_inspect(a->file, a->json, a->cap, a->code, a->reference_layout); });
}

}  // namespace pgolf
