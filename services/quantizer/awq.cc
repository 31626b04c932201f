#include "services/quantizer/awq.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace hearth::quantizer {

using quant::FakeQuantize;
using quant::FindParams;
using quant::QuantParams;
using quant::QuantScheme;
using quant::RangeRule;
namespace {

int64_t GroupSize(const QuantScheme& scheme, int64_t in) {
  return scheme.group_size == 0 ? in : scheme.group_size;
}

}  // namespace

at::Tensor AwqFakeQuantize(const at::Tensor& weight,
                           const QuantScheme& scheme) {
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t gs = GroupSize(scheme, in);
  at::Tensor w = weight.reshape({out, in / gs, gs});
  QuantParams p = FindParams(w, scheme.bits, scheme.symmetric, RangeRule::kAwq);
  return FakeQuantize(w, p, scheme.bits).reshape({out, in});
}

AwqScaleResult AwqSearchScales(const at::Tensor& x,
                               const std::vector<at::Tensor>& weights,
                               const QuantScheme& scheme, int grid_size,
                               const AwqBlockFn& block) {
  torch::NoGradGuard no_grad;
  const int64_t in = x.size(-1);
  const int64_t gs = GroupSize(scheme, in);
  // w_mean: |w| normalised by its group's max, averaged over all rows.
  at::Tensor w_all = torch::cat(weights, 0);
  at::Tensor wg = w_all.abs().reshape({-1, gs});
  wg = wg / (std::get<0>(wg.max(1, true)) + 1e-6);
  at::Tensor w_mean = wg.reshape({-1, in}).mean(0);
  at::Tensor x_mean = x.reshape({-1, in}).abs().to(at::kFloat).mean(0);
  at::Tensor reference = block(weights);

  AwqScaleResult result;
  result.best_loss = std::numeric_limits<double>::infinity();
  result.scales = torch::ones({in}, torch::kFloat);
  const int n = grid_size > 0 ? grid_size : 20;
  for (int k = 0; k < n; ++k) {
    const double ratio = static_cast<double>(k) / n;
    at::Tensor s =
        (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp_min(1e-4);
    s = s / (s.max() * s.min()).sqrt();
    s = at::where(s.isfinite(), s, torch::ones_like(s));
    std::vector<at::Tensor> qw;
    for (const at::Tensor& w : weights) {
      qw.push_back(AwqFakeQuantize(w * s, scheme) / s);
    }
    at::Tensor out = block(qw);
    const double loss =
        (reference - out).to(at::kFloat).pow(2).mean().item<double>();
    if (k == 0) result.loss_at_zero = loss;
    if (loss < result.best_loss) {
      result.best_loss = loss;
      result.best_ratio = ratio;
      result.scales = s.clone();
    }
  }
  return result;
}

void AwqClip(at::Tensor& weight, const at::Tensor& x_in,
             const QuantScheme& scheme) {
  torch::NoGradGuard no_grad;
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t gs = GroupSize(scheme, in);
  const int64_t groups = in / gs;
  at::Tensor x = x_in.reshape({-1, in}).to(at::kFloat);
  const int64_t max_tokens = 512;
  if (x.size(0) > max_tokens) {
    x = x.index_select(
        0, torch::linspace(0, x.size(0) - 1, max_tokens).to(torch::kLong));
  }
  const int64_t tokens = x.size(0);
  at::Tensor xg = x.view({tokens, groups, gs});  // [n, G, gs]
  const int64_t batch = 64;
  for (int64_t r0 = 0; r0 < out; r0 += batch) {
    const int64_t nr = std::min(batch, out - r0);
    at::Tensor w = weight.narrow(0, r0, nr).reshape({nr, groups, gs});
    // org_out[r, n, g] = sum_k x[n, g, k] w[r, g, k]
    at::Tensor org_out = torch::einsum("ngk,rgk->rng", {xg, w});
    at::Tensor org_max = std::get<0>(w.abs().max(2, true));  // [nr, G, 1]
    at::Tensor best_max = org_max.clone();
    at::Tensor min_err = torch::full({nr, groups}, 1e30, torch::kFloat);
    for (int i_s = 0; i_s < 10; ++i_s) {
      at::Tensor max_val = org_max * (1 - i_s / 20.0);
      at::Tensor cur = at::clamp(w, -max_val, max_val);
      QuantParams p =
          FindParams(cur, scheme.bits, scheme.symmetric, RangeRule::kAwq);
      at::Tensor q = FakeQuantize(cur, p, scheme.bits);
      at::Tensor cur_out = torch::einsum("ngk,rgk->rng", {xg, q});
      at::Tensor err = (cur_out - org_out).pow(2).mean(1);  // [nr, G]
      at::Tensor better = err < min_err;
      min_err = at::where(better, err, min_err);
      best_max = at::where(better.unsqueeze(2), max_val, best_max);
    }
    at::Tensor clipped = at::clamp(w, -best_max, best_max).reshape({nr, in});
    weight.narrow(0, r0, nr).copy_(clipped);
  }
}

}  // namespace hearth::quantizer
