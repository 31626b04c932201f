#include "services/worker/engine.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log/logging.h"
#include "common/model/kv_cache.h"
#include "common/model/llama_model.h"
#include "common/model/sampler.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/tokenizer.h"
#include "services/worker/scheduler.h"

namespace hearth::worker {

std::string_view FinishReasonLabel(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
    case FinishReason::kNone:
      break;
  }
  return "";
}

namespace {

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

std::string StateName(ModelState state) {
  switch (state) {
    case ModelState::kLoading:
      return "loading";
    case ModelState::kReady:
      return "ready";
    case ModelState::kUnloading:
      return "unloading";
    case ModelState::kFailed:
      return "failed";
    case ModelState::kUnloaded:
      break;
  }
  return "unloaded";
}

}  // namespace

// ---------------------------------------------------------------------------
// Sequences and models.

struct Engine::Sequence : ScheduledSequence {
  std::string id;
  model::SequenceId cache_id = 0;
  std::shared_ptr<const ModelAssets> assets;
  std::vector<int64_t> prompt;
  model::SamplingParams params;
  std::unique_ptr<model::Sampler> sampler;
  std::unique_ptr<tokenizer::StreamingDecoder> decoder;
  std::shared_ptr<EventCallback> callback;

  // Output text decoded so far; text[0, text_sent) has been delivered. The last
  // `holdback` bytes are held back while they could still turn out to be the
  // start of a stop string (which must not reach the client).
  std::string text;
  size_t text_sent = 0;
  size_t stop_checked = 0;
  size_t holdback = 0;

  int64_t last_token = -1;
  int64_t generated = 0;
  std::optional<absl::Time> deadline;
  double gateway_queue_seconds = 0;
  absl::Time arrival;    // Including the gateway's queue.
  absl::Time submitted;  // Arrival at the engine.
  absl::Time first_scheduled;
  absl::Time first_token;
  absl::Time last_token_time;
  bool scheduled = false;
  bool has_token = false;
  bool in_cache = false;

  std::atomic<bool> cancel_requested{false};
  // Set when placed; read by Cancel() on other threads.
  std::atomic<Replica*> replica{nullptr};
};

struct Engine::ModelEntry {
  ModelStatus status;
  std::shared_ptr<const ModelAssets> assets;
  std::vector<Replica*> replicas;
};

// ---------------------------------------------------------------------------
// Replica: one device, one thread.

class Engine::Replica {
 public:
  struct ModelStats {
    int64_t capacity_tokens = 0;
    int64_t unreserved_tokens = 0;
    int64_t running = 0;
    int64_t waiting = 0;
    int64_t memory_bytes = 0;
  };

  Replica(Engine* engine, DeviceSpec device, int threads)
      : engine_(engine), device_(std::move(device)), threads_(threads) {}
  ~Replica() { Stop(); }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  const DeviceSpec& device() const { return device_; }
  int threads() const { return threads_; }
  int64_t load() const { return load_.load(); }

  // The future is ready once the replica serves the model and its status
  // shows it (or the replica stopped).
  std::future<void> AddInstance(std::shared_ptr<const ModelAssets> assets,
                                ReplicaModel rm,
                                std::unique_ptr<ReplicaObserver> observer) {
    Command c;
    c.kind = Command::kAdd;
    c.assets = std::move(assets);
    c.replica_model = std::make_shared<ReplicaModel>(std::move(rm));
    c.observer = std::shared_ptr<ReplicaObserver>(std::move(observer));
    c.drained = std::make_shared<std::promise<void>>();
    std::future<void> added = c.drained->get_future();
    Push(std::move(c));
    return added;
  }

