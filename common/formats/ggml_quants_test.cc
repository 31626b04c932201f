#include "common/formats/ggml_quants.h"

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace hearth::formats {
namespace {

std::string Hex(const std::vector<uint8_t>& bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

std::string Repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST(GgmlTypes, IdsAndSizesMatchLlamaCpp) {
  EXPECT_EQ(static_cast<uint32_t>(GgmlType::kQ4_0), 2u);
  EXPECT_EQ(static_cast<uint32_t>(GgmlType::kQ8_0), 8u);
  EXPECT_EQ(static_cast<uint32_t>(GgmlType::kQ4_K), 12u);
  EXPECT_EQ(static_cast<uint32_t>(GgmlType::kQ6_K), 14u);
  EXPECT_EQ(static_cast<uint32_t>(GgmlType::kBF16), 30u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kF32, 64), 256u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kF16, 64), 128u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kQ8_0, 64), 68u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kQ4_0, 64), 36u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kQ4_K, 512), 288u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kQ6_K, 256), 210u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kQ2_K, 256), 84u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kQ3_K, 256), 110u);
  EXPECT_EQ(GgmlRowSize(GgmlType::kQ5_K, 256), 176u);
  EXPECT_TRUE(RowFitsBlocks(GgmlType::kQ4_0, 96));
  EXPECT_FALSE(RowFitsBlocks(GgmlType::kQ4_0, 48));
  EXPECT_EQ(FindGgmlTypeTraits(4), nullptr);   // Q4_2, removed.
  EXPECT_EQ(FindGgmlTypeTraits(31), nullptr);  // Q4_0_4_4, removed from files.
  EXPECT_EQ(FindGgmlTypeTraits(1000), nullptr);
  EXPECT_EQ(GgmlTypeName(GgmlType::kQ6_K), "q6_K");
}

// Expected bytes below were worked out by hand from quantize_row_q8_0_ref and
// agree with gguf-py's bit-exact port (gguf.quants.quantize).
TEST(Q8_0, ExactScaleAndRoundHalfAwayFromZero) {
  // amax = 127, so d = 1 (fp16 0x3c00) and id = 1: qs = roundf(x).
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = -127.0f;
  x[2] = 0.5f;    // roundf -> 1 (not banker's 0)
  x[3] = -0.5f;   // -> -1
  x[4] = 2.5f;    // -> 3
  x[5] = -2.5f;   // -> -3
  x[6] = 1.49f;   // -> 1
  x[7] = 100.0f;  // -> 100 = 0x64
  std::vector<uint8_t> y(34);
  QuantizeRowQ8_0(x.data(), y.data(), 32);
  EXPECT_EQ(Hex(y),
            "003c"  // d = 1.0
            "7f81"
            "01ff"
            "03fd"
            "0164"  // 127 -127 1 -1 3 -3 1 100
            "000000000000000000000000"
            "000000000000000000000000");
}

TEST(Q8_0, ScaleRoundsToHalfAndTiesRoundAway) {
  // x = j - 16: amax = 16, d = 16/127 = 0.1259843 -> fp16 0x3008 (0.12597656);
  // id = 1/d = 7.9375 in float, so x = +-8 hits the tie +-63.5 -> +-64.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);
  std::vector<uint8_t> y(34);
  QuantizeRowQ8_0(x.data(), y.data(), 32);
  EXPECT_EQ(Hex(y),
            "0830"
            "81899199a1a9b1b9c0c8d0d8e0e8f0f8"
            "000810182028303840474f575f676f77");
}

TEST(Q8_0, ZeroBlockHasZeroScale) {
  std::vector<float> x(64, 0.0f);
  for (int j = 32; j < 64; ++j) x[j] = 127.0f * (j % 2 ? 1 : -1);
  std::vector<uint8_t> y(68);
  QuantizeRowQ8_0(x.data(), y.data(), 64);
  EXPECT_EQ(Hex(std::vector<uint8_t>(y.begin(), y.begin() + 34)),
            std::string(68, '0'));
  EXPECT_EQ(y[34], 0x00);
  EXPECT_EQ(y[35], 0x3c);
  EXPECT_EQ(y[36], 0x81);  // -127
  EXPECT_EQ(y[37], 0x7f);
}

