// ModelConfig: presets, validation, JSON, --set, and training-log parsing.
#include <gtest/gtest.h>

#include "data/error.h"
#include "model/config.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

TEST(ModelConfig, PresetsAreValidAndShapedLikeTheReference) {
  ModelConfig b = ModelConfig::baseline();
  b.validate();
  EXPECT_EQ(b.head_dim(), 64);
  EXPECT_EQ(b.mlp_hidden(), 1024);
  EXPECT_EQ(b.rotary_dims(), 64);
  EXPECT_EQ(b.layer_sequence(), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(b.num_encoder_steps(), 4);
  EXPECT_EQ(b.num_skips(), 4);
  ModelConfig f = ModelConfig::frontier();
  f.validate();
  EXPECT_EQ(f.mlp_hidden(), 2048);
  EXPECT_EQ(f.rotary_dims(), 16);
  EXPECT_EQ(f.num_skips(), 8);
  // The frontier log prints encoder [0,1,2,3,4,5,3,4] and decoder [5,3,4,5,6,7,8,9,10].
  std::vector<int> seq = f.layer_sequence();
  ASSERT_EQ(seq.size(), 17u);
  EXPECT_EQ(std::vector<int>(seq.begin(), seq.begin() + f.num_encoder_steps()),
            (std::vector<int>{0, 1, 2, 3, 4, 5, 3, 4}));
  EXPECT_EQ(std::vector<int>(seq.begin() + f.num_encoder_steps(), seq.end()),
            (std::vector<int>{5, 3, 4, 5, 6, 7, 8, 9, 10}));
}

// The config files shipped in configs/ are the presets (plus a sliding-window variant).
TEST(ModelConfig, ShippedConfigFilesAreThePresets) {
  const std::string dir = std::string(PGOLF_SOURCE_DIR) + "/configs/";
  EXPECT_EQ(ModelConfig::from_json(read_file(dir + "baseline.json"), "baseline.json").to_json(),
            ModelConfig::baseline().to_json());
  EXPECT_EQ(ModelConfig::from_json(read_file(dir + "frontier.json"), "frontier.json").to_json(),
            ModelConfig::frontier().to_json());
  ModelConfig swa = ModelConfig::from_json(read_file(dir + "frontier_swa512.json"), "frontier_swa512.json");
  swa.validate();
  EXPECT_EQ(swa.attn_windows, (std::vector<int>{0, 0, 512, 0, 512, 0, 512, 0, 512, 0, 512}));
}

TEST(ModelConfig, MlpHiddenTruncatesLikeTheReference) {
  ModelConfig c;
  c.model_dim = 500;
  c.num_heads = 10;
  c.mlp_mult = 2.999;
  EXPECT_EQ(c.mlp_hidden(), 1499);
}

TEST(ModelConfig, JsonRoundTripsEveryField) {
  ModelConfig f = ModelConfig::frontier();
  f.attn_windows = {0, 0, 512, 0, 512, 0, 512, 0, 512, 0, 512};
  ModelConfig g = ModelConfig::from_json(f.to_json(), "mem");
  EXPECT_EQ(g.to_json(), f.to_json());
  EXPECT_EQ(g.attn_windows, f.attn_windows);
  // Partial objects start from the base given.
  ModelConfig h = ModelConfig::from_json(R"({"num_layers": 4})", "mem");
  EXPECT_EQ(h.num_layers, 4);
  EXPECT_EQ(h.model_dim, 512);
}

TEST(ModelConfig, BadJsonIsAOneLineErrorNamingTheField) {
  EXPECT_NE(error_of([] { ModelConfig::from_json(R"({"num_layer": 4})", "c.json"); })
                .find("c.json: unknown config field 'num_layer'"),
            std::string::npos);
  EXPECT_NE(error_of([] { ModelConfig::from_json(R"({"num_layers": "four"})", "c.json"); })
                .find("num_layers has the wrong type"),
            std::string::npos);
  EXPECT_NE(error_of([] { ModelConfig::from_json(R"({"tie_embeddings": 1})", "c.json"); }).find("tie_embeddings"),
            std::string::npos);
  EXPECT_NE(error_of([] { ModelConfig::from_json("[1]", "c.json"); }).find("must be a JSON object"), std::string::npos);
  EXPECT_NE(error_of([] { ModelConfig::from_json("{", "c.json"); }).find("invalid JSON"), std::string::npos);
}

TEST(ModelConfig, SetParsesByFieldType) {
  ModelConfig c;
  c.set("num_layers=11");
  c.set("mlp_mult=3.5");
  c.set("rope_yarn=1");
  c.set("mlp_activation=leaky_relu2");
  c.set("attn_windows=0,512,0,512,0,512,0,512,0,512,0");
  EXPECT_EQ(c.num_layers, 11);
  EXPECT_DOUBLE_EQ(c.mlp_mult, 3.5);
  EXPECT_TRUE(c.rope_yarn);
  EXPECT_EQ(c.attn_windows.size(), 11u);
  c.validate();
  EXPECT_NE(error_of([&] { c.set("num_layers=eleven"); }).find("not an integer"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set("depth=3"); }).find("unknown field 'depth'"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set("novalue"); }).find("key=value"), std::string::npos);
}

