#include "services/gateway/dispatcher.h"

#include <sys/random.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/grpc/status_conversion.h"
#include "common/log/logging.h"
#include "grpcpp/grpcpp.h"
#include "services/gateway/gateway_metrics.h"

namespace hearth::gateway {
namespace {

std::string RandomPrefix() {
  uint64_t value = 0;
  if (getrandom(&value, sizeof(value), 0) != sizeof(value)) {
    value = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  }
  return absl::StrCat("gw", absl::Hex(value & 0xffffffffffULL));
}

std::shared_ptr<Ticket> TicketOf(const QueuedRequest& request) {
  return std::any_cast<std::shared_ptr<Ticket>>(request.payload);
}

int64_t DeadlineUnixMs(absl::Time deadline) {
  return deadline == absl::InfiniteFuture() ? 0 : absl::ToUnixMillis(deadline);
}

}  // namespace

// ---------------------------------------------------------------------------
// Ticket

Ticket::Ticket(uint64_t id, GenerationRequest request,
               std::shared_ptr<GenerationObserver> observer)
    : id_(id),
      request_(std::move(request)),
      observer_(std::move(observer)),
      arrival_(absl::Now()) {}

bool Ticket::done() const {
  absl::MutexLock lock(&mu_);
  return state_ == State::kDone;
}

bool Ticket::Deliver(const hearth::v1::ExecuteEvent& event) {
  absl::MutexLock lock(&mu_);
  if (state_ == State::kDone) return false;
  tokens_delivered_ += event.token_ids_size();
  // The observer runs under the ticket's lock so that a concurrent Cancel()
  // cannot slip an OnFinish() in between (observers must not call back).
  observer_->OnEvent(event);
  return true;
}

bool Ticket::Finish(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (state_ == State::kDone) return false;
  state_ = State::kDone;
  observer_->OnFinish(status);
  return true;
}

// ---------------------------------------------------------------------------
// ExecuteCall: one hearth.v1.Worker/Execute stream for one batch.

class ExecuteCall : public grpc::ClientReadReactor<hearth::v1::ExecuteEvent>,
                    public std::enable_shared_from_this<ExecuteCall> {
 public:
  ExecuteCall(Dispatcher* dispatcher, std::string model,
              WorkerPool::Lease lease, std::vector<QueuedRequest> batch)
      : token_(dispatcher->pool_->TrackCall()),
        dispatcher_(dispatcher),
        model_(std::move(model)),
        lease_(std::move(lease)),
        batch_(std::move(batch)) {}

  void Start() {
    self_ = shared_from_this();
    {
      absl::MutexLock lock(&dispatcher_->mu_);
      call_id_ = dispatcher_->next_call_id_++;
      dispatcher_->calls_.emplace(call_id_, self_);
    }
    const std::shared_ptr<WorkerHandle>& worker = lease_.worker();
    request_.set_model(model_);
    absl::Time latest_deadline = absl::InfinitePast();
    const absl::Time now = absl::Now();
    {
      absl::MutexLock lock(&mu_);
      finished_.assign(batch_.size(), false);
      remaining_ = static_cast<int>(batch_.size());
    }
    for (size_t i = 0; i < batch_.size(); ++i) {
      std::shared_ptr<Ticket> ticket = TicketOf(batch_[i]);
      std::string sequence_id;
      {
        absl::MutexLock lock(&ticket->mu_);
        if (ticket->state_ == Ticket::State::kDone) {
          // Cancelled between NextBatch() and here.
          absl::MutexLock call_lock(&mu_);
          finished_[i] = true;
          --remaining_;
          continue;
        }
        ++ticket->attempts_;
        ticket->state_ = Ticket::State::kRunning;
        ticket->tokens_delivered_ = 0;
        ticket->sequence_id_ = absl::StrCat(
            dispatcher_->id_prefix_, "-", ticket->id_, ".", ticket->attempts_);
        ticket->call_ = self_;
        sequence_id = ticket->sequence_id_;
      }
      hearth::v1::SequenceRequest* sequence = request_.add_sequences();
      *sequence = ticket->request_.sequence;
      sequence->set_sequence_id(sequence_id);
      sequence->set_deadline_unix_ms(DeadlineUnixMs(ticket->request_.deadline));
      sequence->set_gateway_queue_seconds(
          absl::ToDoubleSeconds(now - ticket->arrival_));
      latest_deadline = std::max(latest_deadline, ticket->request_.deadline);
      index_.emplace(sequence_id, i);
    }
    if (request_.sequences_size() == 0) {
      lease_.Release();
      dispatcher_->CallEnded(call_id_);
      self_.reset();
      return;
    }
    // The call ends when its last client would have given up anyway; a little
    // slack lets the worker report the per-sequence deadline itself.
    if (latest_deadline != absl::InfiniteFuture()) {
      context_.set_deadline(
          absl::ToChronoTime(latest_deadline + absl::Seconds(1)));
    }
    worker->AddSequences(static_cast<int64_t>(batch_.size()));
    std::weak_ptr<ExecuteCall> weak = self_;
    registration_ = worker->RegisterCall([weak] {
      if (auto call = weak.lock()) call->AbortBecauseWorkerGone();
    });
    worker->stub()->async()->Execute(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  // The worker stopped answering polls: end the stream so that nothing hangs.
  void AbortBecauseWorkerGone() {
    worker_gone_.store(true);
    context_.TryCancel();
  }

  // A client cancelled `ticket` (already finished by Ticket::Cancel).
  void CancelSequence(const std::string& sequence_id) {
    bool all_done = false;
    {
      absl::MutexLock lock(&mu_);
      auto it = index_.find(sequence_id);
      if (it == index_.end() || finished_[it->second]) return;
      finished_[it->second] = true;
      all_done = --remaining_ == 0;
    }
    if (all_done) {
      context_.TryCancel();
      return;
    }
    // Others in the batch still run: free this one's KV cache only.
    struct CancelRpc {
      WorkerPool::CallToken token;  // first: released last
      grpc::ClientContext context;
      hearth::v1::CancelRequest request;
      hearth::v1::CancelResponse response;
      std::shared_ptr<WorkerHandle> worker;
    };
    auto* rpc = new CancelRpc;
    rpc->token = dispatcher_->pool_->TrackCall();
    rpc->worker = lease_.worker();
    rpc->request.add_sequence_ids(sequence_id);
    rpc->context.set_deadline(
        absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    rpc->worker->stub()->async()->Cancel(&rpc->context, &rpc->request,
                                         &rpc->response,
                                         [rpc](grpc::Status) { delete rpc; });
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    HandleEvent(event_);
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& status) override {
    const std::shared_ptr<WorkerHandle> worker = lease_.worker();
    worker->UnregisterCall(registration_);
    worker->AddSequences(-static_cast<int64_t>(batch_.size()));
    const bool gone = worker_gone_.load();
    const bool transport_failure =
        gone || status.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (transport_failure) {
      dispatcher_->pool_->MarkUnhealthy(
          worker.get(), gone ? "stopped answering status polls"
                             : absl::StrCat("Execute stream failed: ",
                                            status.error_message()));
    }
    // Free the slot before requeueing so the retry can use another worker.
    lease_.Release();

    std::vector<QueuedRequest> retry;
    for (size_t i = 0; i < batch_.size(); ++i) {
      {
        absl::MutexLock lock(&mu_);
        if (finished_[i]) continue;
        finished_[i] = true;
      }
      std::shared_ptr<Ticket> ticket = TicketOf(batch_[i]);
      int64_t delivered = 0;
      int attempts = 0;
      bool done = false;
      {
        absl::MutexLock lock(&ticket->mu_);
        delivered = ticket->tokens_delivered_;
        attempts = ticket->attempts_;
        done = ticket->state_ == Ticket::State::kDone;
      }
      if (done) continue;
      const bool restartable =
          delivered == 0 || ticket->observer_->Restartable();
      if (status.ok()) {
        Fail(*ticket,
             absl::UnavailableError(
                 absl::StrCat("worker ", worker->address(),
                              " ended its stream without finishing the request "
                              "(after ",
                              delivered, " tokens)")),
             "worker_failed");
      } else if (restartable && attempts < dispatcher_->options_.max_attempts &&
                 (transport_failure ||
                  status.error_code() == grpc::StatusCode::NOT_FOUND ||
                  status.error_code() ==
                      grpc::StatusCode::FAILED_PRECONDITION)) {
        if (status.error_code() == grpc::StatusCode::NOT_FOUND ||
            status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
          dispatcher_->pool_->MarkModelGone(worker.get(), model_);
        }
        if (delivered > 0) ticket->observer_->OnRestart();
        retry.push_back(std::move(batch_[i]));
      } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
        Fail(*ticket,
             absl::DeadlineExceededError(absl::StrCat(
                 "deadline passed while generating on worker ",
                 worker->address(), " (after ", delivered, " tokens)")),
             "deadline");
      } else {
        Fail(*ticket,
             absl::UnavailableError(absl::StrCat(
                 "worker ", worker->address(), " failed after ", delivered,
                 " generated tokens (", status.error_message(),
                 "); the output is incomplete, retry the request")),
             "worker_failed");
      }
    }
    if (!retry.empty()) dispatcher_->Requeue(model_, std::move(retry));
    std::shared_ptr<ExecuteCall> keep = std::move(self_);
    dispatcher_->CallEnded(call_id_);  // last use of the dispatcher
  }

  void Abort() { context_.TryCancel(); }

 private:
  void Fail(Ticket& ticket, const absl::Status& status,
            absl::string_view reason) {
    if (ticket.Finish(status) && dispatcher_->metrics_) {
      dispatcher_->metrics_->Rejected(model_, reason);
    }
  }

  void HandleEvent(const hearth::v1::ExecuteEvent& event) {
    size_t i = 0;
    {
      absl::MutexLock lock(&mu_);
      auto it = index_.find(event.sequence_id());
      if (it == index_.end() || finished_[it->second]) return;
      i = it->second;
      if (event.finish_reason() != hearth::v1::FINISH_REASON_UNSPECIFIED) {
        finished_[i] = true;
        --remaining_;
      }
    }
    std::shared_ptr<Ticket> ticket = TicketOf(batch_[i]);
    if (event.finish_reason() == hearth::v1::FINISH_REASON_UNSPECIFIED) {
      ticket->Deliver(event);
      return;
    }
    if (event.finish_reason() == hearth::v1::FINISH_REASON_ERROR) {
      const absl::StatusCode code =
          event.error_code() == 0
              ? absl::StatusCode::kInternal
              : static_cast<absl::StatusCode>(event.error_code());
      Fail(*ticket,
           absl::Status(code, event.error_message().empty()
                                  ? "the worker reported an error"
                                  : event.error_message()),
           code == absl::StatusCode::kInvalidArgument ? "invalid_argument"
                                                      : "worker_error");
      return;
    }
    if (ticket->Deliver(event)) ticket->Finish(absl::OkStatus());
  }

  // First, so that it goes last: the pool keeps the channel until then.
  WorkerPool::CallToken token_;
  Dispatcher* const dispatcher_;
  const std::string model_;
  WorkerPool::Lease lease_;
  std::vector<QueuedRequest> batch_;
  std::shared_ptr<ExecuteCall> self_;

  grpc::ClientContext context_;
  hearth::v1::ExecuteRequest request_;
  hearth::v1::ExecuteEvent event_;
  uint64_t registration_ = 0;
  uint64_t call_id_ = 0;
  std::atomic<bool> worker_gone_{false};

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, size_t> index_;
  std::vector<bool> finished_ ABSL_GUARDED_BY(mu_);
  int remaining_ ABSL_GUARDED_BY(mu_) = 0;
};

void Ticket::Cancel() {
  std::shared_ptr<ExecuteCall> call;
  std::string sequence_id;
  {
    absl::MutexLock lock(&mu_);
    if (state_ == State::kDone) return;
    if (state_ == State::kRunning) {
      call = call_.lock();
      sequence_id = sequence_id_;
    }
    // A queued ticket stays in the batcher until its turn and is skipped
    // then; the client hears now.
    state_ = State::kDone;
    observer_->OnFinish(absl::CancelledError("the request was cancelled"));
  }
  if (call) call->CancelSequence(sequence_id);
}

// ---------------------------------------------------------------------------
// Dispatcher

struct Dispatcher::ModelQueue {
  ModelQueue(std::string model, const BatcherOptions& options)
      : name(model), batcher(std::move(model), options) {}
  const std::string name;
  DynamicBatcher batcher;
  std::thread thread;
};

Dispatcher::Dispatcher(WorkerPool* pool, DispatcherOptions options,
                       GatewayMetrics* metrics)
    : pool_(pool),
      options_(std::move(options)),
      metrics_(metrics),
      id_prefix_(RandomPrefix()) {}

Dispatcher::~Dispatcher() { Shutdown(); }

void Dispatcher::Shutdown() {
  std::vector<ModelQueue*> queues;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    for (auto& [name, queue] : queues_) queues.push_back(queue.get());
  }
  for (ModelQueue* queue : queues) queue->batcher.Shutdown();
  for (ModelQueue* queue : queues) {
    if (queue->thread.joinable()) queue->thread.join();
  }
  std::vector<std::shared_ptr<ExecuteCall>> running;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, weak] : calls_) {
      if (auto call = weak.lock()) running.push_back(std::move(call));
    }
  }
  for (auto& call : running) call->Abort();
  running.clear();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](std::map<uint64_t, std::weak_ptr<ExecuteCall>>* calls) {
        return calls->empty();
      },
      &calls_));
}

