// The Worker front end in-process: a real gRPC server and client on loopback
// around a real engine with a tiny model. The binary-level behaviour (flags,
// metrics endpoint, Prometheus) is in tests/integration/worker_*.
#include "services/worker/worker_service.h"

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "services/worker/test_models.h"

namespace hearth::worker {
namespace {

namespace fs = std::filesystem;

class WorkerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_ = absl::StrCat(::testing::TempDir(), "/service_repo_", getpid());
    fs::create_directories(repo_);
    ASSERT_TRUE(testing::WriteTinyModel(repo_ + "/tiny").ok());
    EngineOptions options;
    options.model_repository = repo_;
    options.kv_cache_tokens = 4096;
    options.threads = 2;
    options.devices = {testing::TestDevice()};
    options.dtype = testing::TestDtype();
    auto engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value();
    service_ = std::make_unique<WorkerService>(engine_.get(), "test-worker");
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::Worker::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    engine_->StopAccepting();
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(5));
    engine_->Shutdown();
    service_.reset();
    std::error_code ec;
    fs::remove_all(repo_, ec);
  }

  grpc::Status Load(const std::string& name) {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_model(name);
    v1::LoadModelResponse response;
    grpc::Status s = stub_->LoadModel(&context, request, &response);
    if (s.ok()) {
      EXPECT_EQ(response.state(), v1::MODEL_STATE_READY);
    }
    return s;
  }

  struct Outcome {
    grpc::Status status;
    std::vector<v1::ExecuteEvent> events;
    std::map<std::string, std::vector<int32_t>> tokens;
    std::map<std::string, v1::ExecuteEvent> finals;
  };

  Outcome Execute(const v1::ExecuteRequest& request,
                  grpc::ClientContext* context = nullptr) {
    grpc::ClientContext own;
    if (context == nullptr) context = &own;
    Outcome out;
    auto reader = stub_->Execute(context, request);
    v1::ExecuteEvent e;
    while (reader->Read(&e)) {
      out.events.push_back(e);
      auto& t = out.tokens[e.sequence_id()];
      t.insert(t.end(), e.token_ids().begin(), e.token_ids().end());
      if (e.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        EXPECT_EQ(out.finals.count(e.sequence_id()), 0u);
        out.finals[e.sequence_id()] = e;
      }
    }
    out.status = reader->Finish();
    return out;
  }

  static v1::SequenceRequest Sequence(const std::string& id, int prompt_len,
                                      int max_new) {
    v1::SequenceRequest s;
    s.set_sequence_id(id);
    for (int i = 0; i < prompt_len; ++i) s.add_prompt_token_ids(32 + i);
    s.mutable_sampling()->set_max_new_tokens(max_new);
    s.mutable_sampling()->set_ignore_eos(true);
    return s;
  }

  std::string repo_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<WorkerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Worker::Stub> stub_;
};