TEST(Q4_0, NegativeExtremeGivesPositiveScale) {
  // max = -8 (largest |x|, signed), d = -8 / -8 = 1 (0x3c00), id = 1,
  // q = min(15, trunc(x + 8.5)).
  std::vector<float> x(32, 0.0f);  // 0 -> 8
  x[0] = -8.0f;                    // 0
  x[1] = 7.0f;                     // 15
  x[2] = 7.9f;                     // 16.4 -> 16 -> clamped 15
  x[3] = -0.5f;                    // 8.0 -> 8
  x[4] = 0.49f;                    // 8.99 -> 8
  x[5] = 0.5f;                     // 9
  x[6] = -7.6f;                    // 0.9 -> 0
  x[16] = 1.0f;                    // high nibble of byte 0: 9
  x[17] = -1.0f;                   // high nibble of byte 1: 7
  x[31] = -7.0f;                   // high nibble of byte 15: 1
  std::vector<uint8_t> y(18);
  QuantizeRowQ4_0(x.data(), y.data(), 32);
  EXPECT_EQ(Hex(y),
            "003c"
            "90"  // lo 0, hi 9
            "7f"  // lo 15, hi 7
            "8f"
            "88"
            "88"
            "89"
            "80"
            "88"
            "88"
            "88"
            "88"
            "88"
            "88"
            "88"
            "88"
            "18");  // lo 8, hi 1
}

TEST(Q4_0, PositiveExtremeAndFirstMaximumWins) {
  // |8| == |-8|: the first one (8) is "max", so d = 8 / -8 = -1 (0xbc00),
  // id = -1: q = min(15, trunc(-x + 8.5)); x = 8 -> 0, x = -8 -> 16.5 -> 15.
  std::vector<float> x(32, 0.0f);
  x[0] = 8.0f;
  x[1] = -8.0f;
  x[2] = 3.0f;    // 5.5 -> 5
  x[16] = -3.0f;  // 11.5 -> 11, high nibble of byte 0
  std::vector<uint8_t> y(18);
  QuantizeRowQ4_0(x.data(), y.data(), 32);
  EXPECT_EQ(Hex(y),
            "00bc"
            "b0"
            "8f"
            "85" +
                Repeat("88", 13));
}

TEST(Q4_0, ScaleIsRoundedToHalf) {
  // max = -4 at x[0] ties |4| at x[1]; d = 0.5 (0x3800), id = 2.
  std::vector<float> x(32, 0.0f);
  x[0] = -4.0f;  // 0
  x[1] = 4.0f;   // 16.5 -> 15
  x[2] = 1.3f;   // 11.1 -> 11
  std::vector<uint8_t> y(18);
  QuantizeRowQ4_0(x.data(), y.data(), 32);
  EXPECT_EQ(Hex(y),
            "0038"
            "80"
            "8f"
            "8b" +
                Repeat("88", 13));
}

TEST(Q4_0, AllZeroBlock) {
  std::vector<float> x(32, 0.0f);
  std::vector<uint8_t> y(18);
  QuantizeRowQ4_0(x.data(), y.data(), 32);
  // max stays 0.0f, so d = 0.0f / -8 = -0.0f (fp16 0x8000, as llama.cpp writes
  // it), id = 0 and every value becomes trunc(8.5) = 8.
  EXPECT_EQ(Hex(y), "0080" + Repeat("88", 16));
}

TEST(Q4_0, ProductAndOffsetAreRoundedSeparately) {
  // A real weight block where x[0] * id + 8.5 is 10.99999942 exactly: rounding
  // the product to float first (llama.cpp's x86 build, gguf-py) gives 11.0 and
  // nibble 11; a fused multiply-add would give 10.999999 and nibble 10.
  const uint32_t bits[32] = {
      0x3d9b7748, 0xbd841791, 0xbd66f03a, 0xbe32471b, 0xbddeec11, 0x3cf5379c,
      0x3d431bed, 0xbd83262f, 0xbd6c054e, 0x3d934e55, 0xbc5454f8, 0xbe51a3e0,
      0xbd6a0d44, 0xbdcc2742, 0xbd3a20a2, 0x3e18309e, 0x3e0c7c9f, 0x3d8b0852,
      0xbb9759d1, 0x3c33df84, 0x3d6e5c41, 0xbc33cc0e, 0xbd5a1132, 0x3b090a33,
      0x3de01668, 0x3c9930c3, 0xbe78bede, 0x3db5ec8e, 0xba2b943c, 0xbd5deb1c,
      0xbcac3a4f, 0xbb471a72};
  float x[32];
  std::memcpy(x, bits, sizeof(x));
  std::vector<uint8_t> y(18);
  QuantizeRowQ4_0(x, y.data(), 32);
  EXPECT_EQ(Hex(y),
            "c627dba68682a4896a86c69a08b18665778d");  // gguf-py's bytes.
}

