#include "services/gateway/dispatcher.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "services/gateway/fake_worker.h"
#include "services/gateway/worker_pool.h"

namespace hearth::gateway {
namespace {

// Records what a request produced.
class Recorder : public GenerationObserver {
 public:
  void OnEvent(const hearth::v1::ExecuteEvent& event) override {
    absl::MutexLock lock(&mu_);
    text_ += event.text();
    ++events_;
  }
  void OnFinish(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_.Notify();
  }
  bool Restartable() const override { return restartable_; }
  void OnRestart() override {
    absl::MutexLock lock(&mu_);
    text_.clear();
    ++restarts_;
  }

  bool Wait(absl::Duration timeout = absl::Seconds(10)) {
    return done_.WaitForNotificationWithTimeout(timeout);
  }
  absl::Status status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }
  std::string text() {
    absl::MutexLock lock(&mu_);
    return text_;
  }
  int restarts() {
    absl::MutexLock lock(&mu_);
    return restarts_;
  }
  bool restartable_ = false;

 private:
  absl::Mutex mu_;
  std::string text_;
  int events_ = 0;
  int restarts_ = 0;
  absl::Status status_;
  absl::Notification done_;
};

GenerationRequest Request(const std::string& model, int tokens) {
  GenerationRequest request;
  request.model = model;
  request.sequence.set_prompt("hello");
  request.sequence.mutable_sampling()->set_max_new_tokens(tokens);
  return request;
}

struct Fixture {
  explicit Fixture(int workers, FakeWorkerOptions worker_options = {},
                   BatcherOptions batcher = {}) {
    WorkerPoolOptions pool_options;
    for (int i = 0; i < workers; ++i) {
      fakes.push_back(std::make_unique<FakeWorker>(worker_options));
      fakes.back()->Start();
      pool_options.static_workers.push_back(fakes.back()->address());
    }
    pool_options.poll_interval = absl::Milliseconds(50);
    pool_options.poll_timeout = absl::Milliseconds(500);
    pool = std::make_unique<WorkerPool>(pool_options);
    pool->Start();
    DispatcherOptions options;
    batcher.Validate("test").IgnoreError();
    options.batching.defaults = batcher;
    options.no_worker_grace = absl::Milliseconds(500);
    dispatcher = std::make_unique<Dispatcher>(pool.get(), options, nullptr);
  }
  ~Fixture() {
    dispatcher->Shutdown();
    pool->Stop();
  }
  std::vector<std::unique_ptr<FakeWorker>> fakes;
  std::unique_ptr<WorkerPool> pool;
  std::unique_ptr<Dispatcher> dispatcher;
};

TEST(DispatcherTest, RunsARequestOnAWorker) {
  Fixture f(1);
  auto recorder = std::make_shared<Recorder>();
  auto ticket = f.dispatcher->Submit(Request("tiny", 3), recorder);
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  ASSERT_TRUE(recorder->Wait());
  EXPECT_TRUE(recorder->status().ok()) << recorder->status();
  EXPECT_EQ(recorder->text(), "t0 t1 t2 ");
  ASSERT_EQ(f.fakes[0]->sequences().size(), 1u);
  EXPECT_FALSE(f.fakes[0]->sequences()[0].sequence_id().empty());
}

TEST(DispatcherTest, UnknownModelIsNotFoundAndNotReadyIsUnavailable) {
  Fixture f(1);
  auto missing =
      f.dispatcher->Submit(Request("nope", 1), std::make_shared<Recorder>());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  f.fakes[0]->set_model_state("tiny", hearth::v1::MODEL_STATE_LOADING);
  f.pool->PollNow();
  auto loading =
      f.dispatcher->Submit(Request("tiny", 1), std::make_shared<Recorder>());
  EXPECT_EQ(loading.status().code(), absl::StatusCode::kUnavailable);
}

TEST(DispatcherTest, ConcurrentRequestsShareBatches) {
  FakeWorkerOptions slow;
  slow.step_base = absl::Milliseconds(5);
  BatcherOptions batcher;
  batcher.max_batch_size = 8;
  batcher.max_queue_delay = absl::Milliseconds(20);
  Fixture f(1, slow, batcher);
  std::vector<std::shared_ptr<Recorder>> recorders;
  for (int i = 0; i < 8; ++i) {
    recorders.push_back(std::make_shared<Recorder>());
    ASSERT_TRUE(
        f.dispatcher->Submit(Request("tiny", 2), recorders.back()).ok());
  }
  for (auto& r : recorders) {
    ASSERT_TRUE(r->Wait());
    EXPECT_TRUE(r->status().ok()) << r->status();
  }
  auto sizes = f.fakes[0]->batch_sizes();
  ASSERT_FALSE(sizes.empty());
  EXPECT_EQ(*std::max_element(sizes.begin(), sizes.end()), 8);
}

TEST(DispatcherTest, FullQueueRejectsAtOnce) {
  FakeWorkerOptions slow;
  slow.step_base = absl::Milliseconds(50);
  BatcherOptions batcher;
  batcher.max_batch_size = 1;
  batcher.max_queue_size = 2;
  Fixture f(1, slow, batcher);
  std::vector<std::shared_ptr<Recorder>> recorders;
  int rejected = 0;
  const absl::Time start = absl::Now();
  for (int i = 0; i < 12; ++i) {
    auto r = std::make_shared<Recorder>();
    auto ticket = f.dispatcher->Submit(Request("tiny", 20), r);
    if (!ticket.ok()) {
      EXPECT_EQ(ticket.status().code(), absl::StatusCode::kUnavailable);
      EXPECT_NE(ticket.status().message().find("full"), std::string::npos);
      ++rejected;
    } else {
      recorders.push_back(r);
    }
  }
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(200));
  EXPECT_GT(rejected, 0);
  for (auto& r : recorders) r->Wait();
}

