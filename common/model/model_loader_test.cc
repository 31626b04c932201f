#include "common/model/model_loader.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "common/formats/gguf.h"
#include "common/formats/gguf_llama.h"
#include "common/formats/safetensors.h"
#include "common/quant/quant_core.h"

namespace hearth::model {
namespace {

namespace fs = std::filesystem;

formats::LlamaConfig TinyConfig() {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  return c;
}

formats::LlamaConfig QwenConfig() {
  formats::LlamaConfig c = TinyConfig();
  c.architecture = "Qwen2ForCausalLM";
  c.model_type = "qwen2";
  c.attention_bias = true;
  c.tie_word_embeddings = true;
  return c;
}

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hearth_loader_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::shared_ptr<LlamaForCausalLM> Random(const formats::LlamaConfig& c,
                                           uint64_t seed = 7) {
    RandomInitOptions init;
    init.init_std = 0.2;
    auto m = MakeRandomModel(c, seed, init);
    EXPECT_TRUE(m.ok()) << m.status();
    torch::NoGradGuard no_grad;
    for (auto& p : (*m)->named_parameters()) {
      if (p.key().find("bias") != std::string::npos ||
          p.key().find("norm") != std::string::npos) {
        p.value().add_(0.1 * torch::randn_like(p.value()));
      }
    }
    return *m;
  }

  static at::Tensor Logits(LlamaForCausalLM& m) {
    torch::NoGradGuard no_grad;
    return m.Forward(torch::tensor({{1, 5, 9, 33, 60, 2}}, torch::kLong))
        .logits;
  }

  // Writes a safetensors file with `model`'s tensors, letting `edit` drop or
  // replace entries first.
  void WriteTensors(
      LlamaForCausalLM& model, const std::string& path,
      const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
    std::map<std::string, at::Tensor> tensors;
    for (const auto& p : model.named_parameters())
      tensors[p.key()] = p.value().detach().contiguous();
    edit(tensors);
    formats::SafetensorsWriter w;
    for (auto& [name, t] : tensors) {
      formats::DType dt =
          t.scalar_type() == torch::kFloat ? formats::DType::kF32
          : t.scalar_type() == torch::kInt ? formats::DType::kI32
                                           : formats::DType::kF16;
      w.Add(name, dt, t.sizes().vec(), t.data_ptr(),
            t.numel() * t.element_size());
    }
    ASSERT_TRUE(w.WriteFile(path).ok());
  }

  fs::path dir_;
};

TEST_F(LoaderTest, SaveLoadRoundTripIsBitIdentical) {
  for (const formats::LlamaConfig& c : {TinyConfig(), QwenConfig()}) {
    SCOPED_TRACE(c.architecture);
    auto model = Random(c);
    const std::string folder = (dir_ / c.model_type).string();
    ASSERT_TRUE(SaveModel(*model, folder).ok());
    EXPECT_TRUE(fs::exists(fs::path(folder) / "config.json"));
    auto loaded = LoadModel(folder);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    formats::LlamaConfig expected = c;
    expected.torch_dtype = "float32";
    EXPECT_EQ(formats::LlamaConfigToJson((*loaded)->config()),
              formats::LlamaConfigToJson(expected));
    auto a = model->named_parameters();
    auto b = (*loaded)->named_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (const auto& p : a) {
      ASSERT_NE(b.find(p.key()), nullptr) << p.key();
      EXPECT_TRUE(torch::equal(p.value(), *b.find(p.key()))) << p.key();
    }
    EXPECT_TRUE(torch::equal(Logits(*model), Logits(**loaded)));
    // Tied models do not store lm_head.weight, as save_pretrained.
    auto reader = formats::CheckpointReader::Open(folder);
    ASSERT_TRUE(reader.ok());
    EXPECT_EQ((*reader)->Find("lm_head.weight") != nullptr,
              !c.tie_word_embeddings);
  }
}

TEST_F(LoaderTest, SaveInReducedPrecision) {
  auto model = Random(TinyConfig());
  SaveOptions opt;
  opt.dtype = torch::kBFloat16;
  ASSERT_TRUE(SaveModel(*model, dir_.string(), opt).ok());
  auto config = formats::LoadLlamaConfig((dir_ / "config.json").string());
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  auto loaded = LoadModel(dir_.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->dtype(), torch::kFloat);  // CPU default.
  for (const auto& p : model->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value().to(torch::kBFloat16).to(torch::kFloat),
                             *(*loaded)->named_parameters().find(p.key())))
        << p.key();
  }
  LoadOptions as_bf16;
  as_bf16.dtype = torch::kBFloat16;
  auto bf = LoadModel(dir_.string(), as_bf16);
  ASSERT_TRUE(bf.ok());
  EXPECT_EQ((*bf)->dtype(), torch::kBFloat16);
}

