#include "services/gateway/batcher.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace hearth::gateway {
namespace {

using ::absl::StatusCode;

// Records what the batcher told each rejected request.
struct Rejections {
  std::mutex mu;
  std::vector<std::pair<uint64_t, absl::Status>> got;

  size_t size() {
    std::lock_guard<std::mutex> lock(mu);
    return got.size();
  }
};

QueuedRequest Req(uint64_t id, Rejections* rejections = nullptr,
                  int priority = 0,
                  absl::Duration timeout = absl::ZeroDuration(),
                  int64_t cost = 1) {
  QueuedRequest request;
  request.id = id;
  request.priority = priority;
  request.timeout = timeout;
  request.cost = cost;
  request.payload = std::string("payload-") + std::to_string(id);
  if (rejections != nullptr) {
    request.on_reject = [rejections, id](const absl::Status& status) {
      std::lock_guard<std::mutex> lock(rejections->mu);
      rejections->got.emplace_back(id, status);
    };
  }
  return request;
}

std::vector<uint64_t> Ids(const std::vector<QueuedRequest>& batch) {
  std::vector<uint64_t> ids;
  for (const auto& request : batch) ids.push_back(request.id);
  return ids;
}

BatcherOptions Options(int max_batch_size = 16,
                       absl::Duration delay = absl::Microseconds(2000)) {
  BatcherOptions options;
  options.max_batch_size = max_batch_size;
  options.max_queue_delay = delay;
  EXPECT_TRUE(options.Validate("test").ok());
  return options;
}

TEST(BatcherOptions, DefaultsBatchWithoutTuning) {
  BatcherOptions options;
  EXPECT_TRUE(options.Validate("").ok());
  EXPECT_EQ(options.max_batch_size, 16);
  EXPECT_EQ(options.max_queue_delay, absl::Microseconds(2000));
  EXPECT_GT(options.max_queue_size, 0);  // bounded
  EXPECT_EQ(options.priority_levels, 1);
}

TEST(DynamicBatcher, WaitsForTheDelayThenSendsWhatItHas) {
  ManualClock clock;
  DynamicBatcher batcher("tiny", Options(), &clock);
  for (uint64_t id = 1; id <= 3; ++id)
    ASSERT_TRUE(batcher.Enqueue(Req(id)).ok());
  EXPECT_TRUE(batcher.TryNextBatch().empty());
  clock.Advance(absl::Microseconds(1999));
  EXPECT_TRUE(batcher.TryNextBatch().empty());
  clock.Advance(absl::Microseconds(1));
  auto batch = batcher.TryNextBatch();
  EXPECT_EQ(Ids(batch), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(std::any_cast<std::string>(batch[0].payload), "payload-1");
  EXPECT_EQ(batch[0].enqueue_time, absl::UnixEpoch());
  EXPECT_TRUE(batcher.TryNextBatch().empty());
}

TEST(DynamicBatcher, DelayIsMeasuredFromTheOldestRequest) {
  ManualClock clock;
  DynamicBatcher batcher("tiny", Options(), &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1)).ok());
  clock.Advance(absl::Microseconds(1500));
  ASSERT_TRUE(batcher.Enqueue(Req(2)).ok());
  clock.Advance(absl::Microseconds(499));
  EXPECT_TRUE(batcher.TryNextBatch().empty());
  clock.Advance(absl::Microseconds(1));
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{1, 2}));
}

TEST(DynamicBatcher, ZeroDelaySendsAtOnce) {
  ManualClock clock;
  DynamicBatcher batcher("tiny", Options(16, absl::ZeroDuration()), &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1)).ok());
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{1}));
}

TEST(DynamicBatcher, FullBatchGoesWithoutWaiting) {
  ManualClock clock;
  DynamicBatcher batcher("tiny", Options(4), &clock);
  for (uint64_t id = 1; id <= 6; ++id)
    ASSERT_TRUE(batcher.Enqueue(Req(id)).ok());
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(batcher.TryNextBatch().empty());  // 2 left: not full, no delay
  clock.Advance(absl::Milliseconds(2));
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{5, 6}));
}

