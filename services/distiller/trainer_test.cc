#include "services/distiller/trainer.h"

#include <torch/torch.h>

#include <filesystem>

#include "common/model/model_loader.h"
#include "gtest/gtest.h"

namespace hearth::distiller {
namespace {

formats::LlamaConfig TinyConfig(int64_t hidden, int64_t layers) {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 32;
  c.hidden_size = hidden;
  c.intermediate_size = 2 * hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = hidden / 2;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = true;
  return c;
}

TokenizedCorpus SyntheticCorpus() {
  // A learnable pattern: counting mod 32 with a stride that depends on the
  // block.
  TokenizedCorpus corpus;
  for (int i = 0; i < 2000; ++i)
    corpus.train.push_back((i * (1 + (i / 97) % 3)) % 32);
  for (int i = 0; i < 300; ++i) corpus.heldout.push_back((i * 2) % 32);
  return corpus;
}

TrainerOptions SmallOptions(const std::string& dir) {
  TrainerOptions o;
  o.seq_len = 16;
  o.batch_size = 4;
  o.gradient_accumulation = 2;
  o.total_steps = 6;
  o.warmup_steps = 2;
  o.learning_rate = 1e-2;
  o.eval_sequences = 4;
  o.checkpoint_dir = dir;
  o.seed = 3;
  return o;
}

std::shared_ptr<model::LlamaForCausalLM> Model(int64_t hidden, int64_t layers,
                                               uint64_t seed) {
  auto m = model::MakeRandomModel(TinyConfig(hidden, layers), seed);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

void ExpectSameParameters(model::LlamaForCausalLM& a,
                          model::LlamaForCausalLM& b) {
  auto pa = a.named_parameters();
  auto pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& p : pa) {
    EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  }
}

class TrainerTest : public ::testing::TestWithParam<bool> {};

TEST_P(TrainerTest, ResumeIsBitIdenticalToUninterruptedRun) {
  const bool distill = GetParam();
  at::set_num_threads(1);
  TokenizedCorpus corpus = SyntheticCorpus();
  auto teacher = distill ? Model(32, 2, 7) : nullptr;
  TrainerOptions o = SmallOptions("");
  if (distill) {
    o.loss.feature_weight =
        0.5;  // Exercise projections and their checkpointing.
    o.loss.attention_loss = true;
  }

  auto straight = Model(16, 1, 11);
  auto t1 = Trainer::Create(o, straight, teacher, &corpus);
  ASSERT_TRUE(t1.ok()) << t1.status();
  auto r1 = (*t1)->Run(nullptr, nullptr);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->steps, 6);

  const std::string dir =
      ::testing::TempDir() + "/resume_" + (distill ? "kd" : "lm");
  std::filesystem::remove_all(dir);
  o.checkpoint_dir = dir;
  auto first = Model(16, 1, 11);
  auto t2 = Trainer::Create(o, first, teacher, &corpus);
  ASSERT_TRUE(t2.ok());
  int steps_seen = 0;
  auto r2 = (*t2)->Run([&](const TrainerProgress& p) { steps_seen = p.step; },
                       [&] { return steps_seen >= 3; });
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_TRUE(r2->cancelled);
  EXPECT_EQ(r2->steps, 3);

  // A new process would start from fresh weights; the checkpoint overrides
  // them.
  auto second = Model(16, 1, 999);
  auto t3 = Trainer::Create(o, second, teacher, &corpus);
  ASSERT_TRUE(t3.ok());
  auto r3 = (*t3)->Run(nullptr, nullptr);
  ASSERT_TRUE(r3.ok()) << r3.status();
  EXPECT_TRUE(r3->resumed);
  EXPECT_EQ(r3->steps, 6);
  EXPECT_EQ(r3->final_loss, r1->final_loss);
  ExpectSameParameters(*straight, *second);
  EXPECT_EQ(r3->heldout_perplexity, r1->heldout_perplexity);
}

INSTANTIATE_TEST_SUITE_P(LmAndKd, TrainerTest, ::testing::Values(false, true));

TEST(TrainerBasicsTest, TrainingLowersHeldoutPerplexityAndTeacherIsUntouched) {
  at::set_num_threads(1);
  TokenizedCorpus corpus = SyntheticCorpus();
  auto teacher = Model(32, 2, 7);
  auto before = Model(32, 2, 7);
  auto student = Model(16, 1, 5);
  auto ppl0 = HeldoutPerplexity(*student, corpus.heldout, 16, 4);
  ASSERT_TRUE(ppl0.ok());
  TrainerOptions o = SmallOptions("");
  o.total_steps = 30;
  auto t = Trainer::Create(o, student, teacher, &corpus);
  ASSERT_TRUE(t.ok());
  auto r = t.value()->Run(nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->heldout_perplexity, *ppl0);
  ExpectSameParameters(*teacher, *before);
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(TrainerBasicsTest, RejectsBadOptionsNamingTheField) {
  TokenizedCorpus corpus = SyntheticCorpus();
  auto student = Model(16, 1, 5);
  TrainerOptions o = SmallOptions("");
  o.learning_rate = -1;
  auto t = Trainer::Create(o, student, nullptr, &corpus);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("learning_rate"), std::string::npos);
  o = SmallOptions("");
  o.loss.temperature = 0;
  t = Trainer::Create(o, student, nullptr, &corpus);
  EXPECT_NE(t.status().message().find("temperature"), std::string::npos);
  // Incompatible vocabularies.
  formats::LlamaConfig c = TinyConfig(16, 1);
  c.vocab_size = 48;
  auto other = model::MakeRandomModel(c, 1);
  ASSERT_TRUE(other.ok());
  t = Trainer::Create(SmallOptions(""), student, *other, &corpus);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("teacher_model"), std::string::npos);
}

}  // namespace
}  // namespace hearth::distiller
