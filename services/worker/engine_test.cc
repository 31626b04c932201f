#include "services/worker/engine.h"

#include <torch/torch.h>

#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/formats/gguf_llama.h"
#include "common/model/generator.h"
#include "common/model/kv_cache.h"
#include "common/model/model_loader.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "services/quantizer/quantize_model.h"
#include "services/worker/model_registry.h"
#include "services/worker/test_models.h"
#include "services/worker/worker_metrics.h"

namespace hearth::worker {
namespace {

namespace fs = std::filesystem;

// Collects the events of many sequences and checks the streaming contract:
// nothing after the final event, exactly one final event each.
class Collector {
 public:
  struct Result {
    std::vector<int32_t> tokens;
    std::string text;
    int events = 0;
    bool finished = false;
    SequenceEvent last;
  };

  EventCallback Callback() {
    return [this](SequenceEvent&& e) {
      std::lock_guard<std::mutex> lock(mu_);
      Result& r = results_[e.sequence_id];
      EXPECT_FALSE(r.finished)
          << "event after the final one for " << e.sequence_id;
      r.tokens.insert(r.tokens.end(), e.token_ids.begin(), e.token_ids.end());
      r.text += e.text;
      ++r.events;
      if (e.finish_reason != FinishReason::kNone) {
        r.finished = true;
        r.last = e;
        ++finished_;
        cv_.notify_all();
      }
    };
  }

  bool WaitFinished(int n, absl::Duration timeout = absl::Seconds(120)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoSeconds(timeout),
                        [&] { return finished_ >= n; });
  }

  Result Get(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return results_[id];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Result> results_;
  int finished_ = 0;
};

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repo_ = new std::string(
        absl::StrCat(::testing::TempDir(), "/engine_repo_", getpid()));
    fs::create_directories(*repo_);
    ASSERT_TRUE(testing::WriteTinyModel(*repo_ + "/tiny").ok());
    testing::TinyModelOptions other;
    other.seed = 7;
    other.num_layers = 1;
    ASSERT_TRUE(testing::WriteTinyModel(*repo_ + "/other", other).ok());
    // Long contexts, so that a sequence runs long enough to be cancelled.
    testing::TinyModelOptions slow;
    slow.hidden_size = 128;
    slow.intermediate_size = 256;
    slow.num_layers = 4;
    slow.max_position_embeddings = 8192;
    ASSERT_TRUE(testing::WriteTinyModel(*repo_ + "/slow", slow).ok());
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*repo_, ec);
    delete repo_;
  }

  std::unique_ptr<Engine> MakeEngine(EngineOptions options = {}) {
    options.model_repository = *repo_;
    if (options.kv_cache_tokens == 8192) options.kv_cache_tokens = 4096;
    options.threads = 2;
    if (options.devices == std::vector<std::string>{"cpu"}) {
      options.devices = {testing::TestDevice()};
    }
    options.dtype = testing::TestDtype();
    auto engine = Engine::Create(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return std::move(engine).value();
  }

  // Greedy reference: the model's own generation loop, one prompt at a time.
  std::vector<int32_t> Reference(const std::vector<int32_t>& prompt,
                                 int64_t max_new, bool ignore_eos = true) {
    return Generated(*repo_ + "/tiny", prompt, max_new, ignore_eos);
  }

  // The same for the model at `path`, loaded by model::LoadModel.
  static std::vector<int32_t> Generated(const std::string& path,
                                        const std::vector<int32_t>& prompt,
                                        int64_t max_new,
                                        bool ignore_eos = true) {
    auto model = model::LoadModel(path);
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return {};
    auto cache = model::KvCache::Create((*model)->CacheDims(), {});
    EXPECT_TRUE(cache.ok());
    model::SamplingParams p;
    p.max_new_tokens = max_new;
    p.temperature = 0;
    p.ignore_eos = ignore_eos;
    auto out = model::Generate(
        **model, **cache, {std::vector<int64_t>(prompt.begin(), prompt.end())},
        p);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return {};
    return std::vector<int32_t>(out->front().tokens.begin(),
                                out->front().tokens.end());
  }

  static std::vector<int32_t> Prompt(int n, int seed) {
    std::vector<int32_t> ids;
    uint32_t s = static_cast<uint32_t>(seed) * 2654435761u + 1;
    for (int i = 0; i < n; ++i) {
      s = s * 1664525u + 1013904223u;
      ids.push_back(static_cast<int32_t>((s >> 8) % 256));
    }
    return ids;
  }

  static GenerationRequest Request(const std::string& id,
                                   std::vector<int32_t> prompt,
                                   int64_t max_new) {
    GenerationRequest r;
    r.sequence_id = id;
    r.prompt_token_ids = std::move(prompt);
    r.sampling.max_new_tokens = max_new;
    r.sampling.ignore_eos = true;
    return r;
  }

  static std::string* repo_;
};