TEST(DynamicBatcher, SendsTheLargestPreferredSizeThatCanBeFormed) {
  ManualClock clock;
  BatcherOptions options = Options(16);
  options.preferred_batch_sizes = {8, 2, 4};
  ASSERT_TRUE(options.Validate("test").ok());
  EXPECT_EQ(options.preferred_batch_sizes, (std::vector<int>{2, 4, 8}));
  DynamicBatcher batcher("tiny", options, &clock);

  ASSERT_TRUE(batcher.Enqueue(Req(1)).ok());
  EXPECT_TRUE(batcher.TryNextBatch().empty());  // 1 is not preferred
  for (uint64_t id = 2; id <= 5; ++id)
    ASSERT_TRUE(batcher.Enqueue(Req(id)).ok());
  // 5 queued: 4 is the largest preferred size that fits, sent immediately.
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(batcher.TryNextBatch().empty());
  for (uint64_t id = 6; id <= 14; ++id)
    ASSERT_TRUE(batcher.Enqueue(Req(id)).ok());
  // 10 queued: 8 goes now, then 2 (also preferred) right after.
  EXPECT_EQ(batcher.TryNextBatch().size(), 8u);
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{13, 14}));
  EXPECT_TRUE(batcher.TryNextBatch().empty());
}

TEST(DynamicBatcher, PriorityLevelsThenFifo) {
  ManualClock clock;
  BatcherOptions options = Options(16);
  options.priority_levels = 3;
  options.default_priority_level = 2;
  ASSERT_TRUE(options.Validate("test").ok());
  DynamicBatcher batcher("tiny", options, &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1, nullptr, 3)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(2, nullptr, 0)).ok());  // default: 2
  ASSERT_TRUE(batcher.Enqueue(Req(3, nullptr, 1)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(4, nullptr, 1)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(5, nullptr, 9)).ok());  // clamped to 3
  ASSERT_TRUE(batcher.Enqueue(Req(6, nullptr, 2)).ok());

  BatcherStats stats = batcher.stats();
  EXPECT_EQ(stats.queued, 6);
  EXPECT_EQ(stats.queued_per_level, (std::vector<int64_t>{2, 2, 2}));

  clock.Advance(absl::Milliseconds(2));
  auto batch = batcher.TryNextBatch();
  EXPECT_EQ(Ids(batch), (std::vector<uint64_t>{3, 4, 2, 6, 1, 5}));
  EXPECT_EQ(batch[2].priority, 2);  // the level actually used
  EXPECT_EQ(batch[5].priority, 3);
}

TEST(DynamicBatcher, HighPriorityFillsAFullBatchFirst) {
  ManualClock clock;
  BatcherOptions options = Options(2);
  options.priority_levels = 2;
  ASSERT_TRUE(options.Validate("test").ok());
  DynamicBatcher batcher("tiny", options, &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1, nullptr, 2)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(2, nullptr, 2)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(3, nullptr, 1)).ok());
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{3, 1}));
}

TEST(DynamicBatcher, FifoWithinALevel) {
  ManualClock clock;
  DynamicBatcher batcher("tiny", Options(64), &clock);
  std::vector<uint64_t> expected;
  for (uint64_t id = 100; id < 150; ++id) {
    ASSERT_TRUE(batcher.Enqueue(Req(id)).ok());
    expected.push_back(id);
    clock.Advance(absl::Microseconds(10));
  }
  clock.Advance(absl::Milliseconds(2));
  EXPECT_EQ(Ids(batcher.TryNextBatch()), expected);
}

TEST(DynamicBatcher, FullQueueRejectsImmediately) {
  ManualClock clock;
  BatcherOptions options = Options();
  options.max_queue_size = 2;
  Rejections rejections;  // outlives the batcher
  DynamicBatcher batcher("tiny", options, &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1, &rejections)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(2, &rejections)).ok());
  absl::Status status = batcher.Enqueue(Req(3, &rejections));
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(status.message(), "full")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "'tiny'")) << status;
  EXPECT_EQ(rejections.size(), 0u);  // the caller has the status already
  EXPECT_EQ(batcher.stats().rejected_full_total, 1u);
  EXPECT_EQ(batcher.stats().queued, 2);
}

