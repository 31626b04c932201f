#include "common/jobs/job_manager.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log/logging.h"
#include "common/status/status_macros.h"

namespace hearth::jobs {

namespace fs = std::filesystem;

bool JobContext::Cancelled() {
  bool cancelled = manager_->stopping_.load() || manager_->CancelRequested(id_);
  if (cancelled) saw_cancel_ = true;
  return cancelled;
}

void JobContext::ReportProgress(double progress, absl::string_view message,
                                const std::map<std::string, double>& metrics) {
  manager_->OnProgress(id_, progress, message, metrics);
}

void JobContext::AddArtifact(absl::string_view role, absl::string_view path) {
  manager_->OnArtifact(id_, role, path);
}

namespace {

// Two managers on one folder would both re-queue and run the same jobs. An
// flock is released by the kernel when the process dies, so a crash never
// leaves a stale lock behind.
absl::StatusOr<int> LockWorkDir(const std::string& work_dir) {
  const std::string path = (fs::path(work_dir) / "LOCK").string();
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("job manager lock ", path, ": ", std::strerror(errno)));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int error = errno;
    char owner[32] = {};
    ssize_t n = pread(fd, owner, sizeof(owner) - 1, 0);
    close(fd);
    if (error == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job manager work_dir ", work_dir,
          " is in use by another job manager (pid ",
          n > 0 ? std::string(owner, n) : "unknown", ", ", path, ")"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("job manager lock ", path, ": ", std::strerror(error)));
  }
  // The pid is only for the message above.
  std::string pid = std::to_string(getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) !=
                                   static_cast<ssize_t>(pid.size())) {
    HLOG(WARNING) << "cannot write pid to " << path;
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Open(
    JobManagerOptions options) {
  if (options.work_dir.empty()) {
    return absl::InvalidArgumentError("JobManagerOptions.work_dir is empty");
  }
  if (options.num_runners < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("JobManagerOptions.num_runners must be at least 1, got ",
                     options.num_runners));
  }
  std::error_code ec;
  fs::create_directories(fs::path(options.work_dir) / "checkpoints", ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("job manager work_dir ", options.work_dir,
                     ": cannot create it: ", ec.message()));
  }
  HEARTH_ASSIGN_OR_RETURN(int lock_fd, LockWorkDir(options.work_dir));
  absl::StatusOr<std::unique_ptr<JobStore>> store =
      JobStore::Open((fs::path(options.work_dir) / "jobs.db").string());
  if (!store.ok()) {
    close(lock_fd);
    return store.status();
  }
  std::unique_ptr<JobManager> manager(
      new JobManager(std::move(options), std::move(*store), lock_fd));
  HEARTH_RETURN_IF_ERROR(manager->Recover());
  return manager;
}

JobManager::JobManager(JobManagerOptions options,
                       std::unique_ptr<JobStore> store, int lock_fd)
    : options_(std::move(options)),
      store_(std::move(store)),
      lock_fd_(lock_fd) {}

JobManager::~JobManager() {
  Shutdown();
  store_.reset();
  close(lock_fd_);
}

absl::Status JobManager::Recover() {
  HEARTH_ASSIGN_OR_RETURN(std::vector<JobRecord> unfinished,
                          store_->ListUnfinished());
  absl::MutexLock lock(&mu_);
  for (JobRecord& record : unfinished) {
    if (record.cancel_requested) {
      // Cancelled while running, then the service died before the runner
      // returned: honour the cancel rather than resume.
      record.state = JobState::kCancelled;
      record.end_time = absl::Now();
      HEARTH_RETURN_IF_ERROR(store_->Update(&record));
      HLOG(INFO) << "job " << record.id << " was cancelled before a restart";
      continue;
    }
    if (record.state == JobState::kRunning) {
      record.state = JobState::kQueued;
      HEARTH_RETURN_IF_ERROR(store_->Update(&record));
      HLOG(INFO) << "job " << record.id << " was running; re-queued to resume";
    }
    ActiveJob job;
    job.record = std::move(record);
    job.persisted_message = job.record.message;
    queue_.push_back(job.record.id);
    std::string id = job.record.id;
    active_.emplace(std::move(id), std::move(job));
  }
  return absl::OkStatus();
}

void JobManager::RegisterRunner(const std::string& kind, JobRunner runner) {
  absl::MutexLock lock(&mu_);
  runners_[kind] = std::move(runner);
}

void JobManager::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || stopping_) return;
  started_ = true;
  for (int i = 0; i < options_.num_runners; ++i) {
    threads_.emplace_back([this] { RunnerLoop(); });
  }
}

void JobManager::Shutdown() {
  absl::MutexLock shutdown_lock(&shutdown_mu_);
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_.SignalAll();
    changed_.SignalAll();
    threads.swap(threads_);
  }
  for (std::thread& thread : threads) thread.join();
}

std::string JobManager::CheckpointDir(absl::string_view id) const {
  return (fs::path(options_.work_dir) / "checkpoints" / std::string(id))
      .string();
}

