// Reading parameter-golf model files: torch.save state dicts (plain and
// banked), int8.ptz and int6.ptz, with configs inferred from the weights.
#include <gtest/gtest.h>

#include <torch/csrc/jit/serialization/pickle.h>

#include "data/atomic_file.h"
#include "data/error.h"
#include "quant/codec.h"
#include "quant/model_files.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

std::string to_string(const std::vector<char>& v) { return std::string(v.begin(), v.end()); }

// Weights as the reference stores them: float32, the embedding bf16.
GptWeights reference_dtypes(GptWeights w) {
  for (auto& [n, t] : w.tensors) t = t.to(n == "tok_emb.weight" ? at::kBFloat16 : at::kFloat);
  return w;
}

void write_pt(const std::string& path, const std::map<std::string, at::Tensor>& tensors) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& [n, t] : tensors) d.insert(n, t);
  write_file_atomic(path, to_string(torch::jit::pickle_save(c10::IValue(d))));
}

void expect_same(const std::map<std::string, at::Tensor>& got, const std::map<std::string, at::Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [n, t] : want) {
    ASSERT_TRUE(got.count(n)) << n;
    EXPECT_EQ(got.at(n).scalar_type(), t.scalar_type()) << n;
    EXPECT_TRUE(at::equal(got.at(n), t)) << n;
  }
}

TEST(ModelFiles, BaselineStateDictLoadsWithAnInferredConfig) {
  TempDir d;
  ModelConfig c = tiny_config();
  c.logit_softcap = 30.0;
  GptWeights w = reference_dtypes(random_weights(c, 2));
  write_pt(d / "final_model.pt", w.tensors);
  EXPECT_EQ(detect_model_file(d / "final_model.pt"), ModelFileKind::TorchStateDict);
  ModelSource src;
  src.path = d / "final_model.pt";
  std::string notes;
  GptWeights got = load_model_file(src, &notes);
  expect_same(got.tensors, w.tensors);
  ModelConfig want = c;
  want.train_seq_len = 1024;  // not visible in weights: the reference default
  EXPECT_EQ(got.config.to_json(), want.to_json());
  EXPECT_NE(notes.find("inferred"), std::string::npos);
}

TEST(ModelFiles, BankedFrontierStateDictUnbanksAndMatchesTheForward) {
  TempDir d;
  ModelConfig c = tiny_frontier_config();
  GptWeights w = reference_dtypes(random_weights(c, 4));
  // Bank the per-layer matrices as the 2026-04-10 script stores them.
  std::map<std::string, at::Tensor> banked;
  const int n = c.num_layers;
  std::vector<at::Tensor> qo(2 * n), kv(2 * n), up(n), down(n);
  for (const auto& [name, t] : w.tensors) banked[name] = t;
  for (int i = 0; i < n; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    qo[i] = banked[b + "attn.c_q.weight"];
    qo[n + i] = banked[b + "attn.proj.weight"];
    kv[i] = banked[b + "attn.c_k.weight"];
    kv[n + i] = banked[b + "attn.c_v.weight"];
    up[i] = banked[b + "mlp.fc.weight"];
    down[i] = banked[b + "mlp.proj.weight"];
    for (const char* s : {"attn.c_q.weight", "attn.proj.weight", "attn.c_k.weight", "attn.c_v.weight",
                          "mlp.fc.weight", "mlp.proj.weight"})
      banked.erase(b + s);
  }
  banked["qo_bank"] = at::stack(qo);
  banked["kv_bank"] = at::stack(kv);
  banked["mlp_up_bank"] = at::stack(up);
  banked["mlp_down_bank"] = at::stack(down);
  write_pt(d / "final_model.pt", banked);

  ModelSource src;
  src.path = d / "final_model.pt";
  // The switches the weights cannot show, as a training log would give them.
  src.sets = {"vocab_size=37", "num_layers=5", "xsa_last_n=3", "num_loops=1", "loop_start=1", "loop_end=2",
              "parallel_start_layer=3", "rope_dims=2", "qk_gain_init=5.0", "attn_windows=0,3,0,2,0",
              "logit_softcap=5.0", "train_seq_len=16", "eval_seq_len=0"};
  GptWeights got = load_model_file(src);
  expect_same(got.tensors, w.tensors);
  EXPECT_EQ(got.config.to_json(), c.to_json());
  at::Tensor in = at::randint(c.vocab_size, {2, 7}, at::kLong), tg = at::randint(c.vocab_size, {2, 7}, at::kLong);
  EXPECT_TRUE(at::equal(forward_nll(got, in, tg), forward_nll(w, in, tg)));
  // Without the log's values the preset does not fit these weights: a clear error.
  src.sets.clear();
  try {
    load_model_file(src);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(d / "final_model.pt"), std::string::npos) << e.what();
  }
}

