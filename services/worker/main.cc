// hearth-worker: runs models on the given devices with continuous batching and
// streams tokens to the gateway (hearth.v1.Worker). See
// ../../shared/ARCHITECTURE.md and engine.h.
//
//   hearth-worker --model_repository=models --devices=cpu --load=tiny
//   hearth-worker --devices=cuda:0,cuda:1 --kv_cache_tokens=65536
//   --load=a,b=b.gguf
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/config/config.h"
#include "common/grpc/server_runner.h"
#include "common/log/logging.h"
#include "services/worker/engine.h"
#include "services/worker/worker_metrics.h"
#include "services/worker/worker_service.h"

ABSL_FLAG(int32_t, grpc_port, 9001, "internal gRPC port (hearth.v1.Worker)");
ABSL_FLAG(int32_t, metrics_port, 9002, "Prometheus /metrics port (0 = off)");
ABSL_FLAG(std::string, model_repository, "models",
          "folder of model folders (HF layout) and .gguf files");
ABSL_FLAG(std::vector<std::string>, devices, {"cpu"},
          "devices to run replicas on, one replica each: cpu, cpu:N (more CPU "
          "replicas share the cores), cuda:N");
ABSL_FLAG(
    std::vector<std::string>, load, {},
    "models to load at start, as name or name=path (path relative to "
    "--model_repository); the worker reports SERVING once they are READY");
ABSL_FLAG(int64_t, kv_cache_tokens, 8192,
          "KV-cache capacity per model replica, in tokens");
ABSL_FLAG(int64_t, kv_block_size, 16, "tokens per KV-cache block");
ABSL_FLAG(int64_t, max_batch_tokens, 512,
          "token budget of one model step (decode tokens + prompt chunks)");
ABSL_FLAG(int64_t, max_running_sequences, 128,
          "most sequences in one replica's running batch");
ABSL_FLAG(int64_t, max_waiting_sequences, 4096,
          "most accepted-but-waiting sequences; more get UNAVAILABLE");
ABSL_FLAG(int32_t, threads, 0,
          "CPU threads for all CPU replicas together (0 = all cores)");
ABSL_FLAG(std::string, dtype, "auto",
          "parameter dtype: auto (float32 on CPU, the checkpoint's 16-bit "
          "type on CUDA), float32, float16, bfloat16");
ABSL_FLAG(std::string, worker_id, "",
          "id reported in GetStatus (default: hostname:grpc_port)");

int main(int argc, char** argv) {
  hearth::ConfigFile config;
  hearth::InitServiceFlags(
      argc, argv,
      "hearth-worker: runs models on the given devices with continuous "
      "batching (hearth.v1.Worker).",
      &config);
  // Before any thread exists (the engine's replicas), so that they inherit the
  // blocked control signals.
  hearth::ServiceRunner runner(hearth::ServerOptionsFromFlags(
      "hearth-worker", absl::GetFlag(FLAGS_grpc_port),
      absl::GetFlag(FLAGS_metrics_port)));

  hearth::worker::WorkerMetrics metrics(runner.metrics());
  hearth::worker::EngineOptions options;
  options.model_repository = absl::GetFlag(FLAGS_model_repository);
  options.devices = absl::GetFlag(FLAGS_devices);
  options.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  options.kv_block_size = absl::GetFlag(FLAGS_kv_block_size);
  options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  options.max_running_sequences = absl::GetFlag(FLAGS_max_running_sequences);
  options.max_waiting_sequences = absl::GetFlag(FLAGS_max_waiting_sequences);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.dtype = absl::GetFlag(FLAGS_dtype);
  options.observer = &metrics;
  auto engine = hearth::worker::Engine::Create(options);
  if (!engine.ok()) {
    HLOG(ERROR) << engine.status().message();
    return 1;
  }
  for (const std::string& spec : absl::GetFlag(FLAGS_load)) {
    if (spec.empty()) continue;
    const size_t eq = spec.find('=');
    const std::string name = spec.substr(0, eq);
    const std::string path = eq == std::string::npos ? "" : spec.substr(eq + 1);
    auto loaded = (*engine)->LoadModel(name, path);
    if (!loaded.ok()) {
      HLOG(ERROR) << "--load=" << spec << ": " << loaded.status().message();
      return 1;
    }
  }

  std::string worker_id = absl::GetFlag(FLAGS_worker_id);
  if (worker_id.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    worker_id = absl::StrCat(host, ":", absl::GetFlag(FLAGS_grpc_port));
  }
  hearth::worker::WorkerService service(engine->get(), worker_id);
  runner.AddService(&service);
  hearth::worker::Engine* engine_ptr = engine->get();
  runner.OnDrain([engine_ptr] { engine_ptr->StopAccepting(); });
  const int code = runner.Run();
  (*engine)->Shutdown();
  return code;
}
