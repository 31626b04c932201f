// Prometheus metrics of hearth-worker: the engine's EngineObserver.
//
// Names follow vLLM's and Triton's (../../shared/reference/serving-anchors.md)
// under hearth's conventions (hearth_<subsystem>_<what>_<unit>, counters end in
// _total, durations are _seconds histograms). Labels: model and device.
//
//   hearth_worker_requests_running                gauge
//   vllm:num_requests_running hearth_worker_requests_waiting gauge
//   vllm:num_requests_waiting
//   hearth_worker_request_finished_total{finished_reason}
//                                                 counter vllm:request_success
//       finished_reason: stop | length | eos | cancelled | error
//   hearth_worker_prompt_tokens_total             counter vllm:prompt_tokens
//   hearth_worker_generation_tokens_total         counter
//   vllm:generation_tokens hearth_worker_time_to_first_token_seconds histogram
//   hearth_worker_inter_token_latency_seconds     histogram
//   hearth_worker_e2e_request_latency_seconds     histogram
//   hearth_worker_request_queue_time_seconds      histogram
//   hearth_worker_batch_size                      histogram sequences per step
//   hearth_worker_iteration_tokens                histogram
//   vllm:iteration_tokens hearth_worker_kv_cache_usage_ratio            gauge
//   vllm:kv_cache_usage_perc hearth_worker_device_memory_used_bytes{device}
//   gauge  weights + KV caches hearth_worker_model_load_duration_seconds gauge
//   nv_model_load_duration_secs
//
// Time to first token and end-to-end latency are measured from the request's
// arrival at the gateway (the worker adds the gateway_queue_seconds it is
// told), like the Timing the API reports. The gauges of a model's replica are
// removed when the model is unloaded; counters and histograms stay (Prometheus
// expects them to be monotonic).
#ifndef HEARTH_SERVICES_WORKER_WORKER_METRICS_H_
#define HEARTH_SERVICES_WORKER_WORKER_METRICS_H_

#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "services/worker/engine.h"

namespace hearth::worker {

class WorkerMetrics : public EngineObserver {
 public:
  // Registers the families in `registry`, which must outlive this object.
  explicit WorkerMetrics(prometheus::Registry& registry);

  std::unique_ptr<ReplicaObserver> ForReplica(
      const std::string& model, const std::string& device) override;
  void OnModelLoaded(const std::string& model, const std::string& device,
                     double seconds) override;
  void OnDeviceMemory(const std::string& device, int64_t bytes) override;

 private:
  friend class ReplicaMetrics;

  prometheus::Family<prometheus::Gauge>& running_;
  prometheus::Family<prometheus::Gauge>& waiting_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Counter>& prompt_tokens_;
  prometheus::Family<prometheus::Counter>& generation_tokens_;
  prometheus::Family<prometheus::Histogram>& ttft_;
  prometheus::Family<prometheus::Histogram>& itl_;
  prometheus::Family<prometheus::Histogram>& e2e_;
  prometheus::Family<prometheus::Histogram>& queue_time_;
  prometheus::Family<prometheus::Histogram>& batch_size_;
  prometheus::Family<prometheus::Histogram>& iteration_tokens_;
  prometheus::Family<prometheus::Gauge>& kv_usage_;
  prometheus::Family<prometheus::Gauge>& memory_;
  prometheus::Family<prometheus::Gauge>& load_duration_;
};

}  // namespace hearth::worker

#endif  // HEARTH_SERVICES_WORKER_WORKER_METRICS_H_
