#include "services/worker/model_registry.h"

#include <torch/torch.h>

#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/model/kv_cache.h"
#include "common/model/llama_model.h"
#include "common/model/model_loader.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/tokenizer.h"

namespace hearth::worker {
namespace {

namespace fs = std::filesystem;

bool Exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// Whether `p` (normalized, absolute) lies inside `root` (normalized, absolute).
bool Inside(const fs::path& root, const fs::path& p) {
  auto r = root.begin();
  auto q = p.begin();
  for (; r != root.end(); ++r, ++q) {
    if (r->empty()) continue;  // Trailing separator of the root.
    if (q == p.end() || *r != *q) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::vector<DeviceSpec>> ParseDevices(
    const std::vector<std::string>& names) {
  if (names.empty()) {
    return absl::InvalidArgumentError("devices: at least one device is needed");
  }
  std::vector<DeviceSpec> out;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    DeviceSpec spec;
    spec.name = name;
    std::string kind = name;
    int index = 0;
    if (const size_t colon = name.find(':'); colon != std::string::npos) {
      kind = name.substr(0, colon);
      if (!absl::SimpleAtoi(name.substr(colon + 1), &index) || index < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("devices[", i, "] = \"", name,
                         "\": expected cpu, cpu:N or cuda:N"));
      }
    }
    if (kind == "cpu") {
      spec.cuda = false;
    } else if (kind == "cuda") {
      spec.cuda = true;
      if (!torch::cuda::is_available()) {
        return absl::FailedPreconditionError(
            absl::StrCat("devices[", i, "] = \"", name,
                         "\": this libtorch has no CUDA or no GPU is visible"));
      }
      if (index >= static_cast<int>(torch::cuda::device_count())) {
        return absl::FailedPreconditionError(
            absl::StrCat("devices[", i, "] = \"", name, "\": only ",
                         torch::cuda::device_count(), " CUDA device(s)"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "devices[", i, "] = \"", name, "\": expected cpu, cpu:N or cuda:N"));
    }
    spec.index = index;
    for (const DeviceSpec& other : out) {
      if (other.cuda == spec.cuda && other.index == spec.index) {
        return absl::InvalidArgumentError(
            absl::StrCat("devices[", i, "] = \"", name, "\" is listed twice"));
      }
    }
    out.push_back(spec);
  }
  return out;
}

absl::StatusOr<std::string> ResolveModelPath(const std::string& repository,
                                             const std::string& name,
                                             const std::string& path) {
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(fs::absolute(repository, ec), ec);
  if (name.empty()) return absl::InvalidArgumentError("model: empty name");
  std::vector<fs::path> candidates;
  if (!path.empty()) {
    fs::path p(path);
    candidates.push_back(p.is_absolute() ? p : root / p);
  } else {
    if (absl::StrContains(name, "/") || name == "." || name == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("model: \"", name,
                       "\" is not a plain name; pass the path in `path`"));
    }
    candidates.push_back(root / name);
    candidates.push_back(root / (name + ".gguf"));
  }
  for (const fs::path& candidate : candidates) {
    const fs::path resolved = fs::weakly_canonical(candidate, ec);
    if (!Inside(root, resolved)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path.empty() ? "model" : "path", ": \"", candidate.string(),
          "\" is outside the model repository ", root.string()));
    }
    if (Exists(resolved)) return resolved.string();
  }
  return absl::NotFoundError(absl::StrCat(
      "model \"", name, "\": no ", candidates.front().string(),
      candidates.size() > 1 ? "[.gguf]" : "", " in the model repository"));
}

