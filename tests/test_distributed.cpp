// Multi-rank helpers that need no second process: the even split, torchrun's
// environment, the single-rank collectives (no-ops), and the gradient
// reducer's buckets and hooks (on one rank its sums are the values themselves).
// The 2- and 3-process runs are tests/multi_rank.sh.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "data/error.h"
#include "model/distributed.h"
#include "model/grad_reducer.h"

namespace pgolf {
namespace {

TEST(Distributed, EvenSplitIsContiguousAndBalanced) {
  for (uint64_t n : {0ull, 1ull, 2ull, 7ull, 1000ull, 1ull << 40}) {
    for (int world : {1, 2, 3, 8, 13}) {
      uint64_t expect = 0;
      for (int r = 0; r < world; ++r) {
        auto [b, e] = even_split(n, r, world);
        EXPECT_EQ(b, expect);
        EXPECT_LE(e - b, n / uint64_t(world) + 1);
        EXPECT_GE(e - b, n / uint64_t(world));
        expect = e;
      }
      EXPECT_EQ(expect, n);
    }
  }
  EXPECT_THROW(even_split(5, 2, 2), Error);
  EXPECT_THROW(even_split(5, 0, 0), Error);
}

// Sets torchrun's variables for one test and restores them after.
class Env {
 public:
  explicit Env(const std::map<std::string, std::string>& vars) {
    for (const char* k : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) {
      const char* v = std::getenv(k);
      if (v) saved_[k] = v;
      unsetenv(k);
    }
    for (const auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1);
  }
  ~Env() {
    for (const char* k : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(k);
    for (const auto& [k, v] : saved_) setenv(k.c_str(), v.c_str(), 1);
  }

 private:
  std::map<std::string, std::string> saved_;
};

std::string error_of(const std::map<std::string, std::string>& vars) {
  Env e(vars);
  try {
    ranks_from_env();
  } catch (const Error& err) {
    return err.what();
  }
  return "";
}

TEST(Distributed, RanksFromTorchrunEnvironment) {
  {
    Env e({});
    const Ranks r = ranks_from_env();
    EXPECT_EQ(r.world, 1);
    EXPECT_FALSE(r.multi());
  }
  {
    Env e({{"WORLD_SIZE", "1"}, {"RANK", "0"}});
    EXPECT_FALSE(ranks_from_env().multi());
  }
  {
    Env e({{"WORLD_SIZE", "4"}, {"RANK", "3"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "127.0.0.1"},
           {"MASTER_PORT", "29500"}});
    const Ranks r = ranks_from_env();
    EXPECT_EQ(r.world, 4);
    EXPECT_EQ(r.rank, 3);
    EXPECT_EQ(r.local_rank, 1);
    EXPECT_TRUE(r.multi());
    EXPECT_FALSE(r.root());
  }
  EXPECT_NE(error_of({{"WORLD_SIZE", "two"}}).find("WORLD_SIZE='two' is not an integer"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}}).find("RANK='' is not an integer in [0, 1]"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}).find("RANK='2'"),
            std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_PORT", "1"}}).find("MASTER_ADDR is not set"),
            std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}})
                .find("MASTER_PORT='70000'"),
            std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "1"}}).find("launch with torchrun"), std::string::npos);
}

