// What a quantization cost and bought: held-out perplexity, bytes on disk and
// in memory, decode speed, and process memory.
#ifndef HEARTH_SERVICES_QUANTIZER_EVALUATION_H_
#define HEARTH_SERVICES_QUANTIZER_EVALUATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/model/llama_model.h"

namespace hearth::quantizer {

// exp(mean next-token cross-entropy) over consecutive non-overlapping
// windows of `seq_len` tokens (at most `max_windows`; the last partial one is
// dropped unless it is the only one).
double Perplexity(model::LlamaForCausalLM& model,
                  const std::vector<int64_t>& tokens, int64_t seq_len,
                  int64_t max_windows);

// Greedy-free decode throughput: `batch` sequences prefilled with 8 tokens,
// then `steps` single-token steps through a paged KV cache (Step(), as the
// worker runs it); tokens per second over the steps, 0 on error.
double DecodeTokensPerSecond(model::LlamaForCausalLM& model, int64_t batch,
                             int64_t steps);

// Total size of a file or of the files in a folder.
int64_t DiskBytes(const std::string& path);

// VmRSS / VmHWM of this process, in bytes (0 when unavailable).
int64_t ResidentBytes();
int64_t PeakResidentBytes();
// Restarts PeakResidentBytes() from the current RSS, so that a job in a
// long-running service measures its own peak (no-op where unsupported).
void ResetPeakResidentBytes();

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_EVALUATION_H_
