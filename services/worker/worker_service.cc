#include "services/worker/worker_service.h"

#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc/status_conversion.h"
#include "common/log/logging.h"

namespace hearth::worker {

GenerationRequest FromProto(const v1::SequenceRequest& r) {
  GenerationRequest out;
  out.sequence_id = r.sequence_id();
  out.prompt = r.prompt();
  out.prompt_token_ids.assign(r.prompt_token_ids().begin(),
                              r.prompt_token_ids().end());
  const v1::SamplingParams& s = r.sampling();
  out.sampling.max_new_tokens = s.max_new_tokens();
  if (s.has_temperature()) out.sampling.temperature = s.temperature();
  out.sampling.top_k = s.top_k();
  if (s.has_top_p()) out.sampling.top_p = s.top_p();
  if (s.has_repetition_penalty()) {
    out.sampling.repetition_penalty = s.repetition_penalty();
  }
  if (s.has_seed()) out.sampling.seed = s.seed();
  out.sampling.stop.assign(s.stop().begin(), s.stop().end());
  out.sampling.stop_token_ids.assign(s.stop_token_ids().begin(),
                                     s.stop_token_ids().end());
  out.sampling.ignore_eos = s.ignore_eos();
  out.priority = r.priority();
  if (r.deadline_unix_ms() > 0) {
    out.deadline = absl::FromUnixMillis(r.deadline_unix_ms());
  }
  out.gateway_queue_seconds = r.gateway_queue_seconds();
  return out;
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
    case FinishReason::kNone:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

v1::ModelState ToProto(ModelState state) {
  switch (state) {
    case ModelState::kLoading:
      return v1::MODEL_STATE_LOADING;
    case ModelState::kReady:
      return v1::MODEL_STATE_READY;
    case ModelState::kUnloading:
      return v1::MODEL_STATE_UNLOADING;
    case ModelState::kFailed:
      return v1::MODEL_STATE_FAILED;
    case ModelState::kUnloaded:
      break;
  }
  return v1::MODEL_STATE_UNSPECIFIED;
}

void ToProto(const SequenceEvent& e, v1::ExecuteEvent* out) {
  out->set_sequence_id(e.sequence_id);
  out->mutable_token_ids()->Add(e.token_ids.begin(), e.token_ids.end());
  out->set_text(e.text);
  if (e.finish_reason == FinishReason::kNone) return;
  out->set_finish_reason(ToProto(e.finish_reason));
  v1::Usage* usage = out->mutable_usage();
  usage->set_prompt_tokens(static_cast<uint32_t>(e.prompt_tokens));
  usage->set_completion_tokens(static_cast<uint32_t>(e.completion_tokens));
  usage->set_total_tokens(
      static_cast<uint32_t>(e.prompt_tokens + e.completion_tokens));
  v1::Timing* timing = out->mutable_timing();
  timing->set_queue_seconds(e.timing.queue_seconds);
  timing->set_time_to_first_token_seconds(e.timing.time_to_first_token_seconds);
  timing->set_total_seconds(e.timing.total_seconds);
  if (e.finish_reason == FinishReason::kError) {
    out->set_error_code(static_cast<int32_t>(
        e.error.ok() ? absl::StatusCode::kInternal : e.error.code()));
    out->set_error_message(std::string(e.error.message()));
  }
}

namespace {

// One Execute call. Lifetime: deleted in OnDone, which gRPC calls only after
// Finish; Finish is called only once every sequence has had its final event,
// after which the engine never calls back, so the engine's callbacks may use
// `this` freely.
class ExecuteReactor : public grpc::ServerWriteReactor<v1::ExecuteEvent> {
 public:
  ExecuteReactor(Engine* engine, grpc::CallbackServerContext* context,
                 const v1::ExecuteRequest& request)
      : engine_(engine) {
    Start(context, request);
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) broken_ = true;
    }
    Pump();
  }

  void OnCancel() override {
    std::vector<std::string> ids;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      ids = accepted_ids_;
    }
    if (!ids.empty()) engine_->Cancel(ids);
  }

  void OnDone() override { delete this; }

