// hearth-gateway: the public entry point (auth, rate limits, dynamic batching,
// dispatch to workers). See ../shared/ARCHITECTURE.md.
#include "absl/flags/flag.h"
#include "common/config/config.h"
#include "common/grpc/server_runner.h"
#include "hearth/v1/distillation.grpc.pb.h"
#include "hearth/v1/generation.grpc.pb.h"
#include "hearth/v1/quantization.grpc.pb.h"
#include "services/gateway/kserve_service.h"

ABSL_FLAG(int32_t, grpc_port, 8001, "public gRPC port");
ABSL_FLAG(int32_t, metrics_port, 8002, "Prometheus /metrics port (0 = off)");

int main(int argc, char** argv) {
  hearth::ConfigFile config;
  hearth::InitServiceFlags(
      argc, argv,
      "hearth-gateway: public gRPC API (hearth.v1.Generation, KServe v2) with "
      "auth, rate limits and dynamic batching in front of hearth-worker.",
      &config);
  hearth::ServiceRunner runner(hearth::ServerOptionsFromFlags(
      "hearth-gateway", absl::GetFlag(FLAGS_grpc_port),
      absl::GetFlag(FLAGS_metrics_port)));
  hearth::v1::Generation::CallbackService generation;
  hearth::gateway::KServeService kserve;
  hearth::v1::Quantization::CallbackService quantization_proxy;
  hearth::v1::Distillation::CallbackService distillation_proxy;
  runner.AddService(&generation);
  runner.AddService(&kserve);
  runner.AddService(&quantization_proxy);
  runner.AddService(&distillation_proxy);
  return runner.Run();
}
