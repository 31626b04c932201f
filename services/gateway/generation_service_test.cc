// The gateway's front ends end to end in one process: a real gRPC server with
// hearth.v1.Generation and KServe v2 in front of fake workers.
#include "services/gateway/generation_service.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/rpc/retry_info.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "services/gateway/fake_worker.h"
#include "services/gateway/kserve_service.h"

namespace hearth::gateway {
namespace {

constexpr char kKeys[] = R"(
keys:
  - id: alice
    sha256: 2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90
    scopes: [generate]
    limits: {requests_per_second: 2, burst: 2}
  - id: bob
    sha256: 81b637d8fcd2c6da6359e6963113a1170de795e4b725b84d1e0b4cfd9ec58ce9
    scopes: [generate]
    models: [other]
  - id: root
    sha256: 4813494d137e1631bba301d5acab6e7bb7aa74ce1185d456565ef51d737677b2
    scopes: [admin]
)";
// sha256("alice"), sha256("bob"), sha256("root").

class FrontendTest : public testing::Test {
 protected:
  void SetUp() override {
    FakeWorkerOptions worker_options;
    worker_options.models = {{"tiny", 64}};
    worker_ = std::make_unique<FakeWorker>(worker_options);
    worker_->Start();
    WorkerPoolOptions pool_options;
    pool_options.static_workers = {worker_->address()};
    pool_options.poll_interval = absl::Milliseconds(50);
    pool_ = std::make_unique<WorkerPool>(pool_options);
    pool_->Start();
    DispatcherOptions options;
    options.batching.defaults.max_queue_delay = absl::Milliseconds(1);
    dispatcher_ = std::make_unique<Dispatcher>(pool_.get(), options, nullptr);
    auto keys = ApiKeyStore::FromText(kKeys, "test");
    ASSERT_TRUE(keys.ok()) << keys.status();
    edge_ = std::make_unique<Edge>(*std::move(keys), nullptr);
    tokenizers_ = std::make_unique<TokenizerCache>("");
    core_ = std::make_unique<GatewayCore>(GatewayCoreOptions(), pool_.get(),
                                          dispatcher_.get(), edge_.get(),
                                          tokenizers_.get(), nullptr);
    generation_ = std::make_unique<GenerationService>(core_.get());
    kserve_ = std::make_unique<KServeService>(core_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(generation_.get());
    builder.RegisterService(kserve_.get());
    server_ = builder.BuildAndStart();
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials());
    generate_ = hearth::v1::Generation::NewStub(channel_);
    infer_ = inference::GRPCInferenceService::NewStub(channel_);
  }

  void TearDown() override {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    dispatcher_->Shutdown();
    pool_->Stop();
  }

  static void Auth(grpc::ClientContext* context, const std::string& key) {
    context->AddMetadata("authorization", "Bearer " + key);
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  }

  hearth::v1::GenerateRequest Simple(int tokens = 3) {
    hearth::v1::GenerateRequest request;
    request.set_model("tiny");
    request.set_prompt("hi");
    request.mutable_sampling()->set_max_new_tokens(tokens);
    return request;
  }

  grpc::Status Generate(const std::string& key,
                        const hearth::v1::GenerateRequest& request,
                        hearth::v1::GenerateResponse* response,
                        grpc::ClientContext* context = nullptr) {
    grpc::ClientContext local;
    if (context == nullptr) context = &local;
    Auth(context, key);
    return generate_->Generate(context, request, response);
  }

