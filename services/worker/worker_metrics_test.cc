#include "services/worker/worker_metrics.h"

#include <string>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace hearth::worker {
namespace {

std::string Scrape(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

bool Has(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST(WorkerMetricsTest, ReplicaObserverFeedsTheFamilies) {
  prometheus::Registry registry;
  WorkerMetrics metrics(registry);
  {
    auto replica = metrics.ForReplica("m", "cpu");
    replica->OnStep(3, 40, 2);
    replica->OnStep(3, 0, 3);
    replica->OnFirstToken(0.02);
    replica->OnInterTokenLatency(0.004);
    replica->OnFinished(FinishReason::kCancelled, 0.5, 1.5);
    replica->OnLoad(2, 1, 0.25);
    metrics.OnModelLoaded("m", "cpu", 1.25);
    metrics.OnDeviceMemory("cpu", 1000);
    const std::string text = Scrape(registry);
    const std::string l = "{device=\"cpu\",model=\"m\"}";
    EXPECT_TRUE(Has(text, "hearth_worker_prompt_tokens_total" + l + " 40"));
    EXPECT_TRUE(Has(text, "hearth_worker_generation_tokens_total" + l + " 5"));
    EXPECT_TRUE(Has(text, "hearth_worker_batch_size_count" + l + " 2"));
    EXPECT_TRUE(Has(text, "hearth_worker_iteration_tokens_sum" + l + " 45"));
    EXPECT_TRUE(Has(text,
                    "hearth_worker_request_finished_total{device=\"cpu\","
                    "finished_reason=\"cancelled\",model=\"m\"} 1"));
    EXPECT_TRUE(Has(text,
                    "hearth_worker_request_finished_total{device=\"cpu\","
                    "finished_reason=\"stop\",model=\"m\"} 0"));
    EXPECT_TRUE(Has(text, "hearth_worker_requests_running" + l + " 2"));
    EXPECT_TRUE(Has(text, "hearth_worker_requests_waiting" + l + " 1"));
    EXPECT_TRUE(Has(text, "hearth_worker_kv_cache_usage_ratio" + l + " 0.25"));
    EXPECT_TRUE(Has(
        text, "hearth_worker_e2e_request_latency_seconds_sum" + l + " 1.5"));
    EXPECT_TRUE(
        Has(text, "hearth_worker_request_queue_time_seconds_sum" + l + " 0.5"));
    EXPECT_TRUE(Has(
        text, "hearth_worker_time_to_first_token_seconds_count" + l + " 1"));
    EXPECT_TRUE(Has(
        text, "hearth_worker_inter_token_latency_seconds_count" + l + " 1"));
    EXPECT_TRUE(
        Has(text, "hearth_worker_model_load_duration_seconds" + l + " 1.25"));
    EXPECT_TRUE(Has(
        text, "hearth_worker_device_memory_used_bytes{device=\"cpu\"} 1000"));
  }
  // The replica is gone (model unloaded): its gauges go, its counters stay.
  const std::string text = Scrape(registry);
  EXPECT_FALSE(Has(text, "hearth_worker_requests_running{"));
  EXPECT_FALSE(Has(text, "hearth_worker_kv_cache_usage_ratio{"));
  EXPECT_TRUE(Has(text, "hearth_worker_generation_tokens_total{"));
  // A new replica of the same model continues the counters.
  auto again = metrics.ForReplica("m", "cpu");
  again->OnStep(1, 0, 1);
  EXPECT_TRUE(Has(Scrape(registry),
                  "hearth_worker_generation_tokens_total{device=\"cpu\","
                  "model=\"m\"} 6"));
}

}  // namespace
}  // namespace hearth::worker
