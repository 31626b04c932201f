// libFuzzer target for the tokenizer.model (SentencePiece ModelProto) reader
// and hearth's SentencePiece BPE encoder/decoder.
//
// The input is split at the first 0xFF byte (never valid UTF-8): before it, a
// tokenizer.model; after it, text. Parsing must fail cleanly or succeed; a
// model that loads must encode the text (an error only for invalid UTF-8),
// decode any in-range ids, and StreamingDecoder must reproduce Decode(). When
// the input has no 0xFF it is used as text with a fixed Llama-2 style model.
//
// Build: cmake -DHEARTH_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++
// -DCMAKE_C_COMPILER=clang Run: sentencepiece_model_fuzz -max_total_time=60
// CORPUS_DIR. When CORPUS_DIR is empty, a seed model is written into it first.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/tokenizer/sentencepiece_model.h"
#include "common/tokenizer/sentencepiece_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/utf8.h"

namespace {

using hearth::tokenizer::ParseSentencePieceModel;
using hearth::tokenizer::SentencePieceTokenizer;
using hearth::tokenizer::StreamingDecoder;

// Llama-2's layout in miniature: <unk> <s> </s>, 256 byte pieces, merges,
// a user-defined piece; identity normalizer keeping spaces.
std::string SeedModel() {
  using hearth::tokenizer::SentencePieceModel;
  using Type = SentencePieceModel::PieceType;
  SentencePieceModel m = hearth::tokenizer::LlamaStyleSentencePieceModel(
      {"\xE2\x96\x81", "e", "h", "l", "o", "\xE2\x96\x81h", "he", "ll", "llo",
       "hello", "\xE2\x96\x81hello", "w", "r", "d", "or", "wor", "world"});
  m.pieces.push_back({"<tool>", 0, Type::kUserDefined});
  m.pieces.push_back({"wo", -100, Type::kUnused});
  return hearth::tokenizer::SerializeSentencePieceModel(m);
}

void Exercise(const SentencePieceTokenizer& tok, std::string_view text) {
  auto ids = tok.Encode(text, true);
  if (!ids.ok()) {
    if (hearth::tokenizer::utf8::FindInvalid(text) == std::string_view::npos)
      std::abort();  // valid UTF-8 must encode
    return;
  }
  for (int32_t id : *ids) {
    if (id < 0 || id >= tok.vocab_size()) std::abort();
  }
  auto decoded = tok.Decode(*ids, true);
  if (!decoded.ok()) std::abort();
  StreamingDecoder stream(&tok, true);
  std::string streamed;
  for (int32_t id : *ids) {
    auto piece = stream.Push(id);
    if (!piece.ok()) std::abort();
    streamed += *piece;
  }
  streamed += stream.Finish();
  if (streamed != *decoded) std::abort();
  // The bytes read as ids too: any in-range ids must decode.
  std::vector<int32_t> raw;
  for (unsigned char c : text) raw.push_back(c % tok.vocab_size());
  if (!tok.Decode(raw, false).ok()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  for (int i = 1; i < *argc; ++i) {
    const char* arg = (*argv)[i];
    if (arg[0] == '-') continue;
    std::error_code ec;
    if (!std::filesystem::is_directory(arg, ec) ||
        !std::filesystem::is_empty(arg, ec)) {
      continue;
    }
    std::ofstream(std::filesystem::path(arg) / "seed_model", std::ios::binary)
        << SeedModel() << '\xFF' << "hello world <tool> \xF0\x9F\x98\x80";
    std::ofstream(std::filesystem::path(arg) / "seed_text")
        << "hello  world\n\t<s>";
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const SentencePieceTokenizer* fixed = [] {
    auto tok = SentencePieceTokenizer::FromSerialized(SeedModel(), {});
    if (!tok.ok()) std::abort();
    return tok->release();
  }();
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\xFF');
  if (split == std::string_view::npos) {
    Exercise(*fixed, input);
    return 0;
  }
  // The reader alone, then the tokenizer on the same bytes.
  (void)ParseSentencePieceModel(input.substr(0, split));
  auto tok = SentencePieceTokenizer::FromSerialized(input.substr(0, split), {});
  if (tok.ok()) Exercise(**tok, input.substr(split + 1));
  return 0;
}
