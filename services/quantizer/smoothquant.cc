#include "services/quantizer/smoothquant.h"

#include <torch/torch.h>

namespace hearth::quantizer {

void ActivationRange::Add(const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  at::Tensor m =
      std::get<0>(x.reshape({-1, x.size(-1)}).abs().to(at::kFloat).max(0));
  channel_ = channel_.defined() ? at::maximum(channel_, m) : m;
}

double ActivationRange::absmax() const {
  return channel_.defined() ? channel_.max().item<double>() : 0.0;
}

at::Tensor SmoothQuantScales(const at::Tensor& act_absmax,
                             const std::vector<at::Tensor>& weights,
                             double alpha) {
  torch::NoGradGuard no_grad;
  at::Tensor w_max = std::get<0>(torch::cat(weights, 0).abs().max(0));
  w_max = w_max.clamp_min(1e-5);
  return (act_absmax.clamp_min(1e-5).pow(alpha) / w_max.pow(1 - alpha))
      .clamp_min(1e-5);
}

void ApplySmoothing(const at::Tensor& scales, at::Tensor& norm_weight,
                    std::vector<at::Tensor*> weights) {
  torch::NoGradGuard no_grad;
  norm_weight.div_(scales);
  for (at::Tensor* w : weights) w->mul_(scales.unsqueeze(0));
}

}  // namespace hearth::quantizer
