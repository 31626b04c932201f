#include "common/quant/quantized_linear.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/torch.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/cpu_kernels.h"

namespace hearth::quant {
namespace {

bool HasAvx2() {
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// Expands one row of codes into floats: w[k] = code[k] * scale[g] + offset[g].
void DequantRowScalar(const uint8_t* row, int bits, int64_t in, int64_t gs,
                      const float* scale, const float* offset, float* out) {
  for (int64_t k = 0; k < in; ++k) {
    int code;
    if (bits == 8) {
      code = row[k];
    } else {
      const uint8_t b = row[k / 2];
      code = (k & 1) ? (b >> 4) : (b & 0xF);
    }
    const int64_t g = k / gs;
    out[k] = static_cast<float>(code) * scale[g] + offset[g];
  }
}

float DotScalar(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

__attribute__((target("avx2,fma"))) void DequantRowAvx2(
    const uint8_t* row, int bits, int64_t in, int64_t gs, const float* scale,
    const float* offset, float* out) {
  // Groups are multiples of 32 columns (checked at Create), so each 32-wide
  // chunk has one (scale, offset).
  for (int64_t k = 0; k < in; k += 32) {
    const int64_t g = k / gs;
    const __m256 s = _mm256_set1_ps(scale[g]);
    const __m256 o = _mm256_set1_ps(offset[g]);
    __m128i lo, hi;  // 32 codes as bytes, in column order
    if (bits == 8) {
      lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
      hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16));
    } else {
      const __m128i b =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2));
      const __m128i mask = _mm_set1_epi8(0x0F);
      const __m128i l = _mm_and_si128(b, mask);
      const __m128i h = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
      lo = _mm_unpacklo_epi8(l, h);  // columns k .. k+15
      hi = _mm_unpackhi_epi8(l, h);  // columns k+16 .. k+31
    }
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi,
                              _mm_srli_si128(hi, 8)};
    for (int p = 0; p < 4; ++p) {
      const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[p]));
      _mm256_storeu_ps(out + k + 8 * p, _mm256_fmadd_ps(v, s, o));
    }
  }
}

// Dot products of one activation row with 4 expanded weight rows at once:
// each load of x feeds 4 FMAs, and 8 independent accumulators hide the FMA
// latency. n is a multiple of 32 (checked at Create).
__attribute__((target("avx2,fma"))) void Dot4Avx2(const float* x,
                                                  const float* const* w,
                                                  int64_t n, float* out) {
  __m256 acc[4][2];
  for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k);
    const __m256 x1 = _mm256_loadu_ps(x + k + 8);
    for (int r = 0; r < 4; ++r) {
      acc[r][0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w[r] + k), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(w[r] + k + 8), acc[r][1]);
    }
  }
  for (int r = 0; r < 4; ++r) {
    const __m256 a = _mm256_add_ps(acc[r][0], acc[r][1]);
    __m128 v =
        _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    v = _mm_hadd_ps(v, v);
    v = _mm_hadd_ps(v, v);
    out[r] = _mm_cvtss_f32(v);
  }
}

// Quantize-dequantize activation rows to int8 (per row or with one scale).
at::Tensor QuantizeActivations(const at::Tensor& x, ActivationMode mode,
                               double input_scale) {
  if (mode == ActivationMode::kNone) return x;
  at::Tensor scale;
  if (mode == ActivationMode::kDynamic) {
    scale = std::get<0>(x.abs().max(1, true)).div_(127.0).clamp_min_(1e-12);
  } else {
    scale = torch::full({1, 1}, input_scale, torch::kFloat);
  }
  return (x / scale).round_().clamp_(-127, 127).mul_(scale);
}

}  // namespace

bool QuantizedKernelAccelerated() { return HasAvx2(); }

absl::StatusOr<std::unique_ptr<QuantizedLinear>> QuantizedLinear::Create(
    const QuantizedWeight& w, at::Tensor bias, ActivationMode mode,
    double input_scale) {
  torch::NoGradGuard no_grad;
  const int bits = w.scheme.bits;
  if (bits != 4 && bits != 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("bits: ", bits, " is not supported (4 or 8)"));
  }
  const int64_t out = w.out_features(), in = w.in_features();
  const int64_t gs = w.effective_group_size();
  if (in % 32 != 0 || gs % 32 != 0 || w.num_groups() * gs != in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "quantized linear needs rows and groups of multiples of 32 columns, "
        "got in=",
        in, " group=", gs));
  }
  if (mode == ActivationMode::kStatic && !(input_scale > 0)) {
    return absl::InvalidArgumentError("static activation scale must be > 0");
  }
  std::unique_ptr<QuantizedLinear> q(new QuantizedLinear());
  q->bits_ = bits;
  q->out_ = out;
  q->in_ = in;
  q->group_size_ = gs;
  q->groups_ = w.num_groups();
  q->mode_ = mode;
  q->input_scale_ = input_scale;
  at::Tensor g_idx = w.g_idx.to(at::kLong);
  at::Tensor codes = w.codes;
  if (!g_idx.equal(SequentialGroupIndex(in, gs).to(at::kLong))) {
    // Sort columns by group; each group must then hold exactly gs columns.
    at::Tensor perm =
        std::get<1>(g_idx.sort(c10::optional<bool>(true), 0, false));
    at::Tensor sorted = g_idx.index_select(0, perm);
    if (!sorted.equal(SequentialGroupIndex(in, gs).to(at::kLong))) {
      return absl::InvalidArgumentError(
          "g_idx does not give every group the same number of columns");
    }
    q->perm_ = perm.contiguous();
    codes = codes.index_select(1, perm);
  }
  codes = codes.contiguous();
  if (bits == 8) {
    q->data_ = codes;
  } else {
    at::Tensor c = codes.view({out, in / 2, 2});
    q->data_ =
        (c.select(2, 0) + c.select(2, 1) * 16).to(at::kByte).contiguous();
  }
  q->scale_ = w.scales.to(at::kFloat).contiguous();
  q->offset_ = (-w.zeros.to(at::kFloat) * q->scale_).contiguous();
  if (bias.defined()) q->bias_ = bias.to(at::kFloat).contiguous();
  return q;
}

