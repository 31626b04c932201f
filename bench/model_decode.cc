// Decode throughput of hearth's model runtime, in-process (no server).
//
//   bench_model_decode [--threads 2] [--streams 1,16] [--prompt 32]
//                      [--tokens 64] [--model DIR|FILE.gguf] [--block 16]
//                      [--profile trace.json] [--quant none,int8,int4]
//                      [--group 128]
//
// Without --model it builds a random-weight model with SmolLM-135M's shape (the
// `small` preset: hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate
// 1536, vocab 49152, tied embeddings), float32 on CPU. For each stream count S
// it prefills S prompts, then times `tokens` decode steps of all S sequences
// together (greedy), and prints prefill tokens/s, aggregate decode tokens/s,
// per-stream tokens/s, and the process CPU time per step (which still means
// something on a machine shared with other work). BENCH_OMP_THREADS and
// BENCH_BLAS_THREADS (both set) override the ATen / OpenBLAS thread split.
//
// --quant runs the whole measurement once per listed weight format, on the
// same model: "none" (float32), "int8" (weight-only, per channel), "int8dyn"
// (dynamic INT8 activations too), "int4" (RTN, --group columns per group),
// each projection swapped for a common/quant QuantizedLinear, as
// model::LoadModel does for quantized checkpoints.
#include <time.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/model/kv_cache.h"
#include "common/model/llama_model.h"
#include "common/model/model_loader.h"
#include "common/quant/quant_core.h"
#include "common/quant/quantized_linear.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// CPU time of the whole process (all threads): on a loaded machine, where wall
// time says little, CPU time per token still shows the work done.
double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) +
         1e-9 * static_cast<double>(ts.tv_nsec);
}

hearth::formats::LlamaConfig SmallPreset() {
  hearth::formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 30;
  c.num_attention_heads = 9;
  c.num_key_value_heads = 3;
  c.head_dim = 64;
  c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.tie_word_embeddings = true;
  return c;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "bench_model_decode: %s\n", message.c_str());
  return 1;
}

