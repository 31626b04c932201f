// The KServe v2 front end (inference.GRPCInferenceService) of hearth-gateway.
//
// A front end only translates between protos and the gateway core; it owns no
// policy. Liveness and server metadata are answered here; readiness reports
// whether any model is ready, and inference rpcs answer UNIMPLEMENTED until the
// gateway core can dispatch to workers.
#ifndef HEARTH_SERVICES_GATEWAY_KSERVE_SERVICE_H_
#define HEARTH_SERVICES_GATEWAY_KSERVE_SERVICE_H_

#include "inference/grpc_service.grpc.pb.h"

namespace hearth::gateway {

class KServeService final
    : public inference::GRPCInferenceService::CallbackService {
 public:
  grpc::ServerUnaryReactor* ServerLive(
      grpc::CallbackServerContext* context,
      const inference::ServerLiveRequest* request,
      inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(
      grpc::CallbackServerContext* context,
      const inference::ServerReadyRequest* request,
      inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(
      grpc::CallbackServerContext* context,
      const inference::ServerMetadataRequest* request,
      inference::ServerMetadataResponse* response) override;
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_KSERVE_SERVICE_H_
