// SmoothQuant (Xiao et al., arXiv:2211.10438) and static W8A8 activation
// ranges: migrate activation outliers into the weights with per-channel
// scales s = max|X_c|^a / max|W_c|^(1-a) (reference §4.1), divide the RMSNorm
// weight by s and multiply the linears' input columns by s; then record each
// linear's static per-tensor input scale absmax/127 from calibration.
#ifndef HEARTH_SERVICES_QUANTIZER_SMOOTHQUANT_H_
#define HEARTH_SERVICES_QUANTIZER_SMOOTHQUANT_H_

#include <ATen/core/Tensor.h>

#include <vector>

namespace hearth::quantizer {

// Running per-input-channel max |x| (and the per-tensor max).
class ActivationRange {
 public:
  void Add(const at::Tensor& x);  // [..., in]
  const at::Tensor& channel_absmax() const { return channel_; }
  double absmax() const;
  bool empty() const { return !channel_.defined(); }

 private:
  at::Tensor channel_;
};

// clamp(act^alpha / max_w^(1-alpha), 1e-5); max_w is the largest |W[:, c]|
// over all `weights`, clamped to >= 1e-5.
at::Tensor SmoothQuantScales(const at::Tensor& act_absmax,
                             const std::vector<at::Tensor>& weights,
                             double alpha);

// norm_weight /= s; each weight's columns *= s (in place).
void ApplySmoothing(const at::Tensor& scales, at::Tensor& norm_weight,
                    std::vector<at::Tensor*> weights);

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_SMOOTHQUANT_H_
