#include "common/quant/quant_core.h"

#include <torch/torch.h>

#include <vector>

#include "absl/strings/str_cat.h"

namespace hearth::quant {
namespace {

// Smallest positive float16 normal: scales below it would lose precision in
// the fp16 checkpoint tensor (and 0 would divide by zero).
constexpr float kMinScale = 6.104e-5f;

at::Tensor RoundToHalf(const at::Tensor& t) {
  return t.clamp_min(kMinScale).to(at::kHalf).to(at::kFloat);
}

// Packs `values` (int64 [rows, n * per], unsigned, < 2^bits) along dim 1:
// value j of each run of `per` lands in bits bits*j.. of one 32-bit word.
// `order` (size per) names which element of the run goes to slot j.
at::Tensor PackColumns(const at::Tensor& values, int bits,
                       const std::vector<int64_t>& order) {
  const int64_t per = 32 / bits;
  const int64_t rows = values.size(0), cols = values.size(1);
  at::Tensor v = values.view({rows, cols / per, per});
  at::Tensor idx = torch::tensor(order, torch::kLong);
  v = v.index_select(2, idx);
  at::Tensor pow2 =
      torch::pow(2, torch::arange(per, torch::kLong) * bits).to(at::kLong);
  at::Tensor word = (v * pow2).sum(2);  // < 2^32, in int64
  // Reinterpret as int32 two's complement.
  word = at::where(word >= (int64_t{1} << 31), word - (int64_t{1} << 32), word);
  return word.to(at::kInt).contiguous();
}

// Inverse of PackColumns: int32 [rows, words] -> int64 [rows, words * per].
at::Tensor UnpackColumns(const at::Tensor& words, int bits,
                         const std::vector<int64_t>& order) {
  const int64_t per = 32 / bits;
  const int64_t maxq = (1 << bits) - 1;
  at::Tensor w = words.to(at::kLong);
  w = at::where(w < 0, w + (int64_t{1} << 32), w);  // as unsigned
  at::Tensor pow2 =
      torch::pow(2, torch::arange(per, torch::kLong) * bits).to(at::kLong);
  at::Tensor slots = w.unsqueeze(2)
                         .div(pow2, "floor")
                         .remainder(maxq + 1);  // [rows, words, per]
  // Slot j holds element order[j]; invert.
  std::vector<int64_t> inverse(per);
  for (int64_t j = 0; j < per; ++j) inverse[order[j]] = j;
  slots = slots.index_select(2, torch::tensor(inverse, torch::kLong));
  return slots.reshape({words.size(0), words.size(1) * per});
}

std::vector<int64_t> Identity(int64_t n) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

// AutoAWQ's AWQ_ORDER: nibble i of a word holds output column 8*col +
// kAwqOrder[i].
const std::vector<int64_t> kAwqOrder = {0, 2, 4, 6, 1, 3, 5, 7};

}  // namespace

absl::Status ValidateScheme(const QuantScheme& scheme, int64_t in_features) {
  if (scheme.bits != 4 && scheme.bits != 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("bits: ", scheme.bits, " is not supported (4 or 8)"));
  }
  if (scheme.group_size != 0 && scheme.group_size != 32 &&
      scheme.group_size != 64 && scheme.group_size != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_size: ", scheme.group_size,
                     " is not supported (0 = per channel, 32, 64 or 128)"));
  }
  if (scheme.group_size != 0 && in_features % scheme.group_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_size: ", scheme.group_size,
                     " does not divide the row length ", in_features));
  }
  return absl::OkStatus();
}

