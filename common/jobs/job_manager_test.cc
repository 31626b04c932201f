#include "common/jobs/job_manager.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace hearth::jobs {
namespace {

// gmock is not installed; this stands in for EXPECT_THAT(text,
// HasSubstr(part)).
#define EXPECT_CONTAINS(text, part)                          \
  EXPECT_NE(std::string(text).find(part), std::string::npos) \
      << "'" << (text) << "' does not contain '" << (part) << "'"

std::string MakeTempDir() {
  std::string pattern = testing::TempDir() + "/job_manager_test_XXXXXX";
  char* dir = mkdtemp(pattern.data());
  EXPECT_NE(dir, nullptr);
  return pattern;
}

// Follows a job with Watch until `done` holds, as a WatchJob stream would.
absl::StatusOr<JobRecord> WaitUntil(
    JobManager& manager, const std::string& id,
    const std::function<bool(const JobRecord&)>& done,
    absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  int64_t seen = -1;
  for (;;) {
    absl::StatusOr<JobRecord> job =
        manager.Watch(id, seen, deadline - absl::Now());
    if (!job.ok() || done(*job)) return job;
    if (IsTerminal(job->state) || absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("job ", id, " stopped at ", JobStateName(job->state),
                       " '", job->message, "'"));
    }
    seen = job->version;
  }
}

absl::StatusOr<JobRecord> WaitTerminal(JobManager& manager,
                                       const std::string& id) {
  return WaitUntil(manager, id,
                   [](const JobRecord& job) { return IsTerminal(job.state); });
}

// The step a resumable runner saved last (0 when it never ran).
int ReadStep(const std::string& dir) {
  std::ifstream in(dir + "/step");
  int step = 0;
  in >> step;
  return step;
}

// Saves like a real runner would: write aside, then rename over.
void WriteStep(const std::string& dir, int step) {
  {
    std::ofstream out(dir + "/step.tmp", std::ios::trunc);
    out << step;
  }
  std::filesystem::rename(dir + "/step.tmp", dir + "/step");
}

class JobManagerTest : public testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<JobManager> OpenManager(int num_runners = 1) {
    JobManagerOptions options;
    options.work_dir = dir_;
    options.id_prefix = "q";
    options.num_runners = num_runners;
    auto manager = JobManager::Open(options);
    EXPECT_TRUE(manager.ok()) << manager.status();
    return manager.ok() ? std::move(*manager) : nullptr;
  }

  std::string dir_;
};

TEST_F(JobManagerTest, LifecycleQueuedRunningSucceeded) {
  auto manager = OpenManager();
  absl::Notification proceed;
  std::string seen_spec, seen_dir;
  manager->RegisterRunner("quantization", [&](JobContext& ctx) {
    seen_spec = ctx.spec_json();
    seen_dir = ctx.checkpoint_dir();
    EXPECT_FALSE(ctx.resumed());
    ctx.ReportProgress(0.5, "layer 1/2", {{"loss", 2.5}});
    proceed.WaitForNotification();
    ctx.ReportProgress(0.9, "layer 2/2", {{"tokens_per_second", 100}});
    ctx.AddArtifact("model", "/models/out");
    return absl::OkStatus();
  });

  auto created = manager->Create("quantization", R"({"bits":4})");
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->state, JobState::kQueued);
  EXPECT_TRUE(absl::StartsWith(created->id, "q-")) << created->id;
  EXPECT_GT(created->create_time, absl::UnixEpoch());
  const std::string id = created->id;

  manager->Start();
  auto running = WaitUntil(*manager, id, [](const JobRecord& job) {
    return job.message == "layer 1/2";
  });
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(running->state, JobState::kRunning);
  EXPECT_DOUBLE_EQ(running->progress, 0.5);
  EXPECT_DOUBLE_EQ(running->metrics.at("loss"), 2.5);
  EXPECT_GT(running->start_time, absl::UnixEpoch());
  EXPECT_EQ(manager->Get(id)->version, running->version);
  EXPECT_EQ(seen_spec, R"({"bits":4})");
  EXPECT_TRUE(std::filesystem::is_directory(seen_dir));
  EXPECT_EQ(seen_dir, manager->CheckpointDir(id));

  proceed.Notify();
  auto done = WaitTerminal(*manager, id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, JobState::kSucceeded);
  EXPECT_DOUBLE_EQ(done->progress, 1.0);
  EXPECT_EQ(done->message, "layer 2/2");
  // Metrics merge: the first report's name is still there.
  EXPECT_DOUBLE_EQ(done->metrics.at("loss"), 2.5);
  EXPECT_DOUBLE_EQ(done->metrics.at("tokens_per_second"), 100);
  EXPECT_EQ(done->artifacts.at("model"), "/models/out");
  EXPECT_TRUE(done->error.empty());
  EXPECT_GE(done->end_time, done->start_time);
  EXPECT_EQ(manager->Get(id)->state, JobState::kSucceeded);
}

