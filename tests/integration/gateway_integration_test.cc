// hearth-gateway with real binaries: a gateway in front of two hearth-workers
// serving a tiny random Llama model on loopback. Covers what issue 7 promises
// a client: auth codes, honest rate-limit retry delays, fast rejection on a
// full queue, NOT_FOUND for a model not loaded, failover when a worker is
// killed with SIGKILL under load, a KServe v2 client generated from the .proto
// in Python, and promtool-clean metrics.
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/service_process.h"
#include "google/rpc/retry_info.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "hearth/v1/generation.grpc.pb.h"
#include "inference/grpc_service.grpc.pb.h"
#include "services/gateway/api_keys.h"
#include "services/worker/test_models.h"

namespace hearth {
namespace {

std::string Dir() { return absl::StrCat(testing::TempDir(), "/gateway_it"); }

struct Keys {
  std::string generate;
  std::string limited;
  std::string admin;
};

class GatewayIntegrationTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::filesystem::remove_all(Dir());
    std::filesystem::create_directories(Dir() + "/models");
    worker::testing::TinyModelOptions model;
    ASSERT_TRUE(
        worker::testing::WriteTinyModel(Dir() + "/models/tiny", model).ok());
    keys_ = new Keys;
    const std::string key_file = Dir() + "/keys.yaml";
    gateway::ApiKey gen;
    gen.id = "gen";
    gen.scopes = {"generate"};
    keys_->generate = gateway::CreateApiKey(key_file, gen).value();
    gateway::ApiKey limited;
    limited.id = "limited";
    limited.scopes = {"generate"};
    limited.limits.requests_per_second = 1;
    limited.limits.burst = 1;
    keys_->limited = gateway::CreateApiKey(key_file, limited).value();
    gateway::ApiKey admin;
    admin.id = "ops";
    admin.scopes = {"admin"};
    keys_->admin = gateway::CreateApiKey(key_file, admin).value();
  }
  static void TearDownTestSuite() { delete keys_; }

  static std::unique_ptr<ServiceProcess> StartWorker() {
    auto worker = ServiceProcess::Start(
        {.binary = ServiceBinary("hearth-worker"),
         .args = {absl::StrCat("--model_repository=", Dir(), "/models"),
                  "--load=tiny", "--threads=1"},
         .metrics = false});
    EXPECT_TRUE(worker.ok()) << worker.status();
    return worker.ok() ? *std::move(worker) : nullptr;
  }

  static std::unique_ptr<ServiceProcess> StartGateway(
      const std::vector<const ServiceProcess*>& workers,
      std::vector<std::string> extra = {}) {
    std::string list;
    for (const ServiceProcess* w : workers) {
      absl::StrAppend(&list, list.empty() ? "" : ",", w->grpc_address());
    }
    std::vector<std::string> args = {
        absl::StrCat("--workers=", list),
        absl::StrCat("--api_keys=", Dir(), "/keys.yaml"),
        absl::StrCat("--model_repository=", Dir(), "/models"),
        "--worker_poll_ms=100"};
    for (auto& a : extra) args.push_back(a);
    auto gateway = ServiceProcess::Start(
        {.binary = ServiceBinary("hearth-gateway"), .args = args});
    EXPECT_TRUE(gateway.ok()) << gateway.status();
    return gateway.ok() ? *std::move(gateway) : nullptr;
  }

  static hearth::v1::GenerateRequest Request(
      int tokens, const std::string& model = "tiny") {
    hearth::v1::GenerateRequest request;
    request.set_model(model);
    request.set_prompt("Once upon a time");
    request.mutable_sampling()->set_max_new_tokens(tokens);
    request.mutable_sampling()->set_temperature(0);
    return request;
  }

  static grpc::Status Generate(const std::shared_ptr<grpc::Channel>& channel,
                               const std::string& key,
                               const hearth::v1::GenerateRequest& request,
                               hearth::v1::GenerateResponse* response,
                               absl::Duration deadline = absl::Seconds(60),
                               grpc::ClientContext* context = nullptr) {
    grpc::ClientContext local;
    if (context == nullptr) context = &local;
    if (!key.empty()) context->AddMetadata("authorization", "Bearer " + key);
    context->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    return hearth::v1::Generation::NewStub(channel)->Generate(context, request,
                                                              response);
  }

  static Keys* keys_;
};

Keys* GatewayIntegrationTest::keys_ = nullptr;

