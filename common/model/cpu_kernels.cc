#include "common/model/cpu_kernels.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HEARTH_X86_KERNELS 1
#include <immintrin.h>
#endif

namespace hearth::model {
namespace {

#ifdef HEARTH_X86_KERNELS

// One tile: MR activation rows times NR weight rows, full K. `x` rows are ldx
// apart, `w` rows K apart; results go to y[i * ldy + j] (+ bias[j]). When
// `next` is set, the tile pulls the NR * K floats there (the next tile's
// weights) into the cache as it goes: the hardware prefetcher alone does not
// run far enough ahead of a compute-heavy tile, and the weights come from DRAM.
template <int MR, int NR>
__attribute__((target("avx512f,fma"))) void Tile512(const float* x, int64_t ldx,
                                                    const float* w, int64_t K,
                                                    const float* bias, float* y,
                                                    int64_t ldy,
                                                    const float* next) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if (next != nullptr) {
      for (int j = 0; j < NR; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(next + j * K + k),
                     _MM_HINT_T0);
      }
    }
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_loadu_ps(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < NR; ++j)
        acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j)
      wv[j] = _mm512_maskz_loadu_ps(mask, w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * ldx + k);
      for (int j = 0; j < NR; ++j)
        acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float v = _mm512_reduce_add_ps(acc[i][j]);
      y[i * ldy + j] = bias != nullptr ? v + bias[j] : v;
    }
  }
}

__attribute__((target("avx2,fma"))) inline float ReduceAdd256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// AVX2 has 16 vector registers: MR x NR accumulators (at most 4 x 2) plus NR
// weight vectors and one activation vector fit without spilling.
template <int MR, int NR>
__attribute__((target("avx2,fma"))) void Tile256(const float* x, int64_t ldx,
                                                 const float* w, int64_t K,
                                                 const float* bias, float* y,
                                                 int64_t ldy,
                                                 const float* next) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if (next != nullptr && (k & 15) == 0) {
      for (int j = 0; j < NR; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(next + j * K + k),
                     _MM_HINT_T0);
      }
    }
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm256_loadu_ps(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < NR; ++j)
        acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float v = ReduceAdd256(acc[i][j]);
      // The tail (K % 8) in scalar code, in a fixed order.
      for (int64_t t = k; t < K; ++t) v += x[i * ldx + t] * w[j * K + t];
      y[i * ldy + j] = bias != nullptr ? v + bias[j] : v;
    }
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t,
                        const float*, float*, int64_t, const float*);

struct KernelSet {
  int nr = 0;               // Weight rows per tile.
  TileFn tiles[4][4] = {};  // [activation rows - 1][weight rows - 1].
};

KernelSet MakeAvx512() {
  KernelSet s;
  s.nr = 4;
  s.tiles[0][0] = Tile512<1, 1>, s.tiles[0][1] = Tile512<1, 2>,
  s.tiles[0][2] = Tile512<1, 3>, s.tiles[0][3] = Tile512<1, 4>;
  s.tiles[1][0] = Tile512<2, 1>, s.tiles[1][1] = Tile512<2, 2>,
  s.tiles[1][2] = Tile512<2, 3>, s.tiles[1][3] = Tile512<2, 4>;
  s.tiles[2][0] = Tile512<3, 1>, s.tiles[2][1] = Tile512<3, 2>,
  s.tiles[2][2] = Tile512<3, 3>, s.tiles[2][3] = Tile512<3, 4>;
  s.tiles[3][0] = Tile512<4, 1>, s.tiles[3][1] = Tile512<4, 2>,
  s.tiles[3][2] = Tile512<4, 3>, s.tiles[3][3] = Tile512<4, 4>;
  return s;
}

KernelSet MakeAvx2() {
  KernelSet s;
  s.nr = 2;
  s.tiles[0][0] = Tile256<1, 1>, s.tiles[0][1] = Tile256<1, 2>;
  s.tiles[1][0] = Tile256<2, 1>, s.tiles[1][1] = Tile256<2, 2>;
  s.tiles[2][0] = Tile256<3, 1>, s.tiles[2][1] = Tile256<3, 2>;
  s.tiles[3][0] = Tile256<4, 1>, s.tiles[3][1] = Tile256<4, 2>;
  return s;
}

const KernelSet* Kernels() {
  static const KernelSet* set = []() -> const KernelSet* {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return new KernelSet(MakeAvx512());
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return new KernelSet(MakeAvx2());
    }
    return nullptr;
  }();
  return set;
}

