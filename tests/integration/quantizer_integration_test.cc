// hearth-quantizer end to end: the real binary over gRPC on a tiny random
// Llama. A GPTQ job is watched layer by layer, the service is killed with
// SIGKILL mid-job and restarted, and the job is run again to completion (never
// lost, never reported done early); the output folder loads and runs. A
// cancelled job ends CANCELLED. Each bad input is INVALID_ARGUMENT naming the
// field, and the service keeps serving. `hearth quantize` drives a job to the
// end against the same service, and with --local against its own.
#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/model/model_loader.h"
#include "common/testing/service_process.h"
#include "gtest/gtest.h"
#include "hearth/v1/quantization.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace hearth {
namespace {

namespace fs = std::filesystem;
using hearth::v1::Job;

formats::LlamaConfig TinyConfig(int64_t hidden, int64_t heads,
                                int64_t intermediate, int64_t layers) {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 256;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = heads / 2;
  c.head_dim = hidden / heads;
  c.max_position_embeddings = 256;
  return c;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

class QuantizerIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ =
        ::testing::TempDir() + "/quantizer_it_" + std::to_string(::getpid());
    fs::remove_all(root_);
    repo_ = root_ + "/models";
    work_ = root_ + "/work";
    fs::create_directories(repo_);
    // Big enough that GPTQ over 6 layers takes a few seconds on a loaded
    // 2-core machine, so the kill lands mid-job.
    auto m = model::MakeRandomModel(TinyConfig(256, 4, 512, 6), 11);
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_TRUE(model::SaveModel(**m, repo_ + "/tiny").ok());
    // Calibration text (the random model has no tokenizer: bytes are ids).
    text_ = root_ + "/calib.txt";
    std::string text;
    for (int i = 0; i < 400; ++i) {
      text += "The quick brown fox " + std::to_string(i * 7919 % 1000) +
              " jumps over the lazy dog; sphinx of black quartz, judge my "
              "vow.\n";
    }
    WriteFile(text_, text);
  }
  void TearDown() override { fs::remove_all(root_); }

  absl::StatusOr<std::unique_ptr<ServiceProcess>> StartService() {
    return ServiceProcess::Start(
        {.binary = ServiceBinary("hearth-quantizer"),
         .args = {"--model_repo=" + repo_, "--work_dir=" + work_,
                  "--threads=1"},
         .metrics = false});
  }

  v1::QuantizationSpec GptqSpec(const std::string& output) {
    v1::QuantizationSpec spec;
    spec.set_source_model("tiny");
    spec.set_output_name(output);
    spec.set_method(v1::QUANTIZATION_METHOD_GPTQ);
    spec.set_bits(4);
    spec.set_group_size(64);
    spec.mutable_calibration()->set_text_file(text_);
    spec.mutable_calibration()->set_num_samples(48);
    spec.mutable_calibration()->set_sequence_length(128);
    spec.mutable_gptq()->set_act_order(true);
    return spec;
  }

  grpc::Status Create(v1::Quantization::Stub* stub,
                      const v1::QuantizationSpec& spec, Job* job) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(60));
    v1::CreateQuantizationJobRequest req;
    *req.mutable_spec() = spec;
    return stub->CreateJob(&ctx, req, job);
  }

  // Watches until the job is terminal or `until` is true for a snapshot;
  // `seen` collects every snapshot's message.
  Job WatchUntil(v1::Quantization::Stub* stub, const std::string& id,
                 const std::function<bool(const Job&)>& until,
                 std::vector<std::string>* seen = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(400));
    v1::WatchJobRequest req;
    req.set_id(id);
    auto reader = stub->WatchJob(&ctx, req);
    Job job, last;
    while (reader->Read(&job)) {
      last = job;
      if (seen) seen->push_back(job.message());
      if (until && until(job)) {
        ctx.TryCancel();
        break;
      }
    }
    reader->Finish();
    return last;
  }

  Job Get(v1::Quantization::Stub* stub, const std::string& id) {
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    req.set_id(id);
    Job job;
    EXPECT_TRUE(stub->GetJob(&ctx, req, &job).ok());
    return job;
  }

  std::string root_, repo_, work_, text_;
};

