#include "model/config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>

#include "data/error.h"

namespace pgolf {

namespace {

using Json = nlohmann::json;

[[noreturn]] void bad(const std::string& msg) { throw Error("config: " + msg); }

// One row per field: how to read it from JSON / text and write it to JSON.
struct Field {
  const char* name;
  std::function<void(ModelConfig&, const Json&)> from_json;
  std::function<Json(const ModelConfig&)> to_json;
  std::function<Json(const std::string&)> parse;  // text (a --set value or a log value) -> JSON
};

Json parse_int(const std::string& s) {
  size_t pos = 0;
  long long v = 0;
  try { v = std::stoll(s, &pos); } catch (...) { pos = 0; }
  if (pos == 0 || pos != s.size()) throw Error("not an integer: '" + s + "'");
  return v;
}
Json parse_double(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try { v = std::stod(s, &pos); } catch (...) { pos = 0; }
  if (pos == 0 || pos != s.size()) throw Error("not a number: '" + s + "'");
  return v;
}
Json parse_bool(const std::string& s) {
  if (s == "1" || s == "true" || s == "True") return true;
  if (s == "0" || s == "false" || s == "False") return false;
  throw Error("not a boolean: '" + s + "'");
}
Json parse_int_list(const std::string& s) {
  Json a = Json::array();
  std::string t = s;
  for (char& c : t)
    if (c == '[' || c == ']' || c == ',') c = ' ';
  std::istringstream in(t);
  for (std::string item; in >> item;) a.push_back(parse_int(item));
  return a;
}

template <class T>
Field scalar(const char* name, T ModelConfig::*member, std::function<Json(const std::string&)> parse) {
  return {name,
          [member, name](ModelConfig& c, const Json& j) {
            try {
              if constexpr (std::is_same_v<T, bool>) {
                if (!j.is_boolean()) throw 0;
              } else if constexpr (std::is_same_v<T, int>) {
                if (!j.is_number_integer()) throw 0;
              } else if constexpr (std::is_same_v<T, double>) {
                if (!j.is_number()) throw 0;
              } else {
                if (!j.is_string()) throw 0;
              }
              c.*member = j.get<T>();
            } catch (...) {
              bad(std::string("field ") + name + " has the wrong type (" + j.dump() + ")");
            }
          },
          [member](const ModelConfig& c) { return Json(c.*member); }, std::move(parse)};
}

const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      scalar("vocab_size", &ModelConfig::vocab_size, parse_int),
      scalar("num_layers", &ModelConfig::num_layers, parse_int),
      scalar("model_dim", &ModelConfig::model_dim, parse_int),
      scalar("embedding_dim", &ModelConfig::embedding_dim, parse_int),
      scalar("num_heads", &ModelConfig::num_heads, parse_int),
      scalar("num_kv_heads", &ModelConfig::num_kv_heads, parse_int),
      scalar("mlp_mult", &ModelConfig::mlp_mult, parse_double),
      scalar("mlp_activation", &ModelConfig::mlp_activation, [](const std::string& s) { return Json(s); }),
      scalar("mlp_leaky_slope", &ModelConfig::mlp_leaky_slope, parse_double),
      scalar("tie_embeddings", &ModelConfig::tie_embeddings, parse_bool),
      scalar("logit_softcap", &ModelConfig::logit_softcap, parse_double),
      scalar("rope_base", &ModelConfig::rope_base, parse_double),
      scalar("rope_dims", &ModelConfig::rope_dims, parse_int),
      scalar("rope_yarn", &ModelConfig::rope_yarn, parse_bool),
      scalar("qk_gain_init", &ModelConfig::qk_gain_init, parse_double),
      scalar("xsa_last_n", &ModelConfig::xsa_last_n, parse_int),
      {"attn_windows",
       [](ModelConfig& c, const Json& j) {
         if (!j.is_array()) bad("field attn_windows must be a list of integers");
         c.attn_windows.clear();
         for (const Json& v : j) {
           if (!v.is_number_integer()) bad("field attn_windows must be a list of integers");
           c.attn_windows.push_back(v.get<int>());
         }
       },
       [](const ModelConfig& c) { return Json(c.attn_windows); }, parse_int_list},
      scalar("ln_scale", &ModelConfig::ln_scale, parse_bool),
      scalar("skip_gates_enabled", &ModelConfig::skip_gates_enabled, parse_bool),
      scalar("parallel_start_layer", &ModelConfig::parallel_start_layer, parse_int),
      scalar("num_loops", &ModelConfig::num_loops, parse_int),
      scalar("loop_start", &ModelConfig::loop_start, parse_int),
      scalar("loop_end", &ModelConfig::loop_end, parse_int),
      scalar("train_seq_len", &ModelConfig::train_seq_len, parse_int),
      scalar("eval_seq_len", &ModelConfig::eval_seq_len, parse_int),
  };
  return f;
}

