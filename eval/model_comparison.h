// Quantization quality as llama.cpp's `perplexity --kl-divergence` measures
// it: a model (say a quantized artifact) and a reference (the float
// checkpoint) run over the same window plan as `pgolf eval`, and at every
// scored target the two next-token distributions are compared:
//   KL(P_ref || P_model) = sum_v P_ref(v) (log P_ref(v) - log P_model(v)),
// with P = softmax of the softcapped logits (the distribution whose
// -log P(target) is the NLL the evaluator scores), log-softmax and the sum in
// float64; top-1 agreement: argmax of the two logit rows equal (ties go to
// the lower id). Both models' bpb come from the same targets and bytes.
//
// Memory: logits exist one chunk of rows at a time (per batch, the models'
// head inputs [scored, E] are kept, not [scored, V]); every target's KL is
// kept as a float32 (4 bytes per target per compared model) so that
// percentiles are exact over those values.
//
// Per class (`eval --per-class`): for every report group of the reference's
// tensors (quant/quant_policy.h: embed, looped, attn, mlp, other), the
// reference with only that group's tensors taken from the model. With the
// model a .pgz and the reference the checkpoint it was quantized from, this is
// quantizing one class at a time with the shipped values (pgolf's GPTQ takes
// every Hessian from the float model, so a tensor's quantization does not
// depend on the others').
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/evaluator.h"
#include "eval/scoring_setup.h"
#include "model/gpt.h"

namespace pgolf {

struct ComparisonResult {
  EvalResult model, reference;  // the same targets, windows and bytes for both
  double kl_sum = 0;            // nats, over scored targets (repeats included, as bpb counts them)
  double kl_max = 0;
  uint64_t top1_agree = 0;      // targets where the two argmax ids agree
  std::vector<float> kl;        // every scored target's KL, in plan order

  double kl_mean() const { return model.targets ? kl_sum / double(model.targets) : 0.0; }
  // The p-quantile (0 <= p <= 1) of the per-target KL: linear interpolation
  // between order statistics (numpy's default), p = 0.99 for the p99.
  double kl_quantile(double p) const;
  double top1_agreement() const { return model.targets ? double(top1_agree) / double(model.targets) : 0.0; }
  double delta_bpb() const { return model.bpb() - reference.bpb(); }
  // Standard error of delta_bpb, paired by document (ratio estimator over
  // per-document NLL differences, as EvalResult::bpb_stderr).
  double delta_bpb_stderr() const;
  void add(const ComparisonResult& other);  // reduction across ranks
};

// Throws a one-line pgolf::Error unless the two can be compared: the same
// vocab_size (the same tokenizer is checked by the caller). model_name and
// reference_name name them in the message.
void check_comparable(const GptWeights& model, const GptWeights& reference, const std::string& model_name,
                      const std::string& reference_name);

// Every model against the reference over the plan of `opt` (capture_targets is
// ignored). The reference runs once per batch whatever the number of models.
// All weights on one device, in the precision's form (place_weights).
std::vector<ComparisonResult> compare_models(const GptWeights& reference, const std::vector<const GptWeights*>& models,
                                             const TokenStream& stream, const ByteCounter& bytes,
                                             const EvalOptions& opt);

// One report group's substitution for --per-class.
struct ClassSubstitution {
  std::string group;           // embed, looped, attn, mlp or other
  std::vector<std::string> tensors;  // the group's tensors (name order)
  size_t changed = 0;          // of them, those whose values differ between the two models
  uint64_t params = 0;         // elements of the group's tensors
  GptWeights weights;          // the reference with the group's tensors from the model
};

// One entry per report group present, in the order embed, looped, attn, mlp,
// other. The two must have the same config (a one-line error names the first
// differing field); tensors are shared, not copied.
std::vector<ClassSubstitution> per_class_substitutions(const GptWeights& model, const GptWeights& reference,
                                                       const std::string& model_name,
                                                       const std::string& reference_name);

// `pgolf eval --compare-to`: loads the reference, checks it, runs the
// comparison (with --per-class, a row per group) and prints the table on
// stderr and, with json, one object on stdout. `model` is already placed on
// `device` / the precision's form (eval_command.cpp did it).
struct CompareCommand {
  std::string model_path, reference_path, tokenizer_path;
  bool per_class = false, json = false, quiet = false;
};
void run_model_comparison(const CompareCommand& cmd, const GptWeights& model, const ModelSource& reference_source,
                          const Tokenizer& tok, const TokenStream& stream, const ByteCounter& bytes,
                          const ScoringDevice& device, const EvalOptions& opt);

}  // namespace pgolf