// "layer 3/6: ..." -> 3; -1 when the message is not a layer message.
int LayerOf(const std::string& message) {
  int layer = -1, total = 0;
  if (std::sscanf(message.c_str(), "layer %d/%d", &layer, &total) == 2) {
    return layer;
  }
  return -1;
}

TEST_F(QuantizerIntegrationTest, GptqSurvivesKillAndCancelEndsCancelled) {
  auto service = StartService();
  ASSERT_TRUE(service.ok()) << service.status();
  auto stub = v1::Quantization::NewStub((*service)->channel());

  Job job;
  ASSERT_TRUE(Create(stub.get(), GptqSpec("tiny-gptq"), &job).ok());
  const std::string id = job.id();
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  // Per-layer progress streams; kill once layer 2 is under way.
  std::vector<std::string> messages;
  Job seen = WatchUntil(
      stub.get(), id, [](const Job& j) { return LayerOf(j.message()) >= 2; },
      &messages);
  ASSERT_EQ(seen.state(), v1::JOB_STATE_RUNNING) << seen.message();
  ASSERT_GE(LayerOf(seen.message()), 2) << seen.message();
  EXPECT_GT(seen.progress(), 0.05);
  EXPECT_LT(seen.progress(), 0.8);
  int layers_seen = 0;
  for (const std::string& m : messages) layers_seen += LayerOf(m) >= 0;
  EXPECT_GE(layers_seen, 2);
  ASSERT_EQ((*service)->Stop(SIGKILL).value(), 128 + SIGKILL);
  // Nothing that looks finished was left behind.
  EXPECT_FALSE(fs::exists(repo_ + "/tiny-gptq/config.json"));

  service = StartService();
  ASSERT_TRUE(service.ok()) << service.status();
  stub = v1::Quantization::NewStub((*service)->channel());
  // The job is still there and not done: it is queued or running again.
  Job after_restart = Get(stub.get(), id);
  EXPECT_TRUE(after_restart.state() == v1::JOB_STATE_QUEUED ||
              after_restart.state() == v1::JOB_STATE_RUNNING)
      << v1::JobState_Name(after_restart.state());
  messages.clear();
  Job done = WatchUntil(stub.get(), id, nullptr, &messages);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_DOUBLE_EQ(done.progress(), 1.0);
  // It ran its layers again after the restart (re-run, not marked done).
  int rerun_layers = 0;
  for (const std::string& m : messages) rerun_layers += LayerOf(m) >= 0;
  EXPECT_GE(rerun_layers, 1);
  const std::string out = repo_ + "/tiny-gptq";
  EXPECT_EQ(done.artifacts().at("model"), out);
  nlohmann::json config = nlohmann::json::parse(ReadFile(out + "/config.json"));
  EXPECT_EQ(config["quantization_config"]["quant_method"], "gptq");
  EXPECT_EQ(config["quantization_config"]["bits"], 4);
  EXPECT_EQ(config["quantization_config"]["group_size"], 64);
  // The output loads and runs, close to the float model.
  {
    torch::NoGradGuard no_grad;
    auto q = model::LoadModel(out);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_EQ((*q)->quantization(), "gptq-int4");
    auto f = model::LoadModel(repo_ + "/tiny");
    ASSERT_TRUE(f.ok()) << f.status();
    at::Tensor ids = torch::arange(1, 33, torch::kLong).unsqueeze(0);
    at::Tensor lq = (*q)->Forward(ids).logits;
    at::Tensor lf = (*f)->Forward(ids).logits;
    ASSERT_EQ(lq.sizes(), lf.sizes());
    const double rel = ((lq - lf).norm() / lf.norm()).item<double>();
    EXPECT_LT(rel, 0.5) << "quantized logits far from the float model";
    EXPECT_TRUE(torch::isfinite(lq).all().item<bool>());
  }

  // Cancel mid-job: ends CANCELLED and writes no output.
  ASSERT_TRUE(Create(stub.get(), GptqSpec("tiny-cancelled"), &job).ok());
  const std::string cancel_id = job.id();
  WatchUntil(stub.get(), cancel_id,
             [](const Job& j) { return LayerOf(j.message()) >= 1; });
  {
    grpc::ClientContext ctx;
    v1::CancelJobRequest req;
    req.set_id(cancel_id);
    Job c;
    ASSERT_TRUE(stub->CancelJob(&ctx, req, &c).ok());
  }
  Job cancelled = WatchUntil(stub.get(), cancel_id, nullptr);
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(fs::exists(repo_ + "/tiny-cancelled/config.json"));

  grpc::ClientContext ctx;
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 2);
  EXPECT_EQ((*service)->Stop(SIGTERM).value(), 0);
}