absl::StatusOr<std::shared_ptr<const ModelAssets>> LoadModelAssets(
    const std::string& name, const std::string& path,
    const formats::LlamaConfig& config, const std::string& quantization) {
  auto assets = std::make_shared<ModelAssets>();
  assets->name = name;
  assets->path = path;
  assets->config = config;
  const bool gguf = absl::EndsWith(path, ".gguf");
  fs::path folder = gguf ? fs::path(path).parent_path() / fs::path(path).stem()
                         : fs::path(path);
  if (Exists(folder / "tokenizer.json") || Exists(folder / "tokenizer.model")) {
    auto tok = tokenizer::LoadTokenizer(folder.string());
    if (!tok.ok()) {
      return absl::Status(tok.status().code(),
                          absl::StrCat("model \"", name, "\": tokenizer: ",
                                       tok.status().message()));
    }
    assets->tokenizer =
        std::shared_ptr<const tokenizer::Tokenizer>(std::move(tok).value());
  }
  if (Exists(folder / "generation_config.json")) {
    auto gen = formats::LoadGenerationConfig(
        (folder / "generation_config.json").string());
    if (!gen.ok()) return gen.status();
    assets->generation = *gen;
  }
  assets->eos_token_ids = config.eos_token_ids;
  if (assets->eos_token_ids.empty()) {
    assets->eos_token_ids.push_back(config.eos_token_id);
  }
  for (int64_t id : assets->generation.eos_token_ids) {
    if (std::find(assets->eos_token_ids.begin(), assets->eos_token_ids.end(),
                  id) == assets->eos_token_ids.end()) {
      assets->eos_token_ids.push_back(id);
    }
  }
  if (!quantization.empty()) {
    assets->quantization = quantization;
  } else if (gguf) {
    assets->quantization = "gguf";
  } else if (!config.quantization_config.is_null()) {
    assets->quantization = config.quantization_config.value(
        "quant_method", std::string("unknown"));
  }
  return std::shared_ptr<const ModelAssets>(std::move(assets));
}

ReplicaModel::ReplicaModel() = default;
ReplicaModel::~ReplicaModel() = default;
ReplicaModel::ReplicaModel(ReplicaModel&&) noexcept = default;
ReplicaModel& ReplicaModel::operator=(ReplicaModel&&) noexcept = default;

absl::StatusOr<ReplicaModel> LoadReplicaModel(
    const std::string& path, const DeviceSpec& device,
    const ReplicaLoadOptions& options) {
  model::LoadOptions load;
  load.device = device.cuda ? c10::Device(c10::kCUDA, device.index)
                            : c10::Device(c10::kCPU);
  if (options.dtype == "float32") {
    load.dtype = c10::kFloat;
  } else if (options.dtype == "float16") {
    load.dtype = c10::kHalf;
  } else if (options.dtype == "bfloat16") {
    load.dtype = c10::kBFloat16;
  } else if (options.dtype != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: \"", options.dtype,
                     "\" is not one of auto, float32, float16, bfloat16"));
  }
  ReplicaModel out;
  auto loaded = model::LoadModel(path, load);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrCat(path, " on ", device.name, ": ",
                                     loaded.status().message()));
  }
  out.model = std::move(loaded).value();
  try {
    out.model->PackForInference();
    // Quantized linears count as their packed codes and scales.
    out.weight_bytes = out.model->WeightBytes();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, " on ", device.name, ": ",
                                            e.what_without_backtrace()));
  }
  model::KvCacheOptions kv;
  kv.capacity_tokens = options.kv_cache_tokens;
  kv.block_size = options.kv_block_size;
  const model::KvCacheDims dims = out.model->CacheDims();
  auto cache = model::KvCache::Create(dims, kv);
  if (!cache.ok()) {
    return absl::Status(
        cache.status().code(),
        absl::StrCat("KV cache of ", options.kv_cache_tokens, " tokens on ",
                     device.name, ": ", cache.status().message()));
  }
  out.cache = std::move(cache).value();
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dims.dtype));
  out.cache_bytes = dims.num_layers * 2 * dims.num_kv_heads * dims.head_dim *
                    out.cache->capacity_tokens() * elem;

  // Warm-up: a short prefill then two decode steps, on a sequence id that real
  // requests never use.
  const model::SequenceId warm = -1;
  HEARTH_RETURN_IF_ERROR(out.cache->AddSequence(warm));
  const int64_t vocab = out.model->config().vocab_size;
  const int64_t n = std::min<int64_t>(
      8, std::min(out.cache->capacity_tokens(),
                  out.model->config().max_position_embeddings) -
             2);
  absl::Status status = absl::OkStatus();
  if (n > 0) {
    model::SequenceInput prefill{warm, {}};
    for (int64_t i = 0; i < n; ++i)
      prefill.tokens.push_back((i * 7 + 1) % vocab);
    auto logits = out.model->Step(*out.cache, {prefill});
    for (int step = 0; logits.ok() && step < 2; ++step) {
      logits = out.model->Step(*out.cache, {{warm, {(step + 3) % vocab}}});
    }
    if (logits.ok()) {
      try {
        (void)logits->to(c10::kCPU);  // Waits for the device.
      } catch (const c10::Error& e) {
        status = absl::InternalError(e.what_without_backtrace());
      }
    } else {
      status = logits.status();
    }
  }
  out.cache->FreeSequence(warm).IgnoreError();
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("warm-up of ", path, " on ", device.name,
                                     " failed: ", status.message()));
  }
  return out;
}

}  // namespace hearth::worker