  std::unique_ptr<FakeWorker> worker_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<Edge> edge_;
  std::unique_ptr<TokenizerCache> tokenizers_;
  std::unique_ptr<GatewayCore> core_;
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<KServeService> kserve_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<hearth::v1::Generation::Stub> generate_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> infer_;
};

TEST_F(FrontendTest, GenerateReturnsTheCompletion) {
  hearth::v1::GenerateResponse response;
  grpc::Status status = Generate("alice", Simple(), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.text(), "t0 t1 t2 ");
  EXPECT_EQ(response.finish_reason(), hearth::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(response.usage().completion_tokens(), 3u);
}

// max_new_tokens 0 is the model's default as its worker reports it (the
// fake reports 4). With token ids the gateway knows the prompt length and
// sends the resolved value; with text (no tokenizer here) it sends 0 and the
// worker resolves the same default.
TEST_F(FrontendTest, ZeroMaxNewTokensIsTheWorkersDefault) {
  hearth::v1::GenerateResponse response;
  grpc::Status status = Generate("alice", Simple(0), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.usage().completion_tokens(), 4u);
  hearth::v1::GenerateRequest ids = Simple(0);
  ids.clear_prompt();
  for (int i = 0; i < 62; ++i) ids.add_prompt_token_ids(i);
  grpc::ClientContext context;
  status = Generate("alice", ids, &response, &context);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.usage().completion_tokens(), 2u);  // context 64 - 62
  auto sent = worker_->sequences();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].sampling().max_new_tokens(), 0u);
  EXPECT_EQ(sent[1].sampling().max_new_tokens(), 2u);
}