  std::future<void> Drain(const std::string& model) {
    Command c;
    c.kind = Command::kDrain;
    c.model = model;
    c.drained = std::make_shared<std::promise<void>>();
    std::future<void> f = c.drained->get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (exited_) {
        c.drained->set_value();
        return f;
      }
      inbox_.push_back(std::move(c));
    }
    cv_.notify_all();
    return f;
  }

  void Enqueue(std::shared_ptr<Sequence> sequence) {
    sequence->replica.store(this);
    load_.fetch_add(1);
    pending_.fetch_add(1);
    Command c;
    c.kind = Command::kSequence;
    c.sequence = std::move(sequence);
    Push(std::move(c));
  }

  // Wakes the thread to look at cancellations.
  void Wake() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake_ = true;
    }
    cv_.notify_all();
  }

  std::map<std::string, ModelStats> Snapshot(int64_t* pending) const {
    std::lock_guard<std::mutex> lock(stats_mu_);
    *pending = pending_.load();
    return stats_;
  }

 private:
  struct Command {
    enum Kind { kAdd, kSequence, kDrain } kind = kSequence;
    std::string model;
    std::shared_ptr<const ModelAssets> assets;
    std::shared_ptr<ReplicaModel> replica_model;
    std::shared_ptr<ReplicaObserver> observer;
    std::shared_ptr<Sequence> sequence;
    // kDrain: set when the model is gone; kAdd: when it is served.
    std::shared_ptr<std::promise<void>> drained;
  };

  struct Instance {
    std::shared_ptr<const ModelAssets> assets;
    std::shared_ptr<ReplicaModel> rm;
    std::unique_ptr<Scheduler> scheduler;
    std::shared_ptr<ReplicaObserver> observer;
    std::unordered_map<Sequence*, std::shared_ptr<Sequence>> sequences;
    bool draining = false;
    std::vector<std::shared_ptr<std::promise<void>>> drained;
  };

  void Push(Command c) {
    bool rejected = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (exited_) {
        rejected = true;
      } else {
        inbox_.push_back(std::move(c));
      }
    }
    if (rejected) {
      if (c.kind == Command::kSequence) {
        pending_.fetch_sub(1);
        FinishUnplaced(*c.sequence,
                       absl::UnavailableError("worker is stopping"));
      } else if (c.drained) {
        c.drained->set_value();
      }
      return;
    }
    cv_.notify_all();
  }

  bool HasWork() const {
    for (const auto& [name, inst] : instances_) {
      if (!inst->scheduler->empty()) return true;
    }
    return false;
  }

  void Run();
  void Handle(Command& c);
  void Reap(Instance& inst, absl::Time now);
  void StepInstance(Instance& inst);
  bool EmitToken(Instance& inst, Sequence& s, int64_t token, absl::Time now);
  void FillFinal(Instance* inst, Sequence& s, FinishReason reason,
                 absl::Time now, SequenceEvent& event);
  void Finish(Instance& inst, Sequence& s, FinishReason reason,
              absl::Status error);
  void Release(Instance& inst, Sequence& s, SequenceEvent event);
  void FinishUnplaced(Sequence& s, absl::Status error);
  void Publish();
  void ReportMemory();

  Engine* engine_;
  DeviceSpec device_;
  int threads_;
  std::thread thread_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Command> inbox_;
  bool stop_ = false;
  bool wake_ = false;
  bool exited_ = false;

  std::atomic<int64_t> load_{0};     // Sequences placed here, not finished.
  std::atomic<int64_t> pending_{0};  // Of which still in the inbox.

  mutable std::mutex stats_mu_;
  std::map<std::string, ModelStats> stats_;

  // Owned by the replica thread.
  std::map<std::string, std::unique_ptr<Instance>> instances_;
};

void Engine::Replica::Run() {
  if (!device_.cuda) model::SetCpuThreads(threads_);
  ReportMemory();
  while (true) {
    std::deque<Command> commands;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock,
               [&] { return stop_ || wake_ || !inbox_.empty() || HasWork(); });
      if (stop_) break;
      commands.swap(inbox_);
      wake_ = false;
    }
    for (Command& c : commands) Handle(c);
    const absl::Time now = absl::Now();
    for (auto& [name, inst] : instances_) Reap(*inst, now);
    for (auto& [name, inst] : instances_) StepInstance(*inst);
    // Models being unloaded go once their last sequence has. Their waiters
    // hear of it only when the memory, status and gauges no longer show them.
    std::vector<std::shared_ptr<std::promise<void>>> unloaded;
    for (auto it = instances_.begin(); it != instances_.end();) {
      Instance& inst = *it->second;
      if (inst.draining && inst.sequences.empty()) {
        unloaded.insert(unloaded.end(), inst.drained.begin(),
                        inst.drained.end());
        it = instances_.erase(it);
      } else {
        ++it;
      }
    }
    Publish();
    if (!unloaded.empty()) {
      ReportMemory();
      for (auto& p : unloaded) p->set_value();
    }
  }

  // Stopping: everything still here is cancelled, so that every stream gets
  // its final event.
  std::deque<Command> rest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    exited_ = true;
    rest.swap(inbox_);
  }
  for (Command& c : rest) {
    if (c.kind == Command::kSequence) {
      pending_.fetch_sub(1);
      FinishUnplaced(*c.sequence, absl::OkStatus());
    } else if (c.drained) {
      c.drained->set_value();
    }
  }
  for (auto& [name, inst] : instances_) {
    std::vector<Sequence*> all;
    for (auto& [ptr, seq] : inst->sequences) all.push_back(ptr);
    for (Sequence* s : all) {
      Finish(*inst, *s, FinishReason::kCancelled, absl::OkStatus());
    }
    for (auto& p : inst->drained) p->set_value();
  }
  instances_.clear();
  Publish();
  ReportMemory();
}

void Engine::Replica::Handle(Command& c) {
  switch (c.kind) {
    case Command::kAdd: {
      auto inst = std::make_unique<Instance>();
      inst->assets = c.assets;
      inst->rm = c.replica_model;
      inst->observer = c.observer;
      SchedulerOptions so;
      so.max_batch_tokens = engine_->options_.max_batch_tokens;
      so.max_running_sequences = engine_->options_.max_running_sequences;
      so.kv_blocks = inst->rm->cache->num_blocks();
      so.kv_block_size = inst->rm->cache->block_size();
      inst->scheduler = std::make_unique<Scheduler>(so);
      instances_[c.assets->name] = std::move(inst);
      ReportMemory();
      Publish();
      c.drained->set_value();
      return;
    }
    case Command::kDrain: {
      auto it = instances_.find(c.model);
      if (it == instances_.end()) {
        c.drained->set_value();
      } else {
        it->second->draining = true;
        it->second->drained.push_back(c.drained);
      }
      return;
    }
    case Command::kSequence: {
      pending_.fetch_sub(1);
      Sequence& s = *c.sequence;
      auto it = instances_.find(s.assets->name);
      if (it == instances_.end()) {
        FinishUnplaced(s, absl::UnavailableError(absl::StrCat(
                              "model \"", s.assets->name,
                              "\" is not loaded on ", device_.name)));
        return;
      }
      Instance& inst = *it->second;
      inst.scheduler->Add(&s);
      inst.sequences[&s] = c.sequence;
      return;
    }
  }
}

