// Which tensors are quantized, with how many bits and which SDClip width.
//
// Classes a rule can name (tensor names are the reference's unbanked ones):
//   attn      blocks.N.attn.{c_q,c_k,c_v,proj}.weight
//   mlp       blocks.N.mlp.{fc,proj}.weight
//   matrices  attn and mlp: every block matrix
//   embed     tok_emb.weight, lm_head.weight, embed_proj.weight, head_proj.weight
//   looped    the block matrices of layers the forward runs more than once
//             (depth recurrence: ModelConfig::layer_sequence)
//   pattern:GLOB  tensors whose name matches the shell glob (fnmatch)
//
// Defaults are the reference's (2026-04-10_VarLenAttn, gptq_mixed_quantize):
// float tensors with more than 65,536 elements are quantized, int6 with clip
// sigmas 12.85, except tok_emb.weight: int8 with clip sigmas 20 (the
// reference keys on the name "tok_emb", so lm_head / embed_proj / head_proj
// get the matrix settings); smaller float tensors are stored as fp16 and
// non-float tensors as they are.
//
// Rules override the defaults; among rules the more specific wins: matrices,
// then attn / mlp / embed, then looped, then patterns; equal specificity:
// the later rule.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/gpt.h"

namespace pgolf::quant {

struct PolicyRule {
  std::string target;  // a class name, or "pattern:GLOB"
  double value = 0;    // bits (2..8; 0 = keep as fp16) or clip sigmas (> 0)
};

struct QuantPolicy {
  std::vector<PolicyRule> bits;
  std::vector<PolicyRule> clip_sigmas;
  int64_t passthrough_max_numel = 65536;  // float tensors up to this size are stored as fp16

  // "matrices=6,embed=8,pattern:blocks.0.*=8" (bits 2..8, or "fp16" to keep
  // a tensor unquantized) and "matrices=12.85,embed=20". Errors name `flag`.
  void add_bits(const std::string& spec, const std::string& flag = "--bits");
  void add_clip_sigmas(const std::string& spec, const std::string& flag = "--clip-sigmas");
};

// The class names a rule may use, in specificity order.
const std::vector<std::string>& policy_classes();
// The classes `name` belongs to under `cfg` (empty for control tensors).
std::vector<std::string> tensor_classes(const std::string& name, const ModelConfig& cfg);
// One class per tensor for reports and --fit: embed, looped, attn, mlp or
// other (a tensor in looped is reported there, not in attn / mlp).
std::string report_group(const std::string& name, const ModelConfig& cfg);

enum class TensorAction { Quantize, Float16, Keep };
const char* tensor_action_name(TensorAction a);  // "quantize" | "fp16" | "keep"

struct TensorPlan {
  std::string name;
  std::string group;  // report_group
  TensorAction action = TensorAction::Keep;
  int bits = 0;              // Quantize only
  double clip_sigmas = 0;    // Quantize only
};

// Every tensor of w (name order) with what happens to it. A pattern that
// matches no tensor is an error (a typo would otherwise pass silently).
std::vector<TensorPlan> plan_tensors(const GptWeights& w, const QuantPolicy& p);

}  // namespace pgolf::quant
