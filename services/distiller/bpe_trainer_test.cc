#include "services/distiller/bpe_trainer.h"

#include <filesystem>
#include <string>
#include <vector>

#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace hearth::distiller {
namespace {

TEST(BpeTrainerTest, ByteAlphabetMatchesGpt2) {
  EXPECT_EQ(ByteToUnicode('a'), "a");
  EXPECT_EQ(ByteToUnicode(' '), "\xC4\xA0");   // "Ġ"
  EXPECT_EQ(ByteToUnicode('\n'), "\xC4\x8A");  // "Ċ"
}

TEST(BpeTrainerTest, LearnsFrequentPairsFirstAndRoundTrips) {
  std::vector<std::string> docs = {"the the the then there",
                                   "And God said, Let there be light"};
  std::vector<std::string_view> views(docs.begin(), docs.end());
  BpeTrainerOptions options;
  options.vocab_size = 256 + 10 + 2;
  auto vocab = TrainBpe(views, options);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  ASSERT_FALSE(vocab->merges.empty());
  // " t" + "h" style merges come from the most frequent pair: "h e" (in
  // the/then/there).
  EXPECT_EQ(vocab->merges[0].first + vocab->merges[0].second, "he");
  // Pairs seen once are not merged (min_frequency 2), so the vocabulary stops
  // short.
  EXPECT_LE(vocab->tokens.size(), 268u);
  EXPECT_EQ(vocab->tokens.back(), "<|end_of_text|>");
  const int bos = static_cast<int>(vocab->tokens.size()) - 2;

  const std::string dir = ::testing::TempDir() + "/bpe_tok";
  ASSERT_TRUE(WriteTokenizer(*vocab, options, dir).ok());
  auto tok = tokenizer::LoadTokenizer(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), bos);
  EXPECT_EQ((*tok)->eos_id(), bos + 1);
  for (const std::string text :
       {"And God said, Let there be light.", "ünïcode ✓ 1234"}) {
    auto ids = (*tok)->Encode(text, /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ((*ids)[0], bos);
    auto back = (*tok)->Decode(*ids, /*skip_special_tokens=*/true);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, text);
  }
  auto ids = (*tok)->Encode(" the", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_LT(ids->size(), 4u);  // Merged below byte level.
}

TEST(BpeTrainerTest, Deterministic) {
  std::vector<std::string> docs = {"a b c ab bc abc abcabc", "cab cab bca"};
  std::vector<std::string_view> views(docs.begin(), docs.end());
  BpeTrainerOptions options;
  options.vocab_size = 270;
  auto a = TrainBpe(views, options), b = TrainBpe(views, options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(TokenizerJson(*a), TokenizerJson(*b));
}

}  // namespace
}  // namespace hearth::distiller
