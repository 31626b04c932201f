#include "services/worker/worker_metrics.h"

#include <array>

namespace hearth::worker {
namespace {

using prometheus::Histogram;

// vLLM's TTFT buckets, with finer steps at the low end where small models on
// CPUs and GPUs live.
const Histogram::BucketBoundaries& TtftBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,
      0.75,  1.0,    2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0};
  return *b;
}

const Histogram::BucketBoundaries& ItlBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,  0.15,
      0.2,    0.3,   0.4,    0.5,   0.75, 1.0,   2.5,  5.0,   10.0, 20.0};
  return *b;
}

const Histogram::BucketBoundaries& RequestBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.01, 0.05, 0.1,  0.3,  0.5,  0.8,   1.0,   1.5,   2.0,   2.5,   5.0,
      10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0};
  return *b;
}

const Histogram::BucketBoundaries& CountBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
  return *b;
}

constexpr std::array<FinishReason, 5> kReasons = {
    FinishReason::kStop, FinishReason::kLength, FinishReason::kEos,
    FinishReason::kCancelled, FinishReason::kError};

}  // namespace

// The children of one (model, device); created once so that the per-token
// calls are a lock-free increment or one histogram observation.
class ReplicaMetrics : public ReplicaObserver {
 public:
  ReplicaMetrics(WorkerMetrics& m, const std::string& model,
                 const std::string& device)
      : m_(m) {
    const prometheus::Labels labels{{"model", model}, {"device", device}};
    running_ = &m.running_.Add(labels);
    waiting_ = &m.waiting_.Add(labels);
    kv_usage_ = &m.kv_usage_.Add(labels);
    for (size_t i = 0; i < kReasons.size(); ++i) {
      prometheus::Labels l = labels;
      l["finished_reason"] = std::string(FinishReasonLabel(kReasons[i]));
      finished_[i] = &m.finished_.Add(l);
    }
    prompt_tokens_ = &m.prompt_tokens_.Add(labels);
    generation_tokens_ = &m.generation_tokens_.Add(labels);
    ttft_ = &m.ttft_.Add(labels, TtftBuckets());
    itl_ = &m.itl_.Add(labels, ItlBuckets());
    e2e_ = &m.e2e_.Add(labels, RequestBuckets());
    queue_time_ = &m.queue_time_.Add(labels, RequestBuckets());
    batch_size_ = &m.batch_size_.Add(labels, CountBuckets());
    iteration_tokens_ = &m.iteration_tokens_.Add(labels, CountBuckets());
  }

  ~ReplicaMetrics() override {
    // A model that is gone has no load; drop its gauges rather than leave
    // stale values behind.
    m_.running_.Remove(running_);
    m_.waiting_.Remove(waiting_);
    m_.kv_usage_.Remove(kv_usage_);
  }

  void OnStep(int64_t sequences, int64_t prompt_tokens,
              int64_t generated_tokens) override {
    batch_size_->Observe(static_cast<double>(sequences));
    iteration_tokens_->Observe(
        static_cast<double>(prompt_tokens + generated_tokens));
    if (prompt_tokens > 0) {
      prompt_tokens_->Increment(static_cast<double>(prompt_tokens));
    }
    if (generated_tokens > 0) {
      generation_tokens_->Increment(static_cast<double>(generated_tokens));
    }
  }
  void OnFirstToken(double seconds) override { ttft_->Observe(seconds); }
  void OnInterTokenLatency(double seconds) override { itl_->Observe(seconds); }
  void OnFinished(FinishReason reason, double queue_seconds,
                  double e2e_seconds) override {
    for (size_t i = 0; i < kReasons.size(); ++i) {
      if (kReasons[i] == reason) finished_[i]->Increment();
    }
    queue_time_->Observe(queue_seconds);
    e2e_->Observe(e2e_seconds);
  }
  void OnLoad(int64_t running, int64_t waiting, double kv_usage) override {
    running_->Set(static_cast<double>(running));
    waiting_->Set(static_cast<double>(waiting));
    kv_usage_->Set(kv_usage);
  }

