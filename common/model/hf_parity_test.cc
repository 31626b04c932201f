// Numerics oracle: a model folder written by SaveModel must give, in Hugging
// Face transformers, the logits, hidden states and attention maps hearth
// computes (Forward and the KV-cache Step), to 1e-4. Runs
// tests/interop/hf_logits.py with the interpreter in $HEARTH_HF_PYTHON, else
// <source>/.deps/py/bin/python; skipped when neither exists or
// transformers cannot be imported.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/model/model_loader.h"

namespace hearth::model {
namespace {

namespace fs = std::filesystem;

formats::LlamaConfig Base() {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 101;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 128;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return c;
}

struct Case {
  std::string name;
  formats::LlamaConfig config;
  int64_t length;
};

std::vector<Case> Cases() {
  std::vector<Case> cases;
  cases.push_back({"llama_gqa_untied", Base(), 12});
  formats::LlamaConfig qwen = Base();
  qwen.architecture = "Qwen2ForCausalLM";
  qwen.model_type = "qwen2";
  qwen.attention_bias = true;
  qwen.tie_word_embeddings = true;
  qwen.rope_theta = 1000000;
  cases.push_back({"qwen2_bias_tied", qwen, 12});
  formats::LlamaConfig l3 = Base();
  l3.rope_theta = 500000;
  l3.rope_scaling.type = "llama3";
  l3.rope_scaling.factor = 8;
  l3.rope_scaling.low_freq_factor = 1;
  l3.rope_scaling.high_freq_factor = 4;
  l3.rope_scaling.original_max_position_embeddings = 16;
  l3.tie_word_embeddings = true;
  cases.push_back({"llama3_rope", l3, 40});
  formats::LlamaConfig linear = Base();
  linear.rope_scaling.type = "linear";
  linear.rope_scaling.factor = 2.5;
  linear.num_key_value_heads = 6;
  cases.push_back({"linear_rope_mha", linear, 30});
  formats::LlamaConfig bias = Base();
  bias.attention_bias = true;  // Llama: q/k/v and o biases.
  bias.num_key_value_heads = 1;
  cases.push_back({"llama_bias_mqa", bias, 10});
  return cases;
}

std::string Python() {
  if (const char* p = std::getenv("HEARTH_HF_PYTHON")) return p;
  const char* src = std::getenv("HEARTH_SOURCE_DIR");
  return (fs::path(src != nullptr ? src : ".") / ".deps/py/bin/python")
      .string();
}

std::string Script() {
  const char* src = std::getenv("HEARTH_SOURCE_DIR");
  return (fs::path(src != nullptr ? src : ".") / "tests/interop/hf_logits.py")
      .string();
}

at::Tensor FromJson(const nlohmann::json& j) {
  // Nested lists of numbers -> float64 tensor.
  std::vector<int64_t> shape;
  const nlohmann::json* cur = &j;
  while (cur->is_array()) {
    shape.push_back(static_cast<int64_t>(cur->size()));
    if (cur->empty()) break;
    cur = &(*cur)[0];
  }
  std::vector<double> flat;
  std::function<void(const nlohmann::json&)> walk =
      [&](const nlohmann::json& v) {
        if (v.is_array()) {
          for (const auto& e : v) walk(e);
        } else {
          flat.push_back(v.get<double>());
        }
      };
  walk(j);
  return torch::tensor(flat, torch::kDouble).view(shape);
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e9;
  return (a.to(torch::kDouble) - b.to(torch::kDouble))
      .abs()
      .max()
      .item<double>();
}

TEST(HfParityTest, LogitsHiddenStatesAndAttentionsMatchTransformers) {
  const std::string python = Python();
  if (!fs::exists(python))
    GTEST_SKIP() << "no Python with transformers at " << python;
  const fs::path dir = fs::temp_directory_path() /
                       ("hearth_hf_parity_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);

  std::vector<Case> cases = Cases();
  std::vector<std::shared_ptr<LlamaForCausalLM>> models;
  std::vector<std::vector<int64_t>> ids;
  nlohmann::json request = {{"cases", nlohmann::json::array()}};
  for (size_t i = 0; i < cases.size(); ++i) {
    RandomInitOptions init;
    init.init_std = 0.2;
    auto model = MakeRandomModel(cases[i].config, 100 + i, init);
    ASSERT_TRUE(model.ok()) << model.status();
    {
      // Norm weights and biases away from their identity init, so a wrong
      // placement would show.
      torch::NoGradGuard no_grad;
      torch::manual_seed(i);
      for (auto& p : (*model)->named_parameters()) {
        if (p.key().find("norm") != std::string::npos ||
            p.key().find("bias") != std::string::npos) {
          p.value().add_(0.3 * torch::randn_like(p.value()));
        }
      }
    }
    const std::string folder = (dir / cases[i].name).string();
    ASSERT_TRUE(SaveModel(**model, folder).ok());
    std::vector<int64_t> tokens;
    for (int64_t t = 0; t < cases[i].length; ++t) {
      tokens.push_back((t * 37 + 11 * static_cast<int64_t>(i) + 3) %
                       cases[i].config.vocab_size);
    }
    request["cases"].push_back({{"model", folder}, {"ids", tokens}});
    models.push_back(*model);
    ids.push_back(tokens);
  }
  const std::string request_path = (dir / "request.json").string();
  std::ofstream(request_path) << request.dump();

  const std::string command = python + " " + Script() + " " + request_path +
                              " 2>" + (dir / "stderr.txt").string();
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) output.append(buf, n);
  const int status = ::pclose(pipe);
  std::string err;
  {
    std::ifstream f(dir / "stderr.txt");
    err.assign(std::istreambuf_iterator<char>(f), {});
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
    fs::remove_all(dir);
    GTEST_SKIP() << err;
  }
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << command << "\n"
                                                             << err;
  nlohmann::json response = nlohmann::json::parse(output);
  std::printf("transformers %s, torch %s\n",
              response["transformers"].get<std::string>().c_str(),
              response["torch"].get<std::string>().c_str());
  ASSERT_EQ(response["results"].size(), cases.size());

  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].name);
    const nlohmann::json& r = response["results"][i];
    EXPECT_EQ(r["architecture"], cases[i].config.architecture);
    LlamaForCausalLM& model = *models[i];
    ForwardOptions opt;
    opt.output_hidden_states = true;
    opt.output_attentions = true;
    torch::NoGradGuard no_grad;
    ForwardOutput out = model.Forward(
        torch::tensor(ids[i], torch::kLong).view({1, -1}), std::nullopt, opt);
    at::Tensor hf_logits = FromJson(r["logits"]);
    // Guard against a vacuous comparison: the logits must spread.
    EXPECT_GT(hf_logits.std().item<double>(), 0.3);
    const double logits_diff = MaxDiff(out.logits[0], hf_logits);
    std::printf("%-18s max |logit diff| %.3g (logit std %.3g)\n",
                cases[i].name.c_str(), logits_diff,
                hf_logits.std().item<double>());
    EXPECT_LT(logits_diff, 1e-4);
    ASSERT_EQ(r["hidden_states"].size(), out.hidden_states.size());
    for (size_t l = 0; l < out.hidden_states.size(); ++l) {
      EXPECT_LT(
          MaxDiff(out.hidden_states[l][0], FromJson(r["hidden_states"][l])),
          1e-4)
          << l;
    }
    ASSERT_EQ(r["attentions"].size(), out.attentions.size());
    for (size_t l = 0; l < out.attentions.size(); ++l) {
      EXPECT_LT(MaxDiff(out.attentions[l][0], FromJson(r["attentions"][l])),
                1e-5)
          << l;
    }
    // The inference path: prefill half, decode the rest one token at a time.
    auto cache = KvCache::Create(model.CacheDims(), {256, 16});
    ASSERT_TRUE(cache.ok());
    ASSERT_TRUE((*cache)->AddSequence(1).ok());
    const size_t half = ids[i].size() / 2;
    auto prefill = model.Step(
        **cache,
        {{1, std::vector<int64_t>(ids[i].begin(), ids[i].begin() + half)}},
        /*all_positions=*/true);
    ASSERT_TRUE(prefill.ok()) << prefill.status();
    EXPECT_LT(MaxDiff(*prefill, hf_logits.narrow(0, 0, half)), 1e-4);
    for (size_t t = half; t < ids[i].size(); ++t) {
      auto step = model.Step(**cache, {{1, {ids[i][t]}}});
      ASSERT_TRUE(step.ok()) << step.status();
      EXPECT_LT(MaxDiff((*step)[0], hf_logits[t]), 1e-4) << "position " << t;
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace hearth::model
