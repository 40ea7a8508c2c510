// pgolf: one binary, subcommands registered by the modules that own them.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "cli/command.h"
#include "data/error.h"

int main(int argc, char** argv) {
  CLI::App app{"pgolf: parameter-golf evaluation, quantization and test-time training"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("pgolf ") + PGOLF_VERSION);
  pgolf::register_data_commands(app);
  pgolf::register_env_command(app);
  pgolf::register_eval_command(app);
  pgolf::register_model_commands(app);
  pgolf::register_inspect_command(app);
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
