// Pass-through proxies for the job services (hearth.v1.Quantization on
// hearth-quantizer, hearth.v1.Distillation on hearth-distiller), so that
// clients reach everything through the gateway's one port, keys and TLS.
//
// Each rpc needs an API key with the service's scope (`quantize` /
// `distill`) or `admin`; the request is forwarded unchanged (minus the
// client's credentials) with the client's deadline, and client cancellation
// cancels the forwarded call. WatchJob streams one message at a time, so a
// slow client slows the upstream stream instead of buffering it. With no
// upstream configured every rpc answers UNAVAILABLE naming the flag.
#ifndef HEARTH_SERVICES_GATEWAY_JOB_PROXY_H_
#define HEARTH_SERVICES_GATEWAY_JOB_PROXY_H_

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "hearth/v1/distillation.grpc.pb.h"
#include "hearth/v1/quantization.grpc.pb.h"
#include "services/gateway/edge.h"
#include "services/gateway/generation_service.h"

namespace hearth::gateway {

// What a proxy needs to know about its upstream.
struct JobUpstream {
  std::string flag;    // "--quantizer", for errors
  std::string target;  // host:port; empty = not configured
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null = plaintext
};

namespace internal {

// A unary proxied call: owns the upstream context; cancelling the server
// call cancels it.
class ProxyUnaryReactor : public grpc::ServerUnaryReactor {
 public:
  explicit ProxyUnaryReactor(grpc::CallbackServerContext* server) {
    if (server->deadline() != std::chrono::system_clock::time_point::max()) {
      client_.set_deadline(server->deadline());
    }
  }
  grpc::ClientContext* client() { return &client_; }
  void OnCancel() override { client_.TryCancel(); }
  void OnDone() override { delete this; }

 private:
  grpc::ClientContext client_;
};

// WatchJob: reads one Job upstream, writes it downstream, repeats.
class ProxyWatchReactor : public grpc::ServerWriteReactor<hearth::v1::Job>,
                          public grpc::ClientReadReactor<hearth::v1::Job> {
 public:
  explicit ProxyWatchReactor(grpc::CallbackServerContext* server) {
    if (server->deadline() != std::chrono::system_clock::time_point::max()) {
      client_.set_deadline(server->deadline());
    }
  }
  grpc::ClientContext* client() { return &client_; }
  hearth::v1::WatchJobRequest* request() { return &request_; }

  // Called after the upstream call was bound to this reactor.
  void Begin() {
    grpc::ClientReadReactor<hearth::v1::Job>::StartRead(&job_);
    grpc::ClientReadReactor<hearth::v1::Job>::StartCall();
  }

  // Upstream side.
  void OnReadDone(bool ok) override {
    if (ok) grpc::ServerWriteReactor<hearth::v1::Job>::StartWrite(&job_);
    // !ok: the upstream OnDone carries the status.
  }
  void OnDone(const grpc::Status& status) override {
    grpc::ServerWriteReactor<hearth::v1::Job>::Finish(status);
  }

  // Downstream side.
  void OnWriteDone(bool ok) override {
    if (ok) {
      grpc::ClientReadReactor<hearth::v1::Job>::StartRead(&job_);
    } else {
      client_.TryCancel();
    }
  }
  void OnCancel() override { client_.TryCancel(); }
  // The server side ends only after Finish, which follows the upstream
  // OnDone, so both sides are done here.
  void OnDone() override { delete this; }

 private:
  grpc::ClientContext client_;
  hearth::v1::WatchJobRequest request_;
  hearth::v1::Job job_;
};

// What the proxy checks itself, so that a bad request is INVALID_ARGUMENT
// naming the field whether or not the upstream is up.
inline absl::Status CheckJobId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("id: required");
  if (id.size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("id: ", id.size(), " bytes; job ids are at most 256"));
  }
  return absl::OkStatus();
}
inline absl::Status CheckPageSize(uint32_t page_size) {
  // The job services take an int; larger values would wrap negative.
  if (page_size > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: ", page_size, " is over the limit of 100000"));
  }
  return absl::OkStatus();
}

}  // namespace internal

