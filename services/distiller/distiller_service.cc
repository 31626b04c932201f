#include "services/distiller/distiller_service.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include <atomic>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/grpc/status_conversion.h"
#include "services/distiller/pipeline.h"

namespace hearth::distiller {
namespace {

google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  google::protobuf::Timestamp ts;
  if (t == absl::UnixEpoch()) return ts;
  const int64_t nanos = absl::ToUnixNanos(t);
  ts.set_seconds(nanos / 1000000000);
  ts.set_nanos(static_cast<int32_t>(nanos % 1000000000));
  return ts;
}

grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context,
                                 const absl::Status& s) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

bool Terminal(jobs::JobState s) {
  return s == jobs::JobState::kSucceeded || s == jobs::JobState::kFailed ||
         s == jobs::JobState::kCancelled;
}

}  // namespace

void JobRecordToProto(const jobs::JobRecord& r, hearth::v1::Job* job) {
  job->set_id(r.id);
  job->set_kind(r.kind);
  job->set_state(static_cast<hearth::v1::JobState>(static_cast<int>(r.state)));
  job->set_progress(r.progress);
  job->set_message(r.message);
  for (const auto& [k, v] : r.metrics) (*job->mutable_metrics())[k] = v;
  for (const auto& [k, v] : r.artifacts) (*job->mutable_artifacts())[k] = v;
  job->set_error(r.error);
  *job->mutable_create_time() = ToTimestamp(r.create_time);
  *job->mutable_start_time() = ToTimestamp(r.start_time);
  *job->mutable_end_time() = ToTimestamp(r.end_time);
  job->set_spec_json(r.spec_json);
}

void RegisterDistillationRunner(jobs::JobManager* manager,
                                std::string model_repository, int threads) {
  manager->RegisterRunner(kDistillationKind, [model_repository,
                                              threads](jobs::JobContext& ctx) {
    auto spec = ParseJobSpec(ctx.spec_json());
    if (!spec.ok()) return spec.status();
    if (spec->threads == 0) spec->threads = threads;
    PipelineEnv env{model_repository, ctx.checkpoint_dir()};
    auto result = RunPipeline(
        *spec, env,
        [&ctx](const PipelineProgress& p) {
          const TrainerProgress& t = p.trainer;
          std::map<std::string, double> metrics = {
              {"step", static_cast<double>(t.step)},
              {"total_steps", static_cast<double>(t.total_steps)},
              {"stage", static_cast<double>(p.stage_index)},
              {"loss", t.loss},
              {"ce_loss", t.ce},
              {"learning_rate", t.learning_rate},
              {"tokens_per_second", t.tokens_per_second},
              {"eta_seconds", t.eta_seconds}};
          if (t.kd != 0) metrics["kd_loss"] = t.kd;
          if (t.hidden != 0) metrics["hidden_loss"] = t.hidden;
          if (t.attention != 0) metrics["attention_loss"] = t.attention;
          if (t.eval_perplexity)
            metrics["heldout_perplexity"] = *t.eval_perplexity;
          ctx.ReportProgress(p.fraction,
                             absl::StrFormat("%s (%d/%d) step %d/%d", p.stage,
                                             p.stage_index + 1, p.num_stages,
                                             t.step, t.total_steps),
                             metrics);
        },
        [&ctx] { return ctx.Cancelled(); });
    if (!result.ok()) return result.status();
    if (result->cancelled)
      return absl::CancelledError("cancelled; checkpoint kept");
    std::map<std::string, double> final_metrics;
    // Perplexity for language-model jobs, accuracy for TASK jobs.
    for (const char* who : {"teacher", "student", "scratch_student", "model"}) {
      if (!result->report.contains(who)) continue;
      const auto& entry = result->report[who];
      for (const char* metric : {"heldout_perplexity", "accuracy"}) {
        if (entry.contains(metric) && entry[metric].is_number()) {
          final_metrics[absl::StrCat(
              who, metric[0] == 'h' ? "_perplexity" : "_accuracy")] =
              entry[metric].get<double>();
        }
      }
    }
    ctx.ReportProgress(1.0, "done", final_metrics);
    ctx.AddArtifact("model", result->output_dir);
    ctx.AddArtifact("report", result->report_path);
    return absl::OkStatus();
  });
}

DistillerService::DistillerService(jobs::JobManager* manager,
                                   std::string model_repository)
    : manager_(manager), model_repository_(std::move(model_repository)) {}

