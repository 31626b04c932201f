// Starts a real hearth service binary for an integration test and stops it.
//
//   auto worker = ServiceProcess::Start({.binary =
//   ServiceBinary("hearth-worker")}); ASSERT_TRUE(worker.ok()) <<
//   worker.status(); auto stub =
//   hearth::v1::Worker::NewStub((*worker)->channel());
//   ...
//   EXPECT_EQ((*worker)->Stop(SIGTERM).value(), 0);  // clean drain
//
// Start() picks free loopback ports for gRPC and metrics, passes them as
// --grpc_port/--metrics_port/--host=127.0.0.1, captures the child's stderr to a
// file (printed when the start fails), and waits until grpc.health.v1 reports
// SERVING. The destructor SIGKILLs a child that is still running.
#ifndef HEARTH_COMMON_TESTING_SERVICE_PROCESS_H_
#define HEARTH_COMMON_TESTING_SERVICE_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Channel;
}

namespace hearth {

class ServiceProcess {
 public:
  struct Options {
    std::string binary;
    std::vector<std::string> args;
    bool metrics = true;
    absl::Duration startup_timeout = absl::Seconds(60);
  };

  static absl::StatusOr<std::unique_ptr<ServiceProcess>> Start(Options options);
  ~ServiceProcess();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string grpc_address() const;
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  std::string ReadLog() const;
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

  // Sends `signal` and waits up to `timeout` for the exit. Returns the exit
  // code (128 + n when killed by signal n), or DEADLINE_EXCEEDED (after
  // SIGKILL).
  absl::StatusOr<int> Stop(int signal,
                           absl::Duration timeout = absl::Seconds(30));
  // True while the child has not exited.
  bool Running();

 private:
  ServiceProcess() = default;
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::string log_path_;
  std::shared_ptr<grpc::Channel> channel_;
  int exit_code_ = -1;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
int PickFreePort();

// Absolute path of a built binary: $HEARTH_BUILD_DIR/<subdir>/<name>, searching
// the build tree's services/ and tools/ folders.
std::string ServiceBinary(const std::string& name);

// Minimal HTTP/1.0 GET against 127.0.0.1:port; returns the body when the status
// is 200, else an error with the status line.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// Runs a shell command, returning its exit code and combined output.
struct CommandResult {
  int exit_code;
  std::string output;
};
CommandResult RunCommand(const std::string& command);

}  // namespace hearth

#endif  // HEARTH_COMMON_TESTING_SERVICE_PROCESS_H_
