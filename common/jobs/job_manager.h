// JobManager: runs durable long-running jobs (quantization, distillation) on
// a few threads, keeping every state change in a JobStore so that a killed
// service picks its jobs up again.
//
//   JobManagerOptions options;
//   options.work_dir = "/var/lib/hearth/quantizer";  // jobs.db, checkpoints/
//   options.id_prefix = "q";
//   HEARTH_ASSIGN_OR_RETURN(auto manager, JobManager::Open(options));
//   manager->RegisterRunner("quantization", [](JobContext& ctx) {
//     for (int layer = FirstUndoneLayer(ctx.checkpoint_dir()); ...) {
//       if (ctx.Cancelled()) return absl::CancelledError("cancelled");
//       ... quantize one layer, save it under ctx.checkpoint_dir() ...
//       ctx.ReportProgress((layer + 1.0) / layers, "layer 7/30: gptq q_proj");
//     }
//     ctx.AddArtifact("model", output_dir);
//     return absl::OkStatus();
//   });
//   manager->Start();
//   HEARTH_ASSIGN_OR_RETURN(JobRecord job,
//                           manager->Create("quantization", spec_json));
//
// States: Create makes a job QUEUED; a runner thread takes it (RUNNING) and
// its JobRunner's return decides the end: OK -> SUCCEEDED, an error -> FAILED
// (the message in `error`), or CANCELLED when Cancel was called meanwhile,
// whatever the runner returned.
//
// Restarts: Open re-queues every job the store holds as QUEUED or RUNNING
// (oldest first). A runner is therefore called again for a job it already
// started, after a Shutdown or a crash; it must resume from what it left in
// checkpoint_dir() (or start over). Shutdown() asks running jobs to stop
// (Cancelled() turns true) but leaves them RUNNING in the store, so they
// resume on the next start.
//
// Thread-safe. Runners run on the manager's threads and must not call
// Shutdown() or destroy the manager.
#ifndef HEARTH_COMMON_JOBS_JOB_MANAGER_H_
#define HEARTH_COMMON_JOBS_JOB_MANAGER_H_

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/jobs/job_store.h"

namespace hearth::jobs {

class JobManager;

struct JobManagerOptions {
  // Holds the store (jobs.db) and checkpoints/<job id>/. Created if missing.
  std::string work_dir;
  // Ids look like "<id_prefix>-20261125-0001".
  std::string id_prefix = "job";
  // Jobs that run at once.
  int num_runners = 1;
  // ReportProgress writes to disk at most this often (a new message is
  // always written); watchers see every report regardless.
  absl::Duration persist_interval = absl::Seconds(1);
  // Checkpoints are kept after a job fails or is cancelled (so it can be
  // inspected or its state reused); after success they only cost disk.
  bool remove_checkpoint_on_success = false;
};

// What a runner sees of its job. Valid only during JobRunner's call.
class JobContext {
 public:
  JobContext(const JobContext&) = delete;
  JobContext& operator=(const JobContext&) = delete;

  const std::string& id() const { return id_; }
  const std::string& kind() const { return kind_; }
  const std::string& spec_json() const { return spec_json_; }
  // A folder for this job's resumable state; it exists, and still holds what
  // the runner left there when the job is resumed after a restart.
  const std::string& checkpoint_dir() const { return checkpoint_dir_; }
  // True when this job was started before (it is being resumed after a
  // restart) rather than starting fresh.
  bool resumed() const { return resumed_; }

  // True once the job was cancelled or the manager is shutting down. Poll it
  // between steps/layers and return soon after it turns true (any status:
  // it is ignored then).
  bool Cancelled();

  // Sets progress (clamped to 0..1) and message, and merges `metrics` into
  // the job's metrics (a name reported once, like "perplexity_before", stays
  // until overwritten). Watchers wake on every call; the store is written
  // when the message changed or persist_interval has passed.
  void ReportProgress(double progress, absl::string_view message,
                      const std::map<std::string, double>& metrics = {});

  // Records a produced file or folder by role ("model", "gguf", "report"),
  // written to the store at once.
  void AddArtifact(absl::string_view role, absl::string_view path);

 private:
  friend class JobManager;
  JobContext(JobManager* manager, std::string id, std::string kind,
             std::string spec_json, std::string checkpoint_dir, bool resumed)
      : manager_(manager),
        id_(std::move(id)),
        kind_(std::move(kind)),
        spec_json_(std::move(spec_json)),
        checkpoint_dir_(std::move(checkpoint_dir)),
        resumed_(resumed) {}