TEST(Quantize, RoundTripErrorWithinHalfStep) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  const int64_t n = 32 * 64;
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0}) {
    std::vector<uint8_t> q(GgmlRowSize(type, n));
    ASSERT_TRUE(QuantizeRow(type, x.data(), n, q.data()).ok());
    std::vector<float> y(n);
    ASSERT_TRUE(DequantizeRow(type, q.data(), n, y.data()).ok());
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0;
      for (int j = 0; j < 32; ++j)
        amax = std::max(amax, std::fabs(x[b * 32 + j]));
      // One quantization step is amax/127 (Q8_0) or amax/8 (Q4_0). Rounding
      // costs half a step, except that Q4_0 maps the extreme to -8 and so
      // clamps values of the opposite sign near amax from +8 to +7: a whole
      // step. The fp16 rounding of the scale adds up to 2^-11 relative.
      const float bound =
          type == GgmlType::kQ8_0 ? 0.5f * amax / 127 : amax / 8;
      for (int j = 0; j < 32; ++j) {
        EXPECT_NEAR(y[b * 32 + j], x[b * 32 + j], bound + 1e-3f * amax)
            << GgmlTypeName(type) << " block " << b << " value " << j;
      }
    }
  }
}

TEST(Quantize, F16AndBF16AndF32) {
  const std::vector<float> x = {1.0f, -2.0f, 0.333333f, 65504.0f};
  std::vector<uint8_t> f16(8), bf16(8), f32(16);
  ASSERT_TRUE(QuantizeRow(GgmlType::kF16, x.data(), 4, f16.data()).ok());
  ASSERT_TRUE(QuantizeRow(GgmlType::kBF16, x.data(), 4, bf16.data()).ok());
  ASSERT_TRUE(QuantizeRow(GgmlType::kF32, x.data(), 4, f32.data()).ok());
  // Spelled out: 1.0 = 3c00, -2.0 = c000, 1/3 = 3555, 65504 = 7bff
  // (little-endian).
  EXPECT_EQ(Hex(f16), "003c00c05535ff7b");
  EXPECT_EQ(Hex(bf16), "803f00c0ab3e8047");
  std::vector<float> back(4);
  ASSERT_TRUE(DequantizeRow(GgmlType::kF32, f32.data(), 4, back.data()).ok());
  EXPECT_EQ(back, x);
}

