#include "common/model/llama_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/model/cpu_kernels.h"

// OpenBLAS's own thread pool; weak so that a build against another BLAS links
// too.
extern "C" void openblas_set_num_threads(int num_threads) __attribute__((weak));

namespace hearth::model {
namespace {

c10::optional<at::Tensor> OptionalBias(const at::Tensor& bias) {
  return bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt;
}

// x [N, in] times weight [out, in]^T (+ bias). Decode-sized batches on the CPU
// use SkinnyLinear (see cpu_kernels.h); otherwise a single row goes through
// matrix-vector (sgemv), because BLAS gemm with one row still packs the whole
// weight matrix, which doubles the memory traffic of a decode step.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight,
                  const at::Tensor& bias) {
  if (x.is_cpu() && x.dim() == 2 && x.size(0) <= kSkinnyMaxRows) {
    at::Tensor y = SkinnyLinear(x, weight, bias);
    if (y.defined()) return y;
  }
  if (x.dim() == 2 && x.size(0) == 1 && x.is_cpu()) {
    at::Tensor y = at::mv(weight, x[0]);
    if (bias.defined()) y.add_(bias);
    return y.unsqueeze(0);
  }
  return at::linear(x, weight, OptionalBias(bias));
}

// The most negative finite value of `dtype`, HF's additive mask value: unlike
// -inf it keeps fully masked rows (padding queries) finite.
double MaskValue(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kHalf:
      return -65504.0;
    case c10::kBFloat16:
      return -3.3895313892515355e38;
    case c10::kDouble:
      return std::numeric_limits<double>::lowest();
    default:
      return std::numeric_limits<float>::lowest();
  }
}

// cos and sin tables [N, head_dim] for `positions` (float32 math as in
// transformers, then cast). `sin` carries rotate_half's sign: with it, RoPE is
// x * cos + roll(x, head_dim / 2) * sin.
std::pair<at::Tensor, at::Tensor> RopeTables(const at::Tensor& inv_freq,
                                             const at::Tensor& positions,
                                             bool signed_sin,
                                             c10::Device device,
                                             c10::ScalarType dtype) {
  at::Tensor freqs =
      positions.to(at::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos();
  at::Tensor sin = emb.sin();
  if (signed_sin) sin.narrow(1, 0, sin.size(1) / 2).neg_();
  return {cos.to(device, dtype), sin.to(device, dtype)};
}

// transformers' rotate_half: cat(-x2, x1) over the last dim.
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Holds the "weight" (and optional "bias") of one HF sub-module (q_proj, norm
// ...).
class Params : public torch::nn::Module {
 public:
  Params(at::Tensor weight, at::Tensor bias = {}) {
    this->weight = register_parameter("weight", std::move(weight));
    if (bias.defined())
      this->bias = register_parameter("bias", std::move(bias));
  }
  at::Tensor weight;
  at::Tensor bias;
};

}  // namespace

// model.layers.{i}.
class LlamaDecoderLayer : public torch::nn::Module {
 public:
  LlamaDecoderLayer(const formats::LlamaConfig& c, bool o_bias,
                    const at::TensorOptions& opt) {
    const int64_t h = c.hidden_size;
    const int64_t q_dim = c.num_attention_heads * c.head_dim;
    const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
    const int64_t inter = c.intermediate_size;
    auto bias = [&](int64_t n, bool on) {
      return on ? torch::empty({n}, opt) : at::Tensor();
    };
    auto attn = std::make_shared<torch::nn::Module>();
    auto mlp = std::make_shared<torch::nn::Module>();
    auto q = attn->register_module(
        "q_proj", std::make_shared<Params>(torch::empty({q_dim, h}, opt),
                                           bias(q_dim, c.attention_bias)));
    auto k = attn->register_module(
        "k_proj", std::make_shared<Params>(torch::empty({kv_dim, h}, opt),
                                           bias(kv_dim, c.attention_bias)));
    auto v = attn->register_module(
        "v_proj", std::make_shared<Params>(torch::empty({kv_dim, h}, opt),
                                           bias(kv_dim, c.attention_bias)));
    auto o = attn->register_module(
        "o_proj", std::make_shared<Params>(torch::empty({h, q_dim}, opt),
                                           bias(h, o_bias)));
    auto gate = mlp->register_module(
        "gate_proj", std::make_shared<Params>(torch::empty({inter, h}, opt)));
    auto up = mlp->register_module(
        "up_proj", std::make_shared<Params>(torch::empty({inter, h}, opt)));
    auto down = mlp->register_module(
        "down_proj", std::make_shared<Params>(torch::empty({h, inter}, opt)));
    register_module("self_attn", attn);
    register_module("mlp", mlp);
    auto ln_in = register_module(
        "input_layernorm", std::make_shared<Params>(torch::ones({h}, opt)));
    auto ln_post =
        register_module("post_attention_layernorm",
                        std::make_shared<Params>(torch::ones({h}, opt)));
    // Handles to the registered parameters: they share the TensorImpl, so
    // set_data/copy_ on either is seen by both.
    wq = q->weight, bq = q->bias, wk = k->weight, bk = k->bias, wv = v->weight,
    bv = v->bias;
    wo = o->weight, bo = o->bias;
    wg = gate->weight, wu = up->weight, wd = down->weight;
    norm_in = ln_in->weight, norm_post = ln_post->weight;
  }

  // Projection `i` in LayerLinearNames() order, and its bias (undefined when
  // it has none).
  at::Tensor& weight(int i) {
    at::Tensor* w[] = {&wq, &wk, &wv, &wo, &wg, &wu, &wd};
    return *w[i];
  }
  at::Tensor& bias(int i) {
    at::Tensor* b[] = {&bq, &bk, &bv, &bo, &bg, &bu, &bd};
    return *b[i];
  }
  const at::Tensor& weight(int i) const {
    return const_cast<LlamaDecoderLayer*>(this)->weight(i);
  }
  const at::Tensor& bias(int i) const {
    return const_cast<LlamaDecoderLayer*>(this)->bias(i);
  }

  at::Tensor wq, bq, wk, bk, wv, bv, wo, bo, wg, wu, wd, norm_in, norm_post;
  at::Tensor bg, bu, bd;  // Always undefined (Llama's MLP has no biases).
};

// The "model" sub-module: embeddings, layers, final norm.
class LlamaInner : public torch::nn::Module {
 public:
  LlamaInner(const formats::LlamaConfig& c, const at::TensorOptions& opt) {
    embed = register_module("embed_tokens",
                            std::make_shared<Params>(torch::empty(
                                {c.vocab_size, c.hidden_size}, opt)))
                ->weight;
    layers = register_module("layers", std::make_shared<torch::nn::Module>());
    norm =
        register_module(
            "norm", std::make_shared<Params>(torch::ones({c.hidden_size}, opt)))
            ->weight;
  }
  at::Tensor embed, norm;
  std::shared_ptr<torch::nn::Module> layers;
};

const std::vector<std::string>& LayerLinearNames() {
  static const std::vector<std::string> names = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
      "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
      "mlp.down_proj"};
  return names;
}

