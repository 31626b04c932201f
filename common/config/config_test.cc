#include "common/config/config.h"

#include "absl/flags/flag.h"
#include "gtest/gtest.h"

ABSL_FLAG(int32_t, test_port, 100, "port used by the config tests");
ABSL_FLAG(std::string, test_name, "default", "name used by the config tests");

namespace hearth {
namespace {

TEST(ConfigFile, FileSetsFlagsThatTheCommandLineDidNotSet) {
  absl::SetFlag(&FLAGS_test_port, 100);
  absl::SetFlag(&FLAGS_test_name, "default");
  auto file = ConfigFile::Parse("test-port: 8001\ntest_name: from-file\n", "t");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(file->ApplyToFlags({"test_name"}).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_test_port), 8001);
  EXPECT_EQ(absl::GetFlag(FLAGS_test_name), "default");  // flag wins
}

TEST(ConfigFile, JsonIsAccepted) {
  absl::SetFlag(&FLAGS_test_port, 100);
  auto file =
      ConfigFile::Parse(R"({"test_port": 9, "workers": ["a", "b"]})", "c.json");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(file->ApplyToFlags({}).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_test_port), 9);
  EXPECT_EQ(file->root()["workers"].size(), 2u);
}

TEST(ConfigFile, UnknownKeyIsNamed) {
  auto file = ConfigFile::Parse("grpc-prot: 1\n", "svc.yaml");
  ASSERT_TRUE(file.ok());
  absl::Status status = file->ApplyToFlags({});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("svc.yaml: key \"grpc-prot\""),
            std::string::npos)
      << status;
}

TEST(ConfigFile, BadValueIsNamed) {
  auto file = ConfigFile::Parse("test_port: eighty\n", "svc.yaml");
  ASSERT_TRUE(file.ok());
  absl::Status status = file->ApplyToFlags({});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("key \"test_port\""), std::string::npos)
      << status;
}

TEST(ConfigFile, SyntaxErrorNamesLine) {
  auto file = ConfigFile::Parse("a: 1\nb: [1, 2\n", "bad.yaml");
  ASSERT_FALSE(file.ok());
  EXPECT_NE(file.status().message().find("bad.yaml: line"), std::string::npos)
      << file.status();
}

TEST(ConfigFile, MissingFileIsNotFound) {
  auto file = ConfigFile::Load("/nonexistent/hearth.yaml");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
}

TEST(Flags, DashedSpellingsAreNormalized) {
  const char* argv[] = {"prog", "--grpc-port=5", "-log-level", "debug",
                        "--",   "--not-a-flag"};
  auto out = NormalizeFlagSpellings(6, const_cast<char**>(argv));
  EXPECT_EQ(out[1], "--grpc_port=5");
  EXPECT_EQ(out[2], "-log_level");
  EXPECT_EQ(out[3], "debug");
  EXPECT_EQ(out[5], "--not-a-flag");
  auto names = ExplicitFlagNames(out);
  EXPECT_TRUE(names.count("grpc_port"));
  EXPECT_TRUE(names.count("log_level"));
  EXPECT_FALSE(names.count("not_a_flag"));
}

}  // namespace
}  // namespace hearth
