// The gateway's view of its hearth-workers: who they are, whether they are
// alive, what they have loaded and how busy they are.
//
// Workers come from a static list of host:port addresses, a DNS name that
// resolves to many addresses (a Kubernetes headless service; re-resolved every
// `resolve_interval`), or both. Every `poll_interval` each worker is asked for
// hearth.v1.Worker/GetStatus; the answer (models READY, free KV cache, queue
// length, `accepting`) drives dispatch. A worker whose poll fails, or whose
// Execute stream breaks, is unhealthy at once and gets no work until a poll
// succeeds again; its in-flight calls are cancelled when a poll confirms it
// is gone (so a stopped-but-connected worker cannot hang requests).
//
// Capacity is counted in batches: Acquire() hands out a Lease on the
// least-loaded worker that has the model READY and fewer than
// `max_inflight_batches` batches of it in flight. Keeping the queue in the
// gateway rather than in the worker is deliberate: there it has priorities, a
// bound, timeouts and metrics, and unstarted requests can move to another
// worker when one dies.
//
// Thread-safe. Polls run on gRPC's callback threads; one background thread
// schedules them.
//
// Channel lifetime. The pool owns every worker's channel until it is
// destroyed (handles that leave DNS are retired, not dropped), and every
// asynchronous call on a worker (polls, Execute streams, Cancel and admin
// rpcs) holds a CallToken that Stop() waits for. So the last reference to a
// channel always goes on the thread that destroys the pool, never on a gRPC
// callback thread. That matters: gRPC 1.51 on Linux runs client callbacks on
// one shared CompletionQueue whose threads are joined and whose queue is
// freed when the last channel using it goes; a channel released on one of
// those threads joins itself and then polls the freed queue ("assertion
// failed: prior > 0" or a segfault in grpc_completion_queue_next).
#ifndef HEARTH_SERVICES_GATEWAY_WORKER_POOL_H_
#define HEARTH_SERVICES_GATEWAY_WORKER_POOL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hearth/v1/worker.grpc.pb.h"

namespace grpc {
class ChannelCredentials;
class ClientContext;
}  // namespace grpc

namespace hearth::gateway {

struct WorkerPoolOptions {
  // host:port of each worker.
  std::vector<std::string> static_workers;
  // "name:port" resolved with getaddrinfo to every address it has; empty =
  // none.
  std::string dns_name;
  absl::Duration resolve_interval = absl::Seconds(10);
  absl::Duration poll_interval = absl::Milliseconds(200);
  absl::Duration poll_timeout = absl::Seconds(1);
  // Batches of one model in flight on one worker at most.
  int max_inflight_batches = 4;
  // Plaintext when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

// Splits "a:1,b:2" (spaces allowed) into addresses; errors name `flag`.
absl::StatusOr<std::vector<std::string>> ParseWorkerList(
    absl::string_view list, absl::string_view flag);

class WorkerPool;

// One hearth-worker.
class WorkerHandle {
 public:
  WorkerHandle(std::string address,
               std::shared_ptr<grpc::ChannelCredentials> credentials);
  ~WorkerHandle();

  const std::string& address() const { return address_; }
  hearth::v1::Worker::Stub* stub() { return stub_.get(); }

  // Calls in flight on this worker register themselves so that they can be
  // cancelled when the worker is declared gone. `cancel` runs with no lock.
  uint64_t RegisterCall(std::function<void()> cancel);
  void UnregisterCall(uint64_t id);

  int64_t inflight_sequences() const { return inflight_sequences_.load(); }
  void AddSequences(int64_t n) { inflight_sequences_.fetch_add(n); }

 private:
  friend class WorkerPool;
  void CancelAllCalls();

  const std::string address_;
  std::unique_ptr<hearth::v1::Worker::Stub> stub_;
  std::atomic<int64_t> inflight_sequences_{0};

  absl::Mutex calls_mu_;
  uint64_t next_call_id_ ABSL_GUARDED_BY(calls_mu_) = 1;
  std::map<uint64_t, std::function<void()>> calls_ ABSL_GUARDED_BY(calls_mu_);
};

// What the pool knows about a model, for routing and error codes.
enum class ModelAvailability {
  kUnknown,   // no worker lists it: NOT_FOUND
  kNotReady,  // listed, but no healthy accepting worker has it READY
  kReady,
};

struct WorkerSnapshot {
  std::string address;
  bool healthy = false;
  bool accepting = false;
  std::string last_error;
  hearth::v1::WorkerStatus status;
  int64_t inflight_batches = 0;  // all models
  int64_t inflight_sequences = 0;
};

class WorkerPool {
 public:
  // Holds one batch slot of `model` on `worker`; returning it (destruction
  // or Release()) frees the slot and wakes waiters.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept { *this = std::move(other); }
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { Release(); }

