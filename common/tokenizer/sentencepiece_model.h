// SentencePieceModel: the parts of a SentencePiece `tokenizer.model` (a
// serialized sentencepiece.ModelProto) that encoding, decoding and GGUF vocab
// export need, read by a small protobuf wire-format reader so that hearth does
// not depend on libsentencepiece or its bundled protobuf runtime.
//
// Fields read (sentencepiece_model.proto): ModelProto.pieces (1: piece, score,
// type), ModelProto.trainer_spec (2: model_type, byte_fallback, unk/bos/eos
// piece text, unk_surface, treat_whitespace_as_suffix) and
// ModelProto.normalizer_spec (3: name, precompiled_charsmap, add_dummy_prefix,
// remove_extra_whitespaces, escape_whitespaces). Unknown fields are skipped;
// absent ones take the proto's declared defaults. Malformed input is an
// InvalidArgument error naming the byte offset.
#ifndef HEARTH_COMMON_TOKENIZER_SENTENCEPIECE_MODEL_H_
#define HEARTH_COMMON_TOKENIZER_SENTENCEPIECE_MODEL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace hearth::tokenizer {

struct SentencePieceModel {
  // sentencepiece.ModelProto.SentencePiece.Type (GGUF's token types use the
  // same numbers).
  enum class PieceType : int32_t {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6,
  };
  // sentencepiece.TrainerSpec.ModelType.
  enum class ModelType : int32_t {
    kUnigram = 1,
    kBpe = 2,
    kWord = 3,
    kChar = 4
  };

  struct Piece {
    std::string piece;
    float score = 0;
    PieceType type = PieceType::kNormal;
  };

  std::vector<Piece> pieces;

  // trainer_spec
  ModelType model_type = ModelType::kUnigram;
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  std::string unk_piece = "<unk>";
  std::string bos_piece = "<s>";
  std::string eos_piece = "</s>";
  std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ "

  // normalizer_spec
  std::string normalizer_name;
  bool has_precompiled_charsmap = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

// The model_type's name as sentencepiece_model.proto spells it ("BPE").
const char* ModelTypeName(SentencePieceModel::ModelType type);

// Parses the bytes of a tokenizer.model. At least one piece is required.
absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(
    std::string_view bytes);

// Writes `model` as a tokenizer.model that ParseSentencePieceModel (and
// libsentencepiece) read back: every field above, the precompiled_charsmap
// only as a placeholder byte when has_precompiled_charsmap. For tests and for
// writing tokenizer.model files from other vocabularies.
std::string SerializeSentencePieceModel(const SentencePieceModel& model);

// A model laid out as Llama-2's tokenizer.model: BPE with byte fallback and
// the identity normalizer keeping spaces; <unk>, <s>, </s>, the 256 <0xNN>
// byte pieces, then `normal_pieces` with falling scores (-1, -2, ...: the
// first merges first). For tests, fuzz seeds and tiny models.
SentencePieceModel LlamaStyleSentencePieceModel(
    const std::vector<std::string>& normal_pieces);

}  // namespace hearth::tokenizer

#endif  // HEARTH_COMMON_TOKENIZER_SENTENCEPIECE_MODEL_H_
