#include "services/gateway/gateway_core.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/tokenizer/utf8.h"
#include "services/gateway/gateway_metrics.h"

namespace hearth::gateway {
namespace {

std::string F(const FieldNames& names, absl::string_view field) {
  return absl::StrCat(names.sampling_prefix, field);
}

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

std::string Num(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return absl::StrCat(v);
}

}  // namespace

int64_t FirstInvalidUtf8(absl::string_view text) {
  const size_t at =
      tokenizer::utf8::FindInvalid(std::string_view(text.data(), text.size()));
  return at == std::string_view::npos ? -1 : static_cast<int64_t>(at);
}

// Wraps a front end's observer: refunds the unused token reservation and
// records metrics and statistics when the request ends.
class GatewayCore::AccountingObserver : public GenerationObserver {
 public:
  AccountingObserver(GatewayCore* core,
                     std::shared_ptr<GenerationObserver> inner,
                     RateLimiter::Admission admission, std::string model,
                     std::string rpc, int64_t prompt_tokens_estimate)
      : core_(core),
        inner_(std::move(inner)),
        admission_(std::move(admission)),
        model_(std::move(model)),
        rpc_(std::move(rpc)),
        prompt_tokens_estimate_(prompt_tokens_estimate),
        start_(absl::Now()) {}

  void OnEvent(const hearth::v1::ExecuteEvent& event) override {
    if (!first_token_seen_ && event.token_ids_size() > 0) {
      first_token_seen_ = true;
      if (core_->metrics_) {
        core_->metrics_->ObserveTimeToFirstToken(model_, absl::Now() - start_);
      }
    }
    generated_ += event.token_ids_size();
    if (event.has_usage()) usage_ = event.usage();
    if (event.has_timing()) queue_seconds_ = event.timing().queue_seconds();
    inner_->OnEvent(event);
  }

  void OnFinish(const absl::Status& status) override {
    // Tokens actually spent: the worker's count when it sent one, else what
    // was seen (a failed request that never ran used nothing).
    int64_t used = 0;
    if (usage_.total_tokens() > 0) {
      used = usage_.total_tokens();
    } else if (generated_ > 0) {
      used = prompt_tokens_estimate_ + generated_;
    }
    admission_.Complete(used);
    const absl::Duration total = absl::Now() - start_;
    core_->Record(model_, status.ok(), total, queue_seconds_);
    if (status.ok() && core_->metrics_) {
      core_->metrics_->ObserveRequest(model_, rpc_, total);
      core_->metrics_->AddGeneratedTokens(
          model_, usage_.completion_tokens() > 0 ? usage_.completion_tokens()
                                                 : generated_);
    }
    inner_->OnFinish(status);
  }

  // The request never ran (Submit refused it): give all tokens back.
  void Refund() { admission_.Complete(0); }

  bool Restartable() const override { return inner_->Restartable(); }
  void OnRestart() override {
    generated_ = 0;
    first_token_seen_ = false;
    usage_.Clear();
    inner_->OnRestart();
  }

