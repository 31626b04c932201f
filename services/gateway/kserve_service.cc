#include "services/gateway/kserve_service.h"

#include <deque>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "grpcpp/alarm.h"
#include "grpcpp/grpcpp.h"
#include "services/gateway/generation_service.h"
#include "services/gateway/kserve_codec.h"

namespace hearth::gateway {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;
using inference::ModelStreamInferResponse;

grpc::ServerUnaryReactor* FinishWith(grpc::CallbackServerContext* context,
                                     const absl::Status& status) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToClientStatus(status, context));
  return reactor;
}

// Collects a whole completion for a unary ModelInfer.
class InferObserver : public GenerationObserver {
 public:
  InferObserver(CancellableUnaryReactor* reactor,
                grpc::CallbackServerContext* context, KServeGenerate request,
                ModelInferResponse* response)
      : reactor_(reactor),
        context_(context),
        request_(std::move(request)),
        response_(response) {}

  void OnEvent(const hearth::v1::ExecuteEvent& event) override {
    text_.append(event.text());
  }
  void OnFinish(const absl::Status& status) override {
    if (status.ok()) SetTextOutput(request_, text_, response_);
    reactor_->Finish(ToClientStatus(status, context_));
  }
  bool Restartable() const override { return true; }
  void OnRestart() override { text_.clear(); }

 private:
  CancellableUnaryReactor* const reactor_;
  grpc::CallbackServerContext* const context_;
  const KServeGenerate request_;
  ModelInferResponse* const response_;
  std::string text_;
};

bool WantsGrpcErrors(const grpc::CallbackServerContext& context) {
  for (const auto& [key, value] : context.client_metadata()) {
    if (key == "triton_grpc_error" &&
        absl::EqualsIgnoreCase(absl::string_view(value.data(), value.size()),
                               "true")) {
      return true;
    }
  }
  return false;
}

void SetFinalFlag(ModelInferResponse* response, bool final) {
  (*response->mutable_parameters())["triton_final_response"].set_bool_param(
      final);
}

