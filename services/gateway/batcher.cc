#include "services/gateway/batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace hearth::gateway {
namespace {

class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

std::string Field(absl::string_view path, absl::string_view name) {
  return path.empty() ? std::string(name) : absl::StrCat(path, ".", name);
}

absl::Status RangeError(absl::string_view path, absl::string_view name,
                        absl::string_view rule, int64_t got) {
  return absl::InvalidArgumentError(
      absl::StrCat(Field(path, name), ": ", rule, " (got ", got, ")"));
}

// yaml-cpp signals a bad conversion by throwing; turn that into a Status that
// names the key and its line.
absl::Status ReadInt(const YAML::Node& node, absl::string_view path,
                     absl::string_view name, int64_t* out) {
  if (node.IsScalar()) {
    try {
      *out = node.as<int64_t>();
      return absl::OkStatus();
    } catch (const YAML::Exception&) {
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      Field(path, name), ": must be an integer (line ", node.Mark().line + 1,
      node.IsScalar() ? absl::StrCat(", got \"", node.Scalar(), "\")") : ")"));
}

absl::Status ReadInt(const YAML::Node& node, absl::string_view path,
                     absl::string_view name, int* out) {
  int64_t value = 0;
  HEARTH_RETURN_IF_ERROR(ReadInt(node, path, name, &value));
  if (value < INT32_MIN || value > INT32_MAX) {
    return RangeError(path, name, "out of range", value);
  }
  *out = static_cast<int>(value);
  return absl::OkStatus();
}

absl::Status ReadMicros(const YAML::Node& node, absl::string_view path,
                        absl::string_view name, absl::Duration* out) {
  int64_t micros = 0;
  HEARTH_RETURN_IF_ERROR(ReadInt(node, path, name, &micros));
  if (micros < 0) return RangeError(path, name, "must be >= 0", micros);
  *out = absl::Microseconds(micros);
  return absl::OkStatus();
}

absl::StatusOr<BatcherOptions> OptionsFromYamlOrThrow(
    const YAML::Node& node, absl::string_view path,
    const BatcherOptions& base) {
  BatcherOptions options = base;
  if (!node || node.IsNull()) {
    HEARTH_RETURN_IF_ERROR(options.Validate(path));
    return options;
  }
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": must be a mapping (line ", node.Mark().line + 1, ")"));
  }
  for (const auto& field : node) {
    const std::string name = field.first.as<std::string>();
    const YAML::Node& value = field.second;
    if (name == "max_batch_size") {
      HEARTH_RETURN_IF_ERROR(
          ReadInt(value, path, name, &options.max_batch_size));
    } else if (name == "max_queue_delay_microseconds") {
      HEARTH_RETURN_IF_ERROR(
          ReadMicros(value, path, name, &options.max_queue_delay));
    } else if (name == "preferred_batch_sizes") {
      if (!value.IsSequence()) {
        return absl::InvalidArgumentError(
            absl::StrCat(Field(path, name), ": must be a list of integers"));
      }
      options.preferred_batch_sizes.clear();
      for (size_t i = 0; i < value.size(); ++i) {
        int size = 0;
        HEARTH_RETURN_IF_ERROR(
            ReadInt(value[i], path, absl::StrCat(name, "[", i, "]"), &size));
        options.preferred_batch_sizes.push_back(size);
      }
    } else if (name == "priority_levels") {
      HEARTH_RETURN_IF_ERROR(
          ReadInt(value, path, name, &options.priority_levels));
    } else if (name == "default_priority_level") {
      HEARTH_RETURN_IF_ERROR(
          ReadInt(value, path, name, &options.default_priority_level));
    } else if (name == "max_queue_size") {
      HEARTH_RETURN_IF_ERROR(
          ReadInt(value, path, name, &options.max_queue_size));
    } else if (name == "default_timeout_microseconds") {
      HEARTH_RETURN_IF_ERROR(
          ReadMicros(value, path, name, &options.default_timeout));
    } else if (name == "max_batch_tokens") {
      HEARTH_RETURN_IF_ERROR(
          ReadInt(value, path, name, &options.max_batch_tokens));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          Field(path, name), ": unknown key (line ",
          field.first.Mark().line + 1,
          "; expected max_batch_size, max_queue_delay_microseconds, "
          "preferred_batch_sizes, priority_levels, default_priority_level, "
          "max_queue_size, default_timeout_microseconds, max_batch_tokens)"));
    }
  }
  HEARTH_RETURN_IF_ERROR(options.Validate(path));
  return options;
}

