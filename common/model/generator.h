// A plain generation loop over LlamaForCausalLM::Step.
//
// Generate() prefills every prompt in one step, then decodes all unfinished
// sequences together, one token each per step, until each one stops. It is what
// `hearth generate` runs and the reference the worker's continuous-batching
// engine is tested against; it does not admit new work mid-flight (that is the
// engine's job).
#ifndef HEARTH_COMMON_MODEL_GENERATOR_H_
#define HEARTH_COMMON_MODEL_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/kv_cache.h"
#include "common/model/llama_model.h"
#include "common/model/sampler.h"

namespace hearth::model {

struct GenerationOutput {
  std::vector<int64_t>
      tokens;  // Generated tokens, including the EOS/stop token.
  FinishReason finish_reason = FinishReason::kNone;
};

struct GenerateOptions {
  // Called for each generated token as soon as it is sampled (streaming):
  // (prompt index, token).
  std::function<void(size_t, int64_t)> on_token;
  // Turns generated ids into text; needed only for SamplingParams::stop
  // strings.
  std::function<std::string(const std::vector<int64_t>&)> detokenize;
  // Largest number of prompt tokens prefilled in one step (0 = whole prompts).
  // Bounds the step's activation memory for long prompts.
  int64_t prefill_chunk = 0;
};

// Runs `prompts` to completion with `params` (the same params for each prompt;
// a seeded request gives prompt i the seed + i, so outputs are reproducible and
// still differ). Each sequence is freed from `cache` when it finishes, and on
// error. InvalidArgument for empty prompts or bad params; ResourceExhausted
// when the prompts do not fit in the cache. A sequence that reaches
// max_position_embeddings finishes with kLength.
absl::StatusOr<std::vector<GenerationOutput>> Generate(
    LlamaForCausalLM& model, KvCache& cache,
    const std::vector<std::vector<int64_t>>& prompts,
    const SamplingParams& params, const GenerateOptions& options = {});

}  // namespace hearth::model

#endif  // HEARTH_COMMON_MODEL_GENERATOR_H_