void JobManager::RunnerLoop() {
  for (;;) {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && queue_.empty()) work_.Wait(&mu_);
      if (stopping_) return;
      id = std::move(queue_.front());
      queue_.pop_front();
    }
    RunJob(id);
  }
}

void JobManager::RunJob(const std::string& id) {
  JobRunner runner;
  std::unique_ptr<JobContext> ctx;
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(id);
    // Left QUEUED in the store: the next start picks it up.
    if (it == active_.end() || stopping_) return;
    ActiveJob& job = it->second;
    auto found = runners_.find(job.record.kind);
    if (found == runners_.end()) {
      Finish(id, JobState::kFailed,
             absl::StrCat("no runner registered for job kind '",
                          job.record.kind, "'"));
      return;
    }
    runner = found->second;
    const std::string dir = CheckpointDir(id);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
      Finish(id, JobState::kFailed,
             absl::StrCat("cannot create checkpoint folder ", dir, ": ",
                          ec.message()));
      return;
    }
    // A job started before keeps its first start_time: the time it has
    // taken so far includes the restart.
    const bool resumed = job.record.start_time != absl::UnixEpoch();
    if (!resumed) job.record.start_time = absl::Now();
    job.record.state = JobState::kRunning;
    job.running = true;
    Persist(job);
    HLOG(INFO) << "job " << id << " (" << job.record.kind << ") "
               << (resumed ? "resumed" : "started");
    ctx.reset(new JobContext(this, id, job.record.kind, job.record.spec_json,
                             dir, resumed));
  }

  absl::Status status;
  // A runner is not supposed to throw, but libtorch does; one bad job must
  // not take the whole service down.
  try {
    status = runner(*ctx);
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat("job runner threw: ", e.what()));
  } catch (...) {
    status = absl::InternalError("job runner threw a non-standard exception");
  }

  JobState end_state;
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(id);
    if (it == active_.end()) return;  // Not reachable: running jobs stay.
    ActiveJob& job = it->second;
    if (job.record.cancel_requested) {
      end_state = JobState::kCancelled;
      Finish(id, end_state, "");
    } else if (stopping_ && ctx->saw_cancel_) {
      // Stopped for the shutdown, not finished: keep it RUNNING on disk so
      // the next start resumes it, whatever the runner returned.
      job.running = false;
      Persist(job);
      active_.erase(it);
      HLOG(INFO) << "job " << id << " interrupted by shutdown; will resume";
      return;
    } else if (status.ok()) {
      end_state = JobState::kSucceeded;
      Finish(id, end_state, "");
    } else {
      end_state = JobState::kFailed;
      Finish(id, end_state,
             status.message().empty() ? status.ToString()
                                      : std::string(status.message()));
    }
  }
  if (end_state == JobState::kSucceeded &&
      options_.remove_checkpoint_on_success) {
    std::error_code ec;
    fs::remove_all(ctx->checkpoint_dir(), ec);
    if (ec) {
      HLOG(WARNING) << "job " << id << ": cannot remove "
                    << ctx->checkpoint_dir() << ": " << ec.message();
    }
  }
}

void JobManager::Persist(ActiveJob& job) {
  absl::Status status = store_->Update(&job.record);
  if (!status.ok()) {
    // Watchers still see the change; the disk catches up on the next write.
    HLOG(WARNING) << "job " << job.record.id
                  << ": cannot save progress: " << status;
    ++job.record.version;
  } else {
    job.last_persist = absl::Now();
    job.persisted_message = job.record.message;
  }
  changed_.SignalAll();
}

JobRecord JobManager::Finish(const std::string& id, JobState state,
                             std::string error) {
  auto it = active_.find(id);
  ActiveJob& job = it->second;
  job.record.state = state;
  job.record.error = std::move(error);
  job.record.end_time = absl::Now();
  if (state == JobState::kSucceeded) job.record.progress = 1;
  absl::Status status = store_->Update(&job.record);
  if (!status.ok()) {
    // The store still says QUEUED/RUNNING, so the job runs again after a
    // restart: better than a result nobody can find.
    HLOG(ERROR) << "job " << id << ": cannot record that it is "
                << JobStateName(state) << ": " << status;
    ++job.record.version;
  }
  HLOG(INFO) << "job " << id << " " << JobStateName(state)
             << (job.record.error.empty() ? "" : ": ") << job.record.error;
  JobRecord record = std::move(job.record);
  active_.erase(it);
  changed_.SignalAll();
  return record;
}

bool JobManager::CancelRequested(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = active_.find(id);
  return it != active_.end() && it->second.record.cancel_requested;
}