TEST_F(QuantizerIntegrationTest, BadInputsAreInvalidArgumentAndServiceStaysUp) {
  // Broken sources, each a copy of "tiny" with one thing wrong.
  const std::string tiny = repo_ + "/tiny";
  const std::string weights = ReadFile(tiny + "/model.safetensors");
  ASSERT_GT(weights.size(), 1000u);
  auto copy = [&](const std::string& name) {
    fs::copy(tiny, repo_ + "/" + name, fs::copy_options::recursive);
    return repo_ + "/" + name;
  };
  WriteFile(copy("truncated") + "/model.safetensors",
            weights.substr(0, weights.size() / 2));
  {
    // A header where two tensors of different sizes swapped data_offsets:
    // every offset is in range, but they no longer fit the shapes.
    uint64_t header_len = 0;
    std::memcpy(&header_len, weights.data(), 8);
    nlohmann::json header =
        nlohmann::json::parse(weights.substr(8, header_len));
    ASSERT_LE(header.dump().size(), header_len);
    nlohmann::json* first = nullptr;
    for (auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      if (first == nullptr) {
        first = &entry;
      } else if (entry["shape"] != (*first)["shape"]) {
        std::swap(entry["data_offsets"], (*first)["data_offsets"]);
        break;
      }
    }
    std::string h = header.dump();
    ASSERT_LE(h.size(), header_len);
    h.resize(header_len, ' ');
    WriteFile(copy("lying") + "/model.safetensors",
              weights.substr(0, 8) + h + weights.substr(8 + header_len));
  }
  {
    nlohmann::json config =
        nlohmann::json::parse(ReadFile(tiny + "/config.json"));
    config["model_type"] = "gpt2";
    config["architectures"] = {"GPT2LMHeadModel"};
    WriteFile(copy("gpt2") + "/config.json", config.dump(2));
  }
  {
    // GGUF v3 magic and counts that promise one tensor and one key, then
    // nothing.
    std::string g = "GGUF";
    const uint32_t version = 3;
    const uint64_t tensors = 1, kvs = 1;
    g.append(reinterpret_cast<const char*>(&version), 4);
    g.append(reinterpret_cast<const char*>(&tensors), 8);
    g.append(reinterpret_cast<const char*>(&kvs), 8);
    g.append("\x14\0\0\0\0\0\0\0general.arch", 20);
    WriteFile(repo_ + "/truncated.gguf", g);
  }
  {
    // Rows of 96: group size 64 does not divide them.
    auto m = model::MakeRandomModel(TinyConfig(96, 2, 192, 1), 3);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(model::SaveModel(**m, repo_ + "/rows96").ok());
  }
  WriteFile(root_ + "/empty.txt", "");

  auto service = StartService();
  ASSERT_TRUE(service.ok()) << service.status();
  auto stub = v1::Quantization::NewStub((*service)->channel());

  struct Case {
    std::string what, field;
    std::function<void(v1::QuantizationSpec*)> edit;
  };
  const std::vector<Case> cases = {
      {"truncated safetensors", "source_model",
       [](auto* s) { s->set_source_model("truncated"); }},
      {"safetensors header lies about offsets", "data_offsets",
       [](auto* s) { s->set_source_model("lying"); }},
      {"truncated GGUF", "source_model",
       [](auto* s) { s->set_source_model("truncated.gguf"); }},
      {"non-Llama config", "source_model",
       [](auto* s) { s->set_source_model("gpt2"); }},
      {"group size does not divide the row", "group_size",
       [](auto* s) {
         s->set_source_model("rows96");
         s->set_group_size(64);
       }},
      {"bits=3", "bits", [](auto* s) { s->set_bits(3); }},
      {"empty calibration text", "calibration",
       [&](auto* s) {
         s->mutable_calibration()->set_text_file(root_ + "/empty.txt");
       }},
      {"no method", "method",
       [](auto* s) { s->set_method(v1::QUANTIZATION_METHOD_UNSPECIFIED); }},
  };
  for (const Case& c : cases) {
    v1::QuantizationSpec spec = GptqSpec("never");
    c.edit(&spec);
    Job job;
    grpc::Status st = Create(stub.get(), spec, &job);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.what << ": " << st.error_code() << " " << st.error_message();
    EXPECT_NE(st.error_message().find(c.field), std::string::npos)
        << c.what << ": \"" << st.error_message() << "\" does not name "
        << c.field;
    ASSERT_TRUE((*service)->Running()) << c.what << " crashed the service";
  }
  // The truncated file's message says where it ends.
  {
    v1::QuantizationSpec spec = GptqSpec("never");
    spec.set_source_model("truncated");
    Job job;
    grpc::Status st = Create(stub.get(), spec, &job);
    EXPECT_NE(st.error_message().find("offset"), std::string::npos)
        << st.error_message();
  }
  // Unknown model: NOT_FOUND. Nothing was queued, and it still works.
  {
    v1::QuantizationSpec spec = GptqSpec("never");
    spec.set_source_model("no-such-model");
    Job job;
    EXPECT_EQ(Create(stub.get(), spec, &job).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  grpc::ClientContext ctx;
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 0);
  v1::QuantizationSpec ok = GptqSpec("tiny-rtn");
  ok.set_method(v1::QUANTIZATION_METHOD_RTN);
  Job job;
  ASSERT_TRUE(Create(stub.get(), ok, &job).ok());
  EXPECT_EQ(WatchUntil(stub.get(), job.id(), nullptr).state(),
            v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ((*service)->Stop(SIGTERM).value(), 0);
}

TEST_F(QuantizerIntegrationTest, CliQuantizesWithProgressAndTable) {
  auto service = StartService();
  ASSERT_TRUE(service.ok()) << service.status();
  const std::string cli = ServiceBinary("hearth");
  const std::string common =
      " quantize --model=tiny --method=rtn --bits=4 --group_size=64"
      " --calibration_file=" +
      text_ + " --num_samples=8 --sequence_length=64 --evaluate";
  CommandResult r =
      RunCommand(cli + common + " --output_name=cli-rtn" +
                 " --addr=" + (*service)->grpc_address() + " 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("JOB_STATE_SUCCEEDED"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("[" + std::string(30, '#') + "] 100%"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("| fp32 |"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("perplexity_after"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(repo_ + "/cli-rtn/quant_report.json"));
  EXPECT_EQ((*service)->Stop(SIGTERM).value(), 0);

  // --local: no service running; the CLI runs its own.
  r = RunCommand(cli + common + " --output_name=cli-local --local" +
                 " --model_repository=" + repo_ + " --quantizer_binary=" +
                 ServiceBinary("hearth-quantizer") + " 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(repo_ + "/cli-local/config.json")) << r.output;

  // A bad flag is an error naming it, before anything is sent.
  r = RunCommand(cli + " quantize --model=tiny --method=nope 2>&1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("--method"), std::string::npos) << r.output;
  r = RunCommand(cli + common + " --bits=3 --addr=127.0.0.1:1 2>&1");
  EXPECT_NE(r.exit_code, 0);
}

}  // namespace
}  // namespace hearth
