#include "common/model/model_loader.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/formats/dtype.h"
#include "common/formats/gguf_llama.h"
#include "common/formats/safetensors.h"
#include "common/quant/quant_core.h"
#include "common/quant/quantized_linear.h"
#include "common/status/status_macros.h"

namespace hearth::model {
namespace {

namespace fs = std::filesystem;

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// FillParameters' lookup over a checkpoint: zero-copy views of the mapped
// file (FillParameters copies out of them while the reader is alive; never
// written through, the mapping is read-only); float tensors only.
auto ReaderLookup(const formats::CheckpointReader& reader,
                  const std::string& folder) {
  return
      [&reader, folder](const std::string& name) -> absl::StatusOr<at::Tensor> {
        const formats::TensorView* view = reader.Find(name);
        if (view == nullptr) return at::Tensor();
        const formats::DType d = view->dtype;
        if (d != formats::DType::kF32 && d != formats::DType::kF16 &&
            d != formats::DType::kBF16 && d != formats::DType::kF64) {
          return absl::InvalidArgumentError(
              absl::StrCat(folder, ": tensor \"", name, "\": dtype ",
                           std::string(formats::SafetensorsName(view->dtype)),
                           " is not a float type"));
        }
        return TensorFromView(*view);
      };
}

absl::StatusOr<formats::DType> FormatsType(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat:
      return formats::DType::kF32;
    case c10::kHalf:
      return formats::DType::kF16;
    case c10::kBFloat16:
      return formats::DType::kBF16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("cannot save dtype ", c10::toString(dtype),
                       " (use float32/16, bfloat16)"));
  }
}

std::string TorchDtypeName(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kHalf:
      return "float16";
    case c10::kBFloat16:
      return "bfloat16";
    default:
      return "float32";
  }
}

// Copies every parameter of `model` from `lookup(name)`; the lookup returns an
// undefined tensor for a missing one.
// Parameters named in `skip` (projections swapped for quantized linears) are
// left alone.
template <typename Lookup>
absl::Status FillParameters(LlamaForCausalLM& model, const std::string& source,
                            Lookup lookup,
                            const std::set<std::string>& skip = {}) {
  torch::NoGradGuard no_grad;
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    at::Tensor& param = item.value();
    if (skip.count(name) != 0) continue;
    HEARTH_ASSIGN_OR_RETURN(at::Tensor src, lookup(name));
    if (!src.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": missing tensor \"", name,
                       "\" (expected shape ", ShapeString(param.sizes()), ")"));
    }
    if (src.sizes() != param.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor \"", name, "\" has shape ",
                       ShapeString(src.sizes()), " but the config needs ",
                       ShapeString(param.sizes())));
    }
    if (!c10::isFloatingType(src.scalar_type())) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor \"", name, "\" has dtype ",
                       c10::toString(src.scalar_type()), ", not a float type"));
    }
    try {
      // One copy, converting dtype and device on the way; the parameters are
      // views into the packed inference buffers, which this fills directly.
      param.copy_(src);
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat(source, ": copying tensor \"", name,
                       "\": ", e.what_without_backtrace()));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  }
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return absl::InternalError(
          absl::StrCat("cannot write ", tmp, ": ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot sync ", tmp, ": ", std::strerror(errno)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path,
                                            ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> FromTensors(
    const formats::LlamaConfig& config,
    const std::map<std::string, at::Tensor>& tensors,
    const LoadOptions& options, const std::string& source) {
  HEARTH_ASSIGN_OR_RETURN(
      auto model, LlamaForCausalLM::Create(
                      config, options.device,
                      DefaultDtype(config, options.device, options.dtype)));
  HEARTH_RETURN_IF_ERROR(FillParameters(
      *model, source,
      [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
        auto it = tensors.find(name);
        return it == tensors.end() ? at::Tensor() : it->second;
      }));
  return model;
}

// --- Quantized checkpoints ---------------------------------------------------

absl::Status Prefixed(const absl::Status& s, const std::string& prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, ": ", s.message()));
}

// Whether quantized projections can stay quantized for these options: the
// kernels are float32 CPU ones. Elsewhere (CUDA) the weights are expanded to
// the parameter dtype.
bool KeepQuantized(const formats::LlamaConfig& config,
                   const LoadOptions& options) {
  return options.device.is_cpu() &&
         DefaultDtype(config, options.device, options.dtype) == c10::kFloat;
}

