#include "common/tokenizer/sentencepiece_model.h"

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace hearth::tokenizer {
namespace {

// A tiny protobuf writer for building ModelProto bytes by hand.
std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}
std::string Key(uint32_t field, uint32_t wire) {
  return Varint((static_cast<uint64_t>(field) << 3) | wire);
}
std::string Len(uint32_t field, const std::string& payload) {
  return Key(field, 2) + Varint(payload.size()) + payload;
}
std::string VarintField(uint32_t field, uint64_t v) {
  return Key(field, 0) + Varint(v);
}
std::string Piece(const std::string& text, float score, int type) {
  uint32_t bits;
  std::memcpy(&bits, &score, 4);
  std::string f32(4, '\0');
  std::memcpy(f32.data(), &bits, 4);
  std::string msg = Len(1, text) + Key(2, 5) + f32;
  if (type != 1) msg += VarintField(3, type);
  return Len(1, msg);
}

TEST(SentencePieceModelTest, ReadsPiecesAndSpecs) {
  std::string bytes =
      Piece("<unk>", 0, 2) + Piece("<s>", 0, 3) +
      Piece("\xE2\x96\x81h", -1.5f, 1) + Piece("<0x41>", 0, 6) +
      Len(2, VarintField(3, 2) + VarintField(35, 1) + Len(46, "<bos>") +
                 VarintField(999, 7)) +
      Len(3, Len(1, "identity") + VarintField(3, 0) + VarintField(4, 0)) +
      Len(4, "self test data, skipped");
  auto model = ParseSentencePieceModel(bytes);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->pieces.size(), 4u);
  EXPECT_EQ(model->pieces[2].piece, "\xE2\x96\x81h");
  EXPECT_FLOAT_EQ(model->pieces[2].score, -1.5f);
  EXPECT_EQ(model->pieces[0].type, SentencePieceModel::PieceType::kUnknown);
  EXPECT_EQ(model->pieces[1].type, SentencePieceModel::PieceType::kControl);
  EXPECT_EQ(model->pieces[2].type, SentencePieceModel::PieceType::kNormal);
  EXPECT_EQ(model->pieces[3].type, SentencePieceModel::PieceType::kByte);
  EXPECT_EQ(model->model_type, SentencePieceModel::ModelType::kBpe);
  EXPECT_TRUE(model->byte_fallback);
  EXPECT_EQ(model->bos_piece, "<bos>");
  EXPECT_EQ(model->eos_piece, "</s>");  // default
  EXPECT_EQ(model->normalizer_name, "identity");
  EXPECT_FALSE(model->has_precompiled_charsmap);
  EXPECT_FALSE(model->add_dummy_prefix);
  EXPECT_FALSE(model->remove_extra_whitespaces);
  EXPECT_TRUE(model->escape_whitespaces);  // default
  EXPECT_EQ(ModelTypeName(model->model_type), "BPE");
}

TEST(SentencePieceModelTest, DefaultsWhenSpecsAreAbsent) {
  auto model = ParseSentencePieceModel(Piece("a", 0, 1));
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->model_type, SentencePieceModel::ModelType::kUnigram);
  EXPECT_FALSE(model->byte_fallback);
  EXPECT_TRUE(model->add_dummy_prefix);
  EXPECT_TRUE(model->remove_extra_whitespaces);
  EXPECT_EQ(model->unk_surface, " \xE2\x81\x87 ");
}

TEST(SentencePieceModelTest, ErrorsNameTheByteOffset) {
  const std::string good = Piece("a", 0, 1);
  // Truncated second piece: its length prefix promises more than is there.
  auto truncated = ParseSentencePieceModel(good + Key(1, 2) + Varint(50) + "x");
  ASSERT_FALSE(truncated.ok());
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(truncated.status().message(),
                                "byte offset " + std::to_string(good.size())))
      << truncated.status();
  // A bad piece type inside the second piece names the offset of that field.
  const std::string inner = Len(1, "b") + VarintField(3, 9);
  auto bad_type = ParseSentencePieceModel(good + Len(1, inner));
  ASSERT_FALSE(bad_type.ok());
  const size_t at = good.size() + 2 + Len(1, "b").size();
  EXPECT_TRUE(
      absl::StrContains(bad_type.status().message(),
                        "pieces.type at byte offset " + std::to_string(at)))
      << bad_type.status();
  EXPECT_FALSE(ParseSentencePieceModel("").ok());  // no pieces
  EXPECT_FALSE(ParseSentencePieceModel(Key(0, 0)).ok());
  EXPECT_FALSE(ParseSentencePieceModel(Key(7, 7)).ok());  // wire type 7
  EXPECT_FALSE(ParseSentencePieceModel("definitely not a model").ok());
}

TEST(SentencePieceModelTest, SerializeRoundTrips) {
  SentencePieceModel model;
  model.pieces = {
      {"<unk>", 0, SentencePieceModel::PieceType::kUnknown},
      {"\xE2\x96\x81a", -2.25f, SentencePieceModel::PieceType::kNormal},
      {"<0x00>", 0, SentencePieceModel::PieceType::kByte}};
  model.model_type = SentencePieceModel::ModelType::kBpe;
  model.byte_fallback = true;
  model.bos_piece = "<bos>";
  model.normalizer_name = "identity";
  model.add_dummy_prefix = false;
  model.remove_extra_whitespaces = false;
  auto back = ParseSentencePieceModel(SerializeSentencePieceModel(model));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->pieces.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back->pieces[i].piece, model.pieces[i].piece);
    EXPECT_EQ(back->pieces[i].score, model.pieces[i].score);
    EXPECT_EQ(back->pieces[i].type, model.pieces[i].type);
  }
  EXPECT_EQ(back->model_type, model.model_type);
  EXPECT_TRUE(back->byte_fallback);
  EXPECT_EQ(back->bos_piece, "<bos>");
  EXPECT_EQ(back->eos_piece, "</s>");
  EXPECT_EQ(back->normalizer_name, "identity");
  EXPECT_FALSE(back->add_dummy_prefix);
  EXPECT_FALSE(back->remove_extra_whitespaces);
  EXPECT_FALSE(back->has_precompiled_charsmap);
}

TEST(SentencePieceModelTest, LlamaStyleLayout) {
  SentencePieceModel m = LlamaStyleSentencePieceModel({"ab", "a", "b"});
  ASSERT_EQ(m.pieces.size(), 3u + 256u + 3u);
  EXPECT_EQ(m.pieces[0].type, SentencePieceModel::PieceType::kUnknown);
  EXPECT_EQ(m.pieces[2].piece, "</s>");
  EXPECT_EQ(m.pieces[3 + 0x41].piece, "<0x41>");
  EXPECT_EQ(m.pieces[259].piece, "ab");
  EXPECT_GT(m.pieces[259].score, m.pieces[260].score);
  EXPECT_EQ(m.model_type, SentencePieceModel::ModelType::kBpe);
  EXPECT_TRUE(m.byte_fallback);
  EXPECT_FALSE(m.remove_extra_whitespaces);
}

}  // namespace
}  // namespace hearth::tokenizer