void Engine::Replica::Reap(Instance& inst, absl::Time now) {
  std::vector<Sequence*> expired;
  for (auto& [ptr, seq] : inst.sequences) {
    if (seq->cancel_requested.load(std::memory_order_relaxed) ||
        (seq->deadline.has_value() && now >= *seq->deadline)) {
      expired.push_back(ptr);
    }
  }
  for (Sequence* s : expired) {
    Finish(inst, *s, FinishReason::kCancelled, absl::OkStatus());
  }
}

void Engine::Replica::StepInstance(Instance& inst) {
  if (inst.scheduler->empty()) return;
  std::vector<StepEntry> entries = inst.scheduler->Schedule();
  if (entries.empty()) return;
  model::KvCache& cache = *inst.rm->cache;
  const absl::Time start = absl::Now();
  std::vector<model::SequenceInput> batch;
  batch.reserve(entries.size());
  int64_t prompt_tokens = 0;
  absl::Status status;
  for (const StepEntry& e : entries) {
    Sequence& s = *static_cast<Sequence*>(e.sequence);
    if (e.newly_admitted) {
      s.scheduled = true;
      s.first_scheduled = start;
      engine_->queued_.fetch_sub(1);
      if (status.ok()) status = cache.AddSequence(s.cache_id);
      s.in_cache = status.ok();
    }
    model::SequenceInput in;
    in.id = s.cache_id;
    if (e.is_prefill) {
      in.tokens.assign(s.prompt.begin() + s.prefilled,
                       s.prompt.begin() + s.prefilled + e.num_tokens);
      prompt_tokens += e.num_tokens;
    } else {
      in.tokens.push_back(s.last_token);
    }
    batch.push_back(std::move(in));
  }
  at::Tensor logits;
  if (status.ok()) {
    auto step = inst.rm->model->Step(cache, batch);
    if (step.ok()) {
      try {
        logits = step->to(at::kCPU).contiguous();
      } catch (const c10::Error& e) {
        status = absl::InternalError(e.what_without_backtrace());
      }
    } else {
      status = step.status();
    }
  }
  if (!status.ok()) {
    HLOG(ERROR) << "step of " << inst.assets->name << " on " << device_.name
                << " failed: " << status;
    status = absl::InternalError(absl::StrCat(
        "model step failed on ", device_.name, ": ", status.message()));
    for (const StepEntry& e : entries) {
      Finish(inst, *static_cast<Sequence*>(e.sequence), FinishReason::kError,
             status);
    }
    return;
  }
  inst.scheduler->Commit(entries);
  const absl::Time now = absl::Now();
  const int64_t vocab = logits.size(1);
  const float* data = logits.data_ptr<float>();
  // Counted before the tokens go out, so that a client that has seen its last
  // token also finds it in the metrics.
  if (inst.observer) {
    int64_t generated = 0;
    for (const StepEntry& e : entries) generated += e.produces_token ? 1 : 0;
    inst.observer->OnStep(static_cast<int64_t>(entries.size()), prompt_tokens,
                          generated);
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    if (!entries[i].produces_token) continue;
    Sequence& s = *static_cast<Sequence*>(entries[i].sequence);
    const int64_t token =
        s.sampler->Sample(data + static_cast<int64_t>(i) * vocab, vocab);
    EmitToken(inst, s, token, now);
  }
}

