#include "common/formats/ggml_quants.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/formats/dtype.h"

namespace hearth::formats {
namespace {

constexpr int64_t kQK = 32;     // Values per Q4_0/Q4_1/Q5_x/Q8_x block.
constexpr int64_t kQK_K = 256;  // Values per K-quant super-block.
constexpr size_t kQ8_0Bytes = 2 + 32;
constexpr size_t kQ4_0Bytes = 2 + 16;

// Sizes from ggml-common.h / gguf-py constants.py GGML_QUANT_SIZES.
constexpr GgmlTypeTraits kTraits[] = {
    {GgmlType::kF32, "f32", 1, 4, true, true},
    {GgmlType::kF16, "f16", 1, 2, true, true},
    {GgmlType::kQ4_0, "q4_0", kQK, kQ4_0Bytes, true, true},
    {GgmlType::kQ4_1, "q4_1", kQK, 2 + 2 + 16, true, false},
    {GgmlType::kQ5_0, "q5_0", kQK, 2 + 4 + 16, true, false},
    {GgmlType::kQ5_1, "q5_1", kQK, 2 + 2 + 4 + 16, true, false},
    {GgmlType::kQ8_0, "q8_0", kQK, kQ8_0Bytes, true, true},
    {GgmlType::kQ8_1, "q8_1", kQK, 2 + 2 + 32, true, false},
    {GgmlType::kQ2_K, "q2_K", kQK_K, 16 + 64 + 2 + 2, true, false},
    {GgmlType::kQ3_K, "q3_K", kQK_K, 32 + 64 + 12 + 2, true, false},
    {GgmlType::kQ4_K, "q4_K", kQK_K, 2 + 2 + 12 + 128, true, false},
    {GgmlType::kQ5_K, "q5_K", kQK_K, 2 + 2 + 12 + 32 + 128, true, false},
    {GgmlType::kQ6_K, "q6_K", kQK_K, 128 + 64 + 16 + 2, true, false},
    {GgmlType::kQ8_K, "q8_K", kQK_K, 4 + 256 + 32, false, false},
    {GgmlType::kIQ2_XXS, "iq2_xxs", kQK_K, 2 + kQK_K / 4, false, false},
    {GgmlType::kIQ2_XS, "iq2_xs", kQK_K, 2 + kQK_K / 4 + kQK_K / 32, false,
     false},
    {GgmlType::kIQ3_XXS, "iq3_xxs", kQK_K, 2 + kQK_K / 4 + kQK_K / 8, false,
     false},
    {GgmlType::kIQ1_S, "iq1_s", kQK_K, 2 + kQK_K / 8 + kQK_K / 16, false,
     false},
    {GgmlType::kIQ4_NL, "iq4_nl", kQK, 2 + 16, false, false},
    {GgmlType::kIQ3_S, "iq3_s", kQK_K,
     2 + kQK_K / 4 + kQK_K / 8 + kQK_K / 32 + 4, false, false},
    {GgmlType::kIQ2_S, "iq2_s", kQK_K, 2 + kQK_K / 4 + kQK_K / 16, false,
     false},
    {GgmlType::kIQ4_XS, "iq4_xs", kQK_K, 2 + 2 + kQK_K / 2 + kQK_K / 64, false,
     false},
    {GgmlType::kI8, "i8", 1, 1, true, false},
    {GgmlType::kI16, "i16", 1, 2, true, false},
    {GgmlType::kI32, "i32", 1, 4, true, false},
    {GgmlType::kI64, "i64", 1, 8, true, false},
    {GgmlType::kF64, "f64", 1, 8, true, false},
    {GgmlType::kIQ1_M, "iq1_m", kQK_K, kQK_K / 8 + kQK_K / 16 + kQK_K / 32,
     false, false},
    {GgmlType::kBF16, "bf16", 1, 2, true, true},
    {GgmlType::kTQ1_0, "tq1_0", kQK_K, 2 + 4 * 13, false, false},
    {GgmlType::kTQ2_0, "tq2_0", kQK_K, 2 + 64, false, false},
};

// absl 20220623 builds its own string_view, which StrCat needs.
absl::string_view SV(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

float LoadHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return HalfToFloat(h);
}

void StoreHalf(float f, uint8_t* p) {
  const uint16_t h = FloatToHalf(f);
  std::memcpy(p, &h, sizeof(h));
}

// C's float -> int8 conversion is undefined out of range; on x86, where
// llama.cpp runs, cvttss2si yields 0x80000000 whose low byte is 0. Finite
// inputs never get here out of range; this only decides what NaN/Inf weights
// become.
int8_t TruncToInt8(float v) {
  if (v > -129.0f && v < 128.0f) return static_cast<int8_t>(v);
  return 0;
}

void DequantizeRowQ4_1(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK; ++i, x += 20, y += kQK) {
    const float d = LoadHalf(x);
    const float m = LoadHalf(x + 2);
    const uint8_t* qs = x + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = (qs[j] & 0x0F) * d + m;
      y[j + 16] = (qs[j] >> 4) * d + m;
    }
  }
}

