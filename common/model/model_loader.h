// Loading and saving LlamaForCausalLM checkpoints.
//
// A model is either a Hugging Face folder (config.json + model.safetensors, or
// shards named by model.safetensors.index.json) or a llama-architecture .gguf
// file. Quantized checkpoints (GPTQ v1 and AWQ GEMM folders, hearth's INT8
// folders, GGUF Q8_0/Q4_0) keep their linears quantized in common/quant's
// kernels (LlamaForCausalLM::SetLinearImpl) when loaded for the CPU in float32,
// and are expanded into the float parameters otherwise. Saving writes a Hugging
// Face folder that transformers' from_pretrained, vLLM and hearth itself load:
// config.json plus one model.safetensors with HF tensor names (lm_head.weight
// omitted when tied, as save_pretrained does), each file written to a temp
// name, fsync'd and renamed.
//
//   HEARTH_ASSIGN_OR_RETURN(auto model, LoadModel("models/tiny-student"));
//   HEARTH_RETURN_IF_ERROR(SaveModel(*model, "models/tiny-student-2"));
#ifndef HEARTH_COMMON_MODEL_MODEL_LOADER_H_
#define HEARTH_COMMON_MODEL_MODEL_LOADER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/hf_config.h"
#include "common/model/llama_model.h"

namespace hearth::formats {
struct TensorView;
}  // namespace hearth::formats

namespace hearth::model {

// A zero-copy CPU tensor over a mapped checkpoint tensor, in its stored dtype
// (uint8 for types torch lacks). Valid while the reader lives; never write
// through it (the mapping is read-only).
at::Tensor TensorFromView(const formats::TensorView& view);

struct LoadOptions {
  c10::Device device = c10::Device(c10::kCPU);
  // Parameter dtype. Unset: float32 on CPU; on CUDA bfloat16 if the
  // checkpoint's torch_dtype is bfloat16, else float16.
  std::optional<c10::ScalarType> dtype;
};

// The dtype LoadModel would choose for `config` on `device` with `requested`
// unset.
c10::ScalarType DefaultDtype(
    const formats::LlamaConfig& config, c10::Device device,
    std::optional<c10::ScalarType> requested = std::nullopt);

// Loads a model folder or a .gguf file; model->quantization() says what the
// weights are ("none", "gptq-int4", "awq-int4", "int8-dynamic",
// "gguf-q4_0", ...). NotFound when the path does not exist; InvalidArgument
// naming the tensor when one is missing, mis-shaped or not a float type, or
// for an unsupported quantization_config; other errors from the formats
// library name the file.
absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadModel(
    const std::string& path, const LoadOptions& options = {});

// Builds a model from `config` and tensors named as in the HF state dict (any
// float dtype, any device); the same checks as LoadModel. Extra tensors are
// ignored (e.g. rotary inv_freq buffers, or lm_head.weight of a tied model).
absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> ModelFromTensors(
    const formats::LlamaConfig& config,
    const std::map<std::string, at::Tensor>& tensors,
    const LoadOptions& options = {});

struct SaveOptions {
  // Dtype written to model.safetensors (and config.json's torch_dtype). Unset:
  // the model's parameter dtype.
  std::optional<c10::ScalarType> dtype;
};

// Writes config.json and model.safetensors into `folder` (created if needed;
// other files in it are left alone).
absl::Status SaveModel(LlamaForCausalLM& model, const std::string& folder,
                       const SaveOptions& options = {});

struct RandomInitOptions {
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;
  // Standard deviation of the normal init of embeddings and projections
  // (transformers' initializer_range). Norm weights are 1, biases 0.
  double init_std = 0.02;
};

// A model with deterministic random weights: the same config and seed give the
// same weights on every machine (drawn on the CPU in float32, then converted).
absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> MakeRandomModel(
    const formats::LlamaConfig& config, uint64_t seed,
    const RandomInitOptions& options = {});

}  // namespace hearth::model

#endif  // HEARTH_COMMON_MODEL_MODEL_LOADER_H_
