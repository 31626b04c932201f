// hearth-worker: runs model replicas (one per device) with continuous batching
// and streams tokens to the gateway. See ../shared/ARCHITECTURE.md.
#include "absl/flags/flag.h"
#include "common/config/config.h"
#include "common/grpc/server_runner.h"
#include "hearth/v1/worker.grpc.pb.h"

ABSL_FLAG(int32_t, grpc_port, 9001, "internal gRPC port (hearth.v1.Worker)");
ABSL_FLAG(int32_t, metrics_port, 9002, "Prometheus /metrics port (0 = off)");

int main(int argc, char** argv) {
  hearth::ConfigFile config;
  hearth::InitServiceFlags(
      argc, argv,
      "hearth-worker: runs models on the given devices with continuous "
      "batching (hearth.v1.Worker).",
      &config);
  hearth::ServiceRunner runner(hearth::ServerOptionsFromFlags(
      "hearth-worker", absl::GetFlag(FLAGS_grpc_port),
      absl::GetFlag(FLAGS_metrics_port)));
  hearth::v1::Worker::CallbackService worker;
  runner.AddService(&worker);
  return runner.Run();
}