 private:
  WorkerMetrics& m_;
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_usage_;
  std::array<prometheus::Counter*, kReasons.size()> finished_{};
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* itl_;
  prometheus::Histogram* e2e_;
  prometheus::Histogram* queue_time_;
  prometheus::Histogram* batch_size_;
  prometheus::Histogram* iteration_tokens_;
};

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry)
    : running_(prometheus::BuildGauge()
                   .Name("hearth_worker_requests_running")
                   .Help("Sequences in the running batch (vLLM "
                         "num_requests_running).")
                   .Register(registry)),
      waiting_(prometheus::BuildGauge()
                   .Name("hearth_worker_requests_waiting")
                   .Help("Sequences accepted and waiting for admission (vLLM "
                         "num_requests_waiting).")
                   .Register(registry)),
      finished_(prometheus::BuildCounter()
                    .Name("hearth_worker_request_finished_total")
                    .Help("Finished sequences by finish reason.")
                    .Register(registry)),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("hearth_worker_prompt_tokens_total")
                         .Help("Prompt tokens prefilled.")
                         .Register(registry)),
      generation_tokens_(prometheus::BuildCounter()
                             .Name("hearth_worker_generation_tokens_total")
                             .Help("Tokens generated.")
                             .Register(registry)),
      ttft_(prometheus::BuildHistogram()
                .Name("hearth_worker_time_to_first_token_seconds")
                .Help("Time from arrival (at the gateway) to the first "
                      "generated token.")
                .Register(registry)),
      itl_(prometheus::BuildHistogram()
               .Name("hearth_worker_inter_token_latency_seconds")
               .Help("Time between consecutive tokens of a sequence.")
               .Register(registry)),
      e2e_(prometheus::BuildHistogram()
               .Name("hearth_worker_e2e_request_latency_seconds")
               .Help("Time from arrival (at the gateway) to the last token.")
               .Register(registry)),
      queue_time_(prometheus::BuildHistogram()
                      .Name("hearth_worker_request_queue_time_seconds")
                      .Help("Time in the gateway's and the worker's queues "
                            "before the first step.")
                      .Register(registry)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("hearth_worker_batch_size")
                      .Help("Sequences per model step.")
                      .Register(registry)),
      iteration_tokens_(prometheus::BuildHistogram()
                            .Name("hearth_worker_iteration_tokens")
                            .Help("Tokens (prompt chunks + decode) per model "
                                  "step.")
                            .Register(registry)),
      kv_usage_(prometheus::BuildGauge()
                    .Name("hearth_worker_kv_cache_usage_ratio")
                    .Help("Fraction of the KV-cache blocks in use (0-1).")
                    .Register(registry)),
      memory_(prometheus::BuildGauge()
                  .Name("hearth_worker_device_memory_used_bytes")
                  .Help("Bytes of weights and KV caches the worker holds on "
                        "the device.")
                  .Register(registry)),
      load_duration_(prometheus::BuildGauge()
                         .Name("hearth_worker_model_load_duration_seconds")
                         .Help("Time the last load of the model onto the "
                               "device took, warm-up included.")
                         .Register(registry)) {}

std::unique_ptr<ReplicaObserver> WorkerMetrics::ForReplica(
    const std::string& model, const std::string& device) {
  return std::make_unique<ReplicaMetrics>(*this, model, device);
}

void WorkerMetrics::OnModelLoaded(const std::string& model,
                                  const std::string& device, double seconds) {
  load_duration_.Add({{"model", model}, {"device", device}}).Set(seconds);
}

void WorkerMetrics::OnDeviceMemory(const std::string& device, int64_t bytes) {
  memory_.Add({{"device", device}}).Set(static_cast<double>(bytes));
}

}  // namespace hearth::worker