  JobManager* const manager_;
  const std::string id_, kind_, spec_json_, checkpoint_dir_;
  const bool resumed_;
  // Whether Cancelled() ever answered true: during Shutdown, a runner that
  // never saw the signal finished on its own and its result stands.
  bool saw_cancel_ = false;
};

using JobRunner = std::function<absl::Status(JobContext& ctx)>;

class JobManager {
 public:
  // Opens (or creates) work_dir and its store and re-queues unfinished jobs.
  // Nothing runs until Start(). The folder is locked (work_dir/LOCK) while
  // the manager lives: a second manager on it, in this process or another,
  // gets FAILED_PRECONDITION instead of running the same jobs twice.
  static absl::StatusOr<std::unique_ptr<JobManager>> Open(
      JobManagerOptions options);

  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;
  // Calls Shutdown().
  ~JobManager();

  // Registers the runner for jobs of `kind`; call before Start(). A
  // re-queued job whose kind has no runner fails when its turn comes.
  void RegisterRunner(const std::string& kind, JobRunner runner);

  // Starts the runner threads. Calling it again does nothing.
  void Start();

  // Stops taking jobs, tells running jobs to stop (Cancelled() turns true),
  // waits for their runners to return and leaves them RUNNING in the store
  // so the next Open resumes them, whatever the runners returned; queued
  // jobs stay QUEUED. (A runner that returned without ever seeing
  // Cancelled() answer true finished on its own, and its result stands.)
  // Wakes every Watch. Idempotent. Blocks until every runner returns.
  void Shutdown();

  // Queues a job; INVALID_ARGUMENT when no runner is registered for `kind`,
  // UNAVAILABLE after Shutdown. Returns the QUEUED record.
  absl::StatusOr<JobRecord> Create(const std::string& kind,
                                   std::string spec_json);

  // NOT_FOUND naming the id. Reflects the latest progress, even what is not
  // yet on disk.
  absl::StatusOr<JobRecord> Get(absl::string_view id);

  // As JobStore::List, with the latest in-memory progress of running jobs.
  absl::StatusOr<JobPage> List(JobState state, int page_size,
                               absl::string_view page_token);

  // A QUEUED job becomes CANCELLED at once; a RUNNING one is asked to stop
  // and becomes CANCELLED when its runner returns. Cancelling a CANCELLED
  // job is a no-op; a SUCCEEDED or FAILED one gives FAILED_PRECONDITION.
  // Returns the record as it now stands.
  absl::StatusOr<JobRecord> Cancel(absl::string_view id);

  // Long poll: returns the job once its version exceeds `last_seen_version`,
  // or as it stands when `timeout` passes. NOT_FOUND for an unknown id;
  // UNAVAILABLE once the manager shuts down (so a streaming caller ends
  // instead of spinning). A server-streaming WatchJob loops on it from
  // version 0 until the job is terminal.
  absl::StatusOr<JobRecord> Watch(absl::string_view id,
                                  int64_t last_seen_version,
                                  absl::Duration timeout);

  const std::string& work_dir() const { return options_.work_dir; }
  std::string CheckpointDir(absl::string_view id) const;

 private:
  friend class JobContext;

  // A job that is QUEUED or RUNNING; finished jobs live only in the store.
  struct ActiveJob {
    JobRecord record;
    bool running = false;
    absl::Time last_persist = absl::InfinitePast();
    std::string persisted_message;
  };

  JobManager(JobManagerOptions options, std::unique_ptr<JobStore> store,
             int lock_fd);

  absl::Status Recover();
  void RunnerLoop();
  void RunJob(const std::string& id);
  // Writes the record to the store (logging a failure: progress that did
  // not reach the disk is not worth failing the job for) and wakes watchers.
  void Persist(ActiveJob& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves a job to a terminal state, writes it and forgets it; returns its
  // final record.
  JobRecord Finish(const std::string& id, JobState state, std::string error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CancelRequested(const std::string& id);
  void OnProgress(const std::string& id, double progress,
                  absl::string_view message,
                  const std::map<std::string, double>& metrics);
  void OnArtifact(const std::string& id, absl::string_view role,
                  absl::string_view path);

  const JobManagerOptions options_;
  // Reset before lock_fd_ is closed, so that the store is closed before
  // another manager may open it.
  std::unique_ptr<JobStore> store_;
  // Holds the flock on work_dir/LOCK.
  const int lock_fd_;

  absl::Mutex mu_;
  // Signalled on every change to any job, and on shutdown.
  absl::CondVar changed_;
  // Signalled when a job is queued, and on shutdown.
  absl::CondVar work_;
  std::map<std::string, JobRunner> runners_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ActiveJob, std::less<>> active_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  // Read without the lock by Cancelled().
  std::atomic<bool> stopping_{false};
  // Serialises Shutdown() callers around joining the threads.
  absl::Mutex shutdown_mu_;
};

}  // namespace hearth::jobs

#endif  // HEARTH_COMMON_JOBS_JOB_MANAGER_H_
