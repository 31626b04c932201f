#include "services/quantizer/quantize_model.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/formats/safetensors.h"
#include "common/model/llama_model.h"
#include "common/model/model_loader.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"
#include "services/quantizer/awq.h"
#include "services/quantizer/smoothquant.h"

namespace hearth::quantizer {

using model::LayerLinearNames;
using model::LayerTaps;
using quant::AwqTensors;
using quant::GptqTensors;
using quant::PackAwq;
using quant::PackGptq;
using quant::QuantizedWeight;
using quant::QuantScheme;
using quant::RangeRule;
using quant::RtnQuantize;
using quant::ValidateScheme;

namespace {

namespace fs = std::filesystem;

std::string LinearPrefix(int64_t layer, const std::string& name) {
  return absl::StrCat("model.layers.", layer, ".", name);
}

RangeRule RuleFor(Method m) {
  switch (m) {
    case Method::kDynamicInt8:
    case Method::kStaticInt8:
      return RangeRule::kAbsMax;
    case Method::kAwq:
      return RangeRule::kAwq;
    default:
      return RangeRule::kGptq;
  }
}

const char* MethodName(Method m) {
  switch (m) {
    case Method::kRtn:
      return "rtn";
    case Method::kDynamicInt8:
      return "dynamic_int8";
    case Method::kStaticInt8:
      return "static_int8";
    case Method::kGptq:
      return "gptq";
    case Method::kAwq:
      return "awq";
  }
  return "?";
}

}  // namespace

absl::StatusOr<QuantizedModel> QuantizeModel(
    const formats::LlamaConfig& config,
    std::map<std::string, at::Tensor> tensors, const at::Tensor& calibration,
    const QuantizeOptions& options, const QuantizeProgressFn& progress) {
  torch::NoGradGuard no_grad;
  const Method method = options.method;
  QuantScheme scheme = options.scheme;
  if (method == Method::kDynamicInt8 || method == Method::kStaticInt8) {
    scheme.bits = 8;
    scheme.symmetric = true;
  }
  // The methods update weights and norms in place: they do so in the
  // calibration model's own copies (below), never in the caller's tensors.
  // Validate every linear's row length up front: a bad group size is the
  // caller's error, not a failure halfway through.
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    for (const std::string& n : LayerLinearNames()) {
      auto it = tensors.find(LinearPrefix(i, n) + ".weight");
      if (it == tensors.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("missing tensor ", LinearPrefix(i, n), ".weight"));
      }
      HEARTH_RETURN_IF_ERROR(ValidateScheme(scheme, it->second.size(1)));
    }
  }
  if (method == Method::kAwq && scheme.group_size == 0) {
    return absl::InvalidArgumentError(
        "group_size: AWQ needs a group size (32, 64 or 128)");
  }
  if (method == Method::kAwq && scheme.bits != 4) {
    return absl::InvalidArgumentError("bits: AWQ supports only 4 bits");
  }
  const bool needs_calibration = method == Method::kStaticInt8 ||
                                 method == Method::kGptq ||
                                 method == Method::kAwq;
  if (needs_calibration &&
      (!calibration.defined() || calibration.numel() == 0)) {
    return absl::InvalidArgumentError(
        "calibration: this method needs calibration text");
  }
  // The calibration forward runs in common/model's LlamaForCausalLM. The map
  // is pointed at its parameters, so the in-place updates below (quantized
  // weights, AWQ/SmoothQuant folding into weights and norms) are the model's.
  HEARTH_ASSIGN_OR_RETURN(auto model, model::ModelFromTensors(config, tensors));
  for (auto& item : model->named_parameters(/*recurse=*/true)) {
    tensors[item.key()] = item.value().detach();
  }
  QuantizedModel result;
  result.config = config;
  result.options = options;
  result.options.scheme = scheme;
  const int64_t L = config.num_hidden_layers;
  const RangeRule rule = RuleFor(method);

  auto quantize_rtn = [&](int64_t li, const std::string& name) {
    const std::string p = LinearPrefix(li, name);
    at::Tensor& w = tensors[p + ".weight"];
    QuantizedWeight q = RtnQuantize(w, scheme, rule);
    w.copy_(q.Dequantize());
    result.weights[p] = std::move(q);
  };

  if (!needs_calibration) {
    for (int64_t li = 0; li < L; ++li) {
      if (progress && !progress(static_cast<double>(li) / L,
                                absl::StrCat("layer ", li + 1, "/", L, ": ",
                                             MethodName(method)))) {
        return absl::CancelledError("cancelled");
      }
      for (const std::string& n : LayerLinearNames()) quantize_rtn(li, n);
    }
  } else {
    const int64_t S = calibration.size(0), T = calibration.size(1);
    const int64_t chunk = std::max<int64_t>(1, options.chunk);
    at::Tensor X = at::embedding(model->embed_tokens_weight().detach(),
                                 calibration.to(at::kLong));  // [S, T, H]
    auto for_chunks = [&](const std::function<void(int64_t, int64_t)>& fn) {
      for (int64_t s0 = 0; s0 < S; s0 += chunk) fn(s0, std::min(chunk, S - s0));
    };
    for (int64_t li = 0; li < L; ++li) {
      at::Tensor& norm_in =
          tensors[LinearPrefix(li, "input_layernorm") + ".weight"];
      at::Tensor& norm_post =
          tensors[LinearPrefix(li, "post_attention_layernorm") + ".weight"];
      auto W = [&](const std::string& n) -> at::Tensor& {
        return tensors[LinearPrefix(li, n) + ".weight"];
      };
      auto B = [&](const std::string& n) -> at::Tensor {
        auto it = tensors.find(LinearPrefix(li, n) + ".bias");
        return it == tensors.end() ? at::Tensor() : it->second;
      };
      auto report = [&](double stage, const std::string& what) {
        return !progress ||
               progress((li + stage) / L,
                        absl::StrCat("layer ", li + 1, "/", L, ": ",
                                     MethodName(method), " ", what));
      };
      auto next_inputs = [&]() {
        for_chunks([&](int64_t s0, int64_t n) {
          X.narrow(0, s0, n).copy_(model->ForwardLayer(li, X.narrow(0, s0, n)));
        });
      };

      if (method == Method::kGptq) {
        const std::vector<std::vector<std::string>> groups = {
            {"self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"},
            {"self_attn.o_proj"},
            {"mlp.up_proj", "mlp.gate_proj"},
            {"mlp.down_proj"}};
        for (int stage = 1; stage <= 4; ++stage) {
          const auto& group = groups[stage - 1];
          if (!report((stage - 1) / 4.0, group[0])) {
            return absl::CancelledError("cancelled");
          }
          const int64_t in = W(group[0]).size(1);
          HessianAccumulator hessian(in);
          for_chunks([&](int64_t s0, int64_t n) {
            LayerTaps taps;
            taps.stop_after = stage;
            model->ForwardLayer(li, X.narrow(0, s0, n), &taps);
            const at::Tensor& x = stage == 1   ? taps.attn_in
                                  : stage == 2 ? taps.o_in
                                  : stage == 3 ? taps.mlp_in
                                               : taps.down_in;
            hessian.Add(x);
          });
          for (const std::string& name : group) {
            HEARTH_ASSIGN_OR_RETURN(
                GptqResult r,
                GptqQuantize(W(name), hessian.hessian(), scheme, options.gptq));
            W(name).copy_(r.weight.Dequantize());
            result.weights[LinearPrefix(li, name)] = std::move(r.weight);
          }
        }
        next_inputs();
      } else if (method == Method::kStaticInt8) {
        if (!report(0, "calibrate")) return absl::CancelledError("cancelled");
        ActivationRange r_attn, r_o, r_mlp, r_down;
        for_chunks([&](int64_t s0, int64_t n) {
          LayerTaps taps;
          at::Tensor y = model->ForwardLayer(li, X.narrow(0, s0, n), &taps);
          r_attn.Add(taps.attn_in);
          r_o.Add(taps.o_in);
          r_mlp.Add(taps.mlp_in);
          r_down.Add(taps.down_in);
          X.narrow(0, s0, n).copy_(y);
        });
        at::Tensor s_attn = torch::ones_like(r_attn.channel_absmax());
        at::Tensor s_mlp = torch::ones_like(r_mlp.channel_absmax());
        if (options.smoothquant_alpha > 0) {
          s_attn =
              SmoothQuantScales(r_attn.channel_absmax(),
                                {W("self_attn.q_proj"), W("self_attn.k_proj"),
                                 W("self_attn.v_proj")},
                                options.smoothquant_alpha);
          ApplySmoothing(s_attn, norm_in,
                         {&W("self_attn.q_proj"), &W("self_attn.k_proj"),
                          &W("self_attn.v_proj")});
          s_mlp = SmoothQuantScales(r_mlp.channel_absmax(),
                                    {W("mlp.gate_proj"), W("mlp.up_proj")},
                                    options.smoothquant_alpha);
          ApplySmoothing(s_mlp, norm_post,
                         {&W("mlp.gate_proj"), &W("mlp.up_proj")});
        }
        auto scale_of = [](const at::Tensor& channel_absmax) {
          return std::max(channel_absmax.max().item<double>(), 1e-8) / 127.0;
        };
        const double a = scale_of(r_attn.channel_absmax() / s_attn);
        const double m = scale_of(r_mlp.channel_absmax() / s_mlp);
        const double o = scale_of(r_o.channel_absmax());
        const double d = scale_of(r_down.channel_absmax());
        const std::map<std::string, double> in_scales = {
            {"self_attn.q_proj", a}, {"self_attn.k_proj", a},
            {"self_attn.v_proj", a}, {"self_attn.o_proj", o},
            {"mlp.gate_proj", m},    {"mlp.up_proj", m},
            {"mlp.down_proj", d}};
        for (const auto& [name, s] : in_scales) {
          quantize_rtn(li, name);
          result.input_scales[LinearPrefix(li, name)] = s;
        }
      } else {  // AWQ
        if (!report(0, "search scales")) {
          return absl::CancelledError("cancelled");
        }
        // Search on at most ~4096 tokens of whole sequences.
        const int64_t sub = std::max<int64_t>(1, std::min(S, 4096 / T));
        at::Tensor x_sub = X.narrow(0, 0, sub).clone();
        LayerTaps taps;
        model->ForwardLayer(li, x_sub, &taps);
        auto flat = [](const at::Tensor& t) {
          return t.reshape({-1, t.size(-1)});
        };
        // (a) input_layernorm -> q, k, v; loss on the attention output.
        {
          // Candidates go into the model's q/k/v for the layer run; the
          // search itself works on copies, which are put back after.
          const std::vector<at::Tensor> qkv = {W("self_attn.q_proj").clone(),
                                               W("self_attn.k_proj").clone(),
                                               W("self_attn.v_proj").clone()};
          const char* qkv_names[] = {"self_attn.q_proj", "self_attn.k_proj",
                                     "self_attn.v_proj"};
          AwqBlockFn block = [&](const std::vector<at::Tensor>& ws) {
            for (int j = 0; j < 3; ++j) W(qkv_names[j]).copy_(ws[j]);
            LayerTaps t;
            t.stop_after = 3;
            model->ForwardLayer(li, x_sub, &t);
            return t.attn_out;
          };
          AwqScaleResult r = AwqSearchScales(flat(taps.attn_in), qkv, scheme,
                                             options.awq_grid, block);
          for (int j = 0; j < 3; ++j) W(qkv_names[j]).copy_(qkv[j]);
          ApplySmoothing(r.scales, norm_in,
                         {&W("self_attn.q_proj"), &W("self_attn.k_proj"),
                          &W("self_attn.v_proj")});
          taps.attn_in = taps.attn_in / r.scales;
        }
        // (b) v_proj -> o_proj, only without GQA (shapes must match).
        if (W("self_attn.v_proj").sizes() == W("self_attn.o_proj").sizes()) {
          at::Tensor x = flat(taps.o_in);
          AwqBlockFn block = [&](const std::vector<at::Tensor>& ws) {
            return at::matmul(x, ws[0].t());
          };
          AwqScaleResult r = AwqSearchScales(x, {W("self_attn.o_proj")}, scheme,
                                             options.awq_grid, block);
          W("self_attn.v_proj").div_(r.scales.unsqueeze(1));
          if (at::Tensor bv = B("self_attn.v_proj"); bv.defined()) {
            bv.div_(r.scales);
          }
          W("self_attn.o_proj").mul_(r.scales.unsqueeze(0));
          taps.o_in = taps.o_in / r.scales;
        }
        if (!report(0.5, "search scales (mlp)")) {
          return absl::CancelledError("cancelled");
        }
        // (c) post_attention_layernorm -> gate, up; loss on the MLP output.
        {
          at::Tensor x = flat(taps.mlp_in);
          AwqBlockFn block = [&](const std::vector<at::Tensor>& ws) {
            at::Tensor act = at::silu(at::matmul(x, ws[0].t()))
                                 .mul_(at::matmul(x, ws[1].t()));
            return at::matmul(act, W("mlp.down_proj").t());
          };
          AwqScaleResult r =
              AwqSearchScales(x, {W("mlp.gate_proj"), W("mlp.up_proj")}, scheme,
                              options.awq_grid, block);
          ApplySmoothing(r.scales, norm_post,
                         {&W("mlp.gate_proj"), &W("mlp.up_proj")});
          taps.mlp_in = taps.mlp_in / r.scales;
        }
        // (d) up_proj -> down_proj.
        {
          at::Tensor x = flat(taps.down_in);
          AwqBlockFn block = [&](const std::vector<at::Tensor>& ws) {
            return at::matmul(x, ws[0].t());
          };
          AwqScaleResult r = AwqSearchScales(x, {W("mlp.down_proj")}, scheme,
                                             options.awq_grid, block);
          W("mlp.up_proj").div_(r.scales.unsqueeze(1));
          W("mlp.down_proj").mul_(r.scales.unsqueeze(0));
          taps.down_in = taps.down_in / r.scales;
        }
        if (options.awq_clip) {
          if (!report(0.75, "clip search")) {
            return absl::CancelledError("cancelled");
          }
          // q/k are skipped as in AutoAWQ: their error passes through the
          // q.k product, which a per-output MSE does not see.
          AwqClip(W("self_attn.v_proj"), flat(taps.attn_in), scheme);
          AwqClip(W("self_attn.o_proj"), flat(taps.o_in), scheme);
          AwqClip(W("mlp.gate_proj"), flat(taps.mlp_in), scheme);
          AwqClip(W("mlp.up_proj"), flat(taps.mlp_in), scheme);
          AwqClip(W("mlp.down_proj"), flat(taps.down_in), scheme);
        }
        for (const std::string& n : LayerLinearNames()) quantize_rtn(li, n);
        next_inputs();
      }
    }
  }
  for (auto& [name, t] : tensors) {
    bool is_linear_weight = false;
    for (int64_t li = 0; li < L && !is_linear_weight; ++li) {
      for (const std::string& n : LayerLinearNames()) {
        if (name == LinearPrefix(li, n) + ".weight") is_linear_weight = true;
      }
    }
    if (!is_linear_weight) result.float_tensors[name] = t;
  }
  if (progress) progress(1.0, "quantized");
  return result;
}