at::Tensor RopeInverseFrequencies(const formats::LlamaConfig& config) {
  torch::NoGradGuard no_grad;
  const int64_t dim = config.head_dim;
  // Same ops and precision as transformers: int64 arange -> float32 exponent.
  at::Tensor inv_freq =
      1.0 /
      at::pow(config.rope_theta,
              torch::arange(0, dim, 2, torch::kInt64).to(at::kFloat) / dim);
  const formats::RopeScaling& rs = config.rope_scaling;
  if (rs.type == "linear") {
    inv_freq = inv_freq / rs.factor;
  } else if (rs.type == "llama3") {
    const double factor = rs.factor;
    const double low_freq_wavelen =
        rs.original_max_position_embeddings / rs.low_freq_factor;
    const double high_freq_wavelen =
        rs.original_max_position_embeddings / rs.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    // Long wavelengths (low frequencies) are slowed down by `factor`, short
    // ones kept, and the band between is interpolated smoothly.
    at::Tensor scaled =
        at::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
    at::Tensor smooth =
        (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) /
        (rs.high_freq_factor - rs.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
    at::Tensor is_medium =
        (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
    inv_freq = at::where(is_medium, smoothed, scaled);
  }
  return inv_freq.contiguous();
}

void SetCpuThreads(int threads) { SetCpuThreads(threads, threads); }

void SetCpuThreads(int aten_threads, int blas_threads) {
  if (aten_threads > 0) at::set_num_threads(aten_threads);
  if (blas_threads > 0 && openblas_set_num_threads != nullptr) {
    openblas_set_num_threads(blas_threads);
  }
}

LlamaForCausalLM::LlamaForCausalLM(const formats::LlamaConfig& config,
                                   c10::Device device, c10::ScalarType dtype)
    : config_(config) {
  torch::NoGradGuard no_grad;
  head_dim_ = config.head_dim;
  num_heads_ = config.num_attention_heads;
  num_kv_heads_ = config.num_key_value_heads;
  o_bias_ = config.attention_bias && config.model_type != "qwen2";
  const auto opt = torch::TensorOptions().device(device).dtype(dtype);
  inner_ = register_module("model", std::make_shared<LlamaInner>(config, opt));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    layers_.push_back(inner_->layers->register_module(
        std::to_string(i),
        std::make_shared<LlamaDecoderLayer>(config, o_bias_, opt)));
  }
  if (!config.tie_word_embeddings) {
    auto head = register_module(
        "lm_head", std::make_shared<Params>(torch::empty(
                       {config.vocab_size, config.hidden_size}, opt)));
    lm_head_ = head->weight;
  }
  inv_freq_ = RopeInverseFrequencies(config);
  impls_.assign(layers_.size(),
                std::vector<std::shared_ptr<const LinearImpl>>(7));
  PackForInference();
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LlamaForCausalLM::Create(
    const formats::LlamaConfig& config, c10::Device device,
    c10::ScalarType dtype) {
  if (absl::Status s = formats::Validate(config); !s.ok()) return s;
  if (config.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim must be even, got ", config.head_dim));
  }
  if (dtype != c10::kFloat && dtype != c10::kHalf && dtype != c10::kBFloat16 &&
      dtype != c10::kDouble) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported model dtype ", c10::toString(dtype)));
  }
  try {
    return std::make_shared<LlamaForCausalLM>(config, device, dtype);
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot create model: ", e.what_without_backtrace()));
  }
}

c10::Device LlamaForCausalLM::device() const { return inner_->embed.device(); }
c10::ScalarType LlamaForCausalLM::dtype() const {
  return inner_->embed.scalar_type();
}

at::Tensor& LlamaForCausalLM::embed_tokens_weight() { return inner_->embed; }
at::Tensor& LlamaForCausalLM::lm_head_weight() {
  return config_.tie_word_embeddings ? inner_->embed : lm_head_;
}

KvCacheDims LlamaForCausalLM::CacheDims() const {
  KvCacheDims dims;
  dims.num_layers = config_.num_hidden_layers;
  dims.num_kv_heads = num_kv_heads_;
  dims.head_dim = head_dim_;
  dims.device = device();
  dims.dtype = dtype();
  return dims;
}

namespace {

// Points `parts` into one new buffer holding them stacked along dim 0.
at::Tensor Pack(std::initializer_list<at::Tensor*> parts) {
  std::vector<at::Tensor> values;
  for (at::Tensor* p : parts) values.push_back(*p);
  at::Tensor packed = at::cat(values, 0);
  int64_t offset = 0;
  for (at::Tensor* p : parts) {
    const int64_t rows = p->size(0);
    p->set_data(packed.narrow(0, offset, rows));
    offset += rows;
  }
  return packed;
}

// Whether `parts` still view `packed` back to back.
bool Packed(const at::Tensor& packed,
            std::initializer_list<const at::Tensor*> parts) {
  if (!packed.defined()) return false;
  int64_t offset = packed.storage_offset();
  for (const at::Tensor* p : parts) {
    if (!p->is_alias_of(packed) || p->storage_offset() != offset ||
        !p->is_contiguous() || p->scalar_type() != packed.scalar_type()) {
      return false;
    }
    offset += p->numel();
  }
  return true;
}

}  // namespace

void LlamaForCausalLM::PackForInference() {
  torch::NoGradGuard no_grad;
  const size_t n = layers_.size();
  packed_qkv_.resize(n);
  packed_qkv_bias_.resize(n);
  packed_gate_up_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    LlamaDecoderLayer& l = *layers_[i];
    if (GroupSwapped(i, 0, 3)) {
      packed_qkv_[i] = packed_qkv_bias_[i] = at::Tensor();
    } else {
      if (!Packed(packed_qkv_[i], {&l.wq, &l.wk, &l.wv})) {
        packed_qkv_[i] = Pack({&l.wq, &l.wk, &l.wv});
      }
      if (l.bq.defined() &&
          !Packed(packed_qkv_bias_[i], {&l.bq, &l.bk, &l.bv})) {
        packed_qkv_bias_[i] = Pack({&l.bq, &l.bk, &l.bv});
      }
    }
    if (GroupSwapped(i, 4, 2)) {
      packed_gate_up_[i] = at::Tensor();
    } else if (!Packed(packed_gate_up_[i], {&l.wg, &l.wu})) {
      packed_gate_up_[i] = Pack({&l.wg, &l.wu});
    }
  }
}