TEST_F(LoaderTest, RandomModelIsDeterministic) {
  auto a = MakeRandomModel(TinyConfig(), 5);
  auto b = MakeRandomModel(TinyConfig(), 5);
  auto c = MakeRandomModel(TinyConfig(), 6);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(
      torch::equal((*a)->embed_tokens_weight(), (*b)->embed_tokens_weight()));
  EXPECT_FALSE(
      torch::equal((*a)->embed_tokens_weight(), (*c)->embed_tokens_weight()));
  auto params = (*a)->named_parameters();
  EXPECT_TRUE(
      torch::equal(*params.find("model.norm.weight"), torch::ones({32})));
  EXPECT_NEAR(
      params.find("model.layers.0.mlp.up_proj.weight")->std().item<double>(),
      0.02, 0.003);
}

TEST_F(LoaderTest, MissingTensorIsNamed) {
  auto model = Random(TinyConfig());
  ASSERT_TRUE(SaveModel(*model, dir_.string()).ok());
  WriteTensors(*model, (dir_ / "model.safetensors").string(),
               [](auto& t) { t.erase("model.layers.1.mlp.down_proj.weight"); });
  auto loaded = LoadModel(dir_.string());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(
      loaded.status().message().find("model.layers.1.mlp.down_proj.weight"),
      std::string::npos)
      << loaded.status();
}

TEST_F(LoaderTest, MisShapedTensorIsNamed) {
  auto model = Random(TinyConfig());
  ASSERT_TRUE(SaveModel(*model, dir_.string()).ok());
  WriteTensors(*model, (dir_ / "model.safetensors").string(), [](auto& t) {
    t["model.layers.0.self_attn.k_proj.weight"] = torch::zeros({8, 32});
  });
  auto loaded = LoadModel(dir_.string());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(
      loaded.status().message().find("model.layers.0.self_attn.k_proj.weight"),
      std::string::npos)
      << loaded.status();
  EXPECT_NE(loaded.status().message().find("[8, 32]"), std::string::npos)
      << loaded.status();
}

TEST_F(LoaderTest, NonFloatTensorIsRejected) {
  auto model = Random(TinyConfig());
  ASSERT_TRUE(SaveModel(*model, dir_.string()).ok());
  WriteTensors(*model, (dir_ / "model.safetensors").string(), [](auto& t) {
    t["model.norm.weight"] = torch::ones({32}, torch::kInt);
  });
  auto loaded = LoadModel(dir_.string());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(loaded.status().message().find("model.norm.weight"),
            std::string::npos)
      << loaded.status();
}

