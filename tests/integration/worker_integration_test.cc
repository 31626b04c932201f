// hearth-worker as a real process: continuous batching must not change greedy
// results, cancellation must free the KV cache (as the metrics show), models
// load and unload under traffic, bad inputs get the right codes without hurting
// other streams, and a real Prometheus scrapes /metrics.
//
// Models are tiny random Llamas (hidden 64, 2 layers, byte-level tokenizer)
// written into a temporary repository, so the suite runs in well under a minute
// on two cores.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/testing/service_process.h"
#include "common/tokenizer/sentencepiece_model.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "hearth/v1/worker.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/worker/test_models.h"

namespace hearth {
namespace {

namespace fs = std::filesystem;
using worker::testing::TinyModelOptions;
using worker::testing::WriteTinyModel;

struct Outcome {
  grpc::Status status;
  std::map<std::string, std::vector<int32_t>> tokens;
  std::map<std::string, std::string> text;
  std::map<std::string, v1::ExecuteEvent> finals;
  int events = 0;
  int finals_seen = 0;
};

Outcome Stream(
    v1::Worker::Stub& stub, const v1::ExecuteRequest& request,
    grpc::ClientContext* context = nullptr,
    const std::function<void(const v1::ExecuteEvent&)>& on_event = {}) {
  grpc::ClientContext own;
  if (context == nullptr) {
    context = &own;
    own.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(120));
  }
  Outcome out;
  auto reader = stub.Execute(context, request);
  v1::ExecuteEvent e;
  while (reader->Read(&e)) {
    ++out.events;
    auto& t = out.tokens[e.sequence_id()];
    t.insert(t.end(), e.token_ids().begin(), e.token_ids().end());
    out.text[e.sequence_id()] += e.text();
    if (e.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      ++out.finals_seen;
      out.finals[e.sequence_id()] = e;
    }
    if (on_event) on_event(e);
  }
  out.status = reader->Finish();
  return out;
}

v1::SequenceRequest Sequence(const std::string& id, int prompt_len, int max_new,
                             int seed = 0) {
  v1::SequenceRequest s;
  s.set_sequence_id(id);
  uint32_t x = static_cast<uint32_t>(seed) * 2654435761u + 7;
  for (int i = 0; i < prompt_len; ++i) {
    x = x * 1664525u + 1013904223u;
    s.add_prompt_token_ids(static_cast<int32_t>((x >> 8) % 256));
  }
  s.mutable_sampling()->set_max_new_tokens(max_new);
  s.mutable_sampling()->set_ignore_eos(true);
  return s;
}

v1::ExecuteRequest One(const std::string& model, v1::SequenceRequest s) {
  v1::ExecuteRequest r;
  r.set_model(model);
  *r.add_sequences() = std::move(s);
  return r;
}

// The value of the first sample of `name` whose labels contain all of
// `label_parts`, or -1.
double MetricValue(const std::string& metrics, const std::string& name,
                   const std::vector<std::string>& label_parts) {
  for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, name)) continue;
    const absl::string_view rest = line.substr(name.size());
    if (rest.empty() || (rest[0] != '{' && rest[0] != ' ')) continue;
    bool all = true;
    for (const std::string& part : label_parts) {
      if (rest.find(part) == absl::string_view::npos) all = false;
    }
    if (!all) continue;
    const size_t space = line.rfind(' ');
    return std::stod(std::string(line.substr(space + 1)));
  }
  return -1;
}

class WorkerIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repo_ = new std::string(
        absl::StrCat(::testing::TempDir(), "/worker_it_", getpid()));
    fs::create_directories(*repo_);
    ASSERT_TRUE(WriteTinyModel(*repo_ + "/tiny").ok());
    TinyModelOptions other;
    other.seed = 5;
    ASSERT_TRUE(WriteTinyModel(*repo_ + "/other", other).ok());
    TinyModelOptions slow;  // Long contexts: a stream that lasts seconds.
    slow.hidden_size = 128;
    slow.intermediate_size = 256;
    slow.num_layers = 4;
    slow.max_position_embeddings = 4096;
    slow.seed = 9;
    ASSERT_TRUE(WriteTinyModel(*repo_ + "/slow", slow).ok());

    auto process = ServiceProcess::Start(
        {.binary = ServiceBinary("hearth-worker"),
         .args = {absl::StrCat("--model_repository=", *repo_), "--load=tiny",
                  absl::StrCat("--devices=", worker::testing::TestDevice()),
                  absl::StrCat("--dtype=", worker::testing::TestDtype()),
                  "--kv_cache_tokens=16384", "--max_batch_tokens=512",
                  "--max_running_sequences=64", "--threads=2",
                  "--worker_id=it-worker"}});
    ASSERT_TRUE(process.ok()) << process.status();
    worker_ = process->release();
    stub_ = v1::Worker::NewStub(worker_->channel()).release();
  }

  static void TearDownTestSuite() {
    delete stub_;
    if (worker_ != nullptr) {
      auto code = worker_->Stop(SIGTERM);
      EXPECT_TRUE(code.ok()) << code.status();
      if (code.ok()) EXPECT_EQ(*code, 0) << worker_->ReadLog();
      delete worker_;
    }
    std::error_code ec;
    fs::remove_all(*repo_, ec);
    delete repo_;
  }

  void SetUp() override {
    ASSERT_NE(worker_, nullptr);
    ASSERT_TRUE(worker_->Running()) << worker_->ReadLog();
  }

  static grpc::Status Load(const std::string& name) {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_model(name);
    v1::LoadModelResponse response;
    return stub_->LoadModel(&context, request, &response);
  }

  static grpc::Status Unload(const std::string& name) {
    grpc::ClientContext context;
    v1::UnloadModelRequest request;
    request.set_model(name);
    v1::UnloadModelResponse response;
    return stub_->UnloadModel(&context, request, &response);
  }

  static std::string Metrics() {
    auto m = HttpGet(worker_->metrics_port(), "/metrics");
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : "";
  }

  static std::string* repo_;
  static ServiceProcess* worker_;
  static v1::Worker::Stub* stub_;
};

std::string* WorkerIntegrationTest::repo_ = nullptr;
ServiceProcess* WorkerIntegrationTest::worker_ = nullptr;
v1::Worker::Stub* WorkerIntegrationTest::stub_ = nullptr;

