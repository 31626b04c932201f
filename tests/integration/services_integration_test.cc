// Starts each hearth service binary for real and checks what every service must
// do from day one: grpc.health.v1 SERVING, reflection listing its services,
// Prometheus metrics that promtool accepts, UNIMPLEMENTED for what is not built
// yet, and a clean exit on SIGTERM.
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/reflection_client.h"
#include "common/testing/service_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"

namespace hearth {
namespace {

struct ServiceCase {
  std::string binary;
  std::vector<std::string> services;
};

void PrintTo(const ServiceCase& c, std::ostream* os) { *os << c.binary; }

class ServiceBinaryTest : public testing::TestWithParam<ServiceCase> {};

bool Contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

TEST_P(ServiceBinaryTest, HealthReflectionMetricsAndGracefulExit) {
  const ServiceCase& c = GetParam();
  auto process = ServiceProcess::Start({.binary = ServiceBinary(c.binary)});
  ASSERT_TRUE(process.ok()) << process.status();

  auto names = ListServicesByReflection((*process)->channel());
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_TRUE(Contains(*names, "grpc.health.v1.Health"));
  EXPECT_TRUE(Contains(*names, "grpc.reflection.v1alpha.ServerReflection"));
  for (const std::string& service : c.services) {
    EXPECT_TRUE(Contains(*names, service)) << c.binary << " lacks " << service;
  }

  auto metrics = HttpGet((*process)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_NE(metrics->find(
                absl::StrCat("hearth_build_info{service=\"", c.binary, "\"")),
            std::string::npos)
      << *metrics;
  // The reflection call above must already be counted.
  EXPECT_NE(metrics->find("hearth_grpc_server_handled_total{grpc_code=\"OK\","
                          "grpc_method=\"ServerReflectionInfo\""),
            std::string::npos)
      << *metrics;
  const std::string path =
      absl::StrCat(testing::TempDir(), "/", c.binary, ".metrics");
  std::ofstream(path) << *metrics;
  CommandResult promtool =
      RunCommand(absl::StrCat("promtool check metrics < ", path));
  EXPECT_EQ(promtool.exit_code, 0) << promtool.output;

  auto exit_code = (*process)->Stop(SIGTERM);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << (*process)->ReadLog();
  EXPECT_NE((*process)->ReadLog().find("stopped"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
    AllServices, ServiceBinaryTest,
    testing::Values(
        ServiceCase{"hearth-gateway",
                    {"hearth.v1.Generation", "inference.GRPCInferenceService",
                     "hearth.v1.Quantization", "hearth.v1.Distillation"}},
        ServiceCase{"hearth-worker", {"hearth.v1.Worker"}},
        ServiceCase{"hearth-quantizer", {"hearth.v1.Quantization"}},
        ServiceCase{"hearth-distiller", {"hearth.v1.Distillation"}}),
    [](const testing::TestParamInfo<ServiceCase>& info) {
      std::string name = info.param.binary.substr(7);  // drop "hearth-"
      return name;
    });

TEST(Gateway, KServeLivenessAndMetadataAnswer) {
  auto gateway =
      ServiceProcess::Start({.binary = ServiceBinary("hearth-gateway")});
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  auto stub = inference::GRPCInferenceService::NewStub((*gateway)->channel());
  {
    grpc::ClientContext context;
    inference::ServerLiveResponse response;
    ASSERT_TRUE(stub->ServerLive(&context, {}, &response).ok());
    EXPECT_TRUE(response.live());
  }
  {
    grpc::ClientContext context;
    inference::ServerMetadataResponse response;
    ASSERT_TRUE(stub->ServerMetadata(&context, {}, &response).ok());
    EXPECT_EQ(response.name(), "hearth");
  }
  {
    grpc::ClientContext context;
    inference::ModelInferRequest request;
    inference::ModelInferResponse response;
    grpc::Status status = stub->ModelInfer(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("model_name"), std::string::npos)
        << status.error_message();
  }
  EXPECT_EQ((*gateway)->Stop(SIGTERM).value_or(-1), 0);
}

TEST(Services, BadConfigFileExitsWithMessageNamingTheKey) {
  const std::string path = absl::StrCat(testing::TempDir(), "/bad.yaml");
  std::ofstream(path) << "grpc-prot: 1\n";
  CommandResult result = RunCommand(
      absl::StrCat(ServiceBinary("hearth-worker"), " --config=", path));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.output.find("key \"grpc-prot\""), std::string::npos)
      << result.output;
}

TEST(Services, ConfigFileSetsPortAndFlagOverridesIt) {
  const int from_file = PickFreePort();
  const std::string path = absl::StrCat(testing::TempDir(), "/ports.yaml");
  std::ofstream(path) << "grpc-port: " << from_file << "\nlog-level: debug\n";
  // ServiceProcess passes --grpc_port explicitly, which must win over the file.
  auto process =
      ServiceProcess::Start({.binary = ServiceBinary("hearth-distiller"),
                             .args = {absl::StrCat("--config=", path)}});
  ASSERT_TRUE(process.ok()) << process.status();
  EXPECT_NE((*process)->grpc_port(), from_file);
  EXPECT_EQ((*process)->Stop(SIGTERM).value_or(-1), 0);
}

TEST(Cli, HelpListsSubcommandsAndHealthWaits) {
  CommandResult help =
      RunCommand(absl::StrCat(ServiceBinary("hearth"), " --help"));
  for (const char* command : {"health", "generate", "models", "tokenize"}) {
    EXPECT_NE(help.output.find(command), std::string::npos) << help.output;
  }
  auto worker =
      ServiceProcess::Start({.binary = ServiceBinary("hearth-worker")});
  ASSERT_TRUE(worker.ok()) << worker.status();
  CommandResult health = RunCommand(absl::StrCat(
      ServiceBinary("hearth"), " health --addr=", (*worker)->grpc_address()));
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_NE(health.output.find("SERVING"), std::string::npos);
  (*worker)->Stop(SIGTERM).IgnoreError();
  CommandResult down = RunCommand(
      absl::StrCat(ServiceBinary("hearth"),
                   " health --timeout=1 --addr=", (*worker)->grpc_address()));
  EXPECT_EQ(down.exit_code, 1) << down.output;
}

}  // namespace
}  // namespace hearth
