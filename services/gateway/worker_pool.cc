#include "services/gateway/worker_pool.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/log/logging.h"
#include "grpcpp/grpcpp.h"

namespace hearth::gateway {
namespace {

// Poll failures in a row after which a worker's in-flight calls are
// cancelled: one failed poll may be a hiccup, two (2 x poll_timeout without
// an answer) means the streams on it would hang.
constexpr int kFailuresBeforeCancel = 2;

absl::Status CheckAddress(absl::string_view address, absl::string_view flag) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port <= 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": \"", address, "\" is not host:port"));
  }
  return absl::OkStatus();
}

uint64_t FreeKvTokens(const hearth::v1::WorkerStatus& status) {
  uint64_t free = 0;
  for (const auto& device : status.devices()) {
    free += device.kv_cache_free_tokens();
  }
  return free;
}

// gRPC 1.51 on Linux runs client (and server) callbacks on one shared
// CompletionQueue that it creates when the first callback channel appears and
// tears down (threads joined, queue freed) when the last one goes. Tearing it
// down races with its own threads (a channel released on one of them joins
// itself; see the class comment), so the gateway keeps it for the life of the
// process: one idle channel that made one callback call, never released.
void PinCallbackQueue() {
  static const bool pinned = [] {
    auto* channel = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel("unix:/nonexistent/hearth-gateway-pin",
                            grpc::InsecureChannelCredentials()));
    auto* stub = hearth::v1::Worker::NewStub(*channel).release();
    struct Pin {
      grpc::ClientContext context;
      hearth::v1::GetStatusRequest request;
      hearth::v1::WorkerStatus response;
    };
    auto* pin = new Pin;  // leaked with the channel, on purpose
    pin->context.set_deadline(std::chrono::system_clock::now());
    stub->async()->GetStatus(&pin->context, &pin->request, &pin->response,
                             [](grpc::Status) {});
    return true;
  }();
  (void)pinned;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseWorkerList(
    absl::string_view list, absl::string_view flag) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;
    absl::Status status = CheckAddress(part, flag);
    if (!status.ok()) return status;
    out.emplace_back(part);
  }
  return out;
}

// ---------------------------------------------------------------------------
// WorkerHandle

WorkerHandle::WorkerHandle(
    std::string address, std::shared_ptr<grpc::ChannelCredentials> credentials)
    : address_(std::move(address)) {
  grpc::ChannelArguments args;
  // Reconnect quickly after a worker restarts; the default backoff grows to
  // two minutes, during which a recovered worker would be ignored.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  // Detect a silently dead peer on long streams.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(
      address_, credentials ? credentials : grpc::InsecureChannelCredentials(),
      args);
  stub_ = hearth::v1::Worker::NewStub(channel);
}

WorkerHandle::~WorkerHandle() = default;

uint64_t WorkerHandle::RegisterCall(std::function<void()> cancel) {
  absl::MutexLock lock(&calls_mu_);
  const uint64_t id = next_call_id_++;
  calls_.emplace(id, std::move(cancel));
  return id;
}

void WorkerHandle::UnregisterCall(uint64_t id) {
  absl::MutexLock lock(&calls_mu_);
  calls_.erase(id);
}

void WorkerHandle::CancelAllCalls() {
  std::vector<std::function<void()>> cancels;
  {
    absl::MutexLock lock(&calls_mu_);
    for (auto& [id, cancel] : calls_) cancels.push_back(cancel);
  }
  for (auto& cancel : cancels) cancel();
}

// ---------------------------------------------------------------------------
// Lease

WorkerPool::Lease& WorkerPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    worker_ = std::move(other.worker_);
    model_ = std::move(other.model_);
    other.pool_ = nullptr;
    other.worker_ = nullptr;
  }
  return *this;
}

void WorkerPool::Lease::Release() {
  if (worker_ != nullptr && pool_ != nullptr) {
    pool_->ReleaseSlot(worker_.get(), model_);
  }
  worker_ = nullptr;
  pool_ = nullptr;
}

// ---------------------------------------------------------------------------
// CallToken

WorkerPool::CallToken& WorkerPool::CallToken::operator=(
    CallToken&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    other.pool_ = nullptr;
  }
  return *this;
}

void WorkerPool::CallToken::Release() {
  if (pool_ == nullptr) return;
  WorkerPool* pool = pool_;
  pool_ = nullptr;
  absl::MutexLock lock(&pool->mu_);
  --pool->calls_outstanding_;
}

WorkerPool::CallToken WorkerPool::TrackCall() {
  CallToken token;
  absl::MutexLock lock(&mu_);
  ++calls_outstanding_;
  token.pool_ = this;
  return token;
}

