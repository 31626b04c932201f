// hearth-quantizer: quantization jobs (RTN, INT8, GPTQ, AWQ, GGUF) with an
// evaluation report. See ../shared/ARCHITECTURE.md.
#include <cstdio>
#include <filesystem>

#include "absl/flags/flag.h"
#include "common/config/config.h"
#include "common/grpc/server_runner.h"
#include "common/jobs/job_manager.h"
#include "common/model/llama_model.h"
#include "services/quantizer/quantize_job.h"
#include "services/quantizer/quantizer_service.h"

ABSL_FLAG(int32_t, grpc_port, 7001, "gRPC port (hearth.v1.Quantization)");
ABSL_FLAG(int32_t, metrics_port, 7002, "Prometheus /metrics port (0 = off)");
ABSL_FLAG(std::string, model_repo, "models",
          "Model repository: source models are read and outputs written here");
ABSL_FLAG(std::string, work_dir, "",
          "Job store and checkpoints (default <model_repo>/.quantizer)");
ABSL_FLAG(int32_t, threads, 0, "libtorch intra-op threads (0 = default)");

int main(int argc, char** argv) {
  hearth::ConfigFile config;
  hearth::InitServiceFlags(
      argc, argv,
      "hearth-quantizer: runs quantization jobs (hearth.v1.Quantization).",
      &config);
  const std::string repo = absl::GetFlag(FLAGS_model_repo);
  std::string work_dir = absl::GetFlag(FLAGS_work_dir);
  if (work_dir.empty()) work_dir = repo + "/.quantizer";
  if (absl::GetFlag(FLAGS_threads) > 0) {
    hearth::model::SetCpuThreads(absl::GetFlag(FLAGS_threads));
  }
  hearth::jobs::JobManagerOptions options;
  options.work_dir = work_dir;
  options.id_prefix = "q";
  auto manager = hearth::jobs::JobManager::Open(options);
  if (!manager.ok()) {
    std::fprintf(stderr, "hearth-quantizer: %s\n",
                 manager.status().ToString().c_str());
    return 1;
  }
  (*manager)->RegisterRunner(
      "quantization", [repo](hearth::jobs::JobContext& ctx) {
        return hearth::quantizer::RunQuantizeJob(repo, ctx);
      });
  (*manager)->Start();
  hearth::ServiceRunner runner(hearth::ServerOptionsFromFlags(
      "hearth-quantizer", absl::GetFlag(FLAGS_grpc_port),
      absl::GetFlag(FLAGS_metrics_port)));
  hearth::quantizer::QuantizationService quantization(manager->get(), repo);
  runner.AddService(&quantization);
  const int rc = runner.Run();
  (*manager)->Shutdown();
  return rc;
}
