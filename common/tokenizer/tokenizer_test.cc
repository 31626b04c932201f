#include "common/tokenizer/tokenizer.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/tokenizer/hf_bpe_tokenizer.h"
#include "common/tokenizer/utf8.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hearth::tokenizer {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const std::string kFffd = "\xEF\xBF\xBD";

// Byte-level tokenizer whose vocabulary is the 256 byte characters, so every
// byte is one token: the hardest case for streaming (characters span tokens).
Json BytesOnly() {
  Json vocab = Json::object();
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable =
        (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    std::string s;
    utf8::Append(printable ? b : next++, &s);
    vocab[s] = b;
  }
  return {
      {"added_tokens",
       {{{"id", 256}, {"content", "<|begin_of_text|>"}, {"special", true}},
        {{"id", 257}, {"content", "<|end_of_text|>"}, {"special", true}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", Json::array()}}}};
}

// Llama-2 style: ▁ prefix, byte fallback, Strip decoder. Ids 3..258 are bytes.
Json SentencePieceStyle() {
  Json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  char name[8];
  for (int b = 0; b < 256; ++b) {
    snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  const char* pieces[] = {"\u2581", "h", "i", "\u2581h", "\u2581hi"};
  for (int i = 0; i < 5; ++i) vocab[pieces[i]] = 259 + i;
  return {
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
        {{"id", 1}, {"content", "<s>"}, {"special", true}},
        {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}},
          {{"type", "Replace"},
           {"pattern", {{"String", " "}}},
           {"content", "\u2581"}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"},
           {"pattern", {{"String", "\u2581"}}},
           {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"fuse_unk", true},
        {"vocab", vocab},
        {"merges", {"\u2581 h", "\u2581h i"}}}}};
}

std::unique_ptr<Tokenizer> Load(const Json& j) {
  auto tok = HfBpeTokenizer::FromJson(j.dump());
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::unique_ptr<Tokenizer>(std::move(tok).value())
                  : nullptr;
}

// Streams `ids` through a StreamingDecoder; checks that every piece is complete
// UTF-8 and returns their concatenation.
std::string Stream(const Tokenizer& tok, const std::vector<int32_t>& ids,
                   bool skip_special) {
  StreamingDecoder stream(&tok, skip_special);
  std::string all;
  for (int32_t id : ids) {
    auto piece = stream.Push(id);
    EXPECT_TRUE(piece.ok()) << piece.status();
    if (!piece.ok()) continue;
    EXPECT_EQ(utf8::FindInvalid(*piece), std::string_view::npos);
    EXPECT_EQ(piece->find(kFffd), std::string::npos)
        << "incomplete character emitted";
    all += *piece;
  }
  return all + stream.Finish();
}

TEST(StreamingDecoderTest, ByteLevelCharactersSpanningTokens) {
  auto tok = Load(BytesOnly());
  ASSERT_NE(tok, nullptr);
  for (std::string text :
       {"héllo 日本 👨‍👩‍👧!", "plain ascii", "😀😀😀", ""}) {
    auto ids = tok->Encode(text, false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(Stream(*tok, *ids, true), text);
  }
}

TEST(StreamingDecoderTest, EmitsEachCharacterAsSoonAsItIsComplete) {
  auto tok = Load(BytesOnly());
  ASSERT_NE(tok, nullptr);
  StreamingDecoder stream(tok.get(), true);
  // 日 = E6 97 A5: nothing until the third byte.
  EXPECT_EQ(stream.Push(0xE6).value(), "");
  EXPECT_EQ(stream.Push(0x97).value(), "");
  EXPECT_EQ(stream.Push(0xA5).value(), "日");
  EXPECT_EQ(stream.Push('a').value(), "a");
  // A stream that ends mid-character flushes U+FFFD.
  EXPECT_EQ(stream.Push(0xE6).value(), "");
  EXPECT_EQ(stream.Finish(), kFffd);
  // Finish() resets: the decoder is reusable.
  EXPECT_EQ(stream.Push('b').value(), "b");
}

TEST(StreamingDecoderTest, SpecialTokens) {
  auto tok = Load(BytesOnly());
  ASSERT_NE(tok, nullptr);
  std::vector<int32_t> ids = {256, 'h', 'i', 257};
  EXPECT_EQ(Stream(*tok, ids, true), "hi");
  EXPECT_EQ(Stream(*tok, ids, false), "<|begin_of_text|>hi<|end_of_text|>");
}

TEST(StreamingDecoderTest, SentencePieceLeadingSpaceAndByteFallback) {
  auto tok = Load(SentencePieceStyle());
  ASSERT_NE(tok, nullptr);
  // <s> ▁hi ▁ <E6><97><A5> ▁hi: decodes to "hi 日 hi" (Strip drops the very
  // first space only).
  std::vector<int32_t> ids = {1, 263, 259, 3 + 0xE6, 3 + 0x97, 3 + 0xA5, 263};
  ASSERT_EQ(tok->Decode(ids, true).value(), "hi 日 hi");
  EXPECT_EQ(Stream(*tok, ids, true), "hi 日 hi");
  EXPECT_EQ(Stream(*tok, ids, false), tok->Decode(ids, false).value());
}

TEST(StreamingDecoderTest, BadIdIsAnErrorAndTheStreamContinues) {
  auto tok = Load(BytesOnly());
  ASSERT_NE(tok, nullptr);
  StreamingDecoder stream(tok.get(), true);
  EXPECT_EQ(stream.Push('a').value(), "a");
  EXPECT_EQ(stream.Push(100000).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stream.Push('b').value(), "b");
}

class LoadTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hearth_tok_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void Write(const std::string& name, const std::string& content) {
    std::ofstream(dir_ / name, std::ios::binary) << content;
  }
  fs::path dir_;
};

TEST_F(LoadTokenizerTest, LoadsTokenizerJsonWithConfigNames) {
  Write("tokenizer.json", BytesOnly().dump());
  // Names may be plain strings or AddedToken objects.
  Write(
      "tokenizer_config.json",
      R"({"bos_token": {"content": "<|end_of_text|>"}, "eos_token": "<|begin_of_text|>"})");
  auto tok = LoadTokenizer(dir_.string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 257);
  EXPECT_EQ((*tok)->eos_id(), 256);
  EXPECT_EQ((*tok)->vocab_size(), 258);
}

TEST_F(LoadTokenizerTest, WellKnownNamesWithoutConfig) {
  Write("tokenizer.json", BytesOnly().dump());
  auto tok = LoadTokenizer(dir_.string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 256);
  EXPECT_EQ((*tok)->eos_id(), 257);
}

TEST_F(LoadTokenizerTest, AcceptsAFilePath) {
  Write("tokenizer.json", SentencePieceStyle().dump());
  auto tok = LoadTokenizer((dir_ / "tokenizer.json").string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 1);
}

TEST_F(LoadTokenizerTest, MissingFilesAreNotFound) {
  EXPECT_EQ(LoadTokenizer(dir_.string()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadTokenizer((dir_ / "nope").string()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(LoadTokenizerTest, BrokenTokenizerJsonNamesFileAndKey) {
  Write("tokenizer.json", R"({"model": {"type": "BPE", "merges": []}})");
  auto tok = LoadTokenizer(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  std::string message(tok.status().message());
  EXPECT_NE(message.find("tokenizer.json"), std::string::npos) << message;
  EXPECT_NE(message.find("model.vocab is missing"), std::string::npos)
      << message;
}

}  // namespace
}  // namespace hearth::tokenizer