TEST_F(WorkerIntegrationTest,
       SixtyFourConcurrentStreamsMatchSequentialResults) {
  constexpr int kStreams = 64;
  std::vector<v1::ExecuteRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    v1::SequenceRequest s =
        Sequence(absl::StrCat("c", i), 2 + (i * 29) % 180, 4 + (i * 7) % 48, i);
    if (i % 4 == 0) {  // Some text prompts too.
      s.clear_prompt_token_ids();
      s.set_prompt(absl::StrCat("Request number ", i, ": tell me a story."));
    }
    requests.push_back(One("tiny", s));
  }
  // One at a time.
  std::vector<Outcome> sequential;
  for (const auto& r : requests) {
    sequential.push_back(Stream(*stub_, r));
    ASSERT_TRUE(sequential.back().status.ok())
        << sequential.back().status.error_message();
  }
  // All at once.
  std::vector<Outcome> concurrent(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back(
        [&, i] { concurrent[i] = Stream(*stub_, requests[i]); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    const std::string id = absl::StrCat("c", i);
    ASSERT_TRUE(concurrent[i].status.ok())
        << concurrent[i].status.error_message();
    EXPECT_EQ(concurrent[i].finals_seen, 1);
    EXPECT_EQ(concurrent[i].finals[id].finish_reason(),
              v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(concurrent[i].tokens[id].size(),
              requests[i].sequences(0).sampling().max_new_tokens());
    EXPECT_EQ(concurrent[i].tokens[id], sequential[i].tokens[id]) << id;
    EXPECT_EQ(concurrent[i].text[id], sequential[i].text[id]) << id;
  }
  // The batch really was shared: some step ran more than one sequence.
  const std::string m = Metrics();
  EXPECT_GT(MetricValue(m, "hearth_worker_batch_size_bucket",
                        {"model=\"tiny\"", "le=\"1\""}),
            -1);
  EXPECT_LT(
      MetricValue(m, "hearth_worker_batch_size_bucket",
                  {"model=\"tiny\"", "le=\"1\""}),
      MetricValue(m, "hearth_worker_batch_size_count", {"model=\"tiny\""}));
}

TEST_F(WorkerIntegrationTest, CancelledStreamFreesItsKvCache) {
  ASSERT_TRUE(Load("slow").ok());
  const std::vector<std::string> slow = {"model=\"slow\""};
  const double cancelled_before = std::max(
      0.0, MetricValue(Metrics(), "hearth_worker_request_finished_total",
                       {"model=\"slow\"", "finished_reason=\"cancelled\""}));
  // 1. The client cancels its call.
  {
    grpc::ClientContext context;
    std::atomic<int> events{0};
    std::thread reader([&] {
      Outcome out =
          Stream(*stub_, One("slow", Sequence("long", 50, 4000)), &context,
                 [&](const v1::ExecuteEvent&) { ++events; });
      EXPECT_EQ(out.status.error_code(), grpc::StatusCode::CANCELLED);
    });
    while (events.load() < 3) absl::SleepFor(absl::Milliseconds(5));
    const double usage =
        MetricValue(Metrics(), "hearth_worker_kv_cache_usage_ratio", slow);
    EXPECT_GT(usage, 0);
    EXPECT_EQ(MetricValue(Metrics(), "hearth_worker_requests_running", slow),
              1);
    context.TryCancel();
    reader.join();
  }
  auto wait_for_free = [&](double expected_cancelled) {
    for (int i = 0; i < 500; ++i) {
      const std::string m = Metrics();
      if (MetricValue(m, "hearth_worker_kv_cache_usage_ratio", slow) == 0 &&
          MetricValue(m, "hearth_worker_request_finished_total",
                      {"model=\"slow\"", "finished_reason=\"cancelled\""}) ==
              expected_cancelled) {
        EXPECT_EQ(MetricValue(m, "hearth_worker_requests_running", slow), 0);
        return true;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  };
  EXPECT_TRUE(wait_for_free(cancelled_before + 1)) << Metrics();

  // 2. Cancel by id from another call.
  {
    std::atomic<int> events{0};
    Outcome out;
    std::thread reader([&] {
      out = Stream(*stub_, One("slow", Sequence("by-id", 50, 4000)), nullptr,
                   [&](const v1::ExecuteEvent&) { ++events; });
    });
    while (events.load() < 2) absl::SleepFor(absl::Milliseconds(5));
    grpc::ClientContext context;
    v1::CancelRequest cancel;
    cancel.add_sequence_ids("by-id");
    v1::CancelResponse response;
    ASSERT_TRUE(stub_->Cancel(&context, cancel, &response).ok());
    EXPECT_EQ(response.cancelled(), 1u);
    reader.join();
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    EXPECT_EQ(out.finals["by-id"].finish_reason(), v1::FINISH_REASON_CANCELLED);
    EXPECT_LT(out.tokens["by-id"].size(), 4000u);
  }
  EXPECT_TRUE(wait_for_free(cancelled_before + 2)) << Metrics();
  EXPECT_TRUE(Unload("slow").ok());
}

TEST_F(WorkerIntegrationTest, LoadAndUnloadWhileTrafficRuns) {
  const v1::ExecuteRequest probe = One("tiny", Sequence("probe", 20, 16, 3));
  const Outcome expected = Stream(*stub_, probe);
  ASSERT_TRUE(expected.status.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> completed{0}, wrong{0};
  std::vector<std::thread> traffic;
  for (int t = 0; t < 4; ++t) {
    traffic.emplace_back([&, t] {
      for (int n = 0; !stop.load(); ++n) {
        v1::ExecuteRequest r = probe;
        r.mutable_sequences(0)->set_sequence_id(
            absl::StrCat("traffic-", t, "-", n));
        Outcome out = Stream(*stub_, r);
        const std::string id = r.sequences(0).sequence_id();
        if (!out.status.ok() || out.tokens[id] != expected.tokens.at("probe")) {
          ++wrong;
        }
        ++completed;
      }
    });
  }
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(Load("other").ok());
    Outcome other = Stream(*stub_, One("other", Sequence("o", 10, 8)));
    EXPECT_TRUE(other.status.ok()) << other.status.error_message();
    EXPECT_EQ(other.tokens["o"].size(), 8u);
    grpc::ClientContext context;
    v1::WorkerStatus status;
    ASSERT_TRUE(stub_->GetStatus(&context, {}, &status).ok());
    EXPECT_EQ(status.models_size(), 2);
    ASSERT_TRUE(Unload("other").ok());
    Outcome gone = Stream(*stub_, One("other", Sequence("o", 10, 8)));
    EXPECT_EQ(gone.status.error_code(), grpc::StatusCode::NOT_FOUND);
  }
  stop = true;
  for (auto& t : traffic) t.join();
  EXPECT_GT(completed.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
}

TEST_F(WorkerIntegrationTest, BadInputsGetTheRightCodesAndOthersAreUnaffected) {
  // A stream that runs through all of it.
  Outcome background;
  std::thread bystander([&] {
    background = Stream(*stub_, One("tiny", Sequence("bystander", 10, 400)));
  });
  struct Case {
    std::string name;
    std::function<void(v1::ExecuteRequest*)> mutate;
    grpc::StatusCode code;
  };
  auto seq = [](v1::ExecuteRequest* r) { return r->mutable_sequences(0); };
  const std::vector<Case> cases = {
      {"empty prompt", [&](auto* r) { seq(r)->clear_prompt_token_ids(); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"max_new_tokens over the context",
       [&](auto* r) { seq(r)->mutable_sampling()->set_max_new_tokens(600); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"max_new_tokens huge",
       [&](auto* r) {
         seq(r)->mutable_sampling()->set_max_new_tokens(4000000000u);
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"NaN temperature",
       [&](auto* r) {
         seq(r)->mutable_sampling()->set_temperature(std::nanf(""));
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"negative temperature",
       [&](auto* r) { seq(r)->mutable_sampling()->set_temperature(-1); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"top_p 0", [&](auto* r) { seq(r)->mutable_sampling()->set_top_p(0); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"top_p 1.5",
       [&](auto* r) { seq(r)->mutable_sampling()->set_top_p(1.5); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"token id over the vocabulary",
       [&](auto* r) { seq(r)->set_prompt_token_ids(0, 258); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"negative token id",
       [&](auto* r) { seq(r)->set_prompt_token_ids(1, -3); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"unknown model", [&](auto* r) { r->set_model("no-such-model"); },
       grpc::StatusCode::NOT_FOUND},
      {"no model", [&](auto* r) { r->clear_model(); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"no sequences", [&](auto* r) { r->clear_sequences(); },
       grpc::StatusCode::INVALID_ARGUMENT},
  };
  for (const Case& c : cases) {
    v1::ExecuteRequest r = One("tiny", Sequence("bad", 8, 8));
    c.mutate(&r);
    Outcome out = Stream(*stub_, r);
    EXPECT_EQ(out.status.error_code(), c.code)
        << c.name << ": " << out.status.error_message();
    EXPECT_EQ(out.events, 0) << c.name;
  }
  // Loading junk: NOT_FOUND / INVALID_ARGUMENT, nothing breaks.
  EXPECT_EQ(Load("no-such-model").error_code(), grpc::StatusCode::NOT_FOUND);
  {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_model("escape");
    request.set_path("../../../etc");
    v1::LoadModelResponse response;
    EXPECT_EQ(stub_->LoadModel(&context, request, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  bystander.join();
  ASSERT_TRUE(background.status.ok()) << background.status.error_message();
  EXPECT_EQ(background.finals["bystander"].finish_reason(),
            v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(background.tokens["bystander"].size(), 400u);
  EXPECT_TRUE(worker_->Running());
  Outcome after = Stream(*stub_, One("tiny", Sequence("after", 8, 8)));
  EXPECT_TRUE(after.status.ok());
}

// Starts /usr/bin/prometheus scraping the worker; stops it on destruction.
class Prometheus {
 public:
  static std::unique_ptr<Prometheus> Start(int target_port,
                                           const std::string& dir) {
    auto p = std::unique_ptr<Prometheus>(new Prometheus);
    p->port_ = PickFreePort();
    fs::create_directories(dir + "/data");
    std::ofstream(dir + "/prometheus.yml")
        << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        << "scrape_configs:\n  - job_name: hearth-worker\n"
        << "    static_configs:\n      - targets: ['127.0.0.1:" << target_port
        << "']\n";
    p->log_ = dir + "/prometheus.log";
    const std::vector<std::string> args = {
        "/usr/bin/prometheus",
        absl::StrCat("--config.file=", dir, "/prometheus.yml"),
        absl::StrCat("--storage.tsdb.path=", dir, "/data"),
        absl::StrCat("--web.listen-address=127.0.0.1:", p->port_)};
    p->pid_ = fork();
    if (p->pid_ == 0) {
      FILE* log = fopen(p->log_.c_str(), "w");
      if (log != nullptr) {
        dup2(fileno(log), 1);
        dup2(fileno(log), 2);
      }
      std::vector<char*> argv;
      for (const std::string& a : args)
        argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    return p;
  }
  ~Prometheus() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }
  int port() const { return port_; }
  std::string Log() const {
    std::ifstream in(log_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  Prometheus() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_;
};

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      snprintf(buf, sizeof(buf), "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

TEST_F(WorkerIntegrationTest, MetricsPassPromtoolAndPrometheusScrapesThem) {
  // Make sure there is traffic to count.
  ASSERT_TRUE(Stream(*stub_, One("tiny", Sequence("m", 12, 9))).status.ok());
  const std::string metrics = Metrics();
  for (const char* name :
       {"hearth_worker_requests_running", "hearth_worker_requests_waiting",
        "hearth_worker_request_finished_total",
        "hearth_worker_prompt_tokens_total",
        "hearth_worker_generation_tokens_total",
        "hearth_worker_time_to_first_token_seconds_bucket",
        "hearth_worker_inter_token_latency_seconds_bucket",
        "hearth_worker_e2e_request_latency_seconds_bucket",
        "hearth_worker_request_queue_time_seconds_bucket",
        "hearth_worker_batch_size_bucket", "hearth_worker_kv_cache_usage_ratio",
        "hearth_worker_device_memory_used_bytes",
        "hearth_worker_model_load_duration_seconds"}) {
    EXPECT_NE(metrics.find(name), std::string::npos) << name;
  }
  EXPECT_GT(MetricValue(metrics, "hearth_worker_device_memory_used_bytes",
                        {absl::StrCat("device=\"",
                                      worker::testing::TestDevice(), "\"")}),
            0);
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/worker_prom_", getpid());
  fs::create_directories(dir);
  std::ofstream(dir + "/metrics.txt") << metrics;
  CommandResult promtool = RunCommand(
      absl::StrCat("promtool check metrics < ", dir, "/metrics.txt"));
  EXPECT_EQ(promtool.exit_code, 0) << promtool.output;

  if (access("/usr/bin/prometheus", X_OK) != 0) {
    GTEST_SKIP() << "/usr/bin/prometheus is not installed";
  }
  auto prometheus = Prometheus::Start(worker_->metrics_port(), dir);
  auto query = [&](const std::string& promql) -> nlohmann::json {
    auto body =
        HttpGet(prometheus->port(), "/api/v1/query?query=" + UrlEncode(promql));
    if (!body.ok()) return nullptr;
    auto j = nlohmann::json::parse(*body, nullptr, false);
    if (j.is_discarded() || j.value("status", "") != "success") return nullptr;
    return j["data"]["result"];
  };
  const std::string tokens_query = absl::StrCat(
      "hearth_worker_generation_tokens_total{model=\"tiny\",device=\"",
      worker::testing::TestDevice(), "\"}");
  nlohmann::json up, tokens;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    up = query("up");
    tokens = query(tokens_query);
    if (up.is_array() && !up.empty() && tokens.is_array() && !tokens.empty()) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(250));
  }
  ASSERT_TRUE(up.is_array() && !up.empty()) << prometheus->Log();
  EXPECT_EQ(up[0]["value"][1], "1") << up.dump();
  EXPECT_EQ(up[0]["metric"]["job"], "hearth-worker");
  ASSERT_TRUE(tokens.is_array() && !tokens.empty()) << prometheus->Log();
  const double scraped = std::stod(tokens[0]["value"][1].get<std::string>());
  // At least this test's 9 tokens; at most what the worker reports now.
  EXPECT_GE(scraped, 9);
  EXPECT_LE(scraped,
            MetricValue(Metrics(), "hearth_worker_generation_tokens_total",
                        {"model=\"tiny\""}));
  std::error_code ec;
  prometheus.reset();
  fs::remove_all(dir, ec);
}

// A Llama-2 style folder with only tokenizer.model (no tokenizer.json) loads
// in the real binary, which links libprotobuf: hearth reads the ModelProto and
// runs SentencePiece BPE itself, so a text prompt is tokenized and generates.
TEST_F(WorkerIntegrationTest, TokenizerModelOnlyFolderServesTextPrompts) {
  // Merges in score order: he, ll, llo, hello, ▁hello, or, wor, ld, world,
  // ▁world; then the single characters.
  const tokenizer::SentencePieceModel spm =
      tokenizer::LlamaStyleSentencePieceModel(
          {"he", "ll", "llo", "hello", "\u2581hello", "or", "wor", "ld",
           "world", "\u2581world", "\u2581", "h", "e", "l", "o", "w", "r",
           "d"});
  const std::string folder = *repo_ + "/spm";
  TinyModelOptions options;
  options.write_tokenizer = false;
  options.vocab_size = static_cast<int64_t>(spm.pieces.size());
  options.seed = 11;
  ASSERT_TRUE(WriteTinyModel(folder, options).ok());
  std::ofstream(folder + "/tokenizer.model", std::ios::binary)
      << tokenizer::SerializeSentencePieceModel(spm);
  ASSERT_FALSE(fs::exists(folder + "/tokenizer.json"));

  grpc::Status loaded = Load("spm");
  ASSERT_TRUE(loaded.ok()) << loaded.error_message() << worker_->ReadLog();
  v1::SequenceRequest s;
  s.set_sequence_id("spm-text");
  // <s> "▁hello" "▁world", then "😀" as its four <0xNN> byte pieces.
  s.set_prompt("hello world\xF0\x9F\x98\x80");
  s.mutable_sampling()->set_max_new_tokens(8);
  s.mutable_sampling()->set_ignore_eos(true);
  Outcome out = Stream(*stub_, One("spm", s));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_EQ(out.finals_seen, 1);
  const v1::ExecuteEvent& final_event = out.finals["spm-text"];
  EXPECT_EQ(final_event.finish_reason(), v1::FINISH_REASON_LENGTH)
      << final_event.error_message();
  EXPECT_EQ(final_event.usage().prompt_tokens(), 1u + 2u + 4u);
  EXPECT_EQ(out.tokens["spm-text"].size(), 8u);
  EXPECT_TRUE(Unload("spm").ok());
}

TEST_F(WorkerIntegrationTest, StatusReportsCapacityAndModels) {
  grpc::ClientContext context;
  v1::WorkerStatus status;
  ASSERT_TRUE(stub_->GetStatus(&context, {}, &status).ok());
  EXPECT_EQ(status.worker_id(), "it-worker");
  EXPECT_TRUE(status.accepting());
  ASSERT_EQ(status.devices_size(), 1);
  EXPECT_EQ(status.devices(0).kv_cache_capacity_tokens(), 16384u);
  EXPECT_GT(status.devices(0).memory_used_bytes(), 0u);
  bool found = false;
  for (const auto& m : status.models()) {
    if (m.name() == "tiny") {
      found = true;
      EXPECT_EQ(m.state(), v1::MODEL_STATE_READY);
      EXPECT_EQ(m.context_length(), 512u);
      EXPECT_EQ(m.devices(0), worker::testing::TestDevice());
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace hearth
