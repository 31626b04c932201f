// A Llama-family model whose linear layers may be quantized: the runtime the
// quantizer calibrates, evaluates and benchmarks with, and that loads every
// format it writes (GPTQ v1 and AWQ GEMM folders, hearth's INT8 folder, plain
// float folders and llama GGUF Q8_0/Q4_0) without expanding the quantized
// weights to float.
//
// Why not common/model's LlamaForCausalLM: it stores each projection as a
// float tensor (q/k/v and gate/up packed into shared buffers) and has no hook
// to substitute a linear implementation. This class reuses its building blocks
// (RoPE frequencies, SkinnyLinear, the RMSNorm kernel) and the HF parameter
// names, and runs the same math (checked against it in the test); the hook
// LlamaForCausalLM would need is described in services/quantizer/README.md.
//
// Not thread-safe; one forward at a time.
#ifndef HEARTH_SERVICES_QUANTIZER_QUANTIZED_LLAMA_H_
#define HEARTH_SERVICES_QUANTIZER_QUANTIZED_LLAMA_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/formats/hf_config.h"
#include "services/quantizer/quantized_linear.h"

namespace hearth::quantizer {

struct QuantizedLayer {
  at::Tensor norm_in, norm_post;  // float32 [hidden]
  std::unique_ptr<LinearOp> q, k, v, o, gate, up, down;
};

// Inputs of a layer's linears, captured during a forward (calibration).
// Stages: 1 = attention input (normed), 2 = o_proj input, 3 = MLP input
// (normed), 4 = down_proj input. RunLayer stops after `stop_after` (0 = run
// the whole layer) and then returns an undefined tensor.
struct LayerTaps {
  int stop_after = 0;
  at::Tensor attn_in, o_in, mlp_in, down_in;  // [B, T, in]
  at::Tensor attn_out;  // o_proj output [B, T, hidden] (from stage 3 on)
};

// Per-sequence key/value storage for incremental decoding.
struct DecodeCache {
  std::vector<at::Tensor> k, v;  // per layer [B, kv_heads, capacity, head_dim]
  int64_t length = 0;
};

class QuantizedLlama {
 public:
  // Every linear float; `tensors` by HF name (any float dtype; converted).
  static absl::StatusOr<std::unique_ptr<QuantizedLlama>> FromFloatTensors(
      const formats::LlamaConfig& config,
      const std::map<std::string, at::Tensor>& tensors);

  // A model folder (float, or quantized per quantization_config) or a .gguf.
  static absl::StatusOr<std::unique_ptr<QuantizedLlama>> Load(
      const std::string& path);

  const formats::LlamaConfig& config() const { return config_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  QuantizedLayer& layer(int64_t i) { return layers_[i]; }

  // [B, T] ids -> [B, T, H] embeddings.
  at::Tensor Embed(const at::Tensor& ids) const;
  // One decoder layer on x [B, T, H] at positions pos0..; `cache` may be null.
  at::Tensor RunLayer(const QuantizedLayer& layer, int64_t layer_index,
                      const at::Tensor& x, int64_t pos0, DecodeCache* cache,
                      LayerTaps* taps) const;
  // Final norm + lm_head: [B, T, H] -> [B, T, vocab].
  at::Tensor Head(const at::Tensor& x) const;
  // Teacher-forced logits [B, T, vocab].
  at::Tensor Forward(const at::Tensor& ids) const;

  DecodeCache NewCache(int64_t batch, int64_t capacity) const;
  // Appends ids [B, T] to every sequence; logits of the last position [B, V].
  at::Tensor Step(DecodeCache& cache, const at::Tensor& ids) const;

  // Bytes of all weights as held in memory, and of the linears inside the
  // decoder layers alone (what quantization shrinks).
  int64_t WeightBytes() const;
  int64_t LayerLinearBytes() const;
  // e.g. "w4g128" for the first quantized linear, "f32" when none.
  std::string Describe() const;

 private:
  QuantizedLlama() = default;
  static absl::StatusOr<std::unique_ptr<QuantizedLlama>> Skeleton(
      const formats::LlamaConfig& config,
      const std::map<std::string, at::Tensor>& tensors);

  formats::LlamaConfig config_;
  at::Tensor embed_, final_norm_, inv_freq_;
  std::unique_ptr<LinearOp> lm_head_;
  std::vector<QuantizedLayer> layers_;
};

// The seven linear names of a decoder layer, as "self_attn.q_proj", ...
const std::vector<std::string>& LayerLinearNames();

// Loads every tensor of an HF folder as float32 CPU tensors.
absl::StatusOr<std::map<std::string, at::Tensor>> LoadFloatTensors(
    const std::string& folder);

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_QUANTIZED_LLAMA_H_
