// The libtorch runtime as pgolf sees it, through the compatibility header.
#include <gtest/gtest.h>

#include "model/runtime.h"
#include "model/torch_compat.h"

namespace pgolf::test {
namespace {

TEST(Runtime, ReportsTheLibtorchItWasBuiltAgainst) {
  RuntimeInfo r = runtime_info();
  EXPECT_EQ(r.torch_version.rfind(std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR), 0), 0u);
  EXPECT_GE(r.threads, 1);
  EXPECT_FALSE(r.device_name.empty());
}

TEST(Runtime, CompatOptionalIsTheOneLibtorchTakes) {
  compat::optional<int> none = compat::nullopt, some = 3;
  EXPECT_FALSE(none.has_value());
  EXPECT_EQ(*some, 3);
}

TEST(Runtime, MatmulRateIsMeasurable) {
  double gf = measure_matmul_gflops(false, 256, 3);
  EXPECT_GT(gf, 0.1);
}

}  // namespace
}  // namespace pgolf::test