// ---------------------------------------------------------------------------
// WorkerPool

WorkerPool::WorkerPool(WorkerPoolOptions options)
    : options_(std::move(options)) {
  PinCallbackQueue();
  absl::MutexLock lock(&mu_);
  for (const std::string& address : options_.static_workers) {
    Entry& entry = workers_[address];
    if (!entry.handle) {
      entry.handle =
          std::make_shared<WorkerHandle>(address, options_.credentials);
    }
  }
}

WorkerPool::~WorkerPool() { Stop(); }

void WorkerPool::Start() {
  Resolve();
  PollAll(/*wait=*/true);
  absl::MutexLock lock(&loop_mu_);
  if (!loop_.joinable() && !stop_) loop_ = std::thread([this] { RunLoop(); });
}

void WorkerPool::Stop() {
  {
    absl::MutexLock lock(&loop_mu_);
    stop_ = true;
  }
  if (loop_.joinable()) loop_.join();
  // Streams still running would keep their tokens forever; end them (the
  // dispatcher has normally done so already).
  std::vector<std::shared_ptr<WorkerHandle>> handles;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [address, entry] : workers_) handles.push_back(entry.handle);
    for (auto& handle : retired_) handles.push_back(handle);
  }
  for (auto& handle : handles) handle->CancelAllCalls();
  handles.clear();
  // Every call object (and its ClientContext) must be gone before the
  // channels can go; see the class comment.
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &WorkerPool::NoCallsOutstanding));
}

bool WorkerPool::NoCallsOutstanding() const {
  return polls_outstanding_ == 0 && calls_outstanding_ == 0;
}

void WorkerPool::RunLoop() {
  absl::Time next_resolve = absl::Now() + options_.resolve_interval;
  while (true) {
    {
      absl::MutexLock lock(&loop_mu_);
      const absl::Time until = absl::Now() + options_.poll_interval;
      while (!stop_ && absl::Now() < until) {
        loop_mu_.AwaitWithDeadline(absl::Condition(&stop_), until);
      }
      if (stop_) return;
    }
    if (!options_.dns_name.empty() && absl::Now() >= next_resolve) {
      Resolve();
      next_resolve = absl::Now() + options_.resolve_interval;
    }
    PollAll(/*wait=*/false);
  }
}

void WorkerPool::Resolve() {
  if (options_.dns_name.empty()) return;
  const size_t colon = options_.dns_name.rfind(':');
  if (colon == std::string::npos) {
    HLOG(ERROR) << "--workers_dns: \"" << options_.dns_name
                << "\" is not name:port";
    return;
  }
  const std::string host = options_.dns_name.substr(0, colon);
  const std::string port = options_.dns_name.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) {
    // Keep the last known set: a DNS hiccup must not empty the pool.
    HLOG(WARNING) << "cannot resolve worker name " << options_.dns_name << ": "
                  << gai_strerror(rc);
    return;
  }
  std::set<std::string> addresses;
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    char text[NI_MAXHOST];
    if (getnameinfo(ai->ai_addr, ai->ai_addrlen, text, sizeof(text), nullptr, 0,
                    NI_NUMERICHOST) != 0) {
      continue;
    }
    addresses.insert(ai->ai_family == AF_INET6
                         ? absl::StrCat("[", text, "]:", port)
                         : absl::StrCat(text, ":", port));
  }
  freeaddrinfo(result);

  absl::MutexLock lock(&mu_);
  const std::set<std::string> statics(options_.static_workers.begin(),
                                      options_.static_workers.end());
  for (const std::string& old : dns_addresses_) {
    if (!addresses.count(old) && !statics.count(old)) {
      HLOG(INFO) << "worker " << old << " left " << options_.dns_name;
      auto it = workers_.find(old);
      if (it != workers_.end()) {
        // Calls may still use it; see the class comment.
        retired_.push_back(std::move(it->second.handle));
        workers_.erase(it);
      }
    }
  }
  for (const std::string& address : addresses) {
    Entry& entry = workers_[address];
    if (!entry.handle) {
      HLOG(INFO) << "worker " << address << " found via " << options_.dns_name;
      entry.handle =
          std::make_shared<WorkerHandle>(address, options_.credentials);
    }
  }
  dns_addresses_.assign(addresses.begin(), addresses.end());
  // Not a callback thread: dropping the last reference here is safe.
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                [](const std::shared_ptr<WorkerHandle>& h) {
                                  return h.use_count() == 1;
                                }),
                 retired_.end());
  ++change_epoch_;
  changed_.SignalAll();
}

