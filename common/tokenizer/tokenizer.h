// Tokenizer: text <-> token ids for a model folder.
//
// A model folder carries either a Hugging Face `tokenizer.json` (byte-level BPE
// as in Llama-3/GPT-2, or SentencePiece-style BPE as in Llama-2) or a
// SentencePiece `tokenizer.model`. LoadTokenizer() picks the right
// implementation; everything downstream (the worker's engine, the gateway's
// token counting, the distiller's data pipeline) sees only this interface.
//
// Ids are int32_t because that is what model inputs and the protos carry.
// Implementations are immutable after loading and safe to use from many threads
// at once.
//
//   HEARTH_ASSIGN_OR_RETURN(auto tok, LoadTokenizer("models/tiny-teacher"));
//   HEARTH_ASSIGN_OR_RETURN(auto ids, tok->Encode("Hello",
//   /*add_special_tokens=*/true)); StreamingDecoder stream(tok.get(),
//   /*skip_special_tokens=*/true); for (int32_t id : generated)
//   send(stream.Push(id).value()); send(stream.Finish());
#ifndef HEARTH_COMMON_TOKENIZER_TOKENIZER_H_
#define HEARTH_COMMON_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace hearth::tokenizer {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes UTF-8 `text`. Special tokens written literally in the text (e.g.
  // "<|begin_of_text|>") are always recognised as such. `add_special_tokens`
  // applies the tokenizer's post-processor (typically: prepend BOS). Invalid
  // UTF-8 is rejected with INVALID_ARGUMENT naming the byte offset.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(
      std::string_view text, bool add_special_tokens) const = 0;

  // Decodes ids to text. Ids outside [0, vocab_size()) are INVALID_ARGUMENT.
  // Bytes that do not form complete UTF-8 (a sequence cut in the middle of a
  // character) come out as U+FFFD, as in Hugging Face.
  virtual absl::StatusOr<std::string> Decode(
      absl::Span<const int32_t> ids, bool skip_special_tokens) const = 0;

  // One more than the largest id (model vocabulary and added tokens).
  virtual int32_t vocab_size() const = 0;

  // Begin/end-of-sequence ids, or -1 when the tokenizer has none.
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;

  // Vocabulary lookups on the token strings as stored in the vocabulary
  // (byte-level tokens use the GPT-2 byte alphabet, e.g. "Ġthe").
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  // Empty string for ids that name no token.
  virtual std::string IdToToken(int32_t id) const = 0;

  // Whether `id` is a special (control) token, which skip_special_tokens drops.
  virtual bool IsSpecial(int32_t id) const = 0;
};

// Loads the tokenizer of a model folder: `tokenizer.json` when present (with
// bos/eos names taken from `tokenizer_config.json` if there is one), otherwise
// `tokenizer.model`. `model_folder` may also name one of those files directly.
// NOT_FOUND when the folder has neither.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(
    const std::string& model_folder);

// Turns a stream of generated ids into text pieces that are always complete
// UTF-8 and that concatenate to exactly Decode(all ids).
//
// Decoding ids one at a time is wrong in two ways: a character may span several
// byte tokens (emoji, CJK under byte fallback), and decoders are contextual
// (SentencePiece drops the leading space of the first token only). So, as in
// vLLM/TGI, each step decodes a short window of recent ids twice — with and
// without the new id — and emits the difference once it no longer ends in an
// incomplete character. Not thread-safe; one per stream.
class StreamingDecoder {
 public:
  // `tokenizer` must outlive this object.
  StreamingDecoder(const Tokenizer* tokenizer, bool skip_special_tokens);

  // Adds one id; returns the newly completed text (possibly empty).
  absl::StatusOr<std::string> Push(int32_t id);

  // Returns whatever is still held back (an incomplete character comes out as
  // U+FFFD) and resets the decoder for reuse.
  std::string Finish();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  // ids_[prefix_offset_, read_offset_) were already emitted; they are decoded
  // again only to give the new ids their context.
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
};

}  // namespace hearth::tokenizer

#endif  // HEARTH_COMMON_TOKENIZER_TOKENIZER_H_
