// Serving throughput of hearth-worker's engine, in-process, against llama.cpp.
//
//   bench_worker [--threads 2] [--levels 1,4,16,64] [--prompt 32] [--tokens 64]
//                [--model DIR] [--device cpu] [--llama_cpp on|off]
//                [--node node] [--json results.json] [--work DIR]
//                [--preset small|tiny] [--write_model_only true]
//                [--dtype auto|float32|float16|bfloat16]
//                [--llama_batched_bench PATH] [--label NAME]
//
// Without --model it writes a random-weight model with SmolLM-135M's shape (the
// `small` preset: hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate
// 1536, vocab 49152, tied embeddings; float32) with a byte-level tokenizer into
// the work folder. For each concurrency level C it submits C streams at once to
// the engine (continuous batching, as the worker serves them; no gRPC), each
// with its own prompt of --prompt ids and --tokens greedy new tokens
// (ignore_eos), and reports:
//   * aggregate generated tokens/s (all tokens of all streams / wall time from
//     submission to the last token),
//   * time to first token (mean and max over the streams, from submission),
//   * per-stream decode tokens/s (after the first token).
// The single-stream decode rate is the C = 1 row's per-stream rate.
//
// --preset tiny writes the tiny test model instead (hidden 64, 2 layers);
// --write_model_only true stops after writing it (<work>/<preset>), which gives
// a model folder to try hearth-worker with.
//
// llama.cpp: the same model exported to GGUF F32 (formats::ExportLlamaGguf) is
// run by bench/worker_llama_cpp.mjs through node-llama-cpp (llama.cpp behind a
// Node binding) with C parallel sequences in one context, the same prompts,
// tokens and threads, one level after the other in the same run. Its prebuilt
// CPU binary is generic (no -march=native); a native llama.cpp build is
// typically 2-3x faster, so the ratios flatter hearth by about that much.
//
// --llama_batched_bench PATH runs a native llama.cpp build's
// llama-batched-bench instead (built as docs/BENCHMARKS.md says): the same
// GGUF, -npp prompt, -ntg tokens-1 and -npl levels (separate prompts per
// sequence, all decoded together each step), same threads, llama.cpp's default
// context settings. Its first token comes from the prefill logits, as hearth's
// does, so for C sequences: aggregate = C * tokens / (T_PP + T_TG), TTFT = T_PP
// (every sequence's prompt is prefilled in one batch), per-stream decode =
// (tokens - 1) / T_TG. It feeds random tokens and does not sample; hearth's
// greedy sampling over the vocabulary is included in its numbers.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/formats/gguf_llama.h"
#include "common/testing/service_process.h"
#include "nlohmann/json.hpp"
#include "services/worker/engine.h"
#include "services/worker/test_models.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using hearth::worker::Engine;
using hearth::worker::GenerationRequest;
using hearth::worker::SequenceEvent;

struct Level {
  int streams = 0;
  double aggregate_tps = 0;
  double ttft_mean_s = 0;
  double ttft_max_s = 0;
  double per_stream_decode_tps = 0;
  int64_t tokens = 0;
  double wall_s = 0;
};

int Fail(const std::string& message) {
  std::fprintf(stderr, "bench_worker: %s\n", message.c_str());
  return 1;
}

// The prompt ids of stream i; worker_llama_cpp.mjs computes the same ones.
std::vector<int32_t> PromptIds(int i, int n) {
  std::vector<int32_t> ids;
  for (int t = 0; t < n; ++t) {
    ids.push_back(static_cast<int32_t>((i * 7919 + t * 104729 + 13) % 256));
  }
  return ids;
}