__attribute__((target("avx512f,fma"))) float Dot512(const float* a,
                                                    const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 =
        _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16),
                           _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m =
        n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i),
                           _mm512_maskz_loadu_ps(m, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

__attribute__((target("avx512f,fma"))) void Axpy512(float alpha, const float* x,
                                                    float* y, int64_t n) {
  const __m512 a = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i),
                                            _mm512_loadu_ps(y + i)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m,
                          _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, x + i),
                                          _mm512_maskz_loadu_ps(m, y + i)));
  }
}

__attribute__((target("avx2,fma"))) float Dot256(const float* a, const float* b,
                                                 int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  }
  float v = ReduceAdd256(acc);
  for (; i < n; ++i) v += a[i] * b[i];
  return v;
}

__attribute__((target("avx2,fma"))) void Axpy256(float alpha, const float* x,
                                                 float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i),
                                            _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

#else

struct KernelSet {};
const KernelSet* Kernels() { return nullptr; }

#endif  // HEARTH_X86_KERNELS

float DotScalar(const float* a, const float* b, int64_t n) {
  float v = 0;
  for (int64_t i = 0; i < n; ++i) v += a[i] * b[i];
  return v;
}

void AxpyScalar(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

struct VecOps {
  float (*dot)(const float*, const float*, int64_t) = DotScalar;
  void (*axpy)(float, const float*, float*, int64_t) = AxpyScalar;
};

const VecOps& Ops() {
  static const VecOps ops = [] {
    VecOps o;
#ifdef HEARTH_X86_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
      o.dot = Dot512, o.axpy = Axpy512;
    } else if (__builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma")) {
      o.dot = Dot256, o.axpy = Axpy256;
    }
#endif
    return o;
  }();
  return ops;
}

}  // namespace

bool SkinnyLinearSupported() { return Kernels() != nullptr; }

at::Tensor SkinnyLinear(const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& bias) {
  // Visible to the libtorch profiler (bench_model_decode --profile).
  RECORD_FUNCTION("hearth::SkinnyLinear", std::vector<c10::IValue>());
#ifdef HEARTH_X86_KERNELS
  const KernelSet* ks = Kernels();
  if (ks == nullptr || x.dim() != 2 || weight.dim() != 2 || !x.is_cpu() ||
      !weight.is_cpu() || x.scalar_type() != at::kFloat ||
      weight.scalar_type() != at::kFloat || x.size(0) > kSkinnyMaxRows ||
      x.size(0) == 0 || x.size(1) != weight.size(1) || x.stride(1) != 1 ||
      !weight.is_contiguous() ||
      (bias.defined() &&
       (bias.scalar_type() != at::kFloat || !bias.is_contiguous() ||
        bias.numel() != weight.size(0)))) {
    return at::Tensor();
  }
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  const int64_t ldx = x.stride(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int nr = ks->nr;
  const int64_t tiles = (N + nr - 1) / nr;
  // Enough weight per task (~64K floats) that splitting pays for the handoff.
  const int64_t grain = std::max<int64_t>(1, 65536 / (nr * K));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t * nr;
      const int64_t cols = std::min<int64_t>(nr, N - n);
      // The first pass over the tile streams it from memory and prefetches the
      // next one; later passes find it in L1.
      const float* next = t + 1 < t1 ? wp + (n + nr) * K : nullptr;
      for (int64_t m = 0; m < M; m += 4) {
        const int64_t rows = std::min<int64_t>(4, M - m);
        ks->tiles[rows - 1][cols - 1](
            xp + m * ldx, ldx, wp + n * K, K, bp != nullptr ? bp + n : nullptr,
            yp + m * N + n, N, m == 0 ? next : nullptr);
      }
    }
  });
  return y;
#else
  (void)x, (void)weight, (void)bias;
  return at::Tensor();
#endif
}

