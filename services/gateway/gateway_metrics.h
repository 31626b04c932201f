// The gateway's Prometheus metrics: the autoscaling signals (queue size and
// queue time, batch size and fill) and what operators alert on (rejections
// by reason, rate-limited and auth failures by key id, worker health and
// in-flight work, request latency).
//
// Names follow hearth_gateway_<what>_<unit>; labels are `model`, `reason`,
// `key`, `worker`, `rpc`. Label values come only from the gateway's own
// vocabulary, model names that workers serve, key ids from the key file and
// worker addresses, never from a secret or free client text: an unknown model
// is counted as model="(unknown)", an unknown key as key="(none)".
//
// All methods are thread-safe (prometheus-cpp's families lock internally).
#ifndef HEARTH_SERVICES_GATEWAY_GATEWAY_METRICS_H_
#define HEARTH_SERVICES_GATEWAY_GATEWAY_METRICS_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace hearth::gateway {

inline constexpr absl::string_view kUnknownModelLabel = "(unknown)";
inline constexpr absl::string_view kNoKeyLabel = "(none)";

class GatewayMetrics {
 public:
  explicit GatewayMetrics(prometheus::Registry& registry);

  // Queue state of one model, sampled after each poll and batch.
  void SetQueue(absl::string_view model, int64_t queued,
                absl::Duration oldest_wait);
  void ObserveQueueTime(absl::string_view model, absl::Duration waited);
  void ObserveBatch(absl::string_view model, int size, int max_batch_size);
  // reason: queue_full, queue_timeout, no_worker, not_found,
  // invalid_argument, shutdown, worker_failed, cancelled.
  void Rejected(absl::string_view model, absl::string_view reason);
  void Requeued(absl::string_view model);
  void RateLimited(absl::string_view key_id);
  // reason: unauthenticated, permission_denied.
  void AuthFailed(absl::string_view key_id, absl::string_view reason);

  // rpc: generate, generate_stream, model_infer, model_stream_infer.
  void ObserveRequest(absl::string_view model, absl::string_view rpc,
                      absl::Duration latency);
  void ObserveTimeToFirstToken(absl::string_view model, absl::Duration ttft);
  void AddGeneratedTokens(absl::string_view model, int64_t tokens);

  void SetWorker(absl::string_view worker, bool healthy,
                 int64_t inflight_batches, int64_t inflight_sequences,
                 int64_t worker_queue_length);

 private:
  prometheus::Family<prometheus::Gauge>& queue_size_;
  prometheus::Family<prometheus::Gauge>& oldest_wait_;
  prometheus::Family<prometheus::Histogram>& queue_time_;
  prometheus::Family<prometheus::Histogram>& batch_size_;
  prometheus::Family<prometheus::Histogram>& batch_fill_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Family<prometheus::Counter>& requeued_;
  prometheus::Family<prometheus::Counter>& rate_limited_;
  prometheus::Family<prometheus::Counter>& auth_failed_;
  prometheus::Family<prometheus::Histogram>& request_duration_;
  prometheus::Family<prometheus::Histogram>& ttft_;
  prometheus::Family<prometheus::Counter>& generated_tokens_;
  prometheus::Family<prometheus::Gauge>& worker_healthy_;
  prometheus::Family<prometheus::Gauge>& worker_inflight_batches_;
  prometheus::Family<prometheus::Gauge>& worker_inflight_sequences_;
  prometheus::Family<prometheus::Gauge>& worker_queue_length_;
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_GATEWAY_METRICS_H_
