#include "common/status/status_macros.h"

#include "gtest/gtest.h"

namespace hearth {
namespace {

absl::StatusOr<int> ParsePositive(int value) {
  if (value <= 0) return absl::InvalidArgumentError("value must be positive");
  return value;
}

absl::StatusOr<int> Doubled(int value) {
  HEARTH_ASSIGN_OR_RETURN(int parsed, ParsePositive(value));
  return parsed * 2;
}

absl::Status CheckBoth(int a, int b) {
  HEARTH_RETURN_IF_ERROR(ParsePositive(a).status());
  HEARTH_RETURN_IF_ERROR(ParsePositive(b).status());
  return absl::OkStatus();
}

TEST(StatusMacros, AssignOrReturnPassesValueThrough) {
  auto result = Doubled(21);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(*result, 42);
}

TEST(StatusMacros, AssignOrReturnPropagatesError) {
  auto result = Doubled(-1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(result.status().message(), "value must be positive");
}

TEST(StatusMacros, ReturnIfErrorStopsAtFirstError) {
  EXPECT_TRUE(CheckBoth(1, 2).ok());
  EXPECT_EQ(CheckBoth(1, 0).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hearth
