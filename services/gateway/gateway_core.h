// What every public generation rpc does between authentication and the
// dispatcher, whatever protocol it came in: validate the request (errors name
// the field, in the caller's protocol's spelling), count prompt tokens, check
// the context length, reserve the caller's token budget, cap its priority,
// submit, and on completion refund unused tokens and record metrics and
// per-model statistics. Front ends (generation_service, kserve_service) turn
// their protos into a hearth.v1.GenerateRequest and call Generate().
#ifndef HEARTH_SERVICES_GATEWAY_GATEWAY_CORE_H_
#define HEARTH_SERVICES_GATEWAY_GATEWAY_CORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hearth/v1/generation.pb.h"
#include "services/gateway/dispatcher.h"
#include "services/gateway/edge.h"
#include "services/gateway/tokenizer_cache.h"
#include "services/gateway/worker_pool.h"

namespace hearth::gateway {

class GatewayMetrics;

struct GatewayCoreOptions {
  int64_t max_prompt_bytes = 1 << 20;
  int64_t max_prompt_tokens = 1 << 20;
  // What max_new_tokens 0 means for a model whose worker reports no
  // default_max_new_tokens (workers report generation_config.json's, or 128).
  uint32_t default_max_new_tokens = 128;
  int max_stop_strings = 16;
  int64_t max_stop_bytes = 256;
  int64_t max_request_id_bytes = 256;
};

// How a protocol spells the fields, so that errors name what the client sent.
struct FieldNames {
  std::string model = "model";
  std::string prompt = "prompt";
  std::string prompt_token_ids = "prompt_token_ids";
  // Prepended to sampling field names ("sampling." for hearth.v1).
  std::string sampling_prefix = "sampling.";
  std::string max_new_tokens = "max_new_tokens";
  std::string seed = "seed";
  std::string request_id = "request_id";
};

// Per-model counters in the shape of KServe's ModelStatistics.
struct ModelStats {
  uint64_t success_count = 0;
  uint64_t success_ns = 0;
  uint64_t fail_count = 0;
  uint64_t fail_ns = 0;
  uint64_t queue_count = 0;
  uint64_t queue_ns = 0;
  uint64_t infer_ns = 0;
  uint64_t last_inference_ms = 0;
};

class GatewayCore {
 public:
  // All pointers must outlive the core; `metrics` may be null.
  GatewayCore(GatewayCoreOptions options, WorkerPool* pool,
              Dispatcher* dispatcher, Edge* edge, TokenizerCache* tokenizers,
              GatewayMetrics* metrics);

  // Validates, admits and submits; `observer` hears the outcome unless this
  // returns an error. `rpc` labels metrics.
  absl::StatusOr<std::shared_ptr<Ticket>> Generate(
      const Caller& caller, const hearth::v1::GenerateRequest& request,
      absl::Time deadline, absl::string_view rpc,
      std::shared_ptr<GenerationObserver> observer,
      const FieldNames& names = FieldNames());

  absl::StatusOr<hearth::v1::TokenizeResponse> Tokenize(
      const hearth::v1::TokenizeRequest& request);

  // Models served, restricted to those the caller may use.
  hearth::v1::ListModelsResponse ListModels(const Caller& caller);

  std::map<std::string, ModelStats> Stats();

  WorkerPool* pool() { return pool_; }
  Dispatcher* dispatcher() { return dispatcher_; }
  Edge* edge() { return edge_; }
  GatewayMetrics* metrics() { return metrics_; }

  // Checks `sampling` ranges (also used by the KServe codec's tests).
  static absl::Status ValidateSampling(const hearth::v1::SamplingParams& s,
                                       const FieldNames& names);

 private:
  class AccountingObserver;
  void Record(const std::string& model, bool ok, absl::Duration total,
              double queue_seconds);

  const GatewayCoreOptions options_;
  WorkerPool* const pool_;
  Dispatcher* const dispatcher_;
  Edge* const edge_;
  TokenizerCache* const tokenizers_;
  GatewayMetrics* const metrics_;

  absl::Mutex stats_mu_;
  std::map<std::string, ModelStats> stats_ ABSL_GUARDED_BY(stats_mu_);
};

// The first invalid UTF-8 byte offset in `text`, or -1 when it is valid.
int64_t FirstInvalidUtf8(absl::string_view text);

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_GATEWAY_CORE_H_
