// A Llama-family decoder-only transformer (Llama 2/3, TinyLlama, SmolLM,
// Mistral, Qwen2) in libtorch.
//
// The module tree and parameter names are those of transformers'
// LlamaForCausalLM, so named_parameters() is the Hugging Face state dict
// (L = model.layers.{i}):
//
//   model.embed_tokens.weight             [vocab, hidden]
//   L.input_layernorm.weight              [hidden]
//   L.self_attn.q_proj.weight (+ .bias)   [heads * head_dim, hidden]
//   L.self_attn.k_proj.weight (+ .bias)   [kv_heads * head_dim, hidden]
//   L.self_attn.v_proj.weight (+ .bias)   [kv_heads * head_dim, hidden]
//   L.self_attn.o_proj.weight (+ .bias)   [hidden, heads * head_dim]
//   L.post_attention_layernorm.weight     [hidden]
//   L.mlp.gate_proj.weight                [intermediate, hidden]
//   L.mlp.up_proj.weight                  [intermediate, hidden]
//   L.mlp.down_proj.weight                [hidden, intermediate]
//   model.norm.weight                     [hidden]
//   lm_head.weight                        [vocab, hidden], absent when tied
//
// Biases exist when config.attention_bias: on q/k/v for Qwen2 (model_type
// "qwen2"), on q/k/v/o for Llama, as in transformers.
//
// Two ways to run it:
//  * Forward(): teacher-forced [B, T] batches with autograd, optionally
//    returning every layer's hidden states and attention probabilities (for
//    training and distillation). Numerics follow transformers' eager
//    implementation: RMSNorm in fp32, softmax in fp32, RoPE tables in fp32.
//  * Step(): inference under torch::InferenceMode with a paged KvCache. One
//    call advances any mix of sequences by any number of tokens (prefill chunks
//    and single decode tokens together) and returns the logits of each
//    sequence's last new position. Results match Forward() and
//    one-sequence-at-a-time stepping to float tolerance.
//
// For Step(), the q/k/v and gate/up weights are kept packed in one buffer each
// (the parameters are views into it), so that a decode step does one matrix
// product where transformers does three. Replacing a parameter's storage
// (Module::to(), torch::load) breaks the packing; Step() notices and repacks.
// In-place updates (optimizer steps, copy_) keep it.
//
// Any of a decoder layer's seven projections can be swapped for another
// LinearImpl (linear_impl.h), e.g. INT8/INT4 weights that stay quantized
// (common/quant): SetLinearImpl frees the float parameter (it stays registered,
// with shape [0]) and both Forward() and Step() call the implementation. A
// q/k/v or gate/up group with any swapped member is not packed.
//
// Not thread-safe: run one Step() or Forward() at a time per model.
#ifndef HEARTH_COMMON_MODEL_LLAMA_MODEL_H_
#define HEARTH_COMMON_MODEL_LLAMA_MODEL_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/hf_config.h"
#include "common/model/kv_cache.h"
#include "common/model/linear_impl.h"

namespace hearth::model {

class LlamaDecoderLayer;
class LlamaInner;

struct ForwardOptions {
  // HF's output_hidden_states: num_layers + 1 tensors [B, T, hidden]: the
  // embeddings, the output of layers 0 .. L-2, and the final-normed output of
  // the last layer.
  bool output_hidden_states = false;
  // HF's output_attentions: num_layers tensors [B, heads, T, T] of attention
  // probabilities.
  bool output_attentions = false;
};

struct ForwardOutput {
  at::Tensor logits;  // [B, T, vocab], in the parameter dtype.
  std::vector<at::Tensor> hidden_states;
  std::vector<at::Tensor> attentions;
};

// The projections of a decoder layer, named relative to the layer as in the HF
// state dict: "self_attn.q_proj", k, v, o, "mlp.gate_proj", up, down.
const std::vector<std::string>& LayerLinearNames();

// The inputs of a layer's linears during ForwardLayer (calibration).
// stop_after: 1 = after the attention input (normed), 2 = after the o_proj
// input, 3 = after the MLP input (normed), 4 = after the down_proj input; 0 =
// run the whole layer. ForwardLayer returns an undefined tensor when it stops.
struct LayerTaps {
  int stop_after = 0;
  at::Tensor attn_in, o_in, mlp_in, down_in;  // [B, T, in]
  at::Tensor attn_out;  // o_proj output [B, T, hidden] (from stage 3 on)
};

// One sequence's share of an inference step.
struct SequenceInput {
  SequenceId id = 0;
  // New tokens: the prompt (or a chunk of it) at prefill, one token at decode.
  std::vector<int64_t> tokens;
};

// RoPE inverse frequencies [head_dim / 2] (float32, CPU) for a config,
// including rope_scaling "linear" (divided by factor) and "llama3"
// (transformers' _compute_llama3_parameters).
at::Tensor RopeInverseFrequencies(const formats::LlamaConfig& config);

// Sets the intra-op threads of libtorch (OpenMP) and of the BLAS library
// (OpenBLAS keeps its own pool, which at::set_num_threads does not reach).
// Decode steps of up to 64 sequences use only the first (cpu_kernels.h);
// prefill and training also use BLAS. OpenMP's setting is per calling thread:
// call this on the thread that runs the model (each CPU replica's thread, with
// its share of the cores).
void SetCpuThreads(int threads);
void SetCpuThreads(int aten_threads, int blas_threads);

class LlamaForCausalLM : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised (loaders overwrite them); see
  // MakeRandomModel() in model_loader.h for initialised ones. `config` must
  // pass formats::Validate. Throws c10::Error on allocation failure: use
  // Create().
  LlamaForCausalLM(const formats::LlamaConfig& config, c10::Device device,
                   c10::ScalarType dtype);

