// pgolf: one binary, subcommands registered by the modules that own them.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <malloc.h>

#include <c10/util/Exception.h>

#include <string>

#include "cli/command.h"
#include "data/error.h"
#include "model/distributed.h"

namespace {

// The first line of a message (libtorch's run over several).
std::string one_line(const char* what) {
  std::string s = what;
  const size_t nl = s.find_first_of("\r\n");
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}  // namespace

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
  pgolf::register_export_command(app);
  pgolf::register_train_command(app);
  pgolf::register_ttt_command(app);
  // In a multi-rank job (model/distributed.h) an error stops every rank:
  // abort_ranks tells the others and exits; finish_ranks is the orderly end.
  try {
    app.parse(argc, argv);
    pgolf::finish_ranks();
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const pgolf::Error& e) {
    std::string msg = e.what();  // one line, whatever the library said
    for (char& c : msg) if (c == '\n' || c == '\r') c = ' ';
    std::fprintf(stderr, "pgolf: error: %s%s\n", pgolf::rank_label().c_str(), msg.c_str());
    pgolf::abort_ranks(msg, 1);
    return 1;
  } catch (const c10::OutOfMemoryError& e) {
    // The job does not fit the device: the user's to change, not a bug.
    const std::string msg = "out of device memory (a smaller --batch-tokens, or --grad-accum for training, needs less): " +
                            one_line(e.what_without_backtrace());
    std::fprintf(stderr, "pgolf: error: %s%s\n", pgolf::rank_label().c_str(), msg.c_str());
    pgolf::abort_ranks(msg, 1);
    return 1;
  } catch (const c10::Error& e) {
    // libtorch's what() carries a C++ backtrace: the message alone.
    const std::string msg = one_line(e.what_without_backtrace());
    std::fprintf(stderr, "pgolf: internal error: %s%s\n", pgolf::rank_label().c_str(), msg.c_str());
    pgolf::abort_ranks(msg, 3);
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pgolf: internal error: %s%s\n", pgolf::rank_label().c_str(), e.what());
    pgolf::abort_ranks(e.what(), 3);
    return 3;
  }
  return 0;
}
