// hearth-gateway end to end, in one process over loopback gRPC:
//
//  1. Dynamic batching vs max batch size 1: 32 closed-loop clients call
//     Generate (16 new tokens) through the gateway for --seconds each way;
//     throughput and p50/p95 latency, same run, same workers.
//  2. Gateway overhead: p50/p99 of a 1-token Generate through the gateway
//     minus a 1-token Execute sent straight to the worker.
//
// Workers: --workers=host:port,... (real hearth-workers serving --model), or
// by default one in-process fake worker whose steps share one simulated
// device costing --step_us + --per_sequence_us x batch (a memory-bound decode
// step: a batch of 16 costs little more than a batch of 1).
//
//   bench_gateway [--seconds=5] [--clients=32] [--workers=...] [--model=tiny]
//                 [--max_batch=16] [--delay_us=2000]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "services/gateway/fake_worker.h"
#include "services/gateway/generation_service.h"

namespace {

using namespace hearth::gateway;  // NOLINT: a benchmark main

std::string Flag(int argc, char** argv, const char* name,
                 const std::string& fallback) {
  const std::string prefix = absl::StrCat("--", name, "=");
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], prefix)) return argv[i] + prefix.size();
  }
  return fallback;
}

int64_t IntFlag(int argc, char** argv, const char* name, int64_t fallback) {
  int64_t v = fallback;
  if (!absl::SimpleAtoi(Flag(argc, argv, name, ""), &v)) return fallback;
  return v;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// A gateway (Generation front end) over `workers`, on a loopback port.
struct Gateway {
  Gateway(const std::vector<std::string>& workers, BatcherOptions batching,
          int inflight_batches = 4) {
    WorkerPoolOptions pool_options;
    pool_options.static_workers = workers;
    pool_options.max_inflight_batches = inflight_batches;
    pool = std::make_unique<WorkerPool>(pool_options);
    pool->Start();
    DispatcherOptions options;
    options.batching.defaults = batching;
    dispatcher = std::make_unique<Dispatcher>(pool.get(), options, nullptr);
    auto keys = ApiKeyStore::FromText(
        "keys:\n  - id: bench\n    sha256: "
        "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90\n"
        "    scopes: [generate]\n",
        "bench");
    edge = std::make_unique<Edge>(*std::move(keys), nullptr);
    tokenizers = std::make_unique<TokenizerCache>("");
    core = std::make_unique<GatewayCore>(GatewayCoreOptions(), pool.get(),
                                         dispatcher.get(), edge.get(),
                                         tokenizers.get(), nullptr);
    service = std::make_unique<GenerationService>(core.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(service.get());
    server = builder.BuildAndStart();
    address = absl::StrCat("127.0.0.1:", port);
  }
  ~Gateway() {
    server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    dispatcher->Shutdown();
    pool->Stop();
  }
  std::unique_ptr<WorkerPool> pool;
  std::unique_ptr<Dispatcher> dispatcher;
  std::unique_ptr<Edge> edge;
  std::unique_ptr<TokenizerCache> tokenizers;
  std::unique_ptr<GatewayCore> core;
  std::unique_ptr<GenerationService> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

struct LoadResult {
  double requests_per_second = 0;
  double tokens_per_second = 0;
  double p50_ms = 0;
  double p95_ms = 0;
  int errors = 0;
};

LoadResult RunLoad(const std::string& address, const std::string& model,
                   int clients, int tokens, absl::Duration duration) {
  std::vector<std::vector<double>> latencies(clients);
  std::atomic<int64_t> generated{0};
  std::atomic<int> errors{0};
  const absl::Time end = absl::Now() + duration;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      // One channel per client, as separate client processes would have.
      grpc::ChannelArguments args;
      args.SetInt("hearth.bench.client", c);
      auto stub = hearth::v1::Generation::NewStub(grpc::CreateCustomChannel(
          address, grpc::InsecureChannelCredentials(), args));
      hearth::v1::GenerateRequest request;
      request.set_model(model);
      request.set_prompt("Once upon a time");
      request.mutable_sampling()->set_max_new_tokens(tokens);
      request.mutable_sampling()->set_ignore_eos(true);
      while (absl::Now() < end) {
        grpc::ClientContext context;
        context.AddMetadata("authorization", "Bearer alice");
        context.set_deadline(
            absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
        hearth::v1::GenerateResponse response;
        const absl::Time start = absl::Now();
        grpc::Status status = stub->Generate(&context, request, &response);
        if (!status.ok()) {
          if (errors.fetch_add(1) < 3) {
            std::fprintf(stderr, "error: %s\n", status.error_message().c_str());
          }
          continue;
        }
        latencies[c].push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
        generated += response.usage().completion_tokens();
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  LoadResult result;
  const double seconds = absl::ToDoubleSeconds(duration);
  result.requests_per_second = all.size() / seconds;
  result.tokens_per_second = generated.load() / seconds;
  result.p50_ms = Percentile(all, 0.5);
  result.p95_ms = Percentile(all, 0.95);
  result.errors = errors.load();
  return result;
}

std::vector<double> DirectLatencies(const std::string& worker,
                                    const std::string& model, int n) {
  auto stub = hearth::v1::Worker::NewStub(
      grpc::CreateChannel(worker, grpc::InsecureChannelCredentials()));
  std::vector<double> out;
  for (int i = 0; i < n; ++i) {
    hearth::v1::ExecuteRequest request;
    request.set_model(model);
    auto* s = request.add_sequences();
    s->set_sequence_id(absl::StrCat("direct-", i));
    s->set_prompt("Once upon a time");
    s->mutable_sampling()->set_max_new_tokens(1);
    grpc::ClientContext context;
    const absl::Time start = absl::Now();
    auto reader = stub->Execute(&context, request);
    hearth::v1::ExecuteEvent event;
    while (reader->Read(&event)) {
    }
    if (reader->Finish().ok()) {
      out.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    }
  }
  return out;
}

std::vector<double> GatewayLatencies(const std::string& address,
                                     const std::string& model, int n) {
  auto stub = hearth::v1::Generation::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::vector<double> out;
  for (int i = 0; i < n; ++i) {
    hearth::v1::GenerateRequest request;
    request.set_model(model);
    request.set_prompt("Once upon a time");
    request.mutable_sampling()->set_max_new_tokens(1);
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer alice");
    hearth::v1::GenerateResponse response;
    const absl::Time start = absl::Now();
    if (stub->Generate(&context, request, &response).ok()) {
      out.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const absl::Duration duration =
      absl::Seconds(IntFlag(argc, argv, "seconds", 5));
  const int clients = static_cast<int>(IntFlag(argc, argv, "clients", 32));
  const int tokens = static_cast<int>(IntFlag(argc, argv, "tokens", 16));
  const std::string model = Flag(argc, argv, "model", "tiny");
  std::vector<std::string> workers =
      absl::StrSplit(Flag(argc, argv, "workers", ""), ',', absl::SkipEmpty());

  std::unique_ptr<FakeWorker> fake;
  if (workers.empty()) {
    FakeWorkerOptions options;
    options.models = {{model, 4096}};
    options.step_base =
        absl::Microseconds(IntFlag(argc, argv, "step_us", 4000));
    options.step_per_sequence =
        absl::Microseconds(IntFlag(argc, argv, "per_sequence_us", 100));
    fake = std::make_unique<FakeWorker>(options);
    fake->Start();
    workers.push_back(fake->address());
    std::printf(
        "workers: 1 in-process fake, step %lld us + %lld us/sequence\n",
        static_cast<long long>(IntFlag(argc, argv, "step_us", 4000)),
        static_cast<long long>(IntFlag(argc, argv, "per_sequence_us", 100)));
  } else {
    std::printf("workers: %zu real (%s)\n", workers.size(),
                Flag(argc, argv, "workers", "").c_str());
  }

  BatcherOptions batched;  // the defaults unless --max_batch / --delay_us
  batched.max_batch_size = static_cast<int>(
      IntFlag(argc, argv, "max_batch", batched.max_batch_size));
  batched.max_queue_delay = absl::Microseconds(
      IntFlag(argc, argv, "delay_us",
              absl::ToInt64Microseconds(batched.max_queue_delay)));
  const std::string batched_name =
      absl::StrCat("dynamic batching (", batched.max_batch_size, ", ",
                   absl::ToInt64Microseconds(batched.max_queue_delay), "us)");
  BatcherOptions single;
  single.max_batch_size = 1;
  single.max_queue_delay = absl::ZeroDuration();
  LoadResult with_batching, without, one_at_a_time;
  {
    Gateway gateway(workers, batched);
    RunLoad(gateway.address, model, clients, tokens, absl::Seconds(1));
    with_batching = RunLoad(gateway.address, model, clients, tokens, duration);
  }
  {
    Gateway gateway(workers, single);
    RunLoad(gateway.address, model, clients, tokens, absl::Seconds(1));
    without = RunLoad(gateway.address, model, clients, tokens, duration);
  }
  {
    // Batch size 1 with 4 batches in flight still lets a real worker's
    // continuous batching run 4 sequences per step; with one in flight the
    // worker really runs one sequence at a time.
    Gateway gateway(workers, single, /*inflight_batches=*/1);
    RunLoad(gateway.address, model, clients, tokens, absl::Seconds(1));
    one_at_a_time = RunLoad(gateway.address, model, clients, tokens, duration);
  }
  std::printf(
      "\n%d clients, %d new tokens each, %.0f s per mode\n"
      "%-26s %10s %12s %10s %10s %7s\n",
      clients, tokens, absl::ToDoubleSeconds(duration), "mode", "req/s",
      "tokens/s", "p50 ms", "p95 ms", "errors");
  for (auto [name, r] :
       {std::pair<const char*, LoadResult>{batched_name.c_str(), with_batching},
        {"max batch size 1", without},
        {"batch 1, 1 in flight", one_at_a_time}}) {
    std::printf("%-26s %10.1f %12.1f %10.1f %10.1f %7d\n", name,
                r.requests_per_second, r.tokens_per_second, r.p50_ms, r.p95_ms,
                r.errors);
  }
  std::printf("throughput ratio (batching / batch 1): %.2fx; p95 ratio %.2f\n",
              with_batching.requests_per_second /
                  std::max(1e-9, without.requests_per_second),
              with_batching.p95_ms / std::max(1e-9, without.p95_ms));
  std::printf("vs batch 1 with 1 in flight: %.2fx; p95 ratio %.2f\n",
              with_batching.requests_per_second /
                  std::max(1e-9, one_at_a_time.requests_per_second),
              with_batching.p95_ms / std::max(1e-9, one_at_a_time.p95_ms));

  // Overhead: one request at a time, 1 new token; delay 0 so the batcher
  // does not wait for company that will not come.
  BatcherOptions unbatched_delay;
  unbatched_delay.max_queue_delay = absl::ZeroDuration();
  Gateway gateway(workers, unbatched_delay);
  const int n = static_cast<int>(IntFlag(argc, argv, "overhead_requests", 500));
  DirectLatencies(workers[0], model, 50);
  GatewayLatencies(gateway.address, model, 50);
  // Interleave so that drift affects both alike.
  std::vector<double> direct, through;
  for (int round = 0; round < 5; ++round) {
    auto d = DirectLatencies(workers[0], model, n / 5);
    auto g = GatewayLatencies(gateway.address, model, n / 5);
    direct.insert(direct.end(), d.begin(), d.end());
    through.insert(through.end(), g.begin(), g.end());
  }
  const double d50 = Percentile(direct, 0.5), d99 = Percentile(direct, 0.99);
  const double g50 = Percentile(through, 0.5), g99 = Percentile(through, 0.99);
  std::printf(
      "\n1-token request, %zu each (single gateway worker = %s)\n"
      "%-22s %10s %10s\n%-22s %10.3f %10.3f\n%-22s %10.3f %10.3f\n"
      "%-22s %10.3f %10.3f\n",
      direct.size(), workers[0].c_str(), "path", "p50 ms", "p99 ms",
      "direct to worker", d50, d99, "through gateway", g50, g99,
      "gateway overhead", g50 - d50, g99 - d99);
  return 0;
}
