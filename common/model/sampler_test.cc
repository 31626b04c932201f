#include "common/model/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <set>

namespace hearth::model {
namespace {

void ExpectInvalid(const SamplingParams& p, const std::string& field,
                   int64_t vocab = 0) {
  absl::Status s = ValidateSamplingParams(p, vocab);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_NE(s.message().find(field), std::string::npos) << s;
}

TEST(SamplingParamsTest, ValidationNamesTheField) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}).ok());
  SamplingParams p;
  p.max_new_tokens = 0;
  ExpectInvalid(p, "max_new_tokens");
  p = {};
  p.temperature = std::nan("");
  ExpectInvalid(p, "temperature");
  p.temperature = -0.5;
  ExpectInvalid(p, "temperature");
  p.temperature = std::numeric_limits<double>::infinity();
  ExpectInvalid(p, "temperature");
  p = {};
  p.top_k = -1;
  ExpectInvalid(p, "top_k");
  p = {};
  p.top_p = 0;
  ExpectInvalid(p, "top_p");
  p.top_p = 1.5;
  ExpectInvalid(p, "top_p");
  p.top_p = std::nan("");
  ExpectInvalid(p, "top_p");
  p = {};
  p.repetition_penalty = 0;
  ExpectInvalid(p, "repetition_penalty");
  p = {};
  p.stop = {"ok", ""};
  ExpectInvalid(p, "stop[1]");
  p = {};
  p.stop_token_ids = {5, 100};
  ExpectInvalid(p, "stop_token_ids[1]", 100);
  EXPECT_TRUE(ValidateSamplingParams(p).ok());  // Vocabulary unknown.
  p.temperature = 0;
  p.top_p = 1;
  p.stop_token_ids = {99};
  EXPECT_TRUE(ValidateSamplingParams(p, 100).ok());
}

TEST(SamplerTest, GreedyTakesTheArgmaxAndTiesGoLow) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p);
  const float logits[] = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
  EXPECT_EQ(s.Sample(logits, 5), 1);
}

TEST(SamplerTest, RepetitionPenaltyAsInTransformers) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0;
  // Token 1 (3.0) was in the prompt: 3.0 / 2 = 1.5 < 2.9, so token 4 wins.
  Sampler s(p, {}, {1, 1, 0});
  const float logits[] = {0.1f, 3.0f, -1.0f, 2.0f, 2.9f};
  EXPECT_EQ(s.Sample(logits, 5), 4);
  // Negative scores are multiplied: token 0 at -0.5 becomes -1.0.
  const float neg[] = {-0.5f, -2.0f, -0.9f};
  Sampler s2(p, {}, {0});
  EXPECT_EQ(s2.Sample(neg, 3), 2);
  // Generated tokens count as seen too.
  Sampler s3(p);
  EXPECT_EQ(s3.Sample(logits, 5), 1);
  s3.Accept(1);
  EXPECT_EQ(s3.Sample(logits, 5), 4);
}

std::map<int64_t, int> Histogram(const SamplingParams& base,
                                 const std::vector<float>& logits, int draws) {
  std::map<int64_t, int> counts;
  for (int i = 0; i < draws; ++i) {
    SamplingParams p = base;
    p.seed = 1000 + i;
    Sampler s(p);
    ++counts[s.Sample(logits.data(), static_cast<int64_t>(logits.size()))];
  }
  return counts;
}

TEST(SamplerTest, TopKKeepsOnlyTheKBest) {
  SamplingParams p;
  p.top_k = 2;
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, 1.9f, -3.0f};
  auto counts = Histogram(p, logits, 2000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], 0);
  EXPECT_GT(counts[3], 0);
  // Renormalised softmax over {2.0, 1.9}: p(1) = 1 / (1 + e^-0.1) = 0.525.
  EXPECT_NEAR(counts[1] / 2000.0, 0.525, 0.04);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (log-probabilities as logits).
  const std::vector<float> logits = {std::log(0.3f), std::log(0.05f),
                                     std::log(0.5f), std::log(0.15f)};
  SamplingParams p;
  p.top_p = 0.75;  // 0.5 < 0.75 <= 0.8: tokens 2 and 0.
  auto counts = Histogram(p, logits, 2000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_NEAR(counts[2] / 2000.0, 0.5 / 0.8, 0.04);
  EXPECT_GT(counts[0], 0);
  p.top_p = 0.85;  // 0.8 < 0.85 <= 0.95: three tokens.
  counts = Histogram(p, logits, 2000);
  EXPECT_EQ(counts.size(), 3u);
  EXPECT_EQ(counts.count(1), 0u);
  p.top_p = 0.3;  // The top token alone.
  counts = Histogram(p, logits, 200);
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts.begin()->first, 2);
}

