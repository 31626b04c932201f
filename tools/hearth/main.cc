// `hearth`: the command-line client for a hearth stack (and, as later issues
// land, the offline tool for training, quantizing and exporting models).
//
//   hearth health --addr=localhost:8001
//   hearth generate --model=tiny-student "Once upon a time"
#include <unistd.h>  // train/distill --local: exec

#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/grpc/health_client.h"
#include "common/grpc/status_conversion.h"
#include "google/protobuf/util/json_util.h"  // train / distill
#include "grpcpp/grpcpp.h"
#include "hearth/v1/distillation.grpc.pb.h"  // train / distill
#include "hearth/v1/generation.grpc.pb.h"
#include "services/gateway/api_keys.h"
#include "tools/hearth/generate_command.h"
#include "tools/hearth/init_model_command.h"
#include "tools/hearth/quantize_command.h"

ABSL_FLAG(std::string, addr, "localhost:8001", "gateway address (host:port)");
ABSL_FLAG(std::string, api_key, "",
          "API key; defaults to the HEARTH_API_KEY environment variable");
ABSL_FLAG(std::string, model, "", "model name");
ABSL_FLAG(int32_t, max_new_tokens, 64, "generate: new tokens at most");
ABSL_FLAG(double, temperature, 0, "generate: 0 = greedy");
ABSL_FLAG(int64_t, seed, -1, "generate: sampling seed (-1 = unset)");
ABSL_FLAG(bool, stream, true, "generate: print tokens as they arrive");
ABSL_FLAG(double, timeout, 30, "seconds to wait (health: until SERVING)");
ABSL_FLAG(std::string, keys_file, "", "keys create: the gateway's key file");
ABSL_FLAG(std::string, id, "", "keys create: the new key's id");
ABSL_FLAG(std::vector<std::string>, scopes, {"generate"},
          "keys create: generate, admin, quantize, distill");
ABSL_FLAG(std::vector<std::string>, models, {"*"},
          "keys create: models the key may use (* = all)");
ABSL_FLAG(double, requests_per_second, 0, "keys create: 0 = unlimited");
ABSL_FLAG(int64_t, burst, 0, "keys create: requests at once (0 = default)");
ABSL_FLAG(int64_t, tokens_per_minute, 0, "keys create: 0 = unlimited");
ABSL_FLAG(int64_t, max_concurrent_streams, 0, "keys create: 0 = unlimited");
ABSL_FLAG(int32_t, max_priority, 1,
          "keys create: highest priority level the key may ask for (1 = top)");

namespace {

struct Command {
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};

std::shared_ptr<grpc::Channel> Connect() {
  return grpc::CreateChannel(absl::GetFlag(FLAGS_addr),
                             grpc::InsecureChannelCredentials());
}

void AddAuth(grpc::ClientContext* context) {
  std::string key = absl::GetFlag(FLAGS_api_key);
  if (key.empty()) {
    const char* env = std::getenv("HEARTH_API_KEY");
    if (env) key = env;
  }
  if (!key.empty()) context->AddMetadata("authorization", "Bearer " + key);
  context->set_deadline(absl::ToChronoTime(
      absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_timeout))));
}

int Fail(const grpc::Status& status) {
  std::cerr << "hearth: " << hearth::FromGrpcStatus(status) << "\n";
  return 1;
}

int RunHealth(const std::vector<std::string>&) {
  absl::Status status = hearth::WaitForServing(
      Connect(), absl::Seconds(absl::GetFlag(FLAGS_timeout)));
  if (!status.ok()) {
    std::cerr << absl::GetFlag(FLAGS_addr) << ": " << status << "\n";
    return 1;
  }
  std::cout << absl::GetFlag(FLAGS_addr) << ": SERVING\n";
  return 0;
}

int RunModels(const std::vector<std::string>&) {
  auto stub = hearth::v1::Generation::NewStub(Connect());
  grpc::ClientContext context;
  AddAuth(&context);
  hearth::v1::ListModelsResponse response;
  grpc::Status status =
      stub->ListModels(&context, hearth::v1::ListModelsRequest(), &response);
  if (!status.ok()) return Fail(status);
  for (const auto& model : response.models()) {
    std::cout << model.name() << "\t"
              << hearth::v1::ModelState_Name(model.state()) << "\tctx "
              << model.context_length() << "\t" << model.quantization() << "\n";
  }
  return 0;
}