 private:
  void Start(grpc::CallbackServerContext* context,
             const v1::ExecuteRequest& request) {
    const int n = request.sequences_size();
    if (request.model().empty()) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "model: empty"));
      return;
    }
    if (n == 0) {
      Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "sequences: empty"));
      return;
    }
    // The call's own deadline bounds its sequences too, so that they stop
    // within a step of it even if the cancellation is slow to arrive.
    std::optional<absl::Time> call_deadline;
    const auto deadline = context->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      call_deadline = absl::FromChrono(deadline);
    }
    std::vector<GenerationRequest> requests;
    requests.reserve(n);
    for (const v1::SequenceRequest& s : request.sequences()) {
      requests.push_back(FromProto(s));
      GenerationRequest& r = requests.back();
      if (call_deadline && (!r.deadline || *call_deadline < *r.deadline)) {
        r.deadline = call_deadline;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      remaining_ = n;
    }
    auto admissions =
        engine_->Submit(request.model(), std::move(requests),
                        [this](SequenceEvent&& e) { OnEvent(std::move(e)); });
    if (!admissions.ok()) {
      Finish(ToGrpcStatus(admissions.status()));
      return;
    }
    std::vector<std::string> ids;
    std::vector<v1::ExecuteEvent> errors;
    absl::Status first_error;
    for (int i = 0; i < n; ++i) {
      const Admission& a = (*admissions)[i];
      if (a.status.ok()) {
        ids.push_back(a.sequence_id);
        continue;
      }
      const std::string message =
          absl::StrCat("sequences[", i, "].", a.status.message());
      if (first_error.ok())
        first_error = absl::Status(a.status.code(), message);
      v1::ExecuteEvent e;
      e.set_sequence_id(a.sequence_id);
      e.set_finish_reason(v1::FINISH_REASON_ERROR);
      e.set_error_code(static_cast<int32_t>(a.status.code()));
      e.set_error_message(message);
      errors.push_back(std::move(e));
    }
    if (ids.empty()) {
      Finish(ToGrpcStatus(first_error));
      return;
    }
    bool cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      accepted_ids_ = ids;
      cancelled = cancelled_;
      for (v1::ExecuteEvent& e : errors) {
        --remaining_;
        queue_.push_back(std::move(e));
      }
      started_ = true;
    }
    if (cancelled) engine_->Cancel(ids);
    Pump();
  }

  // Called on a replica thread.
  void OnEvent(SequenceEvent&& event) {
    v1::ExecuteEvent proto;
    ToProto(event, &proto);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (event.finish_reason != FinishReason::kNone) --remaining_;
      if (!broken_) Enqueue(std::move(proto));
    }
    Pump();
  }

  // Appends to the queue, merging into a queued (not yet written) event of the
  // same sequence.
  void Enqueue(v1::ExecuteEvent proto) {
    if (!queue_.empty()) {
      v1::ExecuteEvent& last = queue_.back();
      if (last.sequence_id() == proto.sequence_id() &&
          last.finish_reason() == v1::FINISH_REASON_UNSPECIFIED) {
        last.mutable_token_ids()->Add(proto.token_ids().begin(),
                                      proto.token_ids().end());
        last.mutable_text()->append(proto.text());
        if (proto.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
          last.set_finish_reason(proto.finish_reason());
          *last.mutable_usage() = proto.usage();
          *last.mutable_timing() = proto.timing();
          last.set_error_code(proto.error_code());
          last.set_error_message(proto.error_message());
        }
        return;
      }
    }
    queue_.push_back(std::move(proto));
  }

  // Starts the next write, or finishes the call when all is written. gRPC
  // calls are made outside the lock.
  void Pump() {
    std::unique_lock<std::mutex> lock(mu_);
    if (writing_ || finished_ || !started_) return;
    if (broken_) queue_.clear();
    if (!queue_.empty()) {
      in_flight_ = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
      lock.unlock();
      StartWrite(&in_flight_);
      return;
    }
    if (remaining_ > 0) return;
    finished_ = true;
    const bool cancelled = cancelled_;
    lock.unlock();
    Finish(cancelled ? grpc::Status::CANCELLED : grpc::Status::OK);
  }

  Engine* engine_;
  std::mutex mu_;
  std::deque<v1::ExecuteEvent> queue_;
  v1::ExecuteEvent in_flight_;
  std::vector<std::string> accepted_ids_;
  int remaining_ = 0;  // Sequences without their final event yet.
  bool started_ = false;
  bool writing_ = false;
  bool finished_ = false;
  bool broken_ = false;  // A write failed: the client is gone.
  bool cancelled_ = false;
};

