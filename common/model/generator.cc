#include "common/model/generator.h"

#include <torch/torch.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace hearth::model {
namespace {

struct Running {
  size_t index = 0;  // Into prompts / outputs.
  SequenceId id = 0;
  size_t prefilled = 0;  // Prompt tokens already stepped.
  int64_t last_token = -1;
  size_t text_checked =
      0;  // Bytes of detokenized output already searched for stops.
  std::unique_ptr<Sampler> sampler;
};

}  // namespace

absl::StatusOr<std::vector<GenerationOutput>> Generate(
    LlamaForCausalLM& model, KvCache& cache,
    const std::vector<std::vector<int64_t>>& prompts,
    const SamplingParams& params, const GenerateOptions& options) {
  const formats::LlamaConfig& config = model.config();
  HEARTH_RETURN_IF_ERROR(ValidateSamplingParams(params, config.vocab_size));
  if (!params.stop.empty() && !options.detokenize) {
    return absl::InvalidArgumentError(
        "stop strings need GenerateOptions::detokenize");
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompts[", i, "] is empty"));
    }
  }
  std::vector<int64_t> eos = config.eos_token_ids;
  if (eos.empty()) eos.push_back(config.eos_token_id);

  std::vector<GenerationOutput> outputs(prompts.size());
  std::vector<Running> running;
  // Frees whatever is still in the cache however we leave.
  struct Cleanup {
    KvCache& cache;
    std::vector<Running>& running;
    ~Cleanup() {
      for (const Running& r : running) cache.FreeSequence(r.id).IgnoreError();
    }
  } cleanup{cache, running};

  SequenceId next_id = SequenceId{1} << 40;
  for (size_t i = 0; i < prompts.size(); ++i) {
    while (cache.Contains(next_id)) ++next_id;
    Running r;
    r.index = i;
    r.id = next_id++;
    SamplingParams p = params;
    if (p.seed.has_value()) p.seed = *p.seed + i;
    r.sampler = std::make_unique<Sampler>(p, eos, prompts[i]);
    HEARTH_RETURN_IF_ERROR(cache.AddSequence(r.id));
    running.push_back(std::move(r));
  }

  // Samples the next token of running[k] from `row`, and returns whether the
  // sequence is finished.
  auto sample = [&](Running& r, const float* row) {
    const int64_t token = r.sampler->Sample(row, config.vocab_size);
    GenerationOutput& out = outputs[r.index];
    out.tokens.push_back(token);
    if (options.on_token) options.on_token(r.index, token);
    FinishReason reason = r.sampler->Accept(token);
    if (reason == FinishReason::kNone && !params.stop.empty()) {
      const std::string text = options.detokenize(out.tokens);
      if (FindStopString(params.stop, text, r.text_checked) !=
          std::string::npos) {
        reason = FinishReason::kStop;
      }
      r.text_checked = text.size();
    }
    if (reason == FinishReason::kNone &&
        cache.SequenceLength(r.id) + 1 > config.max_position_embeddings) {
      reason = FinishReason::kLength;
    }
    r.last_token = token;
    out.finish_reason = reason;
    return reason != FinishReason::kNone;
  };
  auto finish = [&](size_t k) {
    cache.FreeSequence(running[k].id).IgnoreError();
    running.erase(running.begin() + static_cast<std::ptrdiff_t>(k));
  };

  const int64_t chunk =
      options.prefill_chunk > 0 ? options.prefill_chunk : INT64_MAX;
  while (!running.empty()) {
    std::vector<SequenceInput> batch;
    std::vector<bool>
        produces;  // Whether the entry's last logits yield a token.
    for (const Running& r : running) {
      const std::vector<int64_t>& prompt = prompts[r.index];
      SequenceInput in;
      in.id = r.id;
      if (r.prefilled < prompt.size()) {
        const size_t n = std::min<size_t>(prompt.size() - r.prefilled,
                                          static_cast<size_t>(chunk));
        in.tokens.assign(prompt.begin() + r.prefilled,
                         prompt.begin() + r.prefilled + n);
        produces.push_back(r.prefilled + n == prompt.size());
      } else {
        in.tokens.push_back(r.last_token);
        produces.push_back(true);
      }
      batch.push_back(std::move(in));
    }
    HEARTH_ASSIGN_OR_RETURN(at::Tensor logits, model.Step(cache, batch));
    logits = logits.to(at::kCPU).contiguous();
    const float* data = logits.data_ptr<float>();
    for (size_t k = 0; k < running.size(); ++k) {
      if (running[k].prefilled < prompts[running[k].index].size()) {
        running[k].prefilled += batch[k].tokens.size();
      }
    }
    // Walk backwards so that erasing a finished entry keeps earlier indices
    // valid.
    for (size_t k = running.size(); k-- > 0;) {
      if (!produces[k]) continue;
      if (sample(running[k], data + k * config.vocab_size)) finish(k);
    }
  }
  return outputs;
}

}  // namespace hearth::model