bool LlamaForCausalLM::GroupSwapped(size_t li, int first, int count) const {
  for (int i = first; i < first + count; ++i) {
    if (impls_[li][i] != nullptr) return true;
  }
  return false;
}

absl::Status LlamaForCausalLM::SetLinearImpl(
    int64_t layer, std::string_view name,
    std::shared_ptr<const LinearImpl> impl) {
  if (layer < 0 || layer >= num_layers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " is outside [0, ", num_layers(), ")"));
  }
  const std::vector<std::string>& names = LayerLinearNames();
  const int index = static_cast<int>(
      std::find(names.begin(), names.end(), name) - names.begin());
  if (index == static_cast<int>(names.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", std::string(name), "\" is not a projection of a decoder layer"));
  }
  if (impl == nullptr) {
    return absl::InvalidArgumentError("linear implementation is null");
  }
  const int64_t h = config_.hidden_size, q = num_heads_ * head_dim_;
  const int64_t kv = num_kv_heads_ * head_dim_,
                inter = config_.intermediate_size;
  const int64_t out[] = {q, kv, kv, h, inter, inter, h};
  const int64_t in[] = {h, h, h, q, h, h, inter};
  if (impl->out_features() != out[index] || impl->in_features() != in[index]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.layers.", layer, ".", std::string(name), ": implementation is [",
        impl->out_features(), ", ", impl->in_features(),
        "], the config needs [", out[index], ", ", in[index], "]"));
  }
  torch::NoGradGuard no_grad;
  LlamaDecoderLayer& l = *layers_[layer];
  // The other members of a packed group get storage of their own, so that
  // freeing the packed buffer frees this projection's share.
  const int first = index < 3 ? 0 : index == 4 || index == 5 ? 4 : index;
  const int count = index < 3 ? 3 : index == 4 || index == 5 ? 2 : 1;
  if (count > 1) {
    for (int j = first; j < first + count; ++j) {
      if (j == index || impls_[layer][j] != nullptr) continue;
      l.weight(j).set_data(l.weight(j).clone());
      if (l.bias(j).defined()) l.bias(j).set_data(l.bias(j).clone());
    }
    if (first == 0) {
      packed_qkv_[layer] = packed_qkv_bias_[layer] = at::Tensor();
    } else {
      packed_gate_up_[layer] = at::Tensor();
    }
  }
  l.weight(index).set_data(torch::empty({0}, l.weight(index).options()));
  if (l.bias(index).defined()) {
    l.bias(index).set_data(torch::empty({0}, l.bias(index).options()));
  }
  impls_[layer][index] = std::move(impl);
  return absl::OkStatus();
}

