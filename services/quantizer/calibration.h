// Calibration and evaluation text: where it comes from, how it becomes token
// windows.
//
// Text comes from a file or a named corpus installed on the machine
// ("licenses": every text under /usr/share/common-licenses; "gpl":
// GPL-3; "bible-kjv": Debian's bible-kjv-text package). It is tokenized with
// the model folder's tokenizer; a folder without one (random test models)
// falls back to bytes modulo the vocabulary, which is enough to exercise the
// activations. The token stream is split: the first 90% feeds calibration
// windows, the last 10% is held out for perplexity, so a method is never
// evaluated on the text it was calibrated on.
#ifndef HEARTH_SERVICES_QUANTIZER_CALIBRATION_H_
#define HEARTH_SERVICES_QUANTIZER_CALIBRATION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hearth::quantizer {

// NotFound for an unknown corpus or missing file; InvalidArgument for empty
// text or when both or neither of file/corpus are given.
absl::StatusOr<std::string> LoadCalibrationText(const std::string& text_file,
                                                const std::string& corpus);

// Token ids for `text` with the tokenizer of `model_folder` (bytes modulo
// vocab_size when it has none).
absl::StatusOr<std::vector<int64_t>> TokenizeText(
    const std::string& model_folder, const std::string& text,
    int64_t vocab_size);

struct TokenSplit {
  std::vector<int64_t> calibration, held_out;
};
TokenSplit SplitTokens(const std::vector<int64_t>& tokens);

// `num_samples` windows of `seq_len` tokens at deterministic pseudo-random
// offsets (seed 0), as a [num_samples, seq_len] int64 tensor. The windows
// wrap around a stream shorter than seq_len. InvalidArgument when `tokens`
// is empty.
absl::StatusOr<at::Tensor> SampleWindows(const std::vector<int64_t>& tokens,
                                         int64_t num_samples, int64_t seq_len);

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_CALIBRATION_H_
