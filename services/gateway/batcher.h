// A per-model dynamic batcher with Triton's semantics.
//
// Requests wait in a bounded queue with priority levels (1 is the highest, as
// in Triton; FIFO within a level). A dispatcher thread that has capacity calls
// NextBatch(), which forms a batch the way Triton's dynamic batcher does
// (reference/serving-anchors.md §1.4):
//
//   1. Take requests in priority order, up to max_batch_size (and, if set,
//      max_batch_tokens of summed cost).
//   2. If one of preferred_batch_sizes can be formed, send the largest one
//      that can, now.
//   3. Otherwise, if the batch is full, send it now.
//   4. Otherwise hold it until the oldest queued request has waited
//      max_queue_delay, then send what there is.
//
// The defaults batch without tuning: max_batch_size 16 and a 2 ms delay.
// Triton's default delay is 0, under which a batch is sent as soon as a single
// request is there, so under moderate load nothing ever batches and users
// conclude that "dynamic batching does not work" (triton-inference-server
// issues 3624, 8094). 2 ms is small beside the tens of milliseconds an LLM
// step takes, and long enough for concurrent clients to meet in one batch.
// The queue is bounded (1024) by default because an unbounded queue turns
// overload into timeouts instead of a fast UNAVAILABLE a load balancer can
// act on.
//
// A request that waits longer than its queue timeout is removed and its
// `on_reject` callback gets UNAVAILABLE "request timeout expired in queue".
// Expiry is checked whenever the batcher is entered (Enqueue, NextBatch, which
// also wakes up for the earliest deadline, RejectExpired, stats), so a
// gateway whose dispatchers are all busy should call RejectExpired() on a
// timer. Callbacks run on the calling thread without the batcher's lock held.
//
// Time comes from an injectable Clock so tests can step it; blocking waits in
// NextBatch() use real time, so tests with a ManualClock use TryNextBatch().
#ifndef HEARTH_SERVICES_GATEWAY_BATCHER_H_
#define HEARTH_SERVICES_GATEWAY_BATCHER_H_

#include <any>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "yaml-cpp/yaml.h"

namespace hearth::gateway {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // The process-wide wall clock (absl::Now()).
  static const Clock* Real();
};

// A clock that moves only when told to. Thread-safe.
class ManualClock : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::UnixEpoch()) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

struct BatcherOptions {
  int max_batch_size = 16;
  absl::Duration max_queue_delay = absl::Microseconds(2000);
  // Sizes in [1, max_batch_size]; kept sorted ascending by Validate().
  std::vector<int> preferred_batch_sizes;
  int priority_levels = 1;
  int default_priority_level = 1;
  int64_t max_queue_size = 1024;  // 0 = unbounded
  // Queue timeout for requests that set none; zero = wait indefinitely.
  absl::Duration default_timeout = absl::ZeroDuration();
  // Cap on the summed `cost` (tokens) of one batch; 0 = none. A single
  // request over the cap still goes out alone rather than starve.
  int64_t max_batch_tokens = 0;

  // Checks ranges and sorts preferred sizes; errors are prefixed by `path`
  // (e.g. "batching.models.tiny") and name the field.
  absl::Status Validate(absl::string_view path);
};

// Reads the fields of one batcher mapping over `base` (so a model inherits
// the defaults it does not override):
//   max_batch_size, max_queue_delay_microseconds, preferred_batch_sizes,
//   priority_levels, default_priority_level, max_queue_size,
//   default_timeout_microseconds, max_batch_tokens.
// Unknown keys are errors, since a misspelt knob silently ignored is the
// classic batching misconfiguration. Errors read e.g.
// `batching.models.tiny.max_batch_size: must be >= 1 (got 0)`.
absl::StatusOr<BatcherOptions> BatcherOptionsFromYaml(
    const YAML::Node& node, absl::string_view path,
    const BatcherOptions& base = BatcherOptions());

// The gateway config's `batching` section:
//   batching:
//     defaults: {max_batch_size: 16, max_queue_delay_microseconds: 2000}
//     models:
//       tiny-student: {max_batch_size: 8, preferred_batch_sizes: [4, 8]}
struct BatchingConfig {
  BatcherOptions defaults;
  std::map<std::string, BatcherOptions> models;