absl::StatusOr<BatchingConfig> BatchingConfigOrThrow(const YAML::Node& node,
                                                     absl::string_view path) {
  BatchingConfig config;
  if (!node || node.IsNull()) return config;
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": must be a mapping (line ", node.Mark().line + 1, ")"));
  }
  for (const auto& field : node) {
    const std::string name = field.first.as<std::string>();
    if (name != "defaults" && name != "models") {
      return absl::InvalidArgumentError(absl::StrCat(
          Field(path, name), ": unknown key (line ",
          field.first.Mark().line + 1, "; expected defaults, models)"));
    }
  }
  HEARTH_ASSIGN_OR_RETURN(
      config.defaults,
      OptionsFromYamlOrThrow(node["defaults"], Field(path, "defaults"),
                             BatcherOptions()));
  const YAML::Node models = node["models"];
  if (models && !models.IsNull()) {
    if (!models.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Field(path, "models"),
                       ": must be a mapping of model "
                       "name to batcher settings"));
    }
    for (const auto& model : models) {
      const std::string name = model.first.as<std::string>();
      HEARTH_ASSIGN_OR_RETURN(
          BatcherOptions options,
          OptionsFromYamlOrThrow(model.second,
                                 Field(path, absl::StrCat("models.", name)),
                                 config.defaults));
      config.models.emplace(name, std::move(options));
    }
  }
  return config;
}

}  // namespace

const Clock* Clock::Real() {
  static const RealClock* clock = new RealClock();
  return clock;
}

absl::Status BatcherOptions::Validate(absl::string_view path) {
  if (max_batch_size < 1) {
    return RangeError(path, "max_batch_size", "must be >= 1", max_batch_size);
  }
  if (max_queue_delay < absl::ZeroDuration()) {
    return RangeError(path, "max_queue_delay_microseconds", "must be >= 0",
                      absl::ToInt64Microseconds(max_queue_delay));
  }
  std::sort(preferred_batch_sizes.begin(), preferred_batch_sizes.end());
  preferred_batch_sizes.erase(
      std::unique(preferred_batch_sizes.begin(), preferred_batch_sizes.end()),
      preferred_batch_sizes.end());
  for (int size : preferred_batch_sizes) {
    if (size < 1 || size > max_batch_size) {
      return RangeError(path, "preferred_batch_sizes",
                        absl::StrCat("each must be in [1, max_batch_size=",
                                     max_batch_size, "]"),
                        size);
    }
  }
  if (priority_levels < 1) {
    return RangeError(path, "priority_levels", "must be >= 1", priority_levels);
  }
  if (default_priority_level < 1 || default_priority_level > priority_levels) {
    return RangeError(
        path, "default_priority_level",
        absl::StrCat("must be in [1, priority_levels=", priority_levels, "]"),
        default_priority_level);
  }
  if (max_queue_size < 0) {
    return RangeError(path, "max_queue_size", "must be >= 0 (0 = unbounded)",
                      max_queue_size);
  }
  if (default_timeout < absl::ZeroDuration()) {
    return RangeError(path, "default_timeout_microseconds", "must be >= 0",
                      absl::ToInt64Microseconds(default_timeout));
  }
  if (max_batch_tokens < 0) {
    return RangeError(path, "max_batch_tokens", "must be >= 0 (0 = no cap)",
                      max_batch_tokens);
  }
  return absl::OkStatus();
}

absl::StatusOr<BatcherOptions> BatcherOptionsFromYaml(
    const YAML::Node& node, absl::string_view path,
    const BatcherOptions& base) {
  try {
    return OptionsFromYamlOrThrow(node, path, base);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": line ", e.mark.line + 1, ": ", e.msg));
  }
}

absl::StatusOr<BatchingConfig> ParseBatchingConfig(const YAML::Node& batching,
                                                   absl::string_view path) {
  try {
    return BatchingConfigOrThrow(batching, path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": line ", e.mark.line + 1, ": ", e.msg));
  }
}

const BatcherOptions& BatchingConfig::ForModel(const std::string& model) const {
  auto it = models.find(model);
  return it == models.end() ? defaults : it->second;
}

// ---------------------------------------------------------------------------
// DynamicBatcher

DynamicBatcher::DynamicBatcher(std::string model, BatcherOptions options,
                               const Clock* clock)
    : model_(std::move(model)), options_(std::move(options)), clock_(clock) {
  absl::MutexLock lock(&mu_);
  levels_.resize(options_.priority_levels);
  counters_.queued_per_level.assign(options_.priority_levels, 0);
}

