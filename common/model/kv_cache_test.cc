#include "common/model/kv_cache.h"

#include <gtest/gtest.h>

namespace hearth::model {
namespace {

KvCacheDims Dims() {
  KvCacheDims d;
  d.num_layers = 2;
  d.num_kv_heads = 2;
  d.head_dim = 8;
  return d;
}

std::unique_ptr<KvCache> MakeCache(int64_t capacity, int64_t block_size) {
  auto cache = KvCache::Create(Dims(), {capacity, block_size});
  EXPECT_TRUE(cache.ok()) << cache.status();
  return std::move(cache).value();
}

TEST(KvCacheTest, StorageIsAllocatedOnceWithTheRightShape) {
  auto cache = MakeCache(64, 16);
  EXPECT_EQ(cache->num_blocks(), 4);
  EXPECT_EQ(cache->capacity_tokens(), 64);
  at::Tensor l0 = cache->layer(0);
  EXPECT_EQ(l0.sizes(), (std::vector<int64_t>{4, 64, 8}));
  void* before = l0.data_ptr();
  ASSERT_TRUE(cache->AddSequence(1).ok());
  ASSERT_TRUE(cache->Reserve({{1, 40}}).ok());
  EXPECT_EQ(cache->layer(0).data_ptr(), before);
}

TEST(KvCacheTest, CapacityRoundsUpToWholeBlocks) {
  auto cache = MakeCache(50, 16);
  EXPECT_EQ(cache->num_blocks(), 4);
  EXPECT_EQ(cache->capacity_tokens(), 64);
}

TEST(KvCacheTest, BlockAccounting) {
  auto cache = MakeCache(64, 16);
  EXPECT_EQ(cache->FreeTokens(), 64);
  EXPECT_DOUBLE_EQ(cache->UsageRatio(), 0.0);
  ASSERT_TRUE(cache->AddSequence(7).ok());
  EXPECT_EQ(cache->BlocksNeeded(7, 20), 2);
  ASSERT_TRUE(cache->Reserve({{7, 20}}).ok());
  cache->Advance(7, 20);
  EXPECT_EQ(cache->SequenceLength(7), 20);
  EXPECT_EQ(cache->BlockTable(7).size(), 2u);
  EXPECT_EQ(cache->FreeTokens(), 32);
  EXPECT_DOUBLE_EQ(cache->UsageRatio(), 0.5);
  EXPECT_TRUE(cache->CanAdmit(32));
  EXPECT_FALSE(cache->CanAdmit(33));
  // Growing within the last block takes nothing new.
  EXPECT_EQ(cache->BlocksNeeded(7, 12), 0);
  EXPECT_EQ(cache->BlocksNeeded(7, 13), 1);
  ASSERT_TRUE(cache->Reserve({{7, 12}}).ok());
  EXPECT_EQ(cache->FreeTokens(), 32);

  // Slots follow the block table.
  const auto& table = cache->BlockTable(7);
  EXPECT_EQ(cache->Slot(7, 0), table[0] * 16);
  EXPECT_EQ(cache->Slot(7, 17), table[1] * 16 + 1);

  ASSERT_TRUE(cache->FreeSequence(7).ok());
  EXPECT_EQ(cache->FreeTokens(), 64);
  EXPECT_EQ(cache->num_sequences(), 0);
  EXPECT_FALSE(cache->Contains(7));
  EXPECT_EQ(cache->SequenceLength(7), -1);
}

TEST(KvCacheTest, OutOfCapacityIsAllOrNothing) {
  auto cache = MakeCache(64, 16);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  ASSERT_TRUE(cache->AddSequence(2).ok());
  ASSERT_TRUE(cache->Reserve({{1, 30}}).ok());         // 2 blocks.
  absl::Status s = cache->Reserve({{1, 2}, {2, 33}});  // 0 + 3 blocks > 2 free.
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("out of capacity"), std::string::npos) << s;
  EXPECT_EQ(cache->free_blocks(), 2);
  EXPECT_TRUE(cache->BlockTable(2).empty());
  EXPECT_TRUE(cache->Reserve({{1, 2}, {2, 32}}).ok());
  EXPECT_EQ(cache->free_blocks(), 0);
  EXPECT_FALSE(cache->CanAdmit(1));
  EXPECT_TRUE(cache->CanEverFit(64));
  EXPECT_FALSE(cache->CanEverFit(65));
}

TEST(KvCacheTest, FreedBlocksAreReused) {
  auto cache = MakeCache(32, 16);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  ASSERT_TRUE(cache->Reserve({{1, 32}}).ok());
  ASSERT_TRUE(cache->FreeSequence(1).ok());
  ASSERT_TRUE(cache->AddSequence(2).ok());
  ASSERT_TRUE(cache->Reserve({{2, 32}}).ok());
  EXPECT_EQ(cache->BlockTable(2), (std::vector<int32_t>{0, 1}));
}

TEST(KvCacheTest, SequenceErrors) {
  auto cache = MakeCache(32, 16);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  EXPECT_EQ(cache->AddSequence(1).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(cache->FreeSequence(9).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache->Reserve({{9, 1}}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache->Reserve({{1, -1}}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvCacheTest, CreateRejectsBadOptions) {
  EXPECT_EQ(KvCache::Create(Dims(), {0, 16}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvCache::Create(Dims(), {16, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  KvCacheDims bad = Dims();
  bad.head_dim = 0;
  EXPECT_EQ(KvCache::Create(bad, {16, 16}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hearth::model
