// hearth.v1.Quantization on top of the durable JobManager: translates protos
// to job specs and records and back; all the work is in quantize_job.h.
//
// WatchJob streams from a small per-stream thread that long-polls the
// manager (JobManager::Watch) and writes one snapshot at a time; the gRPC
// callback threads never block.
#ifndef HEARTH_SERVICES_QUANTIZER_QUANTIZER_SERVICE_H_
#define HEARTH_SERVICES_QUANTIZER_QUANTIZER_SERVICE_H_

#include <string>

#include "common/jobs/job_manager.h"
#include "hearth/v1/quantization.grpc.pb.h"

namespace hearth::quantizer {

class QuantizationService final : public v1::Quantization::CallbackService {
 public:
  QuantizationService(jobs::JobManager* manager, std::string model_repo)
      : manager_(manager), model_repo_(std::move(model_repo)) {}

  grpc::ServerUnaryReactor* CreateJob(
      grpc::CallbackServerContext* ctx,
      const v1::CreateQuantizationJobRequest* request, v1::Job* job) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const v1::GetJobRequest* request,
                                   v1::Job* job) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const v1::CancelJobRequest* request,
                                      v1::Job* job) override;
  grpc::ServerWriteReactor<v1::Job>* WatchJob(
      grpc::CallbackServerContext* ctx,
      const v1::WatchJobRequest* request) override;

 private:
  jobs::JobManager* const manager_;
  const std::string model_repo_;
};

// JobRecord -> hearth.v1.Job.
void JobToProto(const jobs::JobRecord& record, v1::Job* job);

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_QUANTIZER_SERVICE_H_
