// An in-process fake hearth.v1.Worker for the gateway's tests and benchmark.
//
// It serves GetStatus from its configured models, and Execute by emitting, for
// every sequence of a batch, one token per step ("t0 ", "t1 ", ...) until
// max_new_tokens (default 4), then a final event with usage and timing. Steps
// of all Execute calls share one simulated device: each step holds it for
// step_base + step_per_sequence x (sequences in that call), so a batch of 16
// costs far less than 16 batches of 1, as on a GPU decoding memory-bound.
//
// Kill() makes every running Execute fail with UNAVAILABLE and stops the
// server, which is what the gateway sees when a worker process dies.
#ifndef HEARTH_SERVICES_GATEWAY_FAKE_WORKER_H_
#define HEARTH_SERVICES_GATEWAY_FAKE_WORKER_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hearth/v1/worker.grpc.pb.h"

namespace grpc {
class Server;
}

namespace hearth::gateway {

struct FakeWorkerOptions {
  std::string worker_id = "fake";
  // name -> context length; every model is READY with vocabulary 1000.
  std::map<std::string, uint32_t> models = {{"tiny", 2048}};
  absl::Duration step_base = absl::Milliseconds(1);
  absl::Duration step_per_sequence = absl::ZeroDuration();
  // Tokens per sequence when max_new_tokens is 0.
  int default_tokens = 4;
};

class FakeWorker : public hearth::v1::Worker::Service {
 public:
  explicit FakeWorker(FakeWorkerOptions options);
  ~FakeWorker() override;

  // Listens on 127.0.0.1:`port` (0 = any free port).
  void Start(int port = 0);
  void Kill();
  std::string address() const;
  int port() const { return port_; }

  void set_accepting(bool accepting) { accepting_.store(accepting); }
  void set_model_state(const std::string& model, hearth::v1::ModelState state);
  // Sequences that error out (finish_reason ERROR) with this code.
  void set_fail_code(int code) { fail_code_.store(code); }

  // What the gateway sent.
  std::vector<int> batch_sizes();
  std::vector<hearth::v1::SequenceRequest> sequences();
  int execute_calls();
  int cancelled_sequences() const { return cancelled_.load(); }
  int running_sequences() const { return running_.load(); }

  grpc::Status Execute(
      grpc::ServerContext* context, const hearth::v1::ExecuteRequest* request,
      grpc::ServerWriter<hearth::v1::ExecuteEvent>* writer) override;
  grpc::Status Cancel(grpc::ServerContext* context,
                      const hearth::v1::CancelRequest* request,
                      hearth::v1::CancelResponse* response) override;
  grpc::Status LoadModel(grpc::ServerContext* context,
                         const hearth::v1::LoadModelRequest* request,
                         hearth::v1::LoadModelResponse* response) override;
  grpc::Status UnloadModel(grpc::ServerContext* context,
                           const hearth::v1::UnloadModelRequest* request,
                           hearth::v1::UnloadModelResponse* response) override;
  grpc::Status GetStatus(grpc::ServerContext* context,
                         const hearth::v1::GetStatusRequest* request,
                         hearth::v1::WorkerStatus* response) override;

 private:
  FakeWorkerOptions options_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> accepting_{true};
  std::atomic<bool> killed_{false};
  std::atomic<int> fail_code_{0};
  std::atomic<int> cancelled_{0};
  std::atomic<int> running_{0};

  absl::Mutex device_;  // one simulated accelerator

  absl::Mutex mu_;
  std::map<std::string, hearth::v1::ModelState> states_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, bool> cancel_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<int> batch_sizes_ ABSL_GUARDED_BY(mu_);
  std::vector<hearth::v1::SequenceRequest> sequences_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_FAKE_WORKER_H_