void Dispatcher::CallEnded(uint64_t id) {
  absl::MutexLock lock(&mu_);
  calls_.erase(id);
}

Dispatcher::ModelQueue* Dispatcher::QueueFor(const std::string& model) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return nullptr;
  auto it = queues_.find(model);
  if (it != queues_.end()) return it->second.get();
  auto queue =
      std::make_unique<ModelQueue>(model, options_.batching.ForModel(model));
  ModelQueue* raw = queue.get();
  raw->thread = std::thread([this, raw] { RunModel(raw); });
  queues_.emplace(model, std::move(queue));
  return raw;
}

absl::StatusOr<std::shared_ptr<Ticket>> Dispatcher::Submit(
    GenerationRequest request, std::shared_ptr<GenerationObserver> observer) {
  // Queues are created only for models some worker lists, so a client cannot
  // make the gateway grow a queue (and metric labels) per invented name.
  switch (pool_->Availability(request.model)) {
    case ModelAvailability::kUnknown:
      if (metrics_) metrics_->Rejected(kUnknownModelLabel, "not_found");
      return absl::NotFoundError(
          absl::StrCat("model '", request.model,
                       "' is not loaded on any worker (ListModels shows the "
                       "models served)"));
    case ModelAvailability::kNotReady:
      if (metrics_) metrics_->Rejected(request.model, "no_worker");
      return absl::UnavailableError(
          absl::StrCat("model '", request.model,
                       "' has no healthy worker with it READY; retry later"));
    case ModelAvailability::kReady:
      break;
  }
  ModelQueue* queue = QueueFor(request.model);
  if (queue == nullptr) {
    return absl::UnavailableError("the gateway is shutting down");
  }
  QueuedRequest queued;
  queued.id = next_id_.fetch_add(1);
  queued.priority = request.priority;
  queued.timeout = request.queue_timeout;
  queued.cost = request.cost;
  auto ticket = std::shared_ptr<Ticket>(
      new Ticket(queued.id, std::move(request), std::move(observer)));
  queued.payload = ticket;
  std::weak_ptr<Ticket> weak = ticket;
  const std::string model = ticket->model();
  queued.on_reject = [this, weak, model](const absl::Status& status) {
    if (auto t = weak.lock()) {
      if (t->Finish(status) && metrics_) {
        metrics_->Rejected(model, absl::StrContains(status.message(), "timeout")
                                      ? "queue_timeout"
                                      : "shutdown");
      }
    }
  };
  absl::Status status = queue->batcher.Enqueue(std::move(queued));
  if (!status.ok()) {
    if (metrics_) {
      metrics_->Rejected(model, status.code() == absl::StatusCode::kUnavailable
                                    ? "queue_full"
                                    : "invalid_argument");
    }
    return status;
  }
  return ticket;
}

