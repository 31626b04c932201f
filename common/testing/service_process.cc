#include "common/testing/service_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/grpc/health_client.h"
#include "grpcpp/grpcpp.h"

namespace hearth {
namespace {

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

int PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
  }
  close(fd);
  return port;
}

std::string ServiceBinary(const std::string& name) {
  const char* build = std::getenv("HEARTH_BUILD_DIR");
  std::string root = build ? build : "build";
  for (const char* sub :
       {"services/gateway", "services/worker", "services/quantizer",
        "services/distiller", "tools/hearth", "services", "tools", ""}) {
    std::string path = absl::StrCat(root, "/", sub, sub[0] ? "/" : "", name);
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && (st.st_mode & S_IXUSR)) return path;
  }
  return absl::StrCat(root, "/", name);
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> ServiceProcess::Start(
    Options options) {
  std::unique_ptr<ServiceProcess> process(new ServiceProcess());
  process->grpc_port_ = PickFreePort();
  process->metrics_port_ = options.metrics ? PickFreePort() : 0;
  char log_template[] = "/tmp/hearth-service-XXXXXX";
  int log_fd = mkstemp(log_template);
  if (log_fd < 0) return absl::InternalError("mkstemp failed");
  process->log_path_ = log_template;

  std::vector<std::string> args = {
      options.binary, "--host=127.0.0.1",
      absl::StrCat("--grpc_port=", process->grpc_port_),
      absl::StrCat("--metrics_port=", process->metrics_port_)};
  args.insert(args.end(), options.args.begin(), options.args.end());

  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    // The test runner may block signals; the child must start with a clean
    // mask.
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, nullptr);
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    std::perror("execv");
    _exit(127);
  }
  close(log_fd);
  process->pid_ = pid;
  const absl::Time deadline = absl::Now() + options.startup_timeout;
  while (true) {
    if (!process->Running()) {
      return absl::InternalError(absl::StrCat(
          options.binary, " exited with code ", process->exit_code_,
          " during startup; its log:\n", process->ReadLog()));
    }
    // A fresh channel per attempt: a channel whose first connect was refused
    // backs off for up to seconds before trying again.
    process->channel_ = grpc::CreateChannel(process->grpc_address(),
                                            grpc::InsecureChannelCredentials());
    auto health = CheckHealth(process->channel_, "", absl::Seconds(1));
    if (health.ok() &&
        *health == grpc::health::v1::HealthCheckResponse::SERVING) {
      break;
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          options.binary, " not SERVING after ",
          absl::FormatDuration(options.startup_timeout), "; args: ",
          absl::StrJoin(args, " "), "; log:\n", process->ReadLog()));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return process;
}

ServiceProcess::~ServiceProcess() {
  if (pid_ > 0 && Running()) {
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
  }
  if (!log_path_.empty()) unlink(log_path_.c_str());
}

std::string ServiceProcess::grpc_address() const {
  return absl::StrCat("127.0.0.1:", grpc_port_);
}

std::string ServiceProcess::ReadLog() const {
  std::ifstream in(log_path_);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

bool ServiceProcess::Running() {
  if (exit_code_ >= 0) return false;
  int status;
  pid_t done = waitpid(pid_, &status, WNOHANG);
  if (done == pid_) {
    exit_code_ = DecodeWaitStatus(status);
    return false;
  }
  return true;
}

absl::StatusOr<int> ServiceProcess::Stop(int signal, absl::Duration timeout) {
  if (!Running()) return exit_code_;
  kill(pid_, signal);
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (!Running()) return exit_code_;
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  exit_code_ = DecodeWaitStatus(status);
  return absl::DeadlineExceededError(absl::StrCat(
      "process ", pid_, " did not exit within ", absl::FormatDuration(timeout),
      " of signal ", signal, "; log:\n", ReadLog()));
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect 127.0.0.1:", port));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (write(fd, request.data(), request.size()) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("short write");
  }
  std::string response;
  char buffer[65536];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
  close(fd);
  size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::DataLossError("no HTTP header terminator in response");
  }
  std::string status_line = response.substr(0, response.find("\r\n"));
  if (status_line.find(" 200") == std::string::npos) {
    return absl::UnavailableError(
        absl::StrCat("GET ", path, ": ", status_line));
  }
  return response.substr(header_end + 4);
}

CommandResult RunCommand(const std::string& command) {
  CommandResult result{-1, ""};
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    result.output.append(buffer, n);
  }
  int status = pclose(pipe);
  result.exit_code = DecodeWaitStatus(status);
  return result;
}

}  // namespace hearth
