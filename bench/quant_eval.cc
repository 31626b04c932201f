// What one quantized model costs and buys, measured the way hearth-quantizer's
// report does it, for the quantization table in docs/BENCHMARKS.md
// (bench/quant_report.sh runs it once per model, each in a fresh process so
// that resident memory is the model's own) and for the llama.cpp perplexity
// interop test (tests/interop/quant_ppl_check.py, via --windows_out).
//
//   quant_eval --model=models/m-gptq4g128 --reference=models/m \
//       [--text_file=F | --corpus=licenses] [--seq_len=256] [--windows=16]
//       [--steps=32] [--threads=2] [--windows_out=w.json] [--no_speed]
//
// --model is a float or quantized folder or a .gguf (model::LoadModel,
// quantized linears kept packed);
// --reference is the float source folder, whose tokenizer turns the text into
// ids. The held-out split is the quantizer's (the last 10% of the tokens), so
// numbers are comparable with quant_report.json. Prints one JSON object:
// perplexity, layer_weight_bytes (resident linear weights), weight_bytes,
// disk_bytes, rss_model_bytes (process RSS after loading minus before),
// decode_tokens_per_second_b1 / _b16, held_out_tokens, and kl_vs_reference
// (mean KL divergence of --model's next-token distributions from
// --reference's on the same windows) when the two differ.
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/formats/hf_config.h"
#include "common/model/llama_model.h"
#include "common/model/model_loader.h"
#include "nlohmann/json.hpp"
#include "services/quantizer/calibration.h"
#include "services/quantizer/evaluation.h"

ABSL_FLAG(std::string, model, "", "model folder or .gguf to evaluate");
ABSL_FLAG(std::string, reference, "",
          "float source folder (tokenizer, config); default --model");
ABSL_FLAG(std::string, text_file, "", "evaluation text file");
ABSL_FLAG(std::string, corpus, "", "or a named corpus (licenses, gpl, ...)");
ABSL_FLAG(int64_t, seq_len, 256, "tokens per perplexity window");
ABSL_FLAG(int64_t, windows, 16, "perplexity windows at most");
ABSL_FLAG(int64_t, steps, 32, "decode steps timed per batch size");
ABSL_FLAG(int32_t, threads, 0, "intra-op threads (0 = default)");
ABSL_FLAG(bool, speed, true, "measure decode tokens/s");
ABSL_FLAG(std::string, windows_out, "",
          "write the token windows the perplexity used (JSON) here");

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "quant_eval: %s\n", status.ToString().c_str());
  return 1;
}

// What the first projection runs as ("f32" for a float model): every linear
// of a hearth-quantized model uses one scheme.
std::string Describe(const hearth::model::LlamaForCausalLM& model) {
  const hearth::model::LinearImpl* first =
      model.linear_impl(0, "self_attn.q_proj");
  return first != nullptr ? first->Describe() : "f32";
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using namespace hearth::quantizer;
  torch::NoGradGuard no_grad;
  if (absl::GetFlag(FLAGS_threads) > 0) {
    hearth::model::SetCpuThreads(absl::GetFlag(FLAGS_threads));
  }
  const std::string path = absl::GetFlag(FLAGS_model);
  std::string reference = absl::GetFlag(FLAGS_reference);
  if (reference.empty()) reference = path;
  auto config = hearth::formats::LoadLlamaConfig(reference + "/config.json");
  if (!config.ok()) return Fail(config.status());
  auto text = LoadCalibrationText(absl::GetFlag(FLAGS_text_file),
                                  absl::GetFlag(FLAGS_corpus));
  if (!text.ok()) return Fail(text.status());
  auto tokens = TokenizeText(reference, *text, config->vocab_size);
  if (!tokens.ok()) return Fail(tokens.status());
  const std::vector<int64_t> held_out = SplitTokens(*tokens).held_out;
  const int64_t seq =
      std::min<int64_t>(std::min<int64_t>(absl::GetFlag(FLAGS_seq_len),
                                          config->max_position_embeddings),
                        static_cast<int64_t>(held_out.size()));

  const int64_t rss0 = ResidentBytes();
  auto model = hearth::model::LoadModel(path);
  if (!model.ok()) return Fail(model.status());
  const int64_t rss1 = ResidentBytes();

  const int64_t windows = absl::GetFlag(FLAGS_windows);
  nlohmann::json out = {
      {"model", path},
      {"describe", Describe(**model)},
      {"perplexity", Perplexity(**model, held_out, seq, windows)},
      {"layer_weight_bytes", (*model)->LayerLinearBytes()},
      {"weight_bytes", (*model)->WeightBytes()},
      {"disk_bytes", DiskBytes(path)},
      {"rss_model_bytes", rss1 - rss0},
      {"held_out_tokens", held_out.size()},
      {"seq_len", seq}};
  if (absl::GetFlag(FLAGS_speed)) {
    const int64_t steps = absl::GetFlag(FLAGS_steps);
    DecodeTokensPerSecond(**model, 1, 4);  // warm-up
    out["decode_tokens_per_second_b1"] =
        DecodeTokensPerSecond(**model, 1, steps);
    out["decode_tokens_per_second_b16"] =
        DecodeTokensPerSecond(**model, 16, steps);
  }
  out["peak_rss_bytes"] = PeakResidentBytes();
  if (reference != path) {
    // Mean KL(reference || model) per next-token distribution on the same
    // windows: far less noisy than a perplexity difference, so it ranks
    // methods whose perplexities tie.
    auto ref = hearth::model::LoadModel(reference);
    if (!ref.ok()) return Fail(ref.status());
    double kl = 0;
    int64_t positions = 0;
    for (int64_t i = 0; i < windows; ++i) {
      if ((i + 1) * seq > static_cast<int64_t>(held_out.size())) break;
      at::Tensor ids =
          torch::tensor(std::vector<int64_t>(held_out.begin() + i * seq,
                                             held_out.begin() + (i + 1) * seq),
                        torch::kLong)
              .unsqueeze(0);
      at::Tensor lp = at::log_softmax((*ref)->Forward(ids).logits[0], -1);
      at::Tensor lq = at::log_softmax((*model)->Forward(ids).logits[0], -1);
      kl += (lp.exp() * (lp - lq)).sum().item<double>();
      positions += seq;
    }
    out["kl_vs_reference"] = positions ? kl / positions : 0.0;
  }
  if (!absl::GetFlag(FLAGS_windows_out).empty()) {
    // The same windows Perplexity() took: consecutive, non-overlapping.
    nlohmann::json w = nlohmann::json::array();
    for (int64_t i = 0; i < windows; ++i) {
      if ((i + 1) * seq > static_cast<int64_t>(held_out.size())) break;
      w.push_back(std::vector<int64_t>(held_out.begin() + i * seq,
                                       held_out.begin() + (i + 1) * seq));
    }
    std::ofstream(absl::GetFlag(FLAGS_windows_out)) << w.dump() << "\n";
  }
  std::cout << out.dump() << std::endl;
  return 0;
}
