#include "services/worker/scheduler.h"

#include <algorithm>

namespace hearth::worker {

bool Scheduler::WaitingOrder::operator()(const ScheduledSequence* a,
                                         const ScheduledSequence* b) const {
  const uint32_t pa = a->priority == 0 ? default_priority : a->priority;
  const uint32_t pb = b->priority == 0 ? default_priority : b->priority;
  if (pa != pb) return pa < pb;
  return a->arrival < b->arrival;
}

Scheduler::Scheduler(const SchedulerOptions& options)
    : options_(options), waiting_(WaitingOrder{options.default_priority}) {
  options_.kv_block_size = std::max<int64_t>(1, options_.kv_block_size);
  options_.max_batch_tokens = std::max<int64_t>(1, options_.max_batch_tokens);
  options_.max_running_sequences =
      std::max<int64_t>(1, options_.max_running_sequences);
}

bool Scheduler::CanEverFit(int64_t reserve_tokens) const {
  return BlocksFor(reserve_tokens) <= options_.kv_blocks;
}

void Scheduler::Add(ScheduledSequence* sequence) {
  sequence->arrival = next_arrival_++;
  sequence->running = false;
  sequence->prefilled = 0;
  sequence->reserved_blocks = 0;
  waiting_.insert(sequence);
}

std::vector<ScheduledSequence*> Scheduler::waiting() const {
  return std::vector<ScheduledSequence*>(waiting_.begin(), waiting_.end());
}

std::vector<StepEntry> Scheduler::Schedule() {
  std::vector<StepEntry> step;
  int64_t budget = options_.max_batch_tokens;
  // 1. Decodes. They are never held back by the budget: a running sequence
  // must keep moving (max_running_sequences bounds their number).
  for (ScheduledSequence* s : running_) {
    if (!s->prefill_done()) continue;
    step.push_back({s, 1, /*is_prefill=*/false, /*produces_token=*/true,
                    /*newly_admitted=*/false});
    --budget;
  }
  // 2. Prompts already under way, oldest first.
  for (ScheduledSequence* s : running_) {
    if (s->prefill_done() || budget <= 0) continue;
    const int64_t n = std::min(budget, s->prompt_tokens - s->prefilled);
    step.push_back({s, n, true, s->prefilled + n == s->prompt_tokens, false});
    budget -= n;
  }
  // 3. Admissions.
  while (!waiting_.empty() && budget > 0 &&
         num_running() < options_.max_running_sequences) {
    ScheduledSequence* s = *waiting_.begin();
    const int64_t blocks = BlocksFor(s->reserve_tokens);
    if (reserved_blocks_ + blocks > options_.kv_blocks) break;
    waiting_.erase(waiting_.begin());
    s->running = true;
    s->reserved_blocks = blocks;
    reserved_blocks_ += blocks;
    running_.push_back(s);
    const int64_t n = std::min(budget, s->prompt_tokens - s->prefilled);
    step.push_back({s, n, true, s->prefilled + n == s->prompt_tokens, true});
    budget -= n;
  }
  return step;
}

void Scheduler::Commit(const std::vector<StepEntry>& step) {
  for (const StepEntry& e : step) {
    if (e.is_prefill) e.sequence->prefilled += e.num_tokens;
  }
}

void Scheduler::Remove(ScheduledSequence* sequence) {
  if (sequence->running) {
    auto it = std::find(running_.begin(), running_.end(), sequence);
    if (it != running_.end()) running_.erase(it);
    reserved_blocks_ -= sequence->reserved_blocks;
    sequence->reserved_blocks = 0;
    sequence->running = false;
    return;
  }
  auto it = waiting_.find(sequence);
  if (it != waiting_.end() && *it == sequence) waiting_.erase(it);
}

}  // namespace hearth::worker
