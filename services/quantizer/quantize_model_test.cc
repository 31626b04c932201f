#include "services/quantizer/quantize_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "common/formats/safetensors.h"
#include "common/model/model_loader.h"
#include "services/quantizer/calibration.h"
#include "services/quantizer/evaluation.h"

namespace hearth::quantizer {
namespace {

formats::LlamaConfig TinyConfig() {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 256;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.max_position_embeddings = 256;
  return c;
}

std::map<std::string, at::Tensor> Tensors(model::LlamaForCausalLM& m) {
  std::map<std::string, at::Tensor> t;
  for (const auto& p : m.named_parameters())
    t[p.key()] = p.value().detach().clone();
  return t;
}

class QuantizeModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = model::MakeRandomModel(TinyConfig(), 7);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *m;
    tensors_ = Tensors(*model_);
    torch::manual_seed(0);
    calibration_ = torch::randint(0, 256, {8, 64}, torch::kLong);
    dir_ = ::testing::TempDir() + "/quantize_model_test";
    std::filesystem::create_directories(dir_);
  }

  std::shared_ptr<model::LlamaForCausalLM> model_;
  std::map<std::string, at::Tensor> tensors_;
  at::Tensor calibration_;
  std::string dir_;
};

double LogitError(model::LlamaForCausalLM& q, const at::Tensor& ref,
                  const at::Tensor& ids) {
  return (q.Forward(ids).logits - ref).pow(2).mean().item<double>();
}

// Greedy continuation of `prompt` through Step() and a paged KV cache.
std::vector<int64_t> Greedy(model::LlamaForCausalLM& m,
                            const std::vector<int64_t>& prompt, int n) {
  auto cache = model::KvCache::Create(m.CacheDims(), {});
  EXPECT_TRUE(cache.ok());
  EXPECT_TRUE((*cache)->AddSequence(1).ok());
  std::vector<int64_t> out;
  model::SequenceInput in{1, prompt};
  for (int i = 0; i < n; ++i) {
    auto logits = m.Step(**cache, {in});
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (!logits.ok()) break;
    out.push_back(logits->argmax(-1)[0].item<int64_t>());
    in.tokens = {out.back()};
  }
  return out;
}