// Puts `weight` (+ `bias`) in as projection `name` of `layer`: as a
// QuantizedLinear, or expanded into the float parameters.
absl::Status InstallProjection(LlamaForCausalLM& model, int64_t layer,
                               const std::string& name,
                               const quant::QuantizedWeight& weight,
                               const at::Tensor& bias, bool keep_quantized,
                               quant::ActivationMode mode, double input_scale,
                               std::set<std::string>& installed) {
  const std::string prefix = absl::StrCat("model.layers.", layer, ".", name);
  if (keep_quantized) {
    auto linear =
        quant::QuantizedLinear::Create(weight, bias, mode, input_scale);
    if (!linear.ok()) return Prefixed(linear.status(), prefix);
    HEARTH_RETURN_IF_ERROR(
        model.SetLinearImpl(layer, name, std::move(linear).value()));
  } else {
    torch::NoGradGuard no_grad;
    auto params = model.named_parameters(/*recurse=*/true);
    at::Tensor* w = params.find(prefix + ".weight");
    at::Tensor deq = weight.Dequantize();
    if (w == nullptr || w->sizes() != deq.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, ": quantized weight has shape ",
                       ShapeString(deq.sizes()), " but the config needs ",
                       w == nullptr ? "none" : ShapeString(w->sizes())));
    }
    w->copy_(deq);
    if (at::Tensor* b = params.find(prefix + ".bias")) {
      if (!bias.defined()) {
        return absl::InvalidArgumentError(
            absl::StrCat(prefix, ": missing tensor ", prefix, ".bias"));
      }
      b->copy_(bias);
    }
  }
  installed.insert(prefix + ".weight");
  installed.insert(prefix + ".bias");
  return absl::OkStatus();
}

