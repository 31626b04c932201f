#include "services/gateway/rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace hearth::gateway {
namespace {

constexpr char kRetryAfterPayload[] = "type.hearth.dev/retry_after_ns";

// Floating-point refill can land a hair below the level a computed wait
// promised; this slack (a millionth of a token) keeps the promise.
constexpr double kSlack = 1e-6;

// A classic token bucket over a caller-supplied clock. `level` may go below
// zero when a completed request used more than it reserved; the debt is then
// repaid by refill before anything else is admitted.
struct Bucket {
  double capacity = 0;  // <= 0: unlimited
  double rate = 0;      // tokens per second
  double level = 0;
  absl::Time last = absl::InfinitePast();

  bool unlimited() const { return capacity <= 0 || rate <= 0; }

  void Configure(double new_capacity, double new_rate) {
    if (new_capacity == capacity && new_rate == rate) return;
    // A fresh bucket (or one that was unlimited) starts full, so a key's first
    // burst is allowed, as with any token bucket.
    if (capacity <= 0 || rate <= 0) level = new_capacity;
    capacity = new_capacity;
    rate = new_rate;
    level = std::min(level, capacity);
  }

  void Refill(absl::Time now) {
    if (last == absl::InfinitePast() || now <= last) {
      if (last == absl::InfinitePast()) last = now;
      return;
    }
    level =
        std::min(capacity, level + absl::ToDoubleSeconds(now - last) * rate);
    last = now;
  }

  // Time until `amount` is available, rounded up to a whole microsecond so the
  // caller never comes back a fraction too early.
  absl::Duration WaitFor(double amount) const {
    double deficit = amount - level;
    if (deficit <= kSlack) return absl::ZeroDuration();
    double micros = std::ceil(deficit / rate * 1e6);
    return absl::Microseconds(static_cast<int64_t>(micros));
  }
};

}  // namespace

struct RateLimiter::KeyState {
  Bucket requests;
  Bucket tokens;
  int64_t streams = 0;
};

struct RateLimiter::Shard {
  mutable absl::Mutex mu;
  absl::flat_hash_map<std::string, std::unique_ptr<KeyState>> keys
      ABSL_GUARDED_BY(mu);
};

void SetRetryAfter(absl::Status& status, absl::Duration delay) {
  status.SetPayload(kRetryAfterPayload,
                    absl::Cord(absl::StrCat(absl::ToInt64Nanoseconds(delay))));
}

std::optional<absl::Duration> RetryAfter(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryAfterPayload);
  if (!payload) return std::nullopt;
  int64_t nanos = 0;
  if (!absl::SimpleAtoi(std::string(*payload), &nanos)) return std::nullopt;
  return absl::Nanoseconds(nanos);
}

RateLimiter::RateLimiter() {
  for (auto& shard : shards_) shard = std::make_unique<Shard>();
}

RateLimiter::~RateLimiter() = default;

RateLimiter::Shard& RateLimiter::ShardFor(absl::string_view key_id) const {
  return *shards_[absl::Hash<absl::string_view>()(key_id) % kShards];
}