std::string* EngineTest::repo_ = nullptr;

TEST_F(EngineTest, StreamsTokensTextUsageAndTimings) {
  auto engine = MakeEngine();
  auto loaded = engine->LoadModel("tiny");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->state, ModelState::kReady);
  EXPECT_EQ(loaded->vocab_size, testing::kByteVocab);

  Collector c;
  GenerationRequest r;
  r.sequence_id = "a";
  r.prompt = "Hello, world";
  r.sampling.max_new_tokens = 12;
  r.sampling.ignore_eos = true;
  r.gateway_queue_seconds = 0.25;
  auto admitted = engine->Submit("tiny", {r}, c.Callback());
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  ASSERT_TRUE((*admitted)[0].status.ok()) << (*admitted)[0].status;
  ASSERT_TRUE(c.WaitFinished(1));
  Collector::Result res = c.Get("a");
  EXPECT_EQ(res.last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(res.tokens.size(), 12u);
  EXPECT_GE(res.events, 2);
  EXPECT_EQ(res.last.prompt_tokens, 12);  // One byte, one token.
  EXPECT_EQ(res.last.completion_tokens, 12);
  EXPECT_GE(res.last.timing.queue_seconds, 0.25);
  EXPECT_GE(res.last.timing.time_to_first_token_seconds, 0.25);
  EXPECT_GE(res.last.timing.total_seconds,
            res.last.timing.time_to_first_token_seconds);
  // Byte tokens: the text is the bytes of the ids (ASCII-safe comparison
  // through the tokenizer's own decoding is done by the tokenizer tests).
  std::vector<int32_t> prompt(r.prompt.begin(), r.prompt.end());
  EXPECT_EQ(res.tokens, Reference(prompt, 12));
  EXPECT_FALSE(res.text.empty());
}

// max_new_tokens 0 is the model's default (no generation_config.json
// max_new_tokens here: 128), capped so that it fits the context.
TEST_F(EngineTest, ZeroMaxNewTokensIsTheModelDefault) {
  auto engine = MakeEngine();
  auto loaded = engine->LoadModel("tiny");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->default_max_new_tokens, kDefaultMaxNewTokens);
  Collector c;
  auto admitted = engine->Submit(
      "tiny",
      {Request("d", Prompt(4, 1), 0), Request("cap", Prompt(500, 2), 0)},
      c.Callback());
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  for (const Admission& a : *admitted) ASSERT_TRUE(a.status.ok()) << a.status;
  ASSERT_TRUE(c.WaitFinished(2));
  EXPECT_EQ(c.Get("d").tokens.size(),
            static_cast<size_t>(kDefaultMaxNewTokens));
  EXPECT_EQ(c.Get("d").last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(c.Get("cap").tokens.size(), 12u);  // 512 - 500
}

