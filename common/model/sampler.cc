#include "common/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace hearth::model {

absl::Status ValidateSamplingParams(const SamplingParams& p,
                                    int64_t vocab_size) {
  if (p.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 1, got ", p.max_new_tokens));
  }
  if (!std::isfinite(p.temperature) || p.temperature < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "temperature must be finite and >= 0, got ", p.temperature));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be >= 0, got ", p.top_k));
  }
  if (!std::isfinite(p.top_p) || p.top_p <= 0 || p.top_p > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be finite and > 0, got ",
                     p.repetition_penalty));
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    if (p.stop[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "] is empty"));
    }
  }
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i) {
    const int64_t id = p.stop_token_ids[i];
    if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop_token_ids[", i, "] = ", id, " is outside the vocabulary"));
    }
  }
  return absl::OkStatus();
}

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kNone:
      break;
  }
  return "";
}

size_t FindStopString(const std::vector<std::string>& stops,
                      std::string_view text, size_t new_from) {
  size_t best = std::string_view::npos;
  for (const std::string& s : stops) {
    if (s.empty() || s.size() > text.size()) continue;
    // The earliest match that ends at or after new_from starts at or after
    // new_from - (len - 1).
    size_t from = new_from >= s.size() - 1 ? new_from - (s.size() - 1) : 0;
    size_t pos = text.find(s, from);
    if (pos != std::string_view::npos && pos < best) best = pos;
  }
  return best;
}

Sampler::Sampler(const SamplingParams& params,
                 std::vector<int64_t> eos_token_ids,
                 const std::vector<int64_t>& context)
    : params_(params), eos_(std::move(eos_token_ids)) {
  uint64_t seed =
      params.seed.has_value() ? *params.seed : std::random_device{}();
  rng_.seed(seed);
  if (params_.repetition_penalty != 1.0) {
    seen_ = context;
    std::sort(seen_.begin(), seen_.end());
    seen_.erase(std::unique(seen_.begin(), seen_.end()), seen_.end());
  }
}

FinishReason Sampler::Accept(int64_t token) {
  ++generated_;
  if (params_.repetition_penalty != 1.0) {
    auto it = std::lower_bound(seen_.begin(), seen_.end(), token);
    if (it == seen_.end() || *it != token) seen_.insert(it, token);
  }
  if (!params_.ignore_eos &&
      std::find(eos_.begin(), eos_.end(), token) != eos_.end()) {
    return FinishReason::kEos;
  }
  if (std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(),
                token) != params_.stop_token_ids.end()) {
    return FinishReason::kStop;
  }
  if (generated_ >= params_.max_new_tokens) return FinishReason::kLength;
  return FinishReason::kNone;
}

int64_t Sampler::Sample(const float* logits, int64_t vocab_size) {
  const bool penalize = params_.repetition_penalty != 1.0 && !seen_.empty();
  const float penalty = static_cast<float>(params_.repetition_penalty);
  auto penalized = [&](float v) { return v > 0 ? v / penalty : v * penalty; };

  if (params_.temperature == 0.0) {
    // Greedy. Penalties only change the seen tokens' scores, so apply them on
    // the fly instead of copying the row.
    int64_t best = 0;
    float best_value = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < vocab_size; ++i) {
      if (logits[i] > best_value) best_value = logits[i], best = i;
    }
    if (penalize) {
      best_value = -std::numeric_limits<float>::infinity();
      best = 0;
      size_t s = 0;
      for (int64_t i = 0; i < vocab_size; ++i) {
        float v = logits[i];
        while (s < seen_.size() && seen_[s] < i) ++s;
        if (s < seen_.size() && seen_[s] == i) v = penalized(v);
        if (v > best_value) best_value = v, best = i;
      }
    }
    return best;
  }

  scratch_.assign(logits, logits + vocab_size);
  float* x = scratch_.data();
  if (penalize) {
    for (int64_t id : seen_) {
      if (id >= 0 && id < vocab_size) x[id] = penalized(x[id]);
    }
  }
  const float inv_t = static_cast<float>(1.0 / params_.temperature);
  // Unnormalised softmax weights with the temperature applied, in place: one
  // exp per token. They order the tokens exactly as the scores do (up to
  // underflow to 0, where the probability is 0 anyway).
  float max_v = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab_size; ++i) max_v = std::max(max_v, x[i]);
  double total_all = 0;
  for (int64_t i = 0; i < vocab_size; ++i) {
    x[i] = std::exp((x[i] - max_v) * inv_t);
    total_all += x[i];
  }

  // Candidates: token ids ordered by weight, restricted to the top k when set.
  // A full sort of the vocabulary is the slow part, so sort only as many as
  // top-k or top-p can need, widening the prefix only when the nucleus is not
  // inside it.
  const int64_t k = params_.top_k > 0
                        ? std::min<int64_t>(params_.top_k, vocab_size)
                        : vocab_size;
  const bool use_top_p = params_.top_p < 1.0;
  order_.resize(vocab_size);
  for (int64_t i = 0; i < vocab_size; ++i) order_[i] = static_cast<int32_t>(i);
  auto by_score = [x](int32_t a, int32_t b) {
    return x[a] > x[b] || (x[a] == x[b] && a < b);
  };
  auto weight = [x](int32_t id) { return static_cast<double>(x[id]); };

  int64_t n = k;  // Candidates kept.
  double total = total_all;
  if (k < vocab_size) {
    // The k best to the front (unordered), then ordered: the order fixes which
    // token a given random draw picks, so it must not depend on the library.
    std::nth_element(order_.begin(), order_.begin() + (k - 1), order_.end(),
                     by_score);
    total = 0;
    for (int64_t i = 0; i < k; ++i) total += weight(order_[i]);
  }
  if (use_top_p) {
    // The nucleus is computed over the (renormalised) top-k, sorting a growing
    // prefix until it holds the nucleus.
    int64_t prefix = std::min<int64_t>(k, 64);
    while (true) {
      std::partial_sort(order_.begin(), order_.begin() + prefix,
                        order_.begin() + k, by_score);
      // transformers keeps the smallest prefix whose mass reaches top_p (it
      // drops tokens whose cumulative mass, excluding themselves, is already
      // >= top_p).
      double cum = 0;
      int64_t keep = -1;
      for (int64_t i = 0; i < prefix; ++i) {
        cum += weight(order_[i]) / total;
        if (cum >= params_.top_p) {
          keep = i + 1;
          break;
        }
      }
      if (keep > 0) {
        n = keep;
        total = 0;
        for (int64_t i = 0; i < n; ++i) total += weight(order_[i]);
        break;
      }
      if (prefix == k) break;  // Rounding: the whole set is the nucleus.
      prefix = std::min<int64_t>(k, prefix * 8);
    }
  } else if (k < vocab_size) {
    std::sort(order_.begin(), order_.begin() + k, by_score);
  }

  // Draw from the n candidates. The uniform variate is built from the engine's
  // raw bits (not std::uniform_real_distribution, whose algorithm is up to the
  // standard library) so that a seed means the same thing everywhere.
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
  double cum = 0;
  for (int64_t i = 0; i < n; ++i) {
    cum += weight(order_[i]);
    if (u < cum) return order_[i];
  }
  return order_[n - 1];
}

}  // namespace hearth::model
