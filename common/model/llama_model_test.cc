#include "common/model/llama_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>

#include "common/model/model_loader.h"

namespace hearth::model {
namespace {

formats::LlamaConfig TinyConfig() {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.eos_token_id = 2;
  return c;
}

// Random weights large enough that the logits vary by several units (with HF's
// 0.02 init every position gives nearly the same logits, and equality tests
// would prove little), and norm weights and biases that are not the identity.
std::shared_ptr<LlamaForCausalLM> RandomModel(
    const formats::LlamaConfig& c, uint64_t seed = 1,
    c10::ScalarType dtype = c10::kFloat) {
  RandomInitOptions init;
  init.init_std = 0.15;
  auto model = MakeRandomModel(c, seed, init);
  EXPECT_TRUE(model.ok()) << model.status();
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (auto& p : (*model)->named_parameters()) {
    const std::string& name = p.key();
    if (name.find("norm.weight") != std::string::npos) {
      p.value().copy_(1 + 0.3 * torch::randn_like(p.value()));
    } else if (name.find(".bias") != std::string::npos) {
      p.value().copy_(0.2 * torch::randn_like(p.value()));
    }
  }
  if (dtype != c10::kFloat) (*model)->to(dtype);
  return *model;
}

at::Tensor Ids(const std::vector<int64_t>& v) {
  return torch::tensor(v, torch::kLong)
      .view({1, static_cast<int64_t>(v.size())});
}

std::vector<int64_t> RandomTokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int64_t> out;
  uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    out.push_back(
        static_cast<int64_t>((s >> 33) % static_cast<uint64_t>(vocab)));
  }
  return out;
}

std::vector<int64_t> Slice(const std::vector<int64_t>& v, size_t from,
                           size_t to) {
  return std::vector<int64_t>(v.begin() + from, v.begin() + to);
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(torch::kFloat) - b.to(torch::kFloat)).abs().max().item<double>();
}

// Reference logits [T, V] of `tokens` without any cache.
at::Tensor Reference(LlamaForCausalLM& model,
                     const std::vector<int64_t>& tokens) {
  torch::NoGradGuard no_grad;
  return model.Forward(Ids(tokens)).logits[0].to(torch::kFloat);
}

std::unique_ptr<KvCache> MakeCache(LlamaForCausalLM& model, int64_t capacity,
                                   int64_t block) {
  auto cache = KvCache::Create(model.CacheDims(), {capacity, block});
  EXPECT_TRUE(cache.ok()) << cache.status();
  return std::move(cache).value();
}

// --- RoPE frequencies
// -----------------------------------------------------------------

TEST(RopeTest, DefaultFrequencies) {
  formats::LlamaConfig c = TinyConfig();
  at::Tensor f = RopeInverseFrequencies(c);
  ASSERT_EQ(f.numel(), 8);
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(f[i].item<double>(), 1.0 / std::pow(10000.0, 2.0 * i / 16),
                1e-6)
        << i;
  }
}

TEST(RopeTest, LinearScalingDividesByFactor) {
  formats::LlamaConfig c = TinyConfig();
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 4;
  at::Tensor f = RopeInverseFrequencies(c);
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(f[i].item<double>(), 1.0 / std::pow(10000.0, 2.0 * i / 16) / 4,
                1e-7)
        << i;
  }
}

