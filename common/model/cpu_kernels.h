// Matrix products for decode-sized batches on the CPU.
//
// A decode step multiplies a few activation rows (one per running sequence) by
// every weight matrix of the model. BLAS gemm is built for large products: with
// 1-64 rows it still packs the whole weight matrix into its blocked layout, so
// it reads the weights twice and writes them once, and sgemv handles only one
// row. The decode step is bound by streaming the weights from memory, so
// SkinnyLinear instead walks the weight rows once, in 4-row tiles, and
// multiplies each tile with all activation rows while it is in L1 (AVX-512 or
// AVX2 + FMA, chosen at run time). Output rows are split across ATen's intra-op
// threads (at::parallel_for), which keeps one thread pool busy instead of two
// competing ones.
//
// Each output element is a dot product accumulated in the same order whatever
// the number of rows, so a sequence's logits do not depend on what it was
// batched with.
#ifndef HEARTH_COMMON_MODEL_CPU_KERNELS_H_
#define HEARTH_COMMON_MODEL_CPU_KERNELS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace hearth::model {

// Rows up to which SkinnyLinear is used in place of BLAS.
inline constexpr int64_t kSkinnyMaxRows = 64;

// Whether this CPU has a SkinnyLinear kernel (AVX2+FMA or AVX-512F).
bool SkinnyLinearSupported();

// y = x · weightᵀ (+ bias) for float32 CPU tensors: x [M, K] (rows contiguous),
// weight [N, K] contiguous, bias [N] or undefined. Returns an undefined tensor
// when the inputs do not qualify (other dtype/device/layout, M >
// kSkinnyMaxRows, no kernel for this CPU), so the caller falls back to
// at::linear.
at::Tensor SkinnyLinear(const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& bias);

// --- Fused float32 CPU kernels for the decode step
// --------------------------------
//
// A decode step runs ~40 small tensor ops per layer; at a few microseconds of
// dispatch each, that is as much time as streaming a small model's weights.
// These kernels fuse those ops into single passes over raw memory. All take
// contiguous float32 CPU tensors (the caller checks); the numerics are those of
// the tensor code they replace (float32 throughout), up to summation order.

// transformers' RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, row by row.
// x [M, H] (rows may be strided), weight [H].
at::Tensor RmsNormF32(const at::Tensor& x, const at::Tensor& weight,
                      double eps);

// Applies RoPE in place to the query and key heads of each row of qkv [N, (H +
// 2 * KV) * D] (rows contiguous) with cos/sin [N, D] (sin with rotate_half's
// sign in its first half, as LlamaForCausalLM's tables), then copies the row's
// key and value heads into cache slot slots[r] of `store` [2 * KV, S, D].
void RopeAndStoreF32(const at::Tensor& qkv, const at::Tensor& cos,
                     const at::Tensor& sin, int64_t H, int64_t KV, int64_t D,
                     const at::Tensor& store, const int64_t* slots);

// Attention of one query token per sequence over its cached keys/values, read
// in place through its block table (no gather). Rows 0..n-1 of qkv hold the
// (rotated) queries; sequence i has lengths[i] cached tokens (its new one
// included) in blocks block_tables[i * max_blocks ...] of block_size slots.
// Writes the context vectors to rows 0..n-1 of ctx [>= n, H * D].
void PagedDecodeAttentionF32(const at::Tensor& qkv, int64_t n, int64_t H,
                             int64_t KV, int64_t D, const at::Tensor& store,
                             int64_t block_size, const int64_t* block_tables,
                             int64_t max_blocks, const int64_t* lengths,
                             double scale, const at::Tensor& ctx);

// silu(gu[:, :I]) * gu[:, I:] for gu [M, 2 * I].
at::Tensor SiluMulF32(const at::Tensor& gu, int64_t I);

}  // namespace hearth::model

#endif  // HEARTH_COMMON_MODEL_CPU_KERNELS_H_