void JobManager::OnProgress(const std::string& id, double progress,
                            absl::string_view message,
                            const std::map<std::string, double>& metrics) {
  absl::MutexLock lock(&mu_);
  auto it = active_.find(id);
  if (it == active_.end()) return;
  ActiveJob& job = it->second;
  if (!std::isnan(progress)) {
    job.record.progress = std::clamp(progress, 0.0, 1.0);
  }
  job.record.message = std::string(message);
  for (const auto& [name, value] : metrics) job.record.metrics[name] = value;
  if (job.record.message != job.persisted_message ||
      absl::Now() - job.last_persist >= options_.persist_interval) {
    Persist(job);
  } else {
    ++job.record.version;
    changed_.SignalAll();
  }
}

void JobManager::OnArtifact(const std::string& id, absl::string_view role,
                            absl::string_view path) {
  absl::MutexLock lock(&mu_);
  auto it = active_.find(id);
  if (it == active_.end()) return;
  it->second.record.artifacts[std::string(role)] = std::string(path);
  Persist(it->second);
}

absl::StatusOr<JobRecord> JobManager::Create(const std::string& kind,
                                             std::string spec_json) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    return absl::UnavailableError("job manager is shutting down");
  }
  if (runners_.find(kind) == runners_.end()) {
    std::vector<std::string> known;
    for (const auto& [name, runner] : runners_) known.push_back(name);
    return absl::InvalidArgumentError(
        absl::StrCat("kind: no runner for job kind '", kind,
                     "' (known: ", absl::StrJoin(known, ", "), ")"));
  }
  JobRecord record;
  HEARTH_ASSIGN_OR_RETURN(record.id, store_->NextId(options_.id_prefix));
  record.kind = kind;
  record.state = JobState::kQueued;
  record.spec_json = std::move(spec_json);
  HEARTH_RETURN_IF_ERROR(store_->Insert(&record));
  ActiveJob job;
  job.record = record;
  job.persisted_message = record.message;
  job.last_persist = absl::Now();
  active_.emplace(record.id, std::move(job));
  queue_.push_back(record.id);
  work_.Signal();
  changed_.SignalAll();
  HLOG(INFO) << "job " << record.id << " (" << kind << ") queued";
  return record;
}

absl::StatusOr<JobRecord> JobManager::Get(absl::string_view id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(id);
    if (it != active_.end()) return it->second.record;
  }
  // Not active: finished (Finish writes before it forgets), or unknown.
  return store_->Get(id);
}

absl::StatusOr<JobPage> JobManager::List(JobState state, int page_size,
                                         absl::string_view page_token) {
  HEARTH_ASSIGN_OR_RETURN(JobPage page,
                          store_->List(state, page_size, page_token));
  absl::MutexLock lock(&mu_);
  for (JobRecord& record : page.jobs) {
    auto it = active_.find(record.id);
    if (it != active_.end() && it->second.record.version > record.version) {
      record = it->second.record;
    }
  }
  return page;
}

absl::StatusOr<JobRecord> JobManager::Cancel(absl::string_view id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(id);
    if (it != active_.end()) {
      ActiveJob& job = it->second;
      job.record.cancel_requested = true;
      if (!job.running) {
        // A runner may have just taken it off the queue; it will find the
        // job gone from active_ and skip it.
        const std::string job_id = job.record.id;
        auto queued = std::find(queue_.begin(), queue_.end(), job_id);
        if (queued != queue_.end()) queue_.erase(queued);
        return Finish(job_id, JobState::kCancelled, "");
      }
      // Written now, so that a restart before the runner notices does not
      // bring the job back.
      Persist(job);
      HLOG(INFO) << "job " << id << ": cancel requested";
      return job.record;
    }
  }
  HEARTH_ASSIGN_OR_RETURN(JobRecord record, store_->Get(id));
  switch (record.state) {
    case JobState::kCancelled:
      return record;
    case JobState::kSucceeded:
    case JobState::kFailed:
      return absl::FailedPreconditionError(
          absl::StrCat("job ", id, " already ", JobStateName(record.state),
                       "; only a queued or running job can be cancelled"));
    default:
      // Unfinished but not active: left behind by a Shutdown. Recording the
      // request makes the next start end it CANCELLED instead of resuming.
      record.cancel_requested = true;
      HEARTH_RETURN_IF_ERROR(store_->Update(&record));
      return record;
  }
}

absl::StatusOr<JobRecord> JobManager::Watch(absl::string_view id,
                                            int64_t last_seen_version,
                                            absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  bool timed_out = false;
  for (;;) {
    JobRecord current;
    auto it = active_.find(id);
    if (it != active_.end()) {
      current = it->second.record;
    } else {
      HEARTH_ASSIGN_OR_RETURN(current, store_->Get(id));
    }
    // A terminal job never changes again, so waiting would only stall the
    // caller.
    if (current.version > last_seen_version || IsTerminal(current.state)) {
      return current;
    }
    if (stopping_) {
      return absl::UnavailableError(
          absl::StrCat("job manager is shutting down; job ", id,
                       " will resume when the service restarts"));
    }
    if (timed_out) return current;
    timed_out = changed_.WaitWithDeadline(&mu_, deadline);
  }
}

}  // namespace hearth::jobs