namespace {
struct PollCall {
  WorkerPool::CallToken token;  // first: released last
  grpc::ClientContext context;
  hearth::v1::GetStatusRequest request;
  hearth::v1::WorkerStatus response;
  std::shared_ptr<WorkerHandle> handle;
};
}  // namespace

void WorkerPool::PollAll(bool wait) {
  std::vector<std::shared_ptr<WorkerHandle>> targets;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [address, entry] : workers_) {
      if (entry.poll_in_flight) continue;  // a slow worker: don't pile up
      entry.poll_in_flight = true;
      ++polls_outstanding_;
      targets.push_back(entry.handle);
    }
  }
  for (const auto& handle : targets) {
    auto* call = new PollCall;
    call->token = TrackCall();
    call->handle = handle;
    call->context.set_deadline(
        absl::ToChronoTime(absl::Now() + options_.poll_timeout));
    handle->stub()->async()->GetStatus(
        &call->context, &call->request, &call->response,
        [this, call](grpc::Status status) {
          OnPollResult(call->handle->address(), status, call->response);
          delete call;
        });
  }
  std::function<void()> on_poll;
  {
    absl::MutexLock lock(&mu_);
    if (wait) {
      mu_.Await(absl::Condition(
          +[](int* outstanding) { return *outstanding == 0; },
          &polls_outstanding_));
    }
    on_poll = on_poll_;
  }
  if (on_poll) on_poll();
}

void WorkerPool::PollNow() { PollAll(/*wait=*/true); }

void WorkerPool::OnPollResult(const std::string& address,
                              const grpc::Status& status,
                              const hearth::v1::WorkerStatus& result) {
  std::shared_ptr<WorkerHandle> to_cancel;
  {
    absl::MutexLock lock(&mu_);
    --polls_outstanding_;
    auto it = workers_.find(address);
    if (it == workers_.end()) return;  // removed from DNS meanwhile
    Entry& entry = it->second;
    entry.poll_in_flight = false;
    if (status.ok()) {
      if (!entry.healthy) {
        HLOG(INFO) << "worker " << address << " is healthy ("
                   << result.models_size() << " models, "
                   << (result.accepting() ? "accepting" : "draining") << ")";
      }
      entry.healthy = true;
      entry.ever_polled = true;
      entry.consecutive_failures = 0;
      entry.last_error.clear();
      entry.status = result;
      entry.gone_models.clear();
    } else {
      ++entry.consecutive_failures;
      entry.last_error = absl::StrCat("GetStatus: ", status.error_code(), " ",
                                      status.error_message());
      if (entry.healthy || !entry.ever_polled) {
        HLOG(WARNING) << "worker " << address
                      << " is unhealthy: " << entry.last_error;
      }
      entry.healthy = false;
      entry.ever_polled = true;
      if (entry.consecutive_failures == kFailuresBeforeCancel) {
        to_cancel = entry.handle;
      }
    }
    ++change_epoch_;
    changed_.SignalAll();
  }
  if (to_cancel) to_cancel->CancelAllCalls();
}

bool WorkerPool::ModelReadyOn(const Entry& entry,
                              const std::string& model) const {
  if (!entry.healthy || !entry.status.accepting()) return false;
  if (entry.gone_models.contains(model)) return false;
  for (const auto& loaded : entry.status.models()) {
    if (loaded.name() == model) {
      return loaded.state() == hearth::v1::MODEL_STATE_READY;
    }
  }
  return false;
}

WorkerPool::Lease WorkerPool::Acquire(
    const std::string& model,
    const absl::flat_hash_set<const WorkerHandle*>& exclude) {
  absl::MutexLock lock(&mu_);
  Entry* best = nullptr;
  std::tuple<int64_t, uint32_t, int64_t> best_score;
  for (auto& [address, entry] : workers_) {
    if (exclude.contains(entry.handle.get())) continue;
    if (!ModelReadyOn(entry, model)) continue;
    auto it = entry.inflight.find(model);
    const int inflight = it == entry.inflight.end() ? 0 : it->second;
    if (inflight >= options_.max_inflight_batches) continue;
    // The gateway's own in-flight count is current; the worker's queue and
    // free KV cache are up to one poll old, so they only break ties.
    auto score =
        std::make_tuple(entry.total_inflight, entry.status.queue_length(),
                        -static_cast<int64_t>(FreeKvTokens(entry.status)));
    if (best == nullptr || score < best_score) {
      best = &entry;
      best_score = score;
    }
  }
  Lease lease;
  if (best == nullptr) return lease;
  ++best->inflight[model];
  ++best->total_inflight;
  lease.pool_ = this;
  lease.worker_ = best->handle;
  lease.model_ = model;
  return lease;
}