TEST(Distributed, SingleRankCollectivesAreNoOps) {
  Env e({});
  const Ranks& r = init_ranks(false);
  EXPECT_EQ(r.world, 1);
  EXPECT_EQ(rank_label(), "");
  std::vector<double> v = {1.5, -2.0};
  all_reduce_sum(v);
  EXPECT_EQ(v, (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(gather_concat(v), v);
  barrier();
  abort_ranks("not multi-rank: returns", 1);
  finish_ranks();
}

TEST(GradReducer, BucketsAreConsecutiveAndCapped) {
  using B = std::vector<std::vector<size_t>>;
  EXPECT_EQ(assign_buckets({}, 10), B{});
  EXPECT_EQ(assign_buckets({3, 3, 3, 3}, 6), (B{{0, 1}, {2, 3}}));
  EXPECT_EQ(assign_buckets({3, 4, 3}, 6), (B{{0}, {1}, {2}}));
  EXPECT_EQ(assign_buckets({20, 1, 1, 30, 2}, 10), (B{{0}, {1, 2}, {3}, {4}}));  // too big: alone
  EXPECT_EQ(assign_buckets({0, 5, 0, 5}, 5), (B{{0, 1, 2}, {3}}));
  EXPECT_EQ(assign_buckets({1, 2, 3}, 1000), (B{{0, 1, 2}}));
}

// Leaves a [2, 3], b [4], c [5] (never used: no gradient), d scalar; with a cap
// of 6 values the buckets are {a}, {b}, {c, d}.
struct ReducerCase {
  std::vector<at::Tensor> params;
  at::Tensor x = at::arange(6, at::kFloat).reshape({2, 3}), y = at::linspace(-1, 1, 4);
  ReducerCase() {
    for (auto shape : {std::vector<int64_t>{2, 3}, {4}, {5}, {}})
      params.push_back(at::ones(shape, at::kFloat).set_requires_grad(true));
  }
  at::Tensor loss() const { return (params[0] * x).sum() + (params[1] * y).sum() + params[3] * 3.0; }
  void backward() const { loss().backward(); }
  void clear() {
    for (at::Tensor& p : params) p.mutable_grad().reset();
  }
};

TEST(GradReducer, SumsEveryGradientScaledAndZerosForUnused) {
  for (bool overlap : {true, false}) {
    ReducerCase c;
    GradReducer r(c.params, 6, 2, overlap);
    ASSERT_EQ(r.buckets(), 3u);
    for (int step = 0; step < 2; ++step) {
      r.arm(0.5, at::tensor({2.0f, -3.0f}));
      c.backward();
      const std::vector<double> extras = r.finish();
      EXPECT_EQ(extras, (std::vector<double>{2.0, -3.0}));
      EXPECT_TRUE(at::equal(c.params[0].grad(), c.x * 0.5));
      EXPECT_TRUE(at::equal(c.params[1].grad(), c.y * 0.5));
      EXPECT_TRUE(at::equal(c.params[2].grad(), at::zeros({5})));  // defined: every rank reduced it
      EXPECT_EQ(c.params[3].grad().item<float>(), 1.5f);
      // {a} and {b} start from their hooks; {c, d} waits for c, which backward never reaches.
      EXPECT_EQ(r.started_in_backward(), overlap ? 2u : 0u) << "overlap " << overlap << " step " << step;
      c.clear();
    }
  }
}

TEST(GradReducer, OnlyTheArmedPassReducesAccumulatedGradients) {
  ReducerCase c;
  GradReducer r(c.params, 6, 0, true);
  c.backward();  // an earlier micro-batch: the hooks do nothing
  r.arm(0.25, at::Tensor());
  c.backward();
  EXPECT_TRUE(r.finish().empty());
  EXPECT_TRUE(at::equal(c.params[0].grad(), (c.x + c.x) * 0.25));
  EXPECT_EQ(c.params[3].grad().item<float>(), 1.5f);
  EXPECT_EQ(r.started_in_backward(), 2u);
  EXPECT_THROW(r.finish(), Error);  // not armed
}

TEST(GradReducer, RemovesItsHooks) {
  ReducerCase c;
  at::Tensor loss;
  {
    GradReducer r(c.params, 6, 0, true);
    loss = c.loss();  // the graph keeps the gradient accumulators alive
  }
  loss.backward();  // a hook left behind would call into the destroyed reducer
  EXPECT_TRUE(at::equal(c.params[0].grad(), c.x));
}

}  // namespace
}  // namespace pgolf
