#include "common/tokenizer/sentencepiece_model.h"

#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace hearth::tokenizer {
namespace {

// Protobuf wire format: just enough to walk messages and read the scalar,
// fixed32 and length-delimited fields ModelProto uses. Offsets are relative to
// the whole file so that errors can name them.
class WireReader {
 public:
  WireReader(std::string_view bytes, size_t base) : p_(bytes), base_(base) {}
  bool done() const { return pos_ == p_.size(); }
  size_t offset() const { return base_ + pos_; }

  bool Next(uint32_t* field, uint32_t* wire) {
    uint64_t key;
    if (!Varint(&key) || (key >> 3) == 0 || (key >> 3) > 0x1fffffff)
      return false;
    *field = static_cast<uint32_t>(key >> 3);
    *wire = static_cast<uint32_t>(key & 7);
    return true;
  }
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= p_.size()) return false;
      const uint8_t b = static_cast<uint8_t>(p_[pos_++]);
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  // A length-delimited field; *start is its payload's file offset.
  bool Bytes(std::string_view* out, size_t* start = nullptr) {
    uint64_t n;
    if (!Varint(&n) || n > p_.size() - pos_) return false;
    if (start != nullptr) *start = offset();
    *out = p_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return true;
  }
  bool Fixed32(uint32_t* v) {
    if (p_.size() - pos_ < 4) return false;
    std::memcpy(v, p_.data() + pos_, 4);
    pos_ += 4;
    return true;
  }
  bool Skip(uint32_t wire) {
    uint64_t v;
    uint32_t f32;
    std::string_view b;
    switch (wire) {
      case 0:
        return Varint(&v);
      case 1:
        if (p_.size() - pos_ < 8) return false;
        pos_ += 8;
        return true;
      case 2:
        return Bytes(&b);
      case 5:
        return Fixed32(&f32);
      default:
        return false;
    }
  }

 private:
  std::string_view p_;
  size_t base_;
  size_t pos_ = 0;
};

absl::Status Malformed(const char* what, size_t offset) {
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.model is not a SentencePiece ModelProto: bad ",
                   what, " at byte offset ", offset));
}

absl::Status ParsePiece(std::string_view msg, size_t base,
                        SentencePieceModel::Piece* piece) {
  WireReader m(msg, base);
  while (!m.done()) {
    const size_t at = m.offset();
    uint32_t f, w;
    if (!m.Next(&f, &w)) return Malformed("field key in pieces", at);
    std::string_view text;
    uint32_t bits;
    uint64_t v;
    if (f == 1 && w == 2) {
      if (!m.Bytes(&text)) return Malformed("pieces.piece", at);
      piece->piece = std::string(text);
    } else if (f == 2 && w == 5) {
      if (!m.Fixed32(&bits)) return Malformed("pieces.score", at);
      std::memcpy(&piece->score, &bits, 4);
    } else if (f == 3 && w == 0) {
      if (!m.Varint(&v) || v < 1 || v > 6) return Malformed("pieces.type", at);
      piece->type = static_cast<SentencePieceModel::PieceType>(v);
    } else if (!m.Skip(w)) {
      return Malformed("field in pieces", at);
    }
  }
  return absl::OkStatus();
}

absl::Status ParseTrainerSpec(std::string_view msg, size_t base,
                              SentencePieceModel* model) {
  WireReader m(msg, base);
  while (!m.done()) {
    const size_t at = m.offset();
    uint32_t f, w;
    uint64_t v;
    std::string_view text;
    if (!m.Next(&f, &w)) return Malformed("field key in trainer_spec", at);
    if (f == 3 && w == 0) {
      if (!m.Varint(&v) || v < 1 || v > 4)
        return Malformed("trainer_spec.model_type", at);
      model->model_type = static_cast<SentencePieceModel::ModelType>(v);
    } else if ((f == 35 || f == 24) && w == 0) {
      if (!m.Varint(&v)) return Malformed("trainer_spec bool", at);
      (f == 35 ? model->byte_fallback : model->treat_whitespace_as_suffix) =
          v != 0;
    } else if (f >= 44 && f <= 47 && w == 2) {
      if (!m.Bytes(&text)) return Malformed("trainer_spec piece text", at);
      std::string* out[] = {&model->unk_surface, &model->unk_piece,
                            &model->bos_piece, &model->eos_piece};
      *out[f - 44] = std::string(text);
    } else if (!m.Skip(w)) {
      return Malformed("field in trainer_spec", at);
    }
  }
  return absl::OkStatus();
}

