// GGML tensor element types and their block (de)quantizers, without ggml.
//
// ggml stores a row of `n` values as n / block_size blocks of type_size bytes
// each. F32/F16/BF16 are "blocks" of one value; Q8_0 and Q4_0 are 32 values
// behind one fp16 scale; the K-quants are 256-value super-blocks.
//
// The quantizers reproduce llama.cpp's reference functions
// (quantize_row_q8_0_ref, quantize_row_q4_0_ref in ggml/src/ggml-quants.c)
// byte for byte, because a GGUF written by hearth must be indistinguishable
// from one written by llama-quantize: tools diff such files, and tests compare
// them bytewise. See shared/reference/quantization-formats.md §1.3.
//
// Dequantizers cover every type a llama-family GGUF commonly carries (F32, F16,
// BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) so
// that hearth can load files written by llama.cpp as well as its own. The IQ*
// types are listed (so files holding them parse) but cannot be dequantized.
//
// All block data is little-endian; these functions assume a little-endian host.
#ifndef HEARTH_COMMON_FORMATS_GGML_QUANTS_H_
#define HEARTH_COMMON_FORMATS_GGML_QUANTS_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace hearth::formats {

// llama.cpp's `enum ggml_type`; the numeric values are part of the GGUF format.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
};

// Block geometry of one type. `type_size` is the bytes of one block of
// `block_size` values.
struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;  // As ggml spells it: "f32", "q4_0", "q6_K", ...
  int64_t block_size;
  size_t type_size;
  bool can_dequantize;  // DequantizeRow supports it.
  bool can_quantize;    // QuantizeRow supports it.
};

// nullptr when `id` is not a type GGUF files may hold (removed ids 4, 5, 31-33,
// 36-38 and anything unknown), so readers can reject a file naming it.
const GgmlTypeTraits* FindGgmlTypeTraits(uint32_t id);

// Traits of a known enumerator (never nullptr for the values declared above).
const GgmlTypeTraits& GetGgmlTypeTraits(GgmlType type);

std::string_view GgmlTypeName(GgmlType type);

// Bytes of a row of `n` values: type_size * n / block_size, as ggml_row_size.
// `n` must be a multiple of the block size (see RowFitsBlocks).
size_t GgmlRowSize(GgmlType type, int64_t n);

// Whether a row of `n` values is a whole number of blocks of `type`. llama.cpp
// refuses tensors whose ne[0] is not ("not a multiple of block size").
bool RowFitsBlocks(GgmlType type, int64_t n);

// Encodes `n` floats as type `type` into `dst`, which must hold
// GgmlRowSize(type, n) bytes. InvalidArgument when `n` does not fit whole
// blocks or the type has no quantizer here (can_quantize is false).
absl::Status QuantizeRow(GgmlType type, const float* src, int64_t n,
                         uint8_t* dst);

// Decodes GgmlRowSize(type, n) bytes at `src` into `n` floats.
absl::Status DequantizeRow(GgmlType type, const uint8_t* src, int64_t n,
                           float* dst);

// The individual reference kernels, for callers that already know the type.
// `k` must be a multiple of 32 (Q8_0, Q4_0). Output sizes: k/32 * 34 and
// k/32 * 18 bytes.
void QuantizeRowQ8_0(const float* x, uint8_t* y, int64_t k);
void QuantizeRowQ4_0(const float* x, uint8_t* y, int64_t k);
void DequantizeRowQ8_0(const uint8_t* x, float* y, int64_t k);
void DequantizeRowQ4_0(const uint8_t* x, float* y, int64_t k);

}  // namespace hearth::formats

#endif  // HEARTH_COMMON_FORMATS_GGML_QUANTS_H_