const Field* find_field(const std::string& name) {
  for (const Field& f : fields())
    if (name == f.name) return &f;
  return nullptr;
}

}  // namespace

ModelConfig ModelConfig::frontier() {
  ModelConfig c;
  c.vocab_size = 8192;
  c.num_layers = 11;
  c.model_dim = 512;
  c.embedding_dim = 512;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.mlp_mult = 4.0;
  c.mlp_activation = "leaky_relu2";
  c.rope_dims = 16;
  c.qk_gain_init = 5.0;
  c.xsa_last_n = 11;
  c.ln_scale = true;
  c.skip_gates_enabled = true;
  c.parallel_start_layer = 7;
  c.num_loops = 2;
  c.loop_start = 3;
  c.loop_end = 5;
  c.train_seq_len = 2048;
  c.eval_seq_len = 2048;
  return c;
}

int ModelConfig::mlp_hidden() const {
  // The reference computes int(mlp_mult * dim): truncation toward zero.
  return static_cast<int>(mlp_mult * static_cast<double>(model_dim));
}

std::vector<int> ModelConfig::layer_sequence(bool looping) const {
  std::vector<int> seq;
  for (int i = 0; i < num_layers; ++i) {
    seq.push_back(i);
    if (looping && num_loops > 0 && i == loop_end)
      for (int r = 0; r < num_loops; ++r)
        for (int j = loop_start; j <= loop_end; ++j) seq.push_back(j);
  }
  return seq;
}

int ModelConfig::num_skips() const {
  const int steps = static_cast<int>(layer_sequence().size());
  return std::min(steps / 2, steps - steps / 2);
}

void ModelConfig::validate() const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) bad(msg);
  };
  need(vocab_size >= 2 && vocab_size <= 65536, "vocab_size must be in [2, 65536] (uint16 tokens), got " + std::to_string(vocab_size));
  need(num_layers >= 1, "num_layers must be >= 1");
  need(model_dim >= 2, "model_dim must be >= 2");
  need(embedding_dim >= 0, "embedding_dim must be >= 0 (0 = model_dim)");
  need(num_heads >= 1 && model_dim % num_heads == 0,
       "num_heads (" + std::to_string(num_heads) + ") must divide model_dim (" + std::to_string(model_dim) + ")");
  need(num_kv_heads >= 1 && num_heads % num_kv_heads == 0,
       "num_kv_heads (" + std::to_string(num_kv_heads) + ") must divide num_heads (" + std::to_string(num_heads) + ")");
  need(head_dim() % 2 == 0, "head_dim (" + std::to_string(head_dim()) + ") must be even for RoPE");
  need(mlp_mult > 0 && mlp_hidden() >= 1, "mlp_mult must give at least one hidden unit");
  need(mlp_activation == "relu2" || mlp_activation == "leaky_relu2",
       "mlp_activation must be relu2 or leaky_relu2, got '" + mlp_activation + "'");
  need(logit_softcap > 0, "logit_softcap must be positive");
  need(rope_base > 0, "rope_base must be positive");
  need(rope_dims >= 0 && rope_dims <= head_dim() && rope_dims % 2 == 0,
       "rope_dims must be even and in [0, head_dim=" + std::to_string(head_dim()) + "]");
  need(xsa_last_n >= 0 && xsa_last_n <= num_layers, "xsa_last_n must be in [0, num_layers]");
  need(attn_windows.empty() || static_cast<int>(attn_windows.size()) == num_layers,
       "attn_windows must be empty or list one window per layer (" + std::to_string(num_layers) + ")");
  for (int w : attn_windows) need(w >= 0, "attn_windows entries must be >= 0 (0 = full attention)");
  need(parallel_start_layer >= 0 && parallel_start_layer < num_layers,
       "parallel_start_layer must be 0 (off) or a layer index below num_layers");
  need(num_loops >= 0, "num_loops must be >= 0");
  if (num_loops > 0)
    need(loop_start >= 0 && loop_start <= loop_end && loop_end < num_layers,
         "depth recurrence needs 0 <= loop_start <= loop_end < num_layers");
  need(train_seq_len >= 1, "train_seq_len must be >= 1");
  need(eval_seq_len >= 0, "eval_seq_len must be >= 0 (0 = train_seq_len)");
}

