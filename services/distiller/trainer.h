// Trainer: causal-LM training and logit/feature distillation of one model.
//
// One Trainer runs one stage: a student (and, for distillation, a frozen
// teacher) over a TokenizedCorpus for a fixed number of optimizer steps. It
// does AdamW (no weight decay on norm weights), linear warmup then cosine decay
// to min_lr_ratio * lr, global-norm gradient clipping, gradient accumulation,
// periodic held-out perplexity, and checkpoints from which a killed run
// continues exactly: the checkpoint holds the weights (and feature
// projections), the optimizer's moments, the step and the data position.
// Nothing else is random during training (no dropout; the data order is a
// function of seed and position), so resuming gives bit-identical results to an
// uninterrupted run at the same thread count.
//
// Knows nothing of gRPC or jobs: progress goes to a callback, cancellation
// comes from a predicate polled before each optimizer step.
#ifndef HEARTH_SERVICES_DISTILLER_TRAINER_H_
#define HEARTH_SERVICES_DISTILLER_TRAINER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/llama_model.h"
#include "services/distiller/data.h"
#include "services/distiller/losses.h"

namespace torch::optim {
class AdamW;
}  // namespace torch::optim

namespace hearth::distiller {

struct TrainerOptions {
  int64_t seq_len = 256;
  int64_t batch_size = 8;
  int64_t gradient_accumulation = 1;
  int64_t total_steps = 100;
  int64_t warmup_steps = 10;
  double learning_rate = 1e-3;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double max_grad_norm = 1.0;    // 0 = no clipping.
  int64_t eval_every_steps = 0;  // 0 = only at the end.
  int64_t eval_sequences = 64;   // Held-out sequences per evaluation (0 = all).
  int64_t checkpoint_every_steps = 0;  // 0 = only on cancel.
  std::string checkpoint_dir;          // Empty: no checkpoints, no resume.
  uint64_t seed = 0;
  // Distillation (ignored without a teacher).
  LossWeights loss;
  LayerPairs layer_pairs;  // Feature/attention pairs; empty = uniform mapping.
};

struct TrainerProgress {
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0, ce = 0, kd = 0, hidden = 0, attention = 0;
  double learning_rate = 0;
  double tokens_per_second = 0;
  double elapsed_seconds = 0;
  double eta_seconds = 0;
  std::optional<double> eval_perplexity;  // Set on evaluation steps.
};

struct TrainResult {
  int64_t steps = 0;
  int64_t tokens_seen = 0;
  double final_loss = 0;
  double heldout_perplexity = 0;
  double wall_seconds = 0;  // This process's share, not counting earlier runs.
  double tokens_per_second = 0;
  bool cancelled = false;
  bool resumed = false;
};

using ProgressCallback = std::function<void(const TrainerProgress&)>;
using CancelPredicate = std::function<bool()>;

class Trainer {
 public:
  // `teacher` may be null (plain training). The corpus must outlive the
  // Trainer. INVALID_ARGUMENT naming the option for bad hyper-parameters or
  // mismatched vocabularies.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(
      const TrainerOptions& options,
      std::shared_ptr<model::LlamaForCausalLM> student,
      std::shared_ptr<model::LlamaForCausalLM> teacher,
      const TokenizedCorpus* corpus);
  ~Trainer();

  // Trains to total_steps, resuming from checkpoint_dir when it holds a
  // checkpoint. Returns early (cancelled = true, checkpoint written) when
  // `cancelled` answers true before a step.
  absl::StatusOr<TrainResult> Run(const ProgressCallback& on_progress,
                                  const CancelPredicate& cancelled);

 private:
  struct State;
  explicit Trainer(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

absl::Status ValidateTrainerOptions(const TrainerOptions& options);

// Linear warmup then cosine decay to min_lr_ratio * learning_rate; `step` is
// 0-based.
double ScheduledLearningRate(const TrainerOptions& options, int64_t step);

// AdamW with options' betas and weight decay on tensors of rank >= 2 only
// (norm weights and biases are not decayed). Throws c10::Error.
std::unique_ptr<torch::optim::AdamW> MakeAdamW(
    const std::vector<at::Tensor>& parameters, const TrainerOptions& options);
// Sets every group's learning rate.
void SetLearningRate(torch::optim::AdamW& optimizer, double lr);

// exp(mean next-token CE) over the first `max_sequences` (0 = all) seq_len
// windows of `tokens`.
absl::StatusOr<double> HeldoutPerplexity(model::LlamaForCausalLM& model,
                                         const std::vector<int32_t>& tokens,
                                         int64_t seq_len, int64_t max_sequences,
                                         int64_t batch_size = 8);

// Number of parameters (tied embeddings counted once).
int64_t CountParameters(model::LlamaForCausalLM& model);

}  // namespace hearth::distiller

#endif  // HEARTH_SERVICES_DISTILLER_TRAINER_H_