// ModelStreamInfer: many requests in, one response per token chunk out.
//
// Generations report from dispatcher threads, outside gRPC's reactions, so
// the reactor is kept alive by shared_ptr (each observer holds one, OnDone
// drops the reactor's own) rather than deleted in OnDone; and it never calls
// gRPC or Cancel() while holding its lock.
class StreamInferReactor
    : public grpc::ServerBidiReactor<ModelInferRequest,
                                     ModelStreamInferResponse>,
      public std::enable_shared_from_this<StreamInferReactor> {
 public:
  StreamInferReactor(GatewayCore* core, grpc::CallbackServerContext* context)
      : core_(core),
        context_(context),
        grpc_errors_(WantsGrpcErrors(*context)) {}

  void Start() {
    self_ = shared_from_this();
    caller_ = core_->edge()->Authenticate(*context_, {kScopeGenerate}, "");
    if (!caller_.ok()) {
      // Nothing may be read from a caller we do not know.
      {
        absl::MutexLock lock(&mu_);
        closing_ = true;
        final_status_ = ToClientStatus(caller_.status(), context_);
      }
      Pump();
      return;
    }
    StartRead(&request_);
  }

  // One generation on this stream.
  class Observer : public GenerationObserver {
   public:
    Observer(std::shared_ptr<StreamInferReactor> reactor,
             KServeGenerate request, bool stream)
        : reactor_(std::move(reactor)),
          request_(std::move(request)),
          stream_(stream) {}

    void OnEvent(const hearth::v1::ExecuteEvent& event) override {
      const bool final =
          event.finish_reason() != hearth::v1::FINISH_REASON_UNSPECIFIED;
      if (!stream_) {
        text_.append(event.text());
        return;
      }
      // Chunks whose tokens end inside a character carry no text yet.
      if (event.text().empty() && !final) return;
      ModelStreamInferResponse response;
      SetTextOutput(request_, event.text(), response.mutable_infer_response());
      SetFinalFlag(response.mutable_infer_response(), final);
      reactor_->Send(std::move(response));
    }

    void OnFinish(const absl::Status& status) override {
      if (status.ok() && !stream_) {
        ModelStreamInferResponse response;
        SetTextOutput(request_, text_, response.mutable_infer_response());
        SetFinalFlag(response.mutable_infer_response(), true);
        reactor_->Send(std::move(response));
      }
      reactor_->GenerationEnded(this, status, request_.id);
    }

   private:
    const std::shared_ptr<StreamInferReactor> reactor_;
    const KServeGenerate request_;
    const bool stream_;
    std::string text_;
  };

  void OnReadDone(bool ok) override {
    if (!ok) {
      {
        absl::MutexLock lock(&mu_);
        reads_done_ = true;
      }
      Pump();
      return;
    }
    ModelInferRequest request = std::move(request_);
    request_.Clear();
    HandleRequest(request);
    bool keep_reading = false;
    {
      absl::MutexLock lock(&mu_);
      keep_reading = !closing_;
      if (!keep_reading) reads_done_ = true;
    }
    if (keep_reading) {
      StartRead(&request_);
    } else {
      Pump();
    }
  }

  void OnWriteDone(bool ok) override {
    std::vector<std::shared_ptr<Ticket>> cancel;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        // The client is gone.
        pending_.clear();
        closing_ = true;
        for (auto& [observer, ticket] : tickets_) {
          if (ticket) cancel.push_back(ticket);
        }
      } else if (!pending_.empty()) {
        pending_.pop_front();
      }
    }
    for (auto& ticket : cancel) ticket->Cancel();
    Pump();
  }

  void OnCancel() override { CloseWithStatus(grpc::Status::CANCELLED); }

  void OnDone() override {
    std::shared_ptr<StreamInferReactor> self = std::move(self_);
  }

  void Send(ModelStreamInferResponse response) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      pending_.push_back(std::move(response));
    }
    Pump();
  }

  void GenerationEnded(Observer* observer, const absl::Status& status,
                       const std::string& id) {
    if (!status.ok()) {
      if (grpc_errors_) {
        // The other generations are cancelled on a gRPC callback thread (an
        // alarm due now): this code runs under its ticket's lock, and two
        // failing generations cancelling each other here would deadlock.
        absl::MutexLock lock(&mu_);
        if (final_status_.ok()) {
          final_status_ = ToClientStatus(status, context_);
        }
        closing_ = true;
        if (!alarm_armed_) {
          alarm_armed_ = true;
          ++active_;  // keeps the stream open until the alarm has run
          std::shared_ptr<StreamInferReactor> self = shared_from_this();
          alarm_.Set(std::chrono::system_clock::now(), [self](bool) {
            self->CloseWithStatus(grpc::Status::OK);
            {
              absl::MutexLock lock(&self->mu_);
              --self->active_;
            }
            self->Pump();
          });
        }
      } else if (status.code() != absl::StatusCode::kCancelled) {
        ModelStreamInferResponse response;
        response.set_error_message(std::string(status.message()));
        response.mutable_infer_response()->set_id(id);
        Send(std::move(response));
      }
    }
    {
      absl::MutexLock lock(&mu_);
      tickets_.erase(observer);
      --active_;
    }
    Pump();
  }

 private:
  void HandleRequest(const ModelInferRequest& request) {
    auto parsed = ParseInferRequest(request);
    if (!parsed.ok()) {
      Reject(parsed.status(), request.id());
      return;
    }
    const bool stream = parsed->stream.value_or(true);
    const std::string id = parsed->id;
    hearth::v1::GenerateRequest generate = parsed->generate;
    auto observer = std::make_shared<Observer>(shared_from_this(),
                                               *std::move(parsed), stream);
    {
      absl::MutexLock lock(&mu_);
      if (closing_) return;
      ++active_;
      tickets_[observer.get()] = nullptr;
    }
    auto ticket =
        core_->Generate(*caller_, generate, ClientDeadline(*context_),
                        "model_stream_infer", observer, KServeFieldNames());
    if (!ticket.ok()) {
      {
        absl::MutexLock lock(&mu_);
        tickets_.erase(observer.get());
        --active_;
      }
      Reject(ticket.status(), id);
      return;
    }
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      auto it = tickets_.find(observer.get());
      if (it != tickets_.end()) it->second = *ticket;
      cancel = closing_;
    }
    if (cancel) (*ticket)->Cancel();
  }

  void Reject(const absl::Status& status, const std::string& id) {
    if (grpc_errors_) {
      CloseWithStatus(ToClientStatus(status, context_));
      return;
    }
    ModelStreamInferResponse response;
    response.set_error_message(std::string(status.message()));
    response.mutable_infer_response()->set_id(id);
    Send(std::move(response));
  }

  void CloseWithStatus(const grpc::Status& status) {
    std::vector<std::shared_ptr<Ticket>> cancel;
    {
      absl::MutexLock lock(&mu_);
      if (final_status_.ok()) final_status_ = status;
      closing_ = true;
      for (auto& [observer, ticket] : tickets_) {
        if (ticket) cancel.push_back(ticket);
      }
    }
    for (auto& ticket : cancel) ticket->Cancel();
    Pump();
  }

  // Whether to Finish now: nothing running or being written, and either the
  // client half-closed with everything sent, or the stream is closing.
  bool ShouldFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || active_ > 0) return false;
    if (!closing_) return reads_done_ && pending_.empty();
    return !final_status_.ok() || pending_.empty();
  }

  // Starts the next write or finishes; the single place that does either.
  void Pump() {
    const ModelStreamInferResponse* next = nullptr;
    bool finish = false;
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      if (!writing_ && !pending_.empty() && (final_status_.ok() || !closing_)) {
        writing_ = true;
        next = &pending_.front();
      } else if (ShouldFinishLocked()) {
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

  GatewayCore* const core_;
  grpc::CallbackServerContext* const context_;
  const bool grpc_errors_;
  std::shared_ptr<StreamInferReactor> self_;
  absl::StatusOr<Caller> caller_;
  ModelInferRequest request_;

  absl::Mutex mu_;
  std::deque<ModelStreamInferResponse> pending_ ABSL_GUARDED_BY(mu_);
  std::map<Observer*, std::shared_ptr<Ticket>> tickets_ ABSL_GUARDED_BY(mu_);
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool alarm_armed_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  grpc::Alarm alarm_;
};

// Sends one admin rpc to every healthy worker and answers when all replied.
class WorkerFanOut {
 public:
  using Send =
      std::function<void(WorkerHandle* worker, grpc::ClientContext* context,
                         std::function<void(grpc::Status)> done)>;

  static void Run(WorkerPool* pool, grpc::CallbackServerContext* context,
                  grpc::ServerUnaryReactor* reactor, const std::string& what,
                  Send send) {
    auto workers = pool->HealthyWorkers();
    if (workers.empty()) {
      reactor->Finish(ToClientStatus(absl::UnavailableError(absl::StrCat(
                                         "no healthy worker to ", what, " on")),
                                     context));
      return;
    }
    auto* fan = new WorkerFanOut;
    fan->token_ = pool->TrackCall();
    fan->pool_ = pool;
    fan->reactor_ = reactor;
    fan->context_ = context;
    fan->what_ = what;
    fan->remaining_ = static_cast<int>(workers.size());
    for (auto& worker : workers) {
      auto client = std::make_shared<grpc::ClientContext>();
      client->set_deadline(
          context->deadline() == std::chrono::system_clock::time_point::max()
              ? std::chrono::system_clock::now() + std::chrono::minutes(10)
              : context->deadline());
      fan->contexts_.push_back(client);
      fan->workers_.push_back(worker);
      // Only raw pointers in the callback: the fan owns the contexts and
      // handles, so they go when it does, before its token (see
      // WorkerPool's class comment), not whenever gRPC drops the callback.
      const WorkerHandle* raw = worker.get();
      send(worker.get(), client.get(), [fan, raw](grpc::Status status) {
        fan->Done(raw->address(), status);
      });
    }
  }

 private:
  void Done(const std::string& address, const grpc::Status& status) {
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      if (status.ok()) {
        ++ok_;
      } else {
        errors_.push_back(absl::StrCat(address, ": ", status.error_message()));
        if (first_error_.ok()) first_error_ = status;
      }
      last = --remaining_ == 0;
    }
    if (!last) return;
    pool_->RequestPoll();
    if (ok_ > 0) {
      reactor_->Finish(grpc::Status::OK);
    } else {
      reactor_->Finish(
          grpc::Status(first_error_.error_code(),
                       absl::StrCat("every worker failed to ", what_, ": ",
                                    absl::StrJoin(errors_, "; "))));
    }
    delete this;
  }

  WorkerPool::CallToken token_;  // first: released last
  WorkerPool* pool_ = nullptr;
  grpc::ServerUnaryReactor* reactor_ = nullptr;
  grpc::CallbackServerContext* context_ = nullptr;
  std::string what_;
  std::vector<std::shared_ptr<grpc::ClientContext>> contexts_;
  std::vector<std::shared_ptr<WorkerHandle>> workers_;
  absl::Mutex mu_;
  int remaining_ = 0;
  int ok_ = 0;
  std::vector<std::string> errors_;
  grpc::Status first_error_;
};