std::string ModelConfig::to_json() const {
  Json j = Json::object();
  for (const Field& f : fields()) j[f.name] = f.to_json(*this);
  return j.dump(2);
}

ModelConfig ModelConfig::from_json(const std::string& text, const std::string& source, const ModelConfig& base) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::parse_error& e) {
    fail(source, "invalid JSON (byte " + std::to_string(e.byte) + ")");
  }
  if (!j.is_object()) fail(source, "a model config must be a JSON object");
  ModelConfig c = base;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const Field* f = find_field(it.key());
    if (!f) fail(source, "unknown config field '" + it.key() + "'");
    try {
      f->from_json(c, it.value());
    } catch (const Error& e) {
      fail(source, e.what());
    }
  }
  return c;
}

ModelConfig ModelConfig::from_json(const std::string& text, const std::string& source) {
  return from_json(text, source, ModelConfig{});
}

void ModelConfig::set(const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) bad("--set expects key=value, got '" + assignment + "'");
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  const Field* f = find_field(key);
  if (!f) bad("unknown field '" + key + "' in --set");
  try {
    f->from_json(*this, f->parse(value));
  } catch (const Error& e) {
    bad("--set " + key + ": " + e.what());
  }
}

std::vector<std::string> ModelConfig::field_names() {
  std::vector<std::string> n;
  for (const Field& f : fields()) n.emplace_back(f.name);
  return n;
}

std::map<std::string, std::string> parse_hyperparameters_log(const std::string& text, const std::string& source) {
  std::map<std::string, std::string> hp;
  std::istringstream in(text);
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!inside) {
      inside = line == "Hyperparameters:";
      continue;
    }
    // "  key: value" lines; the block ends at the first other line.
    if (line.size() < 3 || line[0] != ' ') break;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    size_t b = line.find_first_not_of(' ');
    std::string key = line.substr(b, colon - b);
    std::string value = colon + 1 < line.size() ? line.substr(colon + 1) : "";
    if (!value.empty() && value[0] == ' ') value.erase(0, 1);
    hp[key] = value;
  }
  if (!inside) fail(source, "no 'Hyperparameters:' block (is this a reference training log?)");
  if (hp.empty()) fail(source, "the 'Hyperparameters:' block is empty");
  return hp;
}

std::vector<std::string> apply_hyperparameters(ModelConfig& cfg, const std::map<std::string, std::string>& hp,
                                               const std::string& source) {
  std::vector<std::string> used;
  for (const auto& [key, value] : hp) {
    const Field* f = find_field(key);
    if (!f) continue;  // training-only hyperparameters (learning rates, paths, ...)
    try {
      f->from_json(cfg, f->parse(value));
    } catch (const Error& e) {
      fail(source, "hyperparameter " + key + ": " + e.what());
    }
    used.push_back(key);
  }
  return used;
}

ModelConfig config_from_log(const std::string& text, const std::string& source) {
  const auto hp = parse_hyperparameters_log(text, source);
  // A log prints the hyperparameters its script has. The frontier family's
  // scripts have xsa_last_n; its architectural constants that are not
  // hyperparameters (LeakyReLU(0.5)^2, banked weights) come from the preset.
  ModelConfig cfg = hp.count("xsa_last_n") ? ModelConfig::frontier() : ModelConfig::baseline();
  apply_hyperparameters(cfg, hp, source);
  cfg.validate();
  return cfg;
}

}  // namespace pgolf
