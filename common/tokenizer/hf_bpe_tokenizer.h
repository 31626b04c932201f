// HfBpeTokenizer: a Hugging Face `tokenizer.json` whose model is BPE.
//
// Covers the two BPE families that Llama-architecture checkpoints ship with:
//
//  * byte-level BPE (GPT-2, Llama-3, Qwen2): a Split pre-tokenizer with a
//    Unicode regex (run by PCRE2 with UTF+UCP), the ByteLevel byte-to-char
//    alphabet, merges by rank, `ignore_merges`, ByteLevel decoder;
//  * SentencePiece-style BPE (Llama-2, Mistral): Prepend/Replace normalizers or
//    a Metaspace pre-tokenizer, `byte_fallback` to <0xXX> tokens, `fuse_unk`,
//    and the Replace/ByteFallback/Fuse/Strip decoder chain.
//
// The pipeline follows the `tokenizers` crate: added tokens are split out first
// (leftmost-longest; lstrip/rstrip honoured; `normalized: false` tokens matched
// on the raw text, `normalized: true` ones after normalization), then each
// remaining segment is normalized, pre-tokenized into words, and each word is
// merged with BPE; finally the post-processor (TemplateProcessing etc.) adds
// BOS/EOS when asked. Components outside this set (Unigram/WordPiece models,
// NFC normalizers, ...) are rejected at load time with UNIMPLEMENTED naming the
// JSON key, never silently mis-tokenized.
//
// Merging is O(n log n) per word (a heap over adjacent pairs on a linked list
// of symbols), and words are memoised in a bounded cache, so long and
// repetitive inputs stay fast.
#ifndef HEARTH_COMMON_TOKENIZER_HF_BPE_TOKENIZER_H_
#define HEARTH_COMMON_TOKENIZER_HF_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/tokenizer/tokenizer.h"

namespace hearth::tokenizer {

class HfBpeTokenizer final : public Tokenizer {
 public:
  struct Options {
    // Names of the BOS/EOS tokens (tokenizer_config.json's bos_token /
    // eos_token). Empty: take BOS from the post-processor's template and both
    // from well-known names ("<s>", "<|begin_of_text|>", "</s>", ...).
    std::string bos_token;
    std::string eos_token;
  };

  // Parses the text of a tokenizer.json. Errors name the offending key, e.g.
  // `model.merges[12]: token "ab" is not in model.vocab`.
  static absl::StatusOr<std::unique_ptr<HfBpeTokenizer>> FromJson(
      std::string_view json_text, const Options& options);
  static absl::StatusOr<std::unique_ptr<HfBpeTokenizer>> FromJson(
      std::string_view json_text) {
    return FromJson(json_text, Options());
  }
  static absl::StatusOr<std::unique_ptr<HfBpeTokenizer>> FromFile(
      const std::string& path, const Options& options);

  ~HfBpeTokenizer() override;
  HfBpeTokenizer(const HfBpeTokenizer&) = delete;
  HfBpeTokenizer& operator=(const HfBpeTokenizer&) = delete;

  absl::StatusOr<std::vector<int32_t>> Encode(
      std::string_view text, bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const override;
  int32_t vocab_size() const override;
  int32_t bos_id() const override;
  int32_t eos_id() const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  std::string IdToToken(int32_t id) const override;
  bool IsSpecial(int32_t id) const override;

 private:
  struct Impl;
  explicit HfBpeTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hearth::tokenizer

#endif  // HEARTH_COMMON_TOKENIZER_HF_BPE_TOKENIZER_H_
