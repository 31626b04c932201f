#include "common/metrics/metrics_server.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"

#ifndef HEARTH_VERSION
#define HEARTH_VERSION "dev"
#endif

namespace hearth {

MetricsServer::MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                             int port)
    : exposer_(std::move(exposer)), port_(port) {}

MetricsServer::~MetricsServer() = default;

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port,
    std::shared_ptr<prometheus::Registry> registry) {
  const std::string address = absl::StrCat(host, ":", port);
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // One worker thread: scrapes are rare and must not compete with serving.
    exposer = std::make_unique<prometheus::Exposer>(address, 1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics endpoint ", address, ": ", e.what()));
  }
  exposer->RegisterCollectable(registry);
  std::vector<int> ports = exposer->GetListeningPorts();
  int bound = ports.empty() ? port : ports.front();
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(std::move(exposer), bound));
}

void RegisterProcessMetrics(prometheus::Registry& registry,
                            const std::string& service_name) {
  prometheus::BuildGauge()
      .Name("hearth_build_info")
      .Help("Constant 1, labelled with the service and its version.")
      .Register(registry)
      .Add({{"service", service_name}, {"version", HEARTH_VERSION}})
      .Set(1);
  prometheus::BuildGauge()
      .Name("hearth_process_start_time_seconds")
      .Help("Start time of the process since the Unix epoch, in seconds.")
      .Register(registry)
      .Add({})
      .Set(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
}

}  // namespace hearth