TEST_F(LoaderTest, ExtraTensorsAndHalfPrecisionAreAccepted) {
  auto model = Random(TinyConfig());
  ASSERT_TRUE(SaveModel(*model, dir_.string()).ok());
  WriteTensors(*model, (dir_ / "model.safetensors").string(), [](auto& t) {
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch::ones({4});
    t["model.norm.weight"] = t["model.norm.weight"].to(torch::kHalf);
  });
  auto loaded = LoadModel(dir_.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(
      torch::equal(*(*loaded)->named_parameters().find("model.norm.weight"),
                   model->named_parameters()
                       .find("model.norm.weight")
                       ->to(torch::kHalf)
                       .to(torch::kFloat)));
}

TEST_F(LoaderTest, BadPathsAndFiles) {
  EXPECT_EQ(LoadModel((dir_ / "nope").string()).status().code(),
            absl::StatusCode::kNotFound);
  // A folder without config.json.
  auto s = LoadModel(dir_.string()).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("config.json"), std::string::npos) << s;
  // A truncated safetensors file: an error, not a crash.
  auto model = Random(TinyConfig());
  ASSERT_TRUE(SaveModel(*model, dir_.string()).ok());
  fs::resize_file(dir_ / "model.safetensors", 100);
  s = LoadModel(dir_.string()).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.safetensors"), std::string::npos) << s;
  // Garbage config.
  std::ofstream(dir_ / "config.json") << "{not json";
  EXPECT_FALSE(LoadModel(dir_.string()).ok());
  // A regular file that is not a .gguf.
  std::ofstream(dir_ / "weights.bin") << "x";
  EXPECT_EQ(LoadModel((dir_ / "weights.bin").string()).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A corrupt .gguf.
  std::ofstream(dir_ / "bad.gguf") << "GGUF but not really";
  EXPECT_FALSE(LoadModel((dir_ / "bad.gguf").string()).ok());
}

// A GPTQ v1 folder (RTN codes, sym 4-bit, group 32) is loaded with its linears
// kept packed, and computes what the dequantized weights compute.
TEST_F(LoaderTest, GptqFolderLoadsQuantized) {
  formats::LlamaConfig c = TinyConfig();
  c.intermediate_size = 64;  // Quantized rows are whole groups of 32.
  auto model = Random(c);
  std::map<std::string, at::Tensor> dequantized;
  formats::SafetensorsWriter writer;
  std::vector<at::Tensor> keep;
  auto add = [&](const std::string& name, formats::DType dtype, at::Tensor t) {
    keep.push_back(t.contiguous());
    writer.Add(name, dtype, keep.back().sizes().vec(), keep.back().data_ptr(),
               keep.back().numel() * keep.back().element_size());
  };
  std::set<std::string> linears;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (const std::string& n : LayerLinearNames()) {
      linears.insert("model.layers." + std::to_string(l) + "." + n);
    }
  }
  for (const auto& p : model->named_parameters()) {
    at::Tensor t = p.value().detach();
    const std::string prefix = p.key().substr(0, p.key().rfind('.'));
    if (linears.count(prefix) == 0) {
      add(p.key(), formats::DType::kF32, t);
      dequantized[p.key()] = t;
      continue;
    }
    quant::QuantizedWeight q =
        quant::RtnQuantize(t, {4, 32, true}, quant::RangeRule::kGptq);
    auto g = quant::PackGptq(q);
    ASSERT_TRUE(g.ok()) << g.status();
    add(prefix + ".qweight", formats::DType::kI32, g->qweight);
    add(prefix + ".qzeros", formats::DType::kI32, g->qzeros);
    add(prefix + ".scales", formats::DType::kF16, g->scales);
    add(prefix + ".g_idx", formats::DType::kI32, g->g_idx);
    dequantized[p.key()] = q.Dequantize();
  }
  ASSERT_TRUE(writer.WriteFile((dir_ / "model.safetensors").string()).ok());
  formats::LlamaConfig qc = c;
  qc.quantization_config = nlohmann::json{{"quant_method", "gptq"},
                                          {"bits", 4},
                                          {"group_size", 32},
                                          {"sym", true},
                                          {"desc_act", false}};
  std::ofstream(dir_ / "config.json") << formats::LlamaConfigToJson(qc);

  auto loaded = LoadModel(dir_.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->quantization(), "gptq-int4");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (const std::string& n : LayerLinearNames()) {
      const LinearImpl* impl = (*loaded)->linear_impl(l, n);
      ASSERT_NE(impl, nullptr) << n;
      EXPECT_EQ(impl->Describe(), "w4g32");
    }
  }
  auto reference = ModelFromTensors(c, dequantized);
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_LT((Logits(**loaded) - Logits(**reference)).abs().max().item<double>(),
            1e-4);
  // The layers' linears take 4-bit codes and one (scale, offset) per 32.
  EXPECT_LT((*loaded)->LayerLinearBytes(),
            0.2 * (*reference)->LayerLinearBytes());
  // Where the kernels do not run (here float64), the weights are expanded.
  LoadOptions f64;
  f64.dtype = c10::kDouble;
  auto expanded = LoadModel(dir_.string(), f64);
  ASSERT_TRUE(expanded.ok()) << expanded.status();
  EXPECT_FALSE((*expanded)->has_linear_impls());
  EXPECT_LT(
      (Logits(**expanded) - Logits(**reference)).abs().max().item<double>(),
      1e-4);

  // Unsupported method, and a missing packed tensor, each named.
  formats::LlamaConfig bad = qc;
  bad.quantization_config["quant_method"] = "bitsandbytes";
  std::ofstream(dir_ / "config.json") << formats::LlamaConfigToJson(bad);
  absl::Status s = LoadModel(dir_.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bitsandbytes"), std::string::npos) << s;
  std::ofstream(dir_ / "config.json") << formats::LlamaConfigToJson(qc);
  ASSERT_TRUE(SaveModel(**reference, (dir_ / "float").string()).ok());
  fs::copy_file(dir_ / "float" / "model.safetensors",
                dir_ / "model.safetensors",
                fs::copy_options::overwrite_existing);
  s = LoadModel(dir_.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("model.layers.0.self_attn.q_proj.qweight"),
            std::string::npos)
      << s;
}