hearth::v1::GenerateRequest BuildGenerateRequest(
    const std::vector<std::string>& args) {
  hearth::v1::GenerateRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_prompt(hearth::cli::GeneratePrompt(args));
  auto* sampling = request.mutable_sampling();
  hearth::cli::SetRemoteSampling(&request);
  sampling->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  sampling->set_temperature(absl::GetFlag(FLAGS_temperature));
  if (absl::GetFlag(FLAGS_seed) >= 0)
    sampling->set_seed(absl::GetFlag(FLAGS_seed));
  return request;
}

int RunGenerate(const std::vector<std::string>& args) {
  if (hearth::cli::GenerateIsLocal())
    return hearth::cli::RunLocalGenerate(args);
  if (hearth::cli::GeneratePrompt(args).empty()) {
    std::cerr << "hearth generate: give the prompt as arguments\n";
    return 2;
  }
  auto stub = hearth::v1::Generation::NewStub(Connect());
  grpc::ClientContext context;
  AddAuth(&context);
  hearth::v1::GenerateRequest request = BuildGenerateRequest(args);
  if (!absl::GetFlag(FLAGS_stream)) {
    hearth::v1::GenerateResponse response;
    grpc::Status status = stub->Generate(&context, request, &response);
    if (!status.ok()) return Fail(status);
    std::cout << response.text() << "\n";
    return 0;
  }
  auto reader = stub->GenerateStream(&context, request);
  hearth::v1::GenerateStreamResponse chunk;
  while (reader->Read(&chunk)) {
    std::cout << chunk.text() << std::flush;
    if (chunk.finish_reason() != hearth::v1::FINISH_REASON_UNSPECIFIED) {
      std::cout << "\n[" << hearth::v1::FinishReason_Name(chunk.finish_reason())
                << ", " << chunk.usage().completion_tokens() << " tokens, "
                << chunk.timing().total_seconds() << " s]\n";
    }
  }
  grpc::Status status = reader->Finish();
  return status.ok() ? 0 : Fail(status);
}

int RunTokenize(const std::vector<std::string>& args) {
  auto stub = hearth::v1::Generation::NewStub(Connect());
  grpc::ClientContext context;
  AddAuth(&context);
  hearth::v1::TokenizeRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_text(absl::StrJoin(args, " "));
  hearth::v1::TokenizeResponse response;
  grpc::Status status = stub->Tokenize(&context, request, &response);
  if (!status.ok()) return Fail(status);
  std::cout << absl::StrJoin(response.token_ids(), " ") << "\n";
  return 0;
}

// `hearth keys create`: adds a key to the gateway's key file (its SHA-256
// only) and prints the secret, the one time it is shown.
int RunKeys(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0] != "create") {
    std::cerr << "usage: hearth keys create --keys_file=F --id=ID "
                 "[--scopes=generate,admin] [--models=m1,m2] "
                 "[--requests_per_second=R --burst=B --tokens_per_minute=T "
                 "--max_concurrent_streams=S --max_priority=P]\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_keys_file).empty() ||
      absl::GetFlag(FLAGS_id).empty()) {
    std::cerr << "hearth keys create: --keys_file and --id are required\n";
    return 2;
  }
  hearth::gateway::ApiKey key;
  key.id = absl::GetFlag(FLAGS_id);
  key.scopes = absl::GetFlag(FLAGS_scopes);
  key.models = absl::GetFlag(FLAGS_models);
  key.limits.requests_per_second = absl::GetFlag(FLAGS_requests_per_second);
  key.limits.burst = absl::GetFlag(FLAGS_burst);
  key.limits.tokens_per_minute = absl::GetFlag(FLAGS_tokens_per_minute);
  key.limits.max_concurrent_streams =
      absl::GetFlag(FLAGS_max_concurrent_streams);
  key.max_priority = absl::GetFlag(FLAGS_max_priority);
  auto secret =
      hearth::gateway::CreateApiKey(absl::GetFlag(FLAGS_keys_file), key);
  if (!secret.ok()) {
    std::cerr << "hearth keys create: " << secret.status().message() << "\n";
    return 1;
  }
  std::cerr << "added key '" << key.id << "' to "
            << absl::GetFlag(FLAGS_keys_file)
            << " (a running gateway picks it up within seconds); the secret "
               "below is shown only now:\n";
  std::cout << *secret << "\n";
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------
// `hearth train` / `hearth distill` (hearth-distiller). The job is a
// DistillationSpec as JSON (proto field names); `train` forces the TRAIN
// method. Without --local the spec goes to hearth.v1.Distillation at --addr and
// the job is watched with a progress bar; with --local it runs in-process
// through hearth-distill-local (kept out of this binary so the CLI does not
// link libtorch), which resumes from --work_dir if interrupted.

