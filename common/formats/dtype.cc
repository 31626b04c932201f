#include "common/formats/dtype.h"

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace hearth::formats {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kF64, "F64", 8},
    {DType::kI8, "I8", 1},     {DType::kI16, "I16", 2},
    {DType::kI32, "I32", 4},   {DType::kI64, "I64", 8},
    {DType::kU8, "U8", 1},     {DType::kBool, "BOOL", 1},
};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  // Only reachable with a value cast from an out-of-range integer.
  return kDTypes[0];
}

uint32_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

float BitsToFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

}  // namespace

size_t DTypeSize(DType dtype) { return Info(dtype).size; }

std::string_view SafetensorsName(DType dtype) { return Info(dtype).name; }

absl::StatusOr<DType> DTypeFromSafetensorsName(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported safetensors dtype \"", std::string(name),
      "\" (supported: F32, F16, BF16, F64, I8, I16, I32, I64, U8, BOOL)"));
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) {  // Inf or NaN; keep the payload so NaNs stay NaNs.
    return BitsToFloat(sign | 0x7f800000u | (mant << 13));
  }
  if (exp != 0) {
    return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
  }
  if (mant == 0) return BitsToFloat(sign);
  // Subnormal half: every one is a normal float, so shift the leading one up.
  int e = -1;
  do {
    ++e;
    mant <<= 1;
  } while ((mant & 0x400u) == 0);
  return BitsToFloat(sign | static_cast<uint32_t>(112 - e) << 23 |
                     ((mant & 0x3ffu) << 13));
}

uint16_t FloatToHalf(float f) {
  const uint32_t bits = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // Inf or NaN.
    if (abs == 0x7f800000u) return sign | 0x7c00u;
    // Quiet NaN; keep the top payload bits when they survive.
    return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);
  }
  // 65520 = 65504 + half an ulp: everything from there rounds to infinity.
  if (abs >= 0x477ff000u) return sign | 0x7c00u;
  const int32_t exp = static_cast<int32_t>(abs >> 23) - 127;
  if (exp >= -14) {
    // Normal half. Adding (0x0fff + lsb) to the 13 dropped bits rounds to
    // nearest even; a carry out of the mantissa correctly bumps the exponent.
    const uint32_t rebased = abs - (112u << 23);
    const uint32_t lsb = (rebased >> 13) & 1u;
    return sign | static_cast<uint16_t>((rebased + 0x0fffu + lsb) >> 13);
  }
  if (exp < -25) return sign;  // Below half the smallest subnormal: zero.
  // Subnormal half: value = m * 2^-24 with the implicit one made explicit.
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  const int shift = -exp - 1;  // 14..24: position of 2^-24 within mant.
  const uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  const uint32_t rounded =
      q + ((rem > halfway || (rem == halfway && (q & 1u))) ? 1 : 0);
  return sign |
         static_cast<uint16_t>(rounded);  // 0x400 becomes the smallest normal.
}

float BFloat16ToFloat(uint16_t b) {
  return BitsToFloat(static_cast<uint32_t>(b) << 16);
}

uint16_t FloatToBFloat16(float f) {
  const uint32_t bits = FloatBits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // Rounding could carry a NaN payload into infinity; force a quiet NaN.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7fffu + lsb) >> 16);
}

}  // namespace hearth::formats