at::Tensor QuantizedLinear::Forward(const at::Tensor& x_in) const {
  torch::NoGradGuard no_grad;
  at::Tensor x = x_in.to(at::kFloat);
  if (perm_.defined()) x = x.index_select(1, perm_);
  x = QuantizeActivations(x, mode_, input_scale_).contiguous();
  const int64_t M = x.size(0);
  if (M > model::kSkinnyMaxRows) {
    // Prefill-sized batches are compute bound: expand 256 weight rows at a
    // time into a transient float tile and let BLAS multiply it.
    at::Tensor y = torch::empty({M, out_}, torch::kFloat);
    const int64_t tile = 256;
    for (int64_t n0 = 0; n0 < out_; n0 += tile) {
      const int64_t nr = std::min(tile, out_ - n0);
      at::Tensor wt = DequantizeRows(n0, nr);
      y.narrow(1, n0, nr).copy_(at::matmul(x, wt.t()));
    }
    if (bias_.defined()) y.add_(bias_);
    return y;
  }
  at::Tensor y = torch::empty({M, out_}, torch::kFloat);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const uint8_t* data = data_.data_ptr<uint8_t>();
  const float* sp = scale_.data_ptr<float>();
  const float* op = offset_.data_ptr<float>();
  const float* bp = bias_.defined() ? bias_.data_ptr<float>() : nullptr;
  const int64_t row_bytes = bits_ == 8 ? in_ : in_ / 2;
  const bool avx2 = HasAvx2();
  const int64_t in = in_, gs = group_size_, groups = groups_, out = out_;
  const int bits = bits_;
  if (avx2) {
    // Weight rows 4 at a time: expanded into an L1-resident buffer, then
    // dotted with every activation row. Every output goes through Dot4Avx2
    // (a short last tile repeats its last row), so a row's result does not
    // depend on M or on where the tile boundaries fall.
    at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(4 * in);
      for (int64_t n = begin; n < end; n += 4) {
        const int cnt = static_cast<int>(std::min<int64_t>(4, end - n));
        const float* rows[4];
        for (int r = 0; r < 4; ++r) {
          rows[r] = buf.data() + std::min(r, cnt - 1) * in;
          if (r >= cnt) continue;
          DequantRowAvx2(data + (n + r) * row_bytes, bits, in, gs,
                         sp + (n + r) * groups, op + (n + r) * groups,
                         buf.data() + r * in);
        }
        for (int64_t m = 0; m < M; ++m) {
          float d[4];
          Dot4Avx2(xp + m * in, rows, in, d);
          for (int r = 0; r < cnt; ++r) {
            yp[m * out + n + r] = d[r] + (bp ? bp[n + r] : 0.0f);
          }
        }
      }
    });
    return y;
  }
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(in);
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = data + n * row_bytes;
      DequantRowScalar(row, bits, in, gs, sp + n * groups, op + n * groups,
                       buf.data());
      const float b = bp ? bp[n] : 0.0f;
      for (int64_t m = 0; m < M; ++m) {
        yp[m * out + n] = DotScalar(xp + m * in, buf.data(), in) + b;
      }
    }
  });
  return y;
}

at::Tensor QuantizedLinear::DequantizeRows(int64_t first, int64_t count) const {
  at::Tensor w = torch::empty({count, in_}, torch::kFloat);
  const int64_t row_bytes = bits_ == 8 ? in_ : in_ / 2;
  const uint8_t* data = data_.data_ptr<uint8_t>();
  const float* sp = scale_.data_ptr<float>();
  const float* op = offset_.data_ptr<float>();
  float* wp = w.data_ptr<float>();
  const bool avx2 = HasAvx2();
  at::parallel_for(0, count, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = first + r;
      if (avx2) {
        DequantRowAvx2(data + n * row_bytes, bits_, in_, group_size_,
                       sp + n * groups_, op + n * groups_, wp + r * in_);
      } else {
        DequantRowScalar(data + n * row_bytes, bits_, in_, group_size_,
                         sp + n * groups_, op + n * groups_, wp + r * in_);
      }
    }
  });
  return w;
}

int64_t QuantizedLinear::WeightBytes() const {
  return data_.numel() + (scale_.numel() + offset_.numel()) * 4 +
         (perm_.defined() ? perm_.numel() * 8 : 0) +
         (bias_.defined() ? bias_.numel() * 4 : 0);
}

std::string QuantizedLinear::Describe() const {
  const char* act = mode_ == ActivationMode::kNone      ? ""
                    : mode_ == ActivationMode::kDynamic ? "a8dyn"
                                                        : "a8static";
  return absl::StrCat("w", bits_, "g", group_size_, act);
}

}  // namespace hearth::quant