// Runs C streams at once through the engine.
absl::StatusOr<Level> RunLevel(Engine& engine, int streams, int prompt,
                               int tokens) {
  struct Stream {
    Clock::time_point first, last;
    int64_t n = 0;
    bool done = false;
    bool ok = true;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, Stream> state;
  int finished = 0;
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < streams; ++i) {
    GenerationRequest r;
    r.sequence_id = absl::StrCat("b", streams, "-", i);
    r.prompt_token_ids = PromptIds(i, prompt);
    r.sampling.max_new_tokens = tokens;
    r.sampling.temperature = 0;
    r.sampling.ignore_eos = true;
    requests.push_back(std::move(r));
    state[requests.back().sequence_id];
  }
  const Clock::time_point start = Clock::now();
  auto admitted =
      engine.Submit("bench", std::move(requests), [&](SequenceEvent&& e) {
        const Clock::time_point now = Clock::now();
        std::lock_guard<std::mutex> lock(mu);
        Stream& s = state[e.sequence_id];
        if (!e.token_ids.empty()) {
          if (s.n == 0) s.first = now;
          s.last = now;
          s.n += static_cast<int64_t>(e.token_ids.size());
        }
        if (e.finish_reason != hearth::worker::FinishReason::kNone) {
          s.done = true;
          s.ok = e.finish_reason == hearth::worker::FinishReason::kLength;
          ++finished;
          cv.notify_all();
        }
      });
  if (!admitted.ok()) return admitted.status();
  for (const auto& a : *admitted) {
    if (!a.status.ok()) return a.status;
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return finished == streams; });
  Level level;
  level.streams = streams;
  Clock::time_point end = start;
  double decode_rate_sum = 0;
  for (const auto& [id, s] : state) {
    if (!s.ok) return absl::InternalError(absl::StrCat(id, " did not finish"));
    level.tokens += s.n;
    end = std::max(end, s.last);
    const double ttft = std::chrono::duration<double>(s.first - start).count();
    level.ttft_mean_s += ttft / streams;
    level.ttft_max_s = std::max(level.ttft_max_s, ttft);
    const double decode_s =
        std::chrono::duration<double>(s.last - s.first).count();
    if (s.n > 1 && decode_s > 0) decode_rate_sum += (s.n - 1) / decode_s;
  }
  level.wall_s = std::chrono::duration<double>(end - start).count();
  level.aggregate_tps = static_cast<double>(level.tokens) / level.wall_s;
  level.per_stream_decode_tps = decode_rate_sum / streams;
  return level;
}

