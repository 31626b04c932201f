// hearth-distiller: teacher training and distillation jobs
// (hearth.v1.Distillation). See ../shared/ARCHITECTURE.md. Jobs live in
// --work_dir (jobs.db, checkpoints/); models are read from and written to
// --model_repository.
#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "common/config/config.h"
#include "common/grpc/server_runner.h"
#include "common/jobs/job_manager.h"
#include "common/model/llama_model.h"
#include "services/distiller/distiller_service.h"

ABSL_FLAG(int32_t, grpc_port, 7101, "gRPC port (hearth.v1.Distillation)");
ABSL_FLAG(int32_t, metrics_port, 7102, "Prometheus /metrics port (0 = off)");
ABSL_FLAG(std::string, model_repository, "models", "Folder of model folders");
ABSL_FLAG(std::string, work_dir, "distiller-work", "Job store and checkpoints");
ABSL_FLAG(int32_t, threads, 2, "libtorch intra-op threads for training");

int main(int argc, char** argv) {
  hearth::ConfigFile config;
  hearth::InitServiceFlags(
      argc, argv,
      "hearth-distiller: trains teachers and distills students "
      "(hearth.v1.Distillation).",
      &config);
  hearth::model::SetCpuThreads(absl::GetFlag(FLAGS_threads));
  hearth::jobs::JobManagerOptions options;
  options.work_dir = absl::GetFlag(FLAGS_work_dir);
  options.id_prefix = "d";
  auto manager = hearth::jobs::JobManager::Open(options);
  if (!manager.ok()) {
    std::cerr << "hearth-distiller: " << manager.status() << "\n";
    return 1;
  }
  const std::string repository = absl::GetFlag(FLAGS_model_repository);
  hearth::distiller::RegisterDistillationRunner(manager->get(), repository,
                                                absl::GetFlag(FLAGS_threads));
  (*manager)->Start();
  hearth::ServiceRunner runner(hearth::ServerOptionsFromFlags(
      "hearth-distiller", absl::GetFlag(FLAGS_grpc_port),
      absl::GetFlag(FLAGS_metrics_port)));
  hearth::distiller::DistillerService distillation(manager->get(), repository);
  runner.AddService(&distillation);
  // Drain: stop the runners first so that running jobs checkpoint and stay
  // RUNNING in the store, to resume on the next start.
  runner.OnDrain([&] { (*manager)->Shutdown(); });
  const int rc = runner.Run();
  (*manager)->Shutdown();
  return rc;
}