// Delivers a token; returns whether it finished the sequence (which is then
// gone: `s` must not be used).
bool Engine::Replica::EmitToken(Instance& inst, Sequence& s, int64_t token,
                                absl::Time now) {
  const model::FinishReason accepted = s.sampler->Accept(token);
  ++s.generated;
  if (!s.has_token) {
    s.has_token = true;
    s.first_token = now;
    if (inst.observer) inst.observer->OnFirstToken(Seconds(now - s.arrival));
  } else if (inst.observer) {
    inst.observer->OnInterTokenLatency(Seconds(now - s.last_token_time));
  }
  s.last_token_time = now;
  s.last_token = token;

  FinishReason reason = FinishReason::kNone;
  switch (accepted) {
    case model::FinishReason::kEos:
      reason = FinishReason::kEos;
      break;
    case model::FinishReason::kStop:
      reason = FinishReason::kStop;
      break;
    case model::FinishReason::kLength:
      reason = FinishReason::kLength;
      break;
    case model::FinishReason::kNone:
      break;
  }
  SequenceEvent event;
  event.sequence_id = s.id;
  event.token_ids.push_back(static_cast<int32_t>(token));
  bool stopped_by_string = false;
  if (s.decoder) {
    auto piece = s.decoder->Push(static_cast<int32_t>(token));
    // Ids beyond the tokenizer's vocabulary (padded embeddings) have no text.
    if (piece.ok()) s.text += *piece;
    if (reason == FinishReason::kNone) {
      // Only the text that is final can be searched: the decoder's pending
      // bytes are not in s.text yet.
      if (!s.params.stop.empty()) {
        const size_t pos =
            model::FindStopString(s.params.stop, s.text, s.stop_checked);
        s.stop_checked = s.text.size();
        if (pos != std::string::npos) {
          s.text.resize(pos);
          reason = FinishReason::kStop;
          stopped_by_string = true;
        }
      }
    }
  }
  if (reason == FinishReason::kNone &&
      inst.rm->cache->SequenceLength(s.cache_id) + 1 >
          inst.assets->config.max_position_embeddings) {
    reason = FinishReason::kLength;
  }
  if (reason != FinishReason::kNone) {
    if (s.decoder && !stopped_by_string) {
      s.text += s.decoder->Finish();
      if (!s.params.stop.empty()) {
        const size_t pos =
            model::FindStopString(s.params.stop, s.text, s.stop_checked);
        if (pos != std::string::npos) s.text.resize(std::max(pos, s.text_sent));
      }
    }
    event.text = s.text.substr(std::min(s.text_sent, s.text.size()));
    s.text_sent = s.text.size();
    FillFinal(&inst, s, reason, now, event);
    Release(inst, s, std::move(event));
    return true;
  }
  size_t safe = s.text.size() > s.holdback ? s.text.size() - s.holdback : 0;
  // Never split a UTF-8 character.
  while (safe > s.text_sent && safe < s.text.size() &&
         (static_cast<unsigned char>(s.text[safe]) & 0xC0) == 0x80) {
    --safe;
  }
  if (safe > s.text_sent) {
    event.text = s.text.substr(s.text_sent, safe - s.text_sent);
    s.text_sent = safe;
  }
  (*s.callback)(std::move(event));
  return false;
}

void Engine::Replica::FillFinal(Instance* inst, Sequence& s,
                                FinishReason reason, absl::Time now,
                                SequenceEvent& event) {
  event.finish_reason = reason;
  event.prompt_tokens = static_cast<int64_t>(s.prompt.size());
  event.completion_tokens = s.generated;
  const absl::Time started = s.scheduled ? s.first_scheduled : now;
  event.timing.queue_seconds =
      s.gateway_queue_seconds + std::max(0.0, Seconds(started - s.submitted));
  event.timing.time_to_first_token_seconds =
      s.has_token ? Seconds(s.first_token - s.arrival) : 0;
  event.timing.total_seconds = Seconds(now - s.arrival);
  if (inst != nullptr && inst->observer) {
    inst->observer->OnFinished(reason, event.timing.queue_seconds,
                               event.timing.total_seconds);
  }
}

void Engine::Replica::Finish(Instance& inst, Sequence& s, FinishReason reason,
                             absl::Status error) {
  SequenceEvent event;
  event.sequence_id = s.id;
  // Text held back for stop strings is delivered: no stop string was found in
  // it so far.
  event.text = s.text.substr(std::min(s.text_sent, s.text.size()));
  FillFinal(&inst, s, reason, absl::Now(), event);
  event.error = std::move(error);
  if (!s.scheduled) engine_->queued_.fetch_sub(1);
  Release(inst, s, std::move(event));
}

// Frees the sequence's cache and reservation, publishes the new load, then
// delivers its final event: a client that sees the end of its stream also sees
// the memory back in the metrics.
void Engine::Replica::Release(Instance& inst, Sequence& s,
                              SequenceEvent event) {
  if (s.in_cache) {
    inst.rm->cache->FreeSequence(s.cache_id).IgnoreError();
    s.in_cache = false;
  }
  inst.scheduler->Remove(&s);
  engine_->Forget(s.id);
  load_.fetch_sub(1);
  std::shared_ptr<Sequence> keep = inst.sequences[&s];
  inst.sequences.erase(&s);
  Publish();
  (*keep->callback)(std::move(event));
}

// A sequence that never reached a model instance.
void Engine::Replica::FinishUnplaced(Sequence& s, absl::Status error) {
  SequenceEvent event;
  event.sequence_id = s.id;
  event.finish_reason =
      error.ok() ? FinishReason::kCancelled : FinishReason::kError;
  event.prompt_tokens = static_cast<int64_t>(s.prompt.size());
  const absl::Time now = absl::Now();
  event.timing.queue_seconds =
      s.gateway_queue_seconds + Seconds(now - s.submitted);
  event.timing.total_seconds = Seconds(now - s.arrival);
  event.error = std::move(error);
  engine_->queued_.fetch_sub(1);
  engine_->Forget(s.id);
  load_.fetch_sub(1);
  (*s.callback)(std::move(event));
}

void Engine::Replica::Publish() {
  std::map<std::string, ModelStats> stats;
  for (auto& [name, inst] : instances_) {
    ModelStats& m = stats[name];
    m.capacity_tokens = inst->scheduler->capacity_tokens();
    m.unreserved_tokens = inst->scheduler->unreserved_tokens();
    m.running = inst->scheduler->num_running();
    m.waiting = inst->scheduler->num_waiting();
    m.memory_bytes = inst->rm->weight_bytes + inst->rm->cache_bytes;
    if (inst->observer) {
      inst->observer->OnLoad(m.running, m.waiting,
                             inst->rm->cache->UsageRatio());
    }
  }
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_ = std::move(stats);
}

