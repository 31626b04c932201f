// Task-specific distillation: sequence classification on a Llama trunk.
//
// A SequenceClassifier is a LlamaForCausalLM trunk plus a bias-free linear
// head `score` [num_labels, hidden] on the final-normed hidden state of the
// last non-pad token, as transformers' LlamaForSequenceClassification pools it
// (inputs are BOS + text, right-padded, so that token is at length - 1).
// SaveClassifierHf writes that class's layout: config.json with
// architectures ["LlamaForSequenceClassification"], num_labels, id2label,
// label2id and pad_token_id; model.safetensors with the trunk's model.* tensors
// and score.weight (no lm_head).
//
// TrainClassifier fine-tunes one classifier (all of it: trunk and head) with
// AdamW, warmup + cosine, clipping and accumulation from TrainerOptions. With a
// teacher classifier (frozen) the loss is
//   alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, y)
// on the class logits (TrainerOptions::loss); without one it is CE. A run
// checkpoints every checkpoint_every_steps (and when cancelled) and resumes
// from checkpoint_dir exactly as Trainer does (weights, optimizer moments,
// step; the example order is a function of seed and position).
//
// Data: ReadLabelledTsv reads "label<TAB>text" lines; every k-th example of
// each label (k = round(1 / test_fraction)) is held out, so the split is
// stratified and deterministic. scripts/make-task-data builds such a file from
// the fortune categories of Debian's `fortunes` package.
#ifndef HEARTH_SERVICES_DISTILLER_TASK_H_
#define HEARTH_SERVICES_DISTILLER_TASK_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/llama_model.h"
#include "common/tokenizer/tokenizer.h"
#include "services/distiller/trainer.h"

namespace hearth::distiller {

struct LabelledText {
  std::string text;
  int64_t label = 0;
};

struct TaskData {
  std::vector<std::string> label_names;  // Sorted; index = label id.
  std::vector<LabelledText> train;
  std::vector<LabelledText> test;
};

// INVALID_ARGUMENT naming `field` (and the line) for a malformed line, fewer
// than two labels, or a label without both a training and a test example.
absl::StatusOr<TaskData> ReadLabelledTsv(const std::string& path,
                                         double test_fraction,
                                         const std::string& field);

struct EncodedExample {
  std::vector<int64_t> ids;  // BOS + text, truncated to max_length.
  int64_t label = 0;
};

absl::StatusOr<std::vector<EncodedExample>> EncodeExamples(
    const std::vector<LabelledText>& examples,
    const tokenizer::Tokenizer& tokenizer, int64_t max_length);

class SequenceClassifier {
 public:
  // `trunk` plus a head drawn from N(0, 0.02) with `seed`.
  static absl::StatusOr<std::unique_ptr<SequenceClassifier>> Create(
      std::shared_ptr<model::LlamaForCausalLM> trunk, int64_t num_labels,
      uint64_t seed);

  // [B, num_labels] logits. ids [B, T] int64 right-padded, lengths [B] >= 1.
  // Throws c10::Error on bad shapes.
  at::Tensor Logits(const at::Tensor& ids, const at::Tensor& lengths);

  model::LlamaForCausalLM& trunk() { return *trunk_; }
  std::shared_ptr<model::LlamaForCausalLM> shared_trunk() { return trunk_; }
  at::Tensor& score() { return score_; }
  int64_t num_labels() const;
  // Trunk (tied embeddings once, lm_head excluded) plus head.
  int64_t NumParameters();
  std::vector<at::Tensor> Parameters();

 private:
  SequenceClassifier() = default;
  std::shared_ptr<model::LlamaForCausalLM> trunk_;
  at::Tensor score_;
};

// LlamaForSequenceClassification folder (see the file comment).
absl::Status SaveClassifierHf(SequenceClassifier& classifier,
                              const std::vector<std::string>& label_names,
                              int64_t pad_token_id, const std::string& folder);

// The internal form a finished stage keeps (a causal-LM folder LoadModel reads
// plus score.pt), and its reader.
absl::Status SaveClassifierStage(SequenceClassifier& classifier,
                                 const std::string& folder);
absl::StatusOr<std::unique_ptr<SequenceClassifier>> LoadClassifierStage(
    const std::string& folder);

struct ClassifierEval {
  double accuracy = 0;
  double loss = 0;  // Mean CE.
};

absl::StatusOr<ClassifierEval> EvaluateClassifier(
    SequenceClassifier& classifier, const std::vector<EncodedExample>& examples,
    int64_t pad_token_id, int64_t batch_size = 16);

struct ClassifierTrainResult {
  int64_t steps = 0;
  double first_loss = 0;  // Mean loss of the first 10% of this run's steps.
  double final_loss = 0;  // Mean loss of its last 10%.
  double wall_seconds = 0;
  bool cancelled = false;
  bool resumed = false;
};

// options.seq_len is the max example length (used only for validation here;
// examples come encoded). Progress reports loss/ce/kd per step.
absl::StatusOr<ClassifierTrainResult> TrainClassifier(
    const TrainerOptions& options, SequenceClassifier& student,
    SequenceClassifier* teacher, const std::vector<EncodedExample>& train,
    int64_t pad_token_id, const ProgressCallback& on_progress,
    const CancelPredicate& cancelled);

}  // namespace hearth::distiller

#endif  // HEARTH_SERVICES_DISTILLER_TASK_H_
