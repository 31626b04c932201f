#include "common/grpc/health_client.h"

#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc/status_conversion.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace hearth {

absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    absl::Duration timeout) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.status();
}

namespace {

absl::Status PollUntilServing(
    const std::function<std::shared_ptr<grpc::Channel>()>& channel_for_attempt,
    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer";
  while (absl::Now() < deadline) {
    auto status = CheckHealth(channel_for_attempt(), "", absl::Seconds(1));
    if (status.ok() &&
        *status == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    last =
        status.ok()
            ? grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*status)
            : std::string(status.status().message());
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("not SERVING after ",
                                                  absl::FormatDuration(timeout),
                                                  " (last: ", last, ")"));
}

}  // namespace

absl::Status WaitForServing(const std::shared_ptr<grpc::Channel>& channel,
                            absl::Duration timeout) {
  return PollUntilServing([&channel] { return channel; }, timeout);
}

absl::Status WaitForServing(const std::string& address,
                            absl::Duration timeout) {
  return PollUntilServing(
      [&address] {
        return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
      },
      timeout);
}

}  // namespace hearth
