// SentencePieceTokenizer: a SentencePiece `tokenizer.model` (Llama-1/2,
// Mistral, TinyLlama checkpoints), read and run by hearth itself
// (sentencepiece_model.h parses the ModelProto), so that it works in every
// binary: libsentencepiece cannot parse models in a process whose protobuf
// runtime is not the one it was built with.
//
// Supported: model_type BPE with the identity normalizer (what those
// checkpoints ship). Encoding is SentencePiece's: spaces become "▁" (U+2581),
// add_dummy_prefix prepends one, remove_extra_whitespaces strips and collapses
// spaces; the text is split into characters (user-defined pieces are kept
// whole) and the adjacent pair whose concatenation is the highest-scoring piece
// is merged until none is left (ties: leftmost); a resulting piece missing
// from the vocabulary becomes its <0xNN> byte pieces when
// trainer_spec.byte_fallback is set, else the unknown piece. Other model types
// (Unigram, ...) and normalizers with a precompiled_charsmap (nmt_nfkc) fail
// to load with UNIMPLEMENTED naming them.
//
// SentencePiece has no post-processor; as in Hugging Face's LlamaTokenizer,
// Encode(..., add_special_tokens=true) prepends BOS (and appends EOS when
// Options::add_eos says so, i.e. tokenizer_config.json's add_eos_token).
// Special tokens are SentencePiece "control" pieces (<s>, </s>) and, for
// skip_special_tokens purposes, the unknown piece is not one.
//
// Note: text such as "<s>" written literally in the input is *not* turned into
// the control token — SentencePiece never does that — unlike tokenizer.json
// files, whose added tokens are split out of the text.
#ifndef HEARTH_COMMON_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
#define HEARTH_COMMON_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_

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

class SentencePieceTokenizer final : public Tokenizer {
 public:
  struct Options {
    bool add_bos = true;
    bool add_eos = false;
  };

  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> FromFile(
      const std::string& path, const Options& options);
  // `serialized` is the bytes of a tokenizer.model (a ModelProto).
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> FromSerialized(
      std::string_view serialized, const Options& options);

  ~SentencePieceTokenizer() override;
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

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
  SentencePieceTokenizer(std::unique_ptr<Impl> impl, const Options& options);
  std::unique_ptr<Impl> impl_;
  Options options_;
};

}  // namespace hearth::tokenizer

#endif  // HEARTH_COMMON_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