  const BatcherOptions& ForModel(const std::string& model) const;
};
// A null or absent node yields the defaults.
absl::StatusOr<BatchingConfig> ParseBatchingConfig(
    const YAML::Node& batching, absl::string_view path = "batching");

struct QueuedRequest {
  uint64_t id = 0;  // the caller's, for logs and tracing
  // 0 = the model's default level; 1 is the highest. Levels past
  // priority_levels are clamped to the lowest. Enqueue() stores the level
  // actually used.
  int priority = 0;
  // Longest time to wait in the queue; zero = the model's default. Enqueue()
  // stores the timeout actually used.
  absl::Duration timeout = absl::ZeroDuration();
  int64_t cost = 1;  // tokens (prompt + max_new_tokens), for max_batch_tokens
  std::any payload;
  // Called at most once, only if the batcher drops the request after having
  // accepted it (queue timeout, shutdown). Not called when Enqueue() fails,
  // nor for requests handed out by NextBatch().
  std::function<void(const absl::Status&)> on_reject;
  absl::Time enqueue_time;  // set by Enqueue()
};

struct BatcherStats {
  int64_t queued = 0;
  std::vector<int64_t> queued_per_level;  // index 0 is level 1
  int64_t queued_tokens = 0;
  absl::Duration oldest_wait = absl::ZeroDuration();
  uint64_t enqueued_total = 0;
  uint64_t rejected_full_total = 0;
  uint64_t rejected_timeout_total = 0;
  uint64_t rejected_shutdown_total = 0;
  uint64_t batches_total = 0;
  uint64_t batched_requests_total = 0;
};

class DynamicBatcher {
 public:
  // `options` must have passed Validate(); `clock` must outlive the batcher.
  DynamicBatcher(std::string model, BatcherOptions options,
                 const Clock* clock = Clock::Real());
  // Shuts down (rejecting whatever is still queued).
  ~DynamicBatcher();
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues `request`, or fails at once: UNAVAILABLE when the queue is full
  // or the batcher is shut down, INVALID_ARGUMENT for a negative priority,
  // timeout or cost.
  absl::Status Enqueue(QueuedRequest request);

  // Blocks up to `wait` for a batch and returns it in priority/FIFO order;
  // returns an empty batch when `wait` passes without one or on shutdown.
  absl::StatusOr<std::vector<QueuedRequest>> NextBatch(absl::Duration wait);
  // Forms a batch if one is due at the clock's current time; never blocks.
  std::vector<QueuedRequest> TryNextBatch();

  // Puts requests handed out by NextBatch() but never started (their worker
  // died) back at the head of their levels, keeping their enqueue times and
  // deadlines; the size bound does not apply because they were admitted.
  void Requeue(std::vector<QueuedRequest> requests);

  // Rejects requests whose queue timeout has passed; returns how many.
  int RejectExpired();

  // Rejects everything queued with UNAVAILABLE, refuses new requests and
  // wakes every NextBatch() caller. Idempotent.
  void Shutdown();

  BatcherStats stats();
  const std::string& model() const { return model_; }
  const BatcherOptions& options() const { return options_; }

 private:
  struct Entry;
  using EntryList = std::list<Entry>;
  using ExpiryMap = std::multimap<absl::Time, EntryList::iterator>;
  struct Entry {
    QueuedRequest request;
    bool has_deadline = false;
    ExpiryMap::iterator expiry;
  };

  void InsertLocked(QueuedRequest request, bool at_front)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TakeExpiredLocked(absl::Time now, std::vector<QueuedRequest>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns the batch due at `now`, or an empty one and sets `*wake` to when
  // something may change (a delay running out or a deadline).
  std::vector<QueuedRequest> FormBatchLocked(absl::Time now, absl::Time* wake)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  QueuedRequest PopLocked(EntryList& level, EntryList::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RejectAll(std::vector<QueuedRequest>& requests,
                 const absl::Status& status);
  absl::Status TimeoutStatus() const;
  absl::Status ShutdownStatus() const;

  const std::string model_;
  const BatcherOptions options_;
  const Clock* const clock_;

  absl::Mutex mu_;
  absl::CondVar cv_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<EntryList> levels_ ABSL_GUARDED_BY(mu_);
  ExpiryMap expiries_ ABSL_GUARDED_BY(mu_);
  int64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t queued_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  BatcherStats counters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_BATCHER_H_
