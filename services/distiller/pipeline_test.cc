#include "services/distiller/pipeline.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "services/distiller/bpe_trainer.h"

namespace hearth::distiller {
namespace {

std::string Spec(const std::string& extra) {
  return R"({"method": "DISTILLATION_METHOD_SOFT_TARGET", "teacher_model": "t",
             "output_name": "s", "data": {"text_file": "corpus.txt"})" +
         extra + "}";
}

void ExpectInvalid(const std::string& json, const std::string& field) {
  auto spec = ParseJobSpec(json);
  ASSERT_FALSE(spec.ok()) << json;
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find(field), std::string::npos)
      << spec.status().message() << " does not name " << field;
}

TEST(PipelineTest, DefaultsForProto3Zeros) {
  auto spec = ParseJobSpec(Spec(""));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->trainer.loss.temperature, 2.0);
  EXPECT_EQ(spec->trainer.loss.alpha, 0.5);
  EXPECT_EQ(spec->sequence_length, 256);
  EXPECT_EQ(spec->heldout_fraction, 0.05);
  // Proto JSON writes uint64 as a string.
  spec = ParseJobSpec(Spec(R"(, "seed": "12345678901", "alpha": 0.25)"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->trainer.seed, 12345678901u);
  EXPECT_EQ(spec->trainer.loss.alpha, 0.25);
  // An explicit alpha 0 (labels only) is kept, not replaced by the default.
  spec = ParseJobSpec(Spec(R"(, "alpha": 0)"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->trainer.loss.alpha, 0.0);
  spec = ParseJobSpec(Spec(R"(, "generation": {"repetition_penalty": 1.3,
                                 "do_sample": true, "temperature": 0.7})"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->generation.repetition_penalty, 1.3);
  EXPECT_TRUE(spec->generation.do_sample);
  EXPECT_EQ(spec->generation.temperature, 0.7);
}

TEST(PipelineTest, BadSpecsNameTheField) {
  ExpectInvalid(Spec(R"(, "optimizer": {"learning_rate": -0.1})"),
                "optimizer.learning_rate");
  ExpectInvalid(Spec(R"(, "temperature": -1)"), "temperature");
  ExpectInvalid(Spec(R"(, "alpha": 1.5)"), "alpha");
  ExpectInvalid(Spec(R"(, "alpha": -0.1)"), "alpha");
  // Explicit zeros (proto3 `optional` fields keep them) are errors, not the
  // defaults an omitted field gets.
  ExpectInvalid(Spec(R"(, "temperature": 0)"), "temperature");
  ExpectInvalid(Spec(R"(, "optimizer": {"total_steps": 0})"),
                "optimizer.total_steps");
  ExpectInvalid(Spec(R"(, "generation": {"repetition_penalty": 0})"),
                "generation.repetition_penalty");
  ExpectInvalid(Spec(R"(, "generation": {"top_p": 1.5})"), "generation.top_p");
  ExpectInvalid(Spec(R"(, "method": "DISTILLATION_METHOD_TASK",
                        "task": {"num_labels": 1})"),
                "task.num_labels");
  ExpectInvalid(
      Spec(R"(, "data": {"text_file": "c", "heldout_fraction": 0.9})"),
      "data.heldout_fraction");
  ExpectInvalid(Spec(R"(, "student": {"hidden_size": "x"})"),
                "student.hidden_size");
  ExpectInvalid(
      R"({"method": "DISTILLATION_METHOD_SOFT_TARGET", "output_name": "s",
                    "data": {"text_file": "c"}})",
      "teacher_model");
  ExpectInvalid(R"({"method": "DISTILLATION_METHOD_TRAIN", "output_name": "s",
                    "data": {"text_file": "c", "tokenizer": "tok"}})",
                "student.hidden_size");
  ExpectInvalid(R"({"method": "NOPE"})", "method");
  ExpectInvalid(Spec(R"(, "output_name": "../x")"), "output_name");
  ExpectInvalid(
      R"({"method": "DISTILLATION_METHOD_PROGRESSIVE", "teacher_model": "t",
                    "output_name": "s", "data": {"text_file": "c"}})",
      "assistants");
}

TEST(PipelineTest, InputsAreChecked) {
  const std::string root = ::testing::TempDir() + "/pipeline_inputs";
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root + "/models/t");
  std::ofstream(root + "/models/t/config.json") << "{}";
  std::ofstream(root + "/models/t/tokenizer.json") << "{}";
  std::ofstream(root + "/empty.txt").close();
  PipelineEnv env{root + "/models", root + "/work"};

  auto spec = ParseJobSpec(
      R"({"method": 2, "teacher_model": "missing", "output_name": "s",
                               "data": {"text_file": ")" +
      root + R"(/empty.txt"}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::Status missing = CheckJobInputs(*spec, env);
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("teacher_model"), std::string::npos)
      << missing;

  spec->teacher_model = "t";
  absl::Status s = CheckJobInputs(*spec, env);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("empty corpus"), std::string::npos) << s;
}

}  // namespace
}  // namespace hearth::distiller