void Dispatcher::RejectQueued(ModelQueue* queue, absl::Duration wait,
                              const absl::Status& status,
                              absl::string_view reason) {
  auto batch = queue->batcher.NextBatch(wait);
  if (!batch.ok()) return;
  for (QueuedRequest& request : *batch) {
    if (TicketOf(request)->Finish(status) && metrics_) {
      metrics_->Rejected(queue->name, reason);
    }
  }
}

void Dispatcher::RunModel(ModelQueue* queue) {
  const std::string& model = queue->name;
  absl::Time no_worker_since = absl::InfiniteFuture();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) return;
    }
    WorkerPool::Lease lease = pool_->Acquire(model);
    if (!lease) {
      queue->batcher.RejectExpired();
      if (pool_->Availability(model) == ModelAvailability::kReady) {
        // Workers are busy: requests wait in the queue, which is the point.
        no_worker_since = absl::InfiniteFuture();
        pool_->WaitForChange(absl::Milliseconds(50));
        continue;
      }
      const absl::Time now = absl::Now();
      if (no_worker_since == absl::InfiniteFuture()) no_worker_since = now;
      if (now - no_worker_since >= options_.no_worker_grace) {
        RejectQueued(
            queue, absl::Milliseconds(10),
            absl::UnavailableError(absl::StrCat(
                "no healthy worker has model '", model, "' READY (waited ",
                absl::FormatDuration(options_.no_worker_grace),
                "); retry later")),
            "no_worker");
      } else {
        pool_->WaitForChange(absl::Milliseconds(50));
      }
      continue;
    }
    no_worker_since = absl::InfiniteFuture();
    auto batch = queue->batcher.NextBatch(absl::Milliseconds(100));
    if (!batch.ok() || batch->empty()) continue;  // the lease goes back
    // Cancelled while queued: already answered, nothing to run.
    std::vector<QueuedRequest> live;
    live.reserve(batch->size());
    for (QueuedRequest& request : *batch) {
      if (!TicketOf(request)->done()) live.push_back(std::move(request));
    }
    if (live.empty()) continue;
    if (metrics_) {
      const absl::Time now = absl::Now();
      for (const QueuedRequest& request : live) {
        metrics_->ObserveQueueTime(model, now - request.enqueue_time);
      }
      metrics_->ObserveBatch(model, static_cast<int>(live.size()),
                             queue->batcher.options().max_batch_size);
    }
    StartBatch(queue, std::move(lease), std::move(live));
  }
}