FolderFormat DefaultFolderFormat(const QuantizeOptions& options) {
  switch (options.method) {
    case Method::kAwq:
      return FolderFormat::kAwq;
    case Method::kDynamicInt8:
    case Method::kStaticInt8:
      return FolderFormat::kHearthInt8;
    default:
      return FolderFormat::kGptq;
  }
}

absl::StatusOr<std::map<std::string, at::Tensor>> LoadFloatTensors(
    const std::string& folder) {
  HEARTH_ASSIGN_OR_RETURN(auto reader, formats::CheckpointReader::Open(folder));
  std::map<std::string, at::Tensor> out;
  for (const std::string& name : reader->TensorNames()) {
    const formats::TensorView* v = reader->Find(name);
    at::Tensor t = model::TensorFromView(*v);
    if (!c10::isFloatingType(t.scalar_type())) {
      return absl::InvalidArgumentError(
          absl::StrCat(folder, ": tensor ", name, " is not a float tensor"));
    }
    out[name] = t.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
  }
  return out;
}

std::map<std::string, at::Tensor> FakeQuantizedTensors(
    const QuantizedModel& model) {
  std::map<std::string, at::Tensor> out = model.float_tensors;
  for (const auto& [prefix, w] : model.weights) {
    out[prefix + ".weight"] = w.Dequantize();
  }
  return out;
}