// GPTQ v1 (quant_method "gptq"), AutoAWQ GEMM ("awq") and hearth's INT8
// ("hearth": int8 weight + float weight_scale [+ weight_zero_point,
// input_scale]) folders.
absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadQuantizedFolder(
    const std::string& folder, const formats::LlamaConfig& config,
    const formats::CheckpointReader& reader, const LoadOptions& options) {
  const nlohmann::json& qc = config.quantization_config;
  if (!qc.is_object() || !qc.contains("quant_method") ||
      !qc["quant_method"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(
        folder, ": config.json quantization_config.quant_method is missing"));
  }
  const std::string method = qc["quant_method"].get<std::string>();
  if (method != "gptq" && method != "awq" && method != "hearth") {
    return absl::InvalidArgumentError(
        absl::StrCat(folder, ": quantization_config.quant_method \"", method,
                     "\" is not supported (gptq, awq, hearth)"));
  }
  int bits = 0, group = 0;
  bool sym = false;
  std::string act;
  try {
    bits = qc.value("bits", qc.value("w_bit", 4));
    group = qc.value("group_size", qc.value("q_group_size", -1));
    sym = qc.value("sym", false);
    act = qc.value("activation", std::string("none"));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(folder, ": quantization_config: ", e.what()));
  }
  if (method != "hearth" && bits != 4 && bits != 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        folder, ": quantization_config.bits = ", bits, " is not 4 or 8"));
  }
  const bool keep = KeepQuantized(config, options);
  HEARTH_ASSIGN_OR_RETURN(
      auto model, LlamaForCausalLM::Create(
                      config, options.device,
                      DefaultDtype(config, options.device, options.dtype)));
  auto need = [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
    const formats::TensorView* v = reader.Find(name);
    if (v == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(folder, ": missing tensor ", name));
    }
    return TensorFromView(*v).clone();
  };
  std::set<std::string> installed;
  try {
    torch::NoGradGuard no_grad;
    for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
      for (const std::string& name : LayerLinearNames()) {
        const std::string p = absl::StrCat("model.layers.", i, ".", name);
        at::Tensor bias;
        if (reader.Find(p + ".bias") != nullptr) {
          HEARTH_ASSIGN_OR_RETURN(bias, need(p + ".bias"));
          bias = bias.to(at::kFloat);
        }
        quant::QuantizedWeight qw;
        quant::ActivationMode mode = quant::ActivationMode::kNone;
        double input_scale = 0;
        if (method == "gptq") {
          quant::GptqTensors gt;
          HEARTH_ASSIGN_OR_RETURN(gt.qweight, need(p + ".qweight"));
          HEARTH_ASSIGN_OR_RETURN(gt.qzeros, need(p + ".qzeros"));
          HEARTH_ASSIGN_OR_RETURN(gt.scales, need(p + ".scales"));
          if (reader.Find(p + ".g_idx") != nullptr) {
            HEARTH_ASSIGN_OR_RETURN(gt.g_idx, need(p + ".g_idx"));
          } else {
            const int64_t in = gt.qweight.size(0) * (32 / bits);
            gt.g_idx = quant::SequentialGroupIndex(in, group <= 0 ? in : group);
          }
          auto unpacked = quant::UnpackGptq(gt, bits, group, sym);
          if (!unpacked.ok()) {
            return Prefixed(unpacked.status(), absl::StrCat(folder, ": ", p));
          }
          qw = std::move(unpacked).value();
        } else if (method == "awq") {
          quant::AwqTensors at;
          HEARTH_ASSIGN_OR_RETURN(at.qweight, need(p + ".qweight"));
          HEARTH_ASSIGN_OR_RETURN(at.qzeros, need(p + ".qzeros"));
          HEARTH_ASSIGN_OR_RETURN(at.scales, need(p + ".scales"));
          auto unpacked = quant::UnpackAwq(at, group);
          if (!unpacked.ok()) {
            return Prefixed(unpacked.status(), absl::StrCat(folder, ": ", p));
          }
          qw = std::move(unpacked).value();
        } else {
          at::Tensor w8, ws;
          HEARTH_ASSIGN_OR_RETURN(w8, need(p + ".weight"));
          HEARTH_ASSIGN_OR_RETURN(ws, need(p + ".weight_scale"));
          if (w8.scalar_type() != at::kChar || w8.dim() != 2 || ws.dim() != 2 ||
              ws.size(0) != w8.size(0) || ws.size(1) < 1 ||
              w8.size(1) % ws.size(1) != 0) {
            return absl::InvalidArgumentError(absl::StrCat(
                folder, ": ", p,
                " is not hearth's INT8 layout (int8 weight [out, in], float "
                "weight_scale [out, groups])"));
          }
          qw.scheme = {8, group <= 0 ? 0 : group, true};
          qw.codes = (w8.to(at::kInt) + 128).to(at::kByte);
          qw.scales = ws.to(at::kFloat);
          qw.zeros = torch::full(ws.sizes(), 128, torch::kInt);
          if (reader.Find(p + ".weight_zero_point") != nullptr) {
            at::Tensor zp;
            HEARTH_ASSIGN_OR_RETURN(zp, need(p + ".weight_zero_point"));
            qw.zeros = zp.to(at::kInt) + 128;
          }
          qw.g_idx =
              quant::SequentialGroupIndex(w8.size(1), w8.size(1) / ws.size(1));
          if (act == "dynamic") mode = quant::ActivationMode::kDynamic;
          if (act == "static") {
            mode = quant::ActivationMode::kStatic;
            at::Tensor s;
            HEARTH_ASSIGN_OR_RETURN(s, need(p + ".input_scale"));
            input_scale = s.to(at::kFloat).reshape({-1})[0].item<double>();
          }
        }
        HEARTH_RETURN_IF_ERROR(InstallProjection(
            *model, i, name, qw, bias, keep, mode, input_scale, installed));
      }
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(folder, ": ", e.what_without_backtrace()));
  }
  HEARTH_RETURN_IF_ERROR(
      FillParameters(*model, folder, ReaderLookup(reader, folder), installed));
  if (method == "hearth") {
    model->set_quantization(act == "dynamic"  ? "int8-dynamic"
                            : act == "static" ? "int8-static"
                                              : "int8");
  } else {
    model->set_quantization(absl::StrCat(method, "-int", bits));
  }
  return model;
}