ABSL_FLAG(std::string, spec, "", "train/distill: job spec JSON file");
ABSL_FLAG(
    bool, local, false,
    "train/distill: run here (hearth-distill-local) instead of submitting");
ABSL_FLAG(std::string, model_repository, "models",
          "train/distill --local: model repository folder");
ABSL_FLAG(
    std::string, work_dir, "",
    "train/distill --local: checkpoint folder (default models/.work/<output>)");

namespace {

std::string ReadSpecFile() {
  std::FILE* f = std::fopen(absl::GetFlag(FLAGS_spec).c_str(), "rb");
  if (f == nullptr) return "";
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;)
    text.append(buf, n);
  std::fclose(f);
  return text;
}

std::string ProgressBar(double fraction) {
  const int width = 30;
  int filled = static_cast<int>(fraction * width + 0.5);
  if (filled < 0) filled = 0;
  if (filled > width) filled = width;
  return "[" + std::string(filled, '#') + std::string(width - filled, '.') +
         "]";
}

int RunDistillLocal(const std::string& command) {
  // hearth-distill-local next to this binary's build tree, else on PATH.
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string bin = "hearth-distill-local";
  if (n > 0) {
    std::string dir(self, n);
    dir = dir.substr(0, dir.rfind('/'));
    for (const std::string candidate :
         {dir + "/hearth-distill-local",
          dir + "/../../services/distiller/hearth-distill-local"}) {
      if (access(candidate.c_str(), X_OK) == 0) bin = candidate;
    }
  }
  std::string spec_path = absl::GetFlag(FLAGS_spec);
  if (command == "train") {
    // Force the method without making the user write it.
    std::string text = ReadSpecFile();
    hearth::v1::DistillationSpec spec;
    if (!google::protobuf::util::JsonStringToMessage(text, &spec).ok()) {
      std::cerr << "hearth train: --spec is not a DistillationSpec JSON\n";
      return 2;
    }
    spec.set_method(hearth::v1::DISTILLATION_METHOD_TRAIN);
    std::string json;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(spec, &json, options);
    spec_path = "/tmp/hearth-train-" + std::to_string(getpid()) + ".json";
    std::FILE* f = std::fopen(spec_path.c_str(), "wb");
    if (f == nullptr) return 1;
    std::fwrite(json.data(), 1, json.size(), f);
    std::fclose(f);
  }
  std::vector<std::string> argv_s = {
      bin, "run", "--spec=" + spec_path,
      "--model_repository=" + absl::GetFlag(FLAGS_model_repository)};
  if (!absl::GetFlag(FLAGS_work_dir).empty()) {
    argv_s.push_back("--work_dir=" + absl::GetFlag(FLAGS_work_dir));
  }
  std::vector<char*> argv_c;
  for (auto& a : argv_s) argv_c.push_back(a.data());
  argv_c.push_back(nullptr);
  execvp(argv_c[0], argv_c.data());
  std::cerr << "hearth " << command << " --local: cannot run " << bin << "\n";
  return 1;
}

