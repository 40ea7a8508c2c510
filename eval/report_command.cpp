// `pgolf report DUMP.h5 [--out PREFIX]`: the figures and the summary of an
// eval or TTT dump (eval/report.h).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>

#include "cli/command.h"
#include "eval/report.h"

namespace pgolf {

namespace {

struct ReportArgs {
  std::string dump, out;
  bool json = false;
};

void run_report(const ReportArgs& a) {
  const Report r = write_report(a.dump, a.out.empty() ? default_report_prefix(a.dump) : a.out);
  std::fputs(r.summary.c_str(), stderr);
  if (!a.json) return;
  nlohmann::json buckets = nlohmann::json::array(), gains = nlohmann::json::array();
  for (const LengthBucket& b : r.buckets)
    buckets.push_back({{"min_length", b.lo}, {"max_length", b.hi}, {"docs", b.docs}, {"bytes", b.bytes},
                       {"bpb", b.bpb()}});
  for (const ChunkGain& g : r.gains)
    gains.push_back({{"index", g.index}, {"chunks", g.chunks}, {"gain_bpb", g.gain_bpb()}});
  nlohmann::json j = {{"dump", a.dump},           {"kind", r.dump.kind},   {"bpb", r.dump.bpb},
                      {"bpb_stderr", r.dump.bpb_stderr}, {"buckets", buckets}, {"chunk_gains", gains},
                      {"files", r.files}};
  std::printf("%s\n", j.dump().c_str());
}

}  // namespace

void register_report_command(CLI::App& app) {
  auto a = std::make_shared<ReportArgs>();
  CLI::App* cmd = app.add_subcommand("report", "Figures (SVG) and a summary of an eval or TTT dump (eval --dump)");
  cmd->add_option("dump", a->dump, "the dump: an HDF5 file written by pgolf eval --dump")->required();
  cmd->add_option("--out", a->out, "output prefix: PREFIX_docs.svg, PREFIX_ttt_gain.svg (default: the dump's path without .h5)");
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->callback([a]() { run_report(*a); });
}

}  // namespace pgolf