// Runs a native llama-batched-bench over `levels` and converts its JSONL rows
// to worker_llama_cpp.mjs's output shape (see the file comment for the
// mapping).
absl::StatusOr<nlohmann::json> RunBatchedBench(const std::string& binary,
                                               const std::string& gguf,
                                               const std::vector<int>& levels,
                                               int prompt, int tokens,
                                               int threads) {
  const int max_level = *std::max_element(levels.begin(), levels.end());
  // Every sequence gets n_ctx / n_seq_max cells; 16 spare ones each.
  const int ctx = max_level * (prompt + tokens + 16);
  const std::string command = absl::StrCat(
      binary, " -m ", gguf, " -c ", ctx, " -b 2048 -ub 512 -npp ", prompt,
      " -ntg ", tokens - 1, " -npl ", absl::StrJoin(levels, ","), " -t ",
      threads, " -tb ", threads, " --output-format jsonl");
  std::printf("running %s\n", command.c_str());
  std::fflush(stdout);
  hearth::CommandResult r = hearth::RunCommand(command);
  if (r.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat(command, " exited ", r.exit_code, ": ", r.output));
  }
  nlohmann::json out = {{"binary", "native llama-batched-bench"},
                        {"command", command},
                        {"threads", threads}};
  out["levels"] = nlohmann::json::array();
  for (absl::string_view line : absl::StrSplit(r.output, '\n')) {
    if (!absl::StartsWith(line, "{\"n_kv_max\"")) continue;
    nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
    if (row.is_discarded()) continue;
    const int c = row["pl"].get<int>();
    const double t_pp = row["t_pp"].get<double>();
    const double t_tg = row["t_tg"].get<double>();
    out["levels"].push_back(
        {{"streams", c},
         {"aggregate_tps", static_cast<double>(c) * tokens / (t_pp + t_tg)},
         {"ttft_mean_s", t_pp},
         {"ttft_max_s", t_pp},
         {"per_stream_tps", (tokens - 1) / t_tg},
         {"raw", row}});
  }
  if (out["levels"].size() != levels.size()) {
    return absl::InternalError(
        absl::StrCat(command, " reported ", out["levels"].size(), " of ",
                     levels.size(), " levels: ", r.output));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, prompt = 32, tokens = 64;
  std::vector<int> levels = {1, 4, 16, 64};
  std::string model_path, device = "cpu", llama_cpp = "on", node = "node";
  std::string dtype = "auto";
  std::string json_path, work, preset = "small", batched_bench, label;
  bool write_model_only = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    bool ok = true;
    if (flag == "--threads") {
      ok = absl::SimpleAtoi(value, &threads);
    } else if (flag == "--prompt") {
      ok = absl::SimpleAtoi(value, &prompt);
    } else if (flag == "--tokens") {
      ok = absl::SimpleAtoi(value, &tokens);
    } else if (flag == "--model") {
      model_path = value;
    } else if (flag == "--device") {
      device = value;
    } else if (flag == "--dtype") {
      dtype = value;
    } else if (flag == "--llama_cpp") {
      llama_cpp = value;
    } else if (flag == "--node") {
      node = value;
    } else if (flag == "--json") {
      json_path = value;
    } else if (flag == "--work") {
      work = value;
    } else if (flag == "--preset") {
      preset = value;
      ok = preset == "small" || preset == "tiny";
    } else if (flag == "--llama_batched_bench") {
      batched_bench = value;
    } else if (flag == "--label") {
      label = value;
    } else if (flag == "--write_model_only") {
      write_model_only = value == "true";
    } else if (flag == "--levels") {
      levels.clear();
      for (absl::string_view s : absl::StrSplit(value, ',')) {
        int n = 0;
        ok = ok && absl::SimpleAtoi(s, &n) && n > 0;
        levels.push_back(n);
      }
    } else {
      ok = false;
    }
    if (!ok) return Fail("bad flag " + flag + " " + value);
  }
  if (work.empty()) {
    work = (fs::temp_directory_path() / absl::StrCat("bench_worker_", getpid()))
               .string();
  }
  fs::create_directories(work);
  const bool own_model = model_path.empty();
  if (own_model) {
    model_path = work + "/" + preset;
    if (!fs::exists(model_path + "/model.safetensors")) {
      std::printf("writing a random %s model to %s\n",
                  preset == "small" ? "SmolLM-135M-shaped" : "tiny",
                  model_path.c_str());
      std::fflush(stdout);
      auto s = hearth::worker::testing::WriteTinyModel(
          model_path, preset == "small"
                          ? hearth::worker::testing::SmolLm135mShape()
                          : hearth::worker::testing::TinyModelOptions());
      if (!s.ok()) return Fail(std::string(s.message()));
    }
  }
  if (write_model_only) return 0;
  const int max_level = *std::max_element(levels.begin(), levels.end());

  hearth::worker::EngineOptions options;
  options.model_repository = fs::path(model_path).parent_path().string();
  options.devices = {device};
  options.threads = threads;
  options.dtype = dtype;
  options.kv_cache_tokens =
      static_cast<int64_t>(max_level) * (prompt + tokens + 16);
  options.max_running_sequences = max_level;
  options.max_batch_tokens = std::max(512, max_level);
  auto engine = Engine::Create(options);
  if (!engine.ok()) return Fail(std::string(engine.status().message()));
  auto loaded = (*engine)->LoadModel("bench", model_path);
  if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
  std::printf(
      "model %s loaded on %s in %.2f s; %d threads, prompt %d, %d new "
      "tokens per stream\n",
      model_path.c_str(), device.c_str(), loaded->load_seconds, threads, prompt,
      tokens);
  // Warm-up round (allocator, thread pools), not reported.
  if (auto w = RunLevel(**engine, 1, prompt, 8); !w.ok()) {
    return Fail(std::string(w.status().message()));
  }
  std::vector<Level> hearth_levels;
  for (int c : levels) {
    auto level = RunLevel(**engine, c, prompt, tokens);
    if (!level.ok()) return Fail(std::string(level.status().message()));
    hearth_levels.push_back(*level);
    std::printf(
        "hearth    %3d streams: aggregate %8.1f tok/s | TTFT mean %7.3f s "
        "max %7.3f s | per-stream decode %6.1f tok/s\n",
        c, level->aggregate_tps, level->ttft_mean_s, level->ttft_max_s,
        level->per_stream_decode_tps);
    std::fflush(stdout);
  }
  (*engine)->Shutdown();

  nlohmann::json llama_json = nullptr;
  const std::string gguf = work + "/model-f32.gguf";
  absl::Status exported = absl::OkStatus();
  if ((llama_cpp == "on" || !batched_bench.empty()) && !fs::exists(gguf)) {
    exported = hearth::formats::ExportLlamaGguf(
        model_path, gguf, hearth::formats::GgmlType::kF32);
  }
  if (!batched_bench.empty()) {
    if (!exported.ok()) {
      return Fail(absl::StrCat("GGUF export: ", exported.message()));
    }
    auto native =
        RunBatchedBench(batched_bench, gguf, levels, prompt, tokens, threads);
    if (!native.ok()) return Fail(std::string(native.status().message()));
    llama_json = *native;
    for (const auto& l : llama_json["levels"]) {
      std::printf(
          "llama.cpp %3d streams: aggregate %8.1f tok/s | TTFT mean %7.3f s "
          "| per-stream decode %6.1f tok/s\n",
          l["streams"].get<int>(), l["aggregate_tps"].get<double>(),
          l["ttft_mean_s"].get<double>(), l["per_stream_tps"].get<double>());
    }
  } else if (llama_cpp == "on") {
    const char* source_dir = std::getenv("HEARTH_SOURCE_DIR");
    const std::string script =
        absl::StrCat(source_dir != nullptr ? source_dir : ".",
                     "/bench/worker_llama_cpp.mjs");
    if (!exported.ok()) {
      std::printf("llama.cpp: GGUF export failed (%s); skipped\n",
                  std::string(exported.message()).c_str());
    } else {
      const std::string out = work + "/llama_cpp.json";
      const std::string command = absl::StrCat(
          node, " ", script, " --model ", gguf, " --levels ",
          absl::StrJoin(levels, ","), " --prompt ", prompt, " --tokens ",
          tokens, " --threads ", threads, " --out ", out);
      hearth::CommandResult r = hearth::RunCommand(command);
      std::ifstream in(out);
      std::string text((std::istreambuf_iterator<char>(in)), {});
      if (r.exit_code != 0) {
        std::printf("llama.cpp: %s exited %d (%s); skipped\n", command.c_str(),
                    r.exit_code, r.output.c_str());
      } else {
        llama_json = nlohmann::json::parse(text, nullptr, false);
        if (llama_json.is_discarded()) {
          std::printf("llama.cpp: unreadable output: %s\n", text.c_str());
          llama_json = nullptr;
        }
      }
    }
  }

  // Summary table (markdown, for docs/BENCHMARKS.md).
  std::printf(
      "\n| streams | hearth tok/s | hearth TTFT mean (s) | hearth per-stream "
      "tok/s | llama.cpp tok/s | llama.cpp TTFT mean (s) | hearth / "
      "llama.cpp |\n|---|---|---|---|---|---|---|\n");
  nlohmann::json results = {
      {"threads", threads},
      {"prompt", prompt},
      {"label",
       label.empty() ? fs::path(model_path).filename().string() : label},
      {"tokens", tokens},
      {"device", device},
      {"dtype", dtype},
      {"model", model_path}};
  for (const Level& h : hearth_levels) {
    nlohmann::json row = {{"streams", h.streams},
                          {"hearth_tps", h.aggregate_tps},
                          {"hearth_ttft_mean_s", h.ttft_mean_s},
                          {"hearth_ttft_max_s", h.ttft_max_s},
                          {"hearth_per_stream_tps", h.per_stream_decode_tps}};
    std::string llama_tps = "-", llama_ttft = "-", ratio = "-";
    if (llama_json.is_object()) {
      for (const auto& l : llama_json["levels"]) {
        if (l["streams"] == h.streams) {
          const double tps = l["aggregate_tps"].get<double>();
          llama_tps = absl::StrFormat("%.1f", tps);
          llama_ttft = absl::StrFormat("%.3f", l["ttft_mean_s"].get<double>());
          ratio = absl::StrFormat("%.2f", h.aggregate_tps / tps);
          row["llama_cpp_tps"] = tps;
          row["llama_cpp_ttft_mean_s"] = l["ttft_mean_s"];
          row["llama_cpp_per_stream_tps"] = l["per_stream_tps"];
        }
      }
    }
    results["levels"].push_back(row);
    std::printf("| %d | %.1f | %.3f | %.1f | %s | %s | %s |\n", h.streams,
                h.aggregate_tps, h.ttft_mean_s, h.per_stream_decode_tps,
                llama_tps.c_str(), llama_ttft.c_str(), ratio.c_str());
  }
  if (!hearth_levels.empty()) {
    const Level& one = hearth_levels.front();
    for (const Level& h : hearth_levels) {
      if (h.streams == 16 && one.streams == 1) {
        std::printf("\n16-stream aggregate / single-stream aggregate: %.2fx\n",
                    h.aggregate_tps / one.aggregate_tps);
      }
    }
    for (const auto& row : results["levels"]) {
      if (!row.contains("llama_cpp_tps")) continue;
      if (row["streams"] == 1) {
        std::printf(
            "single-stream decode hearth / llama.cpp: %.2fx (%.1f vs %.1f "
            "tok/s)\n",
            row["hearth_per_stream_tps"].get<double>() /
                row["llama_cpp_per_stream_tps"].get<double>(),
            row["hearth_per_stream_tps"].get<double>(),
            row["llama_cpp_per_stream_tps"].get<double>());
      } else if (row["streams"] == 16) {
        std::printf("16-stream aggregate hearth / llama.cpp: %.2fx\n",
                    row["hearth_tps"].get<double>() /
                        row["llama_cpp_tps"].get<double>());
      }
    }
  }
  if (!json_path.empty()) {
    if (llama_json.is_object()) results["llama_cpp"] = llama_json;
    std::ofstream(json_path) << results.dump(2) << "\n";
  }
  return 0;
}