void Engine::Replica::ReportMemory() {
  if (engine_->options_.observer == nullptr) return;
  int64_t bytes = 0;
  for (auto& [name, inst] : instances_) {
    bytes += inst->rm->weight_bytes + inst->rm->cache_bytes;
  }
  engine_->options_.observer->OnDeviceMemory(device_.name, bytes);
}

// ---------------------------------------------------------------------------
// Engine.

Engine::Engine(const EngineOptions& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    const EngineOptions& options) {
  if (options.kv_cache_tokens < 1 || options.kv_block_size < 1) {
    return absl::InvalidArgumentError(
        "kv_cache_tokens and kv_block_size must be >= 1");
  }
  if (options.max_batch_tokens < 1 || options.max_running_sequences < 1) {
    return absl::InvalidArgumentError(
        "max_batch_tokens and max_running_sequences must be >= 1");
  }
  if (options.max_batch_tokens < options.max_running_sequences) {
    // Every running sequence decodes one token per step; a smaller budget
    // would leave no room to admit anyone (vLLM has the same rule).
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_tokens (", options.max_batch_tokens,
                     ") must be >= max_running_sequences (",
                     options.max_running_sequences, ")"));
  }
  if (options.dtype != "auto" && options.dtype != "float32" &&
      options.dtype != "float16" && options.dtype != "bfloat16") {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: \"", options.dtype,
                     "\" is not one of auto, float32, float16, bfloat16"));
  }
  HEARTH_ASSIGN_OR_RETURN(std::vector<DeviceSpec> devices,
                          ParseDevices(options.devices));
  std::unique_ptr<Engine> engine(new Engine(options));
  engine->devices_ = devices;
  int cpu_replicas = 0;
  for (const DeviceSpec& d : devices) cpu_replicas += d.cuda ? 0 : 1;
  int threads = options.threads > 0
                    ? options.threads
                    : static_cast<int>(std::thread::hardware_concurrency());
  threads = std::max(1, threads);
  const int per_replica =
      cpu_replicas > 0 ? std::max(1, threads / cpu_replicas) : 1;
  for (const DeviceSpec& d : devices) {
    engine->replicas_.push_back(
        std::make_unique<Replica>(engine.get(), d, d.cuda ? 1 : per_replica));
  }
  for (auto& r : engine->replicas_) r->Start();
  HLOG(INFO) << "engine: " << devices.size() << " replica(s) on "
             << absl::StrJoin(options.devices, ",") << ", " << per_replica
             << " CPU thread(s) per CPU replica, kv_cache_tokens="
             << options.kv_cache_tokens
             << " max_batch_tokens=" << options.max_batch_tokens;
  return engine;
}

Engine::~Engine() { Shutdown(); }

void Engine::StopAccepting() { accepting_.store(false); }

void Engine::Shutdown() {
  accepting_.store(false);
  if (shut_down_.exchange(true)) return;
  for (auto& r : replicas_) r->Stop();
}

void Engine::Forget(const std::string& sequence_id) {
  std::lock_guard<std::mutex> lock(sequences_mu_);
  sequences_.erase(sequence_id);
}

int Engine::Cancel(const std::vector<std::string>& sequence_ids) {
  int cancelled = 0;
  std::vector<Replica*> wake;
  {
    std::lock_guard<std::mutex> lock(sequences_mu_);
    for (const std::string& id : sequence_ids) {
      auto it = sequences_.find(id);
      if (it == sequences_.end()) continue;
      if (!it->second->cancel_requested.exchange(true)) ++cancelled;
      if (Replica* r = it->second->replica.load(); r != nullptr) {
        wake.push_back(r);
      }
    }
  }
  std::sort(wake.begin(), wake.end());
  wake.erase(std::unique(wake.begin(), wake.end()), wake.end());
  for (Replica* r : wake) r->Wake();
  return cancelled;
}

