// Token sampling: greedy, temperature, top-k, top-p, repetition penalty, stops.
//
// Each sequence gets its own Sampler with its own random engine, seeded from
// SamplingParams::seed, so that the tokens a request produces depend only on
// its logits and its seed, never on which other requests shared its batch.
// Sampling runs on one float32 logits row in plain C++ (no torch ops): a row is
// 32K-150K floats, and a handful of passes over it is cheaper than dispatching
// tensor ops.
//
// The order of operations follows transformers' generate(): repetition penalty,
// then temperature, then top-k, then top-p, then a draw from the renormalised
// distribution. Temperature 0 means greedy (argmax, ties to the lower id), and
// then top-k/top-p are irrelevant.
#ifndef HEARTH_COMMON_MODEL_SAMPLER_H_
#define HEARTH_COMMON_MODEL_SAMPLER_H_

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace hearth::model {

struct SamplingParams {
  int64_t max_new_tokens = 16;
  double temperature = 1.0;         // 0 = greedy.
  int64_t top_k = 0;                // 0 = off.
  double top_p = 1.0;               // In (0, 1]; 1 = off.
  double repetition_penalty = 1.0;  // > 0; 1 = off. As in transformers (CTRL).
  // Same seed, same output. Without one, each Sampler draws a seed from
  // std::random_device.
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;        // Stop sequences (text).
  std::vector<int64_t> stop_token_ids;  // Finish ("stop") when one is produced.
  bool ignore_eos = false;              // Keep going past the model's EOS ids.
};

// InvalidArgument naming the field (e.g. "temperature must be finite and >= 0,
// got nan"). `vocab_size` > 0 also checks stop_token_ids against the
// vocabulary.
absl::Status ValidateSamplingParams(const SamplingParams& params,
                                    int64_t vocab_size = 0);

enum class FinishReason { kNone, kLength, kStop, kEos };

// "length", "stop", "eos"; "" for kNone.
std::string_view FinishReasonName(FinishReason reason);

// The byte offset of the earliest occurrence of any of `stops` in `text` that
// ends at or after `new_from` (so that text already checked is not rescanned,
// while a stop string straddling old and new text is still found); npos if
// none.
size_t FindStopString(const std::vector<std::string>& stops,
                      std::string_view text, size_t new_from = 0);

class Sampler {
 public:
  // `params` should have passed ValidateSamplingParams. `eos_token_ids` are the
  // model's (config.eos_token_ids); `context` is the prompt, which the
  // repetition penalty counts as already seen (as transformers does).
  Sampler(const SamplingParams& params, std::vector<int64_t> eos_token_ids = {},
          const std::vector<int64_t>& context = {});

  // Chooses the next token from a float32 logits row of `vocab_size` entries.
  // Does not record it: call Accept() with the token actually emitted.
  int64_t Sample(const float* logits, int64_t vocab_size);

  // Records an emitted token: it counts towards max_new_tokens and the
  // repetition penalty. Returns why the sequence is finished now, if it is
  // (kEos and kStop take precedence over kLength). Stop strings are the
  // caller's business (it has the tokenizer): see FindStopString.
  FinishReason Accept(int64_t token);

  int64_t num_generated() const { return generated_; }
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::vector<int64_t> eos_;
  std::vector<int64_t> seen_;  // Sorted, unique: tokens the penalty applies to.
  std::mt19937_64 rng_;
  int64_t generated_ = 0;
  // Scratch buffers, reused across calls.
  std::vector<float> scratch_;
  std::vector<int32_t> order_;
};

}  // namespace hearth::model

#endif  // HEARTH_COMMON_MODEL_SAMPLER_H_
