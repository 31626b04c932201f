// The KServe v2 front end (inference.GRPCInferenceService, wire-compatible
// with Triton) of hearth-gateway, using the callback API.
//
// Health and server metadata need no key (they back Kubernetes probes); model
// rpcs need the `generate` scope and access to the model; repository
// load/unload need `admin` and fan out to every healthy worker. ModelInfer and
// ModelStreamInfer go through kserve_codec (Triton's LLM convention) and the
// GatewayCore like every other generation. ModelStreamInfer sends one response
// per token chunk (the last one carries parameter triton_final_response=true)
// and reports errors in `error_message`, unless the stream was opened with
// `triton_grpc_error: true` metadata, in which case the first error ends the
// stream with its gRPC status, as in Triton.
#ifndef HEARTH_SERVICES_GATEWAY_KSERVE_SERVICE_H_
#define HEARTH_SERVICES_GATEWAY_KSERVE_SERVICE_H_

#include "inference/grpc_service.grpc.pb.h"
#include "services/gateway/gateway_core.h"

namespace hearth::gateway {

class KServeService final
    : public inference::GRPCInferenceService::CallbackService {
 public:
  // `core` must outlive the service.
  explicit KServeService(GatewayCore* core) : core_(core) {}

  grpc::ServerUnaryReactor* ServerLive(
      grpc::CallbackServerContext* context,
      const inference::ServerLiveRequest* request,
      inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(
      grpc::CallbackServerContext* context,
      const inference::ServerReadyRequest* request,
      inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(
      grpc::CallbackServerContext* context,
      const inference::ModelReadyRequest* request,
      inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(
      grpc::CallbackServerContext* context,
      const inference::ServerMetadataRequest* request,
      inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(
      grpc::CallbackServerContext* context,
      const inference::ModelMetadataRequest* request,
      inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(
      grpc::CallbackServerContext* context,
      const inference::ModelInferRequest* request,
      inference::ModelInferResponse* response) override;
  grpc::ServerBidiReactor<inference::ModelInferRequest,
                          inference::ModelStreamInferResponse>*
  ModelStreamInfer(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ModelStatistics(
      grpc::CallbackServerContext* context,
      const inference::ModelStatisticsRequest* request,
      inference::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(
      grpc::CallbackServerContext* context,
      const inference::RepositoryIndexRequest* request,
      inference::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelLoad(
      grpc::CallbackServerContext* context,
      const inference::RepositoryModelLoadRequest* request,
      inference::RepositoryModelLoadResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(
      grpc::CallbackServerContext* context,
      const inference::RepositoryModelUnloadRequest* request,
      inference::RepositoryModelUnloadResponse* response) override;

 private:
  GatewayCore* const core_;
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_KSERVE_SERVICE_H_
