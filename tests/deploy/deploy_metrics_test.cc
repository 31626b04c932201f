// The metric names the deployment files use are the ones the services really
// export: starts the stack's real binaries on loopback (two workers with a
// tiny model, quantizer, distiller, and a gateway — each with the config files
// in deploy/config that docker-compose and Kubernetes mount), drives traffic
// that makes every family appear (successful, streamed, rate-limited,
// unauthenticated and unknown-model requests), scrapes every /metrics
// endpoint, and runs `deploy_check.mjs metrics` on the scrape: the Grafana
// dashboard, the Prometheus rules, the HPA (through the prometheus-adapter
// rules) and the KEDA ScaledObject may only name metrics, and select on
// labels, that the scrape contains. Then feeds the same check broken copies
// (a misspelt metric in a panel, an HPA metric no adapter rule serves, a label
// the metric lacks) and expects each to fail, naming the problem. Finally a
// real Prometheus (Debian's, when installed) scrapes the same services with
// deploy/prometheus/rules: every target is up, every rule evaluates without
// error and every recording rule yields series.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "common/testing/service_process.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "hearth/v1/generation.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/gateway/api_keys.h"
#include "services/worker/test_models.h"

namespace hearth {
namespace {

namespace fs = std::filesystem;

std::string Dir() {
  return absl::StrCat(testing::TempDir(), "/deploy_metrics");
}
std::string Src() {
  const char* s = std::getenv("HEARTH_SOURCE_DIR");
  return s ? s : ".";
}
std::string Node() {
  const char* n = std::getenv("HEARTH_NODE");
  return n ? n : "node";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// Copies what deploy_check reads into `root`, replacing `from` by `to` in
// `file` (relative to the root); fails the test if `from` is not there.
void BrokenCopy(const std::string& root, const std::string& file,
                const std::string& from, const std::string& to) {
  fs::remove_all(root);
  fs::create_directories(root);
  fs::copy(Src() + "/deploy", root + "/deploy", fs::copy_options::recursive);
  const std::string path = root + "/" + file;
  std::string text = ReadFile(path);
  ASSERT_NE(text.find(from), std::string::npos) << file << " lacks " << from;
  WriteFile(path, absl::StrReplaceAll(text, {{from, to}}));
}

CommandResult Check(const std::string& root, const std::string& scrape) {
  return RunCommand(absl::StrCat(Node(), " ", Src(),
                                 "/tests/deploy/deploy_check.mjs --root ", root,
                                 " --scrape ", scrape, " metrics 2>&1"));
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += absl::StrFormat("%%%02X", c);
    }
  }
  return out;
}

// The "result" array of a Prometheus instant query (null on any error).
nlohmann::json PromQuery(int port, const std::string& query) {
  auto body = HttpGet(port, "/api/v1/query?query=" + UrlEncode(query));
  if (!body.ok()) return nullptr;
  auto json = nlohmann::json::parse(*body, nullptr, false);
  if (json.is_discarded() || json.value("status", "") != "success") {
    return nullptr;
  }
  return json["data"]["result"];
}

class DeployMetricsTest : public testing::Test {
 protected:
  static grpc::Status Generate(const std::shared_ptr<grpc::Channel>& channel,
                               const std::string& key,
                               const std::string& model) {
    hearth::v1::GenerateRequest request;
    request.set_model(model);
    request.set_prompt("The Lord is my shepherd");
    request.mutable_sampling()->set_max_new_tokens(8);
    grpc::ClientContext context;
    if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    hearth::v1::GenerateResponse response;
    return hearth::v1::Generation::NewStub(channel)->Generate(&context, request,
                                                              &response);
  }
};

TEST_F(DeployMetricsTest, DeployFilesNameOnlyExportedMetrics) {
  if (RunCommand(Node() + " --version").exit_code != 0) {
    GTEST_SKIP() << "node is not installed";
  }
  fs::remove_all(Dir());
  fs::create_directories(Dir() + "/models");
  ASSERT_TRUE(worker::testing::WriteTinyModel(Dir() + "/models/tiny", {}).ok());
  const std::string keys = Dir() + "/keys.yaml";
  gateway::ApiKey gen;
  gen.id = "gen";
  gen.scopes = {"generate"};
  const std::string gen_secret = gateway::CreateApiKey(keys, gen).value();
  gateway::ApiKey limited;
  limited.id = "limited";
  limited.scopes = {"generate"};
  limited.limits.requests_per_second = 0.1;
  limited.limits.burst = 1;
  const std::string limited_secret =
      gateway::CreateApiKey(keys, limited).value();

  const std::string models =
      absl::StrCat("--model_repository=", Dir(), "/models");
  std::vector<std::unique_ptr<ServiceProcess>> workers;
  for (int i = 0; i < 2; ++i) {
    auto w = ServiceProcess::Start(
        {.binary = ServiceBinary("hearth-worker"),
         .args = {
             absl::StrCat("--config=", Src(), "/deploy/config/worker.yaml"),
             models, "--load=tiny", "--threads=1",
             absl::StrCat("--worker_id=worker-", i)}});
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  auto quantizer = ServiceProcess::Start(
      {.binary = ServiceBinary("hearth-quantizer"),
       .args = {absl::StrCat("--model_repo=", Dir(), "/models"),
                absl::StrCat("--work_dir=", Dir(), "/quantizer")}});
  ASSERT_TRUE(quantizer.ok()) << quantizer.status();
  auto distiller = ServiceProcess::Start(
      {.binary = ServiceBinary("hearth-distiller"),
       .args = {models, absl::StrCat("--work_dir=", Dir(), "/distiller")}});
  ASSERT_TRUE(distiller.ok()) << distiller.status();
  auto gateway = ServiceProcess::Start(
      {.binary = ServiceBinary("hearth-gateway"),
       .args = {absl::StrCat("--config=", Src(), "/deploy/config/gateway.yaml"),
                absl::StrCat("--workers=", workers[0]->grpc_address(), ",",
                             workers[1]->grpc_address()),
                absl::StrCat("--quantizer=", (*quantizer)->grpc_address()),
                absl::StrCat("--distiller=", (*distiller)->grpc_address()),
                absl::StrCat("--api_keys=", keys), models}});
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  auto channel = (*gateway)->channel();

  // Traffic that makes every family the deployment files use appear.
  for (int i = 0; i < 6; ++i) {
    grpc::Status s = Generate(channel, gen_secret, "tiny");
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  {
    hearth::v1::GenerateRequest request;
    request.set_model("tiny");
    request.set_prompt("stream");
    request.mutable_sampling()->set_max_new_tokens(8);
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + gen_secret);
    auto reader = hearth::v1::Generation::NewStub(channel)->GenerateStream(
        &context, request);
    hearth::v1::GenerateStreamResponse chunk;
    int chunks = 0;
    while (reader->Read(&chunk)) ++chunks;
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_GT(chunks, 0);
  }
  EXPECT_EQ(Generate(channel, "", "tiny").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Generate(channel, gen_secret, "no-such-model").error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(Generate(channel, limited_secret, "tiny").ok());
  EXPECT_EQ(Generate(channel, limited_secret, "tiny").error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  absl::SleepFor(absl::Milliseconds(500));  // a worker status poll or two

  const std::string scrape = Dir() + "/scrape";
  fs::create_directories(scrape);
  std::vector<std::pair<std::string, const ServiceProcess*>> all = {
      {"gateway", gateway->get()},
      {"worker-0", workers[0].get()},
      {"worker-1", workers[1].get()},
      {"quantizer", quantizer->get()},
      {"distiller", distiller->get()}};
  for (const auto& [name, process] : all) {
    auto body = HttpGet(process->metrics_port(), "/metrics");
    ASSERT_TRUE(body.ok()) << name << ": " << body.status();
    WriteFile(absl::StrCat(scrape, "/", name, ".prom"), *body);
  }

  CommandResult real = Check(Src(), scrape);
  if (real.exit_code == 3) GTEST_SKIP() << real.output;
  EXPECT_EQ(real.exit_code, 0) << real.output;
  EXPECT_NE(real.output.find("ok metrics"), std::string::npos) << real.output;

  struct Broken {
    std::string file, from, to, message;
  };
  const std::vector<Broken> broken = {
      {"deploy/grafana/dashboards/hearth.json",
       "hearth_worker_kv_cache_usage_ratio{", "hearth_worker_kv_cache_usage{",
       "dashboard panel \"KV-cache usage\": hearth_worker_kv_cache_usage is "
       "not in the live scrape"},
      {"deploy/grafana/dashboards/hearth.json",
       "hearth_gateway_rate_limited_total[",
       "hearth_gateway_ratelimited_total[",
       "hearth_gateway_ratelimited_total is not in the live scrape"},
      {"deploy/k8s/components/hpa/hpa.yaml",
       "name: hearth_worker_requests_waiting",
       "name: hearth_worker_num_requests_waiting",
       "the HPA asks for hearth_worker_num_requests_waiting, which no "
       "prometheus-adapter rule exposes"},
      {"deploy/prometheus/prometheus-adapter.yaml",
       "seriesQuery: 'hearth_worker_requests_waiting{",
       "seriesQuery: 'hearth_worker_queue_waiting{",
       "hearth_worker_queue_waiting is not in the live scrape"},
      {"deploy/k8s/components/keda/scaled-object.yaml",
       "sum(hearth_gateway_queue_size{", "sum(hearth_gateway_queue_length{",
       "ScaledObject: hearth_gateway_queue_length is not in the live scrape"},
      {"deploy/grafana/dashboards/hearth.json",
       "sum by (grpc_code) (rate(hearth_grpc_server_handled_total",
       "sum by (code) (rate(hearth_grpc_server_handled_total",
       "dashboard panel \"Errors by code\": groups by \"code\""},
      {"deploy/grafana/dashboards/hearth.json",
       "hearth_gateway_queue_size{model=~", "hearth_gateway_queue_size{modle=~",
       "hearth_gateway_queue_size has no label \\\"modle\\\""},
  };
  for (const Broken& b : broken) {
    SCOPED_TRACE(b.file + ": " + b.to);
    const std::string root = Dir() + "/broken";
    BrokenCopy(root, b.file, b.from, b.to);
    CommandResult r = Check(root, scrape);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    // The JSON file's quotes are escaped in the message only when they came
    // from it; compare both spellings.
    const std::string plain = absl::StrReplaceAll(b.message, {{"\\\"", "\""}});
    EXPECT_TRUE(r.output.find(plain) != std::string::npos) << r.output;
  }
  // A real Prometheus with hearth's rules, scraping the same services.
  if (RunCommand("prometheus --version").exit_code != 0) {
    GTEST_LOG_(INFO) << "prometheus is not installed: rules not evaluated live";
  } else {
    const int port = PickFreePort();
    std::string config = absl::StrCat(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n",
        "rule_files: [\"", Src(), "/deploy/prometheus/rules/*.yml\"]\n",
        "scrape_configs:\n");
    const std::vector<
        std::pair<std::string, std::vector<const ServiceProcess*>>>
        jobs = {{"hearth-gateway", {gateway->get()}},
                {"hearth-worker", {workers[0].get(), workers[1].get()}},
                {"hearth-quantizer", {quantizer->get()}},
                {"hearth-distiller", {distiller->get()}}};
    for (const auto& [job, processes] : jobs) {
      absl::StrAppend(&config, "  - {job_name: ", job,
                      ", static_configs: [{targets: [");
      for (size_t i = 0; i < processes.size(); ++i) {
        absl::StrAppend(&config, i ? ", " : "",
                        "\"127.0.0.1:", processes[i]->metrics_port(), "\"");
      }
      absl::StrAppend(&config, "]}]}\n");
    }
    WriteFile(Dir() + "/prometheus.yml", config);
    const pid_t prom = fork();
    ASSERT_GE(prom, 0);
    if (prom == 0) {
      const std::string log = Dir() + "/prometheus.log";
      freopen(log.c_str(), "w", stdout);
      freopen(log.c_str(), "a", stderr);
      const std::string cfg = "--config.file=" + Dir() + "/prometheus.yml";
      const std::string data = "--storage.tsdb.path=" + Dir() + "/prometheus";
      const std::string listen =
          absl::StrCat("--web.listen-address=127.0.0.1:", port);
      execlp("prometheus", "prometheus", cfg.c_str(), data.c_str(),
             listen.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Every target up and every rule evaluated once without error.
    nlohmann::json rules;
    bool ready = false;
    for (int i = 0; i < 120 && !ready; ++i) {
      absl::SleepFor(absl::Milliseconds(500));
      nlohmann::json up = PromQuery(port, "count(up == 1)");
      auto body = HttpGet(port, "/api/v1/rules");
      if (up.is_null() || up.empty() || !body.ok()) continue;
      rules = nlohmann::json::parse(*body, nullptr, false);
      if (rules.is_discarded()) continue;
      bool all_ok = up[0]["value"][1] == "5";
      int count = 0;
      for (const auto& g : rules["data"]["groups"]) {
        for (const auto& r : g["rules"]) {
          ++count;
          all_ok = all_ok && r.value("health", "") == "ok";
        }
      }
      ready = all_ok && count > 0;
    }
    EXPECT_TRUE(ready) << "Prometheus did not get 5 targets up and every rule "
                          "healthy; rules: "
                       << rules.dump() << "\n"
                       << ReadFile(Dir() + "/prometheus.log");
    // Recording rules produce series from the real metrics.
    int recorded = 0;
    for (const auto& g : rules["data"]["groups"]) {
      for (const auto& r : g["rules"]) {
        if (r.value("type", "") != "recording") continue;
        ++recorded;
        const std::string name = r["name"];
        nlohmann::json result;
        for (int i = 0; i < 20; ++i) {
          result = PromQuery(port, name);
          if (!result.is_null() && !result.empty()) break;
          absl::SleepFor(absl::Milliseconds(500));
        }
        EXPECT_FALSE(result.is_null() || result.empty())
            << name << " yields no series";
      }
    }
    EXPECT_EQ(recorded, 5);
    kill(prom, SIGTERM);
    int status = 0;
    waitpid(prom, &status, 0);
  }

  for (auto& w : workers) EXPECT_EQ(w->Stop(SIGTERM).value(), 0);
  EXPECT_EQ((*gateway)->Stop(SIGTERM).value(), 0);
}

}  // namespace
}  // namespace hearth