TEST_F(JobManagerTest, RunnerErrorFailsTheJobWithItsMessage) {
  auto manager = OpenManager();
  manager->RegisterRunner("quantization", [](JobContext&) {
    return absl::InvalidArgumentError("spec.bits: 3 is not supported");
  });
  manager->RegisterRunner("throws", [](JobContext&) -> absl::Status {
    throw std::runtime_error("c10::Error: out of memory");
  });
  manager->Start();
  auto failed = manager->Create("quantization", "{}");
  auto threw = manager->Create("throws", "{}");
  ASSERT_TRUE(failed.ok() && threw.ok());

  auto done = WaitTerminal(*manager, failed->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, JobState::kFailed);
  EXPECT_EQ(done->error, "spec.bits: 3 is not supported");

  done = WaitTerminal(*manager, threw->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, JobState::kFailed);
  EXPECT_CONTAINS(done->error, "out of memory");
}

TEST_F(JobManagerTest, CreateRejectsUnknownKindAndRefusesAfterShutdown) {
  auto manager = OpenManager();
  manager->RegisterRunner("quantization",
                          [](JobContext&) { return absl::OkStatus(); });
  auto bad = manager->Create("distilation", "{}");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(bad.status().message(), "distilation");

  manager->Shutdown();
  EXPECT_EQ(manager->Create("quantization", "{}").status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(JobManagerTest, CancelQueuedJobIsImmediate) {
  auto manager = OpenManager();
  absl::Notification release;
  std::atomic<int> runs{0};
  manager->RegisterRunner("quantization", [&](JobContext&) {
    ++runs;
    release.WaitForNotification();
    return absl::OkStatus();
  });
  manager->Start();
  auto first = manager->Create("quantization", "{}");
  auto second = manager->Create("quantization", "{}");
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(WaitUntil(*manager, first->id, [](const JobRecord& job) {
                return job.state == JobState::kRunning;
              }).ok());

  auto cancelled = manager->Cancel(second->id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state, JobState::kCancelled);
  EXPECT_EQ(manager->Get(second->id)->state, JobState::kCancelled);
  // Cancelling again is harmless.
  EXPECT_TRUE(manager->Cancel(second->id).ok());

  release.Notify();
  auto done = WaitTerminal(*manager, first->id);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state, JobState::kSucceeded);
  manager->Shutdown();
  EXPECT_EQ(runs, 1);  // The cancelled job never ran.

  absl::Status finished = manager->Cancel(first->id).status();
  EXPECT_EQ(finished.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(finished.message(), first->id);
  EXPECT_EQ(manager->Cancel("q-00000000-9999").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(JobManagerTest, CancelRunningJobStopsWithinOneStep) {
  auto manager = OpenManager();
  std::atomic<int> step{0};
  std::atomic<int> steps_after_cancel{-1};
  manager->RegisterRunner("quantization", [&](JobContext& ctx) {
    for (;; ++step) {
      if (ctx.Cancelled()) break;
      ctx.ReportProgress(0.01, absl::StrCat("step ", step.load()));
      absl::SleepFor(absl::Milliseconds(5));
    }
    // Whatever the runner returns after a cancel, the job ends CANCELLED.
    return absl::OkStatus();
  });
  manager->Start();
  auto job = manager->Create("quantization", "{}");
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(WaitUntil(*manager, job->id, [](const JobRecord& job) {
                return job.message == "step 3";
              }).ok());
  auto requested = manager->Cancel(job->id);
  ASSERT_TRUE(requested.ok()) << requested.status();
  EXPECT_TRUE(requested->cancel_requested);
  const int step_at_cancel = step;

  auto done = WaitTerminal(*manager, job->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, JobState::kCancelled);
  EXPECT_LE(step - step_at_cancel, 1);
  EXPECT_LT(done->end_time - requested->create_time, absl::Seconds(5));
  // The checkpoint folder is kept for a cancelled job.
  EXPECT_TRUE(std::filesystem::is_directory(manager->CheckpointDir(job->id)));
}

TEST_F(JobManagerTest, WatchWakesOnUpdateAndTimesOutOtherwise) {
  auto manager = OpenManager();
  absl::Notification report, finish;
  manager->RegisterRunner("quantization", [&](JobContext& ctx) {
    report.WaitForNotification();
    ctx.ReportProgress(0.3, "calibrating");
    finish.WaitForNotification();
    return absl::OkStatus();
  });
  manager->Start();
  auto job = manager->Create("quantization", "{}");
  ASSERT_TRUE(job.ok());
  auto running = WaitUntil(*manager, job->id, [](const JobRecord& job) {
    return job.state == JobState::kRunning;
  });
  ASSERT_TRUE(running.ok());

  // Nothing changes: the watch returns the same version after the timeout.
  absl::Time start = absl::Now();
  auto idle =
      manager->Watch(job->id, running->version, absl::Milliseconds(150));
  ASSERT_TRUE(idle.ok());
  EXPECT_EQ(idle->version, running->version);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(140));

  absl::StatusOr<JobRecord> woken;
  absl::Duration waited;
  std::thread watcher([&] {
    absl::Time begin = absl::Now();
    woken = manager->Watch(job->id, running->version, absl::Seconds(10));
    waited = absl::Now() - begin;
  });
  absl::SleepFor(absl::Milliseconds(50));
  report.Notify();
  watcher.join();
  ASSERT_TRUE(woken.ok()) << woken.status();
  EXPECT_GT(woken->version, running->version);
  EXPECT_EQ(woken->message, "calibrating");
  EXPECT_LT(waited, absl::Seconds(5));

  EXPECT_EQ(
      manager->Watch("q-00000000-9999", 0, absl::Seconds(1)).status().code(),
      absl::StatusCode::kNotFound);

  finish.Notify();
  auto done = WaitTerminal(*manager, job->id);
  ASSERT_TRUE(done.ok());
  // A finished job answers at once: it will never change again.
  start = absl::Now();
  auto final_watch = manager->Watch(job->id, done->version, absl::Seconds(10));
  ASSERT_TRUE(final_watch.ok());
  EXPECT_EQ(final_watch->state, JobState::kSucceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST_F(JobManagerTest, WatchEndsOnShutdown) {
  auto manager = OpenManager();
  manager->RegisterRunner("quantization", [](JobContext& ctx) {
    while (!ctx.Cancelled()) absl::SleepFor(absl::Milliseconds(5));
    return absl::CancelledError("stopping");
  });
  manager->Start();
  auto job = manager->Create("quantization", "{}");
  ASSERT_TRUE(job.ok());
  auto running = WaitUntil(*manager, job->id, [](const JobRecord& job) {
    return job.state == JobState::kRunning;
  });
  ASSERT_TRUE(running.ok());
  absl::StatusOr<JobRecord> watched;
  std::thread watcher([&] {
    watched = manager->Watch(job->id, running->version, absl::Seconds(30));
  });
  absl::SleepFor(absl::Milliseconds(50));
  manager->Shutdown();
  watcher.join();
  // Either the shutdown's final save woke it with a new version, or it saw
  // the shutdown itself; it must not wait out its 30 s.
  if (watched.ok()) {
    EXPECT_EQ(watched->state, JobState::kRunning);
    EXPECT_EQ(manager->Watch(job->id, watched->version, absl::Seconds(30))
                  .status()
                  .code(),
              absl::StatusCode::kUnavailable);
  } else {
    EXPECT_EQ(watched.status().code(), absl::StatusCode::kUnavailable);
  }
}

TEST_F(JobManagerTest, ProgressIsThrottledOnDiskButNotForWatchers) {
  JobManagerOptions options;
  options.work_dir = dir_;
  options.persist_interval = absl::Hours(1);
  auto manager = std::move(*JobManager::Open(options));
  absl::Notification reported, finish;
  manager->RegisterRunner("train", [&](JobContext& ctx) {
    ctx.ReportProgress(0.1, "training");
    for (int i = 2; i <= 9; ++i) ctx.ReportProgress(i / 10.0, "training");
    reported.Notify();
    finish.WaitForNotification();
    return absl::OkStatus();
  });
  manager->Start();
  auto job = manager->Create("train", "{}");
  ASSERT_TRUE(job.ok());
  reported.WaitForNotification();
  EXPECT_DOUBLE_EQ(manager->Get(job->id)->progress, 0.9);
  {
    // What a crash now would leave: the first "training" report only.
    auto store = JobStore::Open(dir_ + "/jobs.db");
    ASSERT_TRUE(store.ok()) << store.status();
    auto on_disk = (*store)->Get(job->id);
    ASSERT_TRUE(on_disk.ok());
    EXPECT_EQ(on_disk->message, "training");
    EXPECT_DOUBLE_EQ(on_disk->progress, 0.1);
    EXPECT_LT(on_disk->version, manager->Get(job->id)->version);
  }
  finish.Notify();
  ASSERT_EQ(WaitTerminal(*manager, job->id)->state, JobState::kSucceeded);
}

TEST_F(JobManagerTest, ListPagesAndFiltersWithLiveProgress) {
  auto manager = OpenManager(/*num_runners=*/2);
  manager->RegisterRunner("quantization", [](JobContext& ctx) {
    if (ctx.spec_json() == "fail") return absl::InternalError("boom");
    return absl::OkStatus();
  });
  manager->Start();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    auto job = manager->Create("quantization", i % 2 == 0 ? "ok" : "fail");
    ASSERT_TRUE(job.ok());
    ids.push_back(job->id);
  }
  for (const std::string& id : ids)
    ASSERT_TRUE(WaitTerminal(*manager, id).ok());

  auto page = manager->List(JobState::kUnspecified, 2, "");
  ASSERT_TRUE(page.ok()) << page.status();
  std::vector<std::string> listed;
  for (;;) {
    for (const JobRecord& job : page->jobs) listed.push_back(job.id);
    if (page->next_page_token.empty()) break;
    page = manager->List(JobState::kUnspecified, 2, page->next_page_token);
    ASSERT_TRUE(page.ok());
  }
  EXPECT_EQ(listed,
            (std::vector<std::string>{ids[4], ids[3], ids[2], ids[1], ids[0]}));

  auto failed = manager->List(JobState::kFailed, 0, "");
  ASSERT_TRUE(failed.ok());
  ASSERT_EQ(failed->jobs.size(), 2u);
  EXPECT_EQ(failed->jobs[0].id, ids[3]);
  EXPECT_EQ(failed->jobs[0].error, "boom");
}

// A runner that saves a step counter and, on its first run, stops at step 5
// until told to stop: the shape of a trainer or a layer-by-layer quantizer.
struct ResumableRunner {
  std::atomic<int> first_step{-1};
  std::atomic<bool> resumed{false};
  std::atomic<bool> block_at_5{true};

  JobRunner runner() {
    return [this](JobContext& ctx) {
      int step = ReadStep(ctx.checkpoint_dir());
      first_step = step;
      resumed = ctx.resumed();
      for (; step < 10; ++step) {
        if (ctx.Cancelled()) return absl::CancelledError("stopping");
        if (step == 5 && block_at_5) {
          while (!ctx.Cancelled()) absl::SleepFor(absl::Milliseconds(2));
          return absl::CancelledError("stopping");
        }
        WriteStep(ctx.checkpoint_dir(), step + 1);
        ctx.ReportProgress((step + 1) / 10.0,
                           absl::StrCat("step ", step + 1, "/10"));
      }
      return absl::OkStatus();
    };
  }
};

TEST_F(JobManagerTest, ShutdownAndRestartResumesFromCheckpoint) {
  std::string finished_id, resumed_id, queued_id;
  {
    auto manager = OpenManager();
    ResumableRunner first;
    manager->RegisterRunner("train", first.runner());
    manager->RegisterRunner("quick",
                            [](JobContext&) { return absl::OkStatus(); });
    manager->Start();
    auto finished = manager->Create("quick", "{}");
    ASSERT_TRUE(finished.ok());
    finished_id = finished->id;
    ASSERT_EQ(WaitTerminal(*manager, finished_id)->state, JobState::kSucceeded);

    auto job = manager->Create("train", "{}");
    auto queued = manager->Create("quick", "{}");
    ASSERT_TRUE(job.ok() && queued.ok());
    resumed_id = job->id;
    queued_id = queued->id;
    ASSERT_TRUE(WaitUntil(*manager, resumed_id, [](const JobRecord& job) {
                  return job.message == "step 5/10";
                }).ok());
    manager->Shutdown();
    // Interrupted, not finished: still RUNNING (on disk too), and the job
    // behind it still QUEUED.
    EXPECT_EQ(manager->Get(resumed_id)->state, JobState::kRunning);
    EXPECT_DOUBLE_EQ(manager->Get(resumed_id)->progress, 0.5);
    EXPECT_EQ(manager->Get(queued_id)->state, JobState::kQueued);
    EXPECT_EQ(first.first_step, 0);
    EXPECT_FALSE(first.resumed);
  }

  auto manager = OpenManager();
  ResumableRunner second;
  second.block_at_5 = false;
  manager->RegisterRunner("train", second.runner());
  manager->RegisterRunner("quick",
                          [](JobContext&) { return absl::OkStatus(); });
  // Finished jobs are still listed after the restart.
  auto succeeded = manager->List(JobState::kSucceeded, 0, "");
  ASSERT_TRUE(succeeded.ok());
  ASSERT_EQ(succeeded->jobs.size(), 1u);
  EXPECT_EQ(succeeded->jobs[0].id, finished_id);
  EXPECT_EQ(manager->Get(resumed_id)->state, JobState::kQueued);

  manager->Start();
  auto done = WaitTerminal(*manager, resumed_id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, JobState::kSucceeded);
  EXPECT_EQ(second.first_step, 5);  // Resumed from the saved step.
  EXPECT_TRUE(second.resumed);
  EXPECT_EQ(done->message, "step 10/10");
  EXPECT_EQ(WaitTerminal(*manager, queued_id)->state, JobState::kSucceeded);

  // New ids do not collide with those from before the restart.
  auto next = manager->Create("quick", "{}");
  ASSERT_TRUE(next.ok());
  EXPECT_NE(next->id, finished_id);
  EXPECT_NE(next->id, resumed_id);
  EXPECT_NE(next->id, queued_id);
}

TEST_F(JobManagerTest, CancelAfterShutdownHoldsAcrossRestart) {
  std::string id;
  {
    auto manager = OpenManager();
    ResumableRunner runner;
    manager->RegisterRunner("train", runner.runner());
    manager->Start();
    auto job = manager->Create("train", "{}");
    ASSERT_TRUE(job.ok());
    id = job->id;
    ASSERT_TRUE(WaitUntil(*manager, id, [](const JobRecord& job) {
                  return job.message == "step 5/10";
                }).ok());
    manager->Shutdown();
    ASSERT_TRUE(manager->Cancel(id).ok());
  }
  auto manager = OpenManager();
  EXPECT_EQ(manager->Get(id)->state, JobState::kCancelled);
}

TEST_F(JobManagerTest, CorruptStoreIsAnErrorNamingThePath) {
  {
    std::ofstream out(dir_ + "/jobs.db", std::ios::binary);
    for (int i = 0; i < 500; ++i) out << "garbage! ";
  }
  JobManagerOptions options;
  options.work_dir = dir_;
  auto manager = JobManager::Open(options);
  ASSERT_FALSE(manager.ok());
  EXPECT_CONTAINS(manager.status().message(), dir_ + "/jobs.db");

  options.num_runners = 0;
  EXPECT_CONTAINS(JobManager::Open(options).status().message(), "num_runners");
}

TEST_F(JobManagerTest, SecondManagerOnTheSameFolderIsRefused) {
  auto first = OpenManager();
  JobManagerOptions options;
  options.work_dir = dir_;
  auto second = JobManager::Open(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(second.status().message(), dir_);
  EXPECT_CONTAINS(second.status().message(), std::to_string(getpid()));
  first.reset();
  EXPECT_TRUE(JobManager::Open(options).ok());
}

// kill -9 stand-in: a child process creates a job, lets it run a few steps
// and _exits without Shutdown or destructors. The parent then reopens the
// same folder and must find the job and finish it from its checkpoint.
TEST_F(JobManagerTest, JobSurvivesAProcessCrash) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    JobManagerOptions options;
    options.work_dir = dir_;
    options.id_prefix = "q";
    auto manager = JobManager::Open(options);
    if (!manager.ok()) _exit(2);
    ResumableRunner* runner = new ResumableRunner;  // Never freed: we crash.
    (*manager)->RegisterRunner("train", runner->runner());
    (*manager)->Start();
    auto job = (*manager)->Create("train", "{}");
    if (!job.ok()) _exit(3);
    // A new message is written to disk before watchers hear of it.
    auto at5 = WaitUntil(**manager, job->id, [](const JobRecord& job) {
      return job.message == "step 5/10";
    });
    if (!at5.ok()) _exit(4);
    std::string id = job->id;
    if (write(fds[1], id.data(), id.size()) != static_cast<ssize_t>(id.size()))
      _exit(5);
    _exit(0);
  }
  close(fds[1]);
  char buffer[128];
  ssize_t n = read(fds[0], buffer, sizeof(buffer));
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_GT(n, 0);
  const std::string id(buffer, n);

  auto manager = OpenManager();
  auto found = manager->Get(id);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->state, JobState::kQueued);  // Re-queued, was RUNNING.
  EXPECT_EQ(found->message, "step 5/10");

  ResumableRunner runner;
  runner.block_at_5 = false;
  manager->RegisterRunner("train", runner.runner());
  manager->Start();
  auto done = WaitTerminal(*manager, id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, JobState::kSucceeded);
  EXPECT_EQ(runner.first_step, 5);
  EXPECT_TRUE(runner.resumed);
}

}  // namespace
}  // namespace hearth::jobs