TEST(Quantize, RejectsPartialBlocksAndUnsupportedTypes) {
  std::vector<float> x(48, 1.0f);
  std::vector<uint8_t> y(1024);
  EXPECT_EQ(QuantizeRow(GgmlType::kQ8_0, x.data(), 48, y.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRow(GgmlType::kQ4_K, x.data(), 256, y.data()).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(DequantizeRow(GgmlType::kIQ2_XXS, y.data(), 256, x.data()).code(),
            absl::StatusCode::kUnimplemented);
}

TEST(Quantize, NonFiniteInputsDoNotCrash) {
  std::vector<float> x(32, 1.0f);
  x[3] = std::nanf("");
  x[4] = INFINITY;
  std::vector<uint8_t> y(34);
  QuantizeRowQ8_0(x.data(), y.data(), 32);
  QuantizeRowQ4_0(x.data(), y.data(), 32);
}

// Hand-built K-quant blocks, decoded with the formulas of §1.3 of the
// reference.
TEST(Dequantize, Q4_K) {
  std::vector<uint8_t> b(144, 0);
  b[0] = 0x00;
  b[1] = 0x3c;  // d = 1
  b[2] = 0x00;
  b[3] = 0x38;  // dmin = 0.5
  // Sub-block 0: scale 2, min 3 (j < 4: scales[0], scales[4]).
  b[4 + 0] = 2;
  b[4 + 4] = 3;
  // Sub-block 5: scale 0x15 = 21, min 0x22 = 34 (j >= 4):
  //   scales[9] = (21 & 15) | ((34 & 15) << 4) = 0x25;
  //   scales[1] |= (21 >> 4) << 6; scales[5] |= (34 >> 4) << 6.
  b[4 + 9] = 0x25;
  b[4 + 1] |= 1 << 6;
  b[4 + 5] |= 2 << 6;
  b[16 + 0] = 0x07;  // value 0: low nibble 7 of chunk 0 (sub-block 0)
  b[16 + 64 + 3] =
      0x90;  // chunk 2, byte 3: high nibble 9 -> sub-block 5, value 160+32+3
  std::vector<float> y(256);
  ASSERT_TRUE(DequantizeRow(GgmlType::kQ4_K, b.data(), 256, y.data()).ok());
  EXPECT_FLOAT_EQ(y[0], 1.0f * 2 * 7 - 0.5f * 3);
  EXPECT_FLOAT_EQ(y[1], -1.5f);
  EXPECT_FLOAT_EQ(y[128 + 32 + 3], 1.0f * 21 * 9 - 0.5f * 34);
  EXPECT_FLOAT_EQ(y[128 + 32 + 4], -17.0f);
}

TEST(Dequantize, Q6_K) {
  std::vector<uint8_t> b(210, 0);
  b[208] = 0x00;
  b[209] = 0x40;                          // d = 2
  b[192 + 0] = 3;                         // scale of values 0..15
  b[192 + 6] = static_cast<uint8_t>(-1);  // scale of values 96..111
  b[0] = 0x05;  // ql[0] low: value 0 low bits 5; high nibble -> value 64
  b[128] =
      0x02 | (0x03 << 6);  // qh[0]: value 0 high bits 2, value 96 high bits 3
  // value 0: q = 5 | (2 << 4) = 37 -> 37 - 32 = 5 -> 2 * 3 * 5 = 30.
  // value 96: ql[32] high nibble 0 | (3 << 4) = 48 -> 16 -> 2 * -1 * 16 = -32.
  std::vector<float> y(256);
  ASSERT_TRUE(DequantizeRow(GgmlType::kQ6_K, b.data(), 256, y.data()).ok());
  EXPECT_FLOAT_EQ(y[0], 30.0f);
  EXPECT_FLOAT_EQ(y[96], -32.0f);
  EXPECT_FLOAT_EQ(y[1], 2.0f * 3 * -32);
}

TEST(Dequantize, Q4_1AndQ5_0) {
  std::vector<uint8_t> q41(20, 0);
  q41[1] = 0x3c;  // d = 1
  q41[3] = 0xc0;  // m = -2
  q41[4] = 0x3a;  // value 0: 10, value 16: 3
  std::vector<float> y(32);
  ASSERT_TRUE(DequantizeRow(GgmlType::kQ4_1, q41.data(), 32, y.data()).ok());
  EXPECT_FLOAT_EQ(y[0], 8.0f);
  EXPECT_FLOAT_EQ(y[16], 1.0f);
  EXPECT_FLOAT_EQ(y[1], -2.0f);

  std::vector<uint8_t> q50(22, 0);
  q50[1] = 0x3c;  // d = 1
  q50[2] = 0x01;  // qh bit 0: value 0 gets +16
  q50[5] = 0x80;  // qh bit 31: value 31 gets +16
  q50[6] = 0x03;  // value 0 low nibble 3
  ASSERT_TRUE(DequantizeRow(GgmlType::kQ5_0, q50.data(), 32, y.data()).ok());
  EXPECT_FLOAT_EQ(y[0], 3.0f);    // (3 | 16) - 16
  EXPECT_FLOAT_EQ(y[1], -16.0f);  // 0 - 16
  EXPECT_FLOAT_EQ(y[31], 0.0f);   // (0 | 16) - 16
}

}  // namespace
}  // namespace hearth::formats
