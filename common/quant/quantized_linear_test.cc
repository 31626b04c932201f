#include "common/quant/quantized_linear.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace hearth::quant {
namespace {

TEST(QuantizedLinearTest, MatchesDequantizedMatmul) {
  torch::manual_seed(0);
  at::Tensor w = torch::randn({96, 256});
  at::Tensor bias = torch::randn({96});
  for (int bits : {4, 8}) {
    for (int group : {0, 32, 128}) {
      QuantizedWeight q =
          RtnQuantize(w, {bits, group, false}, RangeRule::kGptq);
      auto lin = QuantizedLinear::Create(q, bias, ActivationMode::kNone);
      ASSERT_TRUE(lin.ok()) << lin.status();
      for (int64_t m : {1, 16, 100}) {
        at::Tensor x = torch::randn({m, 256});
        at::Tensor ref = at::linear(x, q.Dequantize(), bias);
        EXPECT_TRUE(torch::allclose((*lin)->Forward(x), ref, 1e-3, 1e-3))
            << bits << " " << group << " " << m;
        // A row's result does not depend on what it is batched with (up to
        // the 64 rows of the decode kernel).
        if (m <= 16) {
          EXPECT_TRUE(torch::equal((*lin)->Forward(x.narrow(0, 0, 1)),
                                   (*lin)->Forward(x).narrow(0, 0, 1)));
        }
      }
    }
  }
}

TEST(QuantizedLinearTest, ActOrderGroupsArePermuted) {
  // GPTQ act-order: columns belong to groups in a shuffled order.
  torch::manual_seed(0);
  const int64_t in = 128, out = 30;  // Not a multiple of the 4-row tile.
  QuantizedWeight q;
  q.scheme = {4, 32, false};
  q.codes = torch::randint(0, 16, {out, in}, torch::kInt).to(at::kByte);
  q.scales = torch::rand({out, in / 32}) + 0.1;
  q.zeros = torch::randint(1, 15, {out, in / 32}, torch::kInt);
  q.g_idx = SequentialGroupIndex(in, 32).index_select(0, torch::randperm(in));
  ASSERT_FALSE(q.g_idx.equal(SequentialGroupIndex(in, 32)));
  auto lin = QuantizedLinear::Create(q, {}, ActivationMode::kNone);
  ASSERT_TRUE(lin.ok()) << lin.status();
  for (int64_t m : {1, 4, 80}) {
    at::Tensor x = torch::randn({m, in});
    EXPECT_TRUE(torch::allclose((*lin)->Forward(x),
                                x.matmul(q.Dequantize().t()), 1e-3, 1e-3))
        << m;
  }
}

TEST(QuantizedLinearTest, DynamicActivationsAreInt8) {
  torch::manual_seed(0);
  at::Tensor w = torch::randn({64, 128});
  QuantizedWeight q = RtnQuantize(w, {8, 0, true}, RangeRule::kAbsMax);
  auto lin = QuantizedLinear::Create(q, {}, ActivationMode::kDynamic);
  ASSERT_TRUE(lin.ok());
  at::Tensor x = torch::randn({2, 128});
  at::Tensor s = std::get<0>(x.abs().max(1, true)) / 127;
  at::Tensor xq = (x / s).round() * s;
  EXPECT_TRUE(torch::allclose((*lin)->Forward(x), xq.matmul(q.Dequantize().t()),
                              1e-3, 1e-3));
  // INT4 weights take ~1/7 of float32's bytes (codes + fp32 params).
  QuantizedWeight q4 = RtnQuantize(w, {4, 32, true}, RangeRule::kGptq);
  auto lin4 = QuantizedLinear::Create(q4, {}, ActivationMode::kNone);
  ASSERT_TRUE(lin4.ok());
  EXPECT_LE((*lin4)->WeightBytes(), 0.2 * w.numel() * 4);
}

TEST(QuantizedLinearTest, RejectsBadGroups) {
  QuantizedWeight q =
      RtnQuantize(torch::randn({8, 48}), {4, 0, true}, RangeRule::kGptq);
  EXPECT_FALSE(QuantizedLinear::Create(q, {}, ActivationMode::kNone).ok());
}

}  // namespace
}  // namespace hearth::quant
