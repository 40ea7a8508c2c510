// ModelConfig: every architectural switch of the parameter-golf GPT family as
// a named field. Field names are the reference scripts' hyperparameter names
// (lower-case), so a training log's `Hyperparameters:` block and
// `--set key=value` speak the same language. Defaults are the baseline of
// the root train_gpt.py (SPEC §5); `frontier()` gives 2026-04-10_VarLenAttn's
// logged run (SPEC §10).
#pragma once
#include <map>
#include <string>
#include <vector>

namespace pgolf {

struct ModelConfig {
  // shape
  int vocab_size = 1024;
  int num_layers = 9;
  int model_dim = 512;
  int embedding_dim = 0;       // 0 = model_dim; else embed_proj / head_proj linears
  int num_heads = 8;
  int num_kv_heads = 4;
  double mlp_mult = 2.0;       // hidden = round(mlp_mult * model_dim) as the reference computes it
  std::string mlp_activation = "relu2";  // "relu2" | "leaky_relu2" (LeakyReLU(slope) squared)
  double mlp_leaky_slope = 0.5;
  bool tie_embeddings = true;
  double logit_softcap = 30.0;
  // attention
  double rope_base = 10000.0;
  int rope_dims = 0;           // rotate the first rope_dims of each head; 0 = all of head_dim
  bool rope_yarn = false;      // NTK base scaling when a sequence is longer than train_seq_len (the reference's "YaRN")
  double qk_gain_init = 1.5;
  int xsa_last_n = 0;          // XSA on the last n layers
  std::vector<int> attn_windows;  // per layer: 0 = full causal, w > 0 = sliding window of w; empty = all full
  // residual structure
  bool ln_scale = false;       // block norm outputs scaled by 1/sqrt(physical layer + 1)
  bool skip_gates_enabled = false;
  int parallel_start_layer = 0;   // two lanes (attention / MLP) from this physical layer on; 0 = off, as in the reference
  int num_loops = 0;           // depth recurrence: layers loop_start..loop_end repeat num_loops more times
  int loop_start = 0;
  int loop_end = -1;
  // sequence lengths
  int train_seq_len = 1024;
  int eval_seq_len = 0;        // 0 = train_seq_len

  static ModelConfig baseline() { return {}; }
  static ModelConfig frontier();

  int head_dim() const { return model_dim / num_heads; }
  int embed_dim() const { return embedding_dim > 0 ? embedding_dim : model_dim; }
  int mlp_hidden() const;
  int rotary_dims() const { return rope_dims > 0 ? rope_dims : head_dim(); }
  int eval_length() const { return eval_seq_len > 0 ? eval_seq_len : train_seq_len; }
  // The layer sequence the forward runs (depth recurrence unrolled), split
  // into encoder and decoder halves as the reference does. With looping off
  // (the start of a frontier training run, before enable_looping_at) it is
  // the plain 0..n-1.
  std::vector<int> layer_sequence(bool looping = true) const;
  int num_encoder_steps() const { return static_cast<int>(layer_sequence().size()) / 2; }
  // Skip connections: min(encoder steps, decoder steps) of the looped
  // sequence (the parameter count does not change when looping turns on).
  int num_skips() const;

  // Throws pgolf::Error ("config: ...") on the first inconsistency.
  void validate() const;

  std::string to_json() const;  // every field, pretty-printed
  // Starts from `base` and applies the object's keys; unknown keys and wrong
  // types are errors naming `source` and the key.
  static ModelConfig from_json(const std::string& json, const std::string& source, const ModelConfig& base);
  static ModelConfig from_json(const std::string& json, const std::string& source);  // base: baseline()
  // `key=value`, value parsed by the field's type (lists: comma-separated).
  void set(const std::string& assignment);
  static std::vector<std::string> field_names();
};

// The `Hyperparameters:` block of a reference training log: key -> value text.
std::map<std::string, std::string> parse_hyperparameters_log(const std::string& text, const std::string& source);
// Applies the block's keys that are ModelConfig fields; returns the keys used.
std::vector<std::string> apply_hyperparameters(ModelConfig& cfg, const std::map<std::string, std::string>& hp,
                                               const std::string& source);
// The config of the run a reference training log describes: the family's
// preset (frontier when the log has xsa_last_n, else baseline) with the
// block's values applied, validated.
ModelConfig config_from_log(const std::string& text, const std::string& source);

}  // namespace pgolf