 private:
  GatewayCore* const core_;
  const std::shared_ptr<GenerationObserver> inner_;
  RateLimiter::Admission admission_;
  const std::string model_;
  const std::string rpc_;
  const int64_t prompt_tokens_estimate_;
  const absl::Time start_;
  bool first_token_seen_ = false;
  int64_t generated_ = 0;
  hearth::v1::Usage usage_;
  double queue_seconds_ = 0;
};

GatewayCore::GatewayCore(GatewayCoreOptions options, WorkerPool* pool,
                         Dispatcher* dispatcher, Edge* edge,
                         TokenizerCache* tokenizers, GatewayMetrics* metrics)
    : options_(options),
      pool_(pool),
      dispatcher_(dispatcher),
      edge_(edge),
      tokenizers_(tokenizers),
      metrics_(metrics) {}

absl::Status GatewayCore::ValidateSampling(const hearth::v1::SamplingParams& s,
                                           const FieldNames& names) {
  if (s.has_temperature() &&
      !(std::isfinite(s.temperature()) && s.temperature() >= 0)) {
    return Invalid(
        F(names, "temperature"),
        absl::StrCat("must be finite and >= 0, got ", Num(s.temperature())));
  }
  if (s.has_top_p() &&
      !(std::isfinite(s.top_p()) && s.top_p() > 0 && s.top_p() <= 1)) {
    return Invalid(F(names, "top_p"),
                   absl::StrCat("must be in (0, 1], got ", Num(s.top_p())));
  }
  if (s.has_repetition_penalty() &&
      !(std::isfinite(s.repetition_penalty()) && s.repetition_penalty() > 0)) {
    return Invalid(F(names, "repetition_penalty"),
                   absl::StrCat("must be finite and > 0, got ",
                                Num(s.repetition_penalty())));
  }
  for (int i = 0; i < s.stop_token_ids_size(); ++i) {
    if (s.stop_token_ids(i) < 0) {
      return Invalid(absl::StrCat(F(names, "stop_token_ids"), "[", i, "]"),
                     absl::StrCat("must be >= 0, got ", s.stop_token_ids(i)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Ticket>> GatewayCore::Generate(
    const Caller& caller, const hearth::v1::GenerateRequest& request,
    absl::Time deadline, absl::string_view rpc,
    std::shared_ptr<GenerationObserver> observer, const FieldNames& names) {
  // --- Shape of the request -------------------------------------------------
  if (request.model().empty()) return Invalid(names.model, "required");
  const bool has_text = !request.prompt().empty();
  const bool has_ids = request.prompt_token_ids_size() > 0;
  if (has_text == has_ids) {
    return Invalid(
        names.prompt,
        has_text ? absl::StrCat("set only one of ", names.prompt, " and ",
                                names.prompt_token_ids)
                 : absl::StrCat("required (or ", names.prompt_token_ids, ")"));
  }
  if (static_cast<int64_t>(request.prompt().size()) >
      options_.max_prompt_bytes) {
    return Invalid(
        names.prompt,
        absl::StrCat(request.prompt().size(),
                     " bytes is over the gateway's limit of ",
                     options_.max_prompt_bytes, " (--max_prompt_bytes)"));
  }
  if (const int64_t bad = FirstInvalidUtf8(request.prompt()); bad >= 0) {
    return Invalid(names.prompt, absl::StrCat("invalid UTF-8 at byte ", bad));
  }
  if (request.prompt_token_ids_size() > options_.max_prompt_tokens) {
    return Invalid(names.prompt_token_ids,
                   absl::StrCat(request.prompt_token_ids_size(),
                                " ids is over the gateway's limit of ",
                                options_.max_prompt_tokens));
  }
  if (static_cast<int64_t>(request.request_id().size()) >
      options_.max_request_id_bytes) {
    return Invalid(names.request_id,
                   absl::StrCat(request.request_id().size(), " bytes; at most ",
                                options_.max_request_id_bytes));
  }
  const hearth::v1::SamplingParams& sampling = request.sampling();
  if (absl::Status s = ValidateSampling(sampling, names); !s.ok()) return s;
  if (sampling.stop_size() > options_.max_stop_strings) {
    return Invalid(F(names, "stop"),
                   absl::StrCat(sampling.stop_size(), " strings; at most ",
                                options_.max_stop_strings));
  }
  for (int i = 0; i < sampling.stop_size(); ++i) {
    const std::string field = absl::StrCat(F(names, "stop"), "[", i, "]");
    if (sampling.stop(i).empty()) return Invalid(field, "must not be empty");
    if (static_cast<int64_t>(sampling.stop(i).size()) >
        options_.max_stop_bytes) {
      return Invalid(field, absl::StrCat("longer than ",
                                         options_.max_stop_bytes, " bytes"));
    }
    if (const int64_t bad = FirstInvalidUtf8(sampling.stop(i)); bad >= 0) {
      return Invalid(field, absl::StrCat("invalid UTF-8 at byte ", bad));
    }
  }

  // --- The model
  // --------------------------------------------------------------
  hearth::v1::LoadedModel info;
  bool known = false;
  for (const auto& summary : pool_->Models()) {
    if (summary.model.name() == request.model()) {
      info = summary.model;
      known = true;
      break;
    }
  }
  if (!known) {
    // Let the dispatcher give the canonical NOT_FOUND / UNAVAILABLE.
    info.set_name(request.model());
  }
  if (known && info.vocab_size() > 0) {
    for (int i = 0; i < request.prompt_token_ids_size(); ++i) {
      const int32_t id = request.prompt_token_ids(i);
      if (id < 0 || static_cast<uint32_t>(id) >= info.vocab_size()) {
        return Invalid(absl::StrCat(names.prompt_token_ids, "[", i, "]"),
                       absl::StrCat(id, " is not a token id (vocabulary of ",
                                    info.vocab_size(), ")"));
      }
    }
  }

  // --- Tokens: prompt length and the reservation
  // ------------------------------
  int64_t prompt_tokens = request.prompt_token_ids_size();
  bool exact = has_ids;
  if (has_text && known) {
    auto tok =
        tokenizers_
            ? tokenizers_->Get(request.model(), info.path())
            : absl::StatusOr<std::shared_ptr<const tokenizer::Tokenizer>>(
                  absl::NotFoundError("no tokenizers"));
    if (tok.ok()) {
      auto ids = (*tok)->Encode(request.prompt(), /*add_special_tokens=*/true);
      if (!ids.ok()) return Invalid(names.prompt, ids.status().message());
      prompt_tokens = static_cast<int64_t>(ids->size());
      exact = true;
    }
  }
  if (!exact) {
    // Without the tokenizer, bytes bound the tokens from above (every token
    // of a byte-level or byte-fallback vocabulary covers >= 1 byte).
    prompt_tokens = static_cast<int64_t>(request.prompt().size()) + 1;
    if (info.context_length() > 0) {
      prompt_tokens = std::min<int64_t>(prompt_tokens, info.context_length());
    }
  }
  // 0 = the model's default: what its worker reports (generation_config.json
  // or 128), else --default_max_new_tokens; capped like the worker caps it.
  int64_t max_new = sampling.max_new_tokens();
  if (max_new == 0) {
    max_new = info.default_max_new_tokens() > 0
                  ? info.default_max_new_tokens()
                  : options_.default_max_new_tokens;
    if (exact && info.context_length() > 0) {
      max_new = std::max<int64_t>(
          1, std::min<int64_t>(max_new, info.context_length() - prompt_tokens));
    }
  }
  if (info.context_length() > 0) {
    if (exact && prompt_tokens >= info.context_length()) {
      return Invalid(names.prompt,
                     absl::StrCat(prompt_tokens,
                                  " tokens leave no room to generate in the "
                                  "model's context of ",
                                  info.context_length(), " tokens"));
    }
    if (sampling.max_new_tokens() > 0 &&
        (exact ? prompt_tokens + max_new > info.context_length()
               : max_new >= info.context_length())) {
      return Invalid(
          F(names, names.max_new_tokens),
          absl::StrCat(max_new, " new tokens + ", prompt_tokens,
                       " prompt tokens exceed the model's context of ",
                       info.context_length(), " tokens"));
    }
  }
  const int64_t reserve = prompt_tokens + max_new;

  // --- Admission
  // -----------------------------------------------------------------
  if (caller.key != nullptr && !caller.key->AllowsModel(request.model())) {
    return Authorize(*caller.key, kScopeGenerate, request.model());
  }
  auto admission = edge_->Admit(caller, reserve);
  if (!admission.ok()) return admission.status();

  GenerationRequest job;
  job.model = request.model();
  hearth::v1::SequenceRequest& sequence = job.sequence;
  if (has_text) {
    sequence.set_prompt(request.prompt());
  } else {
    sequence.mutable_prompt_token_ids()->CopyFrom(request.prompt_token_ids());
  }
  *sequence.mutable_sampling() = sampling;
  // With the exact prompt length the gateway sends the default it reserved
  // for; otherwise 0, and the worker caps the same default with its exact
  // count (the reservation above is then an upper bound, refunded after).
  if (sampling.max_new_tokens() == 0 && exact) {
    sequence.mutable_sampling()->set_max_new_tokens(
        static_cast<uint32_t>(max_new));
  }
  const int default_level =
      dispatcher_->OptionsFor(request.model()).default_priority_level;
  job.priority = edge_->Priority(caller, static_cast<int>(request.priority()),
                                 default_level);
  sequence.set_priority(static_cast<uint32_t>(job.priority));
  job.queue_timeout = absl::Milliseconds(request.timeout_ms());
  job.cost = reserve;
  job.deadline = deadline;

  auto accounting = std::make_shared<AccountingObserver>(
      this, std::move(observer), *std::move(admission), request.model(),
      std::string(rpc), prompt_tokens);
  auto ticket = dispatcher_->Submit(std::move(job), accounting);
  if (!ticket.ok()) accounting->Refund();
  return ticket;
}

absl::StatusOr<hearth::v1::TokenizeResponse> GatewayCore::Tokenize(
    const hearth::v1::TokenizeRequest& request) {
  if (request.model().empty()) return Invalid("model", "required");
  if (static_cast<int64_t>(request.text().size()) > options_.max_prompt_bytes) {
    return Invalid("text", absl::StrCat(request.text().size(),
                                        " bytes is over the gateway's limit "
                                        "of ",
                                        options_.max_prompt_bytes));
  }
  if (const int64_t bad = FirstInvalidUtf8(request.text()); bad >= 0) {
    return Invalid("text", absl::StrCat("invalid UTF-8 at byte ", bad));
  }
  std::string path;
  bool known = false;
  for (const auto& summary : pool_->Models()) {
    if (summary.model.name() == request.model()) {
      path = summary.model.path();
      known = true;
    }
  }
  if (!known) {
    return absl::NotFoundError(absl::StrCat("model '", request.model(),
                                            "' is not loaded on any worker"));
  }
  auto tok = tokenizers_
                 ? tokenizers_->Get(request.model(), path)
                 : absl::StatusOr<std::shared_ptr<const tokenizer::Tokenizer>>(
                       absl::NotFoundError("no tokenizers"));
  if (!tok.ok()) {
    // The model exists; the gateway just cannot see its files.
    return absl::FailedPreconditionError(tok.status().message());
  }
  auto ids = (*tok)->Encode(request.text(), request.add_special_tokens());
  if (!ids.ok()) return Invalid("text", ids.status().message());
  hearth::v1::TokenizeResponse response;
  for (int32_t id : *ids) {
    response.add_token_ids(id);
    response.add_tokens((*tok)->IdToToken(id));
  }
  return response;
}

hearth::v1::ListModelsResponse GatewayCore::ListModels(const Caller& caller) {
  hearth::v1::ListModelsResponse response;
  for (const auto& summary : pool_->Models()) {
    if (caller.key != nullptr && !caller.key->AllowsModel(summary.model.name()))
      continue;
    hearth::v1::ModelInfo* info = response.add_models();
    info->set_name(summary.model.name());
    info->set_state(summary.ready_replicas > 0 ? hearth::v1::MODEL_STATE_READY
                                               : summary.model.state());
    info->set_context_length(summary.model.context_length());
    info->set_vocab_size(summary.model.vocab_size());
    info->set_quantization(summary.model.quantization());
    info->set_ready_replicas(summary.ready_replicas);
  }
  return response;
}

void GatewayCore::Record(const std::string& model, bool ok,
                         absl::Duration total, double queue_seconds) {
  const uint64_t ns = static_cast<uint64_t>(absl::ToInt64Nanoseconds(total));
  absl::MutexLock lock(&stats_mu_);
  ModelStats& stats = stats_[model];
  if (ok) {
    ++stats.success_count;
    stats.success_ns += ns;
    const uint64_t queue_ns = static_cast<uint64_t>(queue_seconds * 1e9);
    ++stats.queue_count;
    stats.queue_ns += queue_ns;
    stats.infer_ns += ns > queue_ns ? ns - queue_ns : 0;
  } else {
    ++stats.fail_count;
    stats.fail_ns += ns;
  }
  stats.last_inference_ms =
      static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
}

std::map<std::string, ModelStats> GatewayCore::Stats() {
  absl::MutexLock lock(&stats_mu_);
  return stats_;
}

}  // namespace hearth::gateway
