#include "tools/hearth/quantize_command.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc/health_client.h"
#include "common/grpc/status_conversion.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "hearth/v1/quantization.grpc.pb.h"

// Shared with the other commands (defined in main.cc).
ABSL_DECLARE_FLAG(std::string, addr);
ABSL_DECLARE_FLAG(std::string, api_key);
ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, spec);
ABSL_DECLARE_FLAG(bool, local);
ABSL_DECLARE_FLAG(std::string, model_repository);

ABSL_FLAG(std::string, method, "",
          "quantize: rtn, dynamic_int8, static_int8, gptq, awq or gguf");
ABSL_FLAG(int32_t, bits, 4, "quantize: 8 or 4");
ABSL_FLAG(int32_t, group_size, 128,
          "quantize: columns per group (32, 64, 128; 0 = per channel)");
ABSL_FLAG(bool, symmetric, false, "quantize: no zero point");
ABSL_FLAG(
    std::string, output_name, "",
    "quantize: output model name (default <model>-<method><bits>g<group>)");
ABSL_FLAG(std::vector<std::string>, formats, {},
          "quantize: hearth_safetensors, gptq_safetensors, awq_safetensors, "
          "gguf_f16, gguf_q8_0, gguf_q4_0 (default: the method's own)");
ABSL_FLAG(std::string, calibration_file, "",
          "quantize: calibration/evaluation text file (on the service's host)");
ABSL_FLAG(std::string, calibration_corpus, "",
          "quantize: named corpus instead (licenses, gpl, bible-kjv)");
ABSL_FLAG(int32_t, num_samples, 0, "quantize: calibration sequences (0 = 128)");
ABSL_FLAG(int32_t, sequence_length, 0,
          "quantize: tokens per calibration sequence (0 = 512)");
ABSL_FLAG(double, damp_percent, 0, "quantize: GPTQ damping (0 = 0.01)");
ABSL_FLAG(bool, act_order, false, "quantize: GPTQ act-order");
ABSL_FLAG(bool, static_groups, false, "quantize: GPTQ static groups");
ABSL_FLAG(int32_t, awq_grid, 0, "quantize: AWQ scale grid points (0 = 20)");
ABSL_FLAG(bool, awq_clip, false, "quantize: AWQ clipping search");
ABSL_FLAG(double, smoothquant_alpha, 0,
          "quantize: SmoothQuant alpha for static_int8 (0 = off)");
ABSL_FLAG(bool, evaluate, false,
          "quantize: measure perplexity, size and speed (quant_report.json)");
ABSL_FLAG(std::string, quantizer_binary, "",
          "quantize --local: hearth-quantizer to run (default: next to this "
          "binary, else PATH)");

