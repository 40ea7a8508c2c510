// Each module registers its own subcommands on the pgolf application.
#pragma once

namespace CLI {
class App;
}

namespace pgolf {

void register_data_commands(CLI::App& app);   // data/data_commands.cpp
void register_env_command(CLI::App& app);     // model/runtime.cpp
void register_eval_command(CLI::App& app);    // eval/eval_command.cpp
void register_report_command(CLI::App& app);  // eval/report_command.cpp: figures of an eval --dump
void register_model_commands(CLI::App& app);  // model/model_commands.cpp: init
void register_inspect_command(CLI::App& app); // quant/inspect_command.cpp
void register_quantize_command(CLI::App& app); // quant/quantize_command.cpp: GPTQ / RTN -> artifact
void register_export_command(CLI::App& app);   // quant/export_command.cpp: artifact -> the reference's int6.ptz
void register_train_command(CLI::App& app);   // cli/train_command.cpp (model training + eval validation)
void register_ttt_command(CLI::App& app);     // ttt/ttt_command.cpp

}  // namespace pgolf