TEST_F(GatewayIntegrationTest, AuthCodesAndNotFound) {
  auto w1 = StartWorker();
  auto w2 = StartWorker();
  ASSERT_TRUE(w1 && w2);
  auto gateway = StartGateway({w1.get(), w2.get()});
  ASSERT_TRUE(gateway);
  auto channel = gateway->channel();
  hearth::v1::GenerateResponse response;
  EXPECT_EQ(Generate(channel, "", Request(4), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Generate(channel, "hk_wrong", Request(4), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Generate(channel, keys_->admin, Request(4), &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  grpc::Status ok = Generate(channel, keys_->generate, Request(4), &response);
  ASSERT_TRUE(ok.ok()) << ok.error_message() << "\n" << gateway->ReadLog();
  EXPECT_EQ(response.usage().completion_tokens(), 4u);
  EXPECT_FALSE(response.text().empty());
  EXPECT_EQ(
      Generate(channel, keys_->generate, Request(4, "not-loaded"), &response)
          .error_code(),
      grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(gateway->Stop(SIGTERM).value_or(-1), 0);
}

TEST_F(GatewayIntegrationTest, RateLimitedKeyGetsAnHonestRetryDelay) {
  auto w1 = StartWorker();
  ASSERT_TRUE(w1);
  auto gateway = StartGateway({w1.get()});
  ASSERT_TRUE(gateway);
  auto channel = gateway->channel();
  hearth::v1::GenerateResponse response;
  grpc::Status status;
  absl::Duration delay;
  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext context;
    status = Generate(channel, keys_->limited, Request(1), &response,
                      absl::Seconds(30), &context);
    if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      google::rpc::Status details;
      ASSERT_TRUE(details.ParseFromString(status.error_details()));
      google::rpc::RetryInfo retry;
      ASSERT_EQ(details.details_size(), 1);
      ASSERT_TRUE(details.details(0).UnpackTo(&retry));
      delay = absl::Seconds(retry.retry_delay().seconds()) +
              absl::Nanoseconds(retry.retry_delay().nanos());
      const auto& trailers = context.GetServerTrailingMetadata();
      auto it = trailers.find("retry-after");
      ASSERT_NE(it, trailers.end());
      EXPECT_GE(std::stoi(std::string(it->second.data(), it->second.size())),
                1);
      break;
    }
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_GT(delay, absl::ZeroDuration());
  EXPECT_LE(delay, absl::Seconds(1));
  absl::SleepFor(delay);
  status = Generate(channel, keys_->limited, Request(1), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(GatewayIntegrationTest, FullQueueRejectsAtOnce) {
  auto w1 = StartWorker();
  ASSERT_TRUE(w1);
  auto gateway =
      StartGateway({w1.get()}, {"--max_queue_size=2", "--max_batch_size=1",
                                "--max_inflight_batches_per_worker=1"});
  ASSERT_TRUE(gateway);
  auto channel = gateway->channel();
  std::atomic<int> unavailable{0};
  std::atomic<int> ok{0};
  std::atomic<int64_t> slowest_rejection_ms{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 16; ++i) {
    clients.emplace_back([&] {
      hearth::v1::GenerateResponse response;
      const absl::Time start = absl::Now();
      grpc::Status status =
          Generate(channel, keys_->generate, Request(48), &response);
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        ++unavailable;
        const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - start);
        int64_t prev = slowest_rejection_ms.load();
        while (ms > prev &&
               !slowest_rejection_ms.compare_exchange_weak(prev, ms)) {
        }
        EXPECT_NE(status.error_message().find("full"), std::string::npos)
            << status.error_message();
      } else if (status.ok()) {
        ++ok;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_GT(unavailable.load(), 0);
  EXPECT_GT(ok.load(), 0);
  // "At once": a rejection does not wait for a timeout.
  EXPECT_LT(slowest_rejection_ms.load(), 1000);
}

TEST_F(GatewayIntegrationTest, KillingAWorkerUnderLoadHangsNothing) {
  auto w1 = StartWorker();
  auto w2 = StartWorker();
  ASSERT_TRUE(w1 && w2);
  auto gateway = StartGateway({w1.get(), w2.get()});
  ASSERT_TRUE(gateway);
  auto channel = gateway->channel();
  constexpr int kClients = 16;
  const absl::Duration deadline = absl::Seconds(45);
  std::atomic<int> ok{0}, unavailable{0}, other{0};
  std::atomic<int64_t> slowest_ms{0};
  std::vector<std::thread> clients;
  // Every client keeps sending for 1.5 s; the kill lands mid-stream.
  const absl::Time stop_sending = absl::Now() + absl::Milliseconds(1500);
  std::atomic<int> total{0};
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      while (absl::Now() < stop_sending) {
        ++total;
        const absl::Time start = absl::Now();
        grpc::Status status;
        if (i % 2 == 0) {
          hearth::v1::GenerateResponse response;
          status = Generate(channel, keys_->generate, Request(200), &response,
                            deadline);
        } else {
          grpc::ClientContext context;
          context.AddMetadata("authorization", "Bearer " + keys_->generate);
          context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
          auto reader =
              hearth::v1::Generation::NewStub(channel)->GenerateStream(
                  &context, Request(200));
          hearth::v1::GenerateStreamResponse chunk;
          while (reader->Read(&chunk)) {
          }
          status = reader->Finish();
        }
        const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - start);
        int64_t prev = slowest_ms.load();
        while (ms > prev && !slowest_ms.compare_exchange_weak(prev, ms)) {
        }
        if (status.ok()) {
          ++ok;
        } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
          ++unavailable;
        } else {
          ++other;
          ADD_FAILURE() << status.error_code() << " " << status.error_message();
        }
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(400));
  ASSERT_EQ(kill(w1->pid(), SIGKILL), 0);
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok + unavailable, total.load());
  EXPECT_EQ(other.load(), 0);
  EXPECT_LT(slowest_ms.load(), absl::ToInt64Milliseconds(deadline));
  // Unary requests restart elsewhere and streams that had not started move,
  // so most complete.
  EXPECT_GE(ok.load(), total.load() / 2);
  // The gateway is still up and serves on the surviving worker.
  hearth::v1::GenerateResponse response;
  grpc::Status after =
      Generate(channel, keys_->generate, Request(4), &response);
  EXPECT_TRUE(after.ok()) << after.error_message();
  std::printf(
      "kill -9 under load: %d requests, %d ok, %d UNAVAILABLE, slowest %lld "
      "ms\n",
      total.load(), ok.load(), unavailable.load(),
      static_cast<long long>(slowest_ms.load()));
}

TEST_F(GatewayIntegrationTest, KServeClientGeneratedInPythonGetsTextOutput) {
  auto w1 = StartWorker();
  ASSERT_TRUE(w1);
  auto gateway = StartGateway({w1.get()});
  ASSERT_TRUE(gateway);
  const char* source = std::getenv("HEARTH_SOURCE_DIR");
  ASSERT_NE(source, nullptr);
  for (const char* raw : {"", " --raw"}) {
    CommandResult result = RunCommand(absl::StrCat(
        "/usr/bin/python3 ", source, "/tests/interop/kserve_client.py",
        " --addr=", gateway->grpc_address(), " --key=", keys_->generate,
        " --model=tiny --proto_root=", source, "/proto --work_dir=", Dir(),
        "/py", raw));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("text_output:"), std::string::npos)
        << result.output;
  }
}

TEST_F(GatewayIntegrationTest, MetricsArePromtoolCleanAndCarryNoSecrets) {
  auto w1 = StartWorker();
  ASSERT_TRUE(w1);
  auto gateway = StartGateway({w1.get()});
  ASSERT_TRUE(gateway);
  hearth::v1::GenerateResponse response;
  ASSERT_TRUE(
      Generate(gateway->channel(), keys_->generate, Request(2), &response)
          .ok());
  (void)Generate(gateway->channel(), "hk_bad", Request(2), &response);
  absl::SleepFor(absl::Milliseconds(300));
  auto metrics = HttpGet(gateway->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  for (const char* name :
       {"hearth_gateway_queue_size", "hearth_gateway_queue_time_seconds",
        "hearth_gateway_batch_size", "hearth_gateway_batch_fill_ratio",
        "hearth_gateway_auth_failures_total", "hearth_gateway_worker_healthy",
        "hearth_gateway_request_duration_seconds"}) {
    EXPECT_NE(metrics->find(name), std::string::npos) << name;
  }
  EXPECT_EQ(metrics->find(keys_->generate), std::string::npos);
  const std::string path = Dir() + "/gateway.metrics";
  std::ofstream(path) << *metrics;
  CommandResult promtool =
      RunCommand(absl::StrCat("promtool check metrics < ", path));
  EXPECT_EQ(promtool.exit_code, 0) << promtool.output;
}

}  // namespace
}  // namespace hearth
