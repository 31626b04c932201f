#include "services/gateway/generation_service.h"

#include <atomic>
#include <chrono>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"

namespace hearth::gateway {
namespace {

std::string RequestId(const std::string& given) {
  static std::atomic<uint64_t> next{1};
  return given.empty() ? absl::StrCat("req-", next.fetch_add(1)) : given;
}

// Collects a whole completion for a unary Generate.
class CollectingObserver : public GenerationObserver {
 public:
  CollectingObserver(CancellableUnaryReactor* reactor,
                     grpc::CallbackServerContext* context,
                     const hearth::v1::GenerateRequest& request,
                     hearth::v1::GenerateResponse* response)
      : reactor_(reactor),
        context_(context),
        return_ids_(request.return_token_ids()),
        response_(response) {
    response_->set_request_id(RequestId(request.request_id()));
    response_->set_model(request.model());
  }

  void OnEvent(const hearth::v1::ExecuteEvent& event) override {
    response_->mutable_text()->append(event.text());
    if (return_ids_) {
      response_->mutable_token_ids()->Add(event.token_ids().begin(),
                                          event.token_ids().end());
    }
    if (event.finish_reason() != hearth::v1::FINISH_REASON_UNSPECIFIED) {
      response_->set_finish_reason(event.finish_reason());
      *response_->mutable_usage() = event.usage();
      *response_->mutable_timing() = event.timing();
    }
  }

  void OnFinish(const absl::Status& status) override {
    reactor_->Finish(ToClientStatus(status, context_));
  }

  // Nothing reaches the client before the end, so a failed worker's partial
  // output can be dropped and the request run again elsewhere.
  bool Restartable() const override { return true; }
  void OnRestart() override {
    response_->clear_text();
    response_->clear_token_ids();
  }

 private:
  CancellableUnaryReactor* const reactor_;
  grpc::CallbackServerContext* const context_;
  const bool return_ids_;
  hearth::v1::GenerateResponse* const response_;
};

// Streams one message per worker event.
class StreamReactor
    : public grpc::ServerWriteReactor<hearth::v1::GenerateStreamResponse> {
 public:
  StreamReactor(grpc::CallbackServerContext* context, std::string request_id)
      : context_(context), request_id_(std::move(request_id)) {}

  void SetTicket(std::shared_ptr<Ticket> ticket) {
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      ticket_ = ticket;
      cancel = cancelled_;
    }
    if (cancel) ticket->Cancel();
  }

  void Push(const hearth::v1::ExecuteEvent& event) {
    hearth::v1::GenerateStreamResponse message;
    message.set_request_id(request_id_);
    message.set_text(event.text());
    message.mutable_token_ids()->CopyFrom(event.token_ids());
    if (event.finish_reason() != hearth::v1::FINISH_REASON_UNSPECIFIED) {
      message.set_finish_reason(event.finish_reason());
      *message.mutable_usage() = event.usage();
      *message.mutable_timing() = event.timing();
    }
    {
      absl::MutexLock lock(&mu_);
      pending_.push_back(std::move(message));
    }
    Pump();
  }

  void End(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
      final_status_ = ToClientStatus(status, context_);
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    std::shared_ptr<Ticket> cancel;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        // The client is gone: stop generating for it.
        pending_.clear();
        cancel = ticket_;
      } else if (!pending_.empty()) {
        pending_.pop_front();
      }
    }
    if (cancel) cancel->Cancel();
    Pump();
  }

  void OnCancel() override {
    std::shared_ptr<Ticket> ticket;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      ticket = ticket_;
    }
    if (ticket) ticket->Cancel();
  }

  void OnDone() override { delete this; }

 private:
  // Starts the next write, or finishes once everything is written. Never
  // holds the lock across a gRPC call.
  void Pump() {
    const hearth::v1::GenerateStreamResponse* next = nullptr;
    bool finish = false;
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || finished_) return;
      if (!pending_.empty()) {
        writing_ = true;
        next = &pending_.front();
      } else if (ended_) {
        finished_ = true;
        finish = true;
        status = final_status_;
      }
    }
    if (next != nullptr) {
      StartWrite(next);
    } else if (finish) {
      Finish(status);
    }
  }

  grpc::CallbackServerContext* const context_;
  const std::string request_id_;
  absl::Mutex mu_;
  // A deque keeps the front element's address stable while it is written.
  std::deque<hearth::v1::GenerateStreamResponse> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Ticket> ticket_ ABSL_GUARDED_BY(mu_);
};

