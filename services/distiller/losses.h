// Distillation losses over logits, hidden states and attention maps.
//
// Conventions (see reference/distillation-and-deployment.md, A1):
//  * soft-target KD is KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over
//  token
//    positions ("batchmean" over the flattened [N, vocab] rows, as
//    transformers' distiller does per selected position). The T^2 keeps the
//    gradient scale of the soft term independent of T (Hinton et al. 2015);
//  * the mix is alpha * KD + (1 - alpha) * CE, as DistillationSpec.alpha says;
//  * hidden-state loss is TinyBERT's MSE(H_s W, H_t) through a learned
//  projection,
//    averaged over the mapped layer pairs;
//  * attention loss is the MSE between head-averaged attention probabilities of
//    mapped layers (averaging over heads lets teacher and student have
//    different head counts).
// Teacher tensors are detached here, so gradients only ever reach the student
// (and the projections).
#ifndef HEARTH_SERVICES_DISTILLER_LOSSES_H_
#define HEARTH_SERVICES_DISTILLER_LOSSES_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace hearth::distiller {

// Mean next-token cross entropy. logits [..., V], labels [...] (int64).
at::Tensor CrossEntropyLoss(const at::Tensor& logits, const at::Tensor& labels);

// T^2 * mean over positions of KL(softmax(teacher/T) || softmax(student/T)).
at::Tensor SoftTargetKdLoss(const at::Tensor& student_logits,
                            const at::Tensor& teacher_logits,
                            double temperature);

// A student layer and the teacher layer whose output it imitates (0-based layer
// indices; layer i's output is HF hidden_states[i + 1]).
using LayerPairs = std::vector<std::pair<int64_t, int64_t>>;

// Student layer s <- teacher layer (s + 1) * Lt / Ls - 1: evenly spaced, always
// pairing the last layers (as TinyBERT's uniform strategy).
LayerPairs UniformLayerMapping(int64_t student_layers, int64_t teacher_layers);

// mean over pairs of MSE(projections[k](student_hidden[s+1]),
// teacher_hidden[t+1]). `projections` holds one [teacher_hidden,
// student_hidden] weight per pair (may be empty when the widths match:
// identity).
at::Tensor HiddenStateLoss(const std::vector<at::Tensor>& student_hidden,
                           const std::vector<at::Tensor>& teacher_hidden,
                           const LayerPairs& pairs,
                           const std::vector<at::Tensor>& projections);

// mean over pairs of MSE(mean_heads(A_s[s]), mean_heads(A_t[t])).
at::Tensor AttentionMapLoss(const std::vector<at::Tensor>& student_attentions,
                            const std::vector<at::Tensor>& teacher_attentions,
                            const LayerPairs& pairs);

struct LossWeights {
  double temperature = 2.0;
  double alpha = 0.5;           // Weight of KD; 1 - alpha weighs CE.
  double feature_weight = 0.0;  // Weight of hidden-state (+ attention) loss.
  bool attention_loss = false;
};

struct LossTerms {
  at::Tensor total;
  double ce = 0, kd = 0, hidden = 0, attention = 0;
};

}  // namespace hearth::distiller

#endif  // HEARTH_SERVICES_DISTILLER_LOSSES_H_
