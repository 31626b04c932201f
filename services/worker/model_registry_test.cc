#include "services/worker/model_registry.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/model/kv_cache.h"
#include "common/model/llama_model.h"
#include "gtest/gtest.h"
#include "services/worker/test_models.h"

namespace hearth::worker {
namespace {

namespace fs = std::filesystem;

TEST(ParseDevicesTest, AcceptsCpuReplicasAndRejectsNonsense) {
  auto devices = ParseDevices({"cpu", "cpu:1", "cpu:2"});
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 3u);
  EXPECT_EQ((*devices)[1].name, "cpu:1");
  EXPECT_FALSE((*devices)[1].cuda);
  EXPECT_EQ((*devices)[1].index, 1);
  for (const char* bad : {"gpu", "cpu:x", "cpu:-1", ""}) {
    auto d = ParseDevices({bad});
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ParseDevices({"cpu", "cpu"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDevices({}).status().code(),
            absl::StatusCode::kInvalidArgument);
  if (!torch::cuda::is_available()) {
    EXPECT_EQ(ParseDevices({"cuda:0"}).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_ = absl::StrCat(::testing::TempDir(), "/registry_", getpid());
    fs::create_directories(repo_ + "/sub");
    ASSERT_TRUE(testing::WriteTinyModel(repo_ + "/tiny").ok());
    std::ofstream(repo_ + "/q.gguf") << "not really";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(repo_, ec);
  }
  std::string repo_;
};

TEST_F(RegistryTest, ResolvesNamesAndPathsInsideTheRepository) {
  auto p = ResolveModelPath(repo_, "tiny", "");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, fs::weakly_canonical(repo_ + "/tiny").string());
  auto gguf = ResolveModelPath(repo_, "q", "");
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  EXPECT_EQ(fs::path(*gguf).filename(), "q.gguf");
  auto explicit_path = ResolveModelPath(repo_, "served-name", "tiny");
  ASSERT_TRUE(explicit_path.ok());
  EXPECT_EQ(*explicit_path, *p);
  EXPECT_EQ(ResolveModelPath(repo_, "missing", "").status().code(),
            absl::StatusCode::kNotFound);
  for (const std::string& escape :
       {std::string("../"), std::string("sub/../../x"), std::string("/etc")}) {
    EXPECT_EQ(ResolveModelPath(repo_, "x", escape).status().code(),
              absl::StatusCode::kInvalidArgument)
        << escape;
  }
  EXPECT_EQ(ResolveModelPath(repo_, "../tiny", "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RegistryTest, LoadsAssetsAndAWarmReplica) {
  auto path = ResolveModelPath(repo_, "tiny", "");
  ASSERT_TRUE(path.ok());
  auto rm = LoadReplicaModel(*path, DeviceSpec{"cpu", false, 0},
                             {.dtype = "auto", .kv_cache_tokens = 100});
  ASSERT_TRUE(rm.ok()) << rm.status();
  EXPECT_GT(rm->weight_bytes, 0);
  // 100 tokens round up to 7 blocks of 16; 2 layers x 2 (K, V) x 2 heads x 16.
  EXPECT_EQ(rm->cache->capacity_tokens(), 112);
  EXPECT_EQ(rm->cache_bytes, 112 * 2 * 2 * 2 * 16 * 4);
  // The warm-up sequence is gone.
  EXPECT_EQ(rm->cache->num_sequences(), 0);
  EXPECT_EQ(rm->cache->FreeTokens(), rm->cache->capacity_tokens());

  auto assets = LoadModelAssets("tiny", *path, rm->model->config());
  ASSERT_TRUE(assets.ok()) << assets.status();
  ASSERT_NE((*assets)->tokenizer, nullptr);
  EXPECT_EQ((*assets)->eos_token_ids, std::vector<int64_t>{testing::kEosId});
  EXPECT_EQ((*assets)->quantization, "none");

  EXPECT_EQ(
      LoadReplicaModel(*path, DeviceSpec{"cpu", false, 0}, {.dtype = "float8"})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(
      LoadReplicaModel(repo_ + "/q.gguf", DeviceSpec{"cpu", false, 0}, {})
          .ok());
}

}  // namespace
}  // namespace hearth::worker
