// A gRPC server interceptor that counts every call by service, method and
// status code, and times it, for every hearth service:
//
//   hearth_grpc_server_handled_total{grpc_service,grpc_method,grpc_code}
//   hearth_grpc_server_handling_seconds{grpc_service,grpc_method}  (histogram)
//   hearth_grpc_server_active_calls                                (gauge)
//
// Streaming calls are timed from start to final status.
#ifndef HEARTH_COMMON_GRPC_SERVER_METRICS_H_
#define HEARTH_COMMON_GRPC_SERVER_METRICS_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "grpcpp/support/server_interceptor.h"
#include "prometheus/registry.h"

namespace hearth {

// `active_calls` (not owned, may be null) counts calls that have started and
// not yet finished; ServiceRunner drains until it reaches zero.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeServerMetricsInterceptorFactory(prometheus::Registry& registry,
                                    std::atomic<int64_t>* active_calls);

// "OK", "INVALID_ARGUMENT", ... as the label value for a status code.
const char* GrpcCodeName(int code);

}  // namespace hearth

#endif  // HEARTH_COMMON_GRPC_SERVER_METRICS_H_