TEST_F(EngineTest, BatchedResultsMatchOneAtATime) {
  EngineOptions options;
  options.max_batch_tokens = 64;  // Forces chunked prefill of long prompts.
  options.max_running_sequences = 32;
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  constexpr int kSequences = 24;
  Collector c;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> lengths;
  // Staggered submissions so that sequences join a batch already running.
  for (int i = 0; i < kSequences; ++i) {
    prompts.push_back(Prompt(3 + (i * 37) % 150, i));
    lengths.push_back(4 + (i * 13) % 40);
    auto admitted = engine->Submit(
        "tiny", {Request(absl::StrCat("s", i), prompts.back(), lengths.back())},
        c.Callback());
    ASSERT_TRUE(admitted.ok());
    ASSERT_TRUE((*admitted)[0].status.ok()) << (*admitted)[0].status;
    if (i % 5 == 0) absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_TRUE(c.WaitFinished(kSequences));
  for (int i = 0; i < kSequences; ++i) {
    Collector::Result r = c.Get(absl::StrCat("s", i));
    EXPECT_EQ(r.tokens, Reference(prompts[i], lengths[i])) << "sequence " << i;
    EXPECT_EQ(r.last.finish_reason, FinishReason::kLength);
  }
  // Everything is free again.
  EngineStatus status = engine->GetStatus();
  ASSERT_EQ(status.devices.size(), 1u);
  EXPECT_EQ(status.devices[0].kv_cache_free_tokens,
            status.devices[0].kv_cache_capacity_tokens);
  EXPECT_EQ(status.devices[0].running_sequences, 0);
}

TEST_F(EngineTest, SeededSamplingDoesNotDependOnTheBatch) {
  auto engine = MakeEngine();
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  auto sampled = [](const std::string& id) {
    GenerationRequest r = Request(id, Prompt(9, 3), 20);
    r.sampling.temperature = 0.9;
    r.sampling.top_p = 0.95;
    r.sampling.seed = 1234;
    return r;
  };
  Collector alone;
  ASSERT_TRUE(engine->Submit("tiny", {sampled("x")}, alone.Callback()).ok());
  ASSERT_TRUE(alone.WaitFinished(1));
  Collector crowd;
  std::vector<GenerationRequest> batch;
  for (int i = 0; i < 8; ++i) {
    batch.push_back(Request(absl::StrCat("n", i), Prompt(5 + i, 40 + i), 15));
  }
  batch.push_back(sampled("x"));
  ASSERT_TRUE(engine->Submit("tiny", batch, crowd.Callback()).ok());
  ASSERT_TRUE(crowd.WaitFinished(9));
  EXPECT_EQ(alone.Get("x").tokens, crowd.Get("x").tokens);
}

TEST_F(EngineTest, MultipleCpuReplicasShareTheWork) {
  EngineOptions options;
  options.devices = {"cpu", "cpu:1"};
  auto engine = MakeEngine(options);
  auto loaded = engine->LoadModel("tiny");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->devices, (std::vector<std::string>{"cpu", "cpu:1"}));
  Collector c;
  std::vector<GenerationRequest> batch;
  for (int i = 0; i < 8; ++i) {
    batch.push_back(Request(absl::StrCat("r", i), Prompt(6 + i, i), 10));
  }
  ASSERT_TRUE(engine->Submit("tiny", batch, c.Callback()).ok());
  ASSERT_TRUE(c.WaitFinished(8));
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(c.Get(absl::StrCat("r", i)).tokens,
              Reference(Prompt(6 + i, i), 10));
  }
  EngineStatus status = engine->GetStatus();
  ASSERT_EQ(status.devices.size(), 2u);
  EXPECT_EQ(status.devices[1].device, "cpu:1");
  EXPECT_GT(status.devices[1].memory_used_bytes, 0);
}

