#include "quant/quant_policy.h"

#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf::quant {

namespace {

const std::string kPattern = "pattern:";

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

int specificity(const std::string& target) {
  if (starts_with(target, kPattern)) return 3;
  if (target == "looped") return 2;
  if (target == "matrices") return 0;
  return 1;
}

// "key=value,key=value" -> rules; `value_of` parses (and range-checks) one value.
template <class F>
std::vector<PolicyRule> parse_rules(const std::string& spec, const std::string& flag, F value_of) {
  std::vector<PolicyRule> out;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string item = trim(spec.substr(pos, comma - pos));
    pos = comma + 1;
    if (item.empty()) fail(flag, "empty entry in '" + spec + "' (expected CLASS=VALUE, comma-separated)");
    const size_t eq = item.rfind('=');
    if (eq == std::string::npos) fail(flag, "'" + item + "' is not CLASS=VALUE");
    PolicyRule r;
    r.target = trim(item.substr(0, eq));
    if (starts_with(r.target, kPattern)) {
      if (r.target.size() == kPattern.size()) fail(flag, "'" + item + "': empty pattern");
    } else {
      const auto& cls = policy_classes();
      if (std::find(cls.begin(), cls.end(), r.target) == cls.end())
        fail(flag, "unknown class '" + r.target + "' (classes: matrices, attn, mlp, embed, looped, pattern:GLOB)");
    }
    r.value = value_of(trim(item.substr(eq + 1)), item);
    out.push_back(r);
  }
  return out;
}

std::set<int> looped_layers(const ModelConfig& cfg) {
  std::map<int, int> count;
  for (int l : cfg.layer_sequence(true)) ++count[l];
  std::set<int> out;
  for (const auto& [l, c] : count)
    if (c > 1) out.insert(l);
  return out;
}

// "blocks.N.<rest>" -> N and rest; false otherwise.
bool block_tensor(const std::string& name, int* layer, std::string* rest) {
  if (!starts_with(name, "blocks.")) return false;
  const size_t dot = name.find('.', 7);
  if (dot == std::string::npos || dot == 7) return false;
  const std::string num = name.substr(7, dot - 7);
  if (num.find_first_not_of("0123456789") != std::string::npos) return false;
  *layer = std::atoi(num.c_str());
  *rest = name.substr(dot + 1);
  return true;
}

bool rule_matches(const PolicyRule& r, const std::string& name, const std::vector<std::string>& classes) {
  if (starts_with(r.target, kPattern))
    return fnmatch(r.target.c_str() + kPattern.size(), name.c_str(), 0) == 0;
  return std::find(classes.begin(), classes.end(), r.target) != classes.end();
}

// Rules in application order: by specificity, stable.
std::vector<PolicyRule> ordered(std::vector<PolicyRule> rules) {
  std::stable_sort(rules.begin(), rules.end(),
                   [](const PolicyRule& a, const PolicyRule& b) { return specificity(a.target) < specificity(b.target); });
  return rules;
}

}  // namespace

const std::vector<std::string>& policy_classes() {
  static const std::vector<std::string> c = {"matrices", "attn", "mlp", "embed", "looped"};
  return c;
}

void QuantPolicy::add_bits(const std::string& spec, const std::string& flag) {
  auto rules = parse_rules(spec, flag, [&](const std::string& v, const std::string& item) -> double {
    if (v == "fp16") return 0;
    char* end = nullptr;
    const long b = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0') fail(flag, "'" + item + "': bits must be an integer in 2..8 or fp16");
    if (b < 2 || b > 8) fail(flag, "'" + item + "': bits must be in 2..8 (or fp16), got " + v);
    return double(b);
  });
  bits.insert(bits.end(), rules.begin(), rules.end());
}

void QuantPolicy::add_clip_sigmas(const std::string& spec, const std::string& flag) {
  auto rules = parse_rules(spec, flag, [&](const std::string& v, const std::string& item) -> double {
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !std::isfinite(x)) fail(flag, "'" + item + "': not a number");
    if (x <= 0) fail(flag, "'" + item + "': clip sigmas must be positive");
    return x;
  });
  clip_sigmas.insert(clip_sigmas.end(), rules.begin(), rules.end());
}

std::vector<std::string> tensor_classes(const std::string& name, const ModelConfig& cfg) {
  if (name == "tok_emb.weight" || name == "lm_head.weight" || name == "embed_proj.weight" ||
      name == "head_proj.weight")
    return {"embed"};
  int layer = 0;
  std::string rest;
  if (!block_tensor(name, &layer, &rest)) return {};
  std::vector<std::string> out;
  if (rest == "attn.c_q.weight" || rest == "attn.c_k.weight" || rest == "attn.c_v.weight" ||
      rest == "attn.proj.weight")
    out = {"matrices", "attn"};
  else if (rest == "mlp.fc.weight" || rest == "mlp.proj.weight")
    out = {"matrices", "mlp"};
  else
    return {};
  if (looped_layers(cfg).count(layer)) out.push_back("looped");
  return out;
}

std::string report_group(const std::string& name, const ModelConfig& cfg) {
  const auto c = tensor_classes(name, cfg);
  for (const char* g : {"embed", "looped", "attn", "mlp"})
    if (std::find(c.begin(), c.end(), g) != c.end()) return g;
  return "other";
}

const char* tensor_action_name(TensorAction a) {
  switch (a) {
    case TensorAction::Quantize: return "quantize";
    case TensorAction::Float16: return "fp16";
    case TensorAction::Keep: return "keep";
  }
  return "?";
}

std::vector<TensorPlan> plan_tensors(const GptWeights& w, const QuantPolicy& p) {
  const std::vector<PolicyRule> bits = ordered(p.bits), clips = ordered(p.clip_sigmas);
  std::set<std::string> unused;
  for (const auto* rules : {&bits, &clips})
    for (const PolicyRule& r : *rules)
      if (starts_with(r.target, kPattern)) unused.insert(r.target);
  std::vector<TensorPlan> out;
  for (const auto& [name, t] : w.tensors) {
    TensorPlan tp;
    tp.name = name;
    tp.group = report_group(name, w.config);
    const auto classes = tensor_classes(name, w.config);
    for (const auto* rules : {&bits, &clips})
      for (const PolicyRule& r : *rules)
        if (rule_matches(r, name, classes)) unused.erase(r.target);
    if (!at::isFloatingType(t.scalar_type())) {
      tp.action = TensorAction::Keep;
    } else if (t.numel() <= p.passthrough_max_numel) {
      tp.action = TensorAction::Float16;
    } else {
      const bool emb = name.find("tok_emb") != std::string::npos;  // the reference's test
      double b = emb ? 8 : 6, cs = emb ? 20.0 : 12.85;
      for (const PolicyRule& r : bits)
        if (rule_matches(r, name, classes)) b = r.value;
      for (const PolicyRule& r : clips)
        if (rule_matches(r, name, classes)) cs = r.value;
      // Per-row scales need a matrix; anything else too large to pass through stays fp16.
      tp.action = b == 0 || t.dim() != 2 ? TensorAction::Float16 : TensorAction::Quantize;
      if (tp.action == TensorAction::Quantize) {
        tp.bits = int(b);
        tp.clip_sigmas = cs;
      }
    }
    out.push_back(tp);
  }
  if (!unused.empty()) throw Error("quantize: " + *unused.begin() + " matches no tensor of the model");
  return out;
}

}  // namespace pgolf::quant