DynamicBatcher::~DynamicBatcher() { Shutdown(); }

absl::Status DynamicBatcher::TimeoutStatus() const {
  return absl::UnavailableError(
      absl::StrCat("request timeout expired in queue (model '", model_, "')"));
}

absl::Status DynamicBatcher::ShutdownStatus() const {
  return absl::UnavailableError(absl::StrCat(
      "model '", model_, "' is shutting down; the request was not started"));
}

void DynamicBatcher::RejectAll(std::vector<QueuedRequest>& requests,
                               const absl::Status& status) {
  for (QueuedRequest& request : requests) {
    if (request.on_reject) request.on_reject(status);
  }
  requests.clear();
}

void DynamicBatcher::InsertLocked(QueuedRequest request, bool at_front) {
  const int level = request.priority - 1;
  EntryList& list = levels_[level];
  const int64_t cost = request.cost;
  auto it = list.emplace(at_front ? list.begin() : list.end());
  it->request = std::move(request);
  if (it->request.timeout > absl::ZeroDuration()) {
    it->has_deadline = true;
    it->expiry =
        expiries_.emplace(it->request.enqueue_time + it->request.timeout, it);
  }
  ++queued_;
  queued_tokens_ += cost;
  ++counters_.queued_per_level[level];
}

QueuedRequest DynamicBatcher::PopLocked(EntryList& list,
                                        EntryList::iterator it) {
  if (it->has_deadline) expiries_.erase(it->expiry);
  QueuedRequest request = std::move(it->request);
  list.erase(it);
  --queued_;
  queued_tokens_ -= request.cost;
  --counters_.queued_per_level[request.priority - 1];
  return request;
}

void DynamicBatcher::TakeExpiredLocked(absl::Time now,
                                       std::vector<QueuedRequest>* out) {
  while (!expiries_.empty() && expiries_.begin()->first <= now) {
    EntryList::iterator it = expiries_.begin()->second;
    out->push_back(PopLocked(levels_[it->request.priority - 1], it));
    ++counters_.rejected_timeout_total;
  }
}

absl::Status DynamicBatcher::Enqueue(QueuedRequest request) {
  if (request.priority < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("priority: must be >= 0 (0 = default level) (got ",
                     request.priority, ")"));
  }
  if (request.timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout: must be >= 0");
  }
  if (request.cost < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cost: must be >= 0 (got ", request.cost, ")"));
  }
  if (request.priority == 0) request.priority = options_.default_priority_level;
  request.priority = std::min(request.priority, options_.priority_levels);
  if (request.timeout == absl::ZeroDuration()) {
    request.timeout = options_.default_timeout;
  }

  std::vector<QueuedRequest> expired;
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    if (shutdown_) {
      status = ShutdownStatus();
    } else {
      // Requests past their deadline must not hold places a live one needs.
      TakeExpiredLocked(now, &expired);
      if (options_.max_queue_size > 0 && queued_ >= options_.max_queue_size) {
        ++counters_.rejected_full_total;
        status = absl::UnavailableError(absl::StrCat(
            "queue for model '", model_, "' is full (max_queue_size ",
            options_.max_queue_size, "); retry on another replica or later"));
      } else {
        request.enqueue_time = now;
        InsertLocked(std::move(request), /*at_front=*/false);
        ++counters_.enqueued_total;
        cv_.Signal();
      }
    }
  }
  RejectAll(expired, TimeoutStatus());
  return status;
}

