#include "common/tokenizer/sentencepiece_tokenizer.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/utf8.h"
#include "gtest/gtest.h"

// See sentencepiece_tokenizer.cc: the header's `namespace absl` shim collides
// with abseil's, so it is read under another name.
#define absl hearth_sentencepiece_absl
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#undef absl

namespace hearth::tokenizer {
namespace {

namespace fs = std::filesystem;

// Trains a small BPE model with byte fallback (like Llama-2's) once per test
// binary; training on a few KB takes well under a second.
class SentencePieceTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("hearth_sp_test_" + std::to_string(getpid())));
    fs::create_directories(*dir_);
    {
      std::ofstream corpus(*dir_ / "corpus.txt");
      const char* lines[] = {
          "the quick brown fox jumps over the lazy dog",
          "hello world, hello tokenizer, hello hearth",
          "language models read tokens and write tokens",
          "distill quantize serve: the hearth pipeline",
          "numbers like 12345 and 67890 appear in text",
      };
      for (int i = 0; i < 200; ++i) corpus << lines[i % 5] << " " << i << "\n";
    }
    // Llama-2's tokenizer.model settings: BPE, identity normalizer, dummy
    // prefix, spaces kept as they are, digits split, byte fallback.
    for (const bool remove_ws : {false, true}) {
      std::string args =
          "--input=" + (*dir_ / "corpus.txt").string() + " --model_prefix=" +
          (*dir_ / (remove_ws ? "collapse" : "tokenizer")).string() +
          " --vocab_size=400 --model_type=bpe --byte_fallback=true"
          " --character_coverage=1.0 --minloglevel=2"
          " --normalization_rule_name=identity --add_dummy_prefix=true"
          " --split_digits=true --allow_whitespace_only_pieces=true"
          " --user_defined_symbols=<tool>"
          " --remove_extra_whitespaces=" +
          std::string(remove_ws ? "true" : "false");
      auto status = sentencepiece::SentencePieceTrainer::Train(args);
      ASSERT_TRUE(status.ok()) << status.ToString();
    }
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
  }
  static std::string ModelPath() {
    return (*dir_ / "tokenizer.model").string();
  }
  static std::string CollapsingModelPath() {
    return (*dir_ / "collapse.model").string();
  }

  static fs::path* dir_;
};

fs::path* SentencePieceTokenizerTest::dir_ = nullptr;

TEST_F(SentencePieceTokenizerTest, EncodeAddsBosWhenAsked) {
  auto tok = SentencePieceTokenizer::FromFile(ModelPath(), {});
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 400);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  auto with = (*tok)->Encode("hello world", true);
  auto without = (*tok)->Encode("hello world", false);
  ASSERT_TRUE(with.ok() && without.ok());
  ASSERT_EQ(with->size(), without->size() + 1);
  EXPECT_EQ(with->front(), 1);
  EXPECT_EQ(std::vector<int32_t>(with->begin() + 1, with->end()), *without);
}

TEST_F(SentencePieceTokenizerTest, AddEosOption) {
  SentencePieceTokenizer::Options options;
  options.add_eos = true;
  auto tok = SentencePieceTokenizer::FromFile(ModelPath(), options);
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("hello", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), 1);
  EXPECT_EQ(ids->back(), 2);
}

TEST_F(SentencePieceTokenizerTest, DecodeInvertsEncode) {
  auto tok = SentencePieceTokenizer::FromFile(ModelPath(), {});
  ASSERT_TRUE(tok.ok());
  // Characters outside the training corpus go through <0xXX> byte pieces.
  for (const char* text :
       {"hello world", "the lazy dog 42", "日本語 😀 café", "a  b"}) {
    auto ids = (*tok)->Encode(text, true);
    ASSERT_TRUE(ids.ok());
    auto decoded = (*tok)->Decode(*ids, /*skip_special_tokens=*/true);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, text);
  }
}

TEST_F(SentencePieceTokenizerTest, DecodeKeepsControlTokensWhenAsked) {
  auto tok = SentencePieceTokenizer::FromFile(ModelPath(), {});
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("hello world", true);
  ASSERT_TRUE(ids.ok());
  ids->push_back(2);
  EXPECT_EQ((*tok)->Decode(*ids, false).value(), "<s> hello world</s>");
  EXPECT_EQ((*tok)->Decode(*ids, true).value(), "hello world");
  EXPECT_TRUE((*tok)->IsSpecial(1));
  EXPECT_FALSE((*tok)->IsSpecial((*ids)[1]));
}

TEST_F(SentencePieceTokenizerTest, Lookups) {
  auto tok = SentencePieceTokenizer::FromFile(ModelPath(), {});
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->TokenToId("<s>"), 1);
  EXPECT_EQ((*tok)->TokenToId("<0x41>").has_value(), true);
  EXPECT_EQ((*tok)->TokenToId("no such piece"), std::nullopt);
  EXPECT_EQ((*tok)->IdToToken(2), "</s>");
  EXPECT_EQ((*tok)->IdToToken(-1), "");
  EXPECT_EQ((*tok)->IdToToken(400), "");
}

