// hearth-gateway: the public entry point (auth, rate limits, dynamic batching,
// dispatch to workers). See ../shared/ARCHITECTURE.md.
//
//   hearth-gateway --workers=127.0.0.1:9001,127.0.0.1:9011 \
//       --api_keys=keys.yaml --model_repository=models
//
// Config file sections (flags win over scalar keys):
//   workers: [host:port, ...]        # in addition to --workers
//   batching: {defaults: {...}, models: {name: {...}}}   # see batcher.h
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/config/config.h"
#include "common/grpc/server_runner.h"
#include "common/log/logging.h"
#include "grpcpp/grpcpp.h"
#include "services/gateway/api_keys.h"
#include "services/gateway/dispatcher.h"
#include "services/gateway/edge.h"
#include "services/gateway/gateway_core.h"
#include "services/gateway/gateway_metrics.h"
#include "services/gateway/generation_service.h"
#include "services/gateway/job_proxy.h"
#include "services/gateway/kserve_service.h"
#include "services/gateway/tokenizer_cache.h"
#include "services/gateway/worker_pool.h"

ABSL_FLAG(int32_t, grpc_port, 8001, "public gRPC port");
ABSL_FLAG(int32_t, metrics_port, 8002, "Prometheus /metrics port (0 = off)");
ABSL_FLAG(std::string, workers, "",
          "comma-separated host:port of hearth-workers");
ABSL_FLAG(std::string, workers_dns, "",
          "name:port resolving to every worker (e.g. a Kubernetes headless "
          "service), re-resolved every --workers_dns_refresh_seconds");
ABSL_FLAG(double, workers_dns_refresh_seconds, 10, "DNS re-resolve period");
ABSL_FLAG(int32_t, worker_poll_ms, 200, "worker status poll period");
ABSL_FLAG(int32_t, worker_poll_timeout_ms, 1000,
          "a worker that does not answer a poll this fast is unhealthy");
ABSL_FLAG(int32_t, max_inflight_batches_per_worker, 4,
          "batches of one model in flight on one worker at most; the rest "
          "wait in the gateway's queue");
ABSL_FLAG(std::string, worker_tls_ca, "",
          "PEM CA to verify workers and job services (enables TLS to them)");
ABSL_FLAG(std::string, worker_tls_cert, "",
          "PEM client certificate for mTLS to workers and job services");
ABSL_FLAG(std::string, worker_tls_key, "", "PEM key for --worker_tls_cert");
ABSL_FLAG(std::string, api_keys, "",
          "API key file (YAML/JSON; see `hearth keys create`); empty = "
          "authentication DISABLED");
ABSL_FLAG(double, api_keys_poll_seconds, 2,
          "how often to check the key file for changes (SIGHUP reloads too)");
ABSL_FLAG(std::string, quantizer, "",
          "host:port of hearth-quantizer, proxied as hearth.v1.Quantization");
ABSL_FLAG(std::string, distiller, "",
          "host:port of hearth-distiller, proxied as hearth.v1.Distillation");
ABSL_FLAG(std::string, model_repository, "",
          "the workers' model repository, if readable here: lets the "
          "gateway tokenize (Tokenize rpc, exact prompt-length checks)");
ABSL_FLAG(int64_t, max_prompt_bytes, 1 << 20, "longest prompt accepted");
ABSL_FLAG(uint32_t, default_max_new_tokens, 128,
          "what max_new_tokens 0 means for a model whose worker reports no "
          "default (workers report generation_config.json's, else 128)");
ABSL_FLAG(int32_t, max_batch_size, 0,
          "default max batch size for every model (0 = config or 16)");
ABSL_FLAG(int64_t, max_queue_delay_us, -1,
          "default max queue delay in microseconds (-1 = config or 2000)");
ABSL_FLAG(int64_t, max_queue_size, -1,
          "default bound on each model's queue (-1 = config or 1024; 0 = "
          "unbounded)");
ABSL_FLAG(double, no_worker_grace_seconds, 3,
          "queued requests wait this long for a worker to come back before "
          "UNAVAILABLE");

