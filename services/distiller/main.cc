// hearth-distiller: teacher training and distillation jobs. See
// ../shared/ARCHITECTURE.md.
#include "absl/flags/flag.h"
#include "common/config/config.h"
#include "common/grpc/server_runner.h"
#include "hearth/v1/distillation.grpc.pb.h"

ABSL_FLAG(int32_t, grpc_port, 7101, "gRPC port (hearth.v1.Distillation)");
ABSL_FLAG(int32_t, metrics_port, 7102, "Prometheus /metrics port (0 = off)");

int main(int argc, char** argv) {
  hearth::ConfigFile config;
  hearth::InitServiceFlags(
      argc, argv,
      "hearth-distiller: trains teachers and distills students "
      "(hearth.v1.Distillation).",
      &config);
  hearth::ServiceRunner runner(hearth::ServerOptionsFromFlags(
      "hearth-distiller", absl::GetFlag(FLAGS_grpc_port),
      absl::GetFlag(FLAGS_metrics_port)));
  hearth::v1::Distillation::CallbackService distillation;
  runner.AddService(&distillation);
  return runner.Run();
}