absl::StatusOr<RateLimiter::Admission> RateLimiter::Admit(
    absl::string_view key_id, const RateLimits& limits, int64_t reserve_tokens,
    absl::Time now) {
  if (reserve_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reserve_tokens: must be >= 0 (got ", reserve_tokens, ")"));
  }
  Shard& shard = ShardFor(key_id);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.keys.find(key_id);
  if (it == shard.keys.end()) {
    it = shard.keys.emplace(std::string(key_id), std::make_unique<KeyState>())
             .first;
  }
  KeyState& state = *it->second;

  if (limits.max_concurrent_streams > 0 &&
      state.streams >= limits.max_concurrent_streams) {
    absl::Status status = absl::ResourceExhaustedError(
        absl::StrCat("API key '", key_id, "' has ", state.streams,
                     " concurrent streams open (max_concurrent_streams ",
                     limits.max_concurrent_streams, ")"));
    SetRetryAfter(status, stream_retry_hint_);
    return status;
  }

  double burst = static_cast<double>(limits.burst);
  if (limits.requests_per_second > 0 && burst < 1) {
    burst = std::max(1.0, std::ceil(limits.requests_per_second));
  }
  state.requests.Configure(limits.requests_per_second > 0 ? burst : 0,
                           limits.requests_per_second);
  state.tokens.Configure(static_cast<double>(limits.tokens_per_minute),
                         static_cast<double>(limits.tokens_per_minute) / 60.0);

  if (!state.tokens.unlimited() &&
      static_cast<double>(reserve_tokens) > state.tokens.capacity) {
    // No wait helps: say so rather than promise a retry that would fail.
    return absl::ResourceExhaustedError(
        absl::StrCat("request reserves ", reserve_tokens,
                     " tokens (prompt + max_new_tokens) but API key '", key_id,
                     "' allows tokens_per_minute ", limits.tokens_per_minute));
  }

  absl::Duration wait = absl::ZeroDuration();
  absl::string_view which;
  if (!state.requests.unlimited()) {
    state.requests.Refill(now);
    absl::Duration w = state.requests.WaitFor(1.0);
    if (w > wait) wait = w, which = "requests_per_second";
  }
  if (!state.tokens.unlimited()) {
    state.tokens.Refill(now);
    absl::Duration w =
        state.tokens.WaitFor(static_cast<double>(reserve_tokens));
    if (w > wait) wait = w, which = "tokens_per_minute";
  }
  if (wait > absl::ZeroDuration()) {
    absl::Status status = absl::ResourceExhaustedError(
        absl::StrFormat("API key '%s' is over its %s limit; retry after %s",
                        key_id, which, absl::FormatDuration(wait)));
    SetRetryAfter(status, wait);
    return status;
  }

  if (!state.requests.unlimited()) state.requests.level -= 1.0;
  if (!state.tokens.unlimited()) {
    state.tokens.level -= static_cast<double>(reserve_tokens);
  }
  ++state.streams;
  return Admission(&shard, &state, reserve_tokens, !state.tokens.unlimited());
}

int64_t RateLimiter::ActiveStreams(absl::string_view key_id) const {
  Shard& shard = ShardFor(key_id);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.keys.find(key_id);
  return it == shard.keys.end() ? 0 : it->second->streams;
}

RateLimiter::Admission::Admission(Admission&& other) noexcept
    : shard_(std::exchange(other.shard_, nullptr)),
      state_(std::exchange(other.state_, nullptr)),
      reserved_(std::exchange(other.reserved_, 0)),
      charged_(std::exchange(other.charged_, false)) {}

RateLimiter::Admission& RateLimiter::Admission::operator=(
    Admission&& other) noexcept {
  if (this != &other) {
    Release(std::nullopt);
    shard_ = std::exchange(other.shard_, nullptr);
    state_ = std::exchange(other.state_, nullptr);
    reserved_ = std::exchange(other.reserved_, 0);
    charged_ = std::exchange(other.charged_, false);
  }
  return *this;
}

RateLimiter::Admission::~Admission() { Release(std::nullopt); }

void RateLimiter::Admission::Complete(int64_t used_tokens) {
  Release(std::max<int64_t>(used_tokens, 0));
}

void RateLimiter::Admission::Release(std::optional<int64_t> used_tokens) {
  if (state_ == nullptr) return;
  {
    absl::MutexLock lock(&shard_->mu);
    --state_->streams;
    Bucket& tokens = state_->tokens;
    if (used_tokens && charged_ && !tokens.unlimited()) {
      tokens.level = std::min(
          tokens.capacity,
          tokens.level + static_cast<double>(reserved_ - *used_tokens));
    }
  }
  shard_ = nullptr;
  state_ = nullptr;
}

}  // namespace hearth::gateway
