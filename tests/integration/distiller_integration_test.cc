// hearth-distiller end to end: the real binary, a tiny corpus and tokenizer
// built here, jobs watched to completion, a kill -9 mid-job and a restart that
// resumes, cancel keeping the checkpoint, and bad specs (bad hyper-parameters,
// explicit zeros, missing teacher, empty corpus, incompatible vocabularies)
// rejected with INVALID_ARGUMENT naming the field while the service stays up.
#include <grpcpp/grpcpp.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/testing/service_process.h"
#include "gtest/gtest.h"
#include "hearth/v1/distillation.grpc.pb.h"
#include "services/distiller/bpe_trainer.h"

namespace hearth {
namespace {

namespace fs = std::filesystem;
using hearth::v1::Job;

class DistillerIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ =
        ::testing::TempDir() + "/distiller_it_" + std::to_string(::getpid());
    fs::remove_all(root_);
    repo_ = root_ + "/models";
    work_ = root_ + "/work";
    fs::create_directories(repo_);
    // A small, repetitive English corpus: enough for a model to learn
    // something.
    corpus_ = root_ + "/corpus.txt";
    std::ofstream out(corpus_);
    const char* subjects[] = {"the king", "the people", "the prophet",
                              "the children"};
    const char* verbs[] = {"went up to", "spake unto", "came out of",
                           "dwelt in"};
    const char* places[] = {"the city", "the house of the LORD", "the land",
                            "the mountain"};
    for (int line = 0; line < 120; ++line) {
      for (int i = 0; i < 12; ++i) {
        int k = line * 12 + i;
        out << "And " << subjects[k % 4] << " " << verbs[(k / 4) % 4] << " "
            << places[(k / 16) % 4] << ". ";
      }
      out << "\n";
    }
    out.close();
    std::vector<std::string> docs;
    std::ifstream in(corpus_);
    for (std::string l; std::getline(in, l);) docs.push_back(l);
    std::vector<std::string_view> views(docs.begin(), docs.end());
    distiller::BpeTrainerOptions options;
    options.vocab_size = 320;
    auto vocab = distiller::TrainBpe(views, options);
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    ASSERT_TRUE(
        distiller::WriteTokenizer(*vocab, options, repo_ + "/tiny-tok").ok());
  }
  void TearDown() override { fs::remove_all(root_); }

  absl::StatusOr<std::unique_ptr<ServiceProcess>> StartService() {
    return ServiceProcess::Start(
        {.binary = ServiceBinary("hearth-distiller"),
         .args = {"--model_repository=" + repo_, "--work_dir=" + work_,
                  "--threads=1"},
         .metrics = false});
  }

  v1::DistillationSpec TrainSpec(const std::string& output, int steps) {
    v1::DistillationSpec spec;
    spec.set_method(v1::DISTILLATION_METHOD_TRAIN);
    spec.set_output_name(output);
    auto* s = spec.mutable_student();
    s->set_hidden_size(64);
    s->set_num_hidden_layers(2);
    s->set_num_attention_heads(4);
    s->set_num_key_value_heads(2);
    s->set_intermediate_size(128);
    spec.mutable_data()->set_text_file(corpus_);
    spec.mutable_data()->set_sequence_length(32);
    spec.mutable_data()->set_tokenizer("tiny-tok");
    auto* o = spec.mutable_optimizer();
    o->set_learning_rate(3e-3);
    o->set_total_steps(steps);
    o->set_batch_size(8);
    o->set_max_grad_norm(1.0);
    spec.set_seed(5);
    spec.set_checkpoint_every_steps(10);
    return spec;
  }

  // Watches until the job is terminal or `until` returns true for a snapshot.
  Job WatchUntil(v1::Distillation::Stub* stub, const std::string& id,
                 const std::function<bool(const Job&)>& until) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(240));
    v1::WatchJobRequest req;
    req.set_id(id);
    auto reader = stub->WatchJob(&ctx, req);
    Job job, last;
    while (reader->Read(&job)) {
      last = job;
      if (until && until(job)) {
        ctx.TryCancel();
        break;
      }
    }
    reader->Finish();
    return last;
  }

  std::string root_, repo_, work_, corpus_;
};