namespace hearth::distiller {
namespace {

// Every method end to end on a tiny corpus: TRAIN a teacher, then FEATURE (with
// layer-subset init and attention loss), SELF and PROGRESSIVE from it.
class PipelineMethodsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(::testing::TempDir() + "/pipeline_methods");
    std::filesystem::remove_all(*root_);
    std::filesystem::create_directories(*root_ + "/models");
    std::ofstream out(*root_ + "/corpus.txt");
    for (int line = 0; line < 60; ++line) {
      for (int i = 0; i < 8; ++i) {
        out << "And the " << (line + i) % 5 << " spake unto "
            << (i % 3 ? "Moses" : "Aaron") << ", saying. ";
      }
      out << "\n";
    }
    out.close();
    std::vector<std::string> docs;
    std::ifstream in(*root_ + "/corpus.txt");
    for (std::string l; std::getline(in, l);) docs.push_back(l);
    std::vector<std::string_view> views(docs.begin(), docs.end());
    BpeTrainerOptions options;
    options.vocab_size = 300;
    auto vocab = TrainBpe(views, options);
    ASSERT_TRUE(vocab.ok());
    ASSERT_TRUE(WriteTokenizer(*vocab, options, *root_ + "/models/tok").ok());
  }

  absl::StatusOr<PipelineResult> Run(const std::string& json,
                                     const std::string& name) {
    auto spec = ParseJobSpec(json);
    if (!spec.ok()) return spec.status();
    return RunPipeline(*spec, {*root_ + "/models", *root_ + "/work/" + name},
                       nullptr, nullptr);
  }

  std::string Common(int steps) {
    return R"("data": {"text_file": ")" + *root_ +
           R"(/corpus.txt", "sequence_length": 16},
              "optimizer": {"learning_rate": 0.005, "total_steps": )" +
           std::to_string(steps) +
           R"(, "batch_size": 4}, "eval_sequences": 4, "seed": 1)";
  }

  // TRAIN needs data.tokenizer.
  static std::string WithTokenizer(std::string common) {
    return common.replace(0, std::string(R"("data": {)").size(),
                          R"("data": {"tokenizer": "tok", )");
  }

  static std::string* root_;
};
std::string* PipelineMethodsTest::root_ = nullptr;

TEST_F(PipelineMethodsTest, AllMethods) {
  auto teacher =
      Run(R"({"method": "DISTILLATION_METHOD_TRAIN", "output_name": "teacher",
      "student": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 64}, )" +
              WithTokenizer(Common(20)) + "}",
          "teacher");
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  EXPECT_TRUE(teacher->report.contains("model"));

  // Incompatible vocabularies: another size, or the same size with other
  // tokens (a tokenizer trained on other text).
  {
    std::vector<std::string> other = {
        "Zebras quickly jumped over fuzzy wizards while jovial quartz vexed "
        "them; zebras, wizards and quartz again and again."};
    std::vector<std::string_view> views(other.begin(), other.end());
    for (int size : {280, 300}) {
      BpeTrainerOptions options;
      options.vocab_size = size;
      auto vocab = TrainBpe(views, options);
      ASSERT_TRUE(vocab.ok()) << vocab.status();
      const std::string name = "other" + std::to_string(size);
      ASSERT_TRUE(
          WriteTokenizer(*vocab, options, *root_ + "/models/" + name).ok());
      auto spec = ParseJobSpec(
          R"({"method": "DISTILLATION_METHOD_SOFT_TARGET", "teacher_model": "teacher",
              "output_name": "x", "data": {"text_file": ")" +
          *root_ + R"(/corpus.txt", "tokenizer": ")" + name + R"("}})");
      ASSERT_TRUE(spec.ok()) << spec.status();
      absl::Status s = CheckJobInputs(*spec, {*root_ + "/models", ""});
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << size;
      EXPECT_NE(s.message().find("data.tokenizer: incompatible vocabularies"),
                std::string::npos)
          << s;
    }
  }

  auto feature = Run(
      R"({"method": "DISTILLATION_METHOD_FEATURE", "teacher_model": "teacher",
      "output_name": "feature", "student": {"num_hidden_layers": 2,
      "init_from_teacher_layers": [0, 3]}, "attention_loss": true, "scratch_baseline": true, )" +
          Common(10) + "}",
      "feature");
  ASSERT_TRUE(feature.ok()) << feature.status();
  EXPECT_GT(feature->report["student"]["heldout_perplexity"].get<double>(), 0);
  EXPECT_TRUE(feature->report.contains("scratch_student"));
  EXPECT_TRUE(feature->report.contains("teacher"));

  auto self =
      Run(R"({"method": "DISTILLATION_METHOD_SELF", "teacher_model": "teacher",
      "output_name": "self", )" +
              Common(10) + "}",
          "self");
  ASSERT_TRUE(self.ok()) << self.status();
  EXPECT_EQ(self->report["student"]["parameters"],
            self->report["teacher"]["parameters"]);

  auto progressive = Run(
      R"({"method": "DISTILLATION_METHOD_PROGRESSIVE", "teacher_model": "teacher",
      "output_name": "progressive", "assistants": [{"num_hidden_layers": 2}],
      "student": {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "intermediate_size": 32}, )" +
          Common(10) + "}",
      "progressive");
  ASSERT_TRUE(progressive.ok()) << progressive.status();
  EXPECT_EQ(progressive->report["assistants"].size(), 1u);
  EXPECT_TRUE(std::filesystem::exists(*root_ +
                                      "/models/progressive/model.safetensors"));
  EXPECT_TRUE(
      std::filesystem::exists(*root_ + "/models/progressive/tokenizer.json"));
  EXPECT_TRUE(std::filesystem::exists(
      *root_ + "/models/progressive/distill_report.json"));
}

}  // namespace
}  // namespace hearth::distiller