TEST(ModelFiles, Int8PtzDequantizesPerRowAndRestoresDtypes) {
  TempDir d;
  ModelConfig c = tiny_config();
  GptWeights w = reference_dtypes(random_weights(c, 6));
  c10::impl::GenericDict quantized(c10::StringType::get(), c10::AnyType::get()), scales = quantized.copy(),
      dtypes = quantized.copy(), passthrough = quantized.copy(), orig = quantized.copy(), root = quantized.copy();
  std::map<std::string, at::Tensor> want;
  for (const auto& [name, t] : w.tensors) {
    const bool control = name.find("attn_scale") != std::string::npos || name.find("mlp_scale") != std::string::npos ||
                         name.find("resid_mix") != std::string::npos || name.find("q_gain") != std::string::npos ||
                         name.find("skip_weight") != std::string::npos;
    if (t.dim() == 2 && !control) {  // quantize per row (the file format is what matters here)
      at::Tensor f = t.to(at::kFloat);
      at::Tensor s = (f.abs().amax(1) / 127.0).clamp_min(1.0 / 127.0).to(at::kHalf);
      at::Tensor q = at::round(f / s.to(at::kFloat).unsqueeze(1)).clamp(-127, 127).to(at::kChar);
      quantized.insert(name, q);
      scales.insert(name, s);
      dtypes.insert(name, std::string(name == "tok_emb.weight" ? "bfloat16" : "float32"));
      want[name] = (q.to(at::kFloat) * s.to(at::kFloat).unsqueeze(1)).to(t.scalar_type());
    } else if (control) {
      passthrough.insert(name, t.to(at::kFloat));
      want[name] = t.to(at::kFloat);
    } else {
      passthrough.insert(name, t.to(at::kHalf));
      orig.insert(name, std::string("float32"));
      want[name] = t.to(at::kHalf).to(at::kFloat);
    }
  }
  root.insert("__quant_format__", std::string("int8_clean_per_row_v1"));
  root.insert("quantized", quantized);
  root.insert("scales", scales);
  root.insert("dtypes", dtypes);
  root.insert("passthrough", passthrough);
  root.insert("passthrough_orig_dtypes", orig);
  const std::string raw = to_string(torch::jit::pickle_save(c10::IValue(root)));
  write_file_atomic(d / "final_model.int8.ptz", deflate_bytes(raw, 15));
  EXPECT_EQ(detect_model_file(d / "final_model.int8.ptz"), ModelFileKind::Int8Ptz);
  expect_same(read_reference_state(d / "final_model.int8.ptz", ModelFileKind::Int8Ptz), want);
  ModelSource src;
  src.path = d / "final_model.int8.ptz";
  src.sets = {"logit_softcap=5.0"};
  EXPECT_EQ(load_model_file(src).config.num_kv_heads, 2);
}

TEST(ModelFiles, Int6PtzFromShuffledBrotli) {
  TempDir d;
  ModelConfig c = tiny_config();
  GptWeights w = reference_dtypes(random_weights(c, 8));
  c10::impl::GenericDict tensors(c10::StringType::get(), c10::AnyType::get()), meta = tensors.copy(), root = tensors.copy();
  std::map<std::string, at::Tensor> want;
  for (const auto& [name, t] : w.tensors) {
    if (t.dim() == 2 && name != "skip_weights" && name.find("resid_mix") == std::string::npos) {
      at::Tensor f = t.to(at::kFloat);
      at::Tensor s = (f.abs().amax(1) / 31.0).clamp_min(1e-10).to(at::kHalf);
      at::Tensor q = at::round(f / s.to(at::kFloat).unsqueeze(1)).clamp(-31, 31).to(at::kChar);
      tensors.insert(name + ".q", q);
      tensors.insert(name + ".scale", s);
      meta.insert(name, std::string(name == "tok_emb.weight" ? "gptq (int8)" : "gptq (int6)"));
      want[name] = (q.to(at::kFloat) * s.to(at::kFloat).unsqueeze(1)).to(name == "tok_emb.weight" ? at::kBFloat16 : at::kFloat);
    } else {
      tensors.insert(name, t.to(at::kHalf));
      meta.insert(name, std::string("passthrough (float16)"));
      want[name] = t.to(at::kHalf).to(at::kFloat);
    }
  }
  root.insert("w", tensors);
  root.insert("m", meta);
  const std::string raw = to_string(torch::jit::pickle_save(c10::IValue(root)));
  write_file_atomic(d / "final_model.int6.ptz", quant::compress(quant::byte_shuffle(raw, 2), quant::Codec::Brotli));
  EXPECT_EQ(detect_model_file(d / "final_model.int6.ptz"), ModelFileKind::Int6Ptz);
  expect_same(read_reference_state(d / "final_model.int6.ptz", ModelFileKind::Int6Ptz), want);
}

TEST(ModelFiles, ForeignBytesAreOneLineErrorsNamingTheFile) {
  TempDir d;
  std::string junk(3000, '\0');
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = char((i * 7919u) >> 3);
  write_file_atomic(d / "junk.ptz", junk);
  write_file_atomic(d / "tiny", "x");
  for (const char* name : {"junk.ptz", "tiny"}) {
    try {
      ModelSource src;
      src.path = d / name;
      load_model_file(src);
      ADD_FAILURE() << name;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.rfind(d / name, 0), 0u) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  }
}

}  // namespace
}  // namespace pgolf::test
