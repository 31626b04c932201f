#include "common/grpc/server_runner.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/grpc/health_client.h"
#include "common/testing/service_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "hearth/v1/generation.grpc.pb.h"

namespace hearth {
namespace {

ServerOptions LoopbackOptions() {
  ServerOptions options;
  options.service_name = "test-service";
  options.host = "127.0.0.1";
  options.grpc_port = 0;
  options.metrics_port = 0;
  options.drain_timeout = absl::Seconds(2);
  return options;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

TEST(ServiceRunner, ServesHealthUnimplementedAndMetricsThenDrains) {
  ServiceRunner runner(LoopbackOptions());
  hearth::v1::Generation::CallbackService generation;  // all UNIMPLEMENTED
  runner.AddService(&generation);
  ASSERT_TRUE(runner.Start().ok());
  ASSERT_GT(runner.grpc_port(), 0);
  ASSERT_GT(runner.metrics_port(), 0);

  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", runner.grpc_port()),
                          grpc::InsecureChannelCredentials());
  ASSERT_TRUE(WaitForServing(channel, absl::Seconds(5)).ok());

  auto stub = hearth::v1::Generation::NewStub(channel);
  grpc::ClientContext context;
  hearth::v1::GenerateRequest request;
  hearth::v1::GenerateResponse response;
  grpc::Status status = stub->Generate(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);

  auto metrics = HttpGet(runner.metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_NE(metrics->find("hearth_build_info{service=\"test-service\""),
            std::string::npos)
      << *metrics;
  EXPECT_NE(
      metrics->find("grpc_code=\"UNIMPLEMENTED\",grpc_method=\"Generate\","
                    "grpc_service=\"hearth.v1.Generation\"} 1"),
      std::string::npos)
      << *metrics;

  runner.Shutdown();
  auto after = CheckHealth(channel, "", absl::Milliseconds(500));
  EXPECT_FALSE(after.ok());
}

TEST(ServiceRunner, SecondServerOnSamePortFailsWithAddress) {
  ServiceRunner first(LoopbackOptions());
  ASSERT_TRUE(first.Start().ok());
  ServerOptions options = LoopbackOptions();
  options.grpc_port = first.grpc_port();
  ServiceRunner second(options);
  absl::Status status = second.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(status.message().find(absl::StrCat(":", first.grpc_port())),
            std::string::npos)
      << status;
}

TEST(ServiceRunner, MissingTlsFileIsNamed) {
  ServerOptions options = LoopbackOptions();
  options.tls_cert_file = "/nonexistent/cert.pem";
  options.tls_key_file = "/nonexistent/key.pem";
  ServiceRunner runner(options);
  absl::Status status = runner.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("--tls_cert"), std::string::npos) << status;
}

TEST(ServiceRunner, ServesTlsToTrustingClientsOnly) {
  const std::string dir = testing::TempDir();
  const std::string cert = dir + "/cert.pem", key = dir + "/key.pem";
  CommandResult made = RunCommand(absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      key, " -out ", cert));
  if (made.exit_code != 0)
    GTEST_SKIP() << "openssl unavailable: " << made.output;

  ServerOptions options = LoopbackOptions();
  options.tls_cert_file = cert;
  options.tls_key_file = key;
  ServiceRunner runner(options);
  ASSERT_TRUE(runner.Start().ok());
  const std::string address = absl::StrCat("localhost:", runner.grpc_port());

  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(cert);
  auto secure = grpc::CreateChannel(address, grpc::SslCredentials(ssl));
  EXPECT_TRUE(WaitForServing(secure, absl::Seconds(5)).ok());

  auto plain = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  EXPECT_FALSE(CheckHealth(plain, "", absl::Seconds(1)).ok());
}

}  // namespace
}  // namespace hearth
