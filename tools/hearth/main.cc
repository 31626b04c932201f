// `hearth`: the command-line client for a hearth stack (and, as later issues
// land, the offline tool for training, quantizing and exporting models).
//
//   hearth health --addr=localhost:8001
//   hearth generate --model=tiny-student "Once upon a time"
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
#include "grpcpp/grpcpp.h"
#include "hearth/v1/generation.grpc.pb.h"

ABSL_FLAG(std::string, addr, "localhost:8001", "gateway address (host:port)");
ABSL_FLAG(std::string, api_key, "",
          "API key; defaults to the HEARTH_API_KEY environment variable");
ABSL_FLAG(std::string, model, "", "model name");
ABSL_FLAG(int32_t, max_new_tokens, 64, "generate: new tokens at most");
ABSL_FLAG(double, temperature, 0, "generate: 0 = greedy");
ABSL_FLAG(int64_t, seed, -1, "generate: sampling seed (-1 = unset)");
ABSL_FLAG(bool, stream, true, "generate: print tokens as they arrive");
ABSL_FLAG(double, timeout, 30, "seconds to wait (health: until SERVING)");

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
  request.set_prompt(absl::StrJoin(args, " "));
  auto* sampling = request.mutable_sampling();
  sampling->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  sampling->set_temperature(absl::GetFlag(FLAGS_temperature));
  if (absl::GetFlag(FLAGS_seed) >= 0)
    sampling->set_seed(absl::GetFlag(FLAGS_seed));
  return request;
}

int RunGenerate(const std::vector<std::string>& args) {
  if (args.empty()) {
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

const std::map<std::string, Command>& Commands() {
  static const auto* commands = new std::map<std::string, Command>{
      {"health",
       {"wait until --addr reports SERVING (grpc.health.v1)", RunHealth}},
      {"models", {"list the models the gateway serves", RunModels}},
      {"generate",
       {"generate text: hearth generate --model=M <prompt...>", RunGenerate}},
      {"tokenize",
       {"show token ids: hearth tokenize --model=M <text...>", RunTokenize}},
  };
  return *commands;
}

std::string Usage() {
  std::string usage = "hearth <command> [flags] [args]\n\ncommands:\n";
  for (const auto& [name, command] : Commands()) {
    absl::StrAppend(&usage, "  ", name, std::string(10 - name.size(), ' '),
                    command.summary, "\n");
  }
  absl::StrAppend(&usage,
                  "\nTraining, distillation, quantization and export commands "
                  "arrive with their services.\nRun `hearth --helpfull` for "
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