class StreamingObserver : public GenerationObserver {
 public:
  explicit StreamingObserver(StreamReactor* reactor) : reactor_(reactor) {}
  void OnEvent(const hearth::v1::ExecuteEvent& event) override {
    reactor_->Push(event);
  }
  void OnFinish(const absl::Status& status) override { reactor_->End(status); }

 private:
  StreamReactor* const reactor_;
};

}  // namespace

absl::Time ClientDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

void CancellableUnaryReactor::SetTicket(std::shared_ptr<Ticket> ticket) {
  bool cancel = false;
  {
    absl::MutexLock lock(&mu_);
    ticket_ = ticket;
    cancel = cancelled_;
  }
  if (cancel) ticket->Cancel();
}

void CancellableUnaryReactor::OnCancel() {
  std::shared_ptr<Ticket> ticket;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    ticket = ticket_;
  }
  if (ticket) ticket->Cancel();
}

grpc::ServerUnaryReactor* GenerationService::Generate(
    grpc::CallbackServerContext* context,
    const hearth::v1::GenerateRequest* request,
    hearth::v1::GenerateResponse* response) {
  auto* reactor = new CancellableUnaryReactor;
  auto caller =
      core_->edge()->Authenticate(*context, {kScopeGenerate}, request->model());
  if (!caller.ok()) {
    reactor->Finish(ToClientStatus(caller.status(), context));
    return reactor;
  }
  auto observer = std::make_shared<CollectingObserver>(reactor, context,
                                                       *request, response);
  auto ticket = core_->Generate(*caller, *request, ClientDeadline(*context),
                                "generate", observer);
  if (!ticket.ok()) {
    reactor->Finish(ToClientStatus(ticket.status(), context));
    return reactor;
  }
  reactor->SetTicket(*std::move(ticket));
  return reactor;
}

grpc::ServerWriteReactor<hearth::v1::GenerateStreamResponse>*
GenerationService::GenerateStream(grpc::CallbackServerContext* context,
                                  const hearth::v1::GenerateRequest* request) {
  auto* reactor = new StreamReactor(context, RequestId(request->request_id()));
  auto caller =
      core_->edge()->Authenticate(*context, {kScopeGenerate}, request->model());
  if (!caller.ok()) {
    reactor->End(caller.status());
    return reactor;
  }
  auto ticket = core_->Generate(*caller, *request, ClientDeadline(*context),
                                "generate_stream",
                                std::make_shared<StreamingObserver>(reactor));
  if (!ticket.ok()) {
    reactor->End(ticket.status());
    return reactor;
  }
  reactor->SetTicket(*std::move(ticket));
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(
    grpc::CallbackServerContext* context,
    const hearth::v1::TokenizeRequest* request,
    hearth::v1::TokenizeResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto caller =
      core_->edge()->Authenticate(*context, {kScopeGenerate}, request->model());
  if (!caller.ok()) {
    reactor->Finish(ToClientStatus(caller.status(), context));
    return reactor;
  }
  auto result = core_->Tokenize(*request);
  if (result.ok()) *response = *std::move(result);
  reactor->Finish(ToClientStatus(result.status(), context));
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::ListModels(
    grpc::CallbackServerContext* context, const hearth::v1::ListModelsRequest*,
    hearth::v1::ListModelsResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto caller = core_->edge()->Authenticate(*context, {kScopeGenerate}, "");
  if (!caller.ok()) {
    reactor->Finish(ToClientStatus(caller.status(), context));
    return reactor;
  }
  *response = core_->ListModels(*caller);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace hearth::gateway