void WorkerPool::ReleaseSlot(const WorkerHandle* worker,
                             const std::string& model) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker->address());
  if (it != workers_.end() && it->second.handle.get() == worker) {
    Entry& entry = it->second;
    auto slot = entry.inflight.find(model);
    if (slot != entry.inflight.end() && slot->second > 0) {
      if (--slot->second == 0) entry.inflight.erase(slot);
      --entry.total_inflight;
    }
  }
  ++change_epoch_;
  changed_.SignalAll();
}

void WorkerPool::WaitForChange(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const uint64_t epoch = change_epoch_;
  const absl::Time deadline = absl::Now() + timeout;
  while (change_epoch_ == epoch) {
    if (changed_.WaitWithDeadline(&mu_, deadline)) break;
  }
}

ModelAvailability WorkerPool::Availability(const std::string& model) {
  absl::ReaderMutexLock lock(&mu_);
  bool listed = false;
  for (const auto& [address, entry] : workers_) {
    if (ModelReadyOn(entry, model)) return ModelAvailability::kReady;
    for (const auto& loaded : entry.status.models()) {
      if (loaded.name() == model) listed = true;
    }
  }
  return listed ? ModelAvailability::kNotReady : ModelAvailability::kUnknown;
}

std::vector<WorkerPool::ModelSummary> WorkerPool::Models() {
  absl::ReaderMutexLock lock(&mu_);
  std::map<std::string, ModelSummary> merged;
  auto rank = [](hearth::v1::ModelState state) {
    switch (state) {
      case hearth::v1::MODEL_STATE_READY:
        return 4;
      case hearth::v1::MODEL_STATE_LOADING:
        return 3;
      case hearth::v1::MODEL_STATE_UNLOADING:
        return 2;
      case hearth::v1::MODEL_STATE_FAILED:
        return 1;
      default:
        return 0;
    }
  };
  for (const auto& [address, entry] : workers_) {
    // A dead worker's last report says nothing about what is served now.
    if (!entry.healthy) continue;
    for (const auto& loaded : entry.status.models()) {
      auto [it, inserted] = merged.try_emplace(loaded.name());
      ModelSummary& summary = it->second;
      const bool ready = ModelReadyOn(entry, loaded.name());
      if (inserted || rank(loaded.state()) > rank(summary.model.state())) {
        summary.model = loaded;
      }
      if (ready) ++summary.ready_replicas;
    }
  }
  std::vector<ModelSummary> out;
  for (auto& [name, summary] : merged) out.push_back(std::move(summary));
  return out;
}

bool WorkerPool::AnyModelReady() {
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [address, entry] : workers_) {
    for (const auto& loaded : entry.status.models()) {
      if (ModelReadyOn(entry, loaded.name())) return true;
    }
  }
  return false;
}

void WorkerPool::MarkUnhealthy(const WorkerHandle* worker,
                               absl::string_view why) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker->address());
  if (it == workers_.end() || it->second.handle.get() != worker) return;
  if (it->second.healthy) {
    HLOG(WARNING) << "worker " << worker->address()
                  << " taken out of rotation: " << why;
  }
  it->second.healthy = false;
  it->second.last_error = std::string(why);
  ++change_epoch_;
  changed_.SignalAll();
}

void WorkerPool::MarkModelGone(const WorkerHandle* worker,
                               const std::string& model) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker->address());
  if (it == workers_.end() || it->second.handle.get() != worker) return;
  it->second.gone_models.insert(model);
  ++change_epoch_;
  changed_.SignalAll();
}

std::vector<WorkerSnapshot> WorkerPool::Snapshot() {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<WorkerSnapshot> out;
  for (const auto& [address, entry] : workers_) {
    WorkerSnapshot snapshot;
    snapshot.address = address;
    snapshot.healthy = entry.healthy;
    snapshot.accepting = entry.healthy && entry.status.accepting();
    snapshot.last_error = entry.last_error;
    snapshot.status = entry.status;
    snapshot.inflight_batches = entry.total_inflight;
    snapshot.inflight_sequences = entry.handle->inflight_sequences();
    out.push_back(std::move(snapshot));
  }
  return out;
}

std::vector<std::shared_ptr<WorkerHandle>> WorkerPool::HealthyWorkers() {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::shared_ptr<WorkerHandle>> out;
  for (const auto& [address, entry] : workers_) {
    if (entry.healthy) out.push_back(entry.handle);
  }
  return out;
}

void WorkerPool::SetOnPoll(std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  on_poll_ = std::move(callback);
}

}  // namespace hearth::gateway
