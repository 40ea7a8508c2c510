// Multi-rank helpers that need no second process: the even split, torchrun's
// environment, and the single-rank collectives (no-ops). The 2-process runs
// are tests/multi_rank.sh.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <string>

#include "data/error.h"
#include "model/distributed.h"

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

}  // namespace
}  // namespace pgolf