absl::Status ParseNormalizerSpec(std::string_view msg, size_t base,
                                 SentencePieceModel* model) {
  WireReader m(msg, base);
  while (!m.done()) {
    const size_t at = m.offset();
    uint32_t f, w;
    uint64_t v;
    std::string_view text;
    if (!m.Next(&f, &w)) return Malformed("field key in normalizer_spec", at);
    if ((f == 1 || f == 2) && w == 2) {
      if (!m.Bytes(&text)) return Malformed("normalizer_spec string", at);
      if (f == 1) model->normalizer_name = std::string(text);
      if (f == 2) model->has_precompiled_charsmap = !text.empty();
    } else if (f >= 3 && f <= 5 && w == 0) {
      if (!m.Varint(&v)) return Malformed("normalizer_spec bool", at);
      bool* out[] = {&model->add_dummy_prefix, &model->remove_extra_whitespaces,
                     &model->escape_whitespaces};
      *out[f - 3] = v != 0;
    } else if (!m.Skip(w)) {
      return Malformed("field in normalizer_spec", at);
    }
  }
  return absl::OkStatus();
}

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void PutKey(uint32_t field, uint32_t wire, std::string* out) {
  PutVarint((static_cast<uint64_t>(field) << 3) | wire, out);
}
void PutBytes(uint32_t field, std::string_view bytes, std::string* out) {
  PutKey(field, 2, out);
  PutVarint(bytes.size(), out);
  out->append(bytes.data(), bytes.size());
}
void PutVarintField(uint32_t field, uint64_t v, std::string* out) {
  PutKey(field, 0, out);
  PutVarint(v, out);
}

}  // namespace

std::string SerializeSentencePieceModel(const SentencePieceModel& model) {
  std::string out;
  for (const SentencePieceModel::Piece& p : model.pieces) {
    std::string msg;
    PutBytes(1, p.piece, &msg);
    PutKey(2, 5, &msg);
    char bits[4];
    std::memcpy(bits, &p.score, 4);
    msg.append(bits, 4);
    PutVarintField(3, static_cast<uint64_t>(p.type), &msg);
    PutBytes(1, msg, &out);
  }
  std::string trainer;
  PutVarintField(3, static_cast<uint64_t>(model.model_type), &trainer);
  PutVarintField(24, model.treat_whitespace_as_suffix, &trainer);
  PutVarintField(35, model.byte_fallback, &trainer);
  PutBytes(44, model.unk_surface, &trainer);
  PutBytes(45, model.unk_piece, &trainer);
  PutBytes(46, model.bos_piece, &trainer);
  PutBytes(47, model.eos_piece, &trainer);
  PutBytes(2, trainer, &out);
  std::string normalizer;
  PutBytes(1, model.normalizer_name, &normalizer);
  if (model.has_precompiled_charsmap) PutBytes(2, "\x01", &normalizer);
  PutVarintField(3, model.add_dummy_prefix, &normalizer);
  PutVarintField(4, model.remove_extra_whitespaces, &normalizer);
  PutVarintField(5, model.escape_whitespaces, &normalizer);
  PutBytes(3, normalizer, &out);
  return out;
}

SentencePieceModel LlamaStyleSentencePieceModel(
    const std::vector<std::string>& normal_pieces) {
  using Type = SentencePieceModel::PieceType;
  SentencePieceModel m;
  m.pieces = {{"<unk>", 0, Type::kUnknown},
              {"<s>", 0, Type::kControl},
              {"</s>", 0, Type::kControl}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    m.pieces.push_back({name, 0, Type::kByte});
  }
  float score = 0;
  for (const std::string& p : normal_pieces)
    m.pieces.push_back({p, score -= 1, Type::kNormal});
  m.model_type = SentencePieceModel::ModelType::kBpe;
  m.byte_fallback = true;
  m.normalizer_name = "identity";
  m.remove_extra_whitespaces = false;
  return m;
}

const char* ModelTypeName(SentencePieceModel::ModelType type) {
  switch (type) {
    case SentencePieceModel::ModelType::kUnigram:
      return "UNIGRAM";
    case SentencePieceModel::ModelType::kBpe:
      return "BPE";
    case SentencePieceModel::ModelType::kWord:
      return "WORD";
    case SentencePieceModel::ModelType::kChar:
      return "CHAR";
  }
  return "?";
}

absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(
    std::string_view bytes) {
  SentencePieceModel model;
  WireReader r(bytes, 0);
  while (!r.done()) {
    const size_t at = r.offset();
    uint32_t field, wire;
    if (!r.Next(&field, &wire)) return Malformed("field key", at);
    std::string_view msg;
    size_t start = 0;
    if (field >= 1 && field <= 3 && wire == 2) {
      if (!r.Bytes(&msg, &start)) return Malformed("message length", at);
      absl::Status status;
      if (field == 1) {
        SentencePieceModel::Piece piece;
        status = ParsePiece(msg, start, &piece);
        model.pieces.push_back(std::move(piece));
      } else if (field == 2) {
        status = ParseTrainerSpec(msg, start, &model);
      } else {
        status = ParseNormalizerSpec(msg, start, &model);
      }
      if (!status.ok()) return status;
    } else if (!r.Skip(wire)) {
      return Malformed("field", at);
    }
  }
  if (model.pieces.empty()) {
    return absl::InvalidArgumentError(
        "tokenizer.model is not a SentencePiece ModelProto: it has no pieces");
  }
  return model;
}

}  // namespace hearth::tokenizer