TEST_F(WorkerServiceTest, ExecuteStreamsEveryTokenAndOneFinalEventEach) {
  ASSERT_TRUE(Load("tiny").ok());
  v1::ExecuteRequest request;
  request.set_model("tiny");
  *request.add_sequences() = Sequence("a", 5, 9);
  *request.add_sequences() = Sequence("b", 17, 4);
  v1::SequenceRequest text;
  text.set_sequence_id("c");
  text.set_prompt("Hi there");
  text.mutable_sampling()->set_max_new_tokens(3);
  text.mutable_sampling()->set_ignore_eos(true);
  *request.add_sequences() = text;
  Outcome out = Execute(request);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_EQ(out.finals.size(), 3u);
  EXPECT_EQ(out.tokens["a"].size(), 9u);
  EXPECT_EQ(out.tokens["b"].size(), 4u);
  EXPECT_EQ(out.tokens["c"].size(), 3u);
  const v1::ExecuteEvent& a = out.finals["a"];
  EXPECT_EQ(a.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(a.usage().prompt_tokens(), 5u);
  EXPECT_EQ(a.usage().completion_tokens(), 9u);
  EXPECT_EQ(a.usage().total_tokens(), 14u);
  EXPECT_GT(a.timing().total_seconds(), 0);
  EXPECT_EQ(out.finals["c"].usage().prompt_tokens(), 8u);
  // The last event of the stream is a final one.
  EXPECT_NE(out.events.back().finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
}

TEST_F(WorkerServiceTest, BadInputsGetCodesAndTheWorkerKeepsServing) {
  ASSERT_TRUE(Load("tiny").ok());
  struct Case {
    std::string name;
    std::function<void(v1::SequenceRequest*)> mutate;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"empty prompt",
       [](v1::SequenceRequest* s) { s->clear_prompt_token_ids(); },
       "sequences[0].prompt"},
      {"max_new_tokens huge",
       [](v1::SequenceRequest* s) {
         s->mutable_sampling()->set_max_new_tokens(4000000000u);
       },
       "sequences[0].sampling.max_new_tokens"},
      {"nan temperature",
       [](v1::SequenceRequest* s) {
         s->mutable_sampling()->set_temperature(std::nanf(""));
       },
       "sequences[0].sampling.temperature"},
      {"negative temperature",
       [](v1::SequenceRequest* s) {
         s->mutable_sampling()->set_temperature(-0.5f);
       },
       "sequences[0].sampling.temperature"},
      {"top_p",
       [](v1::SequenceRequest* s) { s->mutable_sampling()->set_top_p(1.5f); },
       "sequences[0].sampling.top_p"},
      {"token out of vocabulary",
       [](v1::SequenceRequest* s) { s->set_prompt_token_ids(1, 100000); },
       "sequences[0].prompt_token_ids[1]"},
  };
  for (const Case& c : cases) {
    v1::ExecuteRequest request;
    request.set_model("tiny");
    v1::SequenceRequest s = Sequence("x", 4, 4);
    c.mutate(&s);
    *request.add_sequences() = s;
    Outcome out = Execute(request);
    EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.name;
    EXPECT_EQ(out.status.error_message().rfind(c.field, 0), 0u)
        << c.name << ": " << out.status.error_message();
    EXPECT_TRUE(out.events.empty());
  }
  v1::ExecuteRequest unknown;
  unknown.set_model("nope");
  *unknown.add_sequences() = Sequence("x", 4, 4);
  EXPECT_EQ(Execute(unknown).status.error_code(), grpc::StatusCode::NOT_FOUND);

  // In a call with good and bad sequences, the bad one gets an error event and
  // the good one runs.
  v1::ExecuteRequest mixed;
  mixed.set_model("tiny");
  *mixed.add_sequences() = Sequence("good", 4, 6);
  v1::SequenceRequest bad = Sequence("bad", 4, 6);
  bad.mutable_sampling()->set_top_p(0);
  *mixed.add_sequences() = bad;
  Outcome out = Execute(mixed);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.finals["good"].finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(out.finals["bad"].finish_reason(), v1::FINISH_REASON_ERROR);
  EXPECT_EQ(out.finals["bad"].error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(
      out.finals["bad"].error_message().rfind("sequences[1].sampling.top_p", 0),
      0u)
      << out.finals["bad"].error_message();
}

TEST_F(WorkerServiceTest, ClientCancellationCancelsItsSequences) {
  testing::TinyModelOptions slow;
  slow.hidden_size = 128;
  slow.intermediate_size = 256;
  slow.num_layers = 4;
  slow.max_position_embeddings = 4096;
  ASSERT_TRUE(testing::WriteTinyModel(repo_ + "/slow", slow).ok());
  ASSERT_TRUE(Load("slow").ok());
  v1::ExecuteRequest request;
  request.set_model("slow");
  *request.add_sequences() = Sequence("long", 4, 4000);
  grpc::ClientContext context;
  auto reader = stub_->Execute(&context, request);
  v1::ExecuteEvent e;
  ASSERT_TRUE(reader->Read(&e));  // Running.
  context.TryCancel();
  while (reader->Read(&e)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The engine lets go of it within a step or so.
  for (int i = 0; i < 200; ++i) {
    grpc::ClientContext sc;
    v1::WorkerStatus status;
    ASSERT_TRUE(stub_->GetStatus(&sc, {}, &status).ok());
    if (status.devices(0).running_sequences() == 0) {
      EXPECT_EQ(status.devices(0).kv_cache_free_tokens(),
                status.devices(0).kv_cache_capacity_tokens());
      return;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  FAIL() << "the cancelled sequence is still running";
}

TEST_F(WorkerServiceTest, CancelRpcStatusAndUnload) {
  ASSERT_TRUE(Load("tiny").ok());
  grpc::ClientContext sc;
  v1::WorkerStatus status;
  ASSERT_TRUE(stub_->GetStatus(&sc, {}, &status).ok());
  EXPECT_EQ(status.worker_id(), "test-worker");
  EXPECT_TRUE(status.accepting());
  ASSERT_EQ(status.devices_size(), 1);
  EXPECT_EQ(status.devices(0).device(), testing::TestDevice());
  EXPECT_EQ(status.devices(0).kv_cache_capacity_tokens(), 4096u);
  EXPECT_GT(status.devices(0).memory_used_bytes(), 0u);
  ASSERT_EQ(status.models_size(), 1);
  EXPECT_EQ(status.models(0).name(), "tiny");
  EXPECT_EQ(status.models(0).state(), v1::MODEL_STATE_READY);
  EXPECT_EQ(status.models(0).vocab_size(), 258u);
  EXPECT_EQ(status.models(0).context_length(), 512u);
  EXPECT_EQ(status.models(0).default_max_new_tokens(), 128u);
  EXPECT_EQ(status.models(0).quantization(), "none");

  grpc::ClientContext cc;
  v1::CancelRequest cancel;
  cancel.add_sequence_ids("unknown");
  v1::CancelResponse cancelled;
  ASSERT_TRUE(stub_->Cancel(&cc, cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.cancelled(), 0u);

  grpc::ClientContext uc;
  v1::UnloadModelRequest unload;
  unload.set_model("tiny");
  v1::UnloadModelResponse unloaded;
  ASSERT_TRUE(stub_->UnloadModel(&uc, unload, &unloaded).ok());
  EXPECT_EQ(unloaded.state(), v1::MODEL_STATE_UNSPECIFIED);
  grpc::ClientContext uc2;
  EXPECT_EQ(stub_->UnloadModel(&uc2, unload, &unloaded).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Load("missing").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Load("").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace hearth::worker
