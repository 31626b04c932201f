#include "services/gateway/rate_limiter.h"

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace hearth::gateway {
namespace {

using ::absl::StatusCode;

const absl::Time kT0 = absl::FromUnixSeconds(1000000);

RateLimits Rps(double rate, int64_t burst) {
  RateLimits limits;
  limits.requests_per_second = rate;
  limits.burst = burst;
  return limits;
}

RateLimits Tpm(int64_t tokens_per_minute) {
  RateLimits limits;
  limits.tokens_per_minute = tokens_per_minute;
  return limits;
}

// |a - b| <= 1us: waits are rounded up to whole microseconds.
void ExpectDurationNear(absl::Duration a, absl::Duration b) {
  EXPECT_LE(absl::AbsDuration(a - b), absl::Microseconds(1))
      << a << " vs " << b;
}

TEST(RateLimiter, BurstThenRejectWithHonestRetryAfter) {
  RateLimiter limiter;
  const RateLimits limits = Rps(10, 5);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(limiter.Admit("k", limits, 0, kT0).ok()) << i;
  }
  auto rejected = limiter.Admit("k", limits, 0, kT0);
  ASSERT_EQ(rejected.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(
      absl::StrContains(rejected.status().message(), "requests_per_second"))
      << rejected.status();
  std::optional<absl::Duration> retry = RetryAfter(rejected.status());
  ASSERT_TRUE(retry.has_value());
  ExpectDurationNear(*retry, absl::Milliseconds(100));  // 1 request at 10/s

  // A hair early is still too early; at retry_after it goes through.
  EXPECT_FALSE(
      limiter.Admit("k", limits, 0, kT0 + *retry - absl::Microseconds(2)).ok());
  EXPECT_TRUE(limiter.Admit("k", limits, 0, kT0 + *retry).ok());
  // The bucket is empty again.
  EXPECT_FALSE(limiter.Admit("k", limits, 0, kT0 + *retry).ok());
}

TEST(RateLimiter, BucketRefillsToBurstOnly) {
  RateLimiter limiter;
  const RateLimits limits = Rps(2, 3);
  ASSERT_TRUE(limiter.Admit("k", limits, 0, kT0).ok());
  // An hour idle refills to the burst of 3, not 7200.
  const absl::Time later = kT0 + absl::Hours(1);
  int admitted = 0;
  while (limiter.Admit("k", limits, 0, later).ok()) ++admitted;
  EXPECT_EQ(admitted, 3);
}

TEST(RateLimiter, KeysAreIndependent) {
  RateLimiter limiter;
  const RateLimits limits = Rps(1, 1);
  EXPECT_TRUE(limiter.Admit("a", limits, 0, kT0).ok());
  EXPECT_FALSE(limiter.Admit("a", limits, 0, kT0).ok());
  EXPECT_TRUE(limiter.Admit("b", limits, 0, kT0).ok());
}

TEST(RateLimiter, TokenReservationIsRefundedAtCompletion) {
  RateLimiter limiter;
  const RateLimits limits = Tpm(600);  // 10 tokens/s, bucket of 600
  auto first = limiter.Admit("k", limits, 500, kT0);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->reserved_tokens(), 500);

  auto second = limiter.Admit("k", limits, 500, kT0);
  ASSERT_EQ(second.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(
      absl::StrContains(second.status().message(), "tokens_per_minute"));
  // 100 left, 400 short at 10 tokens/s.
  ExpectDurationNear(*RetryAfter(second.status()), absl::Seconds(40));

  first->Complete(100);  // used 100 of 500: 400 come back
  EXPECT_TRUE(limiter.Admit("k", limits, 500, kT0).ok());
}

TEST(RateLimiter, DroppedAdmissionKeepsTheWholeReservation) {
  RateLimiter limiter;
  const RateLimits limits = Tpm(600);
  { auto admission = limiter.Admit("k", limits, 500, kT0); }
  EXPECT_FALSE(limiter.Admit("k", limits, 200, kT0).ok());
  EXPECT_TRUE(limiter.Admit("k", limits, 100, kT0).ok());
}

TEST(RateLimiter, OverspendIsCharged) {
  RateLimiter limiter;
  const RateLimits limits = Tpm(600);
  auto admission = limiter.Admit("k", limits, 100, kT0);
  ASSERT_TRUE(admission.ok());
  admission->Complete(400);  // 300 more than reserved: 200 left
  EXPECT_FALSE(limiter.Admit("k", limits, 201, kT0).ok());
  EXPECT_TRUE(limiter.Admit("k", limits, 200, kT0).ok());
}

TEST(RateLimiter, ReservationLargerThanTheBudgetHasNoRetry) {
  RateLimiter limiter;
  auto result = limiter.Admit("k", Tpm(600), 601, kT0);
  ASSERT_EQ(result.status().code(), StatusCode::kResourceExhausted);
  EXPECT_FALSE(RetryAfter(result.status()).has_value());
  EXPECT_TRUE(absl::StrContains(result.status().message(), "601"));
}

TEST(RateLimiter, ConcurrentStreamCap) {
  RateLimiter limiter;
  RateLimits limits;
  limits.max_concurrent_streams = 2;
  auto a = limiter.Admit("k", limits, 0, kT0);
  auto b = limiter.Admit("k", limits, 0, kT0);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(limiter.ActiveStreams("k"), 2);
  auto c = limiter.Admit("k", limits, 0, kT0);
  ASSERT_EQ(c.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(
      absl::StrContains(c.status().message(), "max_concurrent_streams"));
  EXPECT_TRUE(RetryAfter(c.status()).has_value());

  a->Complete(0);  // frees the slot
  EXPECT_EQ(limiter.ActiveStreams("k"), 1);
  auto d = limiter.Admit("k", limits, 0, kT0);
  ASSERT_TRUE(d.ok());
  // Moving an admission moves the slot; destroying the moved-from frees none.
  RateLimiter::Admission moved = std::move(*d);
  EXPECT_FALSE(d->active());
  EXPECT_EQ(limiter.ActiveStreams("k"), 2);
  { RateLimiter::Admission gone = std::move(moved); }
  EXPECT_EQ(limiter.ActiveStreams("k"), 1);
  b->Complete(0);
  b->Complete(0);  // idempotent
  EXPECT_EQ(limiter.ActiveStreams("k"), 0);
}

TEST(RateLimiter, UnlimitedKeyIsAlwaysAdmitted) {
  RateLimiter limiter;
  std::vector<RateLimiter::Admission> held;
  for (int i = 0; i < 1000; ++i) {
    auto admission = limiter.Admit("k", RateLimits(), 1 << 20, kT0);
    ASSERT_TRUE(admission.ok());
    held.push_back(std::move(*admission));
  }
}

TEST(RateLimiter, LoweredLimitsClipTheBucket) {
  RateLimiter limiter;
  ASSERT_TRUE(limiter.Admit("k", Rps(1, 100), 0, kT0).ok());  // 99 left
  int admitted = 0;
  while (limiter.Admit("k", Rps(1, 3), 0, kT0).ok()) ++admitted;
  EXPECT_EQ(admitted, 3);
}

// The property the front end promises in `retry-after`: a client that waits
// exactly that long gets through, and a wait much shorter would not have.
TEST(RateLimiter, RetryAfterIsHonestUnderRandomLoad) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    RateLimiter limiter;
    RateLimits limits;
    limits.requests_per_second =
        std::uniform_real_distribution<double>(0.3, 50)(rng);
    limits.burst = std::uniform_int_distribution<int>(1, 8)(rng);
    limits.tokens_per_minute =
        std::uniform_int_distribution<int>(500, 20000)(rng);
    absl::Time now = kT0;
    int rejections = 0;
    for (int i = 0; i < 300; ++i) {
      now += absl::Microseconds(
          std::uniform_int_distribution<int>(0, 200000)(rng));
      int64_t reserve = std::uniform_int_distribution<int64_t>(
          0, limits.tokens_per_minute / 2)(rng);
      auto result = limiter.Admit("k", limits, reserve, now);
      if (result.ok()) {
        result->Complete(
            std::uniform_int_distribution<int64_t>(0, reserve)(rng));
        continue;
      }
      ++rejections;
      std::optional<absl::Duration> retry = RetryAfter(result.status());
      ASSERT_TRUE(retry.has_value()) << result.status();
      ASSERT_GT(*retry, absl::ZeroDuration());
      // 50us early is a deficit of >= 1.5e-5 tokens at the slowest rate here,
      // well above the float slack the limiter allows.
      if (*retry > absl::Microseconds(100)) {
        EXPECT_FALSE(limiter
                         .Admit("k", limits, reserve,
                                now + *retry - absl::Microseconds(50))
                         .ok())
            << "retry_after " << *retry << " is not tight";
      }
      now += *retry;
      auto retried = limiter.Admit("k", limits, reserve, now);
      ASSERT_TRUE(retried.ok())
          << "trial " << trial << " request " << i << ": waited " << *retry
          << " and got " << retried.status();
      retried->Complete(reserve);
    }
    EXPECT_GT(rejections, 0) << "trial " << trial << " never hit a limit";
  }
}

TEST(RateLimiter, ConcurrentAdmitsNeverExceedTheBurst) {
  RateLimiter limiter;
  const RateLimits limits = Rps(1, 1000);
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        auto admission = limiter.Admit("shared", limits, 0, kT0);
        if (admission.ok()) {
          ++admitted;
          admission->Complete(0);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(admitted.load(), 1000);
  EXPECT_EQ(limiter.ActiveStreams("shared"), 0);
}

TEST(RateLimiter, RetryAfterPayloadRoundTrips) {
  absl::Status status = absl::ResourceExhaustedError("slow down");
  EXPECT_FALSE(RetryAfter(status).has_value());
  SetRetryAfter(status, absl::Milliseconds(1500));
  EXPECT_EQ(RetryAfter(status), absl::Milliseconds(1500));
}

}  // namespace
}  // namespace hearth::gateway