absl::Status WriteQuantizedFolder(const QuantizedModel& model,
                                  FolderFormat format,
                                  const std::string& source_folder,
                                  const std::string& folder) {
  torch::NoGradGuard no_grad;
  const QuantScheme& scheme = model.options.scheme;
  std::vector<at::Tensor> keep;  // owns every buffer the writer points at
  formats::SafetensorsWriter writer;
  auto add = [&](const std::string& name, formats::DType dtype, at::Tensor t) {
    t = t.contiguous();
    keep.push_back(t);
    writer.Add(name, dtype, t.sizes().vec(), t.data_ptr(),
               t.numel() * t.element_size());
  };
  const bool half = format != FolderFormat::kHearthInt8;
  for (const auto& [name, t] : model.float_tensors) {
    if (half) {
      add(name, formats::DType::kF16, t.to(at::kHalf));
    } else {
      add(name, formats::DType::kF32, t.to(at::kFloat));
    }
  }
  nlohmann::json qc;
  nlohmann::json standalone;
  std::string standalone_name;
  const int group = scheme.group_size == 0 ? -1 : scheme.group_size;
  if (format == FolderFormat::kGptq) {
    for (const auto& [prefix, w] : model.weights) {
      HEARTH_ASSIGN_OR_RETURN(GptqTensors t, PackGptq(w));
      add(prefix + ".qweight", formats::DType::kI32, t.qweight);
      add(prefix + ".qzeros", formats::DType::kI32, t.qzeros);
      add(prefix + ".scales", formats::DType::kF16, t.scales);
      add(prefix + ".g_idx", formats::DType::kI32, t.g_idx);
    }
    const bool gptq = model.options.method == Method::kGptq;
    qc = {{"bits", scheme.bits},
          {"group_size", group},
          {"damp_percent", gptq ? (model.options.gptq.damp_percent > 0
                                       ? model.options.gptq.damp_percent
                                       : 0.01)
                                : 0.01},
          {"desc_act", gptq && model.options.gptq.act_order},
          {"static_groups", gptq && model.options.gptq.static_groups},
          {"sym", scheme.symmetric},
          {"true_sequential", true},
          {"model_name_or_path", nullptr},
          {"model_file_base_name", "model"},
          {"quant_method", "gptq"},
          {"checkpoint_format", "gptq"}};
    standalone = qc;
    standalone_name = "quantize_config.json";
    writer.SetMetadata("gptq_bits", std::to_string(scheme.bits));
    writer.SetMetadata("gptq_group_size", std::to_string(group));
    writer.SetMetadata("gptq_desc_act",
                       qc["desc_act"].get<bool>() ? "true" : "false");
    writer.SetMetadata("gptq_checkpoint_format", "gptq");
    writer.SetMetadata("gptq_quant_method", "gptq");
  } else if (format == FolderFormat::kAwq) {
    for (const auto& [prefix, w] : model.weights) {
      HEARTH_ASSIGN_OR_RETURN(AwqTensors t, PackAwq(w));
      add(prefix + ".qweight", formats::DType::kI32, t.qweight);
      add(prefix + ".qzeros", formats::DType::kI32, t.qzeros);
      add(prefix + ".scales", formats::DType::kF16, t.scales);
    }
    qc = {{"quant_method", "awq"}, {"zero_point", true},
          {"group_size", group},   {"bits", 4},
          {"version", "gemm"},     {"modules_to_not_convert", nullptr}};
    standalone = {{"zero_point", true},
                  {"q_group_size", group},
                  {"w_bit", 4},
                  {"version", "gemm"},
                  {"modules_to_not_convert", nullptr}};
    standalone_name = "quant_config.json";
  } else {
    if (scheme.bits != 8) {
      return absl::InvalidArgumentError(
          "formats: hearth INT8 layout needs bits 8");
    }
    const char* act = model.options.method == Method::kStaticInt8    ? "static"
                      : model.options.method == Method::kDynamicInt8 ? "dynamic"
                                                                     : "none";
    for (const auto& [prefix, w] : model.weights) {
      add(prefix + ".weight", formats::DType::kI8,
          (w.codes.to(at::kInt) - 128).to(at::kChar));
      add(prefix + ".weight_scale", formats::DType::kF32, w.scales);
      if (!(w.zeros == 128).all().item<bool>()) {
        add(prefix + ".weight_zero_point", formats::DType::kI32, w.zeros - 128);
      }
      if (auto it = model.input_scales.find(prefix);
          it != model.input_scales.end()) {
        add(prefix + ".input_scale", formats::DType::kF32,
            torch::full({1}, it->second, torch::kFloat));
      }
    }
    qc = {{"quant_method", "hearth"},
          {"bits", 8},
          {"group_size", group},
          {"sym", scheme.symmetric},
          {"activation", act},
          {"smoothquant_alpha", model.options.smoothquant_alpha}};
    standalone = qc;
    standalone_name = "quantize_config.json";
  }

  const std::string tmp = folder + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", tmp, ": ", ec.message()));
  }
  formats::LlamaConfig config = model.config;
  config.quantization_config = qc;
  if (half) config.torch_dtype = "float16";
  auto write_text = [&](const std::string& path,
                        const std::string& text) -> absl::Status {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
    return absl::OkStatus();
  };
  HEARTH_RETURN_IF_ERROR(
      write_text(tmp + "/config.json", formats::LlamaConfigToJson(config)));
  HEARTH_RETURN_IF_ERROR(
      write_text(tmp + "/" + standalone_name, standalone.dump(2) + "\n"));
  if (format == FolderFormat::kAwq) {
    // vLLM also looks for quantize_config.json; give it the new-style keys.
    HEARTH_RETURN_IF_ERROR(
        write_text(tmp + "/quantize_config.json", qc.dump(2) + "\n"));
  }
  HEARTH_RETURN_IF_ERROR(writer.WriteFile(tmp + "/model.safetensors"));
  for (const char* f :
       {"tokenizer.json", "tokenizer_config.json", "tokenizer.model",
        "special_tokens_map.json", "generation_config.json"}) {
    const fs::path src = fs::path(source_folder) / f;
    if (fs::exists(src)) {
      fs::copy_file(src, fs::path(tmp) / f,
                    fs::copy_options::overwrite_existing, ec);
    }
  }
  fs::remove_all(folder, ec);
  fs::rename(tmp, folder, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ",
                                            folder, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace hearth::quantizer
