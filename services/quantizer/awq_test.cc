#include "services/quantizer/awq.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "services/quantizer/smoothquant.h"

namespace hearth::quantizer {

using quant::QuantScheme;
namespace {

TEST(AwqTest, ScaleSearchBeatsRtnWithSalientChannels) {
  torch::manual_seed(0);
  const int64_t in = 256, out = 128;
  at::Tensor x = torch::randn({1024, in});
  // A few salient input channels with large activations.
  at::Tensor gain = torch::ones({in});
  gain.narrow(0, 0, 8).fill_(20);
  x = x * gain;
  at::Tensor w = torch::randn({out, in}) * 0.05;
  QuantScheme scheme{4, 64, false};
  AwqBlockFn block = [&](const std::vector<at::Tensor>& ws) {
    return x.matmul(ws[0].t());
  };
  AwqScaleResult r = AwqSearchScales(x, {w}, scheme, 20, block);
  at::Tensor ref = x.matmul(w.t());
  const double rtn = (ref - x.matmul(AwqFakeQuantize(w, scheme).t()))
                         .pow(2)
                         .mean()
                         .item<double>();
  at::Tensor q = AwqFakeQuantize(w * r.scales, scheme) / r.scales;
  const double awq = (ref - x.matmul(q.t())).pow(2).mean().item<double>();
  EXPECT_GT(r.best_ratio, 0);
  EXPECT_LT(awq, 0.9 * rtn) << "awq " << awq << " rtn " << rtn;

  // Clipping never increases the per-group error it optimises.
  at::Tensor wc = (w * r.scales).clone();
  at::Tensor xs = x / r.scales;
  const double before =
      (xs.matmul(wc.t()) - xs.matmul(AwqFakeQuantize(wc, scheme).t()))
          .pow(2)
          .mean()
          .item<double>();
  at::Tensor clipped = wc.clone();
  AwqClip(clipped, xs, scheme);
  const double after =
      (xs.matmul(wc.t()) - xs.matmul(AwqFakeQuantize(clipped, scheme).t()))
          .pow(2)
          .mean()
          .item<double>();
  EXPECT_LE(after, before * 1.01);
}

TEST(SmoothQuantTest, PreservesTheFunctionAndFlattensActivations) {
  torch::manual_seed(0);
  at::Tensor x = torch::randn({64, 32});
  x.select(1, 3).mul_(50);
  at::Tensor norm = torch::ones({32});
  at::Tensor w = torch::randn({16, 32});
  ActivationRange range;
  range.Add(x);
  at::Tensor s = SmoothQuantScales(range.channel_absmax(), {w}, 0.5);
  at::Tensor w2 = w.clone(), norm2 = norm.clone();
  ApplySmoothing(s, norm2, {&w2});
  at::Tensor y = (x * norm).matmul(w.t());
  at::Tensor y2 = (x * norm2).matmul(w2.t());
  EXPECT_TRUE(torch::allclose(y, y2, 1e-3, 1e-3));
  ActivationRange smoothed;
  smoothed.Add(x * norm2);
  EXPECT_LT(smoothed.absmax(), range.absmax() / 3);
}

}  // namespace
}  // namespace hearth::quantizer