TEST_F(EngineTest, StopStringsEndTheTextBeforeTheStop) {
  auto engine = MakeEngine();
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  // Find what greedy decoding prints, then stop on a piece of it.
  Collector probe;
  GenerationRequest r;
  r.sequence_id = "p";
  r.prompt = "abc";
  r.sampling.max_new_tokens = 40;
  r.sampling.ignore_eos = true;
  ASSERT_TRUE(engine->Submit("tiny", {r}, probe.Callback()).ok());
  ASSERT_TRUE(probe.WaitFinished(1));
  const Collector::Result full = probe.Get("p");
  // A 2-byte ASCII-printable window in the middle of the output (byte tokens,
  // so the text is the bytes of the tokens when they are printable).
  std::string stop;
  size_t token_at = 0;
  for (size_t i = 5; i + 1 < full.tokens.size(); ++i) {
    const int a = full.tokens[i], b = full.tokens[i + 1];
    if (a >= 0x21 && a < 0x7F && b >= 0x21 && b < 0x7F) {
      stop = {static_cast<char>(a), static_cast<char>(b)};
      token_at = i + 1;
      break;
    }
  }
  if (stop.empty()) GTEST_SKIP() << "no printable pair in the output";
  Collector c;
  r.sequence_id = "s";
  r.sampling.stop = {stop};
  ASSERT_TRUE(engine->Submit("tiny", {r}, c.Callback()).ok());
  ASSERT_TRUE(c.WaitFinished(1));
  const Collector::Result res = c.Get("s");
  EXPECT_EQ(res.last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(res.text.find(stop), std::string::npos) << res.text;
  // Stopped at the first occurrence (which may be earlier than token_at).
  EXPECT_LE(res.tokens.size(), token_at + 1);
  EXPECT_EQ(full.text.substr(0, res.text.size()), res.text);
  EXPECT_EQ(full.text.find(stop), res.text.size());
}

TEST_F(EngineTest, StopTokenIdsAndEos) {
  auto engine = MakeEngine();
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  const std::vector<int32_t> expected = Reference(Prompt(7, 9), 30);
  Collector c;
  GenerationRequest r = Request("t", Prompt(7, 9), 30);
  r.sampling.stop_token_ids = {expected[4]};
  ASSERT_TRUE(engine->Submit("tiny", {r}, c.Callback()).ok());
  ASSERT_TRUE(c.WaitFinished(1));
  const auto res = c.Get("t");
  EXPECT_EQ(res.last.finish_reason, FinishReason::kStop);
  ASSERT_FALSE(res.tokens.empty());
  EXPECT_EQ(res.tokens.back(), expected[4]);
  EXPECT_LE(res.tokens.size(), 5u);
}

TEST_F(EngineTest, CancellationAndDeadlinesFreeTheCache) {
  EngineOptions options;
  options.kv_cache_tokens = 16384;
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine->LoadModel("slow").ok());
  Collector c;
  GenerationRequest longer = Request("long", Prompt(10, 1), 8000);
  GenerationRequest timed = Request("timed", Prompt(10, 2), 8000);
  timed.deadline = absl::Now() + absl::Milliseconds(100);
  ASSERT_TRUE(engine->Submit("slow", {longer, timed}, c.Callback()).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(engine->Cancel({"long", "nope"}), 1);
  ASSERT_TRUE(c.WaitFinished(2, absl::Seconds(30)));
  EXPECT_EQ(c.Get("long").last.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(c.Get("timed").last.finish_reason, FinishReason::kCancelled);
  EXPECT_LT(c.Get("long").tokens.size(), 8000u);
  const EngineStatus status = engine->GetStatus();
  EXPECT_EQ(status.devices[0].kv_cache_free_tokens,
            status.devices[0].kv_cache_capacity_tokens);
  EXPECT_EQ(engine->Cancel({"long"}), 0);  // Gone.
}

TEST_F(EngineTest, KvAdmissionWaitsOrRejects) {
  EngineOptions options;
  options.kv_cache_tokens = 128;
  options.kv_block_size = 16;
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  Collector c;
  // 3 x 60 tokens do not fit in 128 at once: the third waits, then runs.
  std::vector<GenerationRequest> batch;
  for (int i = 0; i < 3; ++i) {
    batch.push_back(Request(absl::StrCat("k", i), Prompt(20, i), 40));
  }
  auto admitted = engine->Submit("tiny", batch, c.Callback());
  ASSERT_TRUE(admitted.ok());
  for (const Admission& a : *admitted) EXPECT_TRUE(a.status.ok()) << a.status;
  ASSERT_TRUE(c.WaitFinished(3));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(c.Get(absl::StrCat("k", i)).tokens, Reference(Prompt(20, i), 40));
  }
  // One that can never fit is refused up front.
  auto never = engine->Submit("tiny", {Request("big", Prompt(100, 1), 100)},
                              c.Callback());
  ASSERT_TRUE(never.ok());
  EXPECT_EQ((*never)[0].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE((*never)[0].status.message().find("can never run"),
            std::string::npos)
      << (*never)[0].status;
}

TEST_F(EngineTest, BadInputsNameTheField) {
  auto engine = MakeEngine();
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  auto check = [&](GenerationRequest r, const std::string& field) {
    Collector c;
    auto admitted = engine->Submit("tiny", {r}, c.Callback());
    ASSERT_TRUE(admitted.ok()) << admitted.status();
    const absl::Status& s = (*admitted)[0].status;
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
        << field << ": " << s;
    EXPECT_EQ(s.message().substr(0, field.size()), field) << s;
  };
  GenerationRequest ok = Request("b", Prompt(4, 1), 4);
  GenerationRequest r = ok;
  r.prompt_token_ids.clear();
  check(r, "prompt");
  r = ok;
  r.sampling.max_new_tokens = -1;
  check(r, "sampling.max_new_tokens");
  r = ok;
  r.sampling.max_new_tokens = 100000;
  check(r, "sampling.max_new_tokens");
  r = ok;
  r.sampling.temperature = std::nan("");
  check(r, "sampling.temperature");
  r = ok;
  r.sampling.temperature = -1;
  check(r, "sampling.temperature");
  r = ok;
  r.sampling.top_p = 1.5;
  check(r, "sampling.top_p");
  r = ok;
  r.sampling.top_p = 0;
  check(r, "sampling.top_p");
  r = ok;
  r.sampling.repetition_penalty = 0;
  check(r, "sampling.repetition_penalty");
  r = ok;
  r.prompt_token_ids[2] = 300;
  check(r, "prompt_token_ids[2]");
  r = ok;
  r.prompt_token_ids[0] = -1;
  check(r, "prompt_token_ids[0]");
  r = ok;
  r.sampling.stop_token_ids = {5000};
  check(r, "sampling.stop_token_ids[0]");
  r = ok;
  r.sampling.stop = {""};
  check(r, "sampling.stop[0]");
  r = ok;
  r.prompt = "both";
  check(r, "prompt, prompt_token_ids");

  Collector c;
  EXPECT_EQ(engine->Submit("nope", {ok}, c.Callback()).status().code(),
            absl::StatusCode::kNotFound);
  // Duplicate ids within one call.
  auto dup = engine->Submit(
      "tiny", {Request("d", Prompt(4, 1), 200), Request("d", Prompt(4, 1), 2)},
      c.Callback());
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE((*dup)[0].status.ok());
  EXPECT_EQ((*dup)[1].status.code(), absl::StatusCode::kAlreadyExists);
  engine->Cancel({"d"});
  ASSERT_TRUE(c.WaitFinished(1));
}

TEST_F(EngineTest, UnloadWaitsForRunningSequencesWhileOtherModelsServe) {
  EngineOptions options;
  options.kv_cache_tokens = 16384;
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  ASSERT_TRUE(engine->LoadModel("slow").ok());
  Collector c;
  ASSERT_TRUE(
      engine->Submit("slow", {Request("o", Prompt(5, 5), 2000)}, c.Callback())
          .ok());
  std::thread unloader([&] {
    auto s = engine->UnloadModel("slow");
    EXPECT_TRUE(s.ok()) << s.status();
  });
  // While unloading: new work for it is refused, the other model serves.
  while (engine->GetModel("slow")->state != ModelState::kUnloading) {
    absl::SleepFor(absl::Microseconds(100));
  }
  auto refused =
      engine->Submit("slow", {Request("o2", Prompt(5, 5), 2)}, c.Callback());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(
      engine->Submit("tiny", {Request("t", Prompt(5, 6), 5)}, c.Callback())
          .ok());
  unloader.join();
  ASSERT_TRUE(c.WaitFinished(2));
  EXPECT_EQ(c.Get("o").last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(c.Get("o").tokens.size(), 2000u);
  EXPECT_EQ(
      engine->Submit("slow", {Request("o3", Prompt(5, 5), 2)}, c.Callback())
          .status()
          .code(),
      absl::StatusCode::kNotFound);
  EXPECT_FALSE(engine->GetModel("slow").has_value());
  // Loading again works.
  EXPECT_TRUE(engine->LoadModel("other").ok());
}

TEST_F(EngineTest, LoadErrors) {
  auto engine = MakeEngine();
  EXPECT_EQ(engine->LoadModel("missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->LoadModel("x", "../../etc").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->LoadModel("tiny", "", {"cuda:7"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  EXPECT_EQ(engine->LoadModel("tiny", "other").status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A folder without weights fails and is reported FAILED.
  fs::create_directories(*repo_ + "/broken");
  EXPECT_FALSE(engine->LoadModel("broken").ok());
  auto broken = engine->GetModel("broken");
  ASSERT_TRUE(broken.has_value());
  EXPECT_EQ(broken->state, ModelState::kFailed);
  EXPECT_EQ(Engine::Create({.devices = {"gpu"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(EngineTest, ShutdownCancelsEverything) {
  auto engine = MakeEngine();
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  Collector c;
  ASSERT_TRUE(
      engine->Submit("tiny", {Request("z", Prompt(5, 1), 400)}, c.Callback())
          .ok());
  engine->Shutdown();
  ASSERT_TRUE(c.WaitFinished(1, absl::Seconds(5)));
  EXPECT_EQ(c.Get("z").last.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(
      engine->Submit("tiny", {Request("y", Prompt(5, 1), 4)}, c.Callback())
          .status()
          .code(),
      absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, MetricsCountTokensAndOutcomes) {
  prometheus::Registry registry;
  WorkerMetrics metrics(registry);
  EngineOptions options;
  options.observer = &metrics;
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine->LoadModel("tiny").ok());
  Collector c;
  ASSERT_TRUE(engine
                  ->Submit("tiny",
                           {Request("m1", Prompt(6, 1), 7),
                            Request("m2", Prompt(4, 2), 3)},
                           c.Callback())
                  .ok());
  ASSERT_TRUE(c.WaitFinished(2));
  const std::string text =
      prometheus::TextSerializer().Serialize(registry.Collect());
  const std::string labels =
      absl::StrCat("{device=\"", testing::TestDevice(), "\",model=\"tiny\"}");
  EXPECT_NE(text.find("hearth_worker_generation_tokens_total" + labels + " 10"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("hearth_worker_prompt_tokens_total" + labels + " 10"),
            std::string::npos);
  EXPECT_NE(text.find(absl::StrCat(
                "hearth_worker_request_finished_total{device=\"",
                testing::TestDevice(),
                "\",finished_reason=\"length\",model=\"tiny\"} 2")),
            std::string::npos);
  EXPECT_NE(text.find("hearth_worker_time_to_first_token_seconds_count" +
                      labels + " 2"),
            std::string::npos);
  EXPECT_NE(text.find("hearth_worker_kv_cache_usage_ratio" + labels + " 0"),
            std::string::npos);
  EXPECT_NE(
      text.find(absl::StrCat("hearth_worker_device_memory_used_bytes{device=\"",
                             testing::TestDevice(), "\"}")),
      std::string::npos);
  EXPECT_NE(text.find("hearth_worker_model_load_duration_seconds"),
            std::string::npos);
  // Unloading drops the model's gauges.
  ASSERT_TRUE(engine->UnloadModel("tiny").ok());
  const std::string after =
      prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_EQ(after.find("hearth_worker_requests_running" + labels),
            std::string::npos);
}

// --- Quantized models
// ----------------------------------------------------------
//
// A repository holding one float model and the quantizer's outputs of it: GPTQ
// and AWQ INT4 folders, a hearth INT8 (dynamic activations) folder and GGUF
// Q8_0 / Q4_0 files. The worker must serve each quantized (linears kept as
// INT8 / packed INT4) and give the tokens the same quantized model gives when
// run directly, one request at a time, whatever the batching.
class QuantizedEngineTest : public EngineTest {
 protected:
  static void SetUpTestSuite() {
    repo_ = new std::string(
        absl::StrCat(::testing::TempDir(), "/engine_quant_repo_", getpid()));
    fs::create_directories(*repo_);
    // Linears dominate the weights, as in real models, so that the resident
    // size shows what quantization saves.
    testing::TinyModelOptions o;
    o.hidden_size = 256;
    o.intermediate_size = 512;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.init_std = 0.08;
    o.vocab_size = testing::kByteVocab + 1;  // Room for GGUF's one merge.
    const std::string src = *repo_ + "/base";
    ASSERT_TRUE(testing::WriteTinyModel(src, o).ok());
    auto tensors = quantizer::LoadFloatTensors(src);
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    auto config = formats::LoadLlamaConfig(src + "/config.json");
    ASSERT_TRUE(config.ok());
    struct Out {
      const char* name;
      quantizer::Method method;
      quant::QuantScheme scheme;
      quantizer::FolderFormat format;
    };
    const Out outs[] = {
        {"gptq",
         quantizer::Method::kRtn,
         {4, 32, true},
         quantizer::FolderFormat::kGptq},
        {"awq",
         quantizer::Method::kRtn,
         {4, 32, false},
         quantizer::FolderFormat::kAwq},
        {"int8",
         quantizer::Method::kDynamicInt8,
         {8, 0, true},
         quantizer::FolderFormat::kHearthInt8},
    };
    for (const Out& out : outs) {
      quantizer::QuantizeOptions qo;
      qo.method = out.method;
      qo.scheme = out.scheme;
      auto qm = quantizer::QuantizeModel(*config, *tensors, at::Tensor(), qo,
                                         nullptr);
      ASSERT_TRUE(qm.ok()) << out.name << ": " << qm.status();
      ASSERT_TRUE(quantizer::WriteQuantizedFolder(*qm, out.format, src,
                                                  *repo_ + "/" + out.name)
                      .ok());
    }
    absl::Status q8 = formats::ExportLlamaGguf(src, *repo_ + "/q8.gguf",
                                               formats::GgmlType::kQ8_0);
    ASSERT_TRUE(q8.ok()) << q8;
    absl::Status q4 = formats::ExportLlamaGguf(src, *repo_ + "/q4.gguf",
                                               formats::GgmlType::kQ4_0);
    ASSERT_TRUE(q4.ok()) << q4;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*repo_, ec);
    delete repo_;
  }

  static std::string* repo_;
};

std::string* QuantizedEngineTest::repo_ = nullptr;

TEST_F(QuantizedEngineTest, ServesEveryFormatQuantizedWithDirectTokens) {
  EngineOptions options;
  options.model_repository = *repo_;
  options.kv_cache_tokens = 2048;
  options.threads = 2;
  options.devices = {"cpu"};
  options.max_batch_tokens = 48;  // Prefill chunks mixed with decode steps.
  options.max_running_sequences = 8;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();

  auto base = LoadReplicaModel(*repo_ + "/base", DeviceSpec{"cpu", false, 0},
                               {.dtype = "auto", .kv_cache_tokens = 64});
  ASSERT_TRUE(base.ok()) << base.status();
  const int64_t float_bytes = base->weight_bytes;
  const int64_t float_linears = base->model->LayerLinearBytes();

  struct Case {
    std::string name, path, quantization;
    double max_weight_ratio;  // resident weights / float32's
    double max_linear_ratio;  // the same for the decoder layers' linears
  };
  const std::vector<Case> cases = {
      // INT4 g32: 4-bit codes + a float (scale, offset) per 32 weights.
      {"gptq", *repo_ + "/gptq", "gptq-int4", 0.3, 0.19},
      {"awq", *repo_ + "/awq", "awq-int4", 0.3, 0.19},
      {"int8", *repo_ + "/int8", "int8-dynamic", 0.4, 0.26},
      {"q8", *repo_ + "/q8.gguf", "gguf-q8_0", 0.45, 0.32},
      {"q4", *repo_ + "/q4.gguf", "gguf-q4_0", 0.3, 0.19},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto loaded = (*engine)->LoadModel(c.name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->quantization, c.quantization);

    // (b) Resident weights: what the replica holds, codes and scales
    // included.
    auto rm = LoadReplicaModel(c.path, DeviceSpec{"cpu", false, 0},
                               {.dtype = "auto", .kv_cache_tokens = 64});
    ASSERT_TRUE(rm.ok()) << rm.status();
    ASSERT_NE(rm->model->linear_impl(0, "self_attn.q_proj"), nullptr);
    EXPECT_LE(rm->weight_bytes, c.max_weight_ratio * float_bytes)
        << rm->weight_bytes << " vs float " << float_bytes;
    EXPECT_LE(rm->model->LayerLinearBytes(),
              c.max_linear_ratio * float_linears);

    // (a) + (c): 6 requests of different lengths at once (continuous
    // batching, chunked prefill) give the direct one-at-a-time tokens.
    Collector col;
    std::vector<GenerationRequest> reqs;
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 6; ++i) {
      prompts.push_back(Prompt(5 + 13 * i, 100 + i));
      GenerationRequest r;
      r.sequence_id = absl::StrCat("s", i);
      r.prompt_token_ids = prompts.back();
      r.sampling.max_new_tokens = 10 + i;
      r.sampling.ignore_eos = true;
      reqs.push_back(r);
    }
    auto admitted = (*engine)->Submit(c.name, reqs, col.Callback());
    ASSERT_TRUE(admitted.ok()) << admitted.status();
    for (const auto& a : *admitted) ASSERT_TRUE(a.status.ok()) << a.status;
    ASSERT_TRUE(col.WaitFinished(6));
    for (int i = 0; i < 6; ++i) {
      EXPECT_EQ(col.Get(absl::StrCat("s", i)).tokens,
                Generated(c.path, prompts[i], 10 + i))
          << "request " << i;
    }
    ASSERT_TRUE((*engine)->UnloadModel(c.name).ok());
  }
}

}  // namespace
}  // namespace hearth::worker
