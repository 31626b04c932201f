// Client side of grpc.health.v1: ask a server whether it (or one of its
// services) is SERVING, or wait until it is. Used by the gateway to
// health-check workers, by the CLI and scripts/up to wait for a stack, and by
// tests.
#ifndef HEARTH_COMMON_GRPC_HEALTH_CLIENT_H_
#define HEARTH_COMMON_GRPC_HEALTH_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.pb.h"

namespace grpc {
class Channel;
}

namespace hearth {

using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

// One Check call; the status of the call itself (e.g. UNAVAILABLE when nothing
// listens) is returned as an error.
absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    absl::Duration timeout);

// Polls until the server reports SERVING or `timeout` passes (DEADLINE_EXCEEDED
// naming the last answer).
absl::Status WaitForServing(const std::shared_ptr<grpc::Channel>& channel,
                            absl::Duration timeout);

// The same for a server that may not be listening yet: each attempt uses a
// fresh plaintext channel, because a channel whose connect was refused backs
// off for seconds before retrying.
absl::Status WaitForServing(const std::string& address, absl::Duration timeout);

}  // namespace hearth

#endif  // HEARTH_COMMON_GRPC_HEALTH_CLIENT_H_
