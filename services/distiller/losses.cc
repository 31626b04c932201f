#include "services/distiller/losses.h"

#include <torch/torch.h>

namespace hearth::distiller {

at::Tensor CrossEntropyLoss(const at::Tensor& logits,
                            const at::Tensor& labels) {
  const int64_t v = logits.size(-1);
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, v}).to(at::kFloat),
      labels.reshape({-1}).to(at::kLong));
}

at::Tensor SoftTargetKdLoss(const at::Tensor& student_logits,
                            const at::Tensor& teacher_logits,
                            double temperature) {
  TORCH_CHECK(temperature > 0, "temperature must be > 0");
  TORCH_CHECK(student_logits.sizes() == teacher_logits.sizes(),
              "student and teacher logits differ in shape: ",
              student_logits.sizes(), " vs ", teacher_logits.sizes());
  const int64_t v = student_logits.size(-1);
  at::Tensor s = student_logits.reshape({-1, v}).to(at::kFloat) / temperature;
  at::Tensor t =
      teacher_logits.detach().reshape({-1, v}).to(at::kFloat) / temperature;
  at::Tensor log_p_s = torch::log_softmax(s, -1);
  at::Tensor log_p_t = torch::log_softmax(t, -1);
  // KL(p_t || p_s) = sum p_t (log p_t - log p_s), per row; then the row mean.
  at::Tensor kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean();
  return kl * (temperature * temperature);
}

LayerPairs UniformLayerMapping(int64_t student_layers, int64_t teacher_layers) {
  LayerPairs pairs;
  for (int64_t s = 0; s < student_layers; ++s) {
    pairs.emplace_back(s, (s + 1) * teacher_layers / student_layers - 1);
  }
  return pairs;
}

at::Tensor HiddenStateLoss(const std::vector<at::Tensor>& student_hidden,
                           const std::vector<at::Tensor>& teacher_hidden,
                           const LayerPairs& pairs,
                           const std::vector<at::Tensor>& projections) {
  TORCH_CHECK(!pairs.empty(),
              "hidden-state loss needs at least one layer pair");
  TORCH_CHECK(projections.empty() || projections.size() == pairs.size(),
              "one projection per layer pair");
  at::Tensor total;
  for (size_t k = 0; k < pairs.size(); ++k) {
    const auto [s, t] = pairs[k];
    TORCH_CHECK(s + 1 < static_cast<int64_t>(student_hidden.size()) &&
                    t + 1 < static_cast<int64_t>(teacher_hidden.size()),
                "layer pair (", s, ", ", t, ") out of range");
    at::Tensor hs = student_hidden[s + 1].to(at::kFloat);
    if (!projections.empty()) hs = at::linear(hs, projections[k]);
    at::Tensor term =
        torch::mse_loss(hs, teacher_hidden[t + 1].detach().to(at::kFloat));
    total = total.defined() ? total + term : term;
  }
  return total / static_cast<double>(pairs.size());
}

at::Tensor AttentionMapLoss(const std::vector<at::Tensor>& student_attentions,
                            const std::vector<at::Tensor>& teacher_attentions,
                            const LayerPairs& pairs) {
  TORCH_CHECK(!pairs.empty(), "attention loss needs at least one layer pair");
  at::Tensor total;
  for (const auto& [s, t] : pairs) {
    TORCH_CHECK(s < static_cast<int64_t>(student_attentions.size()) &&
                    t < static_cast<int64_t>(teacher_attentions.size()),
                "layer pair (", s, ", ", t, ") out of range");
    at::Tensor as = student_attentions[s].to(at::kFloat).mean(1);
    at::Tensor at_ = teacher_attentions[t].detach().to(at::kFloat).mean(1);
    at::Tensor term = torch::mse_loss(as, at_);
    total = total.defined() ? total + term : term;
  }
  return total / static_cast<double>(pairs.size());
}

}  // namespace hearth::distiller