// Swaps every projection of `model` for an RTN-quantized QuantizedLinear.
absl::Status Quantize(hearth::model::LlamaForCausalLM& model,
                      const std::string& format, int group) {
  namespace quant = hearth::quant;
  if (format == "none") return absl::OkStatus();
  quant::QuantScheme scheme{format == "int4" ? 4 : 8,
                            format == "int4" ? group : 0, true};
  const quant::RangeRule rule =
      format == "int4" ? quant::RangeRule::kGptq : quant::RangeRule::kAbsMax;
  const quant::ActivationMode mode = format == "int8dyn"
                                         ? quant::ActivationMode::kDynamic
                                         : quant::ActivationMode::kNone;
  if (format != "int4" && format != "int8" && format != "int8dyn") {
    return absl::InvalidArgumentError("--quant: unknown format " + format);
  }
  torch::NoGradGuard no_grad;
  for (int64_t in :
       {model.config().hidden_size, model.config().intermediate_size}) {
    absl::Status valid = quant::ValidateScheme(scheme, in);
    if (!valid.ok()) return valid;
  }
  auto params = model.named_parameters();
  for (int64_t l = 0; l < model.num_layers(); ++l) {
    for (const std::string& name : hearth::model::LayerLinearNames()) {
      const std::string p =
          "model.layers." + std::to_string(l) + "." + name + ".weight";
      quant::QuantizedWeight w =
          quant::RtnQuantize(params[p].detach(), scheme, rule);
      auto linear = quant::QuantizedLinear::Create(w, at::Tensor(), mode);
      if (!linear.ok()) return linear.status();
      absl::Status s = model.SetLinearImpl(l, name, std::move(*linear));
      if (!s.ok()) return s;
    }
  }
  model.set_quantization(format);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  int64_t prompt = 32, tokens = 64, block = 16;
  std::vector<int64_t> streams = {1, 16};
  std::string model_path, profile_path;
  std::vector<std::string> quants = {"none"};
  int group = 128;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    bool ok = true;
    if (flag == "--threads") {
      ok = absl::SimpleAtoi(value, &threads);
    } else if (flag == "--prompt") {
      ok = absl::SimpleAtoi(value, &prompt);
    } else if (flag == "--tokens") {
      ok = absl::SimpleAtoi(value, &tokens);
    } else if (flag == "--block") {
      ok = absl::SimpleAtoi(value, &block);
    } else if (flag == "--profile") {
      profile_path = value;
    } else if (flag == "--quant") {
      quants = absl::StrSplit(value, ',');
    } else if (flag == "--group") {
      ok = absl::SimpleAtoi(value, &group);
    } else if (flag == "--model") {
      model_path = value;
    } else if (flag == "--streams") {
      streams.clear();
      for (absl::string_view s : absl::StrSplit(value, ',')) {
        int64_t n = 0;
        ok = ok && absl::SimpleAtoi(s, &n) && n > 0;
        streams.push_back(n);
      }
    } else {
      ok = false;
    }
    if (!ok) return Fail("bad flag " + flag + " " + value);
  }
  hearth::model::SetCpuThreads(threads);
  // Overrides for experiments: ATen's OpenMP threads / OpenBLAS's threads.
  if (std::getenv("BENCH_OMP_THREADS") != nullptr &&
      std::getenv("BENCH_BLAS_THREADS") != nullptr) {
    hearth::model::SetCpuThreads(std::atoi(std::getenv("BENCH_OMP_THREADS")),
                                 std::atoi(std::getenv("BENCH_BLAS_THREADS")));
  }

  for (const std::string& quant : quants) {
    std::shared_ptr<hearth::model::LlamaForCausalLM> model;
    if (model_path.empty()) {
      auto m = hearth::model::MakeRandomModel(SmallPreset(), 0);
      if (!m.ok()) return Fail(std::string(m.status().message()));
      model = *m;
    } else {
      auto m = hearth::model::LoadModel(model_path);
      if (!m.ok()) return Fail(std::string(m.status().message()));
      model = *m;
    }
    if (quant != "none" && model->has_linear_impls()) {
      return Fail("--quant: " + model_path + " is already quantized");
    }
    if (absl::Status q = Quantize(*model, quant, group); !q.ok()) {
      return Fail(std::string(q.message()));
    }
    const auto& config = model->config();
    std::printf(
        "model: hidden %ld, layers %ld, heads %ld/%ld, vocab %ld; threads %d; "
        "prompt %ld, decode %ld tokens\n"
        "weights %s: layer linears %.1f MiB, all %.1f MiB\n",
        config.hidden_size, config.num_hidden_layers,
        config.num_attention_heads, config.num_key_value_heads,
        config.vocab_size, threads, prompt, tokens,
        model->quantization().c_str(), model->LayerLinearBytes() / 1048576.0,
        model->WeightBytes() / 1048576.0);

    for (int64_t s : streams) {
      hearth::model::KvCacheOptions opt;
      opt.capacity_tokens = s * (prompt + tokens + 2 * block);
      opt.block_size = block;
      auto cache = hearth::model::KvCache::Create(model->CacheDims(), opt);
      if (!cache.ok()) return Fail(std::string(cache.status().message()));
      std::vector<hearth::model::SequenceInput> batch(s);
      for (int64_t i = 0; i < s; ++i) {
        batch[i].id = i;
        for (int64_t t = 0; t < prompt; ++t) {
          batch[i].tokens.push_back((i * 7919 + t * 104729) %
                                    config.vocab_size);
        }
        if (!(*cache)->AddSequence(i).ok()) return Fail("AddSequence");
      }
      auto t0 = Clock::now();
      auto logits = model->Step(**cache, batch);
      if (!logits.ok()) return Fail(std::string(logits.status().message()));
      auto t1 = Clock::now();
      // Two untimed decode steps warm the allocator and BLAS thread pool.
      const int64_t warmup = 2;
      double decode_s = 0, decode_cpu_s = 0;
      // With --profile, the timed decode steps of the last stream count are
      // traced (chrome://tracing format); the timings then include the
      // profiler's cost.
      std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
      for (int64_t step = 0; step < tokens; ++step) {
        at::Tensor next = logits->argmax(-1);
        for (int64_t i = 0; i < s; ++i)
          batch[i].tokens.assign(1, next[i].item<int64_t>());
        if (step == warmup && !profile_path.empty() && s == streams.back()) {
          profile = std::make_unique<torch::autograd::profiler::RecordProfile>(
              profile_path);
        }
        auto a = Clock::now();
        const double cpu_a = CpuSeconds();
        logits = model->Step(**cache, batch);
        auto b = Clock::now();
        const double cpu_b = CpuSeconds();
        if (!logits.ok()) return Fail(std::string(logits.status().message()));
        if (step >= warmup)
          decode_s += Seconds(a, b), decode_cpu_s += cpu_b - cpu_a;
      }
      profile.reset();
      const double decoded = static_cast<double>(s * (tokens - warmup));
      std::printf(
          "streams %3ld: prefill %8.1f tok/s | decode aggregate %8.1f tok/s, "
          "per stream %6.1f tok/s, step %6.2f ms (cpu %6.2f ms)\n",
          s, static_cast<double>(s * prompt) / Seconds(t0, t1),
          decoded / decode_s, decoded / decode_s / static_cast<double>(s),
          1000.0 * decode_s / static_cast<double>(tokens - warmup),
          1000.0 * decode_cpu_s / static_cast<double>(tokens - warmup));
      std::fflush(stdout);
    }
  }
  return 0;
}
