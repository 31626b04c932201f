#include "services/distiller/losses.h"

#include <torch/torch.h>

#include <cmath>

#include "gtest/gtest.h"

namespace hearth::distiller {
namespace {

TEST(LossesTest, KdLossMatchesHandComputedValue) {
  // Teacher at T=2: softmax([2 ln 3, 0] / 2) = [3/4, 1/4]; student uniform.
  // KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120..., times T^2 = 4.
  at::Tensor teacher = torch::tensor({{2 * std::log(3.0), 0.0}});
  at::Tensor student = torch::zeros({1, 2});
  const double kl = 0.75 * std::log(1.5) + 0.25 * std::log(0.5);
  EXPECT_NEAR(SoftTargetKdLoss(student, teacher, 2.0).item<double>(), 4 * kl,
              1e-6);
  EXPECT_NEAR(SoftTargetKdLoss(student, teacher * 0.5, 1.0).item<double>(), kl,
              1e-6);
  // Identical distributions: zero.
  EXPECT_NEAR(SoftTargetKdLoss(teacher, teacher, 2.0).item<double>(), 0.0,
              1e-7);
}

TEST(LossesTest, KdLossAveragesOverPositions) {
  // [B=2, T=1, V=2]: one position with the KL above, one with zero KL.
  at::Tensor teacher = torch::tensor({{{std::log(3.0), 0.0}}, {{0.0, 0.0}}});
  at::Tensor student = torch::zeros({2, 1, 2});
  const double kl = 0.75 * std::log(1.5) + 0.25 * std::log(0.5);
  EXPECT_NEAR(SoftTargetKdLoss(student, teacher, 1.0).item<double>(), kl / 2,
              1e-6);
}

TEST(LossesTest, CrossEntropy) {
  at::Tensor logits = torch::zeros({1, 2, 4});
  at::Tensor labels = torch::tensor({{1, 3}}, torch::kLong);
  EXPECT_NEAR(CrossEntropyLoss(logits, labels).item<double>(), std::log(4.0),
              1e-6);
}

TEST(LossesTest, GradientReachesStudentOnly) {
  at::Tensor student = torch::randn({3, 5}, torch::requires_grad());
  at::Tensor teacher = torch::randn({3, 5}, torch::requires_grad());
  at::Tensor hs = torch::randn({2, 3, 4}, torch::requires_grad());
  at::Tensor ht = torch::randn({2, 3, 6}, torch::requires_grad());
  at::Tensor proj = torch::randn({6, 4}, torch::requires_grad());
  at::Tensor loss = SoftTargetKdLoss(student, teacher, 2.0) +
                    HiddenStateLoss({hs, hs}, {ht, ht}, {{0, 0}}, {proj});
  loss.backward();
  EXPECT_TRUE(student.grad().defined());
  EXPECT_TRUE(hs.grad().defined());
  EXPECT_TRUE(proj.grad().defined());
  EXPECT_FALSE(teacher.grad().defined());
  EXPECT_FALSE(ht.grad().defined());
}

TEST(LossesTest, HiddenStateLossThroughProjection) {
  // Identity projection of equal states: zero; a projection that doubles: MSE
  // of x.
  at::Tensor x = torch::tensor({{{1.0f, 2.0f}}});
  at::Tensor eye = torch::eye(2);
  EXPECT_NEAR(HiddenStateLoss({x, x}, {x, x}, {{0, 0}}, {eye}).item<double>(),
              0, 1e-7);
  EXPECT_NEAR(
      HiddenStateLoss({x, x}, {x, x}, {{0, 0}}, {2 * eye}).item<double>(), 2.5,
      1e-6);
}

TEST(LossesTest, UniformMapping) {
  EXPECT_EQ(UniformLayerMapping(2, 4), (LayerPairs{{0, 1}, {1, 3}}));
  EXPECT_EQ(UniformLayerMapping(3, 6), (LayerPairs{{0, 1}, {1, 3}, {2, 5}}));
  EXPECT_EQ(UniformLayerMapping(2, 2), (LayerPairs{{0, 0}, {1, 1}}));
}

TEST(LossesTest, AttentionLossIsHeadAveragedMse) {
  at::Tensor a = torch::full({1, 2, 2, 2}, 0.5);
  at::Tensor b =
      torch::tensor({{{{1.0f, 0.0f}, {1.0f, 0.0f}}}});  // [1, 1, 2, 2]
  EXPECT_NEAR(AttentionMapLoss({a}, {b}, {{0, 0}}).item<double>(), 0.25, 1e-6);
}

}  // namespace
}  // namespace hearth::distiller
