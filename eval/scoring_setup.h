// What the scoring commands (`pgolf eval`, `pgolf ttt`) share: the model's
// options, the model / tokenizer consistency check, and the device and
// precision choice with the weights placed accordingly.
#pragma once
#include <cstdint>
#include <string>

#include "data/byte_counter.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "model/gpt.h"
#include "model/model_io.h"

namespace CLI {
class App;
}

namespace pgolf {

class Tokenizer;

// --model, --config, --config-from-log, --set (defined in eval/eval_command.cpp).
void add_model_options(CLI::App* cmd, ModelSource& m);

// Throws naming tokenizer_path unless the tokenizer has the model's vocab size.
void check_model_tokenizer(const Tokenizer& tok, const std::string& tokenizer_path, const GptWeights& w);

// What `pgolf eval` and `pgolf ttt` score with: the model (its load notes on
// stderr unless quiet), its tokenizer (checked against the model's vocab), the
// validation stream (ids checked below the vocab) and its byte tables.
struct ScoringInputs {
  ScoringInputs(const ModelSource& model, const std::string& tokenizer_path, const std::vector<std::string>& val,
                bool quiet);
  GptWeights w;
  Tokenizer tok;
  ByteCounter bc;  // built after the vocab check, so a wrong tokenizer fails first
  TokenStream stream;
};

struct ScoringDevice {
  bool cuda = false;
  Precision precision = Precision::F32;
  std::string precision_name;  // bf16, f32, f64
  std::string device_name;     // the CUDA device's name, or "cpu"
};

// device: auto, cpu or cuda; precision: bf16, f32, f64 or "" (bf16 on CUDA,
// f32 on the CPU). Throws on anything else or on cuda without a device.
ScoringDevice choose_scoring_device(const std::string& device, const std::string& precision);

// Moves the weights to the device (and to float64 for f64).
void place_weights(GptWeights& w, const ScoringDevice& d);

// 1234567 -> "1,234,567".
std::string with_commas(uint64_t v);

}  // namespace pgolf
