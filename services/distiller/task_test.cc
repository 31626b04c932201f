#include "services/distiller/task.h"

#include <filesystem>
#include <fstream>
#include <random>

#include "common/formats/safetensors.h"
#include "common/model/model_loader.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/distiller/bpe_trainer.h"
#include "services/distiller/pipeline.h"

namespace hearth::distiller {
namespace {

formats::LlamaConfig TinyConfig(int64_t hidden, int64_t layers) {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 24;
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = hidden / 2;
  c.intermediate_size = 2 * hidden;
  c.max_position_embeddings = 32;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.tie_word_embeddings = true;
  c.bos_token_id = 1;
  c.eos_token_id = 0;
  c.eos_token_ids = {0};
  return c;
}

// Label = which half of the "word" ids ([2, 12) or [12, 22)) is in the
// majority among 8 random tokens; BOS first, variable lengths.
std::vector<EncodedExample> SyntheticTask(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<EncodedExample> out;
  for (int i = 0; i < n; ++i) {
    EncodedExample e;
    e.label = i % 2;
    e.ids.push_back(1);
    const int len = 4 + static_cast<int>(rng() % 5);
    for (int t = 0; t < len; ++t) {
      const bool own = rng() % 4 != 0;  // 3 of 4 tokens from the own half.
      const int64_t half = own ? e.label : 1 - e.label;
      e.ids.push_back(2 + 10 * half + static_cast<int64_t>(rng() % 10));
    }
    out.push_back(std::move(e));
  }
  return out;
}

TrainerOptions Options(int steps) {
  TrainerOptions o;
  o.seq_len = 16;
  o.batch_size = 16;
  o.total_steps = steps;
  o.warmup_steps = 5;
  o.learning_rate = 5e-3;
  o.seed = 3;
  o.loss.temperature = 2.0;
  o.loss.alpha = 1.0;  // KD only: the labels reach the student via the teacher.
  return o;
}

TEST(TaskTest, KdOnClassLogitsTrainsTheStudent) {
  const auto train = SyntheticTask(256, 1);
  const auto test = SyntheticTask(128, 2);
  auto teacher_lm = model::MakeRandomModel(TinyConfig(32, 2), 11);
  ASSERT_TRUE(teacher_lm.ok());
  auto teacher = SequenceClassifier::Create(*teacher_lm, 2, 1);
  ASSERT_TRUE(teacher.ok());
  TrainerOptions to = Options(120);
  auto tr = TrainClassifier(to, **teacher, nullptr, train, 0, nullptr, nullptr);
  ASSERT_TRUE(tr.ok()) << tr.status();
  auto teval = EvaluateClassifier(**teacher, test, 0);
  ASSERT_TRUE(teval.ok());
  EXPECT_GT(teval->accuracy, 0.8);

  auto student_lm = model::MakeRandomModel(TinyConfig(16, 1), 12);
  ASSERT_TRUE(student_lm.ok());
  auto student = SequenceClassifier::Create(*student_lm, 2, 2);
  ASSERT_TRUE(student.ok());
  auto before = EvaluateClassifier(**student, test, 0);
  ASSERT_TRUE(before.ok());
  std::vector<double> kd;
  auto sr = TrainClassifier(
      Options(60), **student, teacher->get(), train, 0,
      [&](const TrainerProgress& p) { kd.push_back(p.kd); }, nullptr);
  ASSERT_TRUE(sr.ok()) << sr.status();
  ASSERT_EQ(kd.size(), 60u);
  EXPECT_GT(kd.front(), 0);
  EXPECT_LT(sr->final_loss, 0.5 * sr->first_loss)
      << sr->first_loss << " -> " << sr->final_loss;
  auto after = EvaluateClassifier(**student, test, 0);
  ASSERT_TRUE(after.ok());
  // Chance is 0.5; the student only ever saw the teacher's logits.
  EXPECT_GT(after->accuracy, 0.75) << "before " << before->accuracy;
  EXPECT_GT(after->accuracy, before->accuracy + 0.2);
}

TEST(TaskTest, ResumesFromItsCheckpoint) {
  const auto train = SyntheticTask(64, 1);
  const std::string dir = ::testing::TempDir() + "/task_resume";
  std::filesystem::remove_all(dir);
  auto run = [&](int cancel_after, std::vector<double>* losses) {
    auto lm = model::MakeRandomModel(TinyConfig(16, 1), 5);
    auto c = SequenceClassifier::Create(*lm, 2, 1);
    TrainerOptions o = Options(12);
    o.loss.alpha = 0;
    o.checkpoint_dir = dir;
    int steps = 0;
    auto r = TrainClassifier(
        o, **c, nullptr, train, 0,
        [&](const TrainerProgress& p) {
          ++steps;
          losses->push_back(p.loss);
        },
        [&] { return cancel_after >= 0 && steps >= cancel_after; });
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  };
  std::vector<double> reference, resumed;
  std::filesystem::remove_all(dir);
  run(-1, &reference);
  std::filesystem::remove_all(dir);
  EXPECT_TRUE(run(5, &resumed).cancelled);
  EXPECT_TRUE(std::filesystem::exists(dir + "/ckpt/state.json"));
  ClassifierTrainResult rest = run(-1, &resumed);
  EXPECT_TRUE(rest.resumed);
  ASSERT_EQ(resumed.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i)
    EXPECT_DOUBLE_EQ(resumed[i], reference[i]) << "step " << i;
}

TEST(TaskTest, ReadLabelledTsvNamesTheField) {
  const std::string dir = ::testing::TempDir() + "/task_tsv";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/bad.tsv") << "a\tone\nno tab here\n";
  auto bad = ReadLabelledTsv(dir + "/bad.tsv", 0.25, "data.text_file");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("data.text_file: line 2"),
            std::string::npos)
      << bad.status();
  std::ofstream(dir + "/one.tsv") << "a\tone\na\ttwo\n";
  EXPECT_EQ(
      ReadLabelledTsv(dir + "/one.tsv", 0.25, "data.corpus").status().code(),
      absl::StatusCode::kInvalidArgument);
  std::ofstream good(dir + "/good.tsv");
  for (int i = 0; i < 8; ++i) good << "b\tbee " << i << "\na\tay " << i << "\n";
  good.close();
  auto data = ReadLabelledTsv(dir + "/good.tsv", 0.25, "data.text_file");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->label_names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(data->train.size(), 12u);  // Every 4th of each label held out.
  EXPECT_EQ(data->test.size(), 4u);
  EXPECT_EQ(data->test[0].text, "bee 3");
}

// The whole TASK job: a TRAINed teacher LM, then the classifier stages, the
// HF LlamaForSequenceClassification folder and the report's fields.
TEST(TaskTest, PipelineReportsAccuracyOfAllThree) {
  const std::string root = ::testing::TempDir() + "/task_pipeline";
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root + "/models");
  std::vector<std::string> docs;
  {
    std::ofstream corpus(root + "/corpus.txt");
    std::ofstream tsv(root + "/task.tsv");
    const char* fruit[] = {"apple", "pear", "plum", "fig"};
    const char* tools[] = {"hammer", "saw", "drill", "wrench"};
    for (int i = 0; i < 80; ++i) {
      std::string f = std::string("the ") + fruit[i % 4] + " and the " +
                      fruit[(i / 4) % 4] + " are ripe";
      std::string t = std::string("the ") + tools[i % 4] + " and the " +
                      tools[(i / 4) % 4] + " are sharp";
      tsv << "fruit\t" << f << "\ntools\t" << t << "\n";
      corpus << f << ". " << t << ".\n";
      docs.push_back(f + ". " + t + ".");
    }
  }
  std::vector<std::string_view> views(docs.begin(), docs.end());
  BpeTrainerOptions bpe;
  bpe.vocab_size = 300;
  auto vocab = TrainBpe(views, bpe);
  ASSERT_TRUE(vocab.ok());
  ASSERT_TRUE(WriteTokenizer(*vocab, bpe, root + "/models/tok").ok());
  PipelineEnv env{root + "/models", root + "/work/teacher"};
  auto tspec = ParseJobSpec(
      R"({"method": "DISTILLATION_METHOD_TRAIN", "output_name": "teacher",
          "student": {"hidden_size": 32, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "intermediate_size": 64},
          "data": {"text_file": ")" +
      root + R"(/corpus.txt", "tokenizer": "tok", "sequence_length": 16},
          "optimizer": {"learning_rate": 0.005, "total_steps": 10, "batch_size": 4},
          "eval_sequences": 2, "seed": 1})");
  ASSERT_TRUE(tspec.ok()) << tspec.status();
  ASSERT_TRUE(RunPipeline(*tspec, env, nullptr, nullptr).ok());

  auto spec = ParseJobSpec(
      R"({"method": "DISTILLATION_METHOD_TASK", "teacher_model": "teacher",
          "output_name": "clf", "task": {"name": "fruit-or-tool", "num_labels": 2},
          "student": {"hidden_size": 16, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "num_key_value_heads": 1,
                      "intermediate_size": 32},
          "data": {"text_file": ")" +
      root + R"(/task.tsv", "sequence_length": 16, "heldout_fraction": 0.25},
          "optimizer": {"learning_rate": 0.005, "total_steps": 30, "batch_size": 8},
          "temperature": 2.0, "alpha": 0.7, "seed": 1})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->scratch_baseline);
  env.checkpoint_dir = root + "/work/clf";
  auto r = RunPipeline(*spec, env, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  const nlohmann::json& rep = r->report;
  EXPECT_EQ(rep["method"], "DISTILLATION_METHOD_TASK");
  EXPECT_EQ(rep["task"]["num_labels"], 2);
  EXPECT_EQ(rep["task"]["test_examples"], 40);
  for (const char* who : {"teacher", "student", "scratch_student"}) {
    ASSERT_TRUE(rep.contains(who)) << who;
    EXPECT_GE(rep[who]["accuracy"].get<double>(), 0.0) << who;
    EXPECT_LE(rep[who]["accuracy"].get<double>(), 1.0) << who;
    EXPECT_GT(rep[who]["parameters"].get<int64_t>(), 0) << who;
  }
  EXPECT_GT(rep["teacher"]["accuracy"].get<double>(), 0.75);
  EXPECT_LT(rep["student"]["parameters"].get<int64_t>(),
            rep["teacher"]["parameters"].get<int64_t>());
  EXPECT_TRUE(rep.contains("kd_beats_scratch"));
  std::ifstream on_disk(root + "/models/clf/distill_report.json");
  EXPECT_EQ(nlohmann::json::parse(on_disk)["student"]["accuracy"],
            rep["student"]["accuracy"]);

  // HF layout: LlamaForSequenceClassification with score.weight, no lm_head.
  std::ifstream cfg_in(root + "/models/clf/config.json");
  nlohmann::json cfg = nlohmann::json::parse(cfg_in);
  EXPECT_EQ(cfg["architectures"][0], "LlamaForSequenceClassification");
  EXPECT_EQ(cfg["num_labels"], 2);
  EXPECT_EQ(cfg["id2label"]["1"], "tools");
  EXPECT_TRUE(cfg.contains("pad_token_id"));
  auto ckpt = formats::CheckpointReader::Open(root + "/models/clf");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const formats::TensorView* score = (*ckpt)->Find("score.weight");
  ASSERT_NE(score, nullptr);
  EXPECT_EQ(score->shape, (std::vector<int64_t>{2, 16}));
  EXPECT_EQ((*ckpt)->Find("lm_head.weight"), nullptr);
  EXPECT_NE((*ckpt)->Find("model.embed_tokens.weight"), nullptr);
  EXPECT_TRUE(std::filesystem::exists(root + "/models/clf/tokenizer.json"));

  // A second run finds every stage done and writes the same accuracies.
  auto again = RunPipeline(*spec, env, nullptr, nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->report["student"]["accuracy"], rep["student"]["accuracy"]);
}

}  // namespace
}  // namespace hearth::distiller
