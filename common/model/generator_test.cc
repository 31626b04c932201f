#include "common/model/generator.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "common/model/model_loader.h"

namespace hearth::model {
namespace {

formats::LlamaConfig TinyConfig() {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.eos_token_id = 49;
  return c;
}

class GeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override { Build(TinyConfig()); }

  void Build(const formats::LlamaConfig& c) {
    RandomInitOptions init;
    init.init_std = 0.3;
    auto m = MakeRandomModel(c, 3, init);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *m;
    auto cache = KvCache::Create(model_->CacheDims(), {512, 8});
    ASSERT_TRUE(cache.ok());
    cache_ = std::move(cache).value();
  }

  // Greedy continuation by re-running the full no-cache forward each token.
  std::vector<int64_t> ReferenceGreedy(std::vector<int64_t> ids, int n) {
    torch::NoGradGuard no_grad;
    std::vector<int64_t> out;
    for (int i = 0; i < n; ++i) {
      at::Tensor logits =
          model_->Forward(torch::tensor(ids, torch::kLong).view({1, -1}))
              .logits;
      int64_t next = logits[0][-1].argmax().item<int64_t>();
      out.push_back(next);
      ids.push_back(next);
    }
    return out;
  }

  std::shared_ptr<LlamaForCausalLM> model_;
  std::unique_ptr<KvCache> cache_;
};

SamplingParams Greedy(int n) {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = n;
  p.ignore_eos = true;
  return p;
}

TEST_F(GeneratorTest, GreedyMatchesNoCacheReference) {
  std::vector<std::vector<int64_t>> prompts = {
      {1, 2, 3, 4, 5, 6, 7}, {9, 8}, {30, 31, 32, 33}};
  auto out = Generate(*model_, *cache_, prompts, Greedy(12));
  ASSERT_TRUE(out.ok()) << out.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ((*out)[i].tokens, ReferenceGreedy(prompts[i], 12)) << i;
    EXPECT_EQ((*out)[i].finish_reason, FinishReason::kLength);
  }
  // Everything was freed.
  EXPECT_EQ(cache_->num_sequences(), 0);
  EXPECT_EQ(cache_->FreeTokens(), cache_->capacity_tokens());
}

TEST_F(GeneratorTest, ChunkedPrefillGivesTheSameTokens) {
  std::vector<std::vector<int64_t>> prompts = {
      {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {4, 4}};
  auto whole = Generate(*model_, *cache_, prompts, Greedy(6));
  GenerateOptions opt;
  opt.prefill_chunk = 3;
  auto chunked = Generate(*model_, *cache_, prompts, Greedy(6), opt);
  ASSERT_TRUE(whole.ok() && chunked.ok());
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ((*whole)[i].tokens, (*chunked)[i].tokens);
}

TEST_F(GeneratorTest, SeededSamplingDoesNotDependOnTheBatch) {
  SamplingParams p;
  p.temperature = 1.5;
  p.top_p = 0.95;
  p.max_new_tokens = 10;
  p.seed = 1234;
  p.ignore_eos = true;
  std::vector<int64_t> a = {3, 1, 4, 1, 5};
  auto alone = Generate(*model_, *cache_, {a}, p);
  auto batched = Generate(*model_, *cache_, {a, {9, 2, 6}, {5, 3}}, p);
  auto again = Generate(*model_, *cache_, {a}, p);
  ASSERT_TRUE(alone.ok() && batched.ok() && again.ok());
  EXPECT_EQ((*alone)[0].tokens, (*batched)[0].tokens);
  EXPECT_EQ((*alone)[0].tokens, (*again)[0].tokens);
  p.seed = 99;
  auto other = Generate(*model_, *cache_, {a}, p);
  ASSERT_TRUE(other.ok());
  EXPECT_NE((*alone)[0].tokens, (*other)[0].tokens);
}

TEST_F(GeneratorTest, FinishReasons) {
  std::vector<int64_t> prompt = {1, 2, 3};
  const std::vector<int64_t> ref = ReferenceGreedy(prompt, 8);

  // EOS: make the model's 4th greedy token its EOS id.
  formats::LlamaConfig c = TinyConfig();
  c.eos_token_id = ref[3];
  c.eos_token_ids = {ref[3]};
  {
    RandomInitOptions init;
    init.init_std = 0.3;
    auto m = MakeRandomModel(c, 3, init);
    ASSERT_TRUE(m.ok());
    SamplingParams p = Greedy(8);
    p.ignore_eos = false;
    auto out = Generate(**m, *cache_, {prompt}, p);
    ASSERT_TRUE(out.ok());
    const size_t first =
        std::find(ref.begin(), ref.end(), ref[3]) - ref.begin();
    EXPECT_EQ((*out)[0].finish_reason, FinishReason::kEos);
    EXPECT_EQ((*out)[0].tokens,
              std::vector<int64_t>(ref.begin(), ref.begin() + first + 1));
  }
  // Stop token id.
  SamplingParams p = Greedy(8);
  p.stop_token_ids = {ref[2]};
  auto out = Generate(*model_, *cache_, {prompt}, p);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ((*out)[0].tokens.back(), ref[2]);

  // Stop string, with a detokenizer that spells each id.
  p = Greedy(8);
  GenerateOptions opt;
  opt.detokenize = [](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t id : ids) s += "<" + std::to_string(id) + ">";
    return s;
  };
  p.stop = {"<" + std::to_string(ref[1]) + "><" + std::to_string(ref[2]) + ">"};
  std::vector<std::pair<size_t, int64_t>> streamed;
  opt.on_token = [&](size_t i, int64_t t) { streamed.emplace_back(i, t); };
  out = Generate(*model_, *cache_, {prompt}, p, opt);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ((*out)[0].tokens,
            std::vector<int64_t>(ref.begin(), ref.begin() + 3));
  EXPECT_EQ(streamed.size(), 3u);

  // Context limit: max_position_embeddings 64, prompt 60.
  out = Generate(*model_, *cache_, {std::vector<int64_t>(60, 7)}, Greedy(20));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].finish_reason, FinishReason::kLength);
  EXPECT_EQ((*out)[0].tokens.size(), 5u);  // Positions 60..63 fed, the 5th not.
}

TEST_F(GeneratorTest, Errors) {
  SamplingParams p = Greedy(4);
  EXPECT_EQ(Generate(*model_, *cache_, {{}}, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Generate(*model_, *cache_, {{1, 50}}, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  p.temperature = -1;
  EXPECT_EQ(Generate(*model_, *cache_, {{1}}, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  p = Greedy(4);
  p.stop = {"x"};
  EXPECT_EQ(Generate(*model_, *cache_, {{1}}, p).status().code(),
            absl::StatusCode::kInvalidArgument);  // No detokenizer.
  // Out of cache capacity: an error, and the cache is left empty.
  auto small = KvCache::Create(model_->CacheDims(), {16, 8});
  ASSERT_TRUE(small.ok());
  auto out = Generate(
      *model_, **small,
      {std::vector<int64_t>(10, 1), std::vector<int64_t>(10, 2)}, Greedy(4));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*small)->num_sequences(), 0);
  EXPECT_EQ((*small)->free_blocks(), 2);
}

}  // namespace
}  // namespace hearth::model
