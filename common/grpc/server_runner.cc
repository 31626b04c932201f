#include "common/grpc/server_runner.h"

#include <signal.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc/server_metrics.h"
#include "common/log/logging.h"
#include "common/metrics/metrics_server.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

ABSL_FLAG(std::string, host, "0.0.0.0",
          "address to bind the gRPC and metrics ports to");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; when set, clients must present a certificate it "
          "signed (mTLS)");
ABSL_FLAG(double, drain_seconds, 10,
          "on SIGTERM, how long in-flight calls may take to finish");

namespace hearth {
namespace {

absl::StatusOr<std::string> ReadPemFile(const std::string& path,
                                        const char* flag) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": cannot read ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const ServerOptions& options) {
  if (options.tls_cert_file.empty() && options.tls_key_file.empty()) {
    if (!options.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "--tls_client_ca needs --tls_cert and --tls_key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key must be given together");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadPemFile(options.tls_cert_file, "tls_cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadPemFile(options.tls_key_file, "tls_key");
  if (!key.ok()) return key.status();
  pair.cert_chain = *cert;
  pair.private_key = *key;
  ssl.pem_key_cert_pairs.push_back(pair);
  if (!options.tls_client_ca_file.empty()) {
    auto ca = ReadPemFile(options.tls_client_ca_file, "tls_client_ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

sigset_t ControlSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

}  // namespace

ServerOptions ServerOptionsFromFlags(const std::string& service_name,
                                     int grpc_port, int metrics_port) {
  ServerOptions options;
  options.service_name = service_name;
  options.host = absl::GetFlag(FLAGS_host);
  options.grpc_port = grpc_port;
  options.metrics_port = metrics_port == 0 ? -1 : metrics_port;
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.drain_timeout = absl::Seconds(absl::GetFlag(FLAGS_drain_seconds));
  return options;
}

void BlockControlSignals() {
  sigset_t set = ControlSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

ServiceRunner::ServiceRunner(ServerOptions options)
    : options_(std::move(options)),
      registry_(std::make_shared<prometheus::Registry>()) {
  BlockControlSignals();
  RegisterProcessMetrics(*registry_, options_.service_name);
}

ServiceRunner::~ServiceRunner() { Shutdown(); }

void ServiceRunner::AddService(grpc::Service* service) {
  services_.push_back(service);
}

void ServiceRunner::OnReload(std::function<void()> callback) {
  reload_callbacks_.push_back(std::move(callback));
}

void ServiceRunner::OnDrain(std::function<void()> callback) {
  drain_callbacks_.push_back(std::move(callback));
}

int ServiceRunner::metrics_port() const {
  return metrics_server_ ? metrics_server_->port() : -1;
}

absl::Status ServiceRunner::Start() {
  auto credentials = MakeCredentials(options_);
  if (!credentials.ok()) return credentials.status();

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address =
      absl::StrCat(options_.host, ":", options_.grpc_port);
  // Without this, gRPC sets SO_REUSEPORT and a second process on the same port
  // would silently share it instead of failing.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (options_.max_metadata_bytes > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE,
                               options_.max_metadata_bytes);
  }
  builder.AddListeningPort(address, *credentials, &bound_grpc_port_);
  for (grpc::Service* service : services_) builder.RegisterService(service);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(
      MakeServerMetricsInterceptorFactory(*registry_, &active_calls_));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || bound_grpc_port_ == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat(options_.service_name, ": cannot listen on ", address,
                     " (port in use or address invalid)"));
  }
  if (options_.metrics_port >= 0) {
    auto metrics =
        MetricsServer::Start(options_.host, options_.metrics_port, registry_);
    if (!metrics.ok()) {
      server_->Shutdown();
      server_.reset();
      return metrics.status();
    }
    metrics_server_ = *std::move(metrics);
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  HLOG(INFO) << options_.service_name << " serving gRPC on " << options_.host
             << ":" << bound_grpc_port_
             << (options_.tls_cert_file.empty() ? "" : " (TLS)")
             << ", metrics on "
             << (metrics_server_
                     ? absl::StrCat(options_.host, ":", metrics_server_->port(),
                                    "/metrics")
                     : std::string("(off)"));
  return absl::OkStatus();
}

void ServiceRunner::Shutdown() {
  if (server_ == nullptr || shut_down_) return;
  shut_down_ = true;
  HLOG(INFO) << options_.service_name << " draining (up to "
             << absl::FormatDuration(options_.drain_timeout) << ")";
  server_->GetHealthCheckService()->SetServingStatus(false);
  for (auto& callback : drain_callbacks_) callback();
  // The metrics endpoint takes about 2 s to stop (its HTTP threads poll), so it
  // stops while gRPC drains instead of after.
  std::thread metrics_stopper([this] { metrics_server_.reset(); });
  // gRPC's own Shutdown(deadline) waits out the whole deadline while any client
  // holds an idle connection open, so wait for the calls ourselves and then
  // stop with a short grace period.
  const absl::Time deadline = absl::Now() + options_.drain_timeout;
  while (active_calls_.load() > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(50)));
  server_->Wait();
  metrics_stopper.join();
  HLOG(INFO) << options_.service_name << " stopped";
}

int ServiceRunner::Run() {
  absl::Status status = Start();
  if (!status.ok()) {
    HLOG(ERROR) << status.message();
    return 1;
  }
  sigset_t set = ControlSignals();
  while (true) {
    int signal_number = 0;
    if (sigwait(&set, &signal_number) != 0) continue;
    if (signal_number == SIGHUP) {
      HLOG(INFO) << options_.service_name << ": SIGHUP, reloading";
      for (auto& callback : reload_callbacks_) callback();
      continue;
    }
    HLOG(INFO) << options_.service_name << ": "
               << (signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
    break;
  }
  Shutdown();
  return 0;
}

}  // namespace hearth
