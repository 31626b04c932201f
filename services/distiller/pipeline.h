// Pipeline: one distillation job from spec to model folder.
//
// A job spec is the JSON form of hearth.v1.DistillationSpec (proto field names,
// enums as names, as protobuf's JsonPrintOptions::preserve_proto_field_names
// writes it), so the service stores exactly what the client sent and the local
// CLI can run the same file. RunPipeline turns it into stages, each a Trainer
// run with its own checkpoint folder under `checkpoint_dir`:
//
//   TRAIN        model                    (no teacher; how teachers are made)
//   SOFT_TARGET  student [+ scratch]      (KD; scratch = same shape and init,
//                                          no teacher)
//   FEATURE      student [+ scratch]      (KD + hidden-state / attention loss)
//   SELF         student [+ scratch]      (student shape = teacher shape)
//   PROGRESSIVE  assistant0 .. student    (each stage's teacher is the
//                                          previous)
//   TASK         teacher, student, scratch (sequence classification on a
//                                          labelled file, task.h: the teacher
//                                          LM fine-tuned with a head, a KD
//                                          student on its class logits, and a
//                                          labels-only student; the output is
//                                          a LlamaForSequenceClassification
//                                          folder, the report has accuracies)
//
// A finished stage leaves its model in <stage>/final with a DONE marker, so a
// resumed job skips it and continues the first unfinished stage from its
// checkpoint. The output folder gets config.json, model.safetensors, the
// tokenizer files, generation_config.json and distill_report.json.
#ifndef HEARTH_SERVICES_DISTILLER_PIPELINE_H_
#define HEARTH_SERVICES_DISTILLER_PIPELINE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/hf_config.h"
#include "nlohmann/json.hpp"
#include "services/distiller/losses.h"
#include "services/distiller/student.h"
#include "services/distiller/trainer.h"

namespace hearth::distiller {

enum class Method { kTrain, kSoftTarget, kFeature, kSelf, kProgressive, kTask };

struct JobSpec {
  Method method = Method::kSoftTarget;
  std::string teacher_model;
  std::string output_name;
  StudentShape student;
  std::vector<StudentShape> assistants;
  // data
  std::string corpus;     // A named corpus in the repository's corpora/ folder.
  std::string text_file;  // Or a path.
  std::string
      tokenizer;  // TRAIN: model folder or tokenizer.json (default: teacher's).
  int64_t sequence_length = 256;
  double heldout_fraction = 0.05;
  TrainerOptions
      trainer;  // Optimizer, schedule, loss weights, seed, eval, checkpoints.
  bool scratch_baseline = false;
  int64_t max_position_embeddings = 0;  // TRAIN: 0 = sequence_length.
  std::string output_dtype = "float32";
  std::string sample_prompt = "And God said";
  // Sampling defaults written to the output's generation_config.json (what a
  // worker serving the model uses when a request leaves them unset); the
  // report's samples are generated with them. Spec JSON "generation":
  // {do_sample, temperature, top_p, top_k, repetition_penalty}.
  formats::GenerationConfig generation;
  int threads = 0;  // 0 = leave libtorch's setting alone.
  // TASK: data is a "label<TAB>text" file (data.text_file or data.corpus);
  // sequence_length caps the tokens per example; heldout_fraction is the test
  // split. num_labels 0 = from the data.
  std::string task_name;
  int64_t num_labels = 0;
  int64_t task_teacher_steps = 0;         // 0 = trainer.total_steps.
  double task_teacher_learning_rate = 0;  // 0 = trainer.learning_rate.
};

// Parses and validates spec JSON; INVALID_ARGUMENT naming the field.
absl::StatusOr<JobSpec> ParseJobSpec(const std::string& json_text);

struct PipelineEnv {
  std::string model_repository;
  std::string checkpoint_dir;
};

struct PipelineProgress {
  std::string stage;
  int stage_index = 0;
  int num_stages = 0;
  TrainerProgress trainer;
  double fraction = 0;  // Of the whole job.
};

struct PipelineResult {
  std::string output_dir;
  std::string report_path;
  nlohmann::json report;
  bool cancelled = false;
};

// Checks what needs the repository (teacher exists, tokenizer, corpus, vocab):
// INVALID_ARGUMENT naming the field (a missing teacher is "teacher_model").
absl::Status CheckJobInputs(const JobSpec& spec, const PipelineEnv& env);

absl::StatusOr<PipelineResult> RunPipeline(
    const JobSpec& spec, const PipelineEnv& env,
    const std::function<void(const PipelineProgress&)>& on_progress,
    const CancelPredicate& cancelled);

}  // namespace hearth::distiller

#endif  // HEARTH_SERVICES_DISTILLER_PIPELINE_H_
