#include "common/model/kv_cache.h"

#include <torch/torch.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace hearth::model {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(
    const KvCacheDims& dims, const KvCacheOptions& options) {
  if (dims.num_layers <= 0 || dims.num_kv_heads <= 0 || dims.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache dims must be positive: num_layers=", dims.num_layers,
        " num_kv_heads=", dims.num_kv_heads, " head_dim=", dims.head_dim));
  }
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be positive, got ", options.block_size));
  }
  if (options.capacity_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "capacity_tokens must be positive, got ", options.capacity_tokens));
  }
  const int64_t num_blocks =
      (options.capacity_tokens + options.block_size - 1) / options.block_size;
  if (num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity_tokens too large: ", options.capacity_tokens));
  }
  std::unique_ptr<KvCache> cache(new KvCache());
  cache->dims_ = dims;
  cache->block_size_ = options.block_size;
  cache->num_blocks_ = num_blocks;
  try {
    // Zero-filled so that padded gathers never read uninitialised NaNs: masked
    // positions get weight 0, and 0 * NaN would still be NaN.
    cache->storage_ = torch::zeros(
        {dims.num_layers, 2 * dims.num_kv_heads,
         num_blocks * options.block_size, dims.head_dim},
        torch::TensorOptions().device(dims.device).dtype(dims.dtype));
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate KV cache for ", options.capacity_tokens,
                     " tokens: ", e.what_without_backtrace()));
  }
  cache->layers_.reserve(dims.num_layers);
  for (int64_t l = 0; l < dims.num_layers; ++l) {
    cache->layers_.push_back(cache->storage_.select(0, l));
  }
  cache->free_list_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) {
    cache->free_list_.push_back(static_cast<int32_t>(b));
  }
  return cache;
}

absl::Status KvCache::AddSequence(SequenceId id) {
  if (!sequences_.emplace(id, Sequence{}).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("sequence ", id, " is already in the KV cache"));
  }
  return absl::OkStatus();
}

absl::Status KvCache::FreeSequence(SequenceId id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(
        absl::StrCat("sequence ", id, " is not in the KV cache"));
  }
  // Pushed in reverse so that the next allocation reuses them in ascending
  // order, which keeps a re-admitted sequence's blocks close together.
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend();
       ++b) {
    free_list_.push_back(*b);
  }
  sequences_.erase(it);
  return absl::OkStatus();
}

int64_t KvCache::SequenceLength(SequenceId id) const {
  auto it = sequences_.find(id);
  return it == sequences_.end() ? -1 : it->second.length;
}

double KvCache::UsageRatio() const {
  return num_blocks_ == 0 ? 0.0
                          : static_cast<double>(num_blocks_ - free_blocks()) /
                                static_cast<double>(num_blocks_);
}

int64_t KvCache::BlocksNeeded(SequenceId id, int64_t new_tokens) const {
  int64_t length = 0;
  int64_t have = 0;
  auto it = sequences_.find(id);
  if (it != sequences_.end()) {
    length = it->second.length;
    have = static_cast<int64_t>(it->second.blocks.size());
  }
  return std::max<int64_t>(0, BlocksFor(length + new_tokens) - have);
}

absl::Status KvCache::Reserve(
    const std::vector<std::pair<SequenceId, int64_t>>& growth) {
  int64_t needed = 0;
  for (const auto& [id, n] : growth) {
    if (!Contains(id)) {
      return absl::NotFoundError(
          absl::StrCat("sequence ", id, " is not in the KV cache"));
    }
    if (n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot reserve ", n, " tokens"));
    }
    needed += BlocksNeeded(id, n);
  }
  if (needed > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache out of capacity: the step needs ", needed, " more blocks of ",
        block_size_, " tokens but only ", free_blocks(), " of ", num_blocks_,
        " are free (capacity ", capacity_tokens(), " tokens)"));
  }
  for (const auto& [id, n] : growth) {
    Sequence& seq = sequences_.at(id);
    for (int64_t k = BlocksNeeded(id, n); k > 0; --k) {
      seq.blocks.push_back(free_list_.back());
      free_list_.pop_back();
    }
  }
  return absl::OkStatus();
}

void KvCache::Advance(SequenceId id, int64_t n) {
  sequences_.at(id).length += n;
}

const std::vector<int32_t>& KvCache::BlockTable(SequenceId id) const {
  return sequences_.at(id).blocks;
}

int64_t KvCache::Slot(SequenceId id, int64_t pos) const {
  const Sequence& seq = sequences_.at(id);
  return static_cast<int64_t>(seq.blocks[pos / block_size_]) * block_size_ +
         pos % block_size_;
}

}  // namespace hearth::model