at::Tensor RmsNormF32(const at::Tensor& x, const at::Tensor& weight,
                      double eps) {
  RECORD_FUNCTION("hearth::RmsNormF32", std::vector<c10::IValue>());
  const int64_t M = x.size(0), H = x.size(1), ldx = x.stride(0);
  at::Tensor y = at::empty({M, H}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const VecOps& ops = Ops();
  for (int64_t m = 0; m < M; ++m) {
    const float* row = xp + m * ldx;
    const float mean = ops.dot(row, row, H) / static_cast<float>(H);
    // As transformers: rsqrt in float32, then (x * r) * weight.
    const float r = 1.0f / std::sqrt(mean + static_cast<float>(eps));
    float* out = yp + m * H;
    for (int64_t i = 0; i < H; ++i) out[i] = (row[i] * r) * wp[i];
  }
  return y;
}

void RopeAndStoreF32(const at::Tensor& qkv, const at::Tensor& cos,
                     const at::Tensor& sin, int64_t H, int64_t KV, int64_t D,
                     const at::Tensor& store, const int64_t* slots) {
  RECORD_FUNCTION("hearth::RopeAndStoreF32", std::vector<c10::IValue>());
  const int64_t N = qkv.size(0), ld = qkv.stride(0);
  const int64_t S = store.size(1);
  const int64_t half = D / 2;
  float* base = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* kv = store.data_ptr<float>();
  std::vector<float> tmp(D);
  for (int64_t r = 0; r < N; ++r) {
    float* row = base + r * ld;
    const float* c = cp + r * D;
    const float* s = sp + r * D;
    for (int64_t h = 0; h < H + KV; ++h) {
      float* x = row + h * D;
      std::copy(x, x + D, tmp.begin());
      for (int64_t i = 0; i < half; ++i)
        x[i] = tmp[i] * c[i] + tmp[i + half] * s[i];
      for (int64_t i = half; i < D; ++i)
        x[i] = tmp[i] * c[i] + tmp[i - half] * s[i];
    }
    for (int64_t h = 0; h < 2 * KV; ++h) {
      const float* src = row + (H + h) * D;
      std::copy(src, src + D, kv + (h * S + slots[r]) * D);
    }
  }
}

void PagedDecodeAttentionF32(const at::Tensor& qkv, int64_t n, int64_t H,
                             int64_t KV, int64_t D, const at::Tensor& store,
                             int64_t block_size, const int64_t* block_tables,
                             int64_t max_blocks, const int64_t* lengths,
                             double scale, const at::Tensor& ctx) {
  RECORD_FUNCTION("hearth::PagedDecodeAttentionF32", std::vector<c10::IValue>());
  const int64_t G = H / KV;
  const int64_t ld = qkv.stride(0), ldo = ctx.stride(0);
  const int64_t S = store.size(1);
  const float* q_base = qkv.data_ptr<float>();
  const float* k_base = store.data_ptr<float>();
  const float* v_base = k_base + KV * S * D;
  float* out_base = ctx.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  const VecOps& ops = Ops();
  int64_t max_len = 1;
  for (int64_t i = 0; i < n; ++i) max_len = std::max(max_len, lengths[i]);
  // One task per (sequence, KV head): its G query heads share each key and
  // value row, which is read once.
  const int64_t grain = std::max<int64_t>(1, 8192 / (max_len * D * G));
  at::parallel_for(0, n * KV, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t i = task / KV, h = task % KV;
      const int64_t len = lengths[i];
      const int64_t* blocks = block_tables + i * max_blocks;
      const float* q = q_base + i * ld + h * G * D;
      scores.resize(G * len);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot =
            blocks[t / block_size] * block_size + t % block_size;
        const float* k = k_base + (h * S + slot) * D;
        for (int64_t g = 0; g < G; ++g)
          scores[g * len + t] = ops.dot(q + g * D, k, D) * fscale;
      }
      for (int64_t g = 0; g < G; ++g) {
        float* sc = scores.data() + g * len;
        float mx = sc[0];
        for (int64_t t = 1; t < len; ++t) mx = std::max(mx, sc[t]);
        float sum = 0;
        for (int64_t t = 0; t < len; ++t) sum += (sc[t] = std::exp(sc[t] - mx));
        const float inv = 1.0f / sum;
        for (int64_t t = 0; t < len; ++t) sc[t] *= inv;
        std::fill_n(out_base + i * ldo + (h * G + g) * D, D, 0.0f);
      }
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot =
            blocks[t / block_size] * block_size + t % block_size;
        const float* v = v_base + (h * S + slot) * D;
        for (int64_t g = 0; g < G; ++g) {
          ops.axpy(scores[g * len + t], v, out_base + i * ldo + (h * G + g) * D,
                   D);
        }
      }
    }
  });
}

at::Tensor SiluMulF32(const at::Tensor& gu, int64_t I) {
  RECORD_FUNCTION("hearth::SiluMulF32", std::vector<c10::IValue>());
  const int64_t M = gu.size(0), ld = gu.stride(0);
  at::Tensor y = at::empty({M, I}, gu.options());
  const float* gp = gu.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* g = gp + m * ld;
    const float* u = g + I;
    float* out = yp + m * I;
    for (int64_t i = 0; i < I; ++i)
      out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
  return y;
}

}  // namespace hearth::model