TEST_F(FrontendTest, AuthCodes) {
  hearth::v1::GenerateResponse response;
  EXPECT_EQ(Generate("wrong", Simple(), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext none;
  EXPECT_EQ(generate_->Generate(&none, Simple(), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // bob may not use "tiny"; root lacks the generate scope.
  EXPECT_EQ(Generate("bob", Simple(), &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Generate("root", Simple(), &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // x-api-key works too.
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", "alice");
  EXPECT_TRUE(generate_->Generate(&context, Simple(), &response).ok());
}

TEST_F(FrontendTest, RateLimitCarriesAnHonestRetryDelay) {
  hearth::v1::GenerateResponse response;
  grpc::Status status;
  grpc::ClientContext* last = nullptr;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  for (int i = 0; i < 5; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    last = contexts.back().get();
    status = Generate("alice", Simple(1), &response, last);
    if (!status.ok()) break;
  }
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(details.details(0).UnpackTo(&retry));
  const absl::Duration delay = absl::Seconds(retry.retry_delay().seconds()) +
                               absl::Nanoseconds(retry.retry_delay().nanos());
  EXPECT_GT(delay, absl::ZeroDuration());
  EXPECT_LE(delay, absl::Seconds(1));
  auto trailer = last->GetServerTrailingMetadata().find("retry-after");
  ASSERT_NE(trailer, last->GetServerTrailingMetadata().end());
  EXPECT_EQ(std::string(trailer->second.data(), trailer->second.size()), "1");
  absl::SleepFor(delay);
  EXPECT_TRUE(Generate("alice", Simple(1), &response).ok());
}

TEST_F(FrontendTest, StreamSendsOneMessagePerToken) {
  grpc::ClientContext context;
  Auth(&context, "alice");
  auto reader = generate_->GenerateStream(&context, Simple(4));
  hearth::v1::GenerateStreamResponse chunk;
  std::string text;
  int messages = 0;
  while (reader->Read(&chunk)) {
    text += chunk.text();
    ++messages;
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(messages, 4);
  EXPECT_EQ(text, "t0 t1 t2 t3 ");
  EXPECT_EQ(chunk.finish_reason(), hearth::v1::FINISH_REASON_LENGTH);
}

TEST_F(FrontendTest, UnknownModelIsNotFound) {
  auto request = Simple();
  request.set_model("missing");
  hearth::v1::GenerateResponse response;
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", "alice");
  EXPECT_EQ(generate_->Generate(&context, request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(FrontendTest, BadInputsNameTheField) {
  struct Case {
    std::function<void(hearth::v1::GenerateRequest*)> mutate;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](auto* r) { r->clear_model(); }, "model"},
      {[](auto* r) { r->clear_prompt(); }, "prompt"},
      {[](auto* r) { r->mutable_sampling()->set_temperature(-1); },
       "sampling.temperature"},
      {[](auto* r) { r->mutable_sampling()->set_temperature(std::nanf("")); },
       "sampling.temperature"},
      {[](auto* r) { r->mutable_sampling()->set_top_p(1.5); },
       "sampling.top_p"},
      {[](auto* r) { r->mutable_sampling()->set_max_new_tokens(100); },
       "sampling.max_new_tokens"},
      {[](auto* r) { r->set_prompt(std::string(2 << 20, 'x')); }, "prompt"},
      {[](auto* r) {
         r->clear_prompt();
         r->add_prompt_token_ids(5000);
       },
       "prompt_token_ids[0]"},
  };
  for (const Case& c : cases) {
    auto request = Simple();
    c.mutate(&request);
    hearth::v1::GenerateResponse response;
    grpc::ClientContext context;
    context.AddMetadata("x-api-key", "alice");
    grpc::Status status = generate_->Generate(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.field << ": " << status.error_message();
    EXPECT_EQ(status.error_message().rfind(c.field + ":", 0), 0u)
        << status.error_message();
  }
  // Oversized metadata.
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", std::string(2000, 'k'));
  hearth::v1::GenerateResponse response;
  grpc::Status status = generate_->Generate(&context, Simple(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind("x-api-key:", 0), 0u);
}

inference::ModelInferRequest TextInfer(const std::string& prompt) {
  inference::ModelInferRequest request;
  request.set_model_name("tiny");
  request.set_id("req-1");
  auto* input = request.add_inputs();
  input->set_name("text_input");
  input->set_datatype("BYTES");
  input->add_shape(1);
  input->mutable_contents()->add_bytes_contents(prompt);
  auto* max_tokens = request.add_inputs();
  max_tokens->set_name("max_tokens");
  max_tokens->set_datatype("INT32");
  max_tokens->add_shape(1);
  max_tokens->mutable_contents()->add_int_contents(2);
  return request;
}

TEST_F(FrontendTest, KServeModelInferTypedAndRaw) {
  {
    grpc::ClientContext context;
    Auth(&context, "alice");
    inference::ModelInferResponse response;
    grpc::Status status =
        infer_->ModelInfer(&context, TextInfer("hello"), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.outputs_size(), 1);
    EXPECT_EQ(response.outputs(0).name(), "text_output");
    EXPECT_EQ(response.outputs(0).datatype(), "BYTES");
    EXPECT_EQ(response.outputs(0).contents().bytes_contents(0), "t0 t1 ");
    EXPECT_EQ(response.id(), "req-1");
  }
  {
    inference::ModelInferRequest request = TextInfer("hello");
    // Raw: 4-byte little-endian length, then the bytes; INT32 little-endian.
    for (auto& input : *request.mutable_inputs()) input.clear_contents();
    request.add_raw_input_contents(std::string("\x05\x00\x00\x00hello", 9));
    request.add_raw_input_contents(std::string("\x03\x00\x00\x00", 4));
    grpc::ClientContext context;
    Auth(&context, "alice");
    inference::ModelInferResponse response;
    grpc::Status status = infer_->ModelInfer(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.raw_output_contents_size(), 1);
    EXPECT_EQ(response.raw_output_contents(0),
              std::string("\x09\x00\x00\x00t0 t1 t2 ", 13));
  }
}

TEST_F(FrontendTest, KServeBadTensorsNameTheInput) {
  {
    auto request = TextInfer("x");
    request.mutable_inputs(1)->set_datatype("FP32");
    grpc::ClientContext context;
    Auth(&context, "alice");
    inference::ModelInferResponse response;
    grpc::Status status = infer_->ModelInfer(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("inputs[1] (max_tokens)"),
              std::string::npos)
        << status.error_message();
  }
  {
    auto request = TextInfer("x");
    request.mutable_inputs(0)->set_shape(0, 2);
    grpc::ClientContext context;
    Auth(&context, "alice");
    inference::ModelInferResponse response;
    grpc::Status status = infer_->ModelInfer(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("inputs[0] (text_input)"),
              std::string::npos)
        << status.error_message();
  }
  {
    auto request = TextInfer(std::string("\xff\xfe", 2));
    grpc::ClientContext context;
    Auth(&context, "alice");
    inference::ModelInferResponse response;
    grpc::Status status = infer_->ModelInfer(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("UTF-8"), std::string::npos)
        << status.error_message();
  }
  {
    auto request = TextInfer("x");
    (*request.mutable_parameters())["temperature"].set_double_param(-2);
    grpc::ClientContext context;
    Auth(&context, "alice");
    inference::ModelInferResponse response;
    grpc::Status status = infer_->ModelInfer(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(status.error_message().rfind("parameters.temperature:", 0), 0u)
        << status.error_message();
  }
}

TEST_F(FrontendTest, KServeStreamInferOneResponsePerToken) {
  grpc::ClientContext context;
  Auth(&context, "alice");
  auto stream = infer_->ModelStreamInfer(&context);
  ASSERT_TRUE(stream->Write(TextInfer("hello")));
  auto bad = TextInfer("x");
  bad.set_id("bad");
  bad.mutable_inputs(0)->set_datatype("INT32");
  ASSERT_TRUE(stream->Write(bad));
  stream->WritesDone();
  inference::ModelStreamInferResponse response;
  std::string text;
  int chunks = 0;
  int errors = 0;
  bool saw_final = false;
  while (stream->Read(&response)) {
    if (!response.error_message().empty()) {
      ++errors;
      EXPECT_EQ(response.infer_response().id(), "bad");
      continue;
    }
    ++chunks;
    text += response.infer_response().outputs(0).contents().bytes_contents(0);
    auto it =
        response.infer_response().parameters().find("triton_final_response");
    if (it != response.infer_response().parameters().end() &&
        it->second.bool_param()) {
      saw_final = true;
    }
  }
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_EQ(chunks, 2);
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(text, "t0 t1 ");
  EXPECT_TRUE(saw_final);
}

TEST_F(FrontendTest, KServeStreamWithGrpcErrorsEndsWithTheStatus) {
  grpc::ClientContext context;
  Auth(&context, "alice");
  context.AddMetadata("triton_grpc_error", "true");
  auto stream = infer_->ModelStreamInfer(&context);
  auto bad = TextInfer("x");
  bad.clear_inputs();
  ASSERT_TRUE(stream->Write(bad));
  stream->WritesDone();
  inference::ModelStreamInferResponse response;
  while (stream->Read(&response)) {
  }
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(FrontendTest, KServeReadinessAndMetadata) {
  {
    grpc::ClientContext context;
    inference::ServerReadyResponse response;
    ASSERT_TRUE(infer_->ServerReady(&context, {}, &response).ok());
    EXPECT_TRUE(response.ready());
  }
  {
    grpc::ClientContext context;
    Auth(&context, "alice");
    inference::ModelReadyRequest request;
    request.set_name("tiny");
    inference::ModelReadyResponse response;
    ASSERT_TRUE(infer_->ModelReady(&context, request, &response).ok());
    EXPECT_TRUE(response.ready());
  }
  {
    grpc::ClientContext context;
    Auth(&context, "alice");
    inference::ModelMetadataRequest request;
    request.set_name("tiny");
    inference::ModelMetadataResponse response;
    ASSERT_TRUE(infer_->ModelMetadata(&context, request, &response).ok());
    EXPECT_EQ(response.inputs(0).name(), "text_input");
    EXPECT_EQ(response.inputs(0).datatype(), "BYTES");
    EXPECT_EQ(response.outputs(0).name(), "text_output");
  }
  {
    grpc::ClientContext context;
    Auth(&context, "alice");  // generate only: no admin
    inference::RepositoryModelLoadRequest request;
    request.set_model_name("other");
    inference::RepositoryModelLoadResponse response;
    EXPECT_EQ(
        infer_->RepositoryModelLoad(&context, request, &response).error_code(),
        grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext context;
    Auth(&context, "root");
    inference::RepositoryModelLoadRequest request;
    request.set_model_name("other");
    inference::RepositoryModelLoadResponse response;
    grpc::Status status =
        infer_->RepositoryModelLoad(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    pool_->PollNow();
    EXPECT_EQ(pool_->Availability("other"), ModelAvailability::kReady);
  }
}

TEST_F(FrontendTest, ClientCancellationReachesTheWorker) {
  grpc::ClientContext context;
  Auth(&context, "alice");
  auto reader = generate_->GenerateStream(&context, Simple(60));
  hearth::v1::GenerateStreamResponse chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 100 && worker_->running_sequences() > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(worker_->running_sequences(), 0);
}

}  // namespace
}  // namespace hearth::gateway