TEST(DynamicBatcher, ExpiredRequestsAreRejectedThroughTheirCallback) {
  ManualClock clock;
  Rejections rejections;  // outlives the batcher
  DynamicBatcher batcher("tiny", Options(), &clock);
  ASSERT_TRUE(
      batcher.Enqueue(Req(1, &rejections, 0, absl::Milliseconds(1))).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(2, &rejections)).ok());  // no timeout
  clock.Advance(absl::Microseconds(999));
  EXPECT_TRUE(batcher.TryNextBatch().empty());
  EXPECT_EQ(rejections.size(), 0u);
  clock.Advance(absl::Microseconds(1));
  EXPECT_TRUE(batcher.TryNextBatch().empty());  // 2 still within its delay
  ASSERT_EQ(rejections.size(), 1u);
  EXPECT_EQ(rejections.got[0].first, 1u);
  EXPECT_EQ(rejections.got[0].second.code(), StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(rejections.got[0].second.message(),
                                "request timeout expired in queue"));
  clock.Advance(absl::Milliseconds(1));
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{2}));
  EXPECT_EQ(batcher.stats().rejected_timeout_total, 1u);
}

TEST(DynamicBatcher, DefaultTimeoutAndRejectExpired) {
  ManualClock clock;
  BatcherOptions options = Options();
  options.default_timeout = absl::Milliseconds(5);
  Rejections rejections;  // outlives the batcher
  DynamicBatcher batcher("tiny", options, &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1, &rejections)).ok());
  ASSERT_TRUE(
      batcher.Enqueue(Req(2, &rejections, 0, absl::Milliseconds(50))).ok());
  clock.Advance(absl::Milliseconds(5));
  EXPECT_EQ(batcher.RejectExpired(), 1);
  EXPECT_EQ(rejections.size(), 1u);
  EXPECT_EQ(batcher.stats().queued, 1);
}

TEST(DynamicBatcher, ExpiredRequestsFreeSpaceInAFullQueue) {
  ManualClock clock;
  BatcherOptions options = Options();
  options.max_queue_size = 1;
  Rejections rejections;  // outlives the batcher
  DynamicBatcher batcher("tiny", options, &clock);
  ASSERT_TRUE(
      batcher.Enqueue(Req(1, &rejections, 0, absl::Milliseconds(1))).ok());
  EXPECT_EQ(batcher.Enqueue(Req(2, &rejections)).code(),
            StatusCode::kUnavailable);
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(batcher.Enqueue(Req(3, &rejections)).ok());
  ASSERT_EQ(rejections.size(), 1u);
  EXPECT_EQ(rejections.got[0].first, 1u);
}

TEST(DynamicBatcher, ShutdownRejectsEverythingQueued) {
  ManualClock clock;
  BatcherOptions options = Options();
  options.priority_levels = 2;
  Rejections rejections;  // outlives the batcher
  DynamicBatcher batcher("tiny", options, &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1, &rejections, 1)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(2, &rejections, 2)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(3, &rejections, 1, absl::Seconds(1))).ok());
  batcher.Shutdown();
  ASSERT_EQ(rejections.size(), 3u);
  for (const auto& [id, status] : rejections.got) {
    EXPECT_EQ(status.code(), StatusCode::kUnavailable) << id;
    EXPECT_TRUE(absl::StrContains(status.message(), "shutting down"));
  }
  EXPECT_EQ(batcher.stats().queued, 0);
  EXPECT_EQ(batcher.stats().rejected_shutdown_total, 3u);
  EXPECT_EQ(batcher.Enqueue(Req(4, &rejections)).code(),
            StatusCode::kUnavailable);
  auto batch = batcher.NextBatch(absl::Seconds(10));  // returns at once
  ASSERT_TRUE(batch.ok());
  EXPECT_TRUE(batch->empty());
  batcher.Shutdown();  // idempotent
  EXPECT_EQ(rejections.size(), 3u);
}

