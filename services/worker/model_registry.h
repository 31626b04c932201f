// Finding, loading and warming up models from the worker's model repository.
//
// The repository is a folder of Hugging Face model folders and .gguf files
// (../../shared/ARCHITECTURE.md). A model is served under a name; its path is
// resolved against the repository, and paths that would leave it are refused,
// so that the (internal, unauthenticated) Worker API cannot read arbitrary
// files.
//
// Loading is split in two: the assets every replica of a model shares (config,
// tokenizer, generation defaults: immutable, thread-safe), and one ReplicaModel
// per device (weights on that device, a KV cache, warmed up). Warm-up runs a
// short prefill and a decode step so that the first real request does not pay
// for first-touch allocations, kernel selection or CUDA context set-up, and so
// that a model reported READY is known to run.
//
// The engine owns the model states; this module only does the I/O and has no
// threads of its own.
#ifndef HEARTH_SERVICES_WORKER_MODEL_REGISTRY_H_
#define HEARTH_SERVICES_WORKER_MODEL_REGISTRY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/hf_config.h"

namespace hearth::tokenizer {
class Tokenizer;
}
namespace hearth::model {
class LlamaForCausalLM;
class KvCache;
}  // namespace hearth::model

namespace hearth::worker {

// A device named in --devices: "cpu", "cpu:N" (another CPU replica; N only
// tells replicas apart), "cuda:N".
struct DeviceSpec {
  std::string name;
  bool cuda = false;
  int index = 0;
};

// Parses device names; InvalidArgument naming the bad entry, or a CUDA device
// when libtorch has no CUDA or fewer GPUs (FailedPrecondition).
absl::StatusOr<std::vector<DeviceSpec>> ParseDevices(
    const std::vector<std::string>& names);

// Resolves the files of model `name`: `path` when given (relative to
// `repository` unless absolute), else <repository>/<name>, else
// <repository>/<name>.gguf. InvalidArgument when the result lies outside the
// repository; NotFound when nothing is there.
absl::StatusOr<std::string> ResolveModelPath(const std::string& repository,
                                             const std::string& name,
                                             const std::string& path);

// What all replicas of a model share. Immutable once loaded.
struct ModelAssets {
  std::string name;
  std::string path;
  formats::LlamaConfig config;
  // Null when the model has no tokenizer.json / tokenizer.model (then only
  // prompt_token_ids work and events carry no text).
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  formats::GenerationConfig generation;  // Defaults when absent.
  // config's EOS ids plus generation_config.json's.
  std::vector<int64_t> eos_token_ids;
  // "none", "gptq-int4", "awq-int4", "int8-dynamic", "gguf-q4_0", ...
  // (ModelInfo.quantization; LlamaForCausalLM::quantization()).
  std::string quantization = "none";
};

// Reads tokenizer and generation config of the model at `path` (as returned by
// ResolveModelPath), given its parsed `config`. For a .gguf file the tokenizer
// is looked for in a folder next to it with the file's stem as name (e.g.
// tiny.gguf → tiny/tokenizer.json), because hearth's tokenizer library does not
// read GGUF vocabularies yet. `quantization` is the loaded model's
// LlamaForCausalLM::quantization(); empty: guessed from the path and config.
absl::StatusOr<std::shared_ptr<const ModelAssets>> LoadModelAssets(
    const std::string& name, const std::string& path,
    const formats::LlamaConfig& config, const std::string& quantization = "");

// One replica's model and KV cache on one device.
struct ReplicaModel {
  std::shared_ptr<model::LlamaForCausalLM> model;
  std::unique_ptr<model::KvCache> cache;
  int64_t weight_bytes = 0;
  int64_t cache_bytes = 0;
  ReplicaModel();
  ~ReplicaModel();
  ReplicaModel(ReplicaModel&&) noexcept;
  ReplicaModel& operator=(ReplicaModel&&) noexcept;
};

struct ReplicaLoadOptions {
  // "auto" (float32 on CPU, the checkpoint's 16-bit type on CUDA), "float32",
  // "float16", "bfloat16".
  std::string dtype = "auto";
  int64_t kv_cache_tokens = 8192;
  int64_t kv_block_size = 16;
};

// Loads the weights at `path` onto `device`, allocates the KV cache and runs
// the warm-up. Errors name the path or the device.
absl::StatusOr<ReplicaModel> LoadReplicaModel(
    const std::string& path, const DeviceSpec& device,
    const ReplicaLoadOptions& options);

}  // namespace hearth::worker

#endif  // HEARTH_SERVICES_WORKER_MODEL_REGISTRY_H_
