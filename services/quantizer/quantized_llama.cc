#include "services/quantizer/quantized_llama.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/formats/gguf_llama.h"
#include "common/formats/safetensors.h"
#include "common/model/cpu_kernels.h"
#include "common/model/llama_model.h"
#include "common/status/status_macros.h"

namespace hearth::quantizer {
namespace {

c10::ScalarType TorchType(formats::DType d) {
  switch (d) {
    case formats::DType::kF32:
      return at::kFloat;
    case formats::DType::kF16:
      return at::kHalf;
    case formats::DType::kBF16:
      return at::kBFloat16;
    case formats::DType::kF64:
      return at::kDouble;
    case formats::DType::kI8:
      return at::kChar;
    case formats::DType::kI16:
      return at::kShort;
    case formats::DType::kI32:
      return at::kInt;
    case formats::DType::kI64:
      return at::kLong;
    case formats::DType::kU8:
      return at::kByte;
    case formats::DType::kBool:
      return at::kBool;
  }
  return at::kByte;
}

// An owned copy of a mapped tensor, in its stored dtype.
at::Tensor FromView(const formats::TensorView& v) {
  return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape,
                          torch::TensorOptions().dtype(TorchType(v.dtype)))
      .clone();
}

bool IsFloat(formats::DType d) {
  return d == formats::DType::kF32 || d == formats::DType::kF16 ||
         d == formats::DType::kBF16 || d == formats::DType::kF64;
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor flat = x.reshape({-1, x.size(-1)}).contiguous();
  return model::RmsNormF32(flat, w, eps).view(x.sizes());
}

// Re-encodes dequantized GGUF Q4_0 / Q8_0 rows with ggml's own rules, which
// reproduces the stored codes and fp16 scales exactly (the block's extreme
// value sits on the grid end), so nothing is lost by the float detour.
QuantizedWeight FromGgmlBlocks(const at::Tensor& w, formats::GgmlType type) {
  const int64_t out = w.size(0), in = w.size(1);
  at::Tensor g = w.reshape({out, in / 32, 32});
  QuantizedWeight q;
  q.g_idx = SequentialGroupIndex(in, 32);
  if (type == formats::GgmlType::kQ8_0) {
    at::Tensor amax = std::get<0>(g.abs().max(2));
    at::Tensor d = (amax / 127).to(at::kHalf).to(at::kFloat);
    at::Tensor id = at::where(d != 0, 1.0 / d, torch::zeros_like(d));
    at::Tensor c = (g * id.unsqueeze(2)).round().clamp(-127, 127) + 128;
    q.scheme = {8, 32, true};
    q.codes = c.reshape({out, in}).to(at::kByte);
    q.scales = d;
    q.zeros = torch::full({out, in / 32}, 128, torch::kInt);
  } else {
    at::Tensor idx = std::get<1>(g.abs().max(2, true));
    at::Tensor mx = g.gather(2, idx).squeeze(2);
    at::Tensor d = (mx / -8).to(at::kHalf).to(at::kFloat);
    at::Tensor id = at::where(d != 0, 1.0 / d, torch::zeros_like(d));
    at::Tensor c = (g * id.unsqueeze(2) + 8.5).floor().clamp(0, 15);
    q.scheme = {4, 32, true};
    q.codes = c.reshape({out, in}).to(at::kByte);
    q.scales = d;
    q.zeros = torch::full({out, in / 32}, 8, torch::kInt);
  }
  return q;
}

}  // namespace

const std::vector<std::string>& LayerLinearNames() {
  static const std::vector<std::string> names = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
      "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
      "mlp.down_proj"};
  return names;
}

