// Per-key admission control: token buckets for requests/second and for
// tokens/minute, plus a cap on concurrent streams.
//
//   RateLimiter limiter;
//   auto admission = limiter.Admit(key.id, key.limits,
//                                  prompt_tokens + max_new_tokens, Now());
//   if (!admission.ok()) return admission.status();  // RESOURCE_EXHAUSTED
//   ... run the request ...
//   admission->Complete(tokens_actually_used);       // refunds the rest
//
// A request reserves its worst case (prompt + max_new_tokens) when it is
// admitted, because the gateway cannot know how many tokens generation will
// use; the unused part goes back to the bucket when it completes. A rejection
// carries a retry delay (see RetryAfter()) that is honest: if nothing else
// spends from the same key in the meantime, the same request presented that
// much later is admitted. The one exception is the stream cap, which frees up
// only when another stream of the key ends; there the delay is a hint.
//
// Thread-safe. Keys are spread over sharded mutexes so that independent keys
// do not contend; each Admit and Complete is one short critical section.
#ifndef HEARTH_SERVICES_GATEWAY_RATE_LIMITER_H_
#define HEARTH_SERVICES_GATEWAY_RATE_LIMITER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace hearth::gateway {

// A key's limits. Zero (or less) means "no limit" for each field.
struct RateLimits {
  // Sustained request rate; `burst` requests may arrive at once. A burst
  // below 1 with a positive rate is treated as max(1, ceil(rate)).
  double requests_per_second = 0;
  int64_t burst = 0;
  // Sustained token rate (prompt + generated) per minute; the bucket holds at
  // most one minute's worth, so a key can spend a full minute's budget at
  // once after being idle.
  int64_t tokens_per_minute = 0;
  int64_t max_concurrent_streams = 0;

  bool operator==(const RateLimits& o) const {
    return requests_per_second == o.requests_per_second && burst == o.burst &&
           tokens_per_minute == o.tokens_per_minute &&
           max_concurrent_streams == o.max_concurrent_streams;
  }
  bool operator!=(const RateLimits& o) const { return !(*this == o); }
};

// Attaches / reads the retry delay of a RESOURCE_EXHAUSTED status. The front
// end turns it into google.rpc.RetryInfo and a `retry-after` header.
void SetRetryAfter(absl::Status& status, absl::Duration delay);
std::optional<absl::Duration> RetryAfter(const absl::Status& status);

class RateLimiter {
 private:
  struct KeyState;
  struct Shard;

 public:
  // Proof of admission. Move-only; destroying it ends the request: it frees
  // the stream slot. Dropping it without Complete() leaves the whole token
  // reservation spent, the safe choice when usage is unknown.
  class Admission {
   public:
    Admission() = default;
    Admission(Admission&& other) noexcept;
    Admission& operator=(Admission&& other) noexcept;
    Admission(const Admission&) = delete;
    Admission& operator=(const Admission&) = delete;
    ~Admission();

    // Ends the request, returning `reserved - used_tokens` to the key's token
    // bucket (a request that used more than it reserved is charged the
    // excess). Later calls do nothing.
    void Complete(int64_t used_tokens);

    int64_t reserved_tokens() const { return reserved_; }
    bool active() const { return state_ != nullptr; }

   private:
    friend class RateLimiter;
    Admission(Shard* shard, KeyState* state, int64_t reserved, bool charged)
        : shard_(shard),
          state_(state),
          reserved_(reserved),
          charged_(charged) {}
    void Release(std::optional<int64_t> used_tokens);

    Shard* shard_ = nullptr;
    KeyState* state_ = nullptr;
    int64_t reserved_ = 0;
    // Whether `reserved_` was taken from a token bucket (the key had a
    // tokens_per_minute limit at admission); only then is there a refund.
    bool charged_ = false;
  };

  RateLimiter();
  // Every Admission must be gone first: it points into the limiter's state.
  ~RateLimiter();
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // Admits one request of key `key_id` reserving `reserve_tokens`, or returns
  // RESOURCE_EXHAUSTED (with RetryAfter() set unless no wait can help, e.g. a
  // reservation larger than the key's whole per-minute budget). `limits` may
  // differ from the previous call (a reloaded key file): buckets keep their
  // level, clipped to the new capacity. `now` must come from one monotonic
  // clock; a `now` earlier than a previous one is treated as no time passing.
  absl::StatusOr<Admission> Admit(absl::string_view key_id,
                                  const RateLimits& limits,
                                  int64_t reserve_tokens, absl::Time now);

  // Retry hint for a key at its stream cap, where the true wait is unknown.
  void set_stream_retry_hint(absl::Duration hint) { stream_retry_hint_ = hint; }

  // Streams of `key_id` currently admitted and not yet released.
  int64_t ActiveStreams(absl::string_view key_id) const;

 private:
  static constexpr int kShards = 16;

  Shard& ShardFor(absl::string_view key_id) const;

  std::array<std::unique_ptr<Shard>, kShards> shards_;
  absl::Duration stream_retry_hint_ = absl::Seconds(1);
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_RATE_LIMITER_H_
