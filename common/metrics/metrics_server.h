// Serves a Prometheus registry over HTTP at /metrics (prometheus-cpp's pull
// exposer), and registers the families every hearth service exports.
//
// Naming follows ../shared/ARCHITECTURE.md: hearth_<subsystem>_<what>_<unit>,
// counters end in _total, durations are _seconds histograms, labels never carry
// a key's secret.
#ifndef HEARTH_COMMON_METRICS_METRICS_SERVER_H_
#define HEARTH_COMMON_METRICS_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace prometheus {
class Exposer;
}

namespace hearth {

class MetricsServer {
 public:
  // Binds host:port (port 0 picks a free port) and serves `registry` at
  // /metrics. Fails with UNAVAILABLE naming the address when the port is taken.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& host, int port,
      std::shared_ptr<prometheus::Registry> registry);
  ~MetricsServer();

  int port() const { return port_; }

 private:
  MetricsServer(std::unique_ptr<prometheus::Exposer> exposer, int port);
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_;
};

// hearth_build_info{service,version} 1 and hearth_process_start_time_seconds.
void RegisterProcessMetrics(prometheus::Registry& registry,
                            const std::string& service_name);

}  // namespace hearth

#endif  // HEARTH_COMMON_METRICS_METRICS_SERVER_H_