void DequantizeRowQ5_0(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK; ++i, x += 22, y += kQK) {
    const float d = LoadHalf(x);
    uint32_t qh;
    std::memcpy(&qh, x + 2, sizeof(qh));
    const uint8_t* qs = x + 6;
    for (int j = 0; j < 16; ++j) {
      const uint8_t xh0 = ((qh >> j) << 4) & 0x10;
      const uint8_t xh1 = (qh >> (j + 12)) & 0x10;
      const int32_t x0 = ((qs[j] & 0x0F) | xh0) - 16;
      const int32_t x1 = ((qs[j] >> 4) | xh1) - 16;
      y[j] = x0 * d;
      y[j + 16] = x1 * d;
    }
  }
}

void DequantizeRowQ5_1(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK; ++i, x += 24, y += kQK) {
    const float d = LoadHalf(x);
    const float m = LoadHalf(x + 2);
    uint32_t qh;
    std::memcpy(&qh, x + 4, sizeof(qh));
    const uint8_t* qs = x + 8;
    for (int j = 0; j < 16; ++j) {
      const uint8_t xh0 = ((qh >> j) << 4) & 0x10;
      const uint8_t xh1 = (qh >> (j + 12)) & 0x10;
      const int32_t x0 = (qs[j] & 0x0F) | xh0;
      const int32_t x1 = (qs[j] >> 4) | xh1;
      y[j] = x0 * d + m;
      y[j + 16] = x1 * d + m;
    }
  }
}

void DequantizeRowQ8_1(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK; ++i, x += 36, y += kQK) {
    const float d = LoadHalf(x);
    const int8_t* qs = reinterpret_cast<const int8_t*>(x + 4);
    for (int j = 0; j < kQK; ++j) y[j] = qs[j] * d;
  }
}

// Q2_K block: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
void DequantizeRowQ2_K(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK_K; ++i, x += 84) {
    const uint8_t* scales = x;
    const uint8_t* q = x + 16;
    const float d = LoadHalf(x + 80);
    const float dmin = LoadHalf(x + 82);
    int is = 0;
    for (int n = 0; n < kQK_K; n += 128) {
      int shift = 0;
      for (int j = 0; j < 4; ++j) {
        uint8_t sc = scales[is++];
        float dl = d * (sc & 0xF);
        float ml = dmin * (sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l] >> shift) & 3) - ml;
        sc = scales[is++];
        dl = d * (sc & 0xF);
        ml = dmin * (sc >> 4);
        for (int l = 0; l < 16; ++l)
          *y++ = dl * ((q[l + 16] >> shift) & 3) - ml;
        shift += 2;
      }
      q += 32;
    }
  }
}

