// Element types of checkpoint tensors, and the scalar half-precision
// conversions that the safetensors and GGUF code share.
//
// DType is deliberately independent of torch::ScalarType: the formats library
// is linked by tools and fuzzers that must not pull in libtorch. The torch
// bridge maps one enum to the other.
//
// The fp16/bf16 helpers are exact in the widening direction and round to
// nearest, ties to even, in the narrowing direction (what torch, numpy and ggml
// do), so a tensor converted here is bit-identical to one converted by those
// libraries.
#ifndef HEARTH_COMMON_FORMATS_DTYPE_H_
#define HEARTH_COMMON_FORMATS_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace hearth::formats {

enum class DType { kF32, kF16, kBF16, kF64, kI8, kI16, kI32, kI64, kU8, kBool };

// Bytes per element (kBool is one byte, as in safetensors and torch).
size_t DTypeSize(DType dtype);

// Parses the dtype strings of the safetensors header ("F32", "BF16", "BOOL"
// ...). Types hearth does not handle (U16, F8_E4M3, ...) are InvalidArgument.
absl::StatusOr<DType> DTypeFromSafetensorsName(std::string_view name);

// The inverse of DTypeFromSafetensorsName.
std::string_view SafetensorsName(DType dtype);

// IEEE 754 binary16 <-> binary32.
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);

// bfloat16 (the upper half of a binary32) <-> binary32. NaN stays NaN.
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToBFloat16(float f);

}  // namespace hearth::formats

#endif  // HEARTH_COMMON_FORMATS_DTYPE_H_
