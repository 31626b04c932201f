#include "common/model/cpu_kernels.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace hearth::model {
namespace {

TEST(SkinnyLinearTest, MatchesAtLinear) {
  if (!SkinnyLinearSupported()) GTEST_SKIP() << "no AVX2/AVX-512 on this CPU";
  torch::manual_seed(0);
  // Tails in every dimension: rows not a multiple of 4, outputs not a multiple
  // of the tile, K not a multiple of the vector width.
  for (int64_t m : {1, 2, 3, 4, 5, 7, 16, 32}) {
    for (int64_t n : {1, 3, 4, 9, 130}) {
      for (int64_t k : {1, 7, 16, 17, 64, 100}) {
        at::Tensor x = torch::randn({m, k});
        at::Tensor w = torch::randn({n, k});
        at::Tensor b = torch::randn({n});
        at::Tensor y = SkinnyLinear(x, w, b);
        ASSERT_TRUE(y.defined());
        EXPECT_TRUE(torch::allclose(y, torch::nn::functional::linear(x, w, b),
                                    1e-4, 1e-4))
            << m << "x" << n << "x" << k;
        at::Tensor y2 = SkinnyLinear(x, w, at::Tensor());
        EXPECT_TRUE(torch::allclose(y2, torch::nn::functional::linear(x, w),
                                    1e-4, 1e-4));
      }
    }
  }
}

TEST(SkinnyLinearTest, RowsDoNotDependOnTheBatch) {
  if (!SkinnyLinearSupported()) GTEST_SKIP() << "no AVX2/AVX-512 on this CPU";
  at::Tensor x = torch::randn({13, 200});
  at::Tensor w = torch::randn({77, 200});
  at::Tensor all = SkinnyLinear(x, w, at::Tensor());
  for (int64_t i = 0; i < 13; ++i) {
    at::Tensor one = SkinnyLinear(x.narrow(0, i, 1), w, at::Tensor());
    EXPECT_TRUE(torch::equal(one[0], all[i])) << i;
  }
}

TEST(SkinnyLinearTest, StridedRowsAreAccepted) {
  if (!SkinnyLinearSupported()) GTEST_SKIP() << "no AVX2/AVX-512 on this CPU";
  at::Tensor big = torch::randn({4, 96});
  at::Tensor x = big.narrow(1, 10, 64);  // Rows 96 apart.
  at::Tensor w = torch::randn({8, 64});
  at::Tensor y = SkinnyLinear(x, w, at::Tensor());
  ASSERT_TRUE(y.defined());
  EXPECT_TRUE(
      torch::allclose(y, torch::nn::functional::linear(x, w), 1e-4, 1e-4));
}

TEST(SkinnyLinearTest, DeclinesWhatItDoesNotHandle) {
  at::Tensor w = torch::randn({8, 16});
  EXPECT_FALSE(
      SkinnyLinear(torch::randn({kSkinnyMaxRows + 1, 16}), w, {}).defined());
  EXPECT_FALSE(SkinnyLinear(torch::randn({2, 16}, torch::kDouble),
                            w.to(torch::kDouble), {})
                   .defined());
  EXPECT_FALSE(SkinnyLinear(torch::randn({2, 16}), w.t().contiguous().t(), {})
                   .defined());
  EXPECT_FALSE(SkinnyLinear(torch::randn({16, 2}).t(), w, {}).defined());
}

}  // namespace
}  // namespace hearth::model
