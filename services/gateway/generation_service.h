// The hearth.v1.Generation front end of hearth-gateway (callback API: no
// thread per request). It authenticates each call through the Edge, turns it
// into a GatewayCore::Generate() and streams or collects the worker's events;
// all policy is in the core. Client cancellation and deadlines cancel the
// request in the dispatcher, which tells the worker.
#ifndef HEARTH_SERVICES_GATEWAY_GENERATION_SERVICE_H_
#define HEARTH_SERVICES_GATEWAY_GENERATION_SERVICE_H_

#include "hearth/v1/generation.grpc.pb.h"
#include "services/gateway/gateway_core.h"

namespace hearth::gateway {

class GenerationService final : public hearth::v1::Generation::CallbackService {
 public:
  // `core` must outlive the service.
  explicit GenerationService(GatewayCore* core) : core_(core) {}

  grpc::ServerUnaryReactor* Generate(
      grpc::CallbackServerContext* context,
      const hearth::v1::GenerateRequest* request,
      hearth::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<hearth::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context,
      const hearth::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(
      grpc::CallbackServerContext* context,
      const hearth::v1::TokenizeRequest* request,
      hearth::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(
      grpc::CallbackServerContext* context,
      const hearth::v1::ListModelsRequest* request,
      hearth::v1::ListModelsResponse* response) override;

 private:
  GatewayCore* const core_;
};

// The client's deadline as absl::Time (InfiniteFuture when none).
absl::Time ClientDeadline(const grpc::CallbackServerContext& context);

// A unary reactor whose cancellation cancels a Ticket; shared by the
// front ends. Finish() it exactly once.
class CancellableUnaryReactor : public grpc::ServerUnaryReactor {
 public:
  void SetTicket(std::shared_ptr<Ticket> ticket);
  void OnCancel() override;
  void OnDone() override { delete this; }

 private:
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<Ticket> ticket_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_GENERATION_SERVICE_H_
