#include "common/grpc/status_conversion.h"

#include "gtest/gtest.h"

namespace hearth {
namespace {

TEST(StatusConversion, CodesAndMessagesCarryOver) {
  const struct {
    absl::Status in;
    grpc::StatusCode want;
  } cases[] = {
      {absl::InvalidArgumentError("prompt: empty"),
       grpc::StatusCode::INVALID_ARGUMENT},
      {absl::NotFoundError("model x"), grpc::StatusCode::NOT_FOUND},
      {absl::UnauthenticatedError("no key"), grpc::StatusCode::UNAUTHENTICATED},
      {absl::PermissionDeniedError("scope"),
       grpc::StatusCode::PERMISSION_DENIED},
      {absl::ResourceExhaustedError("quota"),
       grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::UnavailableError("queue full"), grpc::StatusCode::UNAVAILABLE},
      {absl::UnimplementedError("later"), grpc::StatusCode::UNIMPLEMENTED},
  };
  for (const auto& c : cases) {
    grpc::Status out = ToGrpcStatus(c.in);
    EXPECT_EQ(out.error_code(), c.want) << c.in;
    EXPECT_EQ(out.error_message(), c.in.message());
    EXPECT_EQ(FromGrpcStatus(out), c.in);
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

}  // namespace
}  // namespace hearth
