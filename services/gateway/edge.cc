#include "services/gateway/edge.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/grpc/status_conversion.h"
#include "google/rpc/retry_info.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"
#include "services/gateway/gateway_metrics.h"

namespace hearth::gateway {
namespace {

absl::string_view Ref(const grpc::string_ref& ref) {
  return absl::string_view(ref.data(), ref.size());
}

}  // namespace

absl::string_view Caller::label() const {
  return key == nullptr ? absl::string_view("(anonymous)")
                        : absl::string_view(key->id);
}

Edge::Edge(std::unique_ptr<ApiKeyStore> keys, GatewayMetrics* metrics,
           EdgeOptions options)
    : keys_(std::move(keys)), metrics_(metrics), options_(options) {}

Edge::~Edge() = default;

absl::StatusOr<Caller> Edge::Authenticate(
    const grpc::ServerContextBase& context,
    std::initializer_list<absl::string_view> scopes, absl::string_view model) {
  int64_t total = 0;
  absl::string_view authorization;
  absl::string_view x_api_key;
  for (const auto& [key, value] : context.client_metadata()) {
    total += static_cast<int64_t>(key.size() + value.size());
    if (key == "authorization") {
      authorization = Ref(value);
    } else if (key == "x-api-key") {
      x_api_key = Ref(value);
    }
  }
  if (total > options_.max_metadata_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata: ", total,
                     " bytes of request metadata; the gateway accepts at most ",
                     options_.max_metadata_bytes));
  }
  return AuthenticateHeaders(authorization, x_api_key, scopes, model);
}

absl::StatusOr<Caller> Edge::AuthenticateHeaders(
    absl::string_view authorization, absl::string_view x_api_key,
    std::initializer_list<absl::string_view> scopes, absl::string_view model) {
  for (auto [name, value] : {std::pair<absl::string_view, absl::string_view>{
                                 "authorization", authorization},
                             {"x-api-key", x_api_key}}) {
    if (static_cast<int64_t>(value.size()) > options_.max_credential_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": metadata value is ", value.size(),
                       " bytes; an API key header holds at most ",
                       options_.max_credential_bytes));
    }
  }
  Caller caller;
  if (keys_ == nullptr) return caller;

  auto secret = ExtractApiKey(authorization, x_api_key);
  if (!secret.ok()) {
    if (metrics_) metrics_->AuthFailed(kNoKeyLabel, "unauthenticated");
    return secret.status();
  }
  auto key = keys_->Authenticate(*secret);
  if (!key.ok()) {
    if (metrics_) metrics_->AuthFailed(kNoKeyLabel, "unauthenticated");
    return key.status();
  }
  caller.key = *key;
  absl::Status denied;
  for (absl::string_view scope : scopes) {
    denied = Authorize(*caller.key, scope, model);
    if (denied.ok()) break;
  }
  if (!denied.ok()) {
    if (metrics_) metrics_->AuthFailed(caller.key->id, "permission_denied");
    if (scopes.size() > 1 && !caller.key->AllowsModel(model)) return denied;
    if (scopes.size() > 1) {
      return absl::PermissionDeniedError(
          absl::StrCat("API key '", caller.key->id, "' lacks scope ",
                       absl::StrJoin(scopes, " or "), " needed for this rpc"));
    }
    return denied;
  }
  return caller;
}

absl::StatusOr<RateLimiter::Admission> Edge::Admit(const Caller& caller,
                                                   int64_t tokens) {
  if (caller.key == nullptr) return RateLimiter::Admission();
  auto admission =
      limiter_.Admit(caller.key->id, caller.key->limits, tokens, absl::Now());
  if (!admission.ok() && metrics_) metrics_->RateLimited(caller.key->id);
  return admission;
}

int Edge::Priority(const Caller& caller, int requested,
                   int default_level) const {
  if (caller.key == nullptr) return requested;
  return caller.key->ClampPriority(requested, default_level);
}

int64_t RetryAfterSeconds(absl::Duration delay) {
  const double seconds = std::ceil(absl::ToDoubleSeconds(delay));
  return std::max<int64_t>(1, static_cast<int64_t>(seconds));
}

grpc::Status ToClientStatus(const absl::Status& status,
                            grpc::ServerContextBase* context) {
  grpc::Status out = ToGrpcStatus(status);
  if (status.code() != absl::StatusCode::kResourceExhausted) return out;
  std::optional<absl::Duration> delay = RetryAfter(status);
  if (!delay.has_value()) return out;

  google::rpc::RetryInfo retry;
  const int64_t nanos = absl::ToInt64Nanoseconds(*delay);
  retry.mutable_retry_delay()->set_seconds(nanos / 1000000000);
  retry.mutable_retry_delay()->set_nanos(
      static_cast<int32_t>(nanos % 1000000000));
  google::rpc::Status details;
  details.set_code(static_cast<int32_t>(out.error_code()));
  details.set_message(out.error_message());
  details.add_details()->PackFrom(retry);
  if (context != nullptr) {
    context->AddTrailingMetadata("retry-after",
                                 absl::StrCat(RetryAfterSeconds(*delay)));
  }
  return grpc::Status(out.error_code(), out.error_message(),
                      details.SerializeAsString());
}

}  // namespace hearth::gateway