// Q3_K block: hmask[32], qs[64], scales[12] (16 packed 6-bit scales), d.
void DequantizeRowQ3_K(const uint8_t* x, float* y, int64_t k) {
  constexpr uint32_t kMask1 = 0x03030303;
  constexpr uint32_t kMask2 = 0x0f0f0f0f;
  for (int64_t i = 0; i < k / kQK_K; ++i, x += 110) {
    const uint8_t* hm = x;
    const uint8_t* q = x + 32;
    const float d_all = LoadHalf(x + 108);
    uint32_t aux[4];
    std::memcpy(aux, x + 96, 12);
    const uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kMask2) | (((tmp >> 4) & kMask1) << 4);
    aux[3] = ((aux[1] >> 4) & kMask2) | (((tmp >> 6) & kMask1) << 4);
    aux[0] = (aux[0] & kMask2) | (((tmp >> 0) & kMask1) << 4);
    aux[1] = (aux[1] & kMask2) | (((tmp >> 2) & kMask1) << 4);
    int8_t scales[16];
    std::memcpy(scales, aux, sizeof(scales));
    int is = 0;
    uint8_t m = 1;
    for (int n = 0; n < kQK_K; n += 128) {
      int shift = 0;
      for (int j = 0; j < 4; ++j) {
        float dl = d_all * (scales[is++] - 32);
        for (int l = 0; l < 16; ++l) {
          *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
        }
        dl = d_all * (scales[is++] - 32);
        for (int l = 0; l < 16; ++l) {
          *y++ = dl * (((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
        }
        shift += 2;
        m <<= 1;
      }
      q += 32;
    }
  }
}

// The 6-bit scale/min pairs of Q4_K and Q5_K (get_scale_min_k4 in ggml).
void ScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K block: d, dmin, scales[12], qs[128].
void DequantizeRowQ4_K(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK_K; ++i, x += 144) {
    const float d = LoadHalf(x);
    const float dmin = LoadHalf(x + 2);
    const uint8_t* scales = x + 4;
    const uint8_t* q = x + 16;
    int is = 0;
    for (int j = 0; j < kQK_K; j += 64) {
      uint8_t sc, m;
      ScaleMinK4(is + 0, scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      ScaleMinK4(is + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
      q += 32;
      is += 2;
    }
  }
}

// Q5_K block: d, dmin, scales[12], qh[32], qs[128].
void DequantizeRowQ5_K(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK_K; ++i, x += 176) {
    const float d = LoadHalf(x);
    const float dmin = LoadHalf(x + 2);
    const uint8_t* scales = x + 4;
    const uint8_t* qh = x + 16;
    const uint8_t* ql = x + 48;
    int is = 0;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < kQK_K; j += 64) {
      uint8_t sc, m;
      ScaleMinK4(is + 0, scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      ScaleMinK4(is + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) {
        *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
      }
      ql += 32;
      is += 2;
      u1 <<= 2;
      u2 <<= 2;
    }
  }
}

// Q6_K block: ql[128], qh[64], scales int8[16], d.
void DequantizeRowQ6_K(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK_K; ++i, x += 210) {
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
    const float d = LoadHalf(x + 208);
    for (int n = 0; n < kQK_K; n += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

template <typename T>
void WidenRow(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) {
    T v;
    std::memcpy(&v, x + i * sizeof(T), sizeof(T));
    y[i] = static_cast<float>(v);
  }
}

}  // namespace

const GgmlTypeTraits* FindGgmlTypeTraits(uint32_t id) {
  for (const GgmlTypeTraits& t : kTraits) {
    if (static_cast<uint32_t>(t.type) == id) return &t;
  }
  return nullptr;
}

const GgmlTypeTraits& GetGgmlTypeTraits(GgmlType type) {
  const GgmlTypeTraits* t = FindGgmlTypeTraits(static_cast<uint32_t>(type));
  // Only a value cast from an unchecked integer misses; answer F32 rather than
  // crash, callers that take ids from files use FindGgmlTypeTraits.
  return t != nullptr ? *t : kTraits[0];
}

std::string_view GgmlTypeName(GgmlType type) {
  return GetGgmlTypeTraits(type).name;
}

size_t GgmlRowSize(GgmlType type, int64_t n) {
  const GgmlTypeTraits& t = GetGgmlTypeTraits(type);
  return t.type_size * static_cast<size_t>(n / t.block_size);
}

bool RowFitsBlocks(GgmlType type, int64_t n) {
  return n >= 0 && n % GetGgmlTypeTraits(type).block_size == 0;
}

void QuantizeRowQ8_0(const float* x, uint8_t* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK; ++i, x += kQK, y += kQ8_0Bytes) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      const float v = std::fabs(x[j]);
      amax =
          amax > v ? amax : v;  // ggml's MAX(amax, v), NaN behaviour included.
    }
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    StoreHalf(d, y);
    for (int j = 0; j < kQK; ++j) {
      y[2 + j] = static_cast<uint8_t>(TruncToInt8(std::round(x[j] * id)));
    }
  }
}

