// The worker's inference engine: model replicas on devices, continuous
// batching, streaming, cancellation. No gRPC here (worker_service.h translates
// protos to these calls), so the engine is tested and benchmarked in-process.
//
//   EngineOptions options;
//   options.model_repository = "models";
//   options.devices = {"cpu"};
//   HEARTH_ASSIGN_OR_RETURN(auto engine, Engine::Create(options));
//   HEARTH_RETURN_IF_ERROR(engine->LoadModel("tiny").status());
//   GenerationRequest r;
//   r.sequence_id = "a";
//   r.prompt = "Once upon a time";
//   r.sampling.max_new_tokens = 32;
//   auto accepted = engine->Submit("tiny", {r}, [](SequenceEvent&& e) { ... });
//
// Replicas. Each device in EngineOptions::devices gets one replica: a thread
// that owns, for every model loaded on that device, the weights, a KV cache of
// --kv_cache_tokens tokens and a Scheduler (scheduler.h), and loops: take new
// sequences and cancellations, plan a step per model, run it (prefill chunks
// and decode tokens of all its sequences in one LlamaForCausalLM::Step), sample
// each sequence's next token with its own seeded Sampler, and deliver events.
// New sequences join at the next step; finished ones leave at once and free
// their KV blocks. A request is placed on the least loaded replica that holds
// its model.
//
// CPU threads. libtorch's intra-op parallelism on CPU is OpenMP (or its own
// pool), configured per calling thread for OpenMP and process-wide otherwise;
// OpenBLAS's pool is process-wide. Each CPU replica thread therefore calls
// model::SetCpuThreads(threads / number of CPU replicas) on itself, and every
// replica sets the same value so that the process-wide pools agree. With OpenMP
// (Debian's and PyTorch's builds) each replica then gets its own team of that
// size; with a shared pool the replicas share it. CUDA replicas use one CPU
// thread (sampling and bookkeeping); their compute runs on the GPU.
//
// Events. The callback given to Submit() is called on a replica thread, once
// per generated token or so (tokens and the text they complete), and exactly
// once with finish_reason set, after which it is never called again for that
// sequence. It must not block (hand the event to an I/O queue).
//
// Cancellation and deadlines take effect at the next step boundary: the
// sequence's last event says kCancelled and its KV blocks are free before the
// next step runs.
//
// Thread-safe: every public method may be called from any thread.
#ifndef HEARTH_SERVICES_WORKER_ENGINE_H_
#define HEARTH_SERVICES_WORKER_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/worker/model_registry.h"

namespace hearth::worker {

enum class FinishReason { kNone, kLength, kStop, kEos, kCancelled, kError };

// "length", "stop", "eos", "cancelled", "error" (metric label values); "" for
// kNone.
std::string_view FinishReasonLabel(FinishReason reason);

// Sampling as the Worker API carries it. Unset optionals take the model's
// generation_config.json defaults (temperature and top_p only when it says
// do_sample), then hearth's: greedy.
struct RequestSampling {
  // 0 = the model's default (DefaultMaxNewTokens), capped so that prompt +
  // new tokens fit the context and the KV cache. Negative, or an explicit
  // value that does not fit, is an error naming the field.
  int64_t max_new_tokens = 0;
  std::optional<double> temperature;
  int64_t top_k = 0;
  std::optional<double> top_p;
  std::optional<double> repetition_penalty;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int64_t> stop_token_ids;
  bool ignore_eos = false;
};

struct GenerationRequest {
  // Unique among the worker's running sequences; empty = the engine picks one.
  std::string sequence_id;
  // Exactly one of these: text (tokenized with the model's tokenizer, special
  // tokens such as BOS added) or ids (used as given).
  std::string prompt;
  std::vector<int32_t> prompt_token_ids;
  RequestSampling sampling;
  uint32_t priority = 0;  // 1 = most urgent; 0 = default level.
  std::optional<absl::Time> deadline;
  // Time already spent in the gateway's queue; included in reported timings.
  double gateway_queue_seconds = 0;
};

struct SequenceTiming {
  double queue_seconds = 0;                // Gateway + worker queue.
  double time_to_first_token_seconds = 0;  // 0 when no token was produced.
  double total_seconds = 0;
};

struct SequenceEvent {
  std::string sequence_id;
  std::vector<int32_t> token_ids;  // New since the previous event.
  std::string text;                // New complete UTF-8 text.
  FinishReason finish_reason = FinishReason::kNone;
  // Set on the final event.
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  SequenceTiming timing;
  absl::Status error;  // finish_reason == kError.
};

using EventCallback = std::function<void(SequenceEvent&&)>;

// Submit()'s answer for one request.
struct Admission {
  // OK: accepted, events follow. Otherwise why it was refused (no events).
  absl::Status status;
  // The request's id, or the one the engine picked when it was empty.
  std::string sequence_id;
};

// Per model-replica instrumentation (worker_metrics.h implements it with
// Prometheus). Called on the replica's thread.
class ReplicaObserver {
 public:
  virtual ~ReplicaObserver() = default;
  // One model step: sequences in it, prompt tokens it consumed, tokens it
  // generated.
  virtual void OnStep(int64_t sequences, int64_t prompt_tokens,
                      int64_t generated_tokens) = 0;
  virtual void OnFirstToken(double time_to_first_token_seconds) = 0;
  virtual void OnInterTokenLatency(double seconds) = 0;
  virtual void OnFinished(FinishReason reason, double queue_seconds,
                          double e2e_seconds) = 0;
  // Load after a step (or after sequences came or left).
  virtual void OnLoad(int64_t running, int64_t waiting,
                      double kv_usage_ratio) = 0;
};

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual std::unique_ptr<ReplicaObserver> ForReplica(
      const std::string& model, const std::string& device) = 0;
  virtual void OnModelLoaded(const std::string& model,
                             const std::string& device, double seconds) = 0;
  // Bytes the engine holds on a device (weights + KV caches of its models).
  virtual void OnDeviceMemory(const std::string& device, int64_t bytes) = 0;
};

