// JobStore: the durable table of job records behind hearth's long-running
// jobs (quantization, distillation).
//
// Records live in one SQLite file opened in WAL mode with synchronous=FULL,
// so an Insert or Update that has returned OK survives a crash or kill -9 of
// the process (and a power cut, as far as fsync can promise). The store is a
// plain table: it knows nothing of runners or threads; JobManager
// (job_manager.h) drives the state machine on top of it.
//
//   HEARTH_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store,
//                           JobStore::Open("/var/lib/hearth/jobs.db"));
//   JobRecord job;
//   HEARTH_ASSIGN_OR_RETURN(job.id, store->NextId("q"));  // q-20261125-0001
//   job.kind = "quantization";
//   HEARTH_RETURN_IF_ERROR(store->Insert(&job));
//
// Thread-safe: every method may be called from any thread. Several processes
// may open the same file (SQLite locks it), although hearth runs one service
// per store.
#ifndef HEARTH_COMMON_JOBS_JOB_STORE_H_
#define HEARTH_COMMON_JOBS_JOB_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct sqlite3;

namespace hearth::jobs {

// Numbered as hearth.v1.JobState so front ends convert with a cast.
enum class JobState {
  kUnspecified = 0,  // Only as a List filter: "any state".
  kQueued = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCancelled = 5,
};

// "QUEUED", "RUNNING", ... ("UNSPECIFIED" for anything else).
absl::string_view JobStateName(JobState state);
// SUCCEEDED, FAILED and CANCELLED never change again (short of a forced
// Update).
bool IsTerminal(JobState state);

struct JobRecord {
  std::string id;
  std::string kind;
  JobState state = JobState::kQueued;
  double progress = 0;  // 0..1
  std::string message;
  std::map<std::string, double> metrics;
  std::map<std::string, std::string> artifacts;  // role -> path
  std::string error;                             // Set when FAILED.
  // absl::UnixEpoch() (the default) means "not yet", which is also what a
  // zero google.protobuf.Timestamp means.
  absl::Time create_time = absl::UnixEpoch();
  absl::Time start_time = absl::UnixEpoch();
  absl::Time end_time = absl::UnixEpoch();
  std::string spec_json;
  // A user asked to cancel a running job; kept durable so that a cancel is
  // not undone by a restart that happens before the runner noticed it.
  bool cancel_requested = false;
  // Grows with every change, so a watcher can tell a new snapshot from one
  // it has seen. Assigned by the store.
  int64_t version = 0;
};

struct JobPage {
  std::vector<JobRecord> jobs;
  std::string next_page_token;  // Empty on the last page.
};

class JobStore {
 public:
  // Opens or creates the store at `path` (its folder must exist) and creates
  // the schema. A file that is not a job store, is corrupt or cannot be
  // opened gives an error naming `path`.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      const std::string& path);

  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;
  ~JobStore();

  const std::string& path() const { return path_; }

  // Returns a fresh id "<prefix>-<YYYYMMDD>-<NNNN>" (UTC date; the counter
  // restarts each day per prefix and widens past 9999). The counter is
  // stored in the database, so ids stay unique across restarts.
  absl::StatusOr<std::string> NextId(absl::string_view prefix);

  // Adds a new record; ALREADY_EXISTS if the id is taken. Sets
  // record->version to 1 and, when unset, record->create_time to now.
  absl::Status Insert(JobRecord* record);

  // Replaces the stored record with the same id; NOT_FOUND if there is
  // none. A terminal record is left alone and
  // FAILED_PRECONDITION returned, unless `force`. On success
  // record->version becomes max(stored, record->version) + 1, which lets a
  // caller bump versions in memory between writes and stay monotonic.
  absl::Status Update(JobRecord* record, bool force = false);

  // NOT_FOUND naming the id when there is no such job.
  absl::StatusOr<JobRecord> Get(absl::string_view id);

  // Newest first. `state` kUnspecified lists every state. `page_size` 0
  // means 100 (and is capped at 1000). Pages are stable: jobs created after
  // the first page do not shift later pages, and no job appears twice.
  absl::StatusOr<JobPage> List(JobState state, int page_size,
                               absl::string_view page_token);

  // Every QUEUED or RUNNING job, oldest first: what a restarted manager
  // picks up again.
  absl::StatusOr<std::vector<JobRecord>> ListUnfinished();

 private:
  JobStore(std::string path, sqlite3* db);

  // Runs `sql` (no parameters, no result rows).
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Init() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Turns an SQLite result code into a Status naming the store and `what`.
  absl::Status Error(int rc, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  absl::Mutex mu_;
  sqlite3* const db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hearth::jobs

#endif  // HEARTH_COMMON_JOBS_JOB_STORE_H_
