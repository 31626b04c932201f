#include "common/formats/hf_config.h"

#include <unistd.h>

#include <fstream>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

// Set by CMakeLists.txt; the fallback works from the repository root.
#ifndef HEARTH_FORMATS_TESTDATA
#define HEARTH_FORMATS_TESTDATA "common/formats/testdata"
#endif

namespace hearth::formats {
namespace {

::testing::AssertionResult Contains(absl::string_view haystack,
                                    absl::string_view needle) {
  if (haystack.find(needle) != absl::string_view::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << haystack << "\"\n  does not contain \"" << needle << "\"";
}

// meta-llama/Llama-3.2-1B config.json, verbatim.
constexpr char kLlama32[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

// Qwen/Qwen2-0.5B config.json, verbatim.
constexpr char kQwen2[] = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 131072,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// A minimal old-style config: no head_dim, no num_key_value_heads, no dtype.
constexpr char kMinimal[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
  "num_attention_heads": 4, "vocab_size": 320
})";

TEST(HfConfigTest, ParsesLlama32) {
  auto c = ParseLlamaConfig(kLlama32);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->intermediate_size, 8192);
  EXPECT_EQ(c->num_hidden_layers, 16);
  EXPECT_EQ(c->num_attention_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->eos_token_id, 128001);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001}));
  EXPECT_FALSE(c->pad_token_id.has_value());
  EXPECT_FALSE(c->sliding_window.has_value());
  EXPECT_TRUE(c->quantization_config.is_null());
}

TEST(HfConfigTest, ParsesQwen2WithImpliedBias) {
  auto c = ParseLlamaConfig(kQwen2);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(c->model_type, "qwen2");
  EXPECT_TRUE(c->attention_bias);
  EXPECT_EQ(c->head_dim, 64);  // 896 / 14.
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 1e6);
  EXPECT_FALSE(c->sliding_window.has_value());  // use_sliding_window is false.
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{151643}));
}

TEST(HfConfigTest, AppliesTransformersDefaults) {
  auto c = ParseLlamaConfig(kMinimal);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, "");
  EXPECT_EQ(c->torch_dtype, "float32");
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{2}));
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(HfConfigTest, AcceptsModelTypeOnlyEosListsAndNulls) {
  auto c = ParseLlamaConfig(R"({"model_type": "mistral", "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 1,
      "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 100,
      "sliding_window": null,
      "head_dim": null, "rope_scaling": null, "pad_token_id": null,
      "eos_token_id": [7, 8, 9], "dtype": "float16"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "MistralForCausalLM");
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->eos_token_id, 7);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{7, 8, 9}));
  EXPECT_EQ(c->torch_dtype, "float16");
  EXPECT_FALSE(c->sliding_window.has_value());
}

TEST(HfConfigTest, ReadsRopeParametersOfNewTransformers) {
  auto c = ParseLlamaConfig(
      R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 1,
      "num_attention_heads": 4, "vocab_size": 100,
      "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                          "rope_theta": 250000.0}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 250000.0);
  EXPECT_EQ(c->rope_scaling.type, "linear");
  EXPECT_EQ(c->rope_scaling.factor, 2.0);
}

TEST(HfConfigTest, RoundTripsThroughJson) {
  for (const char* text : {kLlama32, kQwen2, kMinimal}) {
    auto c = ParseLlamaConfig(text);
    ASSERT_TRUE(c.ok()) << c.status();
    c->pad_token_id = 0;
    c->eos_token_ids = {5, 6};
    c->eos_token_id = 5;
    c->quantization_config = nlohmann::json::parse(
        R"({"bits": 4, "group_size": 128, "desc_act": false, "sym": true,
            "quant_method": "gptq", "damp_percent": 0.01})");
    const std::string json = LlamaConfigToJson(*c);
    auto back = ParseLlamaConfig(json);
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
    EXPECT_TRUE(*back == *c) << json;
  }
}

