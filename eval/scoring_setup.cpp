#include "eval/scoring_setup.h"

#include <cstdio>

#include "data/error.h"
#include "quant/model_files.h"
#include "data/tokenizer.h"
#include "model/pch.h"
#include "model/runtime.h"

namespace pgolf {

void check_model_tokenizer(const Tokenizer& tok, const std::string& tokenizer_path, const GptWeights& w) {
  if (tok.vocab_size() != w.config.vocab_size)
    fail(tokenizer_path, "tokenizer has " + std::to_string(tok.vocab_size()) + " pieces but the model's vocab_size is " +
                             std::to_string(w.config.vocab_size) + ": not the model's tokenizer");
}

namespace {
GptWeights load_noting(const ModelSource& model, bool quiet) {
  std::string notes;
  GptWeights w = load_model_file(model, &notes);
  if (!notes.empty() && !quiet) std::fprintf(stderr, "%s: %s\n", model.path.c_str(), notes.c_str());
  return w;
}
const Tokenizer& vocab_checked(const Tokenizer& tok, const std::string& path, const GptWeights& w) {
  check_model_tokenizer(tok, path, w);
  return tok;
}
}  // namespace

ScoringInputs::ScoringInputs(const ModelSource& model, const std::string& tokenizer_path,
                             const std::vector<std::string>& val, bool quiet)
    : w(load_noting(model, quiet)),
      tok(tokenizer_path),
      bc(vocab_checked(tok, tokenizer_path, w), w.config.vocab_size),
      stream(val) {
  stream.check_ids_below(uint32_t(w.config.vocab_size), "the model (vocab_size)");
}

ScoringDevice choose_scoring_device(const std::string& device, const std::string& precision) {
  if (device != "auto" && device != "cpu" && device != "cuda") throw Error("--device must be auto, cpu or cuda");
  const RuntimeInfo rt = runtime_info();
  if (device == "cuda" && !rt.cuda) throw Error("--device cuda: no CUDA device is available");
  ScoringDevice d;
  d.cuda = device == "cuda" || (device == "auto" && rt.cuda);
  d.device_name = d.cuda ? rt.device_name : "cpu";
  d.precision_name = precision.empty() ? (d.cuda ? "bf16" : "f32") : precision;
  if (d.precision_name == "bf16") d.precision = Precision::BF16;
  else if (d.precision_name == "f32") d.precision = Precision::F32;
  else if (d.precision_name == "f64") d.precision = Precision::F64;
  else throw Error("--precision must be bf16, f32 or f64");
  return d;
}

void place_weights(GptWeights& w, const ScoringDevice& d) {
  if (d.cuda)
    for (auto& [n, t] : w.tensors) t = t.to(at::kCUDA);
  if (d.precision == Precision::F64)
    for (auto& [n, t] : w.tensors) t = t.to(at::kDouble);
}

std::string with_commas(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

}  // namespace pgolf
