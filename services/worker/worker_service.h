// hearth.v1.Worker over gRPC's callback API: translates protos to Engine calls
// and events back, and nothing else (the engine knows no gRPC; this knows no
// tensors), the same seam as Triton's frontends and its core.
//
// Execute is a server-streaming reactor, not a thread: the engine's replica
// threads hand it events, it queues them (coalescing consecutive events of one
// sequence while a write is in flight, so a slow client gets fewer, larger
// messages instead of holding up the engine) and writes one at a time. The
// stream ends with OK once every sequence has had its final event. When the
// client cancels (or its deadline passes) the call's sequences are cancelled in
// the engine and the stream ends with CANCELLED.
//
// Errors. A problem with the whole call ends it with a status: unknown model →
// NOT_FOUND, model loading/unloading or worker draining → UNAVAILABLE. A bad
// sequence (empty prompt, max_new_tokens 0 or beyond the context, NaN
// temperature, top_p out of range, token ids outside the vocabulary, ...) gets
// a final event with FINISH_REASON_ERROR, error_code INVALID_ARGUMENT and a
// message naming the field ("sequences[2].sampling.top_p: must be in (0, 1],
// got 1.5"), while the call's other sequences run; when no sequence of the call
// is valid, the call itself ends with INVALID_ARGUMENT (the usual case of a
// one-sequence call), so plain unary-style clients see the code directly.
//
// LoadModel and UnloadModel block for seconds, so they run on a thread of their
// own per call (joined when the service is destroyed); the other rpcs answer
// inline.
#ifndef HEARTH_SERVICES_WORKER_WORKER_SERVICE_H_
#define HEARTH_SERVICES_WORKER_WORKER_SERVICE_H_

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "hearth/v1/worker.grpc.pb.h"
#include "services/worker/engine.h"

namespace hearth::worker {

// Proto ↔ engine conversions (exposed for tests).
GenerationRequest FromProto(const v1::SequenceRequest& request);
void ToProto(const SequenceEvent& event, v1::ExecuteEvent* out);
v1::ModelState ToProto(ModelState state);
v1::FinishReason ToProto(FinishReason reason);

class WorkerService final : public v1::Worker::CallbackService {
 public:
  // `engine` is not owned and must outlive the service.
  WorkerService(Engine* engine, std::string worker_id);
  ~WorkerService() override;

  grpc::ServerWriteReactor<v1::ExecuteEvent>* Execute(
      grpc::CallbackServerContext* context,
      const v1::ExecuteRequest* request) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* context,
                                   const v1::CancelRequest* request,
                                   v1::CancelResponse* response) override;
  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* context,
                                      const v1::LoadModelRequest* request,
                                      v1::LoadModelResponse* response) override;
  grpc::ServerUnaryReactor* UnloadModel(
      grpc::CallbackServerContext* context,
      const v1::UnloadModelRequest* request,
      v1::UnloadModelResponse* response) override;
  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const v1::GetStatusRequest* request,
                                      v1::WorkerStatus* response) override;

 private:
  void RunInBackground(std::function<void()> work);

  Engine* engine_;
  std::string worker_id_;
  std::mutex threads_mu_;
  struct Background {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::list<Background> threads_;
};

}  // namespace hearth::worker

#endif  // HEARTH_SERVICES_WORKER_WORKER_SERVICE_H_