const LinearImpl* LlamaForCausalLM::linear_impl(int64_t layer,
                                                std::string_view name) const {
  if (layer < 0 || layer >= num_layers()) return nullptr;
  const std::vector<std::string>& names = LayerLinearNames();
  auto it = std::find(names.begin(), names.end(), name);
  return it == names.end() ? nullptr : impls_[layer][it - names.begin()].get();
}

bool LlamaForCausalLM::has_linear_impls() const {
  for (size_t li = 0; li < impls_.size(); ++li) {
    if (GroupSwapped(li, 0, 7)) return true;
  }
  return false;
}

int64_t LlamaForCausalLM::WeightBytes() const {
  int64_t n = 0;
  for (const at::Tensor& p : parameters()) {
    n += static_cast<int64_t>(p.numel() * p.element_size());
  }
  for (const at::Tensor& b : buffers()) {
    n += static_cast<int64_t>(b.numel() * b.element_size());
  }
  for (const auto& layer : impls_) {
    for (const auto& impl : layer) n += impl ? impl->WeightBytes() : 0;
  }
  return n;
}

int64_t LlamaForCausalLM::LayerLinearBytes() const {
  int64_t n = 0;
  for (size_t li = 0; li < layers_.size(); ++li) {
    for (int i = 0; i < 7; ++i) {
      if (impls_[li][i] != nullptr) {
        n += impls_[li][i]->WeightBytes();
        continue;
      }
      for (const at::Tensor* t :
           {&layers_[li]->weight(i), &layers_[li]->bias(i)}) {
        if (t->defined()) {
          n += static_cast<int64_t>(t->numel() * t->element_size());
        }
      }
    }
  }
  return n;
}

at::Tensor LlamaForCausalLM::Project(size_t li, int index,
                                     const at::Tensor& x) const {
  if (const LinearImpl* impl = impls_[li][index].get()) {
    return impl->Forward(x);
  }
  return Linear(x, layers_[li]->weight(index), layers_[li]->bias(index));
}

bool LlamaForCausalLM::PackingIntact() const {
  if (packed_qkv_.size() != layers_.size()) return false;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const LlamaDecoderLayer& l = *layers_[i];
    if (!GroupSwapped(i, 0, 3) &&
        (!Packed(packed_qkv_[i], {&l.wq, &l.wk, &l.wv}) ||
         (l.bq.defined() &&
          !Packed(packed_qkv_bias_[i], {&l.bq, &l.bk, &l.bv})))) {
      return false;
    }
    if (!GroupSwapped(i, 4, 2) && !Packed(packed_gate_up_[i], {&l.wg, &l.wu})) {
      return false;
    }
  }
  return true;
}

at::Tensor LlamaForCausalLM::RmsNorm(const at::Tensor& x,
                                     const at::Tensor& weight) const {
  // As transformers' LlamaRMSNorm: statistics in float32, then back to the
  // input dtype before the weight is applied.
  at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  at::Tensor r = at::rsqrt(
      xf.pow(2).mean(-1, /*keepdim=*/true).add_(config_.rms_norm_eps));
  at::Tensor y = xf * r;
  if (x.scalar_type() != at::kFloat) y = y.to(x.scalar_type());
  return y * weight;
}

// ---------------------------------------------------------------------------------
// Training / teacher-forcing forward.

// What every layer of a teacher-forced forward shares.
struct LlamaForCausalLM::LayerContext {
  int64_t B = 0, T = 0;
  at::Tensor mask;      // Additive [B or 1, 1, T, T].
  at::Tensor cos, sin;  // [1, 1, T, D].
  double scale = 1;
};

LlamaForCausalLM::LayerContext LlamaForCausalLM::MakeLayerContext(
    int64_t B, int64_t T,
    const std::optional<at::Tensor>& attention_mask) const {
  const c10::Device dev = device();
  const c10::ScalarType dt = dtype();
  LayerContext c;
  c.B = B;
  c.T = T;
  // Additive mask [B or 1, 1, T, T]: causal, plus padded keys.
  const double min_value = MaskValue(dt);
  at::Tensor mask = torch::full({T, T}, min_value,
                                torch::TensorOptions().device(dev).dtype(dt))
                        .triu_(1);
  mask = mask.view({1, 1, T, T});
  if (attention_mask.has_value() && attention_mask->defined()) {
    TORCH_CHECK(attention_mask->dim() == 2 && attention_mask->size(0) == B &&
                    attention_mask->size(1) == T,
                "attention_mask must have the shape of input_ids, got ",
                attention_mask->sizes());
    at::Tensor keep = attention_mask->to(dev).to(at::kBool).view({B, 1, 1, T});
    mask = mask.masked_fill(keep.logical_not(), min_value);
  }
  c.mask = mask;
  at::Tensor positions = torch::arange(T, torch::kLong);
  auto [cos, sin] =
      RopeTables(inv_freq_, positions, /*signed_sin=*/false, dev, dt);
  c.cos = cos.view({1, 1, T, head_dim_});
  c.sin = sin.view({1, 1, T, head_dim_});
  c.scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  return c;
}

