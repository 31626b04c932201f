// AWQ (Lin et al., arXiv:2306.00978): protect the input channels that carry
// large activations by scaling them up before quantization and folding the
// inverse scale into the operation that produces the input (an RMSNorm weight
// or the rows of the previous linear), so the float function is unchanged and
// only the quantization error moves.
//
// Follows AutoAWQ (reference §3.1): s = x_mean^a / (w_mean^(1-a) + 1e-4)
// (duo scaling), normalised by sqrt(max(s) min(s)), a on a grid of
// `grid_size` points in [0, 1); the loss is the MSE of the whole block's
// output (the attention or MLP module, supplied by the caller as a function),
// and the clip search shrinks each (row, group)'s max |w| over 10 steps.
#ifndef HEARTH_SERVICES_QUANTIZER_AWQ_H_
#define HEARTH_SERVICES_QUANTIZER_AWQ_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "common/quant/quant_core.h"

namespace hearth::quantizer {

// Runs the block that consumes the scaled linears: gets the linears' weights
// (in the order given to AwqSearchScales) and returns the block output.
using AwqBlockFn =
    std::function<at::Tensor(const std::vector<at::Tensor>& weights)>;

struct AwqScaleResult {
  at::Tensor scales;  // float32 [in]; 1 everywhere when no ratio helped.
  double best_ratio = 0;
  double best_loss = 0;
  double loss_at_zero = 0;  // at ratio 0 (s = 1 / w_mean, normalised)
};

// `x` [tokens, in]: the linears' shared input; `weights` [out_i, in]. Does
// not modify the weights: the caller multiplies their columns by `scales` and
// divides the producing op by them.
AwqScaleResult AwqSearchScales(const at::Tensor& x,
                               const std::vector<at::Tensor>& weights,
                               const quant::QuantScheme& scheme, int grid_size,
                               const AwqBlockFn& block);

// Clips `weight` [out, in] in place to the per-(row, group) max |w| that
// minimises the group's output error on `x` [tokens, in] (at most 512 tokens
// are used, sampled evenly).
void AwqClip(at::Tensor& weight, const at::Tensor& x,
             const quant::QuantScheme& scheme);

// The fake quantizer AWQ searches with (asym min/max per group, or GPTQ's
// symmetric rule when scheme.symmetric).
at::Tensor AwqFakeQuantize(const at::Tensor& weight,
                           const quant::QuantScheme& scheme);

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_AWQ_H_