std::vector<QueuedRequest> DynamicBatcher::FormBatchLocked(absl::Time now,
                                                           absl::Time* wake) {
  *wake = expiries_.empty() ? absl::InfiniteFuture() : expiries_.begin()->first;
  if (queued_ == 0) return {};

  // Step 1: how many requests, in priority/FIFO order, fit in one batch.
  int fit = 0;
  int64_t tokens = 0;
  bool full = false;
  absl::Time oldest = absl::InfiniteFuture();
  for (const EntryList& list : levels_) {
    if (!list.empty())
      oldest = std::min(oldest, list.front().request.enqueue_time);
    for (const Entry& entry : list) {
      if (fit == options_.max_batch_size) {
        full = true;
        break;
      }
      if (options_.max_batch_tokens > 0 && fit > 0 &&
          tokens + entry.request.cost > options_.max_batch_tokens) {
        full = true;
        break;
      }
      ++fit;
      tokens += entry.request.cost;
    }
    if (full) break;
  }
  if (fit == options_.max_batch_size) full = true;
  // `oldest` skips the levels after a break, which only happens when the
  // batch is full and the delay no longer matters.

  // Steps 2-4.
  int send = 0;
  for (auto it = options_.preferred_batch_sizes.rbegin();
       it != options_.preferred_batch_sizes.rend(); ++it) {
    if (*it <= fit) {
      send = *it;
      break;
    }
  }
  if (send == 0) {
    if (full || now >= oldest + options_.max_queue_delay) {
      send = fit;
    } else {
      *wake = std::min(*wake, oldest + options_.max_queue_delay);
      return {};
    }
  }

  std::vector<QueuedRequest> batch;
  batch.reserve(send);
  for (EntryList& list : levels_) {
    while (static_cast<int>(batch.size()) < send && !list.empty()) {
      batch.push_back(PopLocked(list, list.begin()));
    }
  }
  ++counters_.batches_total;
  counters_.batched_requests_total += batch.size();
  return batch;
}

absl::StatusOr<std::vector<QueuedRequest>> DynamicBatcher::NextBatch(
    absl::Duration wait) {
  const absl::Time give_up =
      clock_->Now() + std::max(wait, absl::ZeroDuration());
  std::vector<QueuedRequest> batch;
  std::vector<QueuedRequest> expired;
  mu_.Lock();
  while (!shutdown_) {
    const absl::Time now = clock_->Now();
    TakeExpiredLocked(now, &expired);
    if (!expired.empty()) {
      // Tell the clients now rather than after the wait.
      mu_.Unlock();
      RejectAll(expired, TimeoutStatus());
      mu_.Lock();
      continue;
    }
    absl::Time wake;
    batch = FormBatchLocked(now, &wake);
    if (!batch.empty() || now >= give_up) break;
    cv_.WaitWithTimeout(&mu_, std::min(wake, give_up) - now);
  }
  const bool more = !shutdown_ && queued_ > 0;
  mu_.Unlock();
  // Another idle dispatcher may be able to take what is left.
  if (more && !batch.empty()) cv_.Signal();
  return batch;
}

std::vector<QueuedRequest> DynamicBatcher::TryNextBatch() {
  std::vector<QueuedRequest> batch;
  std::vector<QueuedRequest> expired;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return {};
    const absl::Time now = clock_->Now();
    TakeExpiredLocked(now, &expired);
    absl::Time wake;
    batch = FormBatchLocked(now, &wake);
  }
  RejectAll(expired, TimeoutStatus());
  return batch;
}

void DynamicBatcher::Requeue(std::vector<QueuedRequest> requests) {
  {
    absl::MutexLock lock(&mu_);
    if (!shutdown_) {
      // Reverse order so that each level's head ends up in original order.
      for (auto it = requests.rbegin(); it != requests.rend(); ++it) {
        it->priority = std::clamp(it->priority, 1, options_.priority_levels);
        InsertLocked(std::move(*it), /*at_front=*/true);
      }
      requests.clear();
      cv_.Signal();
    } else {
      counters_.rejected_shutdown_total += requests.size();
    }
  }
  RejectAll(requests, ShutdownStatus());
}

int DynamicBatcher::RejectExpired() {
  std::vector<QueuedRequest> expired;
  {
    absl::MutexLock lock(&mu_);
    TakeExpiredLocked(clock_->Now(), &expired);
  }
  const int count = static_cast<int>(expired.size());
  RejectAll(expired, TimeoutStatus());
  return count;
}

void DynamicBatcher::Shutdown() {
  std::vector<QueuedRequest> dropped;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    for (EntryList& list : levels_) {
      while (!list.empty()) dropped.push_back(PopLocked(list, list.begin()));
    }
    counters_.rejected_shutdown_total += dropped.size();
    cv_.SignalAll();
  }
  RejectAll(dropped, ShutdownStatus());
}

BatcherStats DynamicBatcher::stats() {
  RejectExpired();
  absl::MutexLock lock(&mu_);
  BatcherStats stats = counters_;
  stats.queued = queued_;
  stats.queued_tokens = queued_tokens_;
  const absl::Time now = clock_->Now();
  for (const EntryList& list : levels_) {
    if (!list.empty()) {
      stats.oldest_wait =
          std::max(stats.oldest_wait, now - list.front().request.enqueue_time);
    }
  }
  return stats;
}

}  // namespace hearth::gateway
