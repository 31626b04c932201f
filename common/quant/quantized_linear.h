// Linear layers whose weights stay quantized in memory, as
// model::LinearImpl so that LlamaForCausalLM::SetLinearImpl can swap them in
// for float projections (model::LoadModel does for quantized checkpoints).
//
// QuantizedLinear holds 8-bit codes (1 byte per weight) or 4-bit codes packed
// two per byte, with a float (scale, -zero*scale) pair per (row, group). Its
// CPU kernel (AVX2+FMA, chosen at run time, scalar otherwise) walks the weight
// rows once: each row is expanded into a float buffer that stays in L1 and is
// dotted with every activation row, so the weight bytes streamed from memory
// per decode step are 1/4 (INT8) or ~1/7 (INT4 + params) of float32's. Rows
// are split across ATen's intra-op threads.
//
// Activations: kNone keeps them float (weight-only INT4/INT8); kDynamic
// quantizes each activation row to int8 with its own absmax/127 scale at run
// time (dynamic INT8); kStatic uses the per-tensor scale fixed by calibration
// (W8A8). Quantized activations are integers times a scale, so the products
// are those of an integer GEMM; they are accumulated in float32.
//
// Act-order GPTQ weights (g_idx not sequential) are stored with their columns
// sorted by group, and the activations are gathered with the same permutation
// (as exllama and vLLM do), so every group is contiguous in the kernel.
#ifndef HEARTH_COMMON_QUANT_QUANTIZED_LINEAR_H_
#define HEARTH_COMMON_QUANT_QUANTIZED_LINEAR_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/linear_impl.h"
#include "common/quant/quant_core.h"

namespace hearth::quant {

enum class ActivationMode { kNone, kDynamic, kStatic };

class QuantizedLinear : public model::LinearImpl {
 public:
  // `input_scale` is used with kStatic only (must be > 0).
  static absl::StatusOr<std::unique_ptr<QuantizedLinear>> Create(
      const QuantizedWeight& weight, at::Tensor bias, ActivationMode mode,
      double input_scale = 0);

  // x [M, in] float32 CPU -> [M, out] float32.
  at::Tensor Forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  // Codes, per-group scale and offset, act-order permutation and bias.
  int64_t WeightBytes() const override;
  std::string Describe() const override;

  int bits() const { return bits_; }
  int64_t group_size() const { return group_size_; }
  ActivationMode activation_mode() const { return mode_; }

  // Float32 rows [first, first + count) of the weight, in the stored column
  // order (permuted for act-order); for tests and prefill tiles.
  at::Tensor DequantizeRows(int64_t first, int64_t count) const;

 private:
  QuantizedLinear() = default;

  int bits_ = 4;
  int64_t out_ = 0, in_ = 0, group_size_ = 0, groups_ = 0;
  at::Tensor data_;    // uint8 [out, in] (8-bit) or [out, in / 2] (4-bit)
  at::Tensor scale_;   // float32 [out, groups]
  at::Tensor offset_;  // float32 [out, groups] = -zero * scale
  at::Tensor perm_;    // int64 [in] or undefined
  at::Tensor bias_;
  ActivationMode mode_ = ActivationMode::kNone;
  double input_scale_ = 0;
};

// Whether the AVX2 kernel is in use on this CPU.
bool QuantizedKernelAccelerated();

}  // namespace hearth::quant

#endif  // HEARTH_COMMON_QUANT_QUANTIZED_LINEAR_H_