void FillModel(const ModelStatus& m, v1::LoadedModel* out) {
  out->set_name(m.name);
  out->set_state(ToProto(m.state));
  for (const std::string& d : m.devices) out->add_devices(d);
  out->set_path(m.path);
  out->set_context_length(static_cast<uint32_t>(m.context_length));
  out->set_vocab_size(static_cast<uint32_t>(m.vocab_size));
  out->set_default_max_new_tokens(
      static_cast<uint32_t>(m.default_max_new_tokens));
  out->set_quantization(m.quantization);
}

}  // namespace

WorkerService::WorkerService(Engine* engine, std::string worker_id)
    : engine_(engine), worker_id_(std::move(worker_id)) {}

WorkerService::~WorkerService() {
  std::lock_guard<std::mutex> lock(threads_mu_);
  for (Background& b : threads_) {
    if (b.thread.joinable()) b.thread.join();
  }
}

void WorkerService::RunInBackground(std::function<void()> work) {
  std::lock_guard<std::mutex> lock(threads_mu_);
  for (auto it = threads_.begin(); it != threads_.end();) {
    if (it->done->load()) {
      it->thread.join();
      it = threads_.erase(it);
    } else {
      ++it;
    }
  }
  auto done = std::make_shared<std::atomic<bool>>(false);
  threads_.push_back({std::thread([work = std::move(work), done] {
                        work();
                        done->store(true);
                      }),
                      done});
}

grpc::ServerWriteReactor<v1::ExecuteEvent>* WorkerService::Execute(
    grpc::CallbackServerContext* context, const v1::ExecuteRequest* request) {
  return new ExecuteReactor(engine_, context, *request);
}

grpc::ServerUnaryReactor* WorkerService::Cancel(
    grpc::CallbackServerContext* context, const v1::CancelRequest* request,
    v1::CancelResponse* response) {
  std::vector<std::string> ids(request->sequence_ids().begin(),
                               request->sequence_ids().end());
  response->set_cancelled(static_cast<uint32_t>(engine_->Cancel(ids)));
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::LoadModel(
    grpc::CallbackServerContext* context, const v1::LoadModelRequest* request,
    v1::LoadModelResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (request->model().empty()) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "model: empty"));
    return reactor;
  }
  std::string model = request->model();
  std::string path = request->path();
  std::vector<std::string> devices(request->devices().begin(),
                                   request->devices().end());
  RunInBackground([this, reactor, response, model, path, devices] {
    auto status = engine_->LoadModel(model, path, devices);
    if (!status.ok()) {
      reactor->Finish(ToGrpcStatus(status.status()));
      return;
    }
    response->set_model(status->name);
    response->set_state(ToProto(status->state));
    response->set_load_seconds(status->load_seconds);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::UnloadModel(
    grpc::CallbackServerContext* context, const v1::UnloadModelRequest* request,
    v1::UnloadModelResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (request->model().empty()) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "model: empty"));
    return reactor;
  }
  std::string model = request->model();
  RunInBackground([this, reactor, response, model] {
    auto status = engine_->UnloadModel(model);
    if (!status.ok()) {
      reactor->Finish(ToGrpcStatus(status.status()));
      return;
    }
    response->set_model(status->name);
    response->set_state(ToProto(status->state));
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::GetStatus(
    grpc::CallbackServerContext* context, const v1::GetStatusRequest*,
    v1::WorkerStatus* response) {
  const EngineStatus status = engine_->GetStatus();
  response->set_worker_id(worker_id_);
  for (const DeviceStatus& d : status.devices) {
    v1::DeviceStatus* out = response->add_devices();
    out->set_device(d.device);
    out->set_kv_cache_capacity_tokens(
        static_cast<uint64_t>(d.kv_cache_capacity_tokens));
    out->set_kv_cache_free_tokens(
        static_cast<uint64_t>(d.kv_cache_free_tokens));
    out->set_running_sequences(static_cast<uint32_t>(d.running_sequences));
    out->set_waiting_sequences(static_cast<uint32_t>(d.waiting_sequences));
    out->set_memory_used_bytes(static_cast<uint64_t>(d.memory_used_bytes));
  }
  for (const ModelStatus& m : status.models)
    FillModel(m, response->add_models());
  response->set_queue_length(static_cast<uint32_t>(status.queue_length));
  response->set_accepting(status.accepting);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace hearth::worker