at::Tensor LlamaForCausalLM::LayerForward(int64_t li, at::Tensor x,
                                          const LayerContext& c,
                                          at::Tensor* attention_probs,
                                          LayerTaps* taps) {
  const int64_t B = c.B, T = c.T;
  const int64_t H = num_heads_, KV = num_kv_heads_, D = head_dim_, G = H / KV;
  const c10::ScalarType dt = dtype();
  const LlamaDecoderLayer& l = *layers_[li];
  const std::vector<std::shared_ptr<const LinearImpl>>& impls = impls_[li];
  // at::linear on [B, T, in] (autograd), or the swapped-in implementation on
  // the flattened rows.
  auto proj = [&](int i, const at::Tensor& in) {
    if (const LinearImpl* impl = impls[i].get()) {
      return impl->Forward(in.reshape({B * T, in.size(-1)}).contiguous())
          .view({B, T, -1});
    }
    return at::linear(in, l.weight(i), OptionalBias(l.bias(i)));
  };
  auto stop = [&](int stage) {
    return taps != nullptr && taps->stop_after == stage;
  };
  at::Tensor h = RmsNorm(x, l.norm_in);
  if (taps) taps->attn_in = h;
  if (stop(1)) return {};
  at::Tensor q = proj(0, h).view({B, T, H, D}).transpose(1, 2);
  at::Tensor k = proj(1, h).view({B, T, KV, D}).transpose(1, 2);
  at::Tensor v = proj(2, h).view({B, T, KV, D}).transpose(1, 2);
  q = q * c.cos + RotateHalf(q) * c.sin;
  k = k * c.cos + RotateHalf(k) * c.sin;
  // Grouped-query attention without materialising repeated K/V: the G query
  // heads that share a KV head are stacked along the row dimension.
  at::Tensor scores =
      at::matmul(q.reshape({B, KV, G * T, D}), k.transpose(2, 3));
  scores = scores.view({B, H, T, T}) * c.scale + c.mask;
  at::Tensor probs = dt == at::kFloat
                         ? at::softmax(scores, -1)
                         : at::softmax(scores, -1, at::kFloat).to(dt);
  if (attention_probs != nullptr) *attention_probs = probs;
  at::Tensor ctx =
      at::matmul(probs.reshape({B, KV, G * T, T}), v);  // [B, KV, G*T, D]
  ctx = ctx.view({B, H, T, D}).transpose(1, 2).reshape({B, T, H * D});
  if (taps) taps->o_in = ctx;
  if (stop(2)) return {};
  at::Tensor attn_out = proj(3, ctx);
  if (taps) taps->attn_out = attn_out;
  x = x + attn_out;
  h = RmsNorm(x, l.norm_post);
  if (taps) taps->mlp_in = h;
  if (stop(3)) return {};
  at::Tensor act = at::silu(proj(4, h)) * proj(5, h);
  if (taps) taps->down_in = act;
  if (stop(4)) return {};
  return x + proj(6, act);
}

at::Tensor LlamaForCausalLM::ForwardLayer(int64_t layer, const at::Tensor& x,
                                          LayerTaps* taps) {
  TORCH_CHECK(layer >= 0 && layer < num_layers(), "layer ", layer,
              " out of range");
  TORCH_CHECK(x.dim() == 3 && x.size(2) == config_.hidden_size,
              "x must be [batch, seq, hidden], got ", x.sizes());
  const LayerContext c = MakeLayerContext(x.size(0), x.size(1), std::nullopt);
  return LayerForward(layer, x.to(device(), dtype()), c, nullptr, taps);
}

ForwardOutput LlamaForCausalLM::Forward(
    const at::Tensor& input_ids,
    const std::optional<at::Tensor>& attention_mask,
    const ForwardOptions& options) {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [batch, seq], got ",
              input_ids.sizes());
  const LayerContext c =
      MakeLayerContext(input_ids.size(0), input_ids.size(1), attention_mask);
  at::Tensor ids = input_ids.to(device(), at::kLong);

  ForwardOutput out;
  at::Tensor x = at::embedding(inner_->embed, ids);
  for (size_t li = 0; li < layers_.size(); ++li) {
    if (options.output_hidden_states) out.hidden_states.push_back(x);
    at::Tensor probs;
    x = LayerForward(static_cast<int64_t>(li), x, c,
                     options.output_attentions ? &probs : nullptr, nullptr);
    if (options.output_attentions) out.attentions.push_back(probs);
  }
  x = RmsNorm(x, inner_->norm);
  if (options.output_hidden_states) out.hidden_states.push_back(x);
  out.logits = at::linear(x, lm_head_weight());
  return out;
}

