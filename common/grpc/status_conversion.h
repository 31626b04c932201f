// The one place where absl::Status becomes grpc::Status (and back, for
// clients).
//
// absl's canonical codes and gRPC's codes share numbering, so the code carries
// over unchanged; front ends call ToGrpcStatus() at the edge and nowhere else.
#ifndef HEARTH_COMMON_GRPC_STATUS_CONVERSION_H_
#define HEARTH_COMMON_GRPC_STATUS_CONVERSION_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace hearth {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace hearth

#endif  // HEARTH_COMMON_GRPC_STATUS_CONVERSION_H_