absl::StatusOr<std::map<std::string, at::Tensor>> LoadFloatTensors(
    const std::string& folder) {
  HEARTH_ASSIGN_OR_RETURN(auto reader, formats::CheckpointReader::Open(folder));
  std::map<std::string, at::Tensor> out;
  for (const std::string& name : reader->TensorNames()) {
    const formats::TensorView* v = reader->Find(name);
    if (!IsFloat(v->dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat(folder, ": tensor ", name, " is not a float tensor"));
    }
    out[name] = FromView(*v).to(at::kFloat);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<QuantizedLlama>> QuantizedLlama::Skeleton(
    const formats::LlamaConfig& config,
    const std::map<std::string, at::Tensor>& t) {
  HEARTH_RETURN_IF_ERROR(formats::Validate(config));
  auto get = [&](const std::string& name,
                 std::vector<int64_t> shape) -> absl::StatusOr<at::Tensor> {
    auto it = t.find(name);
    if (it == t.end()) {
      return absl::InvalidArgumentError(absl::StrCat("missing tensor ", name));
    }
    if (it->second.sizes().vec() != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, " has the wrong shape"));
    }
    return it->second.to(at::kFloat).contiguous();
  };
  std::unique_ptr<QuantizedLlama> m(new QuantizedLlama());
  m->config_ = config;
  const int64_t h = config.hidden_size;
  HEARTH_ASSIGN_OR_RETURN(
      m->embed_, get("model.embed_tokens.weight", {config.vocab_size, h}));
  HEARTH_ASSIGN_OR_RETURN(m->final_norm_, get("model.norm.weight", {h}));
  at::Tensor head = m->embed_;
  if (!config.tie_word_embeddings) {
    HEARTH_ASSIGN_OR_RETURN(head,
                            get("lm_head.weight", {config.vocab_size, h}));
  }
  m->lm_head_ = std::make_unique<FloatLinear>(head, at::Tensor());
  m->inv_freq_ = model::RopeInverseFrequencies(config);
  m->layers_.resize(config.num_hidden_layers);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    HEARTH_ASSIGN_OR_RETURN(m->layers_[i].norm_in,
                            get(p + "input_layernorm.weight", {h}));
    HEARTH_ASSIGN_OR_RETURN(m->layers_[i].norm_post,
                            get(p + "post_attention_layernorm.weight", {h}));
  }
  return m;
}

absl::StatusOr<std::unique_ptr<QuantizedLlama>>
QuantizedLlama::FromFloatTensors(const formats::LlamaConfig& config,
                                 const std::map<std::string, at::Tensor>& t) {
  HEARTH_ASSIGN_OR_RETURN(auto m, Skeleton(config, t));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    QuantizedLayer& l = m->layers_[i];
    std::unique_ptr<LinearOp>* slots[] = {&l.q,    &l.k,  &l.v,   &l.o,
                                          &l.gate, &l.up, &l.down};
    for (size_t j = 0; j < 7; ++j) {
      const std::string p =
          absl::StrCat("model.layers.", i, ".", LayerLinearNames()[j]);
      auto w = t.find(p + ".weight");
      if (w == t.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("missing tensor ", p, ".weight"));
      }
      auto b = t.find(p + ".bias");
      *slots[j] = std::make_unique<FloatLinear>(
          w->second.to(at::kFloat).contiguous(),
          b == t.end() ? at::Tensor() : b->second.to(at::kFloat).contiguous());
    }
  }
  return m;
}