TEST(DynamicBatcher, RequeuedRequestsGoBackToTheHead) {
  ManualClock clock;
  DynamicBatcher batcher("tiny", Options(2), &clock);
  for (uint64_t id = 1; id <= 3; ++id)
    ASSERT_TRUE(batcher.Enqueue(Req(id)).ok());
  auto batch = batcher.TryNextBatch();
  ASSERT_EQ(Ids(batch), (std::vector<uint64_t>{1, 2}));
  batcher.Requeue(std::move(batch));  // their worker died before starting
  EXPECT_EQ(batcher.stats().queued, 3);
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{1, 2}));
}

TEST(DynamicBatcher, MaxBatchTokensCapsTheBatch) {
  ManualClock clock;
  BatcherOptions options = Options(16);
  options.max_batch_tokens = 100;
  DynamicBatcher batcher("tiny", options, &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1, nullptr, 0, {}, 60)).ok());
  ASSERT_TRUE(batcher.Enqueue(Req(2, nullptr, 0, {}, 30)).ok());
  EXPECT_TRUE(batcher.TryNextBatch().empty());  // 90 tokens: not full yet
  ASSERT_TRUE(batcher.Enqueue(Req(3, nullptr, 0, {}, 20)).ok());
  EXPECT_EQ(batcher.stats().queued_tokens, 110);
  // 3 does not fit: the batch is full by tokens and goes now.
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{1, 2}));
  ASSERT_TRUE(batcher.Enqueue(Req(4, nullptr, 0, {}, 500)).ok());
  // 3 then 4 (alone over the cap) must not starve.
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{3}));
  EXPECT_EQ(Ids(batcher.TryNextBatch()), std::vector<uint64_t>{});
  clock.Advance(absl::Milliseconds(2));
  EXPECT_EQ(Ids(batcher.TryNextBatch()), (std::vector<uint64_t>{4}));
}

