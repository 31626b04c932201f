// Hugging Face config.json / generation_config.json for the Llama family.
//
// hearth reads configs written by transformers (so real checkpoints drop in)
// and writes configs that transformers, vLLM and llama.cpp's converter accept,
// so the mapping here follows transformers' LlamaConfig / Qwen2Config /
// MistralConfig: the same keys, the same defaults, the same derived values
// (num_key_value_heads defaults to num_attention_heads, head_dim to hidden_size
// / num_attention_heads).
//
// Parsing is strict where a silent default would produce a wrong model (missing
// sizes, an unknown rope_scaling type, a sliding window hearth does not
// implement), and lenient where transformers is (unknown keys are ignored, null
// means "use the default"). Every error names the offending key.
#ifndef HEARTH_COMMON_FORMATS_HF_CONFIG_H_
#define HEARTH_COMMON_FORMATS_HF_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace hearth::formats {

struct RopeScaling {
  std::string type;  // "" (none), "linear" or "llama3".
  double factor = 1;
  // llama3 only.
  double low_freq_factor = 1;
  double high_freq_factor = 4;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string architecture;  // "LlamaForCausalLM" | "Qwen2ForCausalLM" |
                             // "MistralForCausalLM"
  std::string
      model_type;  // "llama" | "qwen2" | "mistral", matching architecture.
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // Bias on q/k/v/o; always true for Qwen2.
  std::string torch_dtype = "float32";  // "float32" | "float16" | "bfloat16"
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;  // eos_token_ids[0] when that is non-empty.
  // All end-of-sequence ids (Llama 3 lists several); ParseLlamaConfig always
  // fills it. When non-empty it wins over eos_token_id on output.
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  // Mistral / Qwen2 sliding-window attention; hearth implements only full
  // attention, so Validate accepts a window only if it covers every position.
  std::optional<int64_t> sliding_window;
  nlohmann::json quantization_config;  // null when absent.
};

bool operator==(const RopeScaling& a, const RopeScaling& b);
bool operator==(const LlamaConfig& a, const LlamaConfig& b);

// Parses and validates config.json text. InvalidArgument names the key for a
// missing or mistyped value; Unimplemented names the key for a model variant
// hearth does not run (other architectures, rope types, sliding windows,
// biases).
absl::StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json_text);

// ParseLlamaConfig of a file; errors start with the path.
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& path);

// A config.json (2-space indent, sorted keys, trailing newline) that
// transformers' AutoConfig loads into an equivalent config.
std::string LlamaConfigToJson(const LlamaConfig& config);

// Checks the invariants the model code relies on; ParseLlamaConfig calls it,
// and code that builds a config by hand (a distillation student) should too.
absl::Status Validate(const LlamaConfig& config);

// generation_config.json. Defaults are transformers' GenerationConfig defaults.
struct GenerationConfig {
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t top_k = 50;
  double repetition_penalty = 1.0;
  std::optional<int64_t> max_new_tokens;
  bool do_sample = false;
};

bool operator==(const GenerationConfig& a, const GenerationConfig& b);

absl::StatusOr<GenerationConfig> ParseGenerationConfig(
    std::string_view json_text);
absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& path);
std::string GenerationConfigToJson(const GenerationConfig& config);

}  // namespace hearth::formats

#endif  // HEARTH_COMMON_FORMATS_HF_CONFIG_H_
