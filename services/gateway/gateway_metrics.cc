#include "services/gateway/gateway_metrics.h"

#include <string>

namespace hearth::gateway {
namespace {

using prometheus::Histogram;

Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
          0.5,    1,     2.5,    5,     10,   30,    60,   120};
}

std::string Label(absl::string_view value) { return std::string(value); }

}  // namespace

GatewayMetrics::GatewayMetrics(prometheus::Registry& registry)
    : queue_size_(prometheus::BuildGauge()
                      .Name("hearth_gateway_queue_size")
                      .Help("Requests waiting in the gateway's queue for a "
                            "batch (autoscaling signal).")
                      .Register(registry)),
      oldest_wait_(prometheus::BuildGauge()
                       .Name("hearth_gateway_queue_oldest_wait_seconds")
                       .Help("How long the oldest queued request has waited.")
                       .Register(registry)),
      queue_time_(prometheus::BuildHistogram()
                      .Name("hearth_gateway_queue_time_seconds")
                      .Help("Time from admission to dispatch to a worker.")
                      .Register(registry)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("hearth_gateway_batch_size")
                      .Help("Requests per batch sent to a worker.")
                      .Register(registry)),
      batch_fill_(prometheus::BuildHistogram()
                      .Name("hearth_gateway_batch_fill_ratio")
                      .Help("Batch size divided by the model's "
                            "max_batch_size.")
                      .Register(registry)),
      rejected_(prometheus::BuildCounter()
                    .Name("hearth_gateway_rejections_total")
                    .Help("Requests refused or dropped by the gateway, by "
                          "reason.")
                    .Register(registry)),
      requeued_(prometheus::BuildCounter()
                    .Name("hearth_gateway_requeued_total")
                    .Help("Requests put back in the queue because their "
                          "worker failed before finishing them.")
                    .Register(registry)),
      rate_limited_(prometheus::BuildCounter()
                        .Name("hearth_gateway_rate_limited_total")
                        .Help("Requests refused with RESOURCE_EXHAUSTED by "
                              "the per-key rate limits.")
                        .Register(registry)),
      auth_failed_(prometheus::BuildCounter()
                       .Name("hearth_gateway_auth_failures_total")
                       .Help("Requests refused by authentication or "
                             "authorization, by key id.")
                       .Register(registry)),
      request_duration_(prometheus::BuildHistogram()
                            .Name("hearth_gateway_request_duration_seconds")
                            .Help("End-to-end latency of generation requests "
                                  "that completed.")
                            .Register(registry)),
      ttft_(prometheus::BuildHistogram()
                .Name("hearth_gateway_time_to_first_token_seconds")
                .Help("From arrival at the gateway to the first generated "
                      "token.")
                .Register(registry)),
      generated_tokens_(prometheus::BuildCounter()
                            .Name("hearth_gateway_generated_tokens_total")
                            .Help("Tokens generated for completed requests.")
                            .Register(registry)),
      worker_healthy_(prometheus::BuildGauge()
                          .Name("hearth_gateway_worker_healthy")
                          .Help("1 when the worker answered its last status "
                                "poll and accepts work.")
                          .Register(registry)),
      worker_inflight_batches_(
          prometheus::BuildGauge()
              .Name("hearth_gateway_worker_inflight_batches")
              .Help("Batches the gateway has in flight on the worker.")
              .Register(registry)),
      worker_inflight_sequences_(
          prometheus::BuildGauge()
              .Name("hearth_gateway_worker_inflight_sequences")
              .Help("Sequences the gateway has in flight on the worker.")
              .Register(registry)),
      worker_queue_length_(prometheus::BuildGauge()
                               .Name("hearth_gateway_worker_queue_length")
                               .Help("Sequences waiting inside the worker, "
                                     "as it last reported.")
                               .Register(registry)) {}

void GatewayMetrics::SetQueue(absl::string_view model, int64_t queued,
                              absl::Duration oldest_wait) {
  queue_size_.Add({{"model", Label(model)}}).Set(static_cast<double>(queued));
  oldest_wait_.Add({{"model", Label(model)}})
      .Set(absl::ToDoubleSeconds(oldest_wait));
}

void GatewayMetrics::ObserveQueueTime(absl::string_view model,
                                      absl::Duration waited) {
  queue_time_.Add({{"model", Label(model)}}, LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(waited));
}

void GatewayMetrics::ObserveBatch(absl::string_view model, int size,
                                  int max_batch_size) {
  batch_size_
      .Add({{"model", Label(model)}},
           Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256})
      .Observe(size);
  batch_fill_
      .Add({{"model", Label(model)}},
           Histogram::BucketBoundaries{0.125, 0.25, 0.375, 0.5, 0.625, 0.75,
                                       0.875, 1})
      .Observe(max_batch_size > 0 ? static_cast<double>(size) / max_batch_size
                                  : 1.0);
}

void GatewayMetrics::Rejected(absl::string_view model,
                              absl::string_view reason) {
  rejected_.Add({{"model", Label(model)}, {"reason", Label(reason)}})
      .Increment();
}

void GatewayMetrics::Requeued(absl::string_view model) {
  requeued_.Add({{"model", Label(model)}}).Increment();
}

void GatewayMetrics::RateLimited(absl::string_view key_id) {
  rate_limited_.Add({{"key", Label(key_id)}}).Increment();
}

void GatewayMetrics::AuthFailed(absl::string_view key_id,
                                absl::string_view reason) {
  auth_failed_.Add({{"key", Label(key_id)}, {"reason", Label(reason)}})
      .Increment();
}

void GatewayMetrics::ObserveRequest(absl::string_view model,
                                    absl::string_view rpc,
                                    absl::Duration latency) {
  request_duration_
      .Add({{"model", Label(model)}, {"rpc", Label(rpc)}}, LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(latency));
}

void GatewayMetrics::ObserveTimeToFirstToken(absl::string_view model,
                                             absl::Duration ttft) {
  ttft_.Add({{"model", Label(model)}}, LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(ttft));
}

void GatewayMetrics::AddGeneratedTokens(absl::string_view model,
                                        int64_t tokens) {
  if (tokens <= 0) return;
  generated_tokens_.Add({{"model", Label(model)}})
      .Increment(static_cast<double>(tokens));
}

void GatewayMetrics::SetWorker(absl::string_view worker, bool healthy,
                               int64_t inflight_batches,
                               int64_t inflight_sequences,
                               int64_t worker_queue_length) {
  const prometheus::Labels labels{{"worker", Label(worker)}};
  worker_healthy_.Add(labels).Set(healthy ? 1 : 0);
  worker_inflight_batches_.Add(labels).Set(
      static_cast<double>(inflight_batches));
  worker_inflight_sequences_.Add(labels).Set(
      static_cast<double>(inflight_sequences));
  worker_queue_length_.Add(labels).Set(
      static_cast<double>(worker_queue_length));
}

}  // namespace hearth::gateway
