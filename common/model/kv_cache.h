// A paged key/value cache for batched decoding.
//
// The cache holds the attention keys and values of every running sequence, so
// that a decode step only computes the new token. Its memory is one tensor
// allocated when the cache is created and never resized: per layer, [2 *
// kv_heads, slots, head_dim] (keys in the first kv_heads rows, values in the
// rest), where slots = num_blocks * block_size. A sequence owns a list of
// blocks (a block table, as in vLLM's PagedAttention); it takes a new block
// when its last one fills up and gives all of them back when it finishes or is
// cancelled. Fixed-size blocks mean no fragmentation and no copying when
// sequences grow, and "how many tokens fit" is a simple count that the
// scheduler can use for admission.
//
//   KvCacheOptions options;
//   options.capacity_tokens = 4096;
//   HEARTH_ASSIGN_OR_RETURN(auto cache,
//                           KvCache::Create(model.CacheDims(), options));
//   HEARTH_RETURN_IF_ERROR(cache->AddSequence(id));
//   ... model.Step(*cache, {{id, prompt}}) ...
//   cache->FreeSequence(id);
//
// Not thread-safe: a cache belongs to one model replica and is used from the
// thread that runs its steps.
#ifndef HEARTH_COMMON_MODEL_KV_CACHE_H_
#define HEARTH_COMMON_MODEL_KV_CACHE_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hearth::model {

using SequenceId = int64_t;

// The shape of the attention state the cache stores;
// LlamaForCausalLM::CacheDims() returns the one matching a model.
struct KvCacheDims {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;
};

struct KvCacheOptions {
  // Total tokens the cache can hold, over all sequences; rounded up to whole
  // blocks.
  int64_t capacity_tokens = 4096;
  // Tokens per block. Small blocks waste less memory at the end of each
  // sequence; large ones make the per-step gather cheaper. 16 is vLLM's
  // default.
  int64_t block_size = 16;
};

class KvCache {
 public:
  // Allocates all of the storage up front (zero-filled). InvalidArgument for
  // non-positive sizes, ResourceExhausted when the allocation fails.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(
      const KvCacheDims& dims, const KvCacheOptions& options);

  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // --- Sequences
  // -----------------------------------------------------------------

  // Registers an empty sequence (no blocks yet). AlreadyExists if `id` is in
  // use.
  absl::Status AddSequence(SequenceId id);

  // Returns all of the sequence's blocks to the free list at once. NotFound if
  // `id` is unknown.
  absl::Status FreeSequence(SequenceId id);

  bool Contains(SequenceId id) const { return sequences_.count(id) != 0; }

  // Tokens stored for `id` (its next position); -1 when unknown.
  int64_t SequenceLength(SequenceId id) const;

  int64_t num_sequences() const {
    return static_cast<int64_t>(sequences_.size());
  }

  // --- Capacity
  // --------------------------------------------------------------------

  const KvCacheDims& dims() const { return dims_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const {
    return static_cast<int64_t>(free_list_.size());
  }
  int64_t capacity_tokens() const { return num_blocks_ * block_size_; }

  // Tokens that fit in the free blocks (the unused tail of a sequence's last
  // block is not counted: only that sequence can use it).
  int64_t FreeTokens() const { return free_blocks() * block_size_; }

  // Fraction of blocks in use, in [0, 1]; the autoscaling signal.
  double UsageRatio() const;

  // Whether a new sequence of `tokens` tokens fits in the free blocks now.
  bool CanAdmit(int64_t tokens) const {
    return BlocksFor(tokens) <= free_blocks();
  }

  // Whether a sequence of `tokens` tokens could fit in an otherwise empty
  // cache; a request for which this is false can never run and should be
  // rejected.
  bool CanEverFit(int64_t tokens) const {
    return BlocksFor(tokens) <= num_blocks_;
  }

  // Blocks that appending `new_tokens` to `id` would take from the free list
  // (for an unknown id, as if it were empty).
  int64_t BlocksNeeded(SequenceId id, int64_t new_tokens) const;

  // --- Used by the model's step
  // ----------------------------------------------------

  // Makes room for `growth[i].second` more tokens in sequence
  // `growth[i].first`, for every i, or for none of them: ResourceExhausted
  // (nothing changed) when the free blocks do not suffice, NotFound for an
  // unknown id.
  absl::Status Reserve(
      const std::vector<std::pair<SequenceId, int64_t>>& growth);

  // Records that `n` more tokens of `id` have been written (after Reserve).
  void Advance(SequenceId id, int64_t n);

  // The blocks of `id`, in position order. `id` must exist.
  const std::vector<int32_t>& BlockTable(SequenceId id) const;

  // Storage slot of position `pos` of sequence `id` (reserved beforehand).
  int64_t Slot(SequenceId id, int64_t pos) const;

  // Layer `layer`'s storage: [2 * num_kv_heads, num_blocks * block_size,
  // head_dim].
  at::Tensor layer(int64_t layer) const { return layers_[layer]; }

 private:
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> blocks;
  };

  KvCache() = default;
  int64_t BlocksFor(int64_t tokens) const {
    return (tokens + block_size_ - 1) / block_size_;
  }

  KvCacheDims dims_;
  int64_t block_size_ = 0;
  int64_t num_blocks_ = 0;
  at::Tensor storage_;  // [num_layers, 2 * kv_heads, slots, head_dim]
  std::vector<at::Tensor> layers_;  // Views of storage_, one per layer.
  std::vector<int32_t> free_list_;  // Stack; the lowest ids are popped first.
  std::unordered_map<SequenceId, Sequence> sequences_;
};

}  // namespace hearth::model

#endif  // HEARTH_COMMON_MODEL_KV_CACHE_H_