TEST_F(LoaderTest, ModelFromTensors) {
  auto model = Random(TinyConfig());
  std::map<std::string, at::Tensor> tensors;
  for (const auto& p : model->named_parameters())
    tensors[p.key()] = p.value().detach();
  auto copy = ModelFromTensors(TinyConfig(), tensors);
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_TRUE(torch::equal(Logits(*model), Logits(**copy)));
  tensors.erase("lm_head.weight");
  EXPECT_NE(ModelFromTensors(TinyConfig(), tensors)
                .status()
                .message()
                .find("lm_head.weight"),
            std::string::npos);
}

TEST_F(LoaderTest, GgufRoundTrip) {
  // Export through the formats library (as `hearth` does) and load the .gguf
  // back.
  formats::LlamaConfig c = TinyConfig();
  c.intermediate_size = 64;  // Q4_0 / Q8_0 blocks are 32 columns.
  auto model = Random(c);
  const std::string folder = (dir_ / "hf").string();
  ASSERT_TRUE(SaveModel(*model, folder).ok());
  // A minimal byte-level tokenizer.json so the exporter has a vocabulary.
  nlohmann::json vocab = nlohmann::json::object();
  const std::string chars =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345678";
  for (int i = 0; i < 60; ++i) vocab[std::string(1, chars[i])] = i;
  vocab["ab"] = 60;
  nlohmann::json tok = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", nlohmann::json::array({"a b"})},
        {"byte_fallback", false}}}};
  std::ofstream(fs::path(folder) / "tokenizer.json") << tok.dump();
  const std::string gguf = (dir_ / "m.gguf").string();
  absl::Status exported =
      formats::ExportLlamaGguf(folder, gguf, formats::GgmlType::kF32);
  if (!exported.ok()) GTEST_SKIP() << "GGUF export unavailable: " << exported;
  auto loaded = LoadModel(gguf);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->quantization(), "gguf-f32");
  EXPECT_FALSE((*loaded)->has_linear_impls());
  EXPECT_LT((Logits(*model) - Logits(**loaded)).abs().max().item<double>(),
            1e-4);

  // Q8_0 / Q4_0: the linears stay quantized (on the CPU in float32) and
  // compute what the same file expanded to float64 computes.
  for (auto [type, label] :
       {std::pair{formats::GgmlType::kQ8_0, "gguf-q8_0"},
        std::pair{formats::GgmlType::kQ4_0, "gguf-q4_0"}}) {
    SCOPED_TRACE(label);
    const std::string q = (dir_ / (std::string(label) + ".gguf")).string();
    ASSERT_TRUE(formats::ExportLlamaGguf(folder, q, type).ok());
    auto quantized = LoadModel(q);
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    EXPECT_EQ((*quantized)->quantization(), label);
    ASSERT_NE((*quantized)->linear_impl(1, "mlp.down_proj"), nullptr);
    LoadOptions f64;
    f64.dtype = c10::kDouble;
    auto expanded = LoadModel(q, f64);
    ASSERT_TRUE(expanded.ok()) << expanded.status();
    EXPECT_FALSE((*expanded)->has_linear_impls());
    EXPECT_LT((Logits(**quantized) - Logits(**expanded).to(at::kFloat))
                  .abs()
                  .max()
                  .item<double>(),
              1e-4);
    // And it is still the model: close to the float logits.
    const at::Tensor ref = Logits(*model);
    EXPECT_LT((Logits(**quantized) - ref).abs().max().item<double>(),
              (type == formats::GgmlType::kQ8_0 ? 0.05 : 0.5) *
                  ref.abs().max().item<double>());
  }
}

}  // namespace
}  // namespace hearth::model