TEST_F(QuantizeModelTest, MethodsWriteLoadAndRunQuantized) {
  torch::NoGradGuard no_grad;
  at::Tensor ids = torch::randint(0, 256, {2, 64}, torch::kLong);
  at::Tensor ref = model_->Forward(ids).logits;
  struct Case {
    const char* name;
    QuantizeOptions options;
  };
  std::vector<Case> cases;
  QuantizeOptions o;
  o.method = Method::kRtn;
  o.scheme = {4, 32, true};
  cases.push_back({"rtn", o});
  o.method = Method::kGptq;
  cases.push_back({"gptq", o});
  o.gptq.act_order = true;
  cases.push_back({"gptq_act_order", o});
  o.gptq.act_order = false;
  o.method = Method::kAwq;
  o.scheme = {4, 32, false};
  cases.push_back({"awq", o});
  o.method = Method::kDynamicInt8;
  o.scheme = {8, 0, true};
  cases.push_back({"dynamic_int8", o});
  o.method = Method::kStaticInt8;
  o.smoothquant_alpha = 0.5;
  cases.push_back({"static_int8", o});
  std::map<std::string, double> errors;
  for (const Case& c : cases) {
    auto qm =
        QuantizeModel(TinyConfig(), tensors_, calibration_, c.options, nullptr);
    ASSERT_TRUE(qm.ok()) << c.name << ": " << qm.status();
    const std::string folder = dir_ + "/" + c.name;
    ASSERT_TRUE(
        WriteQuantizedFolder(*qm, DefaultFolderFormat(c.options), "", folder)
            .ok());
    {
      // hearth's dequantized weights, for tests/interop/quant_layout_check.py.
      formats::SafetensorsWriter w;
      std::vector<at::Tensor> keep;
      for (const auto& [prefix, qw] : qm->weights) {
        keep.push_back(qw.Dequantize().contiguous());
        w.Add(prefix + ".weight", formats::DType::kF32,
              keep.back().sizes().vec(), keep.back().data_ptr(),
              keep.back().numel() * 4);
      }
      ASSERT_TRUE(w.WriteFile(folder + ".dequant.safetensors").ok());
    }
    // model::LoadModel (what the worker serves) keeps the linears quantized.
    auto loaded = model::LoadModel(folder);
    ASSERT_TRUE(loaded.ok()) << c.name << ": " << loaded.status();
    EXPECT_NE((*loaded)->quantization(), "none");
    ASSERT_NE((*loaded)->linear_impl(1, "mlp.down_proj"), nullptr);
    EXPECT_EQ(
        (*loaded)->linear_impl(1, "mlp.down_proj")->Describe().substr(0, 2),
        c.options.scheme.bits == 4 ? "w4" : "w8");
    // The loaded quantized runtime computes what the fake-quantized float
    // model computes (up to fp16 storage of the unquantized tensors and, for
    // INT8 activations, their quantization).
    auto fake =
        model::ModelFromTensors(TinyConfig(), FakeQuantizedTensors(*qm));
    ASSERT_TRUE(fake.ok());
    const double err = LogitError(**loaded, ref, ids);
    errors[c.name] = err;
    if (c.options.method != Method::kDynamicInt8 &&
        c.options.method != Method::kStaticInt8) {
      EXPECT_TRUE(torch::allclose((*loaded)->Forward(ids).logits,
                                  (*fake)->Forward(ids).logits, 2e-3, 2e-3))
          << c.name;
    }
    // The paged-cache decode path (Step) agrees with the teacher-forced one.
    {
      std::vector<int64_t> prompt(ids[0].data_ptr<int64_t>(),
                                  ids[0].data_ptr<int64_t>() + 16);
      std::vector<int64_t> got = Greedy(**loaded, prompt, 8);
      std::vector<int64_t> seq = prompt;
      for (int i = 0; i < 8; ++i) {
        at::Tensor t = torch::tensor(seq, torch::kLong).unsqueeze(0);
        seq.push_back(
            (*loaded)->Forward(t).logits[0][-1].argmax().item<int64_t>());
      }
      EXPECT_EQ(got, std::vector<int64_t>(seq.begin() + 16, seq.end()))
          << c.name;
    }
    EXPECT_LT((*loaded)->LayerLinearBytes(),
              c.options.scheme.bits == 4 ? 0.2 * 4 * 7 * 2 * 128 * 256 / 1.0
                                         : 0.3 * 4 * 7 * 2 * 128 * 256);
    std::cout << c.name << " logit mse " << err << " fake "
              << LogitError(**fake, ref, ids) << " ref var "
              << ref.var().item<double>() << "\n";
  }
  EXPECT_LT(errors["gptq"], errors["rtn"]);
  EXPECT_LT(errors["dynamic_int8"], errors["rtn"]);
}

TEST_F(QuantizeModelTest, BadInputsAreInvalidArgument) {
  QuantizeOptions o;
  o.method = Method::kRtn;
  o.scheme = {3, 32, true};
  EXPECT_EQ(
      QuantizeModel(TinyConfig(), tensors_, {}, o, nullptr).status().code(),
      absl::StatusCode::kInvalidArgument);
  o.scheme = {4, 96, true};
  EXPECT_EQ(
      QuantizeModel(TinyConfig(), tensors_, {}, o, nullptr).status().code(),
      absl::StatusCode::kInvalidArgument);
  o.scheme = {4, 32, true};
  o.method = Method::kGptq;
  EXPECT_EQ(
      QuantizeModel(TinyConfig(), tensors_, {}, o, nullptr).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadCalibrationText("", "nope").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(QuantizeModelTest, CancelStopsBetweenLayers) {
  QuantizeOptions o;
  o.method = Method::kGptq;
  o.scheme = {4, 32, true};
  auto r = QuantizeModel(TinyConfig(), tensors_, calibration_, o,
                         [](double, const std::string&) { return false; });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace hearth::quantizer