absl::StatusOr<std::unique_ptr<QuantizedLlama>> QuantizedLlama::Load(
    const std::string& path) {
  torch::NoGradGuard no_grad;
  if (!std::filesystem::exists(path)) {
    return absl::NotFoundError(absl::StrCat("model not found: ", path));
  }
  if (absl::EndsWith(path, ".gguf")) {
    HEARTH_ASSIGN_OR_RETURN(formats::LoadedGguf g,
                            formats::LoadLlamaGguf(path));
    std::map<std::string, at::Tensor> t;
    for (auto& [name, data] : g.tensors) {
      t[name] =
          torch::from_blob(data.data(), g.shapes[name], torch::kFloat).clone();
      std::vector<float>().swap(data);  // release as we go
    }
    HEARTH_ASSIGN_OR_RETURN(auto m, Skeleton(g.config, t));
    for (int64_t i = 0; i < g.config.num_hidden_layers; ++i) {
      QuantizedLayer& l = m->layers_[i];
      std::unique_ptr<LinearOp>* slots[] = {&l.q,    &l.k,  &l.v,   &l.o,
                                            &l.gate, &l.up, &l.down};
      for (size_t j = 0; j < 7; ++j) {
        const std::string p =
            absl::StrCat("model.layers.", i, ".", LayerLinearNames()[j]);
        auto w = t.find(p + ".weight");
        if (w == t.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": missing tensor ", p, ".weight"));
        }
        auto b = t.find(p + ".bias");
        at::Tensor bias = b == t.end() ? at::Tensor() : b->second;
        const formats::GgmlType type = g.stored_types[p + ".weight"];
        if (type == formats::GgmlType::kQ4_0 ||
            type == formats::GgmlType::kQ8_0) {
          HEARTH_ASSIGN_OR_RETURN(
              *slots[j],
              QuantizedLinear::Create(FromGgmlBlocks(w->second, type), bias,
                                      ActivationMode::kNone));
        } else {
          *slots[j] = std::make_unique<FloatLinear>(w->second, bias);
        }
      }
    }
    return m;
  }

  HEARTH_ASSIGN_OR_RETURN(formats::LlamaConfig config,
                          formats::LoadLlamaConfig(path + "/config.json"));
  HEARTH_ASSIGN_OR_RETURN(auto reader, formats::CheckpointReader::Open(path));
  const nlohmann::json& qc = config.quantization_config;
  std::string method;
  if (qc.is_object() && qc.contains("quant_method")) {
    method = qc["quant_method"].get<std::string>();
  }
  std::map<std::string, at::Tensor> floats;
  for (const std::string& name : reader->TensorNames()) {
    const formats::TensorView* v = reader->Find(name);
    if (IsFloat(v->dtype) &&
        (absl::EndsWith(name, "weight") || absl::EndsWith(name, ".bias"))) {
      floats[name] = FromView(*v).to(at::kFloat);
    }
  }
  if (method.empty()) return FromFloatTensors(config, floats);
  if (method != "gptq" && method != "awq" && method != "hearth") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": quantization_config.quant_method \"", method,
                     "\" is not supported (gptq, awq, hearth)"));
  }
  HEARTH_ASSIGN_OR_RETURN(auto m, Skeleton(config, floats));
  auto need = [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
    const formats::TensorView* v = reader->Find(name);
    if (v == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": missing tensor ", name));
    }
    return FromView(*v);
  };
  const int bits = qc.value("bits", qc.value("w_bit", 4));
  const int group = qc.value("group_size", qc.value("q_group_size", -1));
  const bool sym = qc.value("sym", false);
  std::string act = qc.value("activation", std::string("none"));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    QuantizedLayer& l = m->layers_[i];
    std::unique_ptr<LinearOp>* slots[] = {&l.q,    &l.k,  &l.v,   &l.o,
                                          &l.gate, &l.up, &l.down};
    for (size_t j = 0; j < 7; ++j) {
      const std::string p =
          absl::StrCat("model.layers.", i, ".", LayerLinearNames()[j]);
      at::Tensor bias;
      if (auto b = floats.find(p + ".bias"); b != floats.end()) {
        bias = b->second;
      }
      QuantizedWeight qw;
      ActivationMode mode = ActivationMode::kNone;
      double input_scale = 0;
      if (method == "gptq") {
        GptqTensors gt;
        HEARTH_ASSIGN_OR_RETURN(gt.qweight, need(p + ".qweight"));
        HEARTH_ASSIGN_OR_RETURN(gt.qzeros, need(p + ".qzeros"));
        HEARTH_ASSIGN_OR_RETURN(gt.scales, need(p + ".scales"));
        if (reader->Find(p + ".g_idx") != nullptr) {
          HEARTH_ASSIGN_OR_RETURN(gt.g_idx, need(p + ".g_idx"));
        } else {
          const int64_t in = gt.qweight.size(0) * (32 / bits);
          gt.g_idx = SequentialGroupIndex(in, group <= 0 ? in : group);
        }
        HEARTH_ASSIGN_OR_RETURN(qw, UnpackGptq(gt, bits, group, sym));
      } else if (method == "awq") {
        AwqTensors at_;
        HEARTH_ASSIGN_OR_RETURN(at_.qweight, need(p + ".qweight"));
        HEARTH_ASSIGN_OR_RETURN(at_.qzeros, need(p + ".qzeros"));
        HEARTH_ASSIGN_OR_RETURN(at_.scales, need(p + ".scales"));
        HEARTH_ASSIGN_OR_RETURN(qw, UnpackAwq(at_, group));
      } else {
        at::Tensor w8, ws;
        HEARTH_ASSIGN_OR_RETURN(w8, need(p + ".weight"));
        HEARTH_ASSIGN_OR_RETURN(ws, need(p + ".weight_scale"));
        if (w8.scalar_type() != at::kChar || ws.dim() != 2 ||
            ws.size(0) != w8.size(0)) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": ", p, " is not hearth INT8 layout"));
        }
        qw.scheme = {8, group <= 0 ? 0 : group, true};
        qw.codes = (w8.to(at::kInt) + 128).to(at::kByte);
        qw.scales = ws.to(at::kFloat);
        qw.zeros = torch::full(ws.sizes(), 128, torch::kInt);
        if (reader->Find(p + ".weight_zero_point") != nullptr) {
          at::Tensor zp;
          HEARTH_ASSIGN_OR_RETURN(zp, need(p + ".weight_zero_point"));
          qw.zeros = zp.to(at::kInt) + 128;
        }
        qw.g_idx = SequentialGroupIndex(w8.size(1), w8.size(1) / ws.size(1));
        if (act == "dynamic") mode = ActivationMode::kDynamic;
        if (act == "static") {
          mode = ActivationMode::kStatic;
          at::Tensor s;
          HEARTH_ASSIGN_OR_RETURN(s, need(p + ".input_scale"));
          input_scale = s.to(at::kFloat).reshape({-1})[0].item<double>();
        }
      }
      HEARTH_ASSIGN_OR_RETURN(
          *slots[j], QuantizedLinear::Create(qw, bias, mode, input_scale));
    }
  }
  return m;
}