TEST(HfConfigTest, WritesTransformersKeys) {
  auto c = ParseLlamaConfig(kLlama32);
  ASSERT_TRUE(c.ok());
  const std::string text = LlamaConfigToJson(*c);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["num_key_value_heads"], 8);
  EXPECT_EQ(j["head_dim"], 64);
  EXPECT_EQ(j["rms_norm_eps"], 1e-5);
  EXPECT_EQ(j["rope_theta"], 500000.0);
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["eos_token_id"],
            128001);  // One id is written as a plain integer.
  EXPECT_EQ(j["mlp_bias"], false);
  EXPECT_FALSE(j.contains("quantization_config"));
  EXPECT_FALSE(j.contains("pad_token_id"));
  // Keys come out sorted (like transformers' to_json_string) and 2-space
  // indented.
  EXPECT_TRUE(
      Contains(text,
               "{\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n"
               "  \"attention_bias\": false,\n"));
  EXPECT_TRUE(Contains(text, "\"rope_theta\": 500000.0,"));

  auto qwen = ParseLlamaConfig(kQwen2);
  ASSERT_TRUE(qwen.ok());
  auto q = nlohmann::json::parse(LlamaConfigToJson(*qwen));
  EXPECT_EQ(q["model_type"], "qwen2");
  EXPECT_EQ(q["use_sliding_window"], false);
  EXPECT_TRUE(q["sliding_window"].is_null());
  EXPECT_TRUE(q["rope_scaling"].is_null());
}

TEST(HfConfigTest, ValidatesHandBuiltConfigs) {
  LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 256;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  EXPECT_TRUE(Validate(c).ok());
  LlamaConfig bad = c;
  bad.num_key_value_heads = 3;
  EXPECT_TRUE(Contains(Validate(bad).message(),
                       "\"num_attention_heads\" 4 is not divisible by "
                       "num_key_value_heads 3"));
  bad = c;
  bad.architecture = "Qwen2ForCausalLM";
  bad.model_type = "qwen2";
  EXPECT_TRUE(Contains(Validate(bad).message(), "\"attention_bias\""));
  bad = c;
  bad.architecture = "MistralForCausalLM";
  bad.model_type = "mistral";
  bad.max_position_embeddings = 32768;
  bad.sliding_window = 4096;
  EXPECT_EQ(Validate(bad).code(), absl::StatusCode::kUnimplemented);
  bad.sliding_window =
      bad.max_position_embeddings;  // Covers every position: fine.
  EXPECT_TRUE(Validate(bad).ok());
}

struct BadConfig {
  const char* label;
  std::string json;
  absl::StatusCode code;
  const char* message;
};

// kMinimal with `extra` appended; a repeated key overrides the earlier one, as
// in Python's json module.
std::string Minimal(const std::string& extra) {
  std::string text = kMinimal;
  return text.substr(0, text.rfind('}')) + ", " + extra + "}";
}

