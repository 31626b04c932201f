// BpeTrainer: learns a byte-level BPE vocabulary (GPT-2 / Llama-3 style) from a
// text corpus and writes it as a Hugging Face tokenizer.json.
//
// The default model needs a tokenizer sized for its corpus: a 128K-entry
// Llama-3 vocabulary would make the embedding matrix larger than the rest of a
// tiny model. The algorithm is the one of the `tokenizers` crate's BpeTrainer:
// text is split into words by the Llama-3 pre-tokenizer regex, each word
// becomes the sequence of its bytes in the GPT-2 byte alphabet, and the most
// frequent adjacent pair (ties broken by the pair's strings, so the result is
// deterministic) is merged until the vocabulary is full. Counting is
// incremental: a merge only revisits the words that contain the merged pair.
//
// The output uses only components that transformers, llama.cpp's converter and
// common/tokenizer all understand: a Split(regex) + ByteLevel pre-tokenizer, a
// BPE model with string merges, a ByteLevel decoder and a TemplateProcessing
// post-processor that prepends BOS.
#ifndef HEARTH_SERVICES_DISTILLER_BPE_TRAINER_H_
#define HEARTH_SERVICES_DISTILLER_BPE_TRAINER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hearth::distiller {

// The Llama-3 pre-tokenizer pattern (tokenizer.json's Split regex).
extern const char kLlama3PretokenizerRegex[];

struct BpeTrainerOptions {
  // Total vocabulary including the 256 byte tokens and the special tokens.
  int vocab_size = 4096;
  // Pairs seen fewer times than this are never merged (the vocabulary may then
  // end up smaller than vocab_size).
  int min_frequency = 2;
  // Added after the learned tokens, in this order; the first is BOS, the second
  // EOS.
  std::vector<std::string> special_tokens = {"<|begin_of_text|>",
                                             "<|end_of_text|>"};
  // tokenizer_config.json's model_max_length.
  int64_t model_max_length = 256;
};

struct BpeVocabulary {
  // Token strings in id order (byte-alphabet encoded), specials last.
  std::vector<std::string> tokens;
  // Merges in rank order, as pairs of token strings.
  std::vector<std::pair<std::string, std::string>> merges;
  int num_special = 0;
};

// The GPT-2 byte-to-unicode mapping: the UTF-8 string standing for byte `b`.
std::string ByteToUnicode(uint8_t b);

// Learns merges from `texts` (each a document; words never span documents).
absl::StatusOr<BpeVocabulary> TrainBpe(
    const std::vector<std::string_view>& texts,
    const BpeTrainerOptions& options);

// The tokenizer.json / tokenizer_config.json texts for a vocabulary.
std::string TokenizerJson(const BpeVocabulary& vocab);
std::string TokenizerConfigJson(const BpeVocabulary& vocab,
                                const BpeTrainerOptions& options);

// Writes tokenizer.json and tokenizer_config.json into `folder` (created if
// missing), each via temp file + fsync + rename.
absl::Status WriteTokenizer(const BpeVocabulary& vocab,
                            const BpeTrainerOptions& options,
                            const std::string& folder);

// Writes `contents` to `path` durably (temp file, fsync, rename).
absl::Status WriteFileAtomic(const std::string& path,
                             std::string_view contents);

}  // namespace hearth::distiller

#endif  // HEARTH_SERVICES_DISTILLER_BPE_TRAINER_H_
