#include "services/worker/scheduler.h"

#include <deque>
#include <vector>

#include "gtest/gtest.h"

namespace hearth::worker {
namespace {

SchedulerOptions Options(int64_t budget, int64_t kv_tokens,
                         int64_t max_running = 64) {
  SchedulerOptions o;
  o.max_batch_tokens = budget;
  o.max_running_sequences = max_running;
  o.kv_block_size = 4;
  o.kv_blocks = kv_tokens / 4;
  return o;
}

ScheduledSequence Seq(int64_t prompt, int64_t max_new, uint32_t priority = 0) {
  ScheduledSequence s;
  s.prompt_tokens = prompt;
  s.reserve_tokens = prompt + max_new;
  s.priority = priority;
  return s;
}

TEST(SchedulerTest, NewSequencesJoinAtTheNextStepAndDecodeComesFirst) {
  Scheduler scheduler(Options(100, 1000));
  ScheduledSequence a = Seq(10, 5);
  scheduler.Add(&a);
  auto step = scheduler.Schedule();
  ASSERT_EQ(step.size(), 1u);
  EXPECT_TRUE(step[0].newly_admitted);
  EXPECT_TRUE(step[0].is_prefill);
  EXPECT_EQ(step[0].num_tokens, 10);
  EXPECT_TRUE(step[0].produces_token);
  scheduler.Commit(step);

  ScheduledSequence b = Seq(7, 5);
  scheduler.Add(&b);
  step = scheduler.Schedule();
  ASSERT_EQ(step.size(), 2u);
  EXPECT_EQ(step[0].sequence, &a);  // Decode of a first.
  EXPECT_FALSE(step[0].is_prefill);
  EXPECT_EQ(step[0].num_tokens, 1);
  EXPECT_EQ(step[1].sequence, &b);
  EXPECT_EQ(step[1].num_tokens, 7);
  scheduler.Commit(step);

  // Finished sequences leave at once.
  scheduler.Remove(&a);
  step = scheduler.Schedule();
  ASSERT_EQ(step.size(), 1u);
  EXPECT_EQ(step[0].sequence, &b);
  EXPECT_EQ(scheduler.num_running(), 1);
}

TEST(SchedulerTest, LongPromptsArePrefilledInChunksUnderTheBudget) {
  Scheduler scheduler(Options(8, 1000));
  ScheduledSequence running = Seq(2, 50);
  scheduler.Add(&running);
  scheduler.Commit(scheduler.Schedule());
  ScheduledSequence big = Seq(20, 4);
  scheduler.Add(&big);
  std::vector<int64_t> chunks;
  while (!big.prefill_done()) {
    auto step = scheduler.Schedule();
    ASSERT_EQ(step.size(), 2u);
    EXPECT_EQ(step[0].sequence, &running);  // Keeps decoding meanwhile.
    EXPECT_EQ(step[1].sequence, &big);
    chunks.push_back(step[1].num_tokens);
    EXPECT_EQ(step[1].produces_token, big.prefilled + step[1].num_tokens == 20);
    scheduler.Commit(step);
  }
  EXPECT_EQ(chunks, (std::vector<int64_t>{7, 7, 6}));
}

TEST(SchedulerTest, AdmissionWaitsForKvSpaceAndKeepsFifo) {
  // 40 tokens of cache = 10 blocks of 4.
  Scheduler scheduler(Options(1000, 40));
  ScheduledSequence a = Seq(10, 10);  // 5 blocks.
  ScheduledSequence b = Seq(10, 10);  // 5 blocks.
  ScheduledSequence c = Seq(10, 10);  // Waits.
  ScheduledSequence d = Seq(1, 1);    // Would fit, but must not overtake c.
  for (auto* s : {&a, &b, &c, &d}) scheduler.Add(s);
  auto step = scheduler.Schedule();
  EXPECT_EQ(step.size(), 2u);
  EXPECT_EQ(scheduler.num_waiting(), 2);
  EXPECT_EQ(scheduler.unreserved_tokens(), 0);
  scheduler.Commit(step);
  scheduler.Remove(&a);  // Finishing gives the reservation back.
  EXPECT_EQ(scheduler.unreserved_tokens(), 20);
  step = scheduler.Schedule();
  ASSERT_EQ(step.size(), 2u);
  EXPECT_EQ(step[1].sequence, &c);
  EXPECT_EQ(scheduler.waiting().front(), &d);  // The cache is full again.
  EXPECT_TRUE(scheduler.CanEverFit(40));
  EXPECT_FALSE(scheduler.CanEverFit(41));
}

TEST(SchedulerTest, PriorityOrdersAdmission) {
  Scheduler scheduler(Options(1000, 1000, /*max_running=*/1));
  ScheduledSequence low = Seq(1, 1, 5);
  ScheduledSequence normal = Seq(1, 1, 0);  // Default level 2.
  ScheduledSequence urgent = Seq(1, 1, 1);
  for (auto* s : {&low, &normal, &urgent}) scheduler.Add(s);
  std::vector<ScheduledSequence*> order;
  while (!scheduler.empty()) {
    auto step = scheduler.Schedule();
    ASSERT_EQ(step.size(), 1u);
    order.push_back(step[0].sequence);
    scheduler.Commit(step);
    scheduler.Remove(step[0].sequence);
  }
  EXPECT_EQ(order, (std::vector<ScheduledSequence*>{&urgent, &normal, &low}));
}

TEST(SchedulerTest, RemovingAWaitingSequenceLeavesOthersAlone) {
  Scheduler scheduler(Options(1000, 1000, 1));
  ScheduledSequence a = Seq(1, 1), b = Seq(1, 1), c = Seq(1, 1);
  for (auto* s : {&a, &b, &c}) scheduler.Add(s);
  scheduler.Commit(scheduler.Schedule());  // a runs.
  scheduler.Remove(&b);
  EXPECT_EQ(scheduler.num_waiting(), 1);
  EXPECT_EQ(scheduler.waiting().front(), &c);
  ScheduledSequence stranger = Seq(1, 1);  // Never added: a no-op.
  scheduler.Remove(&stranger);
  EXPECT_EQ(scheduler.num_waiting(), 1);
  EXPECT_EQ(scheduler.num_running(), 1);
}

TEST(SchedulerTest, RunningBatchIsCapped) {
  Scheduler scheduler(Options(100, 1000, /*max_running=*/3));
  std::deque<ScheduledSequence> seqs;
  for (int i = 0; i < 5; ++i) {
    seqs.push_back(Seq(2, 10));
    scheduler.Add(&seqs.back());
  }
  auto step = scheduler.Schedule();
  EXPECT_EQ(step.size(), 3u);
  scheduler.Commit(step);
  step = scheduler.Schedule();
  EXPECT_EQ(step.size(), 3u);
  for (const StepEntry& e : step) EXPECT_FALSE(e.is_prefill);
  EXPECT_EQ(scheduler.num_waiting(), 2);
}

}  // namespace
}  // namespace hearth::worker