TEST(HfConfigTest, RejectsBadConfigsNamingTheKey) {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  const absl::StatusCode kUnimpl = absl::StatusCode::kUnimplemented;
  const BadConfig cases[] = {
      {"not json", "{\"hidden_size\": ", kInvalid,
       "config.json: not valid JSON at byte"},
      {"nul", std::string(kMinimal) + '\0' + "junk", kInvalid,
       "NUL byte at byte "},
      {"array", "[1]", kInvalid,
       "config.json: top level is a JSON array, not an object"},
      {"missing key",
       R"({"architectures": ["LlamaForCausalLM"], "intermediate_size": 1,
           "num_hidden_layers": 1, "num_attention_heads": 1, "vocab_size": 1})",
       kInvalid, "config.json: missing required key \"hidden_size\""},
      {"no architecture", R"({"hidden_size": 64})", kInvalid,
       "missing required key \"architectures\""},
      {"string size", Minimal(R"("vocab_size": "320")"), kInvalid,
       "\"vocab_size\" must be an integer, got string \"320\""},
      {"fractional size", Minimal(R"("num_hidden_layers": 2.5)"), kInvalid,
       "\"num_hidden_layers\" must be an integer, got number 2.5"},
      {"huge size", Minimal(R"("vocab_size": 18446744073709551615)"), kInvalid,
       "\"vocab_size\" must be an integer"},
      {"negative size", Minimal(R"("vocab_size": -3)"), kInvalid,
       "\"vocab_size\" must be positive, got -3"},
      {"architectures type", Minimal(R"("architectures": "LlamaForCausalLM")"),
       kInvalid, "\"architectures\" must be a non-empty array of strings"},
      {"other architecture", Minimal(R"("architectures": ["GPT2LMHeadModel"])"),
       kUnimpl, "\"architectures\" is \"GPT2LMHeadModel\""},
      {"model_type mismatch", Minimal(R"("model_type": "qwen2")"), kInvalid,
       "\"model_type\" is \"qwen2\" but LlamaForCausalLM needs \"llama\""},
      {"heads", Minimal(R"("num_attention_heads": 5)"), kInvalid,
       "\"hidden_size\" 64 is not divisible by num_attention_heads 5"},
      {"kv heads", Minimal(R"("num_key_value_heads": 3)"), kInvalid,
       "\"num_attention_heads\" 4 is not divisible by num_key_value_heads 3"},
      {"odd head_dim", Minimal(R"("head_dim": 15)"), kInvalid,
       "\"head_dim\" 15 is odd"},
      {"rope type",
       Minimal(R"("rope_scaling": {"type": "yarn", "factor": 4.0})"), kUnimpl,
       "\"rope_scaling.type\" is \"yarn\""},
      {"rope not object", Minimal(R"("rope_scaling": 2)"), kInvalid,
       "\"rope_scaling\" must be an object or null, got number 2"},
      {"llama3 missing",
       Minimal(R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0})"),
       kInvalid, "missing required key \"rope_scaling.low_freq_factor\""},
      {"linear factor type",
       Minimal(R"("rope_scaling": {"type": "linear", "factor": "2"})"),
       kInvalid, "\"rope_scaling.factor\" must be a number, got string \"2\""},
      {"llama3 freq order",
       Minimal(R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0,
           "low_freq_factor": 4.0, "high_freq_factor": 1.0,
           "original_max_position_embeddings": 8192})"),
       kInvalid, "\"rope_scaling.high_freq_factor\" must be > low_freq_factor"},
      {"eps", Minimal(R"("rms_norm_eps": 0)"), kInvalid,
       "\"rms_norm_eps\" must be > 0"},
      {"bool type", Minimal(R"("tie_word_embeddings": "yes")"), kInvalid,
       "\"tie_word_embeddings\" must be true or false, got string \"yes\""},
      {"qwen2 bias off",
       Minimal(R"("architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
           "attention_bias": false)"),
       kInvalid, "\"attention_bias\" is false but Qwen2"},
      {"mistral window",
       Minimal(
           R"("architectures": ["MistralForCausalLM"], "model_type": "mistral",
           "max_position_embeddings": 32768, "sliding_window": 4096)"),
       kUnimpl,
       "\"sliding_window\" is 4096, shorter than max_position_embeddings "
       "32768"},
      {"qwen2 window",
       Minimal(R"("architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
           "use_sliding_window": true, "sliding_window": 1024)"),
       kUnimpl, "\"sliding_window\" is 1024"},
      {"act", Minimal(R"("hidden_act": "gelu")"), kUnimpl,
       "\"hidden_act\" is \"gelu\""},
      {"mlp bias", Minimal(R"("mlp_bias": true)"), kUnimpl,
       "\"mlp_bias\" is true"},
      {"eos element", Minimal(R"("eos_token_id": [1, "2"])"), kInvalid,
       "\"eos_token_id[1]\" must be an integer, got string \"2\""},
      {"eos empty", Minimal(R"("eos_token_id": [])"), kInvalid,
       "\"eos_token_id\" must be an integer or a non-empty array of integers"},
      {"dtype", Minimal(R"("torch_dtype": "int8")"), kInvalid,
       "\"torch_dtype\" is \"int8\""},
      {"quant type", Minimal(R"("quantization_config": "gptq")"), kInvalid,
       "\"quantization_config\" must be an object or null, got string "
       "\"gptq\""},
      {"infinite", Minimal(R"("rope_theta": 1e999)"), kInvalid,
       "number overflow parsing '1e999'"},
      {"deep",
       Minimal(R"("quantization_config": )" + std::string(40, '[') +
               std::string(40, ']')),
       kInvalid, "nested deeper than 32 levels"},
  };
  for (const BadConfig& c : cases) {
    auto parsed = ParseLlamaConfig(c.json);
    ASSERT_FALSE(parsed.ok()) << c.label;
    EXPECT_EQ(parsed.status().code(), c.code)
        << c.label << ": " << parsed.status();
    EXPECT_TRUE(Contains(parsed.status().message(), c.message)) << c.label;
    EXPECT_TRUE(Contains(parsed.status().message(), "config.json: "))
        << c.label;
  }
}

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/hf_config_test_", ::getpid(), "_",
                      name);
}