void Dispatcher::StartBatch(ModelQueue* queue, WorkerPool::Lease lease,
                            std::vector<QueuedRequest> batch) {
  auto call = std::make_shared<ExecuteCall>(this, queue->name, std::move(lease),
                                            std::move(batch));
  call->Start();
}

void Dispatcher::Requeue(const std::string& model,
                         std::vector<QueuedRequest> requests) {
  ModelQueue* queue = nullptr;
  {
    absl::MutexLock lock(&mu_);
    auto it = queues_.find(model);
    if (it != queues_.end()) queue = it->second.get();
  }
  for (QueuedRequest& request : requests) {
    std::shared_ptr<Ticket> ticket = TicketOf(request);
    absl::MutexLock lock(&ticket->mu_);
    if (ticket->state_ == Ticket::State::kRunning) {
      ticket->state_ = Ticket::State::kQueued;
    }
    ticket->call_.reset();
  }
  if (metrics_) {
    for (size_t i = 0; i < requests.size(); ++i) metrics_->Requeued(model);
  }
  if (queue == nullptr) {
    for (QueuedRequest& request : requests) {
      TicketOf(request)->Finish(
          absl::UnavailableError("the gateway is shutting down"));
    }
    return;
  }
  // Requeue() rejects through on_reject if the batcher is shut down.
  queue->batcher.Requeue(std::move(requests));
}

std::map<std::string, BatcherStats> Dispatcher::QueueStats() {
  std::vector<ModelQueue*> queues;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, queue] : queues_) queues.push_back(queue.get());
  }
  std::map<std::string, BatcherStats> out;
  for (ModelQueue* queue : queues) {
    out.emplace(queue->name, queue->batcher.stats());
  }
  return out;
}

void Dispatcher::UpdateGauges() {
  if (metrics_ == nullptr) return;
  for (const auto& [model, stats] : QueueStats()) {
    metrics_->SetQueue(model, stats.queued, stats.oldest_wait);
  }
  for (const WorkerSnapshot& worker : pool_->Snapshot()) {
    metrics_->SetWorker(worker.address, worker.healthy && worker.accepting,
                        worker.inflight_batches, worker.inflight_sequences,
                        worker.status.queue_length());
  }
}

}  // namespace hearth::gateway
