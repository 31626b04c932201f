// Integer weight quantization shared by every method: the quantizer
// parameters (scale, zero point), round-to-nearest (RTN), and the exact
// checkpoint packings of GPTQ v1 and AutoAWQ GEMM.
//
// A quantized weight is kept as unsigned integer codes q in [0, 2^bits - 1]
// with one (scale, zero) pair per output row and column group, so that
//
//   w[r, c] = (q[r, c] - zero[r, g_idx[c]]) * scale[r, g_idx[c]].
//
// That one representation covers symmetric INT8 (zero 128), GPTQ (sym zero
// 2^(bits-1), asym any), AWQ (asym) and act-order (non-monotonic g_idx), and
// converts losslessly to each file layout. Scales are rounded to float16 when
// they are chosen, because both checkpoint formats store fp16 scales: the
// codes are then computed against the scale the loader will actually see, and
// hearth's dequantized weights equal transformers'/vLLM's bit for bit (up to
// their fp16 arithmetic).
//
// All functions take and return float32 CPU tensors (codes uint8, zeros and
// g_idx int32) and throw c10::Error only on programming errors; argument
// checks that depend on user input are in ValidateScheme.
#ifndef HEARTH_COMMON_QUANT_QUANT_CORE_H_
#define HEARTH_COMMON_QUANT_QUANT_CORE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hearth::quant {

struct QuantScheme {
  int bits = 4;  // 4 or 8.
  // Input columns per group; 0 = one group per row (per channel).
  int group_size = 128;
  bool symmetric = true;
};

// InvalidArgument naming the field: bits must be 4 or 8, group_size 0, 32, 64
// or 128 and must divide `in_features`.
absl::Status ValidateScheme(const QuantScheme& scheme, int64_t in_features);

// How a group's [min, max] becomes (scale, zero).
enum class RangeRule {
  // IST-DASLab gptq quant.py: the range always includes 0; sym uses
  // scale = 2*absmax/maxq and zero = (maxq+1)/2. Asym zero is kept >= 1 so
  // that GPTQ v1's stored "zero - 1" cannot underflow.
  kGptq,
  // torch.ao / SmoothQuant: scale = absmax / (2^(bits-1) - 1), zero
  // 2^(bits-1) (i.e. signed int8 with zero point 0).
  kAbsMax,
  // AutoAWQ pseudo_quantize_tensor: asym over the group's own [min, max].
  kAwq,
};

// Quantizer parameters of the last dimension of `w` ([..., cols] -> [...]).
struct QuantParams {
  at::Tensor scale;  // float32, fp16-representable, > 0.
  at::Tensor zero;   // float32 holding integers in [0, maxq].
};

QuantParams FindParams(const at::Tensor& w, int bits, bool symmetric,
                       RangeRule rule);

// Codes (as float) clamp(round(w / scale) + zero, 0, maxq); params broadcast
// over the last dimension of w.
at::Tensor QuantizeToCodes(const at::Tensor& w, const QuantParams& p, int bits);
// (codes - zero) * scale: the value the quantized weight stands for.
at::Tensor FakeQuantize(const at::Tensor& w, const QuantParams& p, int bits);

struct QuantizedWeight {
  QuantScheme scheme;
  at::Tensor codes;   // uint8 [out, in]
  at::Tensor scales;  // float32 [out, groups]
  at::Tensor zeros;   // int32 [out, groups]
  at::Tensor g_idx;   // int32 [in]

  int64_t out_features() const { return codes.size(0); }
  int64_t in_features() const { return codes.size(1); }
  int64_t num_groups() const { return scales.size(1); }
  // Columns per group (in_features for per-channel).
  int64_t effective_group_size() const;
  // Float32 [out, in] weight it stands for.
  at::Tensor Dequantize() const;
};

// g_idx[c] = c / group_size.
at::Tensor SequentialGroupIndex(int64_t in_features, int64_t group_size);

// Round-to-nearest: parameters per (row, group) from the weight itself.
QuantizedWeight RtnQuantize(const at::Tensor& weight, const QuantScheme& scheme,
                            RangeRule rule);

// --- GPTQ v1 (AutoGPTQ "gptq" checkpoint_format), reference §2.2 -----------
struct GptqTensors {
  at::Tensor qweight;  // int32 [in / (32/bits), out]
  at::Tensor qzeros;   // int32 [groups, out / (32/bits)], stores zero - 1
  at::Tensor scales;   // float16 [groups, out]
  at::Tensor g_idx;    // int32 [in]
};
// InvalidArgument when in/out are not multiples of the pack factor or a
// zero point is 0 (not storable in v1).
absl::StatusOr<GptqTensors> PackGptq(const QuantizedWeight& w);
absl::StatusOr<QuantizedWeight> UnpackGptq(const GptqTensors& t, int bits,
                                           int group_size, bool symmetric);

// --- AutoAWQ GEMM, reference §3.2 -------------------------------------------
struct AwqTensors {
  at::Tensor qweight;  // int32 [in, out / 8], nibble order 0,2,4,6,1,3,5,7
  at::Tensor qzeros;   // int32 [groups, out / 8], no offset
  at::Tensor scales;   // float16 [groups, out]
};
// 4-bit with sequential groups only.
absl::StatusOr<AwqTensors> PackAwq(const QuantizedWeight& w);
absl::StatusOr<QuantizedWeight> UnpackAwq(const AwqTensors& t, int group_size);

}  // namespace hearth::quant

#endif  // HEARTH_COMMON_QUANT_QUANT_CORE_H_
