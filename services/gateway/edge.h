// The gateway's edge checks, shared by every front end: request-metadata
// limits, API-key authentication and authorization, per-key rate limits and
// priority caps; and the one conversion of an absl::Status into the
// grpc::Status a client sees, which for RESOURCE_EXHAUSTED carries a
// google.rpc.RetryInfo detail (grpc-status-details-bin) and a `retry-after`
// trailer in whole seconds, rounded up so that honouring it succeeds.
//
// The policy lives in api_keys.h and rate_limiter.h; this module only reads
// gRPC metadata, counts failures in metrics and maps statuses.
//
// With no key store, authentication is disabled: every caller is anonymous,
// unlimited and may use any scope (main() warns loudly at startup).
#ifndef HEARTH_SERVICES_GATEWAY_EDGE_H_
#define HEARTH_SERVICES_GATEWAY_EDGE_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "services/gateway/api_keys.h"
#include "services/gateway/rate_limiter.h"

namespace grpc {
class ServerContextBase;
class Status;
}  // namespace grpc

namespace hearth::gateway {

class GatewayMetrics;

struct EdgeOptions {
  // Sum of the sizes of all request metadata keys and values.
  int64_t max_metadata_bytes = 8192;
  // One credential header (`authorization` or `x-api-key`).
  int64_t max_credential_bytes = 1024;
};

// Who is calling; `key` is null when authentication is disabled.
struct Caller {
  const ApiKey* key = nullptr;
  // For logs and metric labels: the key id, or "(anonymous)".
  absl::string_view label() const;
};

class Edge {
 public:
  // `keys` may be null (auth disabled); `metrics` may be null.
  Edge(std::unique_ptr<ApiKeyStore> keys, GatewayMetrics* metrics,
       EdgeOptions options = {});
  ~Edge();

  bool auth_enabled() const { return keys_ != nullptr; }
  ApiKeyStore* keys() { return keys_.get(); }
  RateLimiter& limiter() { return limiter_; }

  // Checks metadata size, authenticates and checks that the key has one of
  // `scopes` and (when `model` is not empty) may use `model`.
  absl::StatusOr<Caller> Authenticate(
      const grpc::ServerContextBase& context,
      std::initializer_list<absl::string_view> scopes, absl::string_view model);
  // The same checks on already-extracted header values (benchmarks, tests).
  absl::StatusOr<Caller> AuthenticateHeaders(
      absl::string_view authorization, absl::string_view x_api_key,
      std::initializer_list<absl::string_view> scopes, absl::string_view model);

  // Admits one request reserving `tokens` against the caller's limits.
  absl::StatusOr<RateLimiter::Admission> Admit(const Caller& caller,
                                               int64_t tokens);

  // The batcher level for a request asking for `requested` (0 = default).
  int Priority(const Caller& caller, int requested, int default_level) const;

 private:
  const std::unique_ptr<ApiKeyStore> keys_;
  GatewayMetrics* const metrics_;
  const EdgeOptions options_;
  RateLimiter limiter_;
};

// absl::Status -> grpc::Status for a reply. RESOURCE_EXHAUSTED with a
// RetryAfter() delay gets a serialized google.rpc.Status holding a
// google.rpc.RetryInfo as its details, and, when `context` is given, a
// `retry-after: <seconds>` trailer.
grpc::Status ToClientStatus(const absl::Status& status,
                            grpc::ServerContextBase* context);

// Whole seconds a client should wait, rounded up (at least 1).
int64_t RetryAfterSeconds(absl::Duration delay);

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_EDGE_H_