TEST(HfConfigTest, LoadNamesThePath) {
  const std::string path = TempPath("config.json");
  {
    std::ofstream out(path);
    out << Minimal(R"("vocab_size": "x")");
  }
  auto bad = LoadLlamaConfig(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(bad.status().message(), path + ": \"vocab_size\""));
  {
    std::ofstream out(path);
    out << kQwen2;
  }
  auto good = LoadLlamaConfig(path);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->vocab_size, 151936);
  auto missing = LoadLlamaConfig(TempPath("missing.json"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status().message(), "missing.json"));
}

TEST(HfConfigTest, LoadsConfigsWrittenByPython) {
  const std::string dir =
      std::string(HEARTH_FORMATS_TESTDATA) + "/hf_config_corpus/";
  auto llama = LoadLlamaConfig(dir + "llama.json");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->rope_scaling.original_max_position_embeddings, 128);
  EXPECT_EQ(llama->eos_token_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(llama->pad_token_id, 0);
  EXPECT_EQ(llama->quantization_config["bits"], 4);
  auto mistral = LoadLlamaConfig(dir + "mistral.json");
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->rope_scaling.type, "linear");
  EXPECT_EQ(mistral->rope_scaling.factor, 2.0);
  auto qwen = LoadLlamaConfig(dir + "qwen2.json");
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  EXPECT_EQ(qwen->head_dim, 8);
  auto generation = LoadGenerationConfig(dir + "generation.json");
  ASSERT_TRUE(generation.ok()) << generation.status();
  EXPECT_EQ(generation->top_k, 40);
  EXPECT_EQ(generation->repetition_penalty, 1.1);
  EXPECT_EQ(generation->max_new_tokens, 64);
}

// meta-llama/Llama-3.2-1B-Instruct generation_config.json, verbatim.
constexpr char kGeneration[] = R"({
  "bos_token_id": 128000,
  "do_sample": true,
  "eos_token_id": [128001, 128008, 128009],
  "temperature": 0.6,
  "top_p": 0.9,
  "transformers_version": "4.45.0.dev0"
})";

TEST(GenerationConfigTest, ParsesAndRoundTrips) {
  auto g = ParseGenerationConfig(kGeneration);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->bos_token_id, 128000);
  EXPECT_EQ(g->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_FALSE(g->pad_token_id.has_value());
  EXPECT_TRUE(g->do_sample);
  EXPECT_EQ(g->temperature, 0.6);
  EXPECT_EQ(g->top_p, 0.9);
  EXPECT_EQ(g->top_k, 50);
  EXPECT_EQ(g->repetition_penalty, 1.0);
  EXPECT_FALSE(g->max_new_tokens.has_value());
  auto back = ParseGenerationConfig(GenerationConfigToJson(*g));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == *g);
}

TEST(GenerationConfigTest, GreedyOutputOmitsSamplingKnobs) {
  GenerationConfig g;
  g.bos_token_id = 1;
  g.eos_token_ids = {2};
  g.max_new_tokens = 64;
  EXPECT_EQ(GenerationConfigToJson(g),
            "{\n  \"bos_token_id\": 1,\n  \"do_sample\": false,\n  "
            "\"eos_token_id\": 2,\n"
            "  \"max_new_tokens\": 64\n}\n");
  auto back = ParseGenerationConfig(GenerationConfigToJson(g));
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(*back == g);
}

TEST(GenerationConfigTest, RejectsBadValuesNamingTheKey) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"temperature": "hot"})",
       "\"temperature\" must be a number, got string \"hot\""},
      {R"({"temperature": -1})", "\"temperature\" must be >= 0"},
      {R"({"top_p": 1.5})", "\"top_p\" must be in [0, 1]"},
      {R"({"top_k": -1})", "\"top_k\" must be >= 0"},
      {R"({"top_k": 1.5})", "\"top_k\" must be an integer"},
      {R"({"repetition_penalty": 0})", "\"repetition_penalty\" must be > 0"},
      {R"({"max_new_tokens": 0})", "\"max_new_tokens\" must be > 0"},
      {R"({"do_sample": 1})", "\"do_sample\" must be true or false"},
      {R"({"eos_token_id": "2"})", "\"eos_token_id\" must be an integer or"},
      {R"([])", "top level is a JSON array"},
  };
  for (const auto& [json, message] : cases) {
    auto g = ParseGenerationConfig(json);
    ASSERT_FALSE(g.ok()) << json;
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_TRUE(Contains(g.status().message(), message)) << json;
    EXPECT_TRUE(Contains(g.status().message(), "generation_config.json: "))
        << json;
  }
}

}  // namespace
}  // namespace hearth::formats