QuantParams FindParams(const at::Tensor& w, int bits, bool symmetric,
                       RangeRule rule) {
  torch::NoGradGuard no_grad;
  const double maxq = (1 << bits) - 1;
  at::Tensor x = w.to(at::kFloat);
  QuantParams p;
  if (rule == RangeRule::kAbsMax) {
    at::Tensor amax = std::get<0>(x.abs().max(-1));
    const double qmax = (1 << (bits - 1)) - 1;
    at::Tensor scale = at::where(amax > 0, amax / qmax, at::ones_like(amax));
    p.scale = RoundToHalf(scale);
    p.zero = at::full_like(p.scale, 1 << (bits - 1));
    return p;
  }
  at::Tensor xmin = std::get<0>(x.min(-1));
  at::Tensor xmax = std::get<0>(x.max(-1));
  if (rule == RangeRule::kAwq && !symmetric) {
    at::Tensor scale = (xmax - xmin).clamp_min(1e-5) / maxq;
    p.scale = RoundToHalf(scale);
    p.zero = (-(xmin / p.scale).round()).clamp(0, maxq);
    return p;
  }
  // GPTQ's rule (also AWQ's symmetric variant).
  xmin = xmin.clamp_max(0);
  xmax = xmax.clamp_min(0);
  if (symmetric) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = at::where(xmin < 0, -xmax, xmin);
  }
  at::Tensor both_zero = (xmin == 0).logical_and(xmax == 0);
  xmin = at::where(both_zero, at::full_like(xmin, -1), xmin);
  xmax = at::where(both_zero, at::full_like(xmax, 1), xmax);
  p.scale = RoundToHalf((xmax - xmin) / maxq);
  if (symmetric) {
    p.zero = at::full_like(p.scale, (maxq + 1) / 2);
  } else {
    p.zero = (-xmin / p.scale).round().clamp(1, maxq);
  }
  return p;
}

at::Tensor QuantizeToCodes(const at::Tensor& w, const QuantParams& p,
                           int bits) {
  const double maxq = (1 << bits) - 1;
  return (w / p.scale.unsqueeze(-1))
      .round()
      .add_(p.zero.unsqueeze(-1))
      .clamp_(0, maxq);
}

at::Tensor FakeQuantize(const at::Tensor& w, const QuantParams& p, int bits) {
  return (QuantizeToCodes(w, p, bits) - p.zero.unsqueeze(-1)) *
         p.scale.unsqueeze(-1);
}

int64_t QuantizedWeight::effective_group_size() const {
  return in_features() / num_groups();
}

at::Tensor QuantizedWeight::Dequantize() const {
  at::Tensor idx = g_idx.to(at::kLong);
  at::Tensor s = scales.index_select(1, idx);
  at::Tensor z = zeros.to(at::kFloat).index_select(1, idx);
  return (codes.to(at::kFloat) - z) * s;
}

at::Tensor SequentialGroupIndex(int64_t in_features, int64_t group_size) {
  return torch::arange(in_features, torch::kInt)
      .div(group_size, "floor")
      .to(at::kInt);
}

QuantizedWeight RtnQuantize(const at::Tensor& weight, const QuantScheme& scheme,
                            RangeRule rule) {
  torch::NoGradGuard no_grad;
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t gs = scheme.group_size == 0 ? in : scheme.group_size;
  at::Tensor w = weight.to(at::kFloat).reshape({out, in / gs, gs});
  QuantParams p = FindParams(w, scheme.bits, scheme.symmetric, rule);
  QuantizedWeight q;
  q.scheme = scheme;
  q.codes = QuantizeToCodes(w, p, scheme.bits).reshape({out, in}).to(at::kByte);
  q.scales = p.scale.contiguous();
  q.zeros = p.zero.to(at::kInt).contiguous();
  q.g_idx = SequentialGroupIndex(in, gs);
  return q;
}

absl::StatusOr<GptqTensors> PackGptq(const QuantizedWeight& w) {
  const int bits = w.scheme.bits;
  const int64_t per = 32 / bits;
  if (w.in_features() % per != 0 || w.out_features() % per != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPTQ packing needs in and out features divisible by ", per, ", got [",
        w.out_features(), ", ", w.in_features(), "]"));
  }
  if (w.zeros.min().item<int32_t>() < 1) {
    return absl::InvalidArgumentError(
        "GPTQ v1 cannot store a zero point of 0 (it stores zero - 1)");
  }
  GptqTensors t;
  // qweight: pack along the input dim: transpose codes to [in, out] and pack
  // consecutive input rows, i.e. pack columns of the [out, in] codes and
  // transpose the words.
  t.qweight =
      PackColumns(w.codes.to(at::kLong), bits, Identity(per)).t().contiguous();
  t.qzeros = PackColumns((w.zeros.to(at::kLong) - 1).t().contiguous(), bits,
                         Identity(per));
  t.scales = w.scales.t().contiguous().to(at::kHalf);
  t.g_idx = w.g_idx.to(at::kInt).contiguous();
  return t;
}

