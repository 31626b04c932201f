#include "services/quantizer/gptq.h"

#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace hearth::quantizer {

using quant::FindParams;
using quant::QuantizedWeight;
using quant::QuantizeToCodes;
using quant::QuantParams;
using quant::QuantScheme;
using quant::RangeRule;
using quant::ValidateScheme;

HessianAccumulator::HessianAccumulator(int64_t in_features)
    : h_(torch::zeros({in_features, in_features}, torch::kFloat)) {}

void HessianAccumulator::Add(const at::Tensor& x_in) {
  torch::NoGradGuard no_grad;
  at::Tensor x = x_in.dim() == 2 ? x_in.unsqueeze(0) : x_in;
  const int64_t tmp = x.size(0);
  x = x.reshape({-1, x.size(-1)}).to(at::kFloat).t();  // [in, tokens]
  h_.mul_(static_cast<double>(n_) / static_cast<double>(n_ + tmp));
  n_ += tmp;
  x = x * std::sqrt(2.0 / static_cast<double>(n_));
  h_.addmm_(x, x.t());
}

absl::StatusOr<GptqResult> GptqQuantize(const at::Tensor& weight,
                                        const at::Tensor& hessian,
                                        const QuantScheme& scheme,
                                        const GptqConfig& config) {
  torch::NoGradGuard no_grad;
  if (weight.dim() != 2 || hessian.dim() != 2 ||
      hessian.size(0) != weight.size(1) || hessian.size(1) != weight.size(1)) {
    return absl::InvalidArgumentError("GPTQ: weight/Hessian shapes disagree");
  }
  if (absl::Status s = ValidateScheme(scheme, weight.size(1)); !s.ok()) {
    return s;
  }
  const int bits = scheme.bits;
  const bool sym = scheme.symmetric;
  const int64_t rows = weight.size(0), columns = weight.size(1);
  const int64_t gs = scheme.group_size;  // 0 = per channel
  const int64_t blocksize = config.block_size > 0 ? config.block_size : 128;
  at::Tensor W = weight.to(at::kFloat).clone();
  at::Tensor H = hessian.to(at::kFloat).clone();

  // Per-channel parameters come from the whole (original) weight.
  QuantParams channel_params;
  if (gs == 0) channel_params = FindParams(W, bits, sym, RangeRule::kGptq);

  // Dead inputs: never active in calibration, so their weights do not matter.
  at::Tensor dead = H.diag() == 0;
  if (dead.any().item<bool>()) {
    at::Tensor idx = dead.nonzero().squeeze(1);
    H.index_put_({idx, idx}, 1.0);
    W.index_fill_(1, idx, 0.0);
  }

  std::vector<QuantParams> static_groups;
  if (gs != 0 && config.static_groups) {
    for (int64_t g = 0; g < columns; g += gs) {
      static_groups.push_back(
          FindParams(W.narrow(1, g, gs), bits, sym, RangeRule::kGptq));
    }
  }

  at::Tensor perm, invperm;
  if (config.act_order) {
    perm = std::get<1>(
        H.diag().sort(c10::optional<bool>(true), 0, /*descending=*/true));
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
    invperm = perm.argsort();
  }

  const double damp = config.damp_percent > 0 ? config.damp_percent : 0.01;
  at::Tensor Hinv;
  {
    at::Tensor Hd = H.to(at::kDouble);
    const double mean_diag = Hd.diag().mean().item<double>();
    Hd.diagonal().add_(damp * mean_diag);
    at::Tensor L;
    at::Tensor info;
    std::tie(L, info) = at::linalg_cholesky_ex(Hd);
    if (info.item<int64_t>() != 0) {
      return absl::InvalidArgumentError(
          "GPTQ: the damped Hessian is not positive definite; increase "
          "damp_percent or the calibration data");
    }
    at::Tensor inv = at::cholesky_inverse(L);
    std::tie(L, info) = at::linalg_cholesky_ex(inv, /*upper=*/true);
    if (info.item<int64_t>() != 0) {
      return absl::InvalidArgumentError("GPTQ: H^-1 is not positive definite");
    }
    Hinv = L.to(at::kFloat);
  }

  at::Tensor Q = torch::zeros_like(W);      // fake-quantized values
  at::Tensor codes = torch::zeros_like(W);  // integer codes, as float
  // Parameters used at each permuted position.
  std::vector<QuantParams> used_groups;  // by group of the permuted position
  double total_loss = 0;
  QuantParams current = channel_params;

  for (int64_t i1 = 0; i1 < columns; i1 += blocksize) {
    const int64_t i2 = std::min(i1 + blocksize, columns);
    const int64_t count = i2 - i1;
    at::Tensor W1 = W.narrow(1, i1, count).clone();
    at::Tensor Q1 = torch::zeros_like(W1);
    at::Tensor C1 = torch::zeros_like(W1);
    at::Tensor Err1 = torch::zeros_like(W1);
    at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);
    auto hinv_acc = Hinv1.accessor<float, 2>();
    for (int64_t i = 0; i < count; ++i) {
      at::Tensor w = W1.select(1, i);
      const float d = hinv_acc[i][i];
      if (gs != 0) {
        if (!config.static_groups) {
          if ((i1 + i) % gs == 0) {
            // The reference reads the full W here (not W1), i.e. without the
            // in-block updates; kept for fidelity.
            current = FindParams(W.narrow(1, i1 + i, gs), bits, sym,
                                 RangeRule::kGptq);
            used_groups.push_back(current);
          }
        } else {
          int64_t idx = i1 + i;
          if (config.act_order) idx = perm[idx].item<int64_t>();
          current = static_groups[idx / gs];
        }
      }
      at::Tensor c = QuantizeToCodes(w.unsqueeze(1), current, bits).squeeze(1);
      at::Tensor q = (c - current.zero) * current.scale;
      Q1.select(1, i).copy_(q);
      C1.select(1, i).copy_(c);
      at::Tensor diff = w - q;
      total_loss += (diff * diff).sum().item<double>() / (d * d);
      at::Tensor err1 = diff / d;
      W1.narrow(1, i, count - i)
          .sub_(err1.unsqueeze(1).matmul(
              Hinv1.select(0, i).narrow(0, i, count - i).unsqueeze(0)));
      Err1.select(1, i).copy_(err1);
    }
    Q.narrow(1, i1, count).copy_(Q1);
    codes.narrow(1, i1, count).copy_(C1);
    if (i2 < columns) {
      W.narrow(1, i2, columns - i2)
          .sub_(Err1.matmul(
              Hinv.narrow(0, i1, count).narrow(1, i2, columns - i2)));
    }
  }

  GptqResult result;
  result.loss = total_loss / 2;
  QuantizedWeight& qw = result.weight;
  qw.scheme = scheme;
  const int64_t eff_gs = gs == 0 ? columns : gs;
  const int64_t groups = columns / eff_gs;
  if (gs == 0) {
    qw.scales = channel_params.scale.unsqueeze(1).contiguous();
    qw.zeros = channel_params.zero.unsqueeze(1).to(at::kInt).contiguous();
  } else {
    const std::vector<QuantParams>& src =
        config.static_groups ? static_groups : used_groups;
    std::vector<at::Tensor> s, z;
    for (int64_t g = 0; g < groups; ++g) {
      s.push_back(src[g].scale);
      z.push_back(src[g].zero);
    }
    qw.scales = torch::stack(s, 1).contiguous();
    qw.zeros = torch::stack(z, 1).to(at::kInt).contiguous();
  }
  // g_idx per permuted position, then back to original column order.
  at::Tensor g_idx;
  if (gs != 0 && config.static_groups && config.act_order) {
    g_idx = perm.div(eff_gs, "floor");  // position p holds column perm[p]
  } else {
    g_idx = torch::arange(columns, torch::kLong).div(eff_gs, "floor");
  }
  if (config.act_order) {
    codes = codes.index_select(1, invperm);
    g_idx = g_idx.index_select(0, invperm);
  }
  qw.codes = codes.to(at::kByte).contiguous();
  qw.g_idx = g_idx.to(at::kInt).contiguous();
  return result;
}

}  // namespace hearth::quantizer
