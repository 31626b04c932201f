#include "services/gateway/fake_worker.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"

namespace hearth::gateway {

FakeWorker::FakeWorker(FakeWorkerOptions options)
    : options_(std::move(options)) {
  absl::MutexLock lock(&mu_);
  for (const auto& [name, context] : options_.models) {
    states_[name] = hearth::v1::MODEL_STATE_READY;
  }
}

FakeWorker::~FakeWorker() { Kill(); }

void FakeWorker::Start(int port) {
  grpc::ServerBuilder builder;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", port),
                           grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(this);
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 4);
  server_ = builder.BuildAndStart();
}

void FakeWorker::Kill() {
  killed_.store(true);
  if (server_) {
    server_->Shutdown(
        absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)));
    server_->Wait();
    server_.reset();
  }
}

std::string FakeWorker::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

void FakeWorker::set_model_state(const std::string& model,
                                 hearth::v1::ModelState state) {
  absl::MutexLock lock(&mu_);
  states_[model] = state;
}

std::vector<int> FakeWorker::batch_sizes() {
  absl::MutexLock lock(&mu_);
  return batch_sizes_;
}

std::vector<hearth::v1::SequenceRequest> FakeWorker::sequences() {
  absl::MutexLock lock(&mu_);
  return sequences_;
}

int FakeWorker::execute_calls() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(batch_sizes_.size());
}

grpc::Status FakeWorker::Execute(
    grpc::ServerContext* context, const hearth::v1::ExecuteRequest* request,
    grpc::ServerWriter<hearth::v1::ExecuteEvent>* writer) {
  {
    absl::MutexLock lock(&mu_);
    auto it = states_.find(request->model());
    if (it == states_.end() || it->second != hearth::v1::MODEL_STATE_READY) {
      return grpc::Status(
          grpc::StatusCode::NOT_FOUND,
          absl::StrCat("model '", request->model(), "' is not loaded"));
    }
    batch_sizes_.push_back(request->sequences_size());
    for (const auto& s : request->sequences()) sequences_.push_back(s);
  }
  const absl::Time start = absl::Now();
  struct Seq {
    const hearth::v1::SequenceRequest* request;
    int target;
    int produced = 0;
    bool done = false;
  };
  std::vector<Seq> seqs;
  for (const auto& s : request->sequences()) {
    const int target = s.sampling().max_new_tokens() > 0
                           ? static_cast<int>(s.sampling().max_new_tokens())
                           : options_.default_tokens;
    seqs.push_back({&s, target});
  }
  running_.fetch_add(static_cast<int>(seqs.size()));
  int live = static_cast<int>(seqs.size());
  const int fail_code = fail_code_.load();
  grpc::Status result = grpc::Status::OK;
  while (live > 0) {
    if (killed_.load()) {
      result = grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker killed");
      break;
    }
    if (context->IsCancelled()) {
      result = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
      break;
    }
    {
      // One decode step for this call's live sequences.
      absl::MutexLock lock(&device_);
      absl::SleepFor(options_.step_base + options_.step_per_sequence * live);
    }
    for (Seq& seq : seqs) {
      if (seq.done) continue;
      hearth::v1::ExecuteEvent event;
      event.set_sequence_id(seq.request->sequence_id());
      bool cancel = false;
      {
        absl::MutexLock lock(&mu_);
        cancel = cancel_requests_.erase(seq.request->sequence_id()) > 0;
      }
      const int64_t deadline = seq.request->deadline_unix_ms();
      if (cancel ||
          (deadline > 0 && absl::ToUnixMillis(absl::Now()) > deadline)) {
        event.set_finish_reason(hearth::v1::FINISH_REASON_CANCELLED);
        cancelled_.fetch_add(1);
      } else if (fail_code != 0) {
        event.set_finish_reason(hearth::v1::FINISH_REASON_ERROR);
        event.set_error_code(fail_code);
        event.set_error_message("fake failure");
      } else {
        event.add_token_ids(seq.produced);
        event.set_text(absl::StrCat("t", seq.produced, " "));
        ++seq.produced;
        if (seq.produced >= seq.target) {
          event.set_finish_reason(hearth::v1::FINISH_REASON_LENGTH);
        }
      }
      if (event.finish_reason() != hearth::v1::FINISH_REASON_UNSPECIFIED) {
        seq.done = true;
        --live;
        const uint32_t prompt = std::max<uint32_t>(
            1, static_cast<uint32_t>(seq.request->prompt().size() / 4 +
                                     seq.request->prompt_token_ids_size()));
        event.mutable_usage()->set_prompt_tokens(prompt);
        event.mutable_usage()->set_completion_tokens(seq.produced);
        event.mutable_usage()->set_total_tokens(prompt + seq.produced);
        event.mutable_timing()->set_queue_seconds(
            seq.request->gateway_queue_seconds());
        event.mutable_timing()->set_total_seconds(
            absl::ToDoubleSeconds(absl::Now() - start) +
            seq.request->gateway_queue_seconds());
      }
      if (!writer->Write(event)) {
        result = grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
        live = 0;
        break;
      }
    }
  }
  running_.fetch_sub(static_cast<int>(seqs.size()));
  return result;
}

grpc::Status FakeWorker::Cancel(grpc::ServerContext*,
                                const hearth::v1::CancelRequest* request,
                                hearth::v1::CancelResponse* response) {
  absl::MutexLock lock(&mu_);
  for (const auto& id : request->sequence_ids()) cancel_requests_[id] = true;
  response->set_cancelled(request->sequence_ids_size());
  return grpc::Status::OK;
}

grpc::Status FakeWorker::LoadModel(grpc::ServerContext*,
                                   const hearth::v1::LoadModelRequest* request,
                                   hearth::v1::LoadModelResponse* response) {
  absl::MutexLock lock(&mu_);
  states_[request->model()] = hearth::v1::MODEL_STATE_READY;
  options_.models.emplace(request->model(), 2048);
  response->set_model(request->model());
  response->set_state(hearth::v1::MODEL_STATE_READY);
  return grpc::Status::OK;
}

grpc::Status FakeWorker::UnloadModel(
    grpc::ServerContext*, const hearth::v1::UnloadModelRequest* request,
    hearth::v1::UnloadModelResponse* response) {
  absl::MutexLock lock(&mu_);
  if (!states_.erase(request->model())) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "not loaded");
  }
  response->set_model(request->model());
  return grpc::Status::OK;
}

grpc::Status FakeWorker::GetStatus(grpc::ServerContext*,
                                   const hearth::v1::GetStatusRequest*,
                                   hearth::v1::WorkerStatus* response) {
  response->set_worker_id(options_.worker_id);
  response->set_accepting(accepting_.load());
  auto* device = response->add_devices();
  device->set_device("cpu");
  device->set_kv_cache_capacity_tokens(65536);
  device->set_kv_cache_free_tokens(65536);
  device->set_running_sequences(running_.load());
  absl::MutexLock lock(&mu_);
  for (const auto& [name, state] : states_) {
    auto* model = response->add_models();
    model->set_name(name);
    model->set_state(state);
    auto it = options_.models.find(name);
    model->set_context_length(it == options_.models.end() ? 2048 : it->second);
    model->set_vocab_size(1000);
    model->set_default_max_new_tokens(options_.default_tokens);
    model->set_quantization("none");
    model->add_devices("cpu");
  }
  return grpc::Status::OK;
}

}  // namespace hearth::gateway