  // The non-throwing constructor.
  static absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> Create(
      const formats::LlamaConfig& config,
      c10::Device device = c10::Device(c10::kCPU),
      c10::ScalarType dtype = c10::kFloat);

  const formats::LlamaConfig& config() const { return config_; }
  c10::Device device() const;
  c10::ScalarType dtype() const;

  // Teacher-forced forward with autograd. input_ids: [B, T] int64 on any
  // device. attention_mask: optional [B, T], 1 for real tokens and 0 for
  // padding (keys at padding are masked; positions are 0..T-1 as in HF without
  // position_ids). Throws c10::Error on bad shapes: use ForwardChecked at
  // module boundaries.
  ForwardOutput Forward(
      const at::Tensor& input_ids,
      const std::optional<at::Tensor>& attention_mask = std::nullopt,
      const ForwardOptions& options = {});
  absl::StatusOr<ForwardOutput> ForwardChecked(
      const at::Tensor& input_ids,
      const std::optional<at::Tensor>& attention_mask = std::nullopt,
      const ForwardOptions& options = {});

  // The cache geometry this model needs.
  KvCacheDims CacheDims() const;

  // One inference step for a batch of sequences already registered in `cache`
  // (KvCache::AddSequence). Appends each entry's tokens to its sequence and
  // returns float32 logits on the model's device: [batch.size(), vocab] for the
  // last new position of each entry, or, with all_positions, [sum of new
  // tokens, vocab] for every new position, entries in batch order.
  //
  // Errors (nothing is appended on error): InvalidArgument for an empty batch,
  // an entry without tokens, a token id outside the vocabulary or a sequence
  // listed twice; NotFound for a sequence not in the cache; OutOfRange when a
  // sequence would exceed max_position_embeddings; ResourceExhausted when the
  // cache has too few free blocks; FailedPrecondition for a cache of another
  // geometry.
  absl::StatusOr<at::Tensor> Step(KvCache& cache,
                                  const std::vector<SequenceInput>& batch,
                                  bool all_positions = false);

  // Re-establishes the packed inference weights (Step does it when needed).
  void PackForInference();

  // Replaces projection `name` (one of LayerLinearNames()) of decoder layer
  // `layer` by `impl`, which must have that projection's shape and includes
  // its bias. The float weight and bias are freed. InvalidArgument for a bad
  // layer, name or shape.
  absl::Status SetLinearImpl(int64_t layer, std::string_view name,
                             std::shared_ptr<const LinearImpl> impl);
  // The implementation set for a projection, or null when it is float.
  const LinearImpl* linear_impl(int64_t layer, std::string_view name) const;
  bool has_linear_impls() const;

  // Runs decoder layer `layer` teacher-forced (causal, positions 0..T-1, no
  // padding) on hidden states x [B, T, hidden], recording the inputs of its
  // linears into `taps` when given. Returns the layer output [B, T, hidden].
  at::Tensor ForwardLayer(int64_t layer, const at::Tensor& x,
                          LayerTaps* taps = nullptr);

  // Bytes of all weights as held in memory (parameters, buffers and swapped
  // linears), and of the decoder layers' projections alone (what quantization
  // shrinks).
  int64_t WeightBytes() const;
  int64_t LayerLinearBytes() const;

  // What the weights are, as ModelInfo.quantization: "none" (the default),
  // "gptq-int4", "awq-int4", "int8-dynamic", "gguf-q4_0", ... (set by the
  // loader).
  const std::string& quantization() const { return quantization_; }
  void set_quantization(std::string label) { quantization_ = std::move(label); }

  // Direct access for tools that need the trunk (classification heads, layer
  // surgery); the parameters are reachable by name through named_parameters().
  at::Tensor& embed_tokens_weight();
  // lm_head.weight, or the embedding when tied.
  at::Tensor& lm_head_weight();
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  struct StepPlan;
  struct LayerContext;

  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) const;
  LayerContext MakeLayerContext(int64_t batch, int64_t length,
                                const std::optional<at::Tensor>& mask) const;
  at::Tensor LayerForward(int64_t li, at::Tensor x, const LayerContext& c,
                          at::Tensor* attention_probs, LayerTaps* taps);
  // Projection `index` (into LayerLinearNames()) of layer `li` on x [M, in].
  at::Tensor Project(size_t li, int index, const at::Tensor& x) const;
  bool GroupSwapped(size_t li, int first, int count) const;
  at::Tensor StepImpl(KvCache& cache, const StepPlan& plan);
  bool PackingIntact() const;

  formats::LlamaConfig config_;
  int64_t head_dim_ = 0;
  int64_t num_heads_ = 0;
  int64_t num_kv_heads_ = 0;
  bool o_bias_ = false;
  std::shared_ptr<LlamaInner> inner_;  // "model"
  std::vector<std::shared_ptr<LlamaDecoderLayer>> layers_;
  at::Tensor lm_head_;   // "lm_head.weight" when untied.
  at::Tensor inv_freq_;  // [head_dim / 2] float32, CPU.
  // Per layer: [(heads + 2 kv_heads) * head_dim, hidden] and [2 * intermediate,
  // hidden] buffers that the q/k/v and gate/up parameters view (and q/k/v
  // biases).
  std::vector<at::Tensor> packed_qkv_, packed_qkv_bias_, packed_gate_up_;
  // Per layer, per projection (LayerLinearNames() order): the swapped-in
  // implementation or null.
  std::vector<std::vector<std::shared_ptr<const LinearImpl>>> impls_;
  std::string quantization_ = "none";
};

}  // namespace hearth::model

#endif  // HEARTH_COMMON_MODEL_LLAMA_MODEL_H_
