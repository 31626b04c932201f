// DistillerService: hearth.v1.Distillation on top of a JobManager.
//
// A thin front end: it converts a DistillationSpec to the spec JSON the
// pipeline parses (proto field names), validates it (INVALID_ARGUMENT naming
// the field; NOT_FOUND for an unknown teacher) before queueing, and converts
// JobRecords to Job protos. The work itself is RegisterDistillationRunner's
// runner, which calls RunPipeline with the job's checkpoint folder, so a job
// resumes after a restart and a cancel stops within one optimizer step with its
// checkpoint kept.
#ifndef HEARTH_SERVICES_DISTILLER_DISTILLER_SERVICE_H_
#define HEARTH_SERVICES_DISTILLER_DISTILLER_SERVICE_H_

#include <string>

#include "common/jobs/job_manager.h"
#include "hearth/v1/distillation.grpc.pb.h"

namespace hearth::distiller {

inline constexpr char kDistillationKind[] = "distillation";

// Registers the "distillation" runner; call before manager->Start().
void RegisterDistillationRunner(jobs::JobManager* manager,
                                std::string model_repository, int threads);

class DistillerService final
    : public hearth::v1::Distillation::CallbackService {
 public:
  DistillerService(jobs::JobManager* manager, std::string model_repository);

  grpc::ServerUnaryReactor* CreateJob(
      grpc::CallbackServerContext* context,
      const hearth::v1::CreateDistillationJobRequest* request,
      hearth::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const hearth::v1::GetJobRequest* request,
                                   hearth::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(
      grpc::CallbackServerContext* context,
      const hearth::v1::ListJobsRequest* request,
      hearth::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(
      grpc::CallbackServerContext* context,
      const hearth::v1::CancelJobRequest* request,
      hearth::v1::Job* response) override;
  grpc::ServerWriteReactor<hearth::v1::Job>* WatchJob(
      grpc::CallbackServerContext* context,
      const hearth::v1::WatchJobRequest* request) override;

 private:
  jobs::JobManager* manager_;
  std::string model_repository_;
};

void JobRecordToProto(const jobs::JobRecord& record, hearth::v1::Job* job);

}  // namespace hearth::distiller

#endif  // HEARTH_SERVICES_DISTILLER_DISTILLER_SERVICE_H_