struct EngineOptions {
  std::string model_repository = "models";
  std::vector<std::string> devices = {"cpu"};
  // Per model replica.
  int64_t kv_cache_tokens = 8192;
  int64_t kv_block_size = 16;
  // Tokens (prompt chunks + one per decoding sequence) per model step.
  int64_t max_batch_tokens = 512;
  int64_t max_running_sequences = 128;
  // Accepted but not yet running sequences over the whole worker; more are
  // refused with UNAVAILABLE.
  int64_t max_waiting_sequences = 4096;
  // CPU threads for all CPU replicas together; 0 = all cores.
  int threads = 0;
  std::string dtype = "auto";  // See ReplicaLoadOptions.
  // Not owned; may be null.
  EngineObserver* observer = nullptr;
};

enum class ModelState { kLoading, kReady, kUnloading, kFailed, kUnloaded };

// What max_new_tokens 0 means for a model: generation_config.json's
// max_new_tokens, else 128 (the gateway's --default_max_new_tokens default).
constexpr int64_t kDefaultMaxNewTokens = 128;

struct ModelStatus {
  std::string name;
  ModelState state = ModelState::kUnloaded;
  std::vector<std::string> devices;
  std::string path;
  int64_t context_length = 0;
  int64_t vocab_size = 0;
  // max_new_tokens 0 means this (before capping to the context).
  int64_t default_max_new_tokens = kDefaultMaxNewTokens;
  std::string quantization;
  double load_seconds = 0;
  std::string error;  // kFailed.
};

struct DeviceStatus {
  std::string device;
  int64_t kv_cache_capacity_tokens = 0;  // Over the models on the device.
  int64_t kv_cache_free_tokens = 0;      // Not reserved by running sequences.
  int64_t running_sequences = 0;
  int64_t waiting_sequences = 0;
  int64_t memory_used_bytes = 0;  // Weights + KV caches.
};

struct EngineStatus {
  std::vector<DeviceStatus> devices;
  std::vector<ModelStatus> models;
  int64_t queue_length = 0;
  bool accepting = true;
};

class Engine {
 public:
  // Starts one replica thread per device. InvalidArgument / FailedPrecondition
  // for bad devices or sizes.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      const EngineOptions& options);
  ~Engine();  // Shutdown().
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Loads `name` from `path` (see ResolveModelPath) onto `devices` (empty = all
  // of the engine's), warms each replica up, and returns when the model is
  // READY. Loading a model that is already loaded (or loading) from the same
  // path returns its status once it is READY; from another path is
  // FailedPrecondition (unload it first).
  // A failed load leaves the model FAILED (visible in status) and returns the
  // error.
  absl::StatusOr<ModelStatus> LoadModel(
      const std::string& name, const std::string& path = "",
      const std::vector<std::string>& devices = {});

  // Refuses new sequences for `name`, waits for its accepted ones to finish,
  // and frees its replicas. NotFound when it is not loaded.
  absl::StatusOr<ModelStatus> UnloadModel(const std::string& name);

  // Validates and queues `requests` for `model`. Errors for the whole call:
  // NotFound (unknown model), Unavailable (model loading/unloading, engine
  // draining, queue full), InvalidArgument (no requests). Otherwise one
  // Admission per request: OK = accepted (its events go to `callback`, possibly
  // before Submit returns), else why it was refused (InvalidArgument naming the
  // field, e.g. "sampling.top_p: must be in (0, 1], got 1.5"; AlreadyExists for
  // a sequence id in use), and no events follow for it.
  absl::StatusOr<std::vector<Admission>> Submit(
      const std::string& model, std::vector<GenerationRequest> requests,
      EventCallback callback);

  // Cancels sequences by id (unknown ids are ignored); returns how many were
  // running or waiting.
  int Cancel(const std::vector<std::string>& sequence_ids);

  EngineStatus GetStatus() const;
  std::optional<ModelStatus> GetModel(const std::string& name) const;

  // New submissions get Unavailable; running sequences continue.
  void StopAccepting();
  bool accepting() const { return accepting_.load(); }
  // Cancels every sequence (each gets its final event) and stops the replicas.
  // Idempotent.
  void Shutdown();

  const EngineOptions& options() const { return options_; }
  const std::vector<DeviceSpec>& devices() const { return devices_; }

 private:
  class Replica;
  struct Sequence;
  struct ModelEntry;

  explicit Engine(const EngineOptions& options);
  absl::Status Prepare(const ModelAssets& assets, int64_t kv_capacity,
                       GenerationRequest& request, Sequence& sequence) const;
  void Forget(const std::string& sequence_id);

  EngineOptions options_;
  std::vector<DeviceSpec> devices_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::atomic<bool> accepting_{true};
  std::atomic<bool> shut_down_{false};
  std::atomic<int64_t> next_sequence_number_{1};
  // Accepted sequences that have not had their first step yet.
  std::atomic<int64_t> queued_{0};

  mutable std::mutex models_mu_;
  std::condition_variable models_cv_;  // A load finished.
  std::map<std::string, std::shared_ptr<ModelEntry>> models_;

  mutable std::mutex sequences_mu_;
  std::unordered_map<std::string, std::shared_ptr<Sequence>> sequences_;
};

}  // namespace hearth::worker

#endif  // HEARTH_SERVICES_WORKER_ENGINE_H_
