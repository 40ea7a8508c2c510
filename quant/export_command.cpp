// `pgolf export`: a pgolf artifact (.pgz) -> the reference's file layout, so a
// pgolf-quantized model can be checked with the parameter-golf scripts.
// Formats: int6.ptz (2026-04-10_VarLenAttn, SPEC §11; quant/reference_export.h),
// and pgz: the same artifact with its values coded again (--codec), e.g. an
// older file made smaller by the context coding, or made faster to load.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>

#include "cli/command.h"
#include "data/atomic_file.h"
#include "data/error.h"
#include "model/pch.h"
#include "quant/artifact.h"
#include "quant/model_files.h"
#include "quant/quantize.h"
#include "quant/reference_export.h"
#include "quant/size_budget.h"

namespace pgolf {

namespace {

struct ExportArgs {
  std::string in, out, format = "int6.ptz", codec;
  bool raw = false, json = false;
};

// The same quantized values, scales and raw tensors, values coded as asked.
void recode(const ExportArgs& a, quant::ValueCoding coding, const quant::Artifact& art,
            const quant::ArtifactLayout& before) {
  quant::ArtifactWriteOptions wo;
  wo.values = coding;
  quant::ArtifactLayout after;
  quant::save_artifact(a.out, art, wo, &after);
  std::map<std::string, int> codings;
  for (const auto& t : after.tensors)
    if (t.kind == "quantized") ++codings[t.coding];
  std::string used;
  for (const auto& [c, n] : codings) used += (used.empty() ? "" : ", ") + std::to_string(n) + " " + c;
  const double change = 100.0 * (double(after.file_bytes) / double(before.file_bytes) - 1.0);
  std::fprintf(stderr, "%s: %s bytes (values: %s); %s was %s bytes (%+.2f%%)\n", a.out.c_str(),
               quant::with_commas(after.file_bytes).c_str(), used.empty() ? "none" : used.c_str(), a.in.c_str(),
               quant::with_commas(before.file_bytes).c_str(), change);
  if (a.json) {
    const nlohmann::json j = {{"file", a.out},        {"input", a.in},
                              {"format", "pgz"},       {"codings", codings},
                              {"file_bytes", after.file_bytes}, {"input_bytes", before.file_bytes}};
    std::printf("%s\n", j.dump().c_str());
  }
}

void run_export(const ExportArgs& a) {
  if (a.format != "int6.ptz" && a.format != "pgz")
    throw Error("--format: unknown format '" + a.format +
                "' (supported: int6.ptz, the 2026-04-10_VarLenAttn layout; pgz, values coded again)");
  if (!a.codec.empty() && a.format != "pgz") throw Error("--codec applies to --format pgz only");
  if (a.raw && a.format != "int6.ptz") throw Error("--raw applies to --format int6.ptz only");
  const quant::ValueCoding coding = quant::parse_value_coding(a.codec.empty() ? "auto" : a.codec);  // before loading
  if (a.out == a.in) fail(a.out, "--out must differ from the input artifact");
  const ModelFileKind kind = detect_model_file(a.in);
  if (kind != ModelFileKind::Artifact)
    fail(a.in, std::string("not a pgolf artifact (it is a ") + model_file_kind_name(kind) +
                   "); export converts the .pgz files `pgolf quantize` writes");
  quant::ArtifactLayout layout;
  const quant::Artifact art = quant::load_artifact(a.in, &layout);
  if (a.format == "pgz") return recode(a, coding, art, layout);
  // The reference loads by name into its own model: check that the artifact
  // holds exactly the tensors its config implies, as evaluation would.
  const GptWeights w = quant::dequantize_artifact(art, a.in);
  quant::Int6ExportInfo info;
  std::string bytes = quant::int6_torch_save(art, a.in, &info);
  if (!a.raw) bytes = quant::int6_compress(bytes);
  info.file_bytes = bytes.size();
  write_file_atomic(a.out, bytes);

  std::map<int, int> by_bits;
  for (int b : info.bits) ++by_bits[b];
  std::string widths;
  for (const auto& [b, n] : by_bits) widths += (widths.empty() ? "" : ", ") + std::to_string(n) + " int" + std::to_string(b);
  std::fprintf(stderr,
               "%s: %s (%s): %d quantized tensors (%s) as .q int8 + .scale fp16, %d passed through\n"
               "torch.save archive %s bytes (pickle %s); file %s bytes; the .pgz is %s bytes (%.2f%% smaller)\n",
               a.out.c_str(), a.raw ? "torch.save archive of the int6.ptz layout (no byte shuffle, no brotli)"
                                    : "reference int6.ptz",
               a.in.c_str(), info.quantized, widths.empty() ? "none" : widths.c_str(), info.passthrough,
               quant::with_commas(info.torch_save_bytes).c_str(), quant::with_commas(info.pickle_bytes).c_str(),
               quant::with_commas(info.file_bytes).c_str(), quant::with_commas(layout.file_bytes).c_str(),
               100.0 * (1.0 - double(layout.file_bytes) / double(info.file_bytes)));
  for (const std::string& n : info.notes) std::fprintf(stderr, "note: %s\n", n.c_str());
  const nlohmann::json cfg = nlohmann::json::parse(art.config_json, nullptr, false);
  std::fprintf(stderr,
               "the file carries no config: run the reference with hyperparameters matching this one, and pgolf with "
               "--config (a JSON file of it) where the shapes cannot tell:\n%s\n",
               cfg.is_discarded() ? art.config_json.c_str() : cfg.dump().c_str());
  if (a.json) {
    nlohmann::json bits = nlohmann::json::object();
    for (const auto& [b, n] : by_bits) bits["int" + std::to_string(b)] = n;
    nlohmann::json j = {{"file", a.out},
                        {"input", a.in},
                        {"format", a.raw ? "int6.ptz (torch.save archive only)" : "int6.ptz"},
                        {"quantized", info.quantized},
                        {"passthrough", info.passthrough},
                        {"bits", bits},
                        {"pickle_bytes", info.pickle_bytes},
                        {"torch_save_bytes", info.torch_save_bytes},
                        {"file_bytes", info.file_bytes},
                        {"artifact_bytes", layout.file_bytes},
                        {"tensors", w.tensors.size()},
                        {"notes", info.notes},
                        {"config", cfg.is_discarded() ? nlohmann::json(art.config_json) : cfg}};
    std::printf("%s\n", j.dump().c_str());
  }
}

}  // namespace

void register_export_command(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export",
      "A pgolf artifact (.pgz) -> the reference's final_model.int6.ptz for its scripts to load, or a .pgz coded again");
  cmd->add_option("artifact", a->in, "the pgolf artifact (.pgz) to convert")->required();
  cmd->add_option("--format", a->format,
                  "target layout: int6.ptz (2026-04-10_VarLenAttn, SPEC §11), or pgz (this artifact, values coded "
                  "again with --codec)")
      ->capture_default_str();
  cmd->add_option("--codec", a->codec,
                  "with --format pgz: auto (smallest, the default), context, context+linear, entropy, brotli or zstd");
  cmd->add_option("--out", a->out, "the file to write (e.g. final_model.int6.ptz)")->required();
  cmd->add_flag("--raw", a->raw,
                "write the torch.save archive itself, without the byte shuffle and brotli (torch.load reads it "
                "directly)");
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->callback([a]() { run_export(*a); });
}

}  // namespace pgolf
