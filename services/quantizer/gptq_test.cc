#include "services/quantizer/gptq.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace hearth::quantizer {

using quant::QuantizedWeight;
using quant::QuantScheme;
using quant::RangeRule;
using quant::RtnQuantize;
using quant::SequentialGroupIndex;
namespace {

// Correlated inputs: a few latent factors mixed into every channel, plus
// noise, so the Hessian is far from diagonal (where GPTQ = RTN).
at::Tensor CorrelatedInputs(int64_t tokens, int64_t in) {
  at::Tensor z = torch::randn({tokens, 8});
  at::Tensor mix = torch::randn({8, in});
  return z.matmul(mix) + 0.1 * torch::randn({tokens, in});
}

double OutputError(const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& q) {
  return (x.matmul(w.t()) - x.matmul(q.t())).pow(2).mean().item<double>();
}

class GptqTest : public ::testing::TestWithParam<std::tuple<int, bool, bool>> {
};

TEST_P(GptqTest, BeatsRtnOnCorrelatedActivations) {
  torch::manual_seed(0);
  const auto [group, act_order, static_groups] = GetParam();
  const int64_t in = 256, out = 64;
  at::Tensor w = torch::randn({out, in}) * 0.05;
  at::Tensor x = CorrelatedInputs(2048, in);
  HessianAccumulator h(in);
  h.Add(x.view({8, 256, in}));
  QuantScheme scheme{4, group, true};
  GptqConfig config;
  config.act_order = act_order;
  config.static_groups = static_groups;
  config.block_size = 64;  // several blocks: exercises the lazy update
  auto r = GptqQuantize(w, h.hessian(), scheme, config);
  ASSERT_TRUE(r.ok()) << r.status();
  QuantizedWeight rtn = RtnQuantize(w, scheme, RangeRule::kGptq);
  const double e_gptq = OutputError(x, w, r->weight.Dequantize());
  const double e_rtn = OutputError(x, w, rtn.Dequantize());
  EXPECT_LT(e_gptq, 0.8 * e_rtn) << "gptq " << e_gptq << " rtn " << e_rtn;
  // Codes/params/g_idx describe a proper 4-bit weight.
  EXPECT_LE(r->weight.codes.max().item<int>(), 15);
  EXPECT_EQ(r->weight.g_idx.size(0), in);
  const int64_t groups = group == 0 ? 1 : in / group;
  EXPECT_EQ(r->weight.scales.sizes(), (std::vector<int64_t>{out, groups}));
  at::Tensor counts = torch::bincount(r->weight.g_idx.to(at::kLong));
  EXPECT_TRUE((counts == in / groups).all().item<bool>());
  if (group != 0 && static_groups) {
    EXPECT_TRUE(r->weight.g_idx.equal(SequentialGroupIndex(in, group)));
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GptqTest,
                         ::testing::Values(std::make_tuple(0, false, false),
                                           std::make_tuple(64, false, false),
                                           std::make_tuple(64, true, false),
                                           std::make_tuple(64, true, true),
                                           std::make_tuple(32, false, true)));

TEST(HessianTest, IsRunningAverage) {
  at::Tensor x = torch::randn({4, 10, 16});
  HessianAccumulator a(16), b(16);
  a.Add(x);
  b.Add(x.narrow(0, 0, 1));
  b.Add(x.narrow(0, 1, 3));
  EXPECT_TRUE(torch::allclose(a.hessian(), b.hessian(), 1e-4, 1e-5));
  at::Tensor flat = x.reshape({-1, 16});
  EXPECT_TRUE(torch::allclose(a.hessian(), 2.0 / 4 * flat.t().matmul(flat),
                              1e-4, 1e-4));
}

TEST(GptqErrors, BadShapes) {
  auto r =
      GptqQuantize(torch::randn({4, 64}), torch::eye(32), {4, 32, true}, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hearth::quantizer