namespace {

using hearth::gateway::ParseWorkerList;

std::string ReadFileOrDie(const std::string& path, const char* flag) {
  std::ifstream in(path);
  if (!in) {
    HLOG(ERROR) << "--" << flag << ": cannot read " << path;
    std::exit(2);
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::shared_ptr<grpc::ChannelCredentials> UpstreamCredentials() {
  const std::string ca = absl::GetFlag(FLAGS_worker_tls_ca);
  const std::string cert = absl::GetFlag(FLAGS_worker_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_worker_tls_key);
  if (ca.empty() && cert.empty() && key.empty()) return nullptr;
  grpc::SslCredentialsOptions options;
  if (!ca.empty()) options.pem_root_certs = ReadFileOrDie(ca, "worker_tls_ca");
  if (cert.empty() != key.empty()) {
    HLOG(ERROR) << "--worker_tls_cert and --worker_tls_key go together";
    std::exit(2);
  }
  if (!cert.empty()) {
    options.pem_cert_chain = ReadFileOrDie(cert, "worker_tls_cert");
    options.pem_private_key = ReadFileOrDie(key, "worker_tls_key");
  }
  return grpc::SslCredentials(options);
}

[[noreturn]] void Die(const absl::Status& status) {
  HLOG(ERROR) << status.message();
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  hearth::ConfigFile config;
  hearth::InitServiceFlags(
      argc, argv,
      "hearth-gateway: public gRPC API (hearth.v1.Generation, KServe v2) with "
      "auth, rate limits and dynamic batching in front of hearth-worker.",
      &config);
  hearth::ServerOptions server_options = hearth::ServerOptionsFromFlags(
      "hearth-gateway", absl::GetFlag(FLAGS_grpc_port),
      absl::GetFlag(FLAGS_metrics_port));
  // gRPC itself would drop the connection at 8 KiB; above the Edge's own
  // limit (8 KiB, INVALID_ARGUMENT naming `metadata`) up to 64 KiB clients get
  // a clear answer instead.
  server_options.max_metadata_bytes = 64 << 10;
  hearth::ServiceRunner runner(server_options);
  namespace gw = hearth::gateway;
  gw::GatewayMetrics metrics(runner.metrics());

  // --- Keys
  // --------------------------------------------------------------------
  std::unique_ptr<gw::ApiKeyStore> keys;
  const std::string keys_path = absl::GetFlag(FLAGS_api_keys);
  if (keys_path.empty()) {
    HLOG(WARNING)
        << "*** AUTHENTICATION IS DISABLED: no --api_keys file, so anyone who "
           "can reach this port may generate, load/unload models and run "
           "jobs. Create keys with `hearth keys create --keys_file=F ...` and "
           "pass --api_keys=F. ***";
  } else {
    auto opened = gw::ApiKeyStore::Open(keys_path);
    if (!opened.ok()) Die(opened.status());
    keys = *std::move(opened);
    HLOG(INFO) << "loaded " << keys->size() << " API keys from " << keys_path;
    keys->StartPolling(
        absl::Seconds(absl::GetFlag(FLAGS_api_keys_poll_seconds)));
  }
  gw::Edge edge(std::move(keys), &metrics);
  runner.OnReload([&edge] {
    if (edge.keys() == nullptr) return;
    absl::Status status = edge.keys()->Reload();
    if (status.ok()) {
      HLOG(INFO) << "API keys reloaded (" << edge.keys()->size() << " keys)";
    } else {
      HLOG(ERROR) << "API key reload failed, keeping the old keys: "
                  << status.message();
    }
  });

  // --- Workers --------------------------------------------------------------
  gw::WorkerPoolOptions pool_options;
  auto workers = ParseWorkerList(absl::GetFlag(FLAGS_workers), "--workers");
  if (!workers.ok()) Die(workers.status());
  pool_options.static_workers = *workers;
  if (!config.empty() && config.root()["workers"]) {
    const YAML::Node list = config.root()["workers"];
    if (!list.IsSequence()) {
      Die(absl::InvalidArgumentError(absl::StrCat(
          config.source_name(), ": workers: must be a list of host:port")));
    }
    for (size_t i = 0; i < list.size(); ++i) {
      auto one = ParseWorkerList(list[i].as<std::string>(""),
                                 absl::StrCat("workers[", i, "]"));
      if (!one.ok()) Die(one.status());
      for (auto& address : *one) pool_options.static_workers.push_back(address);
    }
  }
  pool_options.dns_name = absl::GetFlag(FLAGS_workers_dns);
  pool_options.resolve_interval =
      absl::Seconds(absl::GetFlag(FLAGS_workers_dns_refresh_seconds));
  pool_options.poll_interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_worker_poll_ms));
  pool_options.poll_timeout =
      absl::Milliseconds(absl::GetFlag(FLAGS_worker_poll_timeout_ms));
  pool_options.max_inflight_batches =
      std::max(1, absl::GetFlag(FLAGS_max_inflight_batches_per_worker));
  pool_options.credentials = UpstreamCredentials();
  if (pool_options.static_workers.empty() && pool_options.dns_name.empty()) {
    HLOG(WARNING) << "no workers configured (--workers, --workers_dns or "
                     "`workers:` in --config): every model is NOT_FOUND";
  }
  gw::WorkerPool pool(pool_options);

  // --- Batching --------------------------------------------------------------
  gw::DispatcherOptions dispatcher_options;
  {
    YAML::Node batching =
        config.empty() ? YAML::Node() : config.root()["batching"];
    // Flags override the file's defaults; per-model sections inherit them.
    if (absl::GetFlag(FLAGS_max_batch_size) > 0 ||
        absl::GetFlag(FLAGS_max_queue_delay_us) >= 0 ||
        absl::GetFlag(FLAGS_max_queue_size) >= 0) {
      if (!batching || batching.IsNull())
        batching = YAML::Node(YAML::NodeType::Map);
      batching = YAML::Clone(batching);
      if (absl::GetFlag(FLAGS_max_batch_size) > 0)
        batching["defaults"]["max_batch_size"] =
            absl::GetFlag(FLAGS_max_batch_size);
      if (absl::GetFlag(FLAGS_max_queue_delay_us) >= 0)
        batching["defaults"]["max_queue_delay_microseconds"] =
            absl::GetFlag(FLAGS_max_queue_delay_us);
      if (absl::GetFlag(FLAGS_max_queue_size) >= 0)
        batching["defaults"]["max_queue_size"] =
            absl::GetFlag(FLAGS_max_queue_size);
    }
    auto parsed = gw::ParseBatchingConfig(batching);
    if (!parsed.ok()) Die(parsed.status());
    dispatcher_options.batching = *std::move(parsed);
  }
  dispatcher_options.no_worker_grace =
      absl::Seconds(absl::GetFlag(FLAGS_no_worker_grace_seconds));
  gw::Dispatcher dispatcher(&pool, dispatcher_options, &metrics);
  pool.SetOnPoll([&dispatcher] { dispatcher.UpdateGauges(); });

  // --- Front ends
  // ----------------------------------------------------------------
  gw::TokenizerCache tokenizers(absl::GetFlag(FLAGS_model_repository));
  gw::GatewayCoreOptions core_options;
  core_options.max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  core_options.default_max_new_tokens =
      std::max<uint32_t>(1, absl::GetFlag(FLAGS_default_max_new_tokens));
  gw::GatewayCore core(core_options, &pool, &dispatcher, &edge, &tokenizers,
                       &metrics);
  gw::GenerationService generation(&core);
  gw::KServeService kserve(&core);
  gw::QuantizationProxy quantization_proxy(
      &edge,
      {"--quantizer", absl::GetFlag(FLAGS_quantizer), UpstreamCredentials()},
      gw::kScopeQuantize);
  gw::DistillationProxy distillation_proxy(
      &edge,
      {"--distiller", absl::GetFlag(FLAGS_distiller), UpstreamCredentials()},
      gw::kScopeDistill);
  runner.AddService(&generation);
  runner.AddService(&kserve);
  runner.AddService(&quantization_proxy);
  runner.AddService(&distillation_proxy);

  pool.Start();
  dispatcher.UpdateGauges();
  // Run() returns after the drain, with every client call finished; then the
  // dispatcher ends its worker calls before anything they use goes away.
  const int code = runner.Run();
  dispatcher.Shutdown();
  pool.Stop();
  return code;
}
