#include "common/quant/quant_core.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace hearth::quant {
namespace {

TEST(QuantCoreTest, ValidateScheme) {
  EXPECT_TRUE(ValidateScheme({4, 128, true}, 256).ok());
  EXPECT_EQ(ValidateScheme({3, 128, true}, 256).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateScheme({4, 100, true}, 256).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateScheme({4, 128, true}, 192).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QuantCoreTest, RtnErrorIsWithinHalfAStep) {
  torch::manual_seed(0);
  at::Tensor w = torch::randn({16, 128});
  for (bool sym : {true, false}) {
    for (int bits : {4, 8}) {
      QuantizedWeight q = RtnQuantize(w, {bits, 32, sym}, RangeRule::kGptq);
      at::Tensor err = (q.Dequantize() - w).abs();
      at::Tensor step = q.scales.repeat_interleave(32, 1);
      // GPTQ's symmetric grid is [-2^(b-1), 2^(b-1) - 1] steps over
      // [-absmax, absmax], so the positive extreme may be a full step off.
      EXPECT_TRUE((err <= step * (sym ? 1.0 : 0.5) + 1e-6).all().item<bool>())
          << "bits " << bits << " sym " << sym;
    }
  }
  // Symmetric 4-bit uses zero 8 (stored 7 in GPTQ v1).
  QuantizedWeight q = RtnQuantize(w, {4, 0, true}, RangeRule::kGptq);
  EXPECT_TRUE((q.zeros == 8).all().item<bool>());
}

TEST(QuantCoreTest, GptqPackingByHand) {
  // One output row of 8 inputs with codes 0..7 and 8 rows for qzeros.
  QuantizedWeight q;
  q.scheme = {4, 0, true};
  q.codes = torch::zeros({8, 8}, torch::kByte);
  for (int c = 0; c < 8; ++c) q.codes.index_put_({0, c}, c);
  q.scales = torch::ones({8, 1});
  q.zeros = torch::full({8, 1}, 8, torch::kInt);
  q.g_idx = torch::zeros({8}, torch::kInt);
  auto t = PackGptq(q);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->qweight.sizes(), (std::vector<int64_t>{1, 8}));
  // value k in bits 4k..4k+3: 0x76543210.
  EXPECT_EQ(t->qweight[0][0].item<int32_t>(), 0x76543210);
  EXPECT_EQ(t->qweight[0][1].item<int32_t>(), 0);
  ASSERT_EQ(t->qzeros.sizes(), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(static_cast<uint32_t>(t->qzeros[0][0].item<int32_t>()),
            0x77777777u);
  auto back = UnpackGptq(*t, 4, -1, true);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->codes.equal(q.codes));
  EXPECT_TRUE(back->zeros.equal(q.zeros));
}

TEST(QuantCoreTest, AwqPackingByHand) {
  // Input row 0: output columns 0..7 have codes 0..7. AWQ order puts column
  // [0,2,4,6,1,3,5,7][i] in nibble i: 0x75316420.
  QuantizedWeight q;
  q.scheme = {4, 32, false};
  q.codes = torch::zeros({8, 32}, torch::kByte);
  for (int r = 0; r < 8; ++r) q.codes.index_put_({r, 0}, r);
  q.scales = torch::ones({8, 1});
  q.zeros = torch::arange(8, torch::kInt).view({8, 1});
  q.g_idx = torch::zeros({32}, torch::kInt);
  auto t = PackAwq(q);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->qweight.sizes(), (std::vector<int64_t>{32, 1}));
  EXPECT_EQ(t->qweight[0][0].item<int32_t>(), 0x75316420);
  EXPECT_EQ(t->qzeros[0][0].item<int32_t>(), 0x75316420);  // no -1 offset
  auto back = UnpackAwq(*t, 32);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->codes.equal(q.codes));
  EXPECT_TRUE(back->zeros.equal(q.zeros));
}

TEST(QuantCoreTest, RoundTripsAreExact) {
  torch::manual_seed(1);
  at::Tensor w = torch::randn({64, 256});
  for (int bits : {4, 8}) {
    QuantizedWeight q = RtnQuantize(w, {bits, 64, false}, RangeRule::kGptq);
    auto t = PackGptq(q);
    ASSERT_TRUE(t.ok());
    auto back = UnpackGptq(*t, bits, 64, false);
    ASSERT_TRUE(back.ok());
    EXPECT_TRUE(back->Dequantize().equal(q.Dequantize()));
  }
  QuantizedWeight a = RtnQuantize(w, {4, 64, false}, RangeRule::kAwq);
  a.zeros.clamp_min_(0);
  auto t = PackAwq(a);
  ASSERT_TRUE(t.ok());
  auto back = UnpackAwq(*t, 64);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->Dequantize().equal(a.Dequantize()));
}

TEST(QuantCoreTest, ScalesAreHalfPrecision) {
  at::Tensor w = torch::randn({8, 64});
  QuantizedWeight q = RtnQuantize(w, {4, 32, true}, RangeRule::kGptq);
  EXPECT_TRUE(q.scales.to(at::kHalf).to(at::kFloat).equal(q.scales));
}

}  // namespace
}  // namespace hearth::quant
