#include "common/model/model_loader.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/formats/dtype.h"
#include "common/formats/gguf_llama.h"
#include "common/formats/safetensors.h"
#include "common/status/status_macros.h"

namespace hearth::model {
namespace {

namespace fs = std::filesystem;

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<c10::ScalarType> TorchType(formats::DType dtype) {
  switch (dtype) {
    case formats::DType::kF32:
      return c10::kFloat;
    case formats::DType::kF16:
      return c10::kHalf;
    case formats::DType::kBF16:
      return c10::kBFloat16;
    case formats::DType::kF64:
      return c10::kDouble;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", std::string(formats::SafetensorsName(dtype)),
                       " is not a float type"));
  }
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
template <typename Lookup>
absl::Status FillParameters(LlamaForCausalLM& model, const std::string& source,
                            Lookup lookup) {
  torch::NoGradGuard no_grad;
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    at::Tensor& param = item.value();
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

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadFolder(
    const std::string& folder, const LoadOptions& options) {
  HEARTH_ASSIGN_OR_RETURN(
      formats::LlamaConfig config,
      formats::LoadLlamaConfig((fs::path(folder) / "config.json").string()));
  if (!config.quantization_config.is_null()) {
    return absl::UnimplementedError(absl::StrCat(
        folder,
        " is a quantized checkpoint (config.json has quantization_config); "
        "load it through the quantizer's loader"));
  }
  HEARTH_ASSIGN_OR_RETURN(auto reader, formats::CheckpointReader::Open(folder));
  HEARTH_ASSIGN_OR_RETURN(
      auto model, LlamaForCausalLM::Create(
                      config, options.device,
                      DefaultDtype(config, options.device, options.dtype)));
  HEARTH_RETURN_IF_ERROR(FillParameters(
      *model, folder,
      [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
        const formats::TensorView* view = reader->Find(name);
        if (view == nullptr) return at::Tensor();
        absl::StatusOr<c10::ScalarType> type = TorchType(view->dtype);
        if (!type.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(
              folder, ": tensor \"", name, "\": ", type.status().message()));
        }
        // Zero-copy view of the mapped file; FillParameters copies out of it
        // while the reader is alive. Never written through (the mapping is
        // read-only).
        return torch::from_blob(const_cast<uint8_t*>(view->data), view->shape,
                                torch::TensorOptions().dtype(*type));
      }));
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
  return FromTensors(gguf.config, tensors, options, path);
}

}  // namespace

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
