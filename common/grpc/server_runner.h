// Runs one hearth gRPC service process: the gRPC server with health and
// reflection, the Prometheus endpoint, optional TLS/mTLS, and signal handling.
//
//   int main(int argc, char** argv) {
//     hearth::ConfigFile config;
//     hearth::InitServiceFlags(argc, argv, "hearth-worker: ...", &config);
//     hearth::ServiceRunner runner(hearth::ServerOptionsFromFlags(
//         "hearth-worker", absl::GetFlag(FLAGS_grpc_port),
//         absl::GetFlag(FLAGS_metrics_port)));
//     WorkerService service(...);
//     runner.AddService(&service);
//     return runner.Run();
//   }
//
// Run() blocks until SIGTERM or SIGINT, then drains: health turns NOT_SERVING,
// the drain callbacks run, new calls are refused, in-flight calls get up to
// --drain_seconds to finish, and the process exits 0. SIGHUP runs the reload
// callbacks (key files, configs) without interrupting traffic.
#ifndef HEARTH_COMMON_GRPC_SERVER_RUNNER_H_
#define HEARTH_COMMON_GRPC_SERVER_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "prometheus/registry.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace hearth {

class MetricsServer;

struct ServerOptions {
  // Used in logs and as the `service` label of hearth_build_info.
  std::string service_name;
  std::string host = "0.0.0.0";
  int grpc_port = 0;  // 0 picks a free port (see ServiceRunner::grpc_port()).
  int metrics_port = 0;  // -1 disables /metrics; 0 picks a free port.
  // TLS when both are set; mTLS (client certificates required and verified)
  // when a client CA is set too. Files hold PEM.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  absl::Duration drain_timeout = absl::Seconds(10);
  // gRPC's limit on one request's metadata (it refuses more with
  // RESOURCE_EXHAUSTED and drops the connection); 0 keeps gRPC's 8 KiB. The
  // gateway raises it so that its own, lower check answers INVALID_ARGUMENT.
  int max_metadata_bytes = 0;
};

// Fills the shared options (--host, --tls_*, --drain_seconds) from flags; the
// ports are per service and passed in. A metrics port of 0 on the command line
// means "off" for users, so it is mapped to -1 here.
ServerOptions ServerOptionsFromFlags(const std::string& service_name,
                                     int grpc_port, int metrics_port);

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and in every thread
// it starts afterwards) so that ServiceRunner::Run can sigwait() for them. Call
// before any thread is created; InitServiceFlags-based mains get it from the
// ServiceRunner constructor.
void BlockControlSignals();

class ServiceRunner {
 public:
  explicit ServiceRunner(ServerOptions options);
  ~ServiceRunner();
  ServiceRunner(const ServiceRunner&) = delete;
  ServiceRunner& operator=(const ServiceRunner&) = delete;

  // Registers a service (sync, async or callback); not owned; must outlive
  // Run().
  void AddService(grpc::Service* service);
  // Families registered here are served on /metrics.
  prometheus::Registry& metrics() { return *registry_; }
  std::shared_ptr<prometheus::Registry> metrics_registry() { return registry_; }
  void OnReload(std::function<void()> callback);
  void OnDrain(std::function<void()> callback);

  // Starts serving and marks health SERVING. Errors name the address or file.
  absl::Status Start();
  // Drains as described above and stops the server. Idempotent.
  void Shutdown();
  // Start(), wait for SIGTERM/SIGINT (running reload callbacks on SIGHUP),
  // Shutdown(). Returns the process exit code.
  int Run();

  int grpc_port() const { return bound_grpc_port_; }
  int metrics_port() const;
  grpc::Server* server() { return server_.get(); }

 private:
  ServerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<grpc::Service*> services_;
  std::vector<std::function<void()>> reload_callbacks_;
  std::vector<std::function<void()>> drain_callbacks_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsServer> metrics_server_;
  // Calls in flight, maintained by the metrics interceptor.
  std::atomic<int64_t> active_calls_{0};
  int bound_grpc_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace hearth

#endif  // HEARTH_COMMON_GRPC_SERVER_RUNNER_H_