TEST(DynamicBatcher, BadRequestsAreRefused) {
  DynamicBatcher batcher("tiny", Options());
  EXPECT_EQ(batcher.Enqueue(Req(1, nullptr, -1)).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(batcher.Enqueue(Req(1, nullptr, 0, absl::Seconds(-1))).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(batcher.Enqueue(Req(1, nullptr, 0, {}, -5)).code(),
            StatusCode::kInvalidArgument);
}

TEST(DynamicBatcher, StatsReportQueueShape) {
  ManualClock clock;
  BatcherOptions options = Options();
  options.priority_levels = 2;
  DynamicBatcher batcher("tiny", options, &clock);
  ASSERT_TRUE(batcher.Enqueue(Req(1, nullptr, 2, {}, 10)).ok());
  clock.Advance(absl::Microseconds(700));
  ASSERT_TRUE(batcher.Enqueue(Req(2, nullptr, 1, {}, 5)).ok());
  clock.Advance(absl::Microseconds(300));
  BatcherStats stats = batcher.stats();
  EXPECT_EQ(stats.queued, 2);
  EXPECT_EQ(stats.queued_per_level, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(stats.queued_tokens, 15);
  EXPECT_EQ(stats.oldest_wait, absl::Milliseconds(1));
  EXPECT_EQ(stats.enqueued_total, 2u);
  clock.Advance(absl::Milliseconds(1));
  ASSERT_EQ(batcher.TryNextBatch().size(), 2u);
  stats = batcher.stats();
  EXPECT_EQ(stats.batches_total, 1u);
  EXPECT_EQ(stats.batched_requests_total, 2u);
  EXPECT_EQ(stats.queued, 0);
}

// Real-clock tests of the blocking API.
TEST(DynamicBatcherBlocking, NextBatchHoldsForTheDelay) {
  DynamicBatcher batcher("tiny", Options(16, absl::Milliseconds(20)));
  const absl::Time start = absl::Now();
  ASSERT_TRUE(batcher.Enqueue(Req(1)).ok());
  auto batch = batcher.NextBatch(absl::Seconds(5));
  const absl::Duration waited = absl::Now() - start;
  ASSERT_TRUE(batch.ok());
  EXPECT_EQ(Ids(*batch), (std::vector<uint64_t>{1}));
  EXPECT_GE(waited, absl::Milliseconds(20));
  EXPECT_LT(waited, absl::Seconds(2));
}

TEST(DynamicBatcherBlocking, ArrivalThatFillsTheBatchWakesTheDispatcher) {
  DynamicBatcher batcher("tiny", Options(2, absl::Seconds(30)));
  std::thread producer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    ASSERT_TRUE(batcher.Enqueue(Req(1)).ok());
    absl::SleepFor(absl::Milliseconds(20));
    ASSERT_TRUE(batcher.Enqueue(Req(2)).ok());
  });
  const absl::Time start = absl::Now();
  auto batch = batcher.NextBatch(absl::Seconds(10));
  producer.join();
  ASSERT_TRUE(batch.ok());
  EXPECT_EQ(Ids(*batch), (std::vector<uint64_t>{1, 2}));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // not the 30 s delay
}

TEST(DynamicBatcherBlocking, NextBatchTimesOutEmpty) {
  DynamicBatcher batcher("tiny", Options());
  auto batch = batcher.NextBatch(absl::Milliseconds(30));
  ASSERT_TRUE(batch.ok());
  EXPECT_TRUE(batch->empty());
}

TEST(DynamicBatcherBlocking, ShutdownWakesAWaitingDispatcher) {
  DynamicBatcher batcher("tiny", Options());
  std::thread stopper([&] {
    absl::SleepFor(absl::Milliseconds(30));
    batcher.Shutdown();
  });
  const absl::Time start = absl::Now();
  auto batch = batcher.NextBatch(absl::Seconds(30));
  stopper.join();
  ASSERT_TRUE(batch.ok());
  EXPECT_TRUE(batch->empty());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(DynamicBatcherBlocking, WaitingDispatcherRejectsExpiredRequestsOnTime) {
  DynamicBatcher batcher("tiny", Options(16, absl::Seconds(30)));
  std::atomic<int64_t> rejected_after_ms{-1};
  const absl::Time start = absl::Now();
  QueuedRequest request = Req(1, nullptr, 0, absl::Milliseconds(30));
  request.on_reject = [&](const absl::Status&) {
    rejected_after_ms = absl::ToInt64Milliseconds(absl::Now() - start);
  };
  ASSERT_TRUE(batcher.Enqueue(std::move(request)).ok());
  auto batch = batcher.NextBatch(absl::Milliseconds(600));
  ASSERT_TRUE(batch.ok());
  EXPECT_TRUE(batch->empty());
  EXPECT_GE(rejected_after_ms.load(), 30);
  EXPECT_LT(rejected_after_ms.load(), 500);
}

TEST(DynamicBatcherBlocking, ManyProducersAndDispatchersLoseNothing) {
  BatcherOptions options = Options(8, absl::Microseconds(200));
  options.max_queue_size = 0;  // unbounded for this test
  DynamicBatcher batcher("tiny", options);
  constexpr int kProducers = 4, kPerProducer = 2000;
  std::atomic<bool> done{false};
  std::mutex mu;
  std::multiset<uint64_t> seen;
  std::atomic<int> oversize{0};
  std::vector<std::thread> dispatchers;
  for (int d = 0; d < 2; ++d) {
    dispatchers.emplace_back([&] {
      while (true) {
        auto batch = batcher.NextBatch(absl::Milliseconds(5));
        if (!batch.ok()) break;
        if (batch->size() > 8) ++oversize;
        {
          std::lock_guard<std::mutex> lock(mu);
          for (const auto& request : *batch) seen.insert(request.id);
        }
        if (batch->empty() && done.load()) break;
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        ASSERT_TRUE(batcher.Enqueue(Req(p * kPerProducer + i)).ok());
      }
    });
  }
  for (auto& t : producers) t.join();
  // Let the dispatchers drain, then stop them.
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (batcher.stats().queued > 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  done = true;
  for (auto& t : dispatchers) t.join();
  EXPECT_EQ(oversize.load(), 0);
  ASSERT_EQ(seen.size(), static_cast<size_t>(kProducers * kPerProducer));
  EXPECT_EQ(std::set<uint64_t>(seen.begin(), seen.end()).size(), seen.size());
}

// Config parsing.

YAML::Node Yaml(const std::string& text) { return YAML::Load(text); }

TEST(BatchingConfig, ModelsInheritDefaults) {
  auto config = ParseBatchingConfig(Yaml(R"(
defaults: {max_batch_size: 32, max_queue_delay_microseconds: 500}
models:
  tiny:
    max_batch_size: 8
    preferred_batch_sizes: [8, 4]
    priority_levels: 3
    default_priority_level: 2
    max_queue_size: 64
    default_timeout_microseconds: 1000000
    max_batch_tokens: 4096
  big: {}
)"));
  ASSERT_TRUE(config.ok()) << config.status();
  const BatcherOptions& tiny = config->ForModel("tiny");
  EXPECT_EQ(tiny.max_batch_size, 8);
  EXPECT_EQ(tiny.max_queue_delay, absl::Microseconds(500));  // inherited
  EXPECT_EQ(tiny.preferred_batch_sizes, (std::vector<int>{4, 8}));
  EXPECT_EQ(tiny.priority_levels, 3);
  EXPECT_EQ(tiny.default_priority_level, 2);
  EXPECT_EQ(tiny.max_queue_size, 64);
  EXPECT_EQ(tiny.default_timeout, absl::Seconds(1));
  EXPECT_EQ(tiny.max_batch_tokens, 4096);
  EXPECT_EQ(config->ForModel("big").max_batch_size, 32);
  EXPECT_EQ(config->ForModel("unlisted").max_batch_size, 32);

  auto empty = ParseBatchingConfig(YAML::Node());
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->ForModel("x").max_batch_size, 16);
}

TEST(BatchingConfig, ErrorsNameTheKey) {
  struct Case {
    std::string yaml;
    std::string expected;
  };
  std::vector<Case> cases = {
      {"models: {tiny: {max_batch_size: 0}}",
       "batching.models.tiny.max_batch_size: must be >= 1 (got 0)"},
      {"models: {tiny: {max_batch_size: 4, preferred_batch_sizes: [2, 8]}}",
       "batching.models.tiny.preferred_batch_sizes: each must be in [1, "
       "max_batch_size=4] (got 8)"},
      {"models: {tiny: {priority_levels: 2, default_priority_level: 3}}",
       "batching.models.tiny.default_priority_level: must be in [1, "
       "priority_levels=2] (got 3)"},
      {"models: {tiny: {max_queue_delay_microseconds: -1}}",
       "batching.models.tiny.max_queue_delay_microseconds: must be >= 0"},
      {"models: {tiny: {max_batch: 4}}",
       "batching.models.tiny.max_batch: unknown key"},
      {"models: {tiny: {max_batch_size: many}}",
       "batching.models.tiny.max_batch_size: must be an integer"},
      {"defaults: {max_queue_size: -3}",
       "batching.defaults.max_queue_size: must be >= 0"},
      {"model: {}", "batching.model: unknown key"},
      {"models: [tiny]", "batching.models: must be a mapping"},
  };
  for (const Case& c : cases) {
    auto config = ParseBatchingConfig(Yaml(c.yaml));
    ASSERT_FALSE(config.ok()) << c.yaml;
    EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(config.status().message(), c.expected))
        << "got: " << config.status() << "\nwant: " << c.expected;
  }
}

TEST(BatcherOptionsFromYaml, SingleModel) {
  auto options =
      BatcherOptionsFromYaml(Yaml("{max_batch_size: 4}"), "batching.models.m");
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->max_batch_size, 4);
  EXPECT_EQ(options->max_queue_delay, absl::Microseconds(2000));
}

}  // namespace
}  // namespace hearth::gateway
