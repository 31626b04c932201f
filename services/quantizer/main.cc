// hearth-quantizer: quantization jobs (RTN, INT8, GPTQ, AWQ, GGUF) with an
// evaluation report. See ../shared/ARCHITECTURE.md.
#include "absl/flags/flag.h"
#include "common/config/config.h"
#include "common/grpc/server_runner.h"
#include "hearth/v1/quantization.grpc.pb.h"

ABSL_FLAG(int32_t, grpc_port, 7001, "gRPC port (hearth.v1.Quantization)");
ABSL_FLAG(int32_t, metrics_port, 7002, "Prometheus /metrics port (0 = off)");

int main(int argc, char** argv) {
  hearth::ConfigFile config;
  hearth::InitServiceFlags(
      argc, argv,
      "hearth-quantizer: runs quantization jobs (hearth.v1.Quantization).",
      &config);
  hearth::ServiceRunner runner(hearth::ServerOptionsFromFlags(
      "hearth-quantizer", absl::GetFlag(FLAGS_grpc_port),
      absl::GetFlag(FLAGS_metrics_port)));
  hearth::v1::Quantization::CallbackService quantization;
  runner.AddService(&quantization);
  return runner.Run();
}