TEST(SamplerTest, TopPOverALargeFlatVocabulary) {
  // Nearly uniform over 1000 tokens: the nucleus of 0.5 needs ~500 candidates,
  // more than the first sorted prefix, so the prefix must widen correctly.
  std::vector<float> logits(1000);
  for (int i = 0; i < 1000; ++i)
    logits[i] = 1e-4f * static_cast<float>((i * 7919) % 1000);
  SamplingParams p;
  p.top_p = 0.5;
  auto counts = Histogram(p, logits, 3000);
  for (const auto& [token, n] : counts) {
    EXPECT_GE(logits[token], 1e-4f * 490) << token;  // Only the upper half.
  }
  EXPECT_GT(counts.size(), 400u);
}

TEST(SamplerTest, TopKThenTopP) {
  const std::vector<float> logits = {std::log(0.4f), std::log(0.3f),
                                     std::log(0.2f), std::log(0.1f)};
  SamplingParams p;
  p.top_k = 2;     // {0.4, 0.3} renormalised to {0.571, 0.429}.
  p.top_p = 0.55;  // 0.571 >= 0.55: only the first.
  auto counts = Histogram(p, logits, 300);
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts.begin()->first, 0);
}

TEST(SamplerTest, TopKFindsTheBestAnywhereInTheVocabulary) {
  // The best tokens have the highest ids, with and without top-p.
  std::vector<float> logits(300, 0.0f);
  logits[299] = 5.0f;
  logits[250] = 4.8f;
  logits[200] = 4.0f;
  SamplingParams p;
  p.top_k = 2;
  auto counts = Histogram(p, logits, 400);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[299], 0);
  EXPECT_GT(counts[250], 0);
  p.top_p = 0.5;  // Renormalised top-2: 0.55 / 0.45, so only 299.
  counts = Histogram(p, logits, 200);
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts.begin()->first, 299);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedsDiffer) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = 0.05f * static_cast<float>(i % 7);
  auto run = [&](uint64_t seed) {
    SamplingParams p;
    p.seed = seed;
    p.temperature = 1.3;
    p.top_p = 0.9;
    Sampler s(p);
    std::vector<int64_t> out;
    for (int i = 0; i < 40; ++i) out.push_back(s.Sample(logits.data(), 50));
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(SamplerTest, LowTemperatureIsNearlyGreedy) {
  SamplingParams p;
  p.temperature = 1e-6;
  p.seed = 1;
  Sampler s(p);
  const float logits[] = {0.1f, 0.2f, 0.15f};
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.Sample(logits, 3), 1);
}

TEST(SamplerTest, FinishReasons) {
  SamplingParams p;
  p.max_new_tokens = 3;
  p.stop_token_ids = {7};
  Sampler s(p, {2});
  EXPECT_EQ(s.Accept(5), FinishReason::kNone);
  EXPECT_EQ(s.Accept(2), FinishReason::kEos);
  Sampler s2(p, {2});
  EXPECT_EQ(s2.Accept(7), FinishReason::kStop);
  Sampler s3(p, {2});
  s3.Accept(1);
  s3.Accept(1);
  EXPECT_EQ(s3.Accept(1), FinishReason::kLength);
  EXPECT_EQ(s3.num_generated(), 3);
  p.ignore_eos = true;
  Sampler s4(p, {2});
  EXPECT_EQ(s4.Accept(2), FinishReason::kNone);
  EXPECT_EQ(FinishReasonName(FinishReason::kEos), "eos");
  EXPECT_EQ(FinishReasonName(FinishReason::kLength), "length");
  EXPECT_EQ(FinishReasonName(FinishReason::kStop), "stop");
}

TEST(StopStringTest, FindsEarliestIncludingStraddling) {
  std::vector<std::string> stops = {"\n\n", "END"};
  EXPECT_EQ(FindStopString(stops, "hello"), std::string::npos);
  EXPECT_EQ(FindStopString(stops, "hi END and\n\n"), 3u);
  // "EN" was already checked; "D" arrives: the straddling match is found.
  EXPECT_EQ(FindStopString(stops, "abc END", 6), 4u);
  // A match entirely inside already-checked text is not reported again.
  EXPECT_EQ(FindStopString(stops, "END abc", 5), std::string::npos);
}

}  // namespace
}  // namespace hearth::model