TEST(RopeTest, Llama3ScalingBands) {
  // head_dim 16, theta 500000: wavelengths 2*pi*500000^(i/8) run from 6.3 to
  // ~1.9e6, so with original context 64, low_freq_factor 1 and high_freq_factor
  // 4 the table covers all three bands: kept (wavelen < 16), interpolated
  // (16..64) and divided by the factor (> 64).
  formats::LlamaConfig c = TinyConfig();
  c.rope_theta = 500000;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.low_freq_factor = 1;
  c.rope_scaling.high_freq_factor = 4;
  c.rope_scaling.original_max_position_embeddings = 64;
  at::Tensor f = RopeInverseFrequencies(c);
  int kept = 0, smoothed = 0, divided = 0;
  for (int i = 0; i < 8; ++i) {
    const double inv = 1.0 / std::pow(500000.0, 2.0 * i / 16);
    const double wavelen = 2 * M_PI / inv;
    double expected;
    if (wavelen < 64.0 / 4) {
      expected = inv, ++kept;
    } else if (wavelen > 64.0 / 1) {
      expected = inv / 8, ++divided;
    } else {
      const double smooth = (64.0 / wavelen - 1) / (4 - 1);
      expected = (1 - smooth) * inv / 8 + smooth * inv, ++smoothed;
    }
    EXPECT_NEAR(f[i].item<double>() / expected, 1.0, 1e-5) << i;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(smoothed, 0);
  EXPECT_GT(divided, 0);
}

// --- Forward
// ------------------------------------------------------------------------------

TEST(ForwardTest, OutputsHaveHfShapesAndSemantics) {
  formats::LlamaConfig c = TinyConfig();
  auto model = RandomModel(c);
  ForwardOptions opt;
  opt.output_hidden_states = true;
  opt.output_attentions = true;
  torch::NoGradGuard no_grad;
  ForwardOutput out = model->Forward(
      torch::randint(0, c.vocab_size, {2, 9}, torch::kLong), std::nullopt, opt);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{2, 9, c.vocab_size}));
  ASSERT_EQ(out.hidden_states.size(), 3u);
  EXPECT_EQ(out.hidden_states[0].sizes(),
            (std::vector<int64_t>{2, 9, c.hidden_size}));
  ASSERT_EQ(out.attentions.size(), 2u);
  const at::Tensor& a = out.attentions[1];
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{2, 4, 9, 9}));
  EXPECT_LT(MaxDiff(a.sum(-1), torch::ones({2, 4, 9})), 1e-5);
  EXPECT_EQ(a.triu(1).abs().max().item<float>(), 0.0f);  // Causal.
  // Logits must vary, or the equality tests below would be vacuous.
  EXPECT_GT(out.logits.std().item<double>(), 0.5);
}

TEST(ForwardTest, RightPaddingDoesNotChangeRealPositions) {
  formats::LlamaConfig c = TinyConfig();
  auto model = RandomModel(c);
  torch::NoGradGuard no_grad;
  std::vector<int64_t> a = RandomTokens(5, c.vocab_size, 1);
  std::vector<int64_t> b = RandomTokens(8, c.vocab_size, 2);
  std::vector<int64_t> a_padded = a;
  a_padded.resize(8, 0);
  at::Tensor ids = torch::cat({Ids(a_padded), Ids(b)}, 0);
  at::Tensor mask = torch::ones({2, 8}, torch::kLong);
  mask[0].narrow(0, 5, 3).zero_();
  at::Tensor logits = model->Forward(ids, mask).logits;
  EXPECT_LT(MaxDiff(logits[0].narrow(0, 0, 5), Reference(*model, a)), 1e-4);
  EXPECT_LT(MaxDiff(logits[1], Reference(*model, b)), 1e-4);
}

TEST(ForwardTest, BackwardReachesEveryParameter) {
  formats::LlamaConfig c = TinyConfig();
  auto model = RandomModel(c);
  at::Tensor ids = torch::randint(0, c.vocab_size, {2, 7}, torch::kLong);
  at::Tensor logits = model->Forward(ids).logits;
  at::Tensor loss = torch::nn::functional::cross_entropy(
      logits.narrow(1, 0, 6).reshape({-1, c.vocab_size}),
      ids.narrow(1, 1, 6).reshape({-1}));
  loss.backward();
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>())
        << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
  }
  // An optimizer step (in place on the parameters) is seen by Step(): the
  // packed inference weights are the parameters' storage.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.sub_(0.5 * p.grad());
  }
  auto cache = MakeCache(*model, 64, 16);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  std::vector<int64_t> prompt = RandomTokens(6, c.vocab_size, 3);
  auto step = model->Step(*cache, {{1, prompt}}, /*all_positions=*/true);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_LT(MaxDiff(*step, Reference(*model, prompt)), 1e-4);
}

