// GPTQ (Frantar et al., arXiv:2210.17323): quantize a linear layer's weight
// column by column, spreading each column's rounding error over the columns
// not yet quantized in proportion to the inverse Hessian of the layer's
// reconstruction loss, H = (2/N) sum X X^T over calibration inputs X.
//
// The algorithm follows IST-DASLab/gptq gptq.py (fasterquant) step by step, as
// transcribed in reference/quantization-formats.md §2.1: dead inputs, static
// groups, act-order permutation, percdamp * mean(diag H) damping, the upper
// Cholesky factor of H^-1, block-wise lazy error feedback, and AutoGPTQ's
// g_idx. Group parameters are recomputed on the error-updated weight at each
// group boundary, as the reference does. It returns codes and parameters
// (not a fake-quantized float matrix) so the result can be packed exactly.
#ifndef HEARTH_SERVICES_QUANTIZER_GPTQ_H_
#define HEARTH_SERVICES_QUANTIZER_GPTQ_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/quant/quant_core.h"

namespace hearth::quantizer {

struct GptqConfig {
  double damp_percent = 0.01;
  bool act_order = false;
  bool static_groups = false;
  int block_size = 128;
};

// Running H = (2/N) sum X X^T, N counting sequences (reference §2.1 add_batch).
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t in_features);
  // x: [sequences, tokens, in] or [tokens, in] (one sequence).
  void Add(const at::Tensor& x);
  const at::Tensor& hessian() const { return h_; }
  int64_t num_samples() const { return n_; }

 private:
  at::Tensor h_;  // float32 [in, in]
  int64_t n_ = 0;
};

struct GptqResult {
  quant::QuantizedWeight weight;
  // sum over rows and columns of (w - q)^2 / d^2, the reference's "error".
  double loss = 0;
};

// `weight` [out, in] float, `hessian` [in, in]. InvalidArgument for bad shapes
// or a Hessian that stays indefinite after damping.
absl::StatusOr<GptqResult> GptqQuantize(const at::Tensor& weight,
                                        const at::Tensor& hessian,
                                        const quant::QuantScheme& scheme,
                                        const GptqConfig& config);

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_GPTQ_H_
