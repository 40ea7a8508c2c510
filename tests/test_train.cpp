// Training: the Muon orthogonaliser, learning a simple sequence, determinism.
#include <gtest/gtest.h>

#include "data/error.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "model/train.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

TEST(Train, NewtonSchulzGivesNearOrthogonalRows) {
  at::manual_seed(0);
  for (auto shape : {std::vector<int64_t>{16, 48}, std::vector<int64_t>{48, 16}}) {
    at::Tensor g = at::randn(shape);
    at::Tensor x = newton_schulz_orthogonalize(g, 5).to(at::kFloat);
    ASSERT_EQ(x.sizes(), g.sizes());
    at::Tensor sv = at::linalg_svdvals(x);
    // The quintic iteration maps singular values into roughly [0.7, 1.2].
    EXPECT_GT(sv.min().item<float>(), 0.5f);
    EXPECT_LT(sv.max().item<float>(), 1.3f);
  }
}

struct CyclicData {
  TempDir dir;
  CyclicData() {
    std::vector<uint16_t> tok;
    for (int i = 0; i < 20000; ++i) tok.push_back(uint16_t(i % 97 == 0 ? 1 : 4 + (i * 7) % 29));
    write_shard(dir / "fineweb_train_000000.bin", tok);
  }
};

TEST(Train, LearnsAPredictableSequenceAndIsDeterministic) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  ModelConfig c = tiny_config();
  TrainOptions o;
  o.iterations = 60;
  o.batch_tokens = 256;
  o.warmdown_iters = 10;
  auto run = [&]() {
    GptWeights w = init_gpt_weights(c, 3);
    std::vector<double> losses;
    train_gpt(w, s, o, [&](const TrainStep& st) {
      losses.push_back(st.loss);
      return true;
    });
    return std::make_pair(w, losses);
  };
  auto [w1, l1] = run();
  ASSERT_EQ(l1.size(), 60u);
  EXPECT_GT(l1.front(), 3.0);   // ~ln(37) at the start
  EXPECT_LT(l1.back(), 1.0);    // the sequence is almost deterministic
  auto [w2, l2] = run();
  EXPECT_EQ(l1, l2);
  for (const auto& [n, t] : w1.tensors) EXPECT_TRUE(at::equal(t, w2.tensors.at(n))) << n;
}

TEST(Train, StopsWhenTheCallbackSaysSo) {
  CyclicData data;
  TokenStream s({data.dir / "fineweb_train_000000.bin"});
  GptWeights w = init_gpt_weights(tiny_config(), 1);
  TrainOptions o;
  o.iterations = 100;
  o.batch_tokens = 64;
  int64_t last = 0;
  train_gpt(w, s, o, [&](const TrainStep& st) {
    last = st.step;
    return st.step < 5;
  });
  EXPECT_EQ(last, 5);
  o.batch_tokens = 20;  // not a multiple of the sequence length
  EXPECT_THROW(train_gpt(w, s, o, nullptr), Error);
}

}  // namespace
}  // namespace pgolf::test
