#include "services/quantizer/quantizer_service.h"

#include <google/protobuf/util/json_util.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/grpc/status_conversion.h"
#include "services/quantizer/quantize_job.h"

namespace hearth::quantizer {
namespace {

void SetTime(absl::Time t, google::protobuf::Timestamp* ts) {
  if (t == absl::UnixEpoch()) return;
  const int64_t ns = absl::ToUnixNanos(t);
  ts->set_seconds(ns / 1000000000);
  ts->set_nanos(static_cast<int32_t>(ns % 1000000000));
}

bool Terminal(jobs::JobState s) {
  return s == jobs::JobState::kSucceeded || s == jobs::JobState::kFailed ||
         s == jobs::JobState::kCancelled;
}

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx,
                               const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

class WatchReactor : public grpc::ServerWriteReactor<v1::Job> {
 public:
  WatchReactor(jobs::JobManager* manager, std::string id)
      : manager_(manager), id_(std::move(id)) {
    thread_ = std::thread([this] { Run(); });
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    write_ok_ = ok;
  }
  void OnCancel() override { cancelled_ = true; }
  void OnDone() override {
    if (std::this_thread::get_id() == thread_.get_id()) {
      thread_.detach();
    } else {
      thread_.join();
    }
    delete this;
  }

 private:
  void Run() {
    int64_t version = 0;
    while (true) {
      if (cancelled_) {
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
        return;
      }
      absl::StatusOr<jobs::JobRecord> rec =
          manager_->Watch(id_, version, absl::Milliseconds(500));
      if (!rec.ok()) {
        Finish(ToGrpcStatus(rec.status()));
        return;
      }
      if (rec->version == version) continue;
      version = rec->version;
      job_.Clear();
      JobToProto(*rec, &job_);
      const bool terminal = Terminal(rec->state);
      {
        absl::MutexLock lock(&mu_);
        writing_ = true;
      }
      StartWrite(&job_);
      bool ok;
      {
        absl::MutexLock lock(&mu_);
        auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
          return !writing_ || cancelled_.load();
        };
        mu_.Await(absl::Condition(&done));
        // A cancelled stream still gets its OnWriteDone; wait for it so the
        // buffer is not reused while gRPC holds it.
        while (writing_)
          mu_.AwaitWithTimeout(absl::Condition(
                                   +[](bool* w) { return !*w; }, &writing_),
                               absl::Milliseconds(100));
        ok = write_ok_;
      }
      if (!ok) {
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
        return;
      }
      if (terminal) {
        Finish(grpc::Status::OK);
        return;
      }
    }
  }

  jobs::JobManager* const manager_;
  const std::string id_;
  v1::Job job_;
  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool write_ok_ ABSL_GUARDED_BY(mu_) = true;
  std::atomic<bool> cancelled_{false};
  std::thread thread_;
};

}  // namespace

void JobToProto(const jobs::JobRecord& r, v1::Job* job) {
  job->set_id(r.id);
  job->set_kind(r.kind);
  job->set_state(static_cast<v1::JobState>(static_cast<int>(r.state)));
  job->set_progress(r.progress);
  job->set_message(r.message);
  for (const auto& [k, v] : r.metrics) (*job->mutable_metrics())[k] = v;
  for (const auto& [k, v] : r.artifacts) (*job->mutable_artifacts())[k] = v;
  job->set_error(r.error);
  SetTime(r.create_time, job->mutable_create_time());
  SetTime(r.start_time, job->mutable_start_time());
  SetTime(r.end_time, job->mutable_end_time());
  job->set_spec_json(r.spec_json);
}

grpc::ServerUnaryReactor* QuantizationService::CreateJob(
    grpc::CallbackServerContext* ctx,
    const v1::CreateQuantizationJobRequest* request, v1::Job* job) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(request->spec(), &json,
                                                   options)
           .ok()) {
    return Done(ctx, absl::InvalidArgumentError("spec: cannot encode"));
  }
  absl::StatusOr<JobSpec> spec = ParseJobSpec(json, model_repo_);
  if (!spec.ok()) return Done(ctx, spec.status());
  absl::StatusOr<jobs::JobRecord> rec =
      manager_->Create("quantization", std::move(json));
  if (rec.ok()) JobToProto(*rec, job);
  return Done(ctx, rec.status());
}

grpc::ServerUnaryReactor* QuantizationService::GetJob(
    grpc::CallbackServerContext* ctx, const v1::GetJobRequest* request,
    v1::Job* job) {
  absl::StatusOr<jobs::JobRecord> rec = manager_->Get(request->id());
  if (rec.ok()) JobToProto(*rec, job);
  return Done(ctx, rec.status());
}

grpc::ServerUnaryReactor* QuantizationService::ListJobs(
    grpc::CallbackServerContext* ctx, const v1::ListJobsRequest* request,
    v1::ListJobsResponse* response) {
  absl::StatusOr<jobs::JobPage> page = manager_->List(
      static_cast<jobs::JobState>(static_cast<int>(request->state())),
      request->page_size() == 0 ? 100 : static_cast<int>(request->page_size()),
      request->page_token());
  if (page.ok()) {
    for (const jobs::JobRecord& r : page->jobs) {
      if (r.kind == "quantization") JobToProto(r, response->add_jobs());
    }
    response->set_next_page_token(page->next_page_token);
  }
  return Done(ctx, page.status());
}

grpc::ServerUnaryReactor* QuantizationService::CancelJob(
    grpc::CallbackServerContext* ctx, const v1::CancelJobRequest* request,
    v1::Job* job) {
  absl::StatusOr<jobs::JobRecord> rec = manager_->Cancel(request->id());
  if (rec.ok()) JobToProto(*rec, job);
  return Done(ctx, rec.status());
}

grpc::ServerWriteReactor<v1::Job>* QuantizationService::WatchJob(
    grpc::CallbackServerContext* ctx, const v1::WatchJobRequest* request) {
  return new WatchReactor(manager_, request->id());
}

}  // namespace hearth::quantizer
