// pgolf: one binary, subcommands registered by the modules that own them.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <malloc.h>

#include "cli/command.h"
#include "data/error.h"

int main(int argc, char** argv) {
  // Tensors of tens of MB are allocated and freed every step; keep them in the
  // heap instead of fresh mmaps (page faults otherwise dominate on the CPU).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{"pgolf: parameter-golf evaluation, quantization and test-time training"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("pgolf ") + PGOLF_VERSION);
  pgolf::register_data_commands(app);
  pgolf::register_env_command(app);
  pgolf::register_eval_command(app);
  pgolf::register_report_command(app);
  pgolf::register_model_commands(app);
  pgolf::register_inspect_command(app);
  pgolf::register_quantize_command(app);
  pgolf::register_train_command(app);
  pgolf::register_ttt_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const pgolf::Error& e) {
    std::string msg = e.what();  // one line, whatever the library said
    for (char& c : msg) if (c == '\n' || c == '\r') c = ' ';
    std::fprintf(stderr, "pgolf: error: %s\n", msg.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pgolf: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