grpc::ServerUnaryReactor* DistillerService::CreateJob(
    grpc::CallbackServerContext* context,
    const hearth::v1::CreateDistillationJobRequest* request,
    hearth::v1::Job* response) {
  if (!request->has_spec())
    return Finish(context, absl::InvalidArgumentError("spec: required"));
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(request->spec(), &json,
                                                   options)
           .ok()) {
    return Finish(context, absl::InvalidArgumentError(
                               "spec: cannot be converted to JSON"));
  }
  auto spec = ParseJobSpec(json);
  if (!spec.ok()) return Finish(context, spec.status());
  PipelineEnv env{model_repository_, ""};
  if (absl::Status s = CheckJobInputs(*spec, env); !s.ok())
    return Finish(context, s);
  auto record = manager_->Create(kDistillationKind, json);
  if (!record.ok()) return Finish(context, record.status());
  JobRecordToProto(*record, response);
  return Finish(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* DistillerService::GetJob(
    grpc::CallbackServerContext* context,
    const hearth::v1::GetJobRequest* request, hearth::v1::Job* response) {
  auto record = manager_->Get(request->id());
  if (!record.ok()) return Finish(context, record.status());
  JobRecordToProto(*record, response);
  return Finish(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* DistillerService::ListJobs(
    grpc::CallbackServerContext* context,
    const hearth::v1::ListJobsRequest* request,
    hearth::v1::ListJobsResponse* response) {
  const int size =
      request->page_size() == 0 ? 100 : static_cast<int>(request->page_size());
  auto page = manager_->List(
      static_cast<jobs::JobState>(static_cast<int>(request->state())), size,
      request->page_token());
  if (!page.ok()) return Finish(context, page.status());
  for (const auto& r : page->jobs) {
    if (r.kind == kDistillationKind) JobRecordToProto(r, response->add_jobs());
  }
  response->set_next_page_token(page->next_page_token);
  return Finish(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* DistillerService::CancelJob(
    grpc::CallbackServerContext* context,
    const hearth::v1::CancelJobRequest* request, hearth::v1::Job* response) {
  auto record = manager_->Cancel(request->id());
  if (!record.ok()) return Finish(context, record.status());
  JobRecordToProto(*record, response);
  return Finish(context, absl::OkStatus());
}

namespace {

// Streams snapshots. One thread per watch runs the blocking long-poll
// (JobManager::Watch, 1 s at a time so a client that went away is noticed) and
// waits for each write to complete before taking the next snapshot. Watches are
// few (admin tooling), so a thread each is cheaper than a polling scheme.
class WatchReactor : public grpc::ServerWriteReactor<hearth::v1::Job> {
 public:
  WatchReactor(jobs::JobManager* manager, std::string id)
      : manager_(manager), id_(std::move(id)) {
    thread_ = std::thread([this] { Loop(); });
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    write_ok_ = ok;
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }
  void OnDone() override {
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();
    } else if (thread_.joinable()) {
      thread_.join();
    }
    delete this;
  }

 private:
  void Loop() {
    int64_t version = 0;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (cancelled_) break;
      }
      auto record = manager_->Watch(id_, version, absl::Seconds(1));
      if (!record.ok()) {
        Finish(ToGrpcStatus(record.status()));
        return;
      }
      if (record->version <= version) continue;
      version = record->version;
      const bool terminal = Terminal(record->state);
      job_.Clear();
      JobRecordToProto(*record, &job_);
      {
        absl::MutexLock lock(&mu_);
        writing_ = true;
      }
      StartWrite(&job_);
      bool stop = false;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](WatchReactor* r) { return !r->writing_ || r->cancelled_; },
            this));
        stop = cancelled_ || !write_ok_;
      }
      if (stop) break;
      if (terminal) {
        Finish(grpc::Status::OK);
        return;
      }
    }
    Finish(grpc::Status::CANCELLED);
  }

  jobs::JobManager* manager_;
  std::string id_;
  hearth::v1::Job job_;
  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool write_ok_ ABSL_GUARDED_BY(mu_) = true;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace

grpc::ServerWriteReactor<hearth::v1::Job>* DistillerService::WatchJob(
    grpc::CallbackServerContext* context,
    const hearth::v1::WatchJobRequest* request) {
  (void)context;
  return new WatchReactor(manager_, request->id());
}

}  // namespace hearth::distiller