absl::StatusOr<QuantizedWeight> UnpackGptq(const GptqTensors& t, int bits,
                                           int group_size, bool symmetric) {
  if (bits != 4 && bits != 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("bits: ", bits, " is not supported (4 or 8)"));
  }
  const int64_t per = 32 / bits;
  if (t.qweight.dim() != 2 || t.qzeros.dim() != 2 || t.scales.dim() != 2 ||
      t.g_idx.dim() != 1) {
    return absl::InvalidArgumentError("GPTQ tensors have the wrong rank");
  }
  const int64_t in = t.qweight.size(0) * per, out = t.qweight.size(1);
  const int64_t groups = t.scales.size(0);
  if (t.g_idx.size(0) != in || t.scales.size(1) != out ||
      t.qzeros.size(0) != groups || t.qzeros.size(1) * per != out) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPTQ tensor shapes disagree: qweight [",
                     t.qweight.size(0), ", ", out, "], scales [", groups, ", ",
                     t.scales.size(1), "], qzeros [", t.qzeros.size(0), ", ",
                     t.qzeros.size(1), "], g_idx [", t.g_idx.size(0), "]"));
  }
  at::Tensor gi = t.g_idx.to(at::kLong);
  if (gi.min().item<int64_t>() < 0 || gi.max().item<int64_t>() >= groups) {
    return absl::InvalidArgumentError("GPTQ g_idx out of range");
  }
  QuantizedWeight q;
  q.scheme = {bits, group_size < 0 ? 0 : group_size, symmetric};
  q.codes = UnpackColumns(t.qweight.t().contiguous(), bits, Identity(per))
                .to(at::kByte)
                .contiguous();
  q.zeros = (UnpackColumns(t.qzeros, bits, Identity(per)) + 1)
                .t()
                .contiguous()
                .to(at::kInt);
  q.scales = t.scales.to(at::kFloat).t().contiguous();
  q.g_idx = t.g_idx.to(at::kInt).contiguous();
  return q;
}

absl::StatusOr<AwqTensors> PackAwq(const QuantizedWeight& w) {
  if (w.scheme.bits != 4) {
    return absl::InvalidArgumentError("AWQ GEMM supports only bits: 4");
  }
  if (w.out_features() % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AWQ GEMM needs out features divisible by 8, got ", w.out_features()));
  }
  const int64_t gs = w.effective_group_size();
  if (!w.g_idx.to(at::kLong).equal(
          SequentialGroupIndex(w.in_features(), gs).to(at::kLong))) {
    return absl::InvalidArgumentError(
        "AWQ GEMM cannot store act-order (non-sequential g_idx)");
  }
  AwqTensors t;
  t.qweight = PackColumns(w.codes.to(at::kLong).t().contiguous(), 4, kAwqOrder);
  t.qzeros = PackColumns(w.zeros.to(at::kLong).t().contiguous(), 4, kAwqOrder);
  t.scales = w.scales.t().contiguous().to(at::kHalf);
  return t;
}

absl::StatusOr<QuantizedWeight> UnpackAwq(const AwqTensors& t, int group_size) {
  if (t.qweight.dim() != 2 || t.qzeros.dim() != 2 || t.scales.dim() != 2) {
    return absl::InvalidArgumentError("AWQ tensors have the wrong rank");
  }
  const int64_t in = t.qweight.size(0), out = t.qweight.size(1) * 8;
  const int64_t groups = t.scales.size(0);
  if (t.scales.size(1) != out || t.qzeros.size(0) != groups ||
      t.qzeros.size(1) * 8 != out || groups == 0 || in % groups != 0) {
    return absl::InvalidArgumentError("AWQ tensor shapes disagree");
  }
  QuantizedWeight q;
  q.scheme = {4, group_size, false};
  q.codes =
      UnpackColumns(t.qweight, 4, kAwqOrder).t().contiguous().to(at::kByte);
  q.zeros = UnpackColumns(t.qzeros, 4, kAwqOrder).t().contiguous().to(at::kInt);
  q.scales = t.scales.to(at::kFloat).t().contiguous();
  q.g_idx = SequentialGroupIndex(in, in / groups);
  return q;
}

}  // namespace hearth::quant