absl::StatusOr<ForwardOutput> LlamaForCausalLM::ForwardChecked(
    const at::Tensor& input_ids,
    const std::optional<at::Tensor>& attention_mask,
    const ForwardOptions& options) {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.size(1) == 0) {
    return absl::InvalidArgumentError(
        "input_ids must be a non-empty [batch, seq] tensor");
  }
  try {
    at::Tensor ids = input_ids.to(at::kLong);
    if (ids.numel() > 0 && (ids.min().item<int64_t>() < 0 ||
                            ids.max().item<int64_t>() >= config_.vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input_ids: token id outside [0, ", config_.vocab_size, ")"));
    }
    return Forward(ids, attention_mask, options);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("forward: ", e.what_without_backtrace()));
  }
}

// ---------------------------------------------------------------------------------
// Inference step.

// The flattened layout of one step. Tokens of single-token entries (decode)
// come first, so that their attention runs as one batched product over padded
// block tables; multi-token entries (prefill) follow, one attention call each.
struct LlamaForCausalLM::StepPlan {
  int64_t num_tokens = 0;
  std::vector<int64_t> token_ids, positions, slots;

  int64_t num_decode = 0;      // Rows [0, num_decode).
  int64_t decode_max_len = 0;  // Longest decode context (after this step).
  int64_t decode_max_blocks = 0;
  std::vector<int64_t> decode_lengths;
  std::vector<int64_t>
      decode_blocks;  // [num_decode * decode_max_blocks], padded.

  struct Prefill {
    int64_t row = 0, count = 0, past = 0;
    std::vector<int64_t> blocks;
  };
  std::vector<Prefill> prefills;

  std::vector<int64_t>
      output_rows;               // Rows whose logits are returned, in order.
  bool output_identity = false;  // output_rows == 0..num_tokens-1.
};

absl::StatusOr<at::Tensor> LlamaForCausalLM::Step(
    KvCache& cache, const std::vector<SequenceInput>& batch,
    bool all_positions) {
  const KvCacheDims& dims = cache.dims();
  if (dims.num_layers != config_.num_hidden_layers ||
      dims.num_kv_heads != num_kv_heads_ || dims.head_dim != head_dim_ ||
      dims.device != device() || dims.dtype != dtype()) {
    return absl::FailedPreconditionError(
        "KV cache geometry, device or dtype does not match the model (use "
        "CacheDims())");
  }
  if (batch.empty()) return absl::InvalidArgumentError("step batch is empty");
  std::unordered_set<SequenceId> seen;
  std::vector<std::pair<SequenceId, int64_t>> growth;
  growth.reserve(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceInput& in = batch[i];
    if (!seen.insert(in.id).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "batch[", i, "]: sequence ", in.id, " appears twice in one step"));
    }
    if (!cache.Contains(in.id)) {
      return absl::NotFoundError(absl::StrCat(
          "batch[", i, "]: sequence ", in.id, " is not in the KV cache"));
    }
    if (in.tokens.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch[", i, "].tokens is empty"));
    }
    for (size_t t = 0; t < in.tokens.size(); ++t) {
      if (in.tokens[t] < 0 || in.tokens[t] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "batch[", i, "].tokens[", t, "] = ", in.tokens[t],
            " is outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
    const int64_t end =
        cache.SequenceLength(in.id) + static_cast<int64_t>(in.tokens.size());
    if (end > config_.max_position_embeddings) {
      return absl::OutOfRangeError(
          absl::StrCat("batch[", i, "]: sequence ", in.id, " would reach ", end,
                       " tokens, beyond max_position_embeddings ",
                       config_.max_position_embeddings));
    }
    growth.emplace_back(in.id, static_cast<int64_t>(in.tokens.size()));
  }
  if (absl::Status s = cache.Reserve(growth); !s.ok()) return s;

  // Lay out the step: decode entries first, then prefill entries.
  StepPlan plan;
  std::vector<int64_t> first_row(batch.size());
  auto add_tokens = [&](size_t i) {
    const SequenceInput& in = batch[i];
    const int64_t past = cache.SequenceLength(in.id);
    first_row[i] = plan.num_tokens;
    for (size_t t = 0; t < in.tokens.size(); ++t) {
      plan.token_ids.push_back(in.tokens[t]);
      plan.positions.push_back(past + static_cast<int64_t>(t));
      plan.slots.push_back(cache.Slot(in.id, past + static_cast<int64_t>(t)));
    }
    plan.num_tokens += static_cast<int64_t>(in.tokens.size());
  };
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.size() != 1) continue;
    add_tokens(i);
    const int64_t len = cache.SequenceLength(batch[i].id) + 1;
    plan.decode_lengths.push_back(len);
    plan.decode_max_len = std::max(plan.decode_max_len, len);
  }
  plan.num_decode = plan.num_tokens;
  plan.decode_max_blocks =
      (plan.decode_max_len + cache.block_size() - 1) / cache.block_size();
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.size() != 1) continue;
    const std::vector<int32_t>& table = cache.BlockTable(batch[i].id);
    for (int64_t b = 0; b < plan.decode_max_blocks; ++b) {
      // Padding repeats block 0 of the table; those positions are masked.
      plan.decode_blocks.push_back(
          b < static_cast<int64_t>(table.size()) ? table[b] : table[0]);
    }
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.size() == 1) continue;
    StepPlan::Prefill p;
    p.row = plan.num_tokens;
    p.count = static_cast<int64_t>(batch[i].tokens.size());
    p.past = cache.SequenceLength(batch[i].id);
    add_tokens(i);
    if (p.past > 0) {
      const std::vector<int32_t>& table = cache.BlockTable(batch[i].id);
      p.blocks.assign(table.begin(), table.end());
    }
    plan.prefills.push_back(std::move(p));
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t n = static_cast<int64_t>(batch[i].tokens.size());
    if (all_positions) {
      for (int64_t t = 0; t < n; ++t)
        plan.output_rows.push_back(first_row[i] + t);
    } else {
      plan.output_rows.push_back(first_row[i] + n - 1);
    }
  }
  plan.output_identity = all_positions;
  for (size_t r = 0; plan.output_identity && r < plan.output_rows.size(); ++r) {
    plan.output_identity = plan.output_rows[r] == static_cast<int64_t>(r);
  }

  at::Tensor logits;
  try {
    logits = StepImpl(cache, plan);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("model step failed: ", e.what_without_backtrace()));
  }
  for (const SequenceInput& in : batch) {
    cache.Advance(in.id, static_cast<int64_t>(in.tokens.size()));
  }
  return logits;
}