TEST(DispatcherTest, UnstartedRequestsMoveToAnotherWorkerWhenOneDies) {
  FakeWorkerOptions slow;
  slow.step_base = absl::Milliseconds(20);
  Fixture f(2, slow);
  // Unary-style observers may restart even after tokens.
  std::vector<std::shared_ptr<Recorder>> recorders;
  for (int i = 0; i < 6; ++i) {
    auto r = std::make_shared<Recorder>();
    r->restartable_ = true;
    recorders.push_back(r);
    ASSERT_TRUE(f.dispatcher->Submit(Request("tiny", 10), r).ok());
  }
  absl::SleepFor(absl::Milliseconds(60));
  f.fakes[0]->Kill();
  for (auto& r : recorders) {
    ASSERT_TRUE(r->Wait(absl::Seconds(10)));
    EXPECT_TRUE(r->status().ok()) << r->status();
    EXPECT_EQ(r->text(), "t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 ");
  }
}

TEST(DispatcherTest, StreamsThatProducedTokensEndUnavailable) {
  FakeWorkerOptions slow;
  slow.step_base = absl::Milliseconds(20);
  Fixture f(1, slow);
  auto r = std::make_shared<Recorder>();  // not restartable
  ASSERT_TRUE(f.dispatcher->Submit(Request("tiny", 100), r).ok());
  absl::SleepFor(absl::Milliseconds(150));
  f.fakes[0]->Kill();
  ASSERT_TRUE(r->Wait(absl::Seconds(5)));
  EXPECT_EQ(r->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(r->status().message().find("incomplete"), std::string::npos)
      << r->status();
}

TEST(DispatcherTest, NoWorkerLeftRejectsQueuedRequestsAfterGrace) {
  FakeWorkerOptions slow;
  slow.step_base = absl::Milliseconds(20);
  Fixture f(1, slow);
  auto r = std::make_shared<Recorder>();
  r->restartable_ = true;
  ASSERT_TRUE(f.dispatcher->Submit(Request("tiny", 100), r).ok());
  absl::SleepFor(absl::Milliseconds(100));
  f.fakes[0]->Kill();
  ASSERT_TRUE(r->Wait(absl::Seconds(5)));
  EXPECT_EQ(r->status().code(), absl::StatusCode::kUnavailable) << r->status();
}

TEST(DispatcherTest, CancelPropagatesToTheWorker) {
  FakeWorkerOptions slow;
  slow.step_base = absl::Milliseconds(10);
  Fixture f(1, slow);
  auto a = std::make_shared<Recorder>();
  auto b = std::make_shared<Recorder>();
  BatcherOptions unused;
  auto ta = f.dispatcher->Submit(Request("tiny", 200), a);
  auto tb = f.dispatcher->Submit(Request("tiny", 20), b);
  ASSERT_TRUE(ta.ok() && tb.ok());
  absl::SleepFor(absl::Milliseconds(80));
  (*ta)->Cancel();
  ASSERT_TRUE(a->Wait(absl::Seconds(1)));
  EXPECT_EQ(a->status().code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(b->Wait());
  EXPECT_TRUE(b->status().ok());
  // The worker heard about it (Cancel rpc or a cancelled Execute call).
  for (int i = 0; i < 100 && f.fakes[0]->running_sequences() > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(f.fakes[0]->running_sequences(), 0);
}

TEST(DispatcherTest, DeadlineTravelsToTheWorker) {
  Fixture f(1);
  auto r = std::make_shared<Recorder>();
  GenerationRequest request = Request("tiny", 2);
  request.deadline = absl::Now() + absl::Seconds(30);
  ASSERT_TRUE(f.dispatcher->Submit(request, r).ok());
  ASSERT_TRUE(r->Wait());
  ASSERT_EQ(f.fakes[0]->sequences().size(), 1u);
  EXPECT_NEAR(
      static_cast<double>(f.fakes[0]->sequences()[0].deadline_unix_ms()),
      static_cast<double>(absl::ToUnixMillis(request.deadline)), 1);
}

TEST(DispatcherTest, DrainingWorkerGetsNoNewWork) {
  Fixture f(2);
  f.fakes[0]->set_accepting(false);
  f.pool->PollNow();
  for (int i = 0; i < 5; ++i) {
    auto r = std::make_shared<Recorder>();
    ASSERT_TRUE(f.dispatcher->Submit(Request("tiny", 1), r).ok());
    ASSERT_TRUE(r->Wait());
  }
  EXPECT_EQ(f.fakes[0]->execute_calls(), 0);
  EXPECT_GT(f.fakes[1]->execute_calls(), 0);
}

// Tearing down with polls, Execute streams and Cancel rpcs in flight. gRPC
// runs client callbacks on a shared CompletionQueue that is freed when the
// last channel goes; a channel released from one of its threads made the
// process abort ("assertion failed: prior > 0") or segfault about one run in
// six. Every round must end cleanly, with every request answered.
TEST(DispatcherTest, TearDownWithCallsInFlightIsClean) {
  for (int round = 0; round < 40; ++round) {
    FakeWorkerOptions slow;
    slow.step_base = absl::Milliseconds(2);
    auto f = std::make_unique<Fixture>(1, slow);
    std::vector<std::shared_ptr<Ticket>> tickets;
    for (int i = 0; i < 3; ++i) {
      auto ticket = f->dispatcher->Submit(Request("tiny", 1000),
                                          std::make_shared<Recorder>());
      ASSERT_TRUE(ticket.ok()) << ticket.status();
      tickets.push_back(*ticket);
    }
    absl::SleepFor(absl::Milliseconds(round % 4 * 3));
    tickets[0]->Cancel();    // a Cancel rpc in flight
    f->pool->RequestPoll();  // a poll in flight
    f.reset();
    for (auto& ticket : tickets) EXPECT_TRUE(ticket->done());
  }
}

}  // namespace
}  // namespace hearth::gateway