absl::StatusOr<ModelStatus> Engine::LoadModel(
    const std::string& name, const std::string& path,
    const std::vector<std::string>& devices) {
  if (shut_down_.load()) return absl::UnavailableError("worker is stopping");
  HEARTH_ASSIGN_OR_RETURN(
      std::string resolved,
      ResolveModelPath(options_.model_repository, name, path));
  std::vector<Replica*> targets;
  if (devices.empty()) {
    for (auto& r : replicas_) targets.push_back(r.get());
  } else {
    for (size_t i = 0; i < devices.size(); ++i) {
      Replica* found = nullptr;
      for (auto& r : replicas_) {
        if (r->device().name == devices[i]) found = r.get();
      }
      if (found == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("devices[", i, "] = \"", devices[i],
                         "\" is not one of this worker's devices (",
                         absl::StrJoin(options_.devices, ", "), ")"));
      }
      if (std::find(targets.begin(), targets.end(), found) == targets.end()) {
        targets.push_back(found);
      }
    }
  }
  auto entry = std::make_shared<ModelEntry>();
  entry->status.name = name;
  entry->status.state = ModelState::kLoading;
  entry->status.path = resolved;
  for (Replica* r : targets) entry->status.devices.push_back(r->device().name);
  {
    std::unique_lock<std::mutex> lock(models_mu_);
    auto it = models_.find(name);
    if (it != models_.end() &&
        it->second->status.state != ModelState::kFailed) {
      std::shared_ptr<ModelEntry> current = it->second;
      if (current->status.path != resolved) {
        return absl::FailedPreconditionError(
            absl::StrCat("model \"", name, "\" is already loaded from ",
                         current->status.path, "; unload it first"));
      }
      if (current->status.state == ModelState::kUnloading) {
        return absl::UnavailableError(
            absl::StrCat("model \"", name, "\" is being unloaded; retry"));
      }
      // Someone else is loading it: answer when they are done, as promised.
      models_cv_.wait(
          lock, [&] { return current->status.state != ModelState::kLoading; });
      if (current->status.state == ModelState::kFailed) {
        return absl::UnavailableError(absl::StrCat(
            "model \"", name, "\" failed to load: ", current->status.error));
      }
      return current->status;
    }
    models_[name] = entry;
  }

  HLOG(INFO) << "loading model " << name << " from " << resolved << " onto "
             << absl::StrJoin(entry->status.devices, ",");
  const absl::Time start = absl::Now();
  std::vector<ReplicaModel> loaded;
  absl::Status status;
  std::shared_ptr<const ModelAssets> assets;
  for (Replica* r : targets) {
    const absl::Time t0 = absl::Now();
    if (!r->device().cuda) model::SetCpuThreads(r->threads());
    ReplicaLoadOptions lo;
    lo.dtype = options_.dtype;
    lo.kv_cache_tokens = options_.kv_cache_tokens;
    lo.kv_block_size = options_.kv_block_size;
    auto rm = LoadReplicaModel(resolved, r->device(), lo);
    if (!rm.ok()) {
      status = rm.status();
      break;
    }
    if (options_.observer != nullptr) {
      options_.observer->OnModelLoaded(name, r->device().name,
                                       Seconds(absl::Now() - t0));
    }
    loaded.push_back(std::move(rm).value());
  }
  if (status.ok()) {
    auto a = LoadModelAssets(name, resolved, loaded.front().model->config(),
                             loaded.front().model->quantization());
    if (a.ok()) {
      assets = *a;
    } else {
      status = a.status();
    }
  }
  std::lock_guard<std::mutex> lock(models_mu_);
  // Whoever waits for this load (a concurrent LoadModel) wakes when we leave.
  struct Notify {
    std::condition_variable& cv;
    ~Notify() { cv.notify_all(); }
  } notify{models_cv_};
  if (!status.ok()) {
    HLOG(ERROR) << "loading model " << name << " failed: " << status;
    entry->status.state = ModelState::kFailed;
    entry->status.error = std::string(status.message());
    return status;
  }
  entry->assets = assets;
  entry->replicas = targets;
  entry->status.context_length = assets->config.max_position_embeddings;
  entry->status.vocab_size = assets->config.vocab_size;
  entry->status.default_max_new_tokens =
      assets->generation.max_new_tokens.value_or(kDefaultMaxNewTokens);
  entry->status.quantization = assets->quantization;
  std::vector<std::future<void>> added;
  for (size_t i = 0; i < targets.size(); ++i) {
    added.push_back(targets[i]->AddInstance(
        assets, std::move(loaded[i]),
        options_.observer != nullptr
            ? options_.observer->ForReplica(name, targets[i]->device().name)
            : nullptr));
  }
  // The replicas never take models_mu_, so waiting under it is safe; it makes
  // GetStatus() show the new capacity as soon as LoadModel returns.
  for (auto& f : added) f.wait();
  entry->status.load_seconds = Seconds(absl::Now() - start);
  entry->status.state = ModelState::kReady;
  HLOG(INFO) << "model " << name << " READY in " << entry->status.load_seconds
             << " s";
  return entry->status;
}

absl::StatusOr<ModelStatus> Engine::UnloadModel(const std::string& name) {
  std::shared_ptr<ModelEntry> entry;
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    auto it = models_.find(name);
    if (it == models_.end()) {
      return absl::NotFoundError(
          absl::StrCat("model \"", name, "\" is not loaded"));
    }
    entry = it->second;
    switch (entry->status.state) {
      case ModelState::kLoading:
        return absl::UnavailableError(
            absl::StrCat("model \"", name, "\" is still loading; retry"));
      case ModelState::kUnloading:
        return absl::UnavailableError(
            absl::StrCat("model \"", name, "\" is already being unloaded"));
      case ModelState::kFailed: {
        models_.erase(it);
        ModelStatus out = entry->status;
        out.state = ModelState::kUnloaded;
        return out;
      }
      default:
        break;
    }
    entry->status.state = ModelState::kUnloading;
  }
  HLOG(INFO) << "unloading model " << name;
  std::vector<std::future<void>> drained;
  for (Replica* r : entry->replicas) drained.push_back(r->Drain(name));
  for (auto& f : drained) f.wait();
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    auto it = models_.find(name);
    if (it != models_.end() && it->second == entry) models_.erase(it);
  }
  HLOG(INFO) << "model " << name << " unloaded";
  ModelStatus out = entry->status;
  out.state = ModelState::kUnloaded;
  return out;
}

