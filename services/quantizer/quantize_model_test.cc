#include "services/quantizer/quantize_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "common/formats/safetensors.h"
#include "common/model/model_loader.h"
#include "services/quantizer/calibration.h"
#include "services/quantizer/evaluation.h"
#include "services/quantizer/quantized_llama.h"

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

TEST_F(QuantizeModelTest, FloatRuntimeMatchesLlamaForCausalLM) {
  auto q = QuantizedLlama::FromFloatTensors(TinyConfig(), tensors_);
  ASSERT_TRUE(q.ok()) << q.status();
  at::Tensor ids = calibration_.narrow(0, 0, 2);
  torch::NoGradGuard no_grad;
  at::Tensor ref = model_->Forward(ids).logits;
  at::Tensor got = (*q)->Forward(ids);
  EXPECT_TRUE(torch::allclose(got, ref, 1e-4, 1e-4))
      << (got - ref).abs().max().item<float>();
  // Incremental decoding agrees with the teacher-forced forward.
  DecodeCache cache = (*q)->NewCache(2, 64);
  (*q)->Step(cache, ids.narrow(1, 0, 40));
  at::Tensor last;
  for (int t = 40; t < 64; ++t) last = (*q)->Step(cache, ids.narrow(1, t, 1));
  EXPECT_TRUE(torch::allclose(last, ref.select(1, 63), 1e-4, 1e-4));
}

double LogitError(const QuantizedLlama& q, const at::Tensor& ref,
                  const at::Tensor& ids) {
  return (q.Forward(ids) - ref).pow(2).mean().item<double>();
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
    auto loaded = QuantizedLlama::Load(folder);
    ASSERT_TRUE(loaded.ok()) << c.name << ": " << loaded.status();
    EXPECT_NE((*loaded)->Describe(), "f32");
    // The loaded quantized runtime computes what the fake-quantized float
    // model computes (up to fp16 storage of the unquantized tensors and, for
    // INT8 activations, their quantization).
    auto fake = QuantizedLlama::FromFloatTensors(TinyConfig(),
                                                 FakeQuantizedTensors(*qm));
    ASSERT_TRUE(fake.ok());
    const double err = LogitError(**loaded, ref, ids);
    errors[c.name] = err;
    if (c.options.method != Method::kDynamicInt8 &&
        c.options.method != Method::kStaticInt8) {
      EXPECT_TRUE(torch::allclose((*loaded)->Forward(ids),
                                  (*fake)->Forward(ids), 2e-3, 2e-3))
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