// Re-encodes dequantized GGUF Q4_0 / Q8_0 rows with ggml's own rules, which
// reproduces the stored codes and fp16 scales exactly (the block's extreme
// value sits on the grid end), so nothing is lost by the float detour.
quant::QuantizedWeight FromGgmlBlocks(const at::Tensor& w,
                                      formats::GgmlType type) {
  const int64_t out = w.size(0), in = w.size(1);
  at::Tensor g = w.reshape({out, in / 32, 32});
  quant::QuantizedWeight q;
  q.g_idx = quant::SequentialGroupIndex(in, 32);
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

std::string GgmlTypeLabel(formats::GgmlType type) {
  switch (type) {
    case formats::GgmlType::kQ4_0:
      return "q4_0";
    case formats::GgmlType::kQ8_0:
      return "q8_0";
    case formats::GgmlType::kF16:
      return "f16";
    default:
      return "f32";
  }
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadFolder(
    const std::string& folder, const LoadOptions& options) {
  HEARTH_ASSIGN_OR_RETURN(
      formats::LlamaConfig config,
      formats::LoadLlamaConfig((fs::path(folder) / "config.json").string()));
  HEARTH_ASSIGN_OR_RETURN(auto reader, formats::CheckpointReader::Open(folder));
  if (!config.quantization_config.is_null()) {
    return LoadQuantizedFolder(folder, config, *reader, options);
  }
  HEARTH_ASSIGN_OR_RETURN(
      auto model, LlamaForCausalLM::Create(
                      config, options.device,
                      DefaultDtype(config, options.device, options.dtype)));
  HEARTH_RETURN_IF_ERROR(
      FillParameters(*model, folder, ReaderLookup(*reader, folder)));
  return model;
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadGguf(
    const std::string& path, const LoadOptions& options) {
  HEARTH_ASSIGN_OR_RETURN(formats::LoadedGguf gguf,
                          formats::LoadLlamaGguf(path));
  if (!gguf.rope_freqs.empty() && gguf.config.rope_scaling.type.empty()) {
    return absl::UnimplementedError(absl::StrCat(
        path,
        ": rope_freqs.weight does not match the llama3 rope scaling formula"));
  }
  std::map<std::string, at::Tensor> tensors;
  for (auto& [name, data] : gguf.tensors) {
    auto shape = gguf.shapes.find(name);
    if (shape == gguf.shapes.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": no shape for tensor ", name));
    }
    int64_t numel = 1;
    for (int64_t d : shape->second) numel *= d;
    if (numel != static_cast<int64_t>(data.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", name, " has ", data.size(),
                       " values for shape ", ShapeString(shape->second)));
    }
    tensors[name] = torch::from_blob(data.data(), shape->second, torch::kFloat);
  }
  // Q4_0 / Q8_0 projections become quantized linears (on the CPU in float32);
  // everything else is copied into the float parameters.
  const formats::LlamaConfig& config = gguf.config;
  const bool keep = KeepQuantized(config, options);
  HEARTH_ASSIGN_OR_RETURN(
      auto model, LlamaForCausalLM::Create(
                      config, options.device,
                      DefaultDtype(config, options.device, options.dtype)));
  std::set<std::string> installed;
  std::string label;
  try {
    torch::NoGradGuard no_grad;
    for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
      for (const std::string& name : LayerLinearNames()) {
        const std::string p = absl::StrCat("model.layers.", i, ".", name);
        auto w = tensors.find(p + ".weight");
        auto type = gguf.stored_types.find(p + ".weight");
        if (w == tensors.end() || type == gguf.stored_types.end()) continue;
        if (label.empty()) label = "gguf-" + GgmlTypeLabel(type->second);
        if (type->second != formats::GgmlType::kQ4_0 &&
            type->second != formats::GgmlType::kQ8_0) {
          continue;
        }
        if (w->second.dim() != 2 || w->second.size(1) % 32 != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": ", p, ".weight has shape ",
              ShapeString(w->second.sizes()), ", not rows of 32-blocks"));
        }
        auto b = tensors.find(p + ".bias");
        HEARTH_RETURN_IF_ERROR(InstallProjection(
            *model, i, name, FromGgmlBlocks(w->second, type->second),
            b == tensors.end() ? at::Tensor() : b->second, keep,
            quant::ActivationMode::kNone, 0, installed));
      }
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", e.what_without_backtrace()));
  }
  HEARTH_RETURN_IF_ERROR(FillParameters(
      *model, path,
      [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
        auto it = tensors.find(name);
        return it == tensors.end() ? at::Tensor() : it->second;
      },
      installed));
  model->set_quantization(label.empty() ? "gguf-f32" : label);
  return model;
}

}  // namespace