std::string RepositoryParam(
    const google::protobuf::Map<std::string,
                                inference::ModelRepositoryParameter>& params,
    const std::string& name) {
  auto it = params.find(name);
  if (it == params.end()) return "";
  if (it->second.parameter_choice_case() ==
      inference::ModelRepositoryParameter::kStringParam) {
    return it->second.string_param();
  }
  return "";
}

}  // namespace

grpc::ServerUnaryReactor* KServeService::ServerLive(
    grpc::CallbackServerContext* context, const inference::ServerLiveRequest*,
    inference::ServerLiveResponse* response) {
  response->set_live(true);
  return FinishWith(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ServerReady(
    grpc::CallbackServerContext* context, const inference::ServerReadyRequest*,
    inference::ServerReadyResponse* response) {
  // Ready = able to serve something: some worker has some model READY.
  response->set_ready(core_->pool()->AnyModelReady());
  return FinishWith(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ServerMetadata(
    grpc::CallbackServerContext* context,
    const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  response->set_name("hearth");
  response->set_version(HEARTH_VERSION);
  for (const char* extension :
       {"schedule_policy", "model_repository", "statistics"}) {
    response->add_extensions(extension);
  }
  return FinishWith(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ModelReady(
    grpc::CallbackServerContext* context,
    const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* response) {
  if (request->name().empty()) {
    return FinishWith(context, absl::InvalidArgumentError("name: required"));
  }
  auto caller =
      core_->edge()->Authenticate(*context, {kScopeGenerate}, request->name());
  if (!caller.ok()) return FinishWith(context, caller.status());
  const bool version_ok =
      request->version().empty() || request->version() == kModelVersion;
  response->set_ready(version_ok &&
                      core_->pool()->Availability(request->name()) ==
                          ModelAvailability::kReady);
  return FinishWith(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ModelMetadata(
    grpc::CallbackServerContext* context,
    const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  if (request->name().empty()) {
    return FinishWith(context, absl::InvalidArgumentError("name: required"));
  }
  auto caller =
      core_->edge()->Authenticate(*context, {kScopeGenerate}, request->name());
  if (!caller.ok()) return FinishWith(context, caller.status());
  if (core_->pool()->Availability(request->name()) ==
          ModelAvailability::kUnknown ||
      (!request->version().empty() && request->version() != kModelVersion)) {
    return FinishWith(context,
                      absl::NotFoundError(absl::StrCat(
                          "model '", request->name(), "'",
                          request->version().empty()
                              ? ""
                              : absl::StrCat(" version ", request->version()),
                          " is not served")));
  }
  *response = LlmModelMetadata(request->name());
  return FinishWith(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ModelInfer(
    grpc::CallbackServerContext* context,
    const inference::ModelInferRequest* request,
    inference::ModelInferResponse* response) {
  auto* reactor = new CancellableUnaryReactor;
  auto caller = core_->edge()->Authenticate(*context, {kScopeGenerate},
                                            request->model_name());
  if (!caller.ok()) {
    reactor->Finish(ToClientStatus(caller.status(), context));
    return reactor;
  }
  auto parsed = ParseInferRequest(*request);
  if (!parsed.ok()) {
    reactor->Finish(ToClientStatus(parsed.status(), context));
    return reactor;
  }
  hearth::v1::GenerateRequest generate = parsed->generate;
  auto observer = std::make_shared<InferObserver>(reactor, context,
                                                  *std::move(parsed), response);
  auto ticket = core_->Generate(*caller, generate, ClientDeadline(*context),
                                "model_infer", observer, KServeFieldNames());
  if (!ticket.ok()) {
    reactor->Finish(ToClientStatus(ticket.status(), context));
    return reactor;
  }
  reactor->SetTicket(*std::move(ticket));
  return reactor;
}

grpc::ServerBidiReactor<inference::ModelInferRequest,
                        inference::ModelStreamInferResponse>*
KServeService::ModelStreamInfer(grpc::CallbackServerContext* context) {
  auto reactor = std::make_shared<StreamInferReactor>(core_, context);
  reactor->Start();
  return reactor.get();
}

grpc::ServerUnaryReactor* KServeService::ModelStatistics(
    grpc::CallbackServerContext* context,
    const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  auto caller =
      core_->edge()->Authenticate(*context, {kScopeGenerate}, request->name());
  if (!caller.ok()) return FinishWith(context, caller.status());
  const auto stats = core_->Stats();
  std::set<std::string> names;
  for (const auto& summary : core_->pool()->Models()) {
    names.insert(summary.model.name());
  }
  for (const auto& [name, s] : stats) names.insert(name);
  if (!request->name().empty() && !names.count(request->name())) {
    return FinishWith(
        context, absl::NotFoundError(absl::StrCat("model '", request->name(),
                                                  "' is not served")));
  }
  for (const std::string& name : names) {
    if (!request->name().empty() && name != request->name()) continue;
    if (caller->key != nullptr && !caller->key->AllowsModel(name)) continue;
    auto* out = response->add_model_stats();
    out->set_name(name);
    out->set_version(std::string(kModelVersion));
    auto it = stats.find(name);
    if (it == stats.end()) continue;
    const ModelStats& s = it->second;
    out->set_last_inference(s.last_inference_ms);
    out->set_inference_count(s.success_count);
    out->set_execution_count(s.success_count);
    auto* infer = out->mutable_inference_stats();
    infer->mutable_success()->set_count(s.success_count);
    infer->mutable_success()->set_ns(s.success_ns);
    infer->mutable_fail()->set_count(s.fail_count);
    infer->mutable_fail()->set_ns(s.fail_ns);
    infer->mutable_queue()->set_count(s.queue_count);
    infer->mutable_queue()->set_ns(s.queue_ns);
    infer->mutable_compute_infer()->set_count(s.success_count);
    infer->mutable_compute_infer()->set_ns(s.infer_ns);
  }
  return FinishWith(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::RepositoryIndex(
    grpc::CallbackServerContext* context,
    const inference::RepositoryIndexRequest* request,
    inference::RepositoryIndexResponse* response) {
  auto caller = core_->edge()->Authenticate(*context, {kScopeGenerate}, "");
  if (!caller.ok()) return FinishWith(context, caller.status());
  for (const auto& summary : core_->pool()->Models()) {
    if (caller->key != nullptr &&
        !caller->key->AllowsModel(summary.model.name())) {
      continue;
    }
    const bool ready = summary.ready_replicas > 0;
    if (request->ready() && !ready) continue;
    auto* model = response->add_models();
    model->set_name(summary.model.name());
    model->set_version(std::string(kModelVersion));
    switch (ready ? hearth::v1::MODEL_STATE_READY : summary.model.state()) {
      case hearth::v1::MODEL_STATE_READY:
        model->set_state("READY");
        break;
      case hearth::v1::MODEL_STATE_LOADING:
        model->set_state("LOADING");
        break;
      case hearth::v1::MODEL_STATE_UNLOADING:
        model->set_state("UNLOADING");
        break;
      default:
        model->set_state("UNAVAILABLE");
        break;
    }
  }
  return FinishWith(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::RepositoryModelLoad(
    grpc::CallbackServerContext* context,
    const inference::RepositoryModelLoadRequest* request,
    inference::RepositoryModelLoadResponse*) {
  auto caller = core_->edge()->Authenticate(*context, {kScopeAdmin}, "");
  if (!caller.ok()) return FinishWith(context, caller.status());
  if (request->model_name().empty()) {
    return FinishWith(context,
                      absl::InvalidArgumentError("model_name: required"));
  }
  auto load = std::make_shared<hearth::v1::LoadModelRequest>();
  load->set_model(request->model_name());
  load->set_path(RepositoryParam(request->parameters(), "path"));
  for (absl::string_view device :
       absl::StrSplit(RepositoryParam(request->parameters(), "devices"), ',',
                      absl::SkipEmpty())) {
    load->add_devices(std::string(device));
  }
  auto* reactor = context->DefaultReactor();
  WorkerFanOut::Run(
      core_->pool(), context, reactor,
      absl::StrCat("load model '", request->model_name(), "'"),
      [load](WorkerHandle* worker, grpc::ClientContext* client,
             std::function<void(grpc::Status)> done) {
        auto response = std::make_shared<hearth::v1::LoadModelResponse>();
        worker->stub()->async()->LoadModel(
            client, load.get(), response.get(),
            [load, response, done](grpc::Status status) { done(status); });
      });
  return reactor;
}

grpc::ServerUnaryReactor* KServeService::RepositoryModelUnload(
    grpc::CallbackServerContext* context,
    const inference::RepositoryModelUnloadRequest* request,
    inference::RepositoryModelUnloadResponse*) {
  auto caller = core_->edge()->Authenticate(*context, {kScopeAdmin}, "");
  if (!caller.ok()) return FinishWith(context, caller.status());
  if (request->model_name().empty()) {
    return FinishWith(context,
                      absl::InvalidArgumentError("model_name: required"));
  }
  auto unload = std::make_shared<hearth::v1::UnloadModelRequest>();
  unload->set_model(request->model_name());
  auto* reactor = context->DefaultReactor();
  WorkerFanOut::Run(
      core_->pool(), context, reactor,
      absl::StrCat("unload model '", request->model_name(), "'"),
      [unload](WorkerHandle* worker, grpc::ClientContext* client,
               std::function<void(grpc::Status)> done) {
        auto response = std::make_shared<hearth::v1::UnloadModelResponse>();
        worker->stub()->async()->UnloadModel(
            client, unload.get(), response.get(),
            [unload, response, done](grpc::Status status) { done(status); });
      });
  return reactor;
}

}  // namespace hearth::gateway