void QuantizeRowQ4_0(const float* x, uint8_t* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK; ++i, x += kQK, y += kQ4_0Bytes) {
    // The signed value of largest magnitude, first one on ties, so that the
    // extreme maps exactly to -8 and the full [-8, 7] range is used.
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    StoreHalf(d, y);
    for (int j = 0; j < kQK / 2; ++j) {
      // Two separately rounded float operations, as in llama.cpp's x86 builds
      // and gguf-py: ggml-base is compiled without FMA there, and this file is
      // compiled with -ffp-contract=off so that no compiler fuses them either
      // (a fused x*id + 8.5f changes about 1 value in 4 million). The int8 cast
      // truncates, and the argument is >= 0.
      const float x0 = x[j] * id;
      const float x1 = x[j + kQK / 2] * id;
      const int xi0 = std::min(15, static_cast<int>(TruncToInt8(x0 + 8.5f)));
      const int xi1 = std::min(15, static_cast<int>(TruncToInt8(x1 + 8.5f)));
      y[2 + j] = static_cast<uint8_t>((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
    }
  }
}

void DequantizeRowQ8_0(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK; ++i, x += kQ8_0Bytes, y += kQK) {
    const float d = LoadHalf(x);
    const int8_t* qs = reinterpret_cast<const int8_t*>(x + 2);
    for (int j = 0; j < kQK; ++j) y[j] = qs[j] * d;
  }
}

void DequantizeRowQ4_0(const uint8_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / kQK; ++i, x += kQ4_0Bytes, y += kQK) {
    const float d = LoadHalf(x);
    const uint8_t* qs = x + 2;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = ((qs[j] & 0x0F) - 8) * d;
      y[j + kQK / 2] = ((qs[j] >> 4) - 8) * d;
    }
  }
}

absl::Status QuantizeRow(GgmlType type, const float* src, int64_t n,
                         uint8_t* dst) {
  if (!RowFitsBlocks(type, n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("row of ", n, " values is not a multiple of the ",
                     SV(GgmlTypeName(type)), " block size ",
                     GetGgmlTypeTraits(type).block_size));
  }
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) StoreHalf(src[i], dst + 2 * i);
      return absl::OkStatus();
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t b = FloatToBFloat16(src[i]);
        std::memcpy(dst + 2 * i, &b, sizeof(b));
      }
      return absl::OkStatus();
    case GgmlType::kQ8_0:
      QuantizeRowQ8_0(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ4_0:
      QuantizeRowQ4_0(src, dst, n);
      return absl::OkStatus();
    default:
      return absl::UnimplementedError(absl::StrCat(
          "quantizing to ", SV(GgmlTypeName(type)), " is not supported"));
  }
}

absl::Status DequantizeRow(GgmlType type, const uint8_t* src, int64_t n,
                           float* dst) {
  if (!RowFitsBlocks(type, n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("row of ", n, " values is not a multiple of the ",
                     SV(GgmlTypeName(type)), " block size ",
                     GetGgmlTypeTraits(type).block_size));
  }
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = LoadHalf(src + 2 * i);
      return absl::OkStatus();
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, sizeof(b));
        dst[i] = BFloat16ToFloat(b);
      }
      return absl::OkStatus();
    case GgmlType::kF64:
      WidenRow<double>(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kI8:
      WidenRow<int8_t>(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kI16:
      WidenRow<int16_t>(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kI32:
      WidenRow<int32_t>(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kI64:
      WidenRow<int64_t>(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ4_0:
      DequantizeRowQ4_0(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ4_1:
      DequantizeRowQ4_1(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ5_0:
      DequantizeRowQ5_0(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ5_1:
      DequantizeRowQ5_1(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ8_0:
      DequantizeRowQ8_0(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ8_1:
      DequantizeRowQ8_1(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ2_K:
      DequantizeRowQ2_K(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ3_K:
      DequantizeRowQ3_K(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ4_K:
      DequantizeRowQ4_K(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ5_K:
      DequantizeRowQ5_K(src, dst, n);
      return absl::OkStatus();
    case GgmlType::kQ6_K:
      DequantizeRowQ6_K(src, dst, n);
      return absl::OkStatus();
    default:
      return absl::UnimplementedError(absl::StrCat(
          "dequantizing ", SV(GgmlTypeName(type)), " is not supported"));
  }
}

}  // namespace hearth::formats