at::Tensor TensorFromView(const formats::TensorView& view) {
  c10::ScalarType type = at::kByte;
  switch (view.dtype) {
    case formats::DType::kF32:
      type = at::kFloat;
      break;
    case formats::DType::kF16:
      type = at::kHalf;
      break;
    case formats::DType::kBF16:
      type = at::kBFloat16;
      break;
    case formats::DType::kF64:
      type = at::kDouble;
      break;
    case formats::DType::kI8:
      type = at::kChar;
      break;
    case formats::DType::kI16:
      type = at::kShort;
      break;
    case formats::DType::kI32:
      type = at::kInt;
      break;
    case formats::DType::kI64:
      type = at::kLong;
      break;
    case formats::DType::kBool:
      type = at::kBool;
      break;
    default:
      break;
  }
  return torch::from_blob(const_cast<uint8_t*>(view.data), view.shape,
                          torch::TensorOptions().dtype(type));
}

c10::ScalarType DefaultDtype(const formats::LlamaConfig& config,
                             c10::Device device,
                             std::optional<c10::ScalarType> requested) {
  if (requested.has_value()) return *requested;
  if (device.is_cpu()) return c10::kFloat;
  return config.torch_dtype == "bfloat16" ? c10::kBFloat16 : c10::kHalf;
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> ModelFromTensors(
    const formats::LlamaConfig& config,
    const std::map<std::string, at::Tensor>& tensors,
    const LoadOptions& options) {
  return FromTensors(config, tensors, options, "tensors");
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadModel(
    const std::string& path, const LoadOptions& options) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model path ", path, " does not exist"));
  }
  if (fs::is_directory(path, ec)) return LoadFolder(path, options);
  if (absl::EndsWith(path, ".gguf")) return LoadGguf(path, options);
  return absl::InvalidArgumentError(
      absl::StrCat(path, " is neither a model folder nor a .gguf file"));
}

absl::Status SaveModel(LlamaForCausalLM& model, const std::string& folder,
                       const SaveOptions& options) {
  if (model.has_linear_impls()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model has quantized linears (", model.quantization(),
                     "); SaveModel writes float checkpoints only"));
  }
  const c10::ScalarType dtype = options.dtype.value_or(model.dtype());
  HEARTH_ASSIGN_OR_RETURN(formats::DType file_dtype, FormatsType(dtype));
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", folder, ": ", ec.message()));
  }
  formats::LlamaConfig config = model.config();
  config.torch_dtype = TorchDtypeName(dtype);

  // Host copies in the file dtype; they must outlive writer.WriteFile.
  std::vector<at::Tensor> host;
  formats::SafetensorsWriter writer;
  try {
    torch::NoGradGuard no_grad;
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      at::Tensor t = item.value().detach().to(at::kCPU, dtype).contiguous();
      writer.Add(item.key(), file_dtype, t.sizes().vec(), t.data_ptr(),
                 static_cast<size_t>(t.numel()) * t.element_size());
      host.push_back(std::move(t));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("saving model: ", e.what_without_backtrace()));
  }
  HEARTH_RETURN_IF_ERROR(
      writer.WriteFile((fs::path(folder) / "model.safetensors").string()));
  return WriteFileAtomically((fs::path(folder) / "config.json").string(),
                             formats::LlamaConfigToJson(config));
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> MakeRandomModel(
    const formats::LlamaConfig& config, uint64_t seed,
    const RandomInitOptions& options) {
  HEARTH_ASSIGN_OR_RETURN(
      auto model,
      LlamaForCausalLM::Create(config, c10::Device(c10::kCPU), c10::kFloat));
  try {
    torch::NoGradGuard no_grad;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (auto& item : model->named_parameters(/*recurse=*/true)) {
      const std::string& name = item.key();
      at::Tensor& p = item.value();
      if (absl::EndsWith(name, "norm.weight")) {
        p.fill_(1.0);
      } else if (absl::EndsWith(name, ".bias")) {
        p.zero_();
      } else {
        p.normal_(0.0, options.init_std, gen);
      }
    }
    if (options.device != c10::Device(c10::kCPU) ||
        options.dtype != c10::kFloat) {
      model->to(options.device, options.dtype);
      model->PackForInference();
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("random init: ", e.what_without_backtrace()));
  }
  return model;
}

}  // namespace hearth::model
