// The interface of a swappable linear layer: a projection of
// LlamaForCausalLM can be replaced by any implementation of it (INT8/INT4
// weights that stay quantized in memory, see common/quant/quantized_linear.h)
// with LlamaForCausalLM::SetLinearImpl. Header only; the implementations live
// where their kernels are.
#ifndef HEARTH_COMMON_MODEL_LINEAR_IMPL_H_
#define HEARTH_COMMON_MODEL_LINEAR_IMPL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace hearth::model {

class LinearImpl {
 public:
  virtual ~LinearImpl() = default;
  // y = x W^T (+ b): x [M, in] float32 on the model's device -> [M, out]
  // float32. Must not depend on the other rows of x (a sequence's result
  // does not depend on what it is batched with).
  virtual at::Tensor Forward(const at::Tensor& x) const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // Bytes held in memory: codes, scales, zero points, bias.
  virtual int64_t WeightBytes() const = 0;
  // Short name of the representation, e.g. "w4g128", "w8g0a8dyn", "f32".
  virtual std::string Describe() const = 0;
};

}  // namespace hearth::model

#endif  // HEARTH_COMMON_MODEL_LINEAR_IMPL_H_