TEST(ForwardTest, CheckedRejectsBadInput) {
  formats::LlamaConfig c = TinyConfig();
  auto model = RandomModel(c);
  EXPECT_EQ(
      model->ForwardChecked(torch::zeros({3}, torch::kLong)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->ForwardChecked(Ids({1, 2, 97})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(model->ForwardChecked(Ids({1, 2, 96})).ok());
}

// --- Inference step
// ---------------------------------------------------------------------

// Configs the cache tests run over: GQA, MHA, MQA, tied embeddings, Qwen2
// biases, Llama biases (q/k/v/o), llama3 rope scaling.
std::vector<std::pair<std::string, formats::LlamaConfig>> Variants() {
  std::vector<std::pair<std::string, formats::LlamaConfig>> v;
  v.emplace_back("gqa", TinyConfig());
  formats::LlamaConfig mha = TinyConfig();
  mha.num_key_value_heads = 4;
  v.emplace_back("mha", mha);
  formats::LlamaConfig mqa = TinyConfig();
  mqa.num_key_value_heads = 1;
  mqa.tie_word_embeddings = true;
  v.emplace_back("mqa_tied", mqa);
  formats::LlamaConfig qwen = TinyConfig();
  qwen.architecture = "Qwen2ForCausalLM";
  qwen.model_type = "qwen2";
  qwen.attention_bias = true;
  qwen.tie_word_embeddings = true;
  v.emplace_back("qwen2", qwen);
  formats::LlamaConfig bias = TinyConfig();
  bias.attention_bias = true;
  v.emplace_back("llama_bias", bias);
  formats::LlamaConfig l3 = TinyConfig();
  l3.rope_theta = 500000;
  l3.rope_scaling.type = "llama3";
  l3.rope_scaling.factor = 8;
  l3.rope_scaling.original_max_position_embeddings = 64;
  v.emplace_back("llama3_rope", l3);
  return v;
}

TEST(StepTest, ParameterNamesMatchHuggingFace) {
  formats::LlamaConfig qwen = Variants()[3].second;
  auto model = RandomModel(qwen);
  std::map<std::string, std::vector<int64_t>> names;
  for (const auto& p : model->named_parameters())
    names[p.key()] = p.value().sizes().vec();
  EXPECT_EQ(names.at("model.embed_tokens.weight"),
            (std::vector<int64_t>{97, 64}));
  EXPECT_EQ(names.at("model.layers.1.self_attn.q_proj.weight"),
            (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(names.at("model.layers.1.self_attn.k_proj.weight"),
            (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(names.at("model.layers.1.self_attn.k_proj.bias"),
            (std::vector<int64_t>{32}));
  EXPECT_EQ(names.at("model.layers.0.mlp.down_proj.weight"),
            (std::vector<int64_t>{64, 96}));
  EXPECT_EQ(names.at("model.layers.0.post_attention_layernorm.weight"),
            (std::vector<int64_t>{64}));
  EXPECT_EQ(names.at("model.norm.weight"), (std::vector<int64_t>{64}));
  EXPECT_EQ(names.count("lm_head.weight"), 0u);  // Tied.
  EXPECT_EQ(names.count("model.layers.0.self_attn.o_proj.bias"),
            0u);  // Qwen2: no o bias.
  // 2 + 2 layers * (4 + 3 biases + 3 + 2 norms) + norm.
  EXPECT_EQ(names.size(), 1u + 2 * 12 + 1);

  auto llama = RandomModel(Variants()[4].second);
  std::map<std::string, int> llama_names;
  for (const auto& p : llama->named_parameters()) llama_names[p.key()] = 1;
  EXPECT_EQ(llama_names.count("model.layers.0.self_attn.o_proj.bias"), 1u);
  EXPECT_EQ(llama_names.count("lm_head.weight"), 1u);
}

TEST(StepTest, CacheMatchesNoCacheForward) {
  for (const auto& [name, config] : Variants()) {
    SCOPED_TRACE(name);
    auto model = RandomModel(config);
    std::vector<int64_t> tokens = RandomTokens(40, config.vocab_size, 11);
    at::Tensor ref = Reference(*model, tokens);

    // Whole prompt at once, all positions.
    auto cache = MakeCache(*model, 128, 4);
    ASSERT_TRUE(cache->AddSequence(5).ok());
    auto all = model->Step(*cache, {{5, tokens}}, /*all_positions=*/true);
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_LT(MaxDiff(*all, ref), 1e-4);

    // Chunked prefill (exercises attention over cached + new tokens) then
    // decode one token at a time.
    ASSERT_TRUE(cache->AddSequence(6).ok());
    auto a = model->Step(*cache, {{6, Slice(tokens, 0, 7)}});
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_LT(MaxDiff((*a)[0], ref[6]), 1e-4);
    auto b = model->Step(*cache, {{6, Slice(tokens, 7, 13)}},
                         /*all_positions=*/true);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_LT(MaxDiff(*b, ref.narrow(0, 7, 6)), 1e-4);
    for (size_t t = 13; t < tokens.size(); ++t) {
      auto d = model->Step(*cache, {{6, {tokens[t]}}});
      ASSERT_TRUE(d.ok()) << d.status();
      ASSERT_EQ(d->sizes(), (std::vector<int64_t>{1, config.vocab_size}));
      EXPECT_LT(MaxDiff((*d)[0], ref[t]), 1e-4) << "position " << t;
    }
    EXPECT_EQ(cache->SequenceLength(6), 40);
  }
}

// float32 runs the fused CPU kernels, float64 the generic tensor path (the one
// CUDA uses): both must agree with the no-cache forward.
class MixedBatchTest : public ::testing::TestWithParam<c10::ScalarType> {};

TEST_P(MixedBatchTest, MatchesOneAtATime) {
  for (const auto& [name, config] : Variants()) {
    SCOPED_TRACE(name);
    auto model = RandomModel(config, 3, GetParam());
    // Four sequences of different lengths; they join and progress at different
    // times, so single steps mix first prefills, continued prefills and decodes
    // with different context lengths (and block-table padding).
    std::vector<std::vector<int64_t>> seqs;
    std::vector<at::Tensor> refs;
    const std::vector<int64_t> lengths = {23, 9, 31, 14};
    for (size_t i = 0; i < lengths.size(); ++i) {
      seqs.push_back(RandomTokens(lengths[i], config.vocab_size, 100 + i));
      refs.push_back(Reference(*model, seqs.back()));
    }
    auto cache = MakeCache(*model, 256, 4);
    std::vector<size_t> done(seqs.size(), 0);
    // Schedule: step k gives sequence i `plan[k][i]` tokens (0 = absent).
    const std::vector<std::vector<size_t>> plan = {
        {5, 0, 0, 0}, {1, 9, 0, 0}, {1, 0, 12, 0}, {6, 0, 1, 14},
        {1, 0, 8, 0}, {1, 0, 1, 0}, {1, 0, 1, 0},  {1, 0, 1, 0},
        {1, 0, 1, 0}, {1, 0, 1, 0}, {1, 0, 5, 0},  {1, 0, 1, 0},
        {1, 0, 1, 0}, {1, 0, 0, 0}, {1, 0, 0, 0},  {1, 0, 0, 0}};
    for (size_t k = 0; k < plan.size(); ++k) {
      std::vector<SequenceInput> batch;
      std::vector<size_t> who;
      for (size_t i = 0; i < seqs.size(); ++i) {
        const size_t n = std::min(plan[k][i], seqs[i].size() - done[i]);
        if (n == 0) continue;
        if (done[i] == 0)
          ASSERT_TRUE(cache->AddSequence(static_cast<SequenceId>(i)).ok());
        batch.push_back(
            {static_cast<SequenceId>(i), Slice(seqs[i], done[i], done[i] + n)});
        who.push_back(i);
      }
      if (batch.empty()) continue;
      auto logits = model->Step(*cache, batch);
      ASSERT_TRUE(logits.ok()) << logits.status();
      ASSERT_EQ(logits->size(0), static_cast<int64_t>(batch.size()));
      for (size_t j = 0; j < who.size(); ++j) {
        const size_t i = who[j];
        done[i] += batch[j].tokens.size();
        EXPECT_LT(MaxDiff((*logits)[j], refs[i][done[i] - 1]), 1e-4)
            << "step " << k << " seq " << i << " pos " << done[i] - 1;
      }
    }
    for (size_t i = 0; i < seqs.size(); ++i)
      EXPECT_EQ(done[i], seqs[i].size()) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MixedBatchTest,
                         ::testing::Values(c10::kFloat, c10::kDouble));

TEST(StepTest, AllPositionsInBatchOrder) {
  formats::LlamaConfig c = TinyConfig();
  auto model = RandomModel(c);
  std::vector<int64_t> a = RandomTokens(6, c.vocab_size, 1);
  std::vector<int64_t> b = RandomTokens(3, c.vocab_size, 2);
  auto cache = MakeCache(*model, 64, 16);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  ASSERT_TRUE(cache->AddSequence(2).ok());
  ASSERT_TRUE(model->Step(*cache, {{2, Slice(b, 0, 2)}}).ok());
  // Entry 0 prefills 6, entry 1 decodes one: rows 0-5 are a, row 6 is b[2].
  auto logits =
      model->Step(*cache, {{1, a}, {2, {b[2]}}}, /*all_positions=*/true);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->size(0), 7);
  EXPECT_LT(MaxDiff(logits->narrow(0, 0, 6), Reference(*model, a)), 1e-4);
  EXPECT_LT(MaxDiff((*logits)[6], Reference(*model, b)[2]), 1e-4);
}

TEST(StepTest, RepacksAfterParametersAreReplaced) {
  formats::LlamaConfig c = TinyConfig();
  auto model = RandomModel(c);
  {
    // What Module::to() and torch::load do: give each parameter new storage.
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.set_data(p.clone() * 1.01);
  }
  std::vector<int64_t> tokens = RandomTokens(8, c.vocab_size, 4);
  auto cache = MakeCache(*model, 64, 16);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  auto logits = model->Step(*cache, {{1, tokens}}, true);
  ASSERT_TRUE(logits.ok());
  EXPECT_LT(MaxDiff(*logits, Reference(*model, tokens)), 1e-4);
}

TEST(StepTest, BFloat16PathIsConsistent) {
  // The reduced-precision path (used on CUDA) runs on CPU too: softmax and
  // norms in float32, weights in bfloat16.
  formats::LlamaConfig c = TinyConfig();
  auto model = RandomModel(c, 1, c10::kBFloat16);
  ASSERT_EQ(model->dtype(), c10::kBFloat16);
  std::vector<int64_t> tokens = RandomTokens(12, c.vocab_size, 5);
  at::Tensor ref = Reference(*model, tokens);
  auto cache = MakeCache(*model, 64, 4);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  ASSERT_TRUE(model->Step(*cache, {{1, Slice(tokens, 0, 10)}}).ok());
  auto a = model->Step(*cache, {{1, {tokens[10]}}});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->scalar_type(), c10::kFloat);
  EXPECT_LT(MaxDiff((*a)[0], ref[10]), 0.25);
  EXPECT_EQ((*a)[0].argmax().item<int64_t>(), ref[10].argmax().item<int64_t>());
}

TEST(StepTest, Errors) {
  formats::LlamaConfig c = TinyConfig();
  c.max_position_embeddings = 20;
  auto model = RandomModel(c);
  auto cache = MakeCache(*model, 48, 16);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  ASSERT_TRUE(cache->AddSequence(2).ok());
  auto code = [&](const std::vector<SequenceInput>& batch) {
    return model->Step(*cache, batch).status().code();
  };
  EXPECT_EQ(code({}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{9, {1}}}), absl::StatusCode::kNotFound);
  EXPECT_EQ(code({{1, {}}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{1, {97}}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{1, {-1}}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{1, {3}}, {1, {4}}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{1, std::vector<int64_t>(21, 3)}}),
            absl::StatusCode::kOutOfRange);
  // Out of cache capacity: nothing is appended and the cache is unchanged.
  ASSERT_TRUE(model->Step(*cache, {{1, std::vector<int64_t>(20, 3)}}).ok());
  absl::Status s =
      model->Step(*cache, {{2, std::vector<int64_t>(17, 3)}}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(cache->SequenceLength(2), 0);
  EXPECT_EQ(cache->free_blocks(), 1);
  // A cache of another geometry.
  KvCacheDims dims = model->CacheDims();
  dims.num_kv_heads = 4;
  auto other = KvCache::Create(dims, {32, 16});
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE((*other)->AddSequence(1).ok());
  EXPECT_EQ(model->Step(**other, {{1, {1}}}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// --- Swappable linears
// ---------------------------------------------------------

// A LinearImpl holding its own float copy of a projection (and counting calls).
class CopiedLinear : public LinearImpl {
 public:
  CopiedLinear(at::Tensor w, at::Tensor b)
      : w_(w.detach().clone()), b_(b.defined() ? b.detach().clone() : b) {}
  at::Tensor Forward(const at::Tensor& x) const override {
    ++calls;
    return b_.defined() ? at::linear(x, w_, b_) : at::linear(x, w_);
  }
  int64_t in_features() const override { return w_.size(1); }
  int64_t out_features() const override { return w_.size(0); }
  int64_t WeightBytes() const override { return 7; }
  std::string Describe() const override { return "copy"; }
  mutable int64_t calls = 0;

 private:
  at::Tensor w_, b_;
};

TEST(LinearImplTest, SwappedProjectionsGiveTheSameResults) {
  for (const auto& [name, config] : Variants()) {
    SCOPED_TRACE(name);
    auto model = RandomModel(config);
    std::vector<int64_t> tokens = RandomTokens(24, config.vocab_size, 5);
    at::Tensor ref = Reference(*model, tokens);
    const int64_t bytes_before = model->WeightBytes();
    const int64_t linear_before = model->LayerLinearBytes();
    auto params = model->named_parameters();
    // All of layer 0, and only q_proj and up_proj of layer 1 (their packed
    // groups are then split).
    std::vector<std::pair<int64_t, std::string>> swaps;
    for (const std::string& n : LayerLinearNames()) swaps.push_back({0, n});
    swaps.push_back({1, "self_attn.q_proj"});
    swaps.push_back({1, "mlp.up_proj"});
    std::vector<std::shared_ptr<CopiedLinear>> impls;
    int64_t freed = 0;
    for (const auto& [layer, n] : swaps) {
      const std::string p = "model.layers." + std::to_string(layer) + "." + n;
      at::Tensor w = params[p + ".weight"];
      at::Tensor* b = params.find(p + ".bias");
      freed += w.numel() * 4 + (b != nullptr ? b->numel() * 4 : 0);
      impls.push_back(std::make_shared<CopiedLinear>(w, b ? *b : at::Tensor()));
      ASSERT_TRUE(model->SetLinearImpl(layer, n, impls.back()).ok());
      EXPECT_EQ(model->named_parameters()[p + ".weight"].numel(), 0);
    }
    EXPECT_TRUE(model->has_linear_impls());
    EXPECT_EQ(model->linear_impl(1, "self_attn.q_proj"), impls[7].get());
    EXPECT_EQ(model->linear_impl(1, "self_attn.k_proj"), nullptr);
    // The float storage is really gone (packed buffers included).
    const int64_t n_impl = static_cast<int64_t>(impls.size());
    EXPECT_EQ(model->WeightBytes(), bytes_before - freed + 7 * n_impl);
    EXPECT_EQ(model->LayerLinearBytes(), linear_before - freed + 7 * n_impl);

    torch::NoGradGuard no_grad;
    EXPECT_LT(MaxDiff(model->Forward(Ids(tokens)).logits[0], ref), 1e-4);
    // Step: prefill, then a mixed batch of decode and prefill.
    auto cache = MakeCache(*model, 128, 4);
    ASSERT_TRUE(cache->AddSequence(1).ok());
    ASSERT_TRUE(cache->AddSequence(2).ok());
    auto a = model->Step(*cache, {{1, Slice(tokens, 0, 10)}});
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_LT(MaxDiff((*a)[0], ref[9]), 1e-4);
    auto b = model->Step(*cache, {{1, {tokens[10]}}, {2, Slice(tokens, 0, 5)}});
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_LT(MaxDiff((*b)[0], ref[10]), 1e-4);
    EXPECT_LT(MaxDiff((*b)[1], ref[4]), 1e-4);
    for (const auto& impl : impls) EXPECT_GE(impl->calls, 3);
    // Saving would silently drop the quantized weights.
    EXPECT_EQ(SaveModel(*model, ::testing::TempDir() + "/swapped").code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

TEST(LinearImplTest, RejectsBadSwaps) {
  auto model = RandomModel(TinyConfig());
  auto params = model->named_parameters();
  auto q = std::make_shared<CopiedLinear>(
      params["model.layers.0.self_attn.q_proj.weight"], at::Tensor());
  EXPECT_EQ(model->SetLinearImpl(2, "self_attn.q_proj", q).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->SetLinearImpl(0, "self_attn.x_proj", q).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->SetLinearImpl(0, "mlp.down_proj", q).code(),
            absl::StatusCode::kInvalidArgument);  // wrong shape
  EXPECT_EQ(model->SetLinearImpl(0, "self_attn.q_proj", nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(model->has_linear_impls());
  EXPECT_EQ(model->quantization(), "none");
}

}  // namespace
}  // namespace hearth::model