TEST_F(SentencePieceTokenizerTest, Errors) {
  auto tok = SentencePieceTokenizer::FromFile(ModelPath(), {});
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->Decode({5, 400}, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*tok)->Encode("bad \xFF byte", false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(
      SentencePieceTokenizer::FromFile("/nonexistent/tokenizer.model", {})
          .ok());
  EXPECT_FALSE(
      SentencePieceTokenizer::FromSerialized("definitely not a model", {})
          .ok());
}

// The texts hearth's encoder must tokenize exactly as libsentencepiece does.
const std::vector<std::string>& OracleTexts() {
  static const auto* texts = new std::vector<std::string>{
      "hello world",
      "the quick brown fox jumps over the lazy dog",
      "Hello World HELLO wOrLd",
      "numbers like 12345 and 67890, 3.14159 and -42",
      "int main() { return x->y[3] << 2; }  // code\n",
      "def f(a, b):\n    return a ** b\n\tindented",
      "日本語のテキストと中文文本",
      "emoji 😀🎉👍🏽 and flags 🇩🇪",
      "café naïve résumé Ελληνικά русский",
      "  leading spaces",
      "trailing spaces   ",
      "many     spaces   between\n\n\nnewlines",
      " ",
      "",
      "\t\r\n",
      "<s> literal control text </s>",
      "a <tool> call<tool><tool>x",
      "hearth pipeline: distill quantize serve hello tokenizer",
      "\xE2\x96\x81 already an escaped space",
  };
  return *texts;
}

void ExpectMatchesOracle(const std::string& model_path) {
  sentencepiece::SentencePieceProcessor oracle;
  auto loaded = oracle.Load(model_path);
  ASSERT_TRUE(loaded.ok()) << loaded.ToString();
  auto tok = SentencePieceTokenizer::FromFile(model_path, {});
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_EQ((*tok)->vocab_size(), oracle.GetPieceSize());
  EXPECT_EQ((*tok)->bos_id(), oracle.bos_id());
  EXPECT_EQ((*tok)->eos_id(), oracle.eos_id());
  std::vector<std::string> texts = OracleTexts();
  // Every corpus line too, and a long text that exercises many merges.
  std::string all;
  for (const std::string& t : OracleTexts()) all += t + " ";
  texts.push_back(all);
  int compared = 0;
  for (const std::string& text : texts) {
    std::vector<int> want;
    ASSERT_TRUE(oracle.Encode(text, &want).ok());
    auto got = (*tok)->Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, std::vector<int32_t>(want.begin(), want.end()))
        << "text: \"" << text << "\"";
    std::string want_text;
    ASSERT_TRUE(oracle.Decode(want, &want_text).ok());
    EXPECT_EQ((*tok)->Decode(*got, true).value(), want_text)
        << "text: \"" << text << "\"";
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(OracleTexts().size()) + 1);
}

TEST_F(SentencePieceTokenizerTest, MatchesLibSentencePiece) {
  ExpectMatchesOracle(ModelPath());
  // decode(encode(x)) == x when spaces are kept (Llama-2's setting).
  auto tok = SentencePieceTokenizer::FromFile(ModelPath(), {});
  ASSERT_TRUE(tok.ok());
  for (const std::string& text : OracleTexts()) {
    if (absl::StrContains(text, "\xE2\x96\x81")) continue;  // "▁" reads as " "
    auto ids = (*tok)->Encode(text, true);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ((*tok)->Decode(*ids, true).value(), text);
  }
}

TEST_F(SentencePieceTokenizerTest, MatchesLibSentencePieceCollapsingSpaces) {
  ExpectMatchesOracle(CollapsingModelPath());
  auto tok = SentencePieceTokenizer::FromFile(CollapsingModelPath(), {});
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(
      (*tok)->Decode((*tok)->Encode(" a  b ", false).value(), true).value(),
      "a b");
}

TEST_F(SentencePieceTokenizerTest, UnsupportedModelsAreUnimplemented) {
  for (const char* type : {"unigram", "bpe"}) {
    std::string prefix = (*dir_ / (std::string("other_") + type)).string();
    std::string args = "--input=" + (*dir_ / "corpus.txt").string() +
                       " --model_prefix=" + prefix +
                       " --vocab_size=90 --minloglevel=2 --model_type=" + type;
    auto trained = sentencepiece::SentencePieceTrainer::Train(args);
    ASSERT_TRUE(trained.ok()) << trained.ToString();
    auto tok = SentencePieceTokenizer::FromFile(prefix + ".model", {});
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
    // Unigram: named model type; BPE with the default nmt_nfkc normalizer:
    // the normalizer is named.
    EXPECT_TRUE(absl::StrContains(
        tok.status().message(),
        std::string(type) == "unigram" ? "UNIGRAM" : "nmt_nfkc"))
        << tok.status();
  }
}

TEST_F(SentencePieceTokenizerTest, LoadTokenizerFindsTokenizerModel) {
  fs::path folder = *dir_ / "model_folder";
  fs::create_directories(folder);
  fs::copy_file(ModelPath(), folder / "tokenizer.model",
                fs::copy_options::overwrite_existing);
  std::ofstream(folder / "tokenizer_config.json")
      << R"({"add_bos_token": false})";
  auto tok = LoadTokenizer(folder.string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("hello", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_NE(ids->front(), 1);  // add_bos_token: false
}

TEST_F(SentencePieceTokenizerTest, StreamingDecoderMatchesDecode) {
  auto tok = SentencePieceTokenizer::FromFile(ModelPath(), {});
  ASSERT_TRUE(tok.ok());
  const std::string text = "hello 日本語 world 😀!";
  auto ids = (*tok)->Encode(text, true);
  ASSERT_TRUE(ids.ok());
  StreamingDecoder stream(tok->get(), /*skip_special_tokens=*/true);
  std::string streamed;
  for (int32_t id : *ids) {
    auto piece = stream.Push(id);
    ASSERT_TRUE(piece.ok());
    EXPECT_EQ(utf8::FindInvalid(*piece), std::string_view::npos);
    EXPECT_EQ(piece->find("\xEF\xBF\xBD"), std::string::npos)
        << "incomplete character emitted";
    streamed += *piece;
  }
  streamed += stream.Finish();
  EXPECT_EQ(streamed, text);
}

}  // namespace
}  // namespace hearth::tokenizer