at::Tensor QuantizedLlama::Embed(const at::Tensor& ids) const {
  return at::embedding(embed_, ids.to(at::kLong));
}

at::Tensor QuantizedLlama::RunLayer(const QuantizedLayer& l, int64_t li,
                                    const at::Tensor& x, int64_t pos0,
                                    DecodeCache* cache, LayerTaps* taps) const {
  torch::NoGradGuard no_grad;
  const int64_t B = x.size(0), T = x.size(1), Hd = x.size(2);
  const int64_t H = config_.num_attention_heads;
  const int64_t KV = config_.num_key_value_heads;
  const int64_t D = config_.head_dim;
  const double eps = config_.rms_norm_eps;
  at::Tensor h = RmsNorm(x, l.norm_in, eps);
  if (taps) {
    taps->attn_in = h;
    if (taps->stop_after == 1) return {};
  }
  at::Tensor h2 = h.reshape({B * T, Hd});
  at::Tensor q = l.q->Forward(h2).view({B, T, H, D}).transpose(1, 2);
  at::Tensor k = l.k->Forward(h2).view({B, T, KV, D}).transpose(1, 2);
  at::Tensor v = l.v->Forward(h2).view({B, T, KV, D}).transpose(1, 2);
  at::Tensor pos = torch::arange(pos0, pos0 + T, torch::kFloat);
  at::Tensor freqs = pos.unsqueeze(1) * inv_freq_.unsqueeze(0);
  at::Tensor emb = torch::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos().view({1, 1, T, D});
  at::Tensor sin = emb.sin().view({1, 1, T, D});
  auto rotate_half = [&](const at::Tensor& t) {
    return torch::cat({-t.narrow(-1, D / 2, D / 2), t.narrow(-1, 0, D / 2)},
                      -1);
  };
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;
  int64_t L = T;
  if (cache != nullptr) {
    cache->k[li].narrow(2, pos0, T).copy_(k);
    cache->v[li].narrow(2, pos0, T).copy_(v);
    L = pos0 + T;
    k = cache->k[li].narrow(2, 0, L);
    v = cache->v[li].narrow(2, 0, L);
  }
  const int64_t G = H / KV;
  // GQA: the G query heads of one KV head are stacked along the rows.
  at::Tensor qg = q.reshape({B, KV, G * T, D});
  at::Tensor scores = at::matmul(qg, k.transpose(2, 3)).view({B, H, T, L});
  scores.mul_(1.0 / std::sqrt(static_cast<double>(D)));
  if (T > 1) {
    at::Tensor qpos = torch::arange(pos0, pos0 + T, torch::kLong).unsqueeze(1);
    at::Tensor kpos = torch::arange(L, torch::kLong).unsqueeze(0);
    scores.masked_fill_((kpos > qpos).view({1, 1, T, L}),
                        -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1);
  at::Tensor ctx = at::matmul(probs.reshape({B, KV, G * T, L}), v)
                       .view({B, H, T, D})
                       .transpose(1, 2)
                       .reshape({B * T, H * D});
  if (taps) {
    taps->o_in = ctx.view({B, T, H * D});
    if (taps->stop_after == 2) return {};
  }
  at::Tensor attn_out = l.o->Forward(ctx).view({B, T, Hd});
  if (taps) taps->attn_out = attn_out;
  at::Tensor x1 = x + attn_out;
  at::Tensor m = RmsNorm(x1, l.norm_post, eps);
  if (taps) {
    taps->mlp_in = m;
    if (taps->stop_after == 3) return {};
  }
  at::Tensor m2 = m.reshape({B * T, Hd});
  at::Tensor act = at::silu(l.gate->Forward(m2)).mul_(l.up->Forward(m2));
  if (taps) {
    taps->down_in = act.view({B, T, -1});
    if (taps->stop_after == 4) return {};
  }
  return x1 + l.down->Forward(act).view({B, T, Hd});
}

at::Tensor QuantizedLlama::Head(const at::Tensor& x) const {
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor h = RmsNorm(x, final_norm_, config_.rms_norm_eps);
  return lm_head_->Forward(h.reshape({B * T, -1})).view({B, T, -1});
}

at::Tensor QuantizedLlama::Forward(const at::Tensor& ids) const {
  torch::NoGradGuard no_grad;
  at::Tensor x = Embed(ids);
  for (size_t i = 0; i < layers_.size(); ++i) {
    x = RunLayer(layers_[i], i, x, 0, nullptr, nullptr);
  }
  return Head(x);
}

DecodeCache QuantizedLlama::NewCache(int64_t batch, int64_t capacity) const {
  DecodeCache c;
  for (size_t i = 0; i < layers_.size(); ++i) {
    c.k.push_back(torch::zeros(
        {batch, config_.num_key_value_heads, capacity, config_.head_dim}));
    c.v.push_back(torch::zeros(
        {batch, config_.num_key_value_heads, capacity, config_.head_dim}));
  }
  return c;
}

at::Tensor QuantizedLlama::Step(DecodeCache& cache,
                                const at::Tensor& ids) const {
  torch::NoGradGuard no_grad;
  at::Tensor x = Embed(ids);
  for (size_t i = 0; i < layers_.size(); ++i) {
    x = RunLayer(layers_[i], i, x, cache.length, &cache, nullptr);
  }
  cache.length += ids.size(1);
  x = x.narrow(1, x.size(1) - 1, 1);
  return Head(x).squeeze(1);
}

int64_t QuantizedLlama::LayerLinearBytes() const {
  int64_t n = 0;
  for (const QuantizedLayer& l : layers_) {
    for (const LinearOp* op : {l.q.get(), l.k.get(), l.v.get(), l.o.get(),
                               l.gate.get(), l.up.get(), l.down.get()}) {
      n += op->WeightBytes();
    }
  }
  return n;
}

int64_t QuantizedLlama::WeightBytes() const {
  int64_t n =
      LayerLinearBytes() + embed_.numel() * 4 + final_norm_.numel() * 4 +
      static_cast<int64_t>(layers_.size()) * 2 * config_.hidden_size * 4;
  if (!config_.tie_word_embeddings) n += lm_head_->WeightBytes();
  return n;
}

std::string QuantizedLlama::Describe() const {
  return layers_.empty() ? "empty" : layers_[0].q->Describe();
}

}  // namespace hearth::quantizer