absl::Status Engine::Prepare(const ModelAssets& assets, int64_t kv_capacity,
                             GenerationRequest& r, Sequence& s) const {
  const formats::LlamaConfig& config = assets.config;
  const int64_t vocab = config.vocab_size;
  if (!r.prompt.empty() && !r.prompt_token_ids.empty()) {
    return absl::InvalidArgumentError(
        "prompt, prompt_token_ids: set exactly one of them");
  }
  if (r.prompt.empty() && r.prompt_token_ids.empty()) {
    return absl::InvalidArgumentError(
        "prompt: empty (set prompt or prompt_token_ids)");
  }
  if (!r.prompt.empty()) {
    if (assets.tokenizer == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: model \"", assets.name,
                       "\" has no tokenizer; send prompt_token_ids"));
    }
    auto ids = assets.tokenizer->Encode(r.prompt, /*add_special_tokens=*/true);
    if (!ids.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: ", ids.status().message()));
    }
    if (ids->empty()) {
      return absl::InvalidArgumentError("prompt: encodes to no tokens");
    }
    for (int32_t id : *ids) {
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("prompt: the tokenizer produced id ", id,
                         ", outside the model's vocabulary [0, ", vocab, ")"));
      }
    }
    s.prompt.assign(ids->begin(), ids->end());
  } else {
    for (size_t i = 0; i < r.prompt_token_ids.size(); ++i) {
      const int32_t id = r.prompt_token_ids[i];
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("prompt_token_ids[", i, "]: ", id,
                         " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    s.prompt.assign(r.prompt_token_ids.begin(), r.prompt_token_ids.end());
  }
  const int64_t prompt_len = static_cast<int64_t>(s.prompt.size());

  RequestSampling& q = r.sampling;
  if (q.max_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.max_new_tokens: must be >= 0 (0 = the model's default), "
        "got ",
        q.max_new_tokens));
  }
  if (q.max_new_tokens == 0) {
    // The model's default, capped to what fits (a default must not fail).
    const int64_t room = std::min<int64_t>(
        config.max_position_embeddings - prompt_len, kv_capacity - prompt_len);
    if (room < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt: ", prompt_len, " tokens leave no room to generate (context ",
          config.max_position_embeddings, ", KV cache ", kv_capacity, ")"));
    }
    q.max_new_tokens = std::min(
        assets.generation.max_new_tokens.value_or(kDefaultMaxNewTokens), room);
  }
  if (q.max_new_tokens > config.max_position_embeddings - prompt_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.max_new_tokens: ", prompt_len, " prompt tokens + ",
        q.max_new_tokens, " new tokens exceed the model's context length ",
        config.max_position_embeddings));
  }
  if (prompt_len + q.max_new_tokens > kv_capacity) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.max_new_tokens: ", prompt_len, " prompt tokens + ",
        q.max_new_tokens, " new tokens need ", prompt_len + q.max_new_tokens,
        " KV-cache tokens, but the cache holds ", kv_capacity,
        " per replica (--kv_cache_tokens): this request can never run"));
  }
  const formats::GenerationConfig& gen = assets.generation;
  model::SamplingParams& p = s.params;
  p.max_new_tokens = q.max_new_tokens;
  if (q.temperature.has_value()) {
    if (!std::isfinite(*q.temperature) || *q.temperature < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.temperature: must be finite and >= 0, got ",
                       *q.temperature));
    }
    p.temperature = *q.temperature;
  } else {
    p.temperature = gen.do_sample ? gen.temperature : 0.0;
  }
  if (q.top_p.has_value()) {
    if (!std::isfinite(*q.top_p) || *q.top_p <= 0 || *q.top_p > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.top_p: must be in (0, 1], got ", *q.top_p));
    }
    p.top_p = *q.top_p;
  } else {
    p.top_p =
        gen.do_sample && gen.top_p > 0 && gen.top_p <= 1 ? gen.top_p : 1.0;
  }
  if (q.repetition_penalty.has_value()) {
    if (!std::isfinite(*q.repetition_penalty) || *q.repetition_penalty <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.repetition_penalty: must be finite and > 0, "
                       "got ",
                       *q.repetition_penalty));
    }
    p.repetition_penalty = *q.repetition_penalty;
  } else {
    p.repetition_penalty =
        gen.repetition_penalty > 0 && std::isfinite(gen.repetition_penalty)
            ? gen.repetition_penalty
            : 1.0;
  }
  if (q.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k: must be >= 0, got ", q.top_k));
  }
  p.top_k = q.top_k;
  p.seed = q.seed;
  for (size_t i = 0; i < q.stop.size(); ++i) {
    if (q.stop[i].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.stop[", i, "]: empty"));
    }
    s.holdback = std::max(s.holdback, q.stop[i].size() - 1);
  }
  if (!q.stop.empty() && assets.tokenizer == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.stop: model \"", assets.name,
                     "\" has no tokenizer, so stop strings cannot be matched; "
                     "use stop_token_ids"));
  }
  p.stop = q.stop;
  for (size_t i = 0; i < q.stop_token_ids.size(); ++i) {
    const int64_t id = q.stop_token_ids[i];
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.stop_token_ids[", i, "]: ", id,
                       " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  p.stop_token_ids = q.stop_token_ids;
  p.ignore_eos = q.ignore_eos;
  if (absl::Status v = model::ValidateSamplingParams(p, vocab); !v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.", v.message()));
  }
  if (!std::isfinite(r.gateway_queue_seconds) || r.gateway_queue_seconds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("gateway_queue_seconds: must be finite and >= 0, got ",
                     r.gateway_queue_seconds));
  }

  s.priority = r.priority;
  s.prompt_tokens = prompt_len;
  s.reserve_tokens = prompt_len + q.max_new_tokens;
  s.sampler =
      std::make_unique<model::Sampler>(p, assets.eos_token_ids, s.prompt);
  if (assets.tokenizer != nullptr) {
    s.decoder = std::make_unique<tokenizer::StreamingDecoder>(
        assets.tokenizer.get(), /*skip_special_tokens=*/true);
  }
  s.deadline = r.deadline;
  s.gateway_queue_seconds = r.gateway_queue_seconds;
  s.submitted = absl::Now();
  s.arrival = s.submitted - absl::Seconds(r.gateway_queue_seconds);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Admission>> Engine::Submit(
    const std::string& model, std::vector<GenerationRequest> requests,
    EventCallback callback) {
  if (!accepting_.load()) {
    return absl::UnavailableError(
        "worker is draining; send new work to another worker");
  }
  if (requests.empty()) {
    return absl::InvalidArgumentError("sequences: empty");
  }
  std::shared_ptr<ModelEntry> entry;
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    auto it = models_.find(model);
    if (it == models_.end()) {
      return absl::NotFoundError(
          absl::StrCat("model \"", model, "\" is not loaded on this worker"));
    }
    entry = it->second;
    if (entry->status.state != ModelState::kReady) {
      return absl::UnavailableError(absl::StrCat(
          "model \"", model, "\" is ", StateName(entry->status.state),
          entry->status.error.empty()
              ? std::string()
              : absl::StrCat(": ", entry->status.error)));
    }
  }
  const int64_t waiting = queued_.load();
  if (waiting + static_cast<int64_t>(requests.size()) >
      options_.max_waiting_sequences) {
    return absl::UnavailableError(
        absl::StrCat("worker queue is full (", waiting,
                     " sequences waiting; --max_waiting_sequences=",
                     options_.max_waiting_sequences, ")"));
  }
  const int64_t blocks =
      (options_.kv_cache_tokens + options_.kv_block_size - 1) /
      options_.kv_block_size;
  const int64_t kv_capacity = blocks * options_.kv_block_size;

  auto shared_callback = std::make_shared<EventCallback>(std::move(callback));
  std::vector<Admission> out(requests.size());
  std::vector<std::shared_ptr<Sequence>> accepted;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto s = std::make_shared<Sequence>();
    out[i].status = Prepare(*entry->assets, kv_capacity, requests[i], *s);
    if (!out[i].status.ok()) {
      out[i].sequence_id = requests[i].sequence_id;
      continue;
    }
    s->assets = entry->assets;
    s->callback = shared_callback;
    s->cache_id = next_sequence_number_.fetch_add(1);
    s->id = requests[i].sequence_id.empty() ? absl::StrCat("seq-", s->cache_id)
                                            : requests[i].sequence_id;
    out[i].sequence_id = s->id;
    accepted.push_back(std::move(s));
  }
  // Register the ids (so that Cancel finds them) before anything runs.
  {
    std::lock_guard<std::mutex> lock(sequences_mu_);
    size_t k = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      if (!out[i].status.ok()) continue;
      std::shared_ptr<Sequence>& s = accepted[k++];
      if (!sequences_.emplace(s->id, s).second) {
        out[i].status = absl::AlreadyExistsError(absl::StrCat(
            "sequence_id: \"", s->id, "\" is already running on this worker"));
        s.reset();
      }
    }
  }
  accepted.erase(std::remove(accepted.begin(), accepted.end(), nullptr),
                 accepted.end());
  std::lock_guard<std::mutex> lock(models_mu_);
  if (entry->status.state != ModelState::kReady) {
    std::lock_guard<std::mutex> lock2(sequences_mu_);
    for (auto& s : accepted) sequences_.erase(s->id);
    return absl::UnavailableError(absl::StrCat("model \"", model, "\" is ",
                                               StateName(entry->status.state)));
  }
  queued_.fetch_add(static_cast<int64_t>(accepted.size()));
  for (auto& s : accepted) {
    Replica* best = nullptr;
    for (Replica* r : entry->replicas) {
      if (best == nullptr || r->load() < best->load()) best = r;
    }
    best->Enqueue(std::move(s));
  }
  return out;
}

EngineStatus Engine::GetStatus() const {
  EngineStatus status;
  status.accepting = accepting_.load();
  for (const auto& r : replicas_) {
    DeviceStatus d;
    d.device = r->device().name;
    int64_t pending = 0;
    for (const auto& [name, m] : r->Snapshot(&pending)) {
      d.kv_cache_capacity_tokens += m.capacity_tokens;
      d.kv_cache_free_tokens += m.unreserved_tokens;
      d.running_sequences += m.running;
      d.waiting_sequences += m.waiting;
      d.memory_used_bytes += m.memory_bytes;
    }
    d.waiting_sequences += pending;
    status.queue_length += d.waiting_sequences;
    status.devices.push_back(d);
  }
  std::lock_guard<std::mutex> lock(models_mu_);
  for (const auto& [name, entry] : models_) {
    status.models.push_back(entry->status);
  }
  return status;
}

std::optional<ModelStatus> Engine::GetModel(const std::string& name) const {
  std::lock_guard<std::mutex> lock(models_mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return std::nullopt;
  return it->second->status;
}

}  // namespace hearth::worker