namespace hearth::cli {
namespace {

absl::Status Invalid(const std::string& flag, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

std::string Upper(std::string s) {
  absl::AsciiStrToUpper(&s);
  return s;
}

std::string Bar(double fraction) {
  const int width = 30;
  int filled = static_cast<int>(fraction * width + 0.5);
  filled = std::max(0, std::min(width, filled));
  return "[" + std::string(filled, '#') + std::string(width - filled, '.') +
         "]";
}

void AddKey(grpc::ClientContext* context) {
  std::string key = absl::GetFlag(FLAGS_api_key);
  if (key.empty()) {
    const char* env = std::getenv("HEARTH_API_KEY");
    if (env) key = env;
  }
  if (!key.empty()) context->AddMetadata("authorization", "Bearer " + key);
}

// A free loopback port (the kernel's pick; released again before use).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

std::string QuantizerBinary() {
  if (!absl::GetFlag(FLAGS_quantizer_binary).empty()) {
    return absl::GetFlag(FLAGS_quantizer_binary);
  }
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    std::string dir(self, n);
    dir = dir.substr(0, dir.rfind('/'));
    for (const std::string candidate :
         {dir + "/hearth-quantizer",
          dir + "/../../services/quantizer/hearth-quantizer"}) {
      if (access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  return "hearth-quantizer";
}

// The private hearth-quantizer of --local: started on construction, SIGTERM'd
// (and reaped) on destruction.
class LocalQuantizer {
 public:
  absl::StatusOr<std::string> Start() {
    const int port = FreePort();
    if (port == 0) return absl::UnavailableError("no free loopback port");
    const std::string repo = absl::GetFlag(FLAGS_model_repository);
    // Its own job store, so a hearth-quantizer already serving this
    // repository (which locks <repo>/.quantizer) does not stop it.
    const std::string work = repo + "/.quantizer-local";
    log_ = work + ".log";
    std::vector<std::string> argv_s = {
        QuantizerBinary(),      absl::StrCat("--grpc_port=", port),
        "--metrics_port=0",     "--host=127.0.0.1",
        "--model_repo=" + repo, "--work_dir=" + work};
    pid_ = fork();
    if (pid_ < 0) return absl::InternalError("fork failed");
    if (pid_ == 0) {
      // Its log goes to a file; the terminal shows the progress bar.
      if (FILE* f = std::fopen(log_.c_str(), "w")) {
        dup2(fileno(f), STDOUT_FILENO);
        dup2(fileno(f), STDERR_FILENO);
      }
      std::vector<char*> argv_c;
      for (auto& a : argv_s) argv_c.push_back(a.data());
      argv_c.push_back(nullptr);
      execvp(argv_c[0], argv_c.data());
      std::fprintf(stderr, "hearth quantize --local: cannot run %s\n",
                   argv_c[0]);
      _exit(127);
    }
    const std::string address = absl::StrCat("127.0.0.1:", port);
    absl::Status up = WaitForServing(address, absl::Seconds(60));
    if (!up.ok()) {
      return absl::UnavailableError(
          absl::StrCat(argv_s[0], " did not come up on ", address, ": ",
                       up.message(), " (its log: ", log_, ")"));
    }
    return address;
  }
  ~LocalQuantizer() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

void PrintJob(const v1::Job& job) {
  std::cout << v1::JobState_Name(job.state()) << "  " << job.id() << "\n";
  for (const auto& [role, path] : job.artifacts()) {
    std::cout << "  " << role << ": " << path << "\n";
  }
  if (!job.error().empty()) std::cout << "error: " << job.error() << "\n";
  // The evaluation table is the final message of an evaluated job.
  if (job.message().find('|') != std::string::npos) {
    std::cout << "\n" << job.message();
    if (job.message().back() != '\n') std::cout << "\n";
  }
  if (!job.metrics().empty()) {
    std::cout << "\n";
    for (const auto& [name, value] : job.metrics()) {
      std::cout << absl::StrFormat("  %-30s %.6g\n", name, value);
    }
  }
}

}  // namespace

absl::StatusOr<v1::QuantizationSpec> QuantizeSpecFromFlags() {
  v1::QuantizationSpec spec;
  if (!absl::GetFlag(FLAGS_spec).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_spec));
    if (!in) return Invalid("spec", "cannot read " + absl::GetFlag(FLAGS_spec));
    std::stringstream text;
    text << in.rdbuf();
    auto st = google::protobuf::util::JsonStringToMessage(text.str(), &spec);
    if (!st.ok()) {
      return Invalid("spec", absl::StrCat("not a QuantizationSpec JSON: ",
                                          st.message().as_string()));
    }
    return spec;
  }
  if (absl::GetFlag(FLAGS_model).empty()) {
    return Invalid("model",
                   "name the source model (a folder in the repository)");
  }
  spec.set_source_model(absl::GetFlag(FLAGS_model));
  spec.set_output_name(absl::GetFlag(FLAGS_output_name));
  v1::QuantizationMethod method;
  if (!v1::QuantizationMethod_Parse(
          "QUANTIZATION_METHOD_" + Upper(absl::GetFlag(FLAGS_method)),
          &method) ||
      method == v1::QUANTIZATION_METHOD_UNSPECIFIED) {
    return Invalid("method",
                   "one of rtn, dynamic_int8, static_int8, gptq, awq, gguf");
  }
  spec.set_method(method);
  spec.set_bits(absl::GetFlag(FLAGS_bits));
  spec.set_group_size(absl::GetFlag(FLAGS_group_size));
  spec.set_symmetric(absl::GetFlag(FLAGS_symmetric));
  for (const std::string& f : absl::GetFlag(FLAGS_formats)) {
    v1::OutputFormat format;
    if (!v1::OutputFormat_Parse("OUTPUT_FORMAT_" + Upper(f), &format) ||
        format == v1::OUTPUT_FORMAT_UNSPECIFIED) {
      return Invalid("formats", "unknown format \"" + f + "\"");
    }
    spec.add_formats(format);
  }
  auto* cal = spec.mutable_calibration();
  cal->set_text_file(absl::GetFlag(FLAGS_calibration_file));
  cal->set_corpus(absl::GetFlag(FLAGS_calibration_corpus));
  if (absl::GetFlag(FLAGS_num_samples) < 0 ||
      absl::GetFlag(FLAGS_sequence_length) < 0) {
    return Invalid("num_samples", "and --sequence_length must be >= 0");
  }
  cal->set_num_samples(absl::GetFlag(FLAGS_num_samples));
  cal->set_sequence_length(absl::GetFlag(FLAGS_sequence_length));
  spec.mutable_gptq()->set_damp_percent(absl::GetFlag(FLAGS_damp_percent));
  spec.mutable_gptq()->set_act_order(absl::GetFlag(FLAGS_act_order));
  spec.mutable_gptq()->set_static_groups(absl::GetFlag(FLAGS_static_groups));
  spec.mutable_awq()->set_grid_size(absl::GetFlag(FLAGS_awq_grid));
  spec.mutable_awq()->set_clip_search(absl::GetFlag(FLAGS_awq_clip));
  spec.set_smoothquant_alpha(absl::GetFlag(FLAGS_smoothquant_alpha));
  spec.set_evaluate(absl::GetFlag(FLAGS_evaluate));
  return spec;
}

int RunQuantize(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "hearth quantize: unexpected argument \"" << args[0]
              << "\" (everything is a flag)\n";
    return 2;
  }
  auto spec = QuantizeSpecFromFlags();
  if (!spec.ok()) {
    std::cerr << "hearth quantize: " << spec.status().message()
              << "\nusage: hearth quantize --model=M --method=gptq --bits=4 "
                 "--group_size=128 [--calibration_corpus=licenses | "
                 "--calibration_file=F] [--formats=gptq_safetensors,gguf_q4_0] "
                 "[--evaluate] [--addr=host:port | --local "
                 "--model_repository=models]   (or --spec=spec.json)\n";
    return 2;
  }
  std::string address = absl::GetFlag(FLAGS_addr);
  LocalQuantizer local;
  if (absl::GetFlag(FLAGS_local)) {
    auto started = local.Start();
    if (!started.ok()) {
      std::cerr << "hearth quantize --local: " << started.status().message()
                << "\n";
      return 1;
    }
    address = *started;
  }
  auto stub = v1::Quantization::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::Job job;
  {
    grpc::ClientContext context;
    AddKey(&context);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    v1::CreateQuantizationJobRequest request;
    *request.mutable_spec() = *spec;
    grpc::Status status = stub->CreateJob(&context, request, &job);
    if (!status.ok()) {
      std::cerr << "hearth quantize: " << FromGrpcStatus(status) << "\n";
      return 1;
    }
  }
  std::cerr << "job " << job.id() << " queued at " << address << "\n";
  // Follow it to the end; a dropped stream (service restart) is re-opened,
  // since the job itself is durable.
  const bool tty = isatty(STDERR_FILENO);
  std::string last_message;
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext context;
    AddKey(&context);
    v1::WatchJobRequest watch;
    watch.set_id(job.id());
    auto reader = stub->WatchJob(&context, watch);
    while (reader->Read(&job)) {
      attempt = 0;
      // The final message of an evaluated job is its table: printed below.
      const std::string msg =
          job.message().find('|') != std::string::npos
              ? std::string("done")
              : job.message().substr(0, job.message().find('\n'));
      const std::string line =
          absl::StrFormat("%s %3d%% %s", Bar(job.progress()),
                          static_cast<int>(job.progress() * 100), msg);
      if (tty) {
        std::cerr << "\r" << line << "\033[K" << std::flush;
      } else if (msg != last_message) {
        std::cerr << line << "\n";
      }
      last_message = msg;
    }
    grpc::Status status = reader->Finish();
    const bool terminal = job.state() == v1::JOB_STATE_SUCCEEDED ||
                          job.state() == v1::JOB_STATE_FAILED ||
                          job.state() == v1::JOB_STATE_CANCELLED;
    if (terminal) break;
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || attempt >= 30) {
      if (tty) std::cerr << "\n";
      std::cerr << "hearth quantize: " << FromGrpcStatus(status) << "\n";
      return 1;
    }
    absl::SleepFor(absl::Seconds(2));  // the service is restarting
  }
  if (tty) std::cerr << "\n";
  PrintJob(job);
  return job.state() == v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

}  // namespace hearth::cli
