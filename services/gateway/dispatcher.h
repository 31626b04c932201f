// The dispatcher: per-model dynamic batchers feeding hearth-workers, with
// failover.
//
//   Submit() ─► DynamicBatcher(model) ─► dispatch thread ─► Execute stream on
//                                         (one per model)    the least-loaded
//                                                            worker (a Lease)
//
// Submit() refuses at once what cannot be served: an unknown model
// (NOT_FOUND), a model no healthy worker has READY or a full queue
// (UNAVAILABLE). Each model's dispatch thread waits for a free batch slot on
// some worker, takes the next batch from the batcher and starts one
// hearth.v1.Worker/Execute call for it; events come back on gRPC's callback
// threads and go to each request's GenerationObserver.
//
// Failover. When an Execute stream breaks (the worker died, was drained or
// stopped answering), every request of the batch that had not produced a token
// yet goes back to the head of its queue (DynamicBatcher::Requeue) and runs on
// another worker; so do requests whose observer is Restartable() (a unary call
// has sent nothing to its client yet). A stream that already delivered tokens
// to its client ends with UNAVAILABLE saying how far it got. The worker is
// out of rotation until its next successful poll. Nothing waits forever: a
// request without a worker for `no_worker_grace` is rejected with UNAVAILABLE,
// and requeues are bounded by `max_attempts`.
//
// Cancellation. Ticket::Cancel() (the client cancelled or its deadline passed)
// finishes the request with CANCELLED at once; if it is running, the worker is
// told (Cancel rpc, or the whole Execute call is cancelled when nothing else
// in it is still running). The client's deadline also travels to the worker as
// SequenceRequest.deadline_unix_ms.
#ifndef HEARTH_SERVICES_GATEWAY_DISPATCHER_H_
#define HEARTH_SERVICES_GATEWAY_DISPATCHER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hearth/v1/worker.pb.h"
#include "services/gateway/batcher.h"
#include "services/gateway/worker_pool.h"

namespace hearth::gateway {

class GatewayMetrics;
class ExecuteCall;

// Receives one request's results. Calls are serialized per request and stop
// after OnFinish().
class GenerationObserver {
 public:
  virtual ~GenerationObserver() = default;
  // Every event of the sequence, the last one (finish_reason set) included.
  virtual void OnEvent(const hearth::v1::ExecuteEvent& event) = 0;
  // Exactly once, last. OK only after the final event went to OnEvent().
  virtual void OnFinish(const absl::Status& status) = 0;
  // True when nothing was sent to the client yet even if tokens arrived (the
  // observer buffers), so the request may start over on another worker.
  virtual bool Restartable() const { return false; }
  // Called before a restart: drop what was buffered.
  virtual void OnRestart() {}
};

struct GenerationRequest {
  std::string model;
  // prompt / prompt_token_ids, sampling, priority; sequence_id,
  // deadline_unix_ms and gateway_queue_seconds are filled in here.
  hearth::v1::SequenceRequest sequence;
  // Level in the batcher (0 = the model's default), already capped by the
  // key's max_priority.
  int priority = 0;
  // Longest wait in the queue; zero = the model's default.
  absl::Duration queue_timeout = absl::ZeroDuration();
  // Tokens it may use (prompt + max_new_tokens), for max_batch_tokens.
  int64_t cost = 1;
  // The client's deadline.
  absl::Time deadline = absl::InfiniteFuture();
};

// One submitted request. Shared by the caller, the queue and the Execute call.
class Ticket {
 public:
  // Finishes the request with CANCELLED (unless it already finished) and tells
  // its worker. Idempotent, non-blocking.
  void Cancel();
  bool done() const;
  const std::string& model() const { return request_.model; }
  absl::Time arrival() const { return arrival_; }

 private:
  friend class Dispatcher;
  friend class ExecuteCall;
  enum class State { kQueued, kRunning, kDone };

  Ticket(uint64_t id, GenerationRequest request,
         std::shared_ptr<GenerationObserver> observer);
  // Delivers `event` unless finished; returns false if it was dropped.
  bool Deliver(const hearth::v1::ExecuteEvent& event);
  // Finishes once; later calls do nothing. Returns whether this call did.
  bool Finish(const absl::Status& status);

  const uint64_t id_;
  GenerationRequest request_;
  const std::shared_ptr<GenerationObserver> observer_;
  const absl::Time arrival_;

  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kQueued;
  int attempts_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_delivered_ ABSL_GUARDED_BY(mu_) = 0;
  std::string sequence_id_ ABSL_GUARDED_BY(mu_);
  std::weak_ptr<ExecuteCall> call_ ABSL_GUARDED_BY(mu_);
};

struct DispatcherOptions {
  BatchingConfig batching;
  // Runs per request (first try included) before it fails with UNAVAILABLE.
  int max_attempts = 3;
  // How long queued requests wait while no healthy worker has their model
  // READY before they are rejected with UNAVAILABLE.
  absl::Duration no_worker_grace = absl::Seconds(3);
};

class Dispatcher {
 public:
  // `pool` and `metrics` (may be null) must outlive the dispatcher.
  Dispatcher(WorkerPool* pool, DispatcherOptions options,
             GatewayMetrics* metrics);
  // Shutdown()s.
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Queues `request`; `observer` hears the outcome unless Submit fails.
  absl::StatusOr<std::shared_ptr<Ticket>> Submit(
      GenerationRequest request, std::shared_ptr<GenerationObserver> observer);

  // Rejects everything queued (UNAVAILABLE), refuses new requests, stops the
  // dispatch threads, cancels the Execute calls still running and waits for
  // them to end (so nothing calls into the dispatcher afterwards).
  void Shutdown();

  // Batcher statistics of every model that has a queue.
  std::map<std::string, BatcherStats> QueueStats();
  const BatcherOptions& OptionsFor(const std::string& model) const {
    return options_.batching.ForModel(model);
  }
  // Publishes queue and worker gauges (called after each pool poll).
  void UpdateGauges();

 private:
  friend class ExecuteCall;
  struct ModelQueue;

  ModelQueue* QueueFor(const std::string& model);
  void RunModel(ModelQueue* queue);
  void StartBatch(ModelQueue* queue, WorkerPool::Lease lease,
                  std::vector<QueuedRequest> batch);
  // From an ExecuteCall that ended: put `requests` back (or fail those out of
  // attempts).
  void Requeue(const std::string& model, std::vector<QueuedRequest> requests);
  void RejectQueued(ModelQueue* queue, absl::Duration wait,
                    const absl::Status& status, absl::string_view reason);

  WorkerPool* const pool_;
  const DispatcherOptions options_;
  GatewayMetrics* const metrics_;
  const std::string id_prefix_;
  std::atomic<uint64_t> next_id_{1};

  void CallEnded(uint64_t id);

  absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, std::weak_ptr<ExecuteCall>> calls_ ABSL_GUARDED_BY(mu_);
  uint64_t next_call_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, std::unique_ptr<ModelQueue>> queues_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_DISPATCHER_H_