TEST_F(DistillerIntegrationTest, TrainKillResumeCancelAndValidation) {
  auto service = StartService();
  ASSERT_TRUE(service.ok()) << service.status();
  auto stub = v1::Distillation::NewStub((*service)->channel());

  // Bad specs: INVALID_ARGUMENT naming the field, through the real service.
  auto expect_invalid = [&](const v1::DistillationSpec& spec,
                            const std::string& field) {
    v1::CreateDistillationJobRequest req;
    *req.mutable_spec() = spec;
    grpc::ClientContext ctx;
    Job job;
    grpc::Status st = stub->CreateJob(&ctx, req, &job);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << field << ": " << st.error_message();
    EXPECT_NE(st.error_message().find(field), std::string::npos)
        << st.error_message() << " does not name " << field;
  };
  {
    v1::DistillationSpec spec = TrainSpec("bad", 10);
    spec.mutable_optimizer()->set_learning_rate(-1);
    expect_invalid(spec, "optimizer.learning_rate");
  }
  {
    v1::DistillationSpec spec = TrainSpec("bad", 10);
    spec.mutable_optimizer()->set_total_steps(0);  // Explicit zero steps.
    expect_invalid(spec, "optimizer.total_steps");
  }
  for (double t : {-2.0, 0.0}) {
    v1::DistillationSpec spec = TrainSpec("bad", 10);
    spec.set_temperature(t);
    expect_invalid(spec, "temperature");
  }
  for (double alpha : {-0.5, 1.5}) {
    v1::DistillationSpec spec = TrainSpec("bad", 10);
    spec.set_alpha(alpha);
    expect_invalid(spec, "alpha");
  }
  {
    v1::DistillationSpec spec;
    spec.set_method(v1::DISTILLATION_METHOD_SOFT_TARGET);
    spec.set_teacher_model("no-such-teacher");
    spec.set_output_name("x");
    spec.mutable_data()->set_text_file(corpus_);
    expect_invalid(spec, "teacher_model");
  }
  {
    std::ofstream(root_ + "/empty.txt").close();
    v1::DistillationSpec spec = TrainSpec("bad", 10);
    spec.mutable_data()->set_text_file(root_ + "/empty.txt");
    expect_invalid(spec, "data.text_file");
  }
  // Still serving after all of them.
  {
    grpc::ClientContext ctx;
    v1::ListJobsResponse jobs;
    ASSERT_TRUE(stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
    EXPECT_EQ(jobs.jobs_size(), 0);
  }

  // A long job, killed with SIGKILL after a checkpoint, resumes after restart.
  std::string id;
  {
    v1::CreateDistillationJobRequest req;
    *req.mutable_spec() = TrainSpec("tiny-lm", 400);
    grpc::ClientContext ctx;
    Job job;
    ASSERT_TRUE(stub->CreateJob(&ctx, req, &job).ok());
    id = job.id();
    EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  }
  Job seen = WatchUntil(stub.get(), id, [](const Job& j) {
    auto it = j.metrics().find("step");
    return it != j.metrics().end() && it->second >= 25;
  });
  ASSERT_EQ(seen.state(), v1::JOB_STATE_RUNNING);
  EXPECT_GT(seen.metrics().at("tokens_per_second"), 0);
  ASSERT_EQ((*service)->Stop(SIGKILL).value(), 128 + SIGKILL);
  const std::string ckpt =
      work_ + "/checkpoints/" + id + "/model/ckpt/state.json";
  ASSERT_TRUE(fs::exists(ckpt)) << ckpt;

  service = StartService();
  ASSERT_TRUE(service.ok()) << service.status();
  stub = v1::Distillation::NewStub((*service)->channel());
  Job done = WatchUntil(stub.get(), id, nullptr);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  const std::string out = repo_ + "/tiny-lm";
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));
  std::ifstream report(out + "/distill_report.json");
  std::string text((std::istreambuf_iterator<char>(report)),
                   std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"resumed\": true"), std::string::npos) << text;
  EXPECT_EQ(done.artifacts().at("model"), out);

  // Incompatible vocabularies: KD from tiny-lm with another tokenizer.
  {
    std::vector<std::string> docs = {
        "Zebras quickly jumped over fuzzy wizards while jovial quartz vexed "
        "them, again and again."};
    std::vector<std::string_view> views(docs.begin(), docs.end());
    distiller::BpeTrainerOptions options;
    options.vocab_size = 280;
    auto vocab = distiller::TrainBpe(views, options);
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    ASSERT_TRUE(
        distiller::WriteTokenizer(*vocab, options, repo_ + "/other-tok").ok());
    v1::DistillationSpec spec;
    spec.set_method(v1::DISTILLATION_METHOD_SOFT_TARGET);
    spec.set_teacher_model("tiny-lm");
    spec.set_output_name("x");
    spec.mutable_data()->set_text_file(corpus_);
    spec.mutable_data()->set_tokenizer("other-tok");
    expect_invalid(spec, "data.tokenizer: incompatible vocabularies");
  }

  // Cancel: stops within a step, ends CANCELLED, keeps the checkpoint.
  {
    v1::CreateDistillationJobRequest req;
    *req.mutable_spec() = TrainSpec("tiny-cancelled", 5000);
    grpc::ClientContext ctx;
    Job job;
    ASSERT_TRUE(stub->CreateJob(&ctx, req, &job).ok());
    id = job.id();
  }
  WatchUntil(stub.get(), id, [](const Job& j) {
    auto it = j.metrics().find("step");
    return it != j.metrics().end() && it->second >= 3;
  });
  {
    grpc::ClientContext ctx;
    v1::CancelJobRequest req;
    req.set_id(id);
    Job job;
    ASSERT_TRUE(stub->CancelJob(&ctx, req, &job).ok());
  }
  Job cancelled = WatchUntil(stub.get(), id, nullptr);
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(
      fs::exists(work_ + "/checkpoints/" + id + "/model/ckpt/state.json"));

  // Finished jobs are listed.
  grpc::ClientContext ctx;
  v1::ListJobsRequest list;
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(stub->ListJobs(&ctx, list, &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 2);
  EXPECT_EQ((*service)->Stop(SIGTERM).value(), 0);
}

}  // namespace
}  // namespace hearth