// `Service` is hearth::v1::Quantization or hearth::v1::Distillation.
template <typename Service, typename CreateRequest>
class JobProxy final : public Service::CallbackService {
 public:
  // `edge` must outlive the proxy; `scope` is the service's own scope.
  JobProxy(Edge* edge, JobUpstream upstream, absl::string_view scope)
      : edge_(edge), upstream_(std::move(upstream)), scope_(scope) {
    if (!upstream_.target.empty()) {
      stub_ = Service::NewStub(grpc::CreateChannel(
          upstream_.target, upstream_.credentials
                                ? upstream_.credentials
                                : grpc::InsecureChannelCredentials()));
    }
  }

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context,
                                      const CreateRequest* request,
                                      hearth::v1::Job* response) override {
    return Unary(
        context, absl::OkStatus(), [&](auto* stub, auto* client, auto done) {
          stub->async()->CreateJob(client, request, response, std::move(done));
        });
  }
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const hearth::v1::GetJobRequest* request,
                                   hearth::v1::Job* response) override {
    return Unary(context, internal::CheckJobId(request->id()),
                 [&](auto* stub, auto* client, auto done) {
                   stub->async()->GetJob(client, request, response,
                                         std::move(done));
                 });
  }
  grpc::ServerUnaryReactor* ListJobs(
      grpc::CallbackServerContext* context,
      const hearth::v1::ListJobsRequest* request,
      hearth::v1::ListJobsResponse* response) override {
    return Unary(context, internal::CheckPageSize(request->page_size()),
                 [&](auto* stub, auto* client, auto done) {
                   stub->async()->ListJobs(client, request, response,
                                           std::move(done));
                 });
  }
  grpc::ServerUnaryReactor* CancelJob(
      grpc::CallbackServerContext* context,
      const hearth::v1::CancelJobRequest* request,
      hearth::v1::Job* response) override {
    return Unary(context, internal::CheckJobId(request->id()),
                 [&](auto* stub, auto* client, auto done) {
                   stub->async()->CancelJob(client, request, response,
                                            std::move(done));
                 });
  }

  grpc::ServerWriteReactor<hearth::v1::Job>* WatchJob(
      grpc::CallbackServerContext* context,
      const hearth::v1::WatchJobRequest* request) override {
    auto* reactor = new internal::ProxyWatchReactor(context);
    absl::Status ok = Check(*context, internal::CheckJobId(request->id()));
    if (!ok.ok()) {
      reactor->grpc::ServerWriteReactor<hearth::v1::Job>::Finish(
          ToClientStatus(ok, context));
      return reactor;
    }
    *reactor->request() = *request;
    stub_->async()->WatchJob(reactor->client(), reactor->request(), reactor);
    reactor->Begin();
    return reactor;
  }

 private:
  // Credentials first, then the request itself, then the upstream.
  absl::Status Check(const grpc::CallbackServerContext& context,
                     const absl::Status& input) {
    auto caller = edge_->Authenticate(context, {scope_, kScopeAdmin}, "");
    if (!caller.ok()) return caller.status();
    if (!input.ok()) return input;
    if (stub_ == nullptr) {
      return absl::UnavailableError(
          absl::StrCat(Service::service_full_name(),
                       " is not configured on this gateway: start it with ",
                       upstream_.flag, "=host:port"));
    }
    return absl::OkStatus();
  }

  template <typename Call>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context,
                                  const absl::Status& input, Call call) {
    auto* reactor = new internal::ProxyUnaryReactor(context);
    absl::Status ok = Check(*context, input);
    if (!ok.ok()) {
      reactor->Finish(ToClientStatus(ok, context));
      return reactor;
    }
    call(stub_.get(), reactor->client(),
         [reactor](grpc::Status status) { reactor->Finish(status); });
    return reactor;
  }

  Edge* const edge_;
  const JobUpstream upstream_;
  const std::string scope_;
  std::unique_ptr<typename Service::Stub> stub_;
};

using QuantizationProxy = JobProxy<hearth::v1::Quantization,
                                   hearth::v1::CreateQuantizationJobRequest>;
using DistillationProxy = JobProxy<hearth::v1::Distillation,
                                   hearth::v1::CreateDistillationJobRequest>;

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_JOB_PROXY_H_
