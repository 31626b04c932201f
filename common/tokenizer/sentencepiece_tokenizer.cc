#include "common/tokenizer/sentencepiece_tokenizer.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/utf8.h"

// libsentencepiece's header declares `namespace absl { using std::string_view;
// }`, which collides with abseil's own absl::string_view class (this abseil
// build does not alias std::string_view). Renaming the namespace while the
// header is read makes its `absl::string_view` mean std::string_view, which is
// what the library was compiled with, so the ABI is unchanged.
#define absl hearth_sentencepiece_absl
#include <sentencepiece_processor.h>
#undef absl

namespace hearth::tokenizer {
namespace {

absl::Status FromSentencePiece(const sentencepiece::util::Status& status,
                               std::string_view context) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(
      static_cast<absl::StatusCode>(status.code()),
      absl::StrCat(absl::string_view(context.data(), context.size()), ": ",
                   status.ToString()));
}

}  // namespace

struct SentencePieceTokenizer::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<Impl> impl,
                                               const Options& options)
    : impl_(std::move(impl)), options_(options) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>>
SentencePieceTokenizer::FromFile(const std::string& path,
                                 const Options& options) {
  auto impl = std::make_unique<Impl>();
  HEARTH_RETURN_IF_ERROR(FromSentencePiece(impl->processor.Load(path), path));
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(std::move(impl), options));
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>>
SentencePieceTokenizer::FromSerialized(std::string_view serialized,
                                       const Options& options) {
  auto impl = std::make_unique<Impl>();
  HEARTH_RETURN_IF_ERROR(FromSentencePiece(
      impl->processor.LoadFromSerializedProto(serialized), "tokenizer.model"));
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(std::move(impl), options));
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(
    std::string_view text, bool add_special_tokens) const {
  if (size_t bad = utf8::FindInvalid(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is not valid UTF-8 at byte offset ", bad));
  }
  std::vector<int> pieces;
  HEARTH_RETURN_IF_ERROR(FromSentencePiece(
      impl_->processor.Encode(text, &pieces), "sentencepiece encode"));
  std::vector<int32_t> ids;
  ids.reserve(pieces.size() + 2);
  if (add_special_tokens && options_.add_bos && bos_id() >= 0)
    ids.push_back(bos_id());
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  if (add_special_tokens && options_.add_eos && eos_id() >= 0)
    ids.push_back(eos_id());
  return ids;
}

absl::StatusOr<std::string> SentencePieceTokenizer::Decode(
    absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  const int32_t size = vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", ids[i], " at index ", i,
                       " is out of range [0, ", size, ")"));
    }
  }
  // SentencePiece silently drops control pieces; when they are wanted, decode
  // the runs between them separately and write the control pieces in between. A
  // run that does not start the text keeps its leading "▁" as a space, the way
  // the tokenizer.json of the same model decodes it.
  std::string out;
  std::vector<int> run;
  bool at_start = true;
  auto flush = [&]() -> absl::Status {
    if (run.empty()) return absl::OkStatus();
    std::string text;
    HEARTH_RETURN_IF_ERROR(FromSentencePiece(
        impl_->processor.Decode(run, &text), "sentencepiece decode"));
    if (!at_start && absl::StartsWith(impl_->processor.IdToPiece(run.front()),
                                      "\xE2\x96\x81")) {
      out += ' ';
    }
    out += text;
    at_start = false;
    run.clear();
    return absl::OkStatus();
  };
  for (int32_t id : ids) {
    if (!skip_special_tokens && impl_->processor.IsControl(id)) {
      HEARTH_RETURN_IF_ERROR(flush());
      out += impl_->processor.IdToPiece(id);
      at_start = false;
      continue;
    }
    run.push_back(id);
  }
  HEARTH_RETURN_IF_ERROR(flush());
  return out;
}

int32_t SentencePieceTokenizer::vocab_size() const {
  return impl_->processor.GetPieceSize();
}
int32_t SentencePieceTokenizer::bos_id() const {
  return impl_->processor.bos_id();
}
int32_t SentencePieceTokenizer::eos_id() const {
  return impl_->processor.eos_id();
}

std::optional<int32_t> SentencePieceTokenizer::TokenToId(
    std::string_view token) const {
  int id = impl_->processor.PieceToId(token);
  // PieceToId answers unk_id for unknown pieces; only a round trip tells.
  if (id < 0 || impl_->processor.IdToPiece(id) != token) return std::nullopt;
  return id;
}

std::string SentencePieceTokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  return impl_->processor.IdToPiece(id);
}

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->processor.IsControl(id);
}

}  // namespace hearth::tokenizer
