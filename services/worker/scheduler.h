// Iteration-level (continuous) batching policy for one model replica.
//
// The scheduler decides, before every model step, which sequences take part and
// with how many tokens. It is pure bookkeeping (no tensors, no threads), so the
// policy can be tested on its own; the engine executes what it plans.
//
// Each step, under a token budget (--max_batch_tokens):
//   1. every running sequence whose prompt is fully in the KV cache decodes one
//      token (decode first: it is what keeps the streams flowing, and a decode
//      token costs as much as one prompt token);
//   2. running sequences still in their prompt continue it with as many tokens
//   as
//      the remaining budget allows (chunked prefill: a long prompt does not
//      stall everyone else's decoding for a whole step);
//   3. waiting sequences are admitted, most urgent priority first and FIFO
//   within
//      a priority, while the budget, --max_running_sequences and the KV cache
//      allow. Admission stops at the first sequence that does not fit, so a
//      large request is not starved by a stream of small ones behind it.
//
// KV admission reserves a sequence's worst case (prompt + max_new_tokens) in
// whole cache blocks, like TGI's max-batch-total-tokens: once admitted, a
// sequence can always finish, so there is no preemption and no recomputation.
// The price is that the cache is not packed as tightly as vLLM's (which admits
// on the prompt and preempts when blocks run out); sequences that stop early
// give their reservation back at once. A sequence whose worst case exceeds the
// whole cache can never run; CanEverFit() lets the engine reject it up front.
//
// Not thread-safe: one scheduler per model replica, used from its thread.
#ifndef HEARTH_SERVICES_WORKER_SCHEDULER_H_
#define HEARTH_SERVICES_WORKER_SCHEDULER_H_

#include <cstdint>
#include <set>
#include <vector>

namespace hearth::worker {

// The part of a sequence the scheduler reads and updates; the engine's sequence
// type extends it.
struct ScheduledSequence {
  // Scheduling priority as in the proto: 1 = most urgent, larger = less urgent,
  // 0 = the scheduler's default level.
  uint32_t priority = 0;
  // Tokens to prefill before the first decode step.
  int64_t prompt_tokens = 0;
  // KV-cache tokens to reserve at admission: prompt + max_new_tokens.
  int64_t reserve_tokens = 0;

  // Maintained by the scheduler.
  int64_t prefilled = 0;  // Prompt tokens already stepped.
  bool running = false;   // Admitted (holds a reservation).
  uint64_t arrival = 0;   // Order of Add() calls.
  int64_t reserved_blocks = 0;

  bool prefill_done() const { return prefilled >= prompt_tokens; }
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 512;
  int64_t max_running_sequences = 256;
  // The KV cache: number of blocks and tokens per block.
  int64_t kv_blocks = 0;
  int64_t kv_block_size = 16;
  // Level that priority 0 maps to (Triton's default_priority_level).
  uint32_t default_priority = 2;
};

// One sequence's share of a planned step.
struct StepEntry {
  ScheduledSequence* sequence = nullptr;
  int64_t num_tokens = 0;   // 1 for decode; a prompt chunk otherwise.
  bool is_prefill = false;  // The tokens come from the prompt.
  // The step's logits for this entry give a new token (decode, or the last
  // chunk of the prompt).
  bool produces_token = false;
  bool newly_admitted = false;  // First step of this sequence.
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerOptions& options);
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Whether a sequence needing `reserve_tokens` could ever be admitted (it fits
  // in the empty cache).
  bool CanEverFit(int64_t reserve_tokens) const;

  // Queues a sequence (not owned; it must stay alive until Finish/Remove).
  void Add(ScheduledSequence* sequence);

  // Plans the next step and admits waiting sequences. Does not advance
  // `prefilled`: call Commit() once the step ran.
  std::vector<StepEntry> Schedule();

  // Records that a planned step ran: advances the prefill of its entries.
  void Commit(const std::vector<StepEntry>& step);

  // Removes a sequence, running or waiting, and releases its reservation
  // (finished, cancelled, or failed). No-op for an unknown sequence.
  void Remove(ScheduledSequence* sequence);

  bool empty() const { return running_.empty() && waiting_.empty(); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  const std::vector<ScheduledSequence*>& running() const { return running_; }
  // Waiting sequences in admission order.
  std::vector<ScheduledSequence*> waiting() const;

  int64_t capacity_tokens() const {
    return options_.kv_blocks * options_.kv_block_size;
  }
  int64_t reserved_tokens() const {
    return reserved_blocks_ * options_.kv_block_size;
  }
  // Tokens not reserved by any running sequence: what a new one may take.
  int64_t unreserved_tokens() const {
    return capacity_tokens() - reserved_tokens();
  }
  const SchedulerOptions& options() const { return options_; }

 private:
  struct WaitingOrder {
    bool operator()(const ScheduledSequence* a,
                    const ScheduledSequence* b) const;
    uint32_t default_priority;
  };

  int64_t BlocksFor(int64_t tokens) const {
    return (tokens + options_.kv_block_size - 1) / options_.kv_block_size;
  }

  SchedulerOptions options_;
  std::vector<ScheduledSequence*> running_;  // In admission order.
  std::set<ScheduledSequence*, WaitingOrder> waiting_;
  int64_t reserved_blocks_ = 0;
  uint64_t next_arrival_ = 0;
};

}  // namespace hearth::worker

#endif  // HEARTH_SERVICES_WORKER_SCHEDULER_H_
