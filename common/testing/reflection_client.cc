#include "common/testing/reflection_client.h"

#include "absl/time/clock.h"
#include "common/grpc/status_conversion.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace hearth {

absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel) {
  using grpc::reflection::v1alpha::ServerReflection;
  using grpc::reflection::v1alpha::ServerReflectionRequest;
  using grpc::reflection::v1alpha::ServerReflectionResponse;
  auto stub = ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  auto stream = stub->ServerReflectionInfo(&context);
  ServerReflectionRequest request;
  request.set_list_services("*");
  if (!stream->Write(request)) return FromGrpcStatus(stream->Finish());
  stream->WritesDone();
  ServerReflectionResponse response;
  std::vector<std::string> names;
  while (stream->Read(&response)) {
    if (response.has_error_response()) {
      return absl::Status(
          static_cast<absl::StatusCode>(response.error_response().error_code()),
          response.error_response().error_message());
    }
    for (const auto& service : response.list_services_response().service()) {
      names.push_back(service.name());
    }
  }
  grpc::Status status = stream->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return names;
}

}  // namespace hearth