    void Release();
    explicit operator bool() const { return worker_ != nullptr; }
    const std::shared_ptr<WorkerHandle>& worker() const { return worker_; }

   private:
    friend class WorkerPool;
    WorkerPool* pool_ = nullptr;
    std::shared_ptr<WorkerHandle> worker_;
    std::string model_;
  };

  // Held by the object that owns an asynchronous call's ClientContext, as
  // its first member so that it goes last: while any token lives, Stop()
  // waits and the pool (with the channels) stays.
  class CallToken {
   public:
    CallToken() = default;
    CallToken(CallToken&& other) noexcept { *this = std::move(other); }
    CallToken& operator=(CallToken&& other) noexcept;
    CallToken(const CallToken&) = delete;
    CallToken& operator=(const CallToken&) = delete;
    ~CallToken() { Release(); }
    void Release();

   private:
    friend class WorkerPool;
    WorkerPool* pool_ = nullptr;
  };

  explicit WorkerPool(WorkerPoolOptions options);
  // Stop()s.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Resolves, polls once (waiting up to poll_timeout) and starts the
  // background poller.
  void Start();
  // Stops polling, cancels the calls still registered on workers and waits
  // until every CallToken is gone. Idempotent.
  void Stop();
  // A token for one asynchronous call on a worker (see CallToken).
  CallToken TrackCall();
  // Polls every worker now and waits for the answers (tests, after a load).
  void PollNow();
  // Polls every worker now without waiting (from callback threads).
  void RequestPoll() { PollAll(/*wait=*/false); }

  // The least-loaded healthy, accepting worker with `model` READY and a free
  // batch slot, skipping `exclude`; an empty Lease when there is none.
  Lease Acquire(const std::string& model,
                const absl::flat_hash_set<const WorkerHandle*>& exclude = {});
  // Blocks until Acquire() might succeed for `model` (a slot freed or the
  // pool changed) or `timeout` passes.
  void WaitForChange(absl::Duration timeout);

  ModelAvailability Availability(const std::string& model);
  // Model info merged over workers: the first worker's LoadedModel with the
  // best state, plus how many healthy workers hold it READY.
  struct ModelSummary {
    hearth::v1::LoadedModel model;
    int ready_replicas = 0;
  };
  std::vector<ModelSummary> Models();
  bool AnyModelReady();

  // Takes `worker` out of rotation until a poll succeeds; `why` is logged
  // once per transition. Does not cancel its calls (the stream that failed
  // already ended; others end on their own when the connection is gone).
  void MarkUnhealthy(const WorkerHandle* worker, absl::string_view why);
  // Marks `model` not READY on `worker` until the next poll (it refused it).
  void MarkModelGone(const WorkerHandle* worker, const std::string& model);

  std::vector<WorkerSnapshot> Snapshot();
  // Healthy workers (for admin fan-out such as load/unload).
  std::vector<std::shared_ptr<WorkerHandle>> HealthyWorkers();

  // Called (without locks) after each poll round; for metrics.
  void SetOnPoll(std::function<void()> callback);

  const WorkerPoolOptions& options() const { return options_; }

 private:
  struct Entry {
    std::shared_ptr<WorkerHandle> handle;
    bool healthy = false;
    bool ever_polled = false;
    int consecutive_failures = 0;
    std::string last_error;
    hearth::v1::WorkerStatus status;
    // model -> batches in flight on this worker.
    std::map<std::string, int> inflight;
    int64_t total_inflight = 0;
    absl::flat_hash_set<std::string> gone_models;  // until the next poll
    bool poll_in_flight = false;
  };

  void Resolve();
  void PollAll(bool wait);
  void OnPollResult(const std::string& address, const grpc::Status& status,
                    const hearth::v1::WorkerStatus& result);
  void ReleaseSlot(const WorkerHandle* worker, const std::string& model);
  bool ModelReadyOn(const Entry& entry, const std::string& model) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void RunLoop();
  bool NoCallsOutstanding() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const WorkerPoolOptions options_;

  absl::Mutex mu_;
  absl::CondVar changed_;
  uint64_t change_epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Entry> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> dns_addresses_ ABSL_GUARDED_BY(mu_);
  std::function<void()> on_poll_ ABSL_GUARDED_BY(mu_);
  int polls_outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  int calls_outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  // Handles that left DNS; kept until no call uses them (see above).
  std::vector<std::shared_ptr<WorkerHandle>> retired_ ABSL_GUARDED_BY(mu_);

  absl::Mutex loop_mu_;
  bool stop_ ABSL_GUARDED_BY(loop_mu_) = false;
  std::thread loop_;
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_WORKER_POOL_H_
