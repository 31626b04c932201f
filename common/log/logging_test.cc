#include "common/log/logging.h"

#include "gtest/gtest.h"

namespace hearth {
namespace {

TEST(Logging, ParsesLevelsCaseInsensitively) {
  LogLevel level;
  ASSERT_TRUE(ParseLogLevel("WARNING", &level));
  EXPECT_EQ(level, LogLevel::kWarning);
  ASSERT_TRUE(ParseLogLevel("debug", &level));
  EXPECT_EQ(level, LogLevel::kDebug);
  EXPECT_FALSE(ParseLogLevel("verbose", &level));
}

TEST(Logging, DisabledLevelDoesNotEvaluateItsArguments) {
  SetMinLogLevel(LogLevel::kError);
  int evaluated = 0;
  auto side_effect = [&evaluated]() { return ++evaluated; };
  HLOG(INFO) << side_effect();
  EXPECT_EQ(evaluated, 0);
  testing::internal::CaptureStderr();
  HLOG(ERROR) << "value=" << side_effect();
  std::string out = testing::internal::GetCapturedStderr();
  EXPECT_EQ(evaluated, 1);
  EXPECT_NE(out.find("logging_test.cc"), std::string::npos);
  EXPECT_NE(out.find("] value=1\n"), std::string::npos);
  EXPECT_EQ(out[0], 'E');
  SetMinLogLevel(LogLevel::kInfo);
}

}  // namespace
}  // namespace hearth