at::Tensor LlamaForCausalLM::StepImpl(KvCache& cache, const StepPlan& plan) {
  if (!PackingIntact()) PackForInference();
  c10::InferenceMode inference_mode;
  const c10::Device dev = device();
  const c10::ScalarType dt = dtype();
  const int64_t N = plan.num_tokens;
  const int64_t H = num_heads_, KV = num_kv_heads_, D = head_dim_, G = H / KV;
  const int64_t bs = cache.block_size();
  const int64_t nblocks = cache.num_blocks();
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const double min_value = MaskValue(dt);
  const auto long_cpu = torch::TensorOptions().dtype(torch::kLong);
  auto to_long = [&](const std::vector<int64_t>& v) {
    // from_blob does not copy; clone only when the data must move to a device.
    at::Tensor t = torch::from_blob(const_cast<int64_t*>(v.data()),
                                    {static_cast<int64_t>(v.size())}, long_cpu);
    return dev.is_cpu() ? t : t.to(dev);
  };

  at::Tensor ids = to_long(plan.token_ids);
  at::Tensor slots = to_long(plan.slots);
  at::Tensor positions = torch::from_blob(
      const_cast<int64_t*>(plan.positions.data()), {N}, long_cpu);
  auto [cos, sin] =
      RopeTables(inv_freq_, positions, /*signed_sin=*/true, dev, dt);
  cos = cos.view({N, 1, D});
  sin = sin.view({N, 1, D});

  // Float32 on the CPU runs the fused kernels of cpu_kernels.h; other devices
  // and dtypes (CUDA) run the same computation as tensor ops.
  const bool fused = dev.is_cpu() && dt == at::kFloat;

  // Tensor path, decode group: gather indices and padding mask, shared by all
  // layers (the fused kernel reads the block tables directly).
  const int64_t Dn = plan.num_decode;
  at::Tensor decode_blocks, decode_mask;
  int64_t decode_len = 0;
  if (Dn > 0 && !fused) {
    decode_blocks = to_long(plan.decode_blocks);
    decode_len = plan.decode_max_len;
    if (Dn > 1) {
      std::vector<float> mask(Dn * decode_len, 0.0f);
      for (int64_t i = 0; i < Dn; ++i) {
        for (int64_t j = plan.decode_lengths[i]; j < decode_len; ++j) {
          mask[i * decode_len + j] = static_cast<float>(min_value);
        }
      }
      decode_mask =
          torch::from_blob(mask.data(), {1, Dn, 1, decode_len}, torch::kFloat)
              .to(dev, dt, /*non_blocking=*/false, /*copy=*/true);
    }
  }
  std::vector<at::Tensor> prefill_masks;
  std::vector<at::Tensor> prefill_blocks;
  for (const StepPlan::Prefill& p : plan.prefills) {
    prefill_masks.push_back(
        torch::full({p.count, p.past + p.count}, min_value,
                    torch::TensorOptions().device(dev).dtype(dt))
            .triu_(p.past + 1));
    prefill_blocks.push_back(p.past > 0 ? to_long(p.blocks) : at::Tensor());
  }

  auto softmax = [&](const at::Tensor& s) {
    return dt == at::kFloat ? s.softmax(-1)
                            : at::softmax(s, -1, at::kFloat).to(dt);
  };

  auto rms_norm = [&](const at::Tensor& v, const at::Tensor& w) {
    return fused ? RmsNormF32(v, w, config_.rms_norm_eps) : RmsNorm(v, w);
  };
  at::Tensor cos_rows = cos.view({N, D}), sin_rows = sin.view({N, D});

  at::Tensor x = inner_->embed.index_select(0, ids);  // [N, hidden]
  at::Tensor ctx = torch::empty({N, H * D}, x.options());
  for (size_t li = 0; li < layers_.size(); ++li) {
    const LlamaDecoderLayer& l = *layers_[li];
    at::Tensor h = rms_norm(x, l.norm_in);
    at::Tensor qkv = (packed_qkv_[li].defined()
                          ? Linear(h, packed_qkv_[li], packed_qkv_bias_[li])
                          : at::cat({Project(li, 0, h), Project(li, 1, h),
                                     Project(li, 2, h)},
                                    1))
                         .view({N, H + 2 * KV, D});
    // Layer storage is [2 * KV, slots, D]: keys, then values.
    at::Tensor store = cache.layer(static_cast<int64_t>(li));
    if (fused) {
      RopeAndStoreF32(qkv, cos_rows, sin_rows, H, KV, D, store,
                      plan.slots.data());
    } else {
      at::Tensor qk = qkv.narrow(1, 0, H + KV);
      at::Tensor rolled = qk.roll(D / 2, -1);
      qk.mul_(cos).addcmul_(rolled, sin);
      store.index_copy_(1, slots, qkv.narrow(1, H, 2 * KV).transpose(0, 1));
    }

    if (Dn > 0 && fused) {
      PagedDecodeAttentionF32(qkv, Dn, H, KV, D, store, bs,
                              plan.decode_blocks.data(), plan.decode_max_blocks,
                              plan.decode_lengths.data(), scale, ctx);
    } else if (Dn > 0) {
      // q: [KV * Dn, G, D] (KV-major so that it lines up with the gathered
      // K/V).
      at::Tensor q = qkv.narrow(0, 0, Dn)
                         .narrow(1, 0, H)
                         .reshape({Dn, KV, G, D})
                         .permute({1, 0, 2, 3})
                         .reshape({KV * Dn, G, D});
      // [2 * KV, Dn * max_blocks, bs * D] -> keys and values [KV * Dn, L, D].
      at::Tensor kv = store.view({2 * KV, nblocks, bs * D})
                          .index_select(1, decode_blocks)
                          .view({2, KV * Dn, plan.decode_max_blocks * bs, D});
      at::Tensor k = kv[0], v = kv[1];
      if (Dn == 1) {
        k = k.narrow(1, 0, decode_len);
        v = v.narrow(1, 0, decode_len);
      }
      at::Tensor scores =
          at::bmm(q, k.transpose(1, 2)).mul_(scale);  // [KV*Dn, G, L]
      if (Dn > 1) {
        scores = scores.view({KV, Dn, G, -1})
                     .narrow(3, 0, decode_len)
                     .add(decode_mask);
      }
      at::Tensor probs = softmax(scores).reshape({KV * Dn, G, -1});
      if (Dn > 1) v = v.narrow(1, 0, decode_len);
      at::Tensor o = at::bmm(probs, v);  // [KV * Dn, G, D]
      ctx.narrow(0, 0, Dn)
          .view({Dn, KV, G, D})
          .copy_(o.view({KV, Dn, G, D}).permute({1, 0, 2, 3}));
    }
    for (size_t pi = 0; pi < plan.prefills.size(); ++pi) {
      const StepPlan::Prefill& p = plan.prefills[pi];
      const int64_t T = p.count;
      at::Tensor rows = qkv.narrow(0, p.row, T);
      // Queries of the G heads sharing a KV head stacked: [KV, G * T, D].
      at::Tensor q = rows.narrow(1, 0, H)
                         .reshape({T, KV, G, D})
                         .permute({1, 2, 0, 3})
                         .reshape({KV, G * T, D});
      at::Tensor k, v;
      if (p.past == 0) {
        k = rows.narrow(1, H, KV).transpose(0, 1);  // [KV, T, D]
        v = rows.narrow(1, H + KV, KV).transpose(0, 1);
      } else {
        const int64_t nb = static_cast<int64_t>(p.blocks.size());
        at::Tensor kv = store.view({2 * KV, nblocks, bs * D})
                            .index_select(1, prefill_blocks[pi])
                            .view({2 * KV, nb * bs, D})
                            .narrow(1, 0, p.past + T);
        k = kv.narrow(0, 0, KV);
        v = kv.narrow(0, KV, KV);
      }
      at::Tensor scores =
          at::matmul(q, k.transpose(1, 2)).mul_(scale);  // [KV, G*T, L]
      scores = scores.view({KV, G, T, -1}).add_(prefill_masks[pi]);
      at::Tensor probs = softmax(scores).view({KV, G * T, -1});
      at::Tensor o = at::matmul(probs, v);  // [KV, G*T, D]
      ctx.narrow(0, p.row, T)
          .view({T, KV, G, D})
          .copy_(o.view({KV, G, T, D}).permute({2, 0, 1, 3}));
    }

    x.add_(Project(li, 3, ctx));
    h = rms_norm(x, l.norm_post);
    const int64_t I = config_.intermediate_size;
    at::Tensor gu = packed_gate_up_[li].defined()
                        ? Linear(h, packed_gate_up_[li], at::Tensor())
                        : at::cat({Project(li, 4, h), Project(li, 5, h)}, 1);
    at::Tensor act =
        fused ? SiluMulF32(gu, I)
              : at::silu(gu.narrow(1, 0, I)).mul_(gu.narrow(1, I, I));
    x.add_(Project(li, 6, act));
  }

  if (!plan.output_identity) x = x.index_select(0, to_long(plan.output_rows));
  x = rms_norm(x, inner_->norm);
  at::Tensor logits = Linear(x, lm_head_weight(), at::Tensor());
  return logits.scalar_type() == at::kFloat ? logits : logits.to(at::kFloat);
}

}  // namespace hearth::model