int RunDistillCommand(const std::string& command) {
  if (absl::GetFlag(FLAGS_spec).empty()) {
    std::cerr << "usage: hearth " << command
              << " --spec=job.json [--local [--model_repository=models "
                 "--work_dir=W]] [--addr=host:port]\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_local)) return RunDistillLocal(command);
  hearth::v1::CreateDistillationJobRequest request;
  if (!google::protobuf::util::JsonStringToMessage(ReadSpecFile(),
                                                   request.mutable_spec())
           .ok()) {
    std::cerr << "hearth " << command
              << ": --spec is not a DistillationSpec JSON\n";
    return 2;
  }
  if (command == "train") {
    request.mutable_spec()->set_method(hearth::v1::DISTILLATION_METHOD_TRAIN);
  }
  auto stub = hearth::v1::Distillation::NewStub(Connect());
  hearth::v1::Job job;
  {
    grpc::ClientContext context;
    AddAuth(&context);
    grpc::Status status = stub->CreateJob(&context, request, &job);
    if (!status.ok()) return Fail(status);
  }
  std::cerr << "job " << job.id() << " queued\n";
  grpc::ClientContext context;
  AddAuth(&context);
  hearth::v1::WatchJobRequest watch;
  watch.set_id(job.id());
  auto reader = stub->WatchJob(&context, watch);
  while (reader->Read(&job)) {
    std::string line = absl::StrCat("\r", ProgressBar(job.progress()), " ",
                                    static_cast<int>(job.progress() * 100),
                                    "% ", job.message());
    for (const char* key :
         {"loss", "kd_loss", "tokens_per_second", "eta_seconds"}) {
      auto it = job.metrics().find(key);
      if (it != job.metrics().end()) {
        absl::StrAppend(&line, " ", key, "=", static_cast<float>(it->second));
      }
    }
    std::cerr << line << "\033[K" << std::flush;
  }
  std::cerr << "\n";
  grpc::Status status = reader->Finish();
  if (!status.ok()) return Fail(status);
  std::cout << hearth::v1::JobState_Name(job.state()) << "\n";
  for (const auto& [role, path] : job.artifacts())
    std::cout << role << ": " << path << "\n";
  if (!job.error().empty()) std::cout << "error: " << job.error() << "\n";
  return job.state() == hearth::v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

int RunTrain(const std::vector<std::string>&) {
  return RunDistillCommand("train");
}
int RunDistill(const std::vector<std::string>&) {
  return RunDistillCommand("distill");
}

}  // namespace
// --------------------------------------------------------------- end
// train/distill

namespace {

const std::map<std::string, Command>& Commands() {
  static const auto* commands = new std::map<std::string, Command>{
      {"health",
       {"wait until --addr reports SERVING (grpc.health.v1)", RunHealth}},
      {"models", {"list the models the gateway serves", RunModels}},
      {"generate", {hearth::cli::kGenerateSummary, RunGenerate}},
      {"init-model",
       {hearth::cli::kInitModelSummary, hearth::cli::RunInitModel}},
      {"tokenize",
       {"show token ids: hearth tokenize --model=M <text...>", RunTokenize}},
      {"keys",
       {"hearth keys create --keys_file=F --id=ID --scopes=generate,... "
        "(prints the new secret once)",
        RunKeys}},
      {"train",
       {"train a model: hearth train --spec=job.json [--local]", RunTrain}},
      {"distill",
       {"distill a student: hearth distill --spec=job.json [--local]",
        RunDistill}},
      {"quantize",
       {"quantize a model: hearth quantize --model=M --method=gptq --bits=4 "
        "[--local]",
        hearth::cli::RunQuantize}},
  };
  return *commands;
}

std::string Usage() {
  std::string usage = "hearth <command> [flags] [args]\n\ncommands:\n";
  for (const auto& [name, command] : Commands()) {
    absl::StrAppend(&usage, "  ", name,
                    std::string(name.size() < 11 ? 12 - name.size() : 1, ' '),
                    command.summary, "\n");
  }
  absl::StrAppend(&usage,
                  "\n"
                  "Run `hearth --helpfull` for "
                  "every flag.");
  return usage;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(Usage());
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() < 2) {
    std::cout << Usage() << "\n";
    return rest.size() < 2 && argc > 1 ? 2 : 0;
  }
  const std::string name = rest[1];
  auto it = Commands().find(name);
  if (it == Commands().end()) {
    std::cerr << "hearth: unknown command \"" << name << "\"\n\n"
              << Usage() << "\n";
    return 2;
  }
  std::vector<std::string> args(rest.begin() + 2, rest.end());
  return it->second.run(args);
}