TEST(ModelConfig, ValidationNamesTheProblem) {
  auto msg = [](auto mutate) {
    ModelConfig c;
    mutate(c);
    return error_of([&] { c.validate(); });
  };
  EXPECT_NE(msg([](ModelConfig& c) { c.num_heads = 7; }).find("num_heads (7) must divide model_dim (512)"),
            std::string::npos);
  EXPECT_NE(msg([](ModelConfig& c) { c.num_kv_heads = 3; }).find("num_kv_heads (3) must divide num_heads (8)"),
            std::string::npos);
  EXPECT_NE(msg([](ModelConfig& c) { c.rope_dims = 15; }).find("rope_dims"), std::string::npos);
  EXPECT_NE(msg([](ModelConfig& c) { c.attn_windows = {1, 2}; }).find("one window per layer"), std::string::npos);
  EXPECT_NE(msg([](ModelConfig& c) { c.num_loops = 1; c.loop_start = 5; c.loop_end = 3; }).find("loop_start"),
            std::string::npos);
  EXPECT_NE(msg([](ModelConfig& c) { c.vocab_size = 70000; }).find("vocab_size"), std::string::npos);
  EXPECT_NE(msg([](ModelConfig& c) { c.mlp_activation = "gelu"; }).find("mlp_activation"), std::string::npos);
}

// A block in the layout reference logs print (two-space indent, "key: value").
const char* kFrontierLog =
    "====\nHyperparameters:\n  adam_eps: 1e-08\n  embedding_dim: 512\n  eval_seq_len: 2048\n  ln_scale: True\n"
    "  logit_softcap: 30.0\n  loop_end: 5\n  loop_start: 3\n  mlp_mult: 4.0\n  model_dim: 512\n  num_heads: 8\n"
    "  num_kv_heads: 4\n  num_layers: 11\n  num_loops: 2\n  parallel_start_layer: 7\n  qk_gain_init: 5.0\n"
    "  rope_base: 10000.0\n  rope_dims: 16\n  rope_train_seq_len: 2048\n  rope_yarn: False\n"
    "  skip_gates_enabled: True\n  tie_embeddings: True\n  train_seq_len: 2048\n  ttt_lora_rank: 96\n"
    "  vocab_size: 8192\n  xsa_last_n: 11\n====\nRunning Python 3.10\n";

TEST(ModelConfig, FromTrainingLog) {
  auto hp = parse_hyperparameters_log(kFrontierLog, "train0.txt");
  EXPECT_EQ(hp.at("ttt_lora_rank"), "96");
  EXPECT_EQ(hp.at("rope_yarn"), "False");
  EXPECT_EQ(hp.count("Running Python 3.10"), 0u);
  ModelConfig c = config_from_log(kFrontierLog, "train0.txt");
  EXPECT_EQ(c.to_json(), ModelConfig::frontier().to_json());
  // A baseline-style block starts from the baseline preset.
  ModelConfig b = config_from_log("Hyperparameters:\n  vocab_size: 8192\n  num_layers: 9\n", "b.txt");
  EXPECT_EQ(b.vocab_size, 8192);
  EXPECT_EQ(b.mlp_activation, "relu2");
  EXPECT_NE(error_of([] { parse_hyperparameters_log("step 1 loss 3.2\n", "x.txt"); }).find("x.txt: no 'Hyperparameters:'"),
            std::string::npos);
  EXPECT_NE(error_of([] { config_from_log("Hyperparameters:\n  num_layers: many\n", "y.txt"); })
                .find("y.txt: hyperparameter num_layers"),
            std::string::npos);
}

}  // namespace
}  // namespace pgolf::test
