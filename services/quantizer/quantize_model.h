// The layer-by-layer quantization driver and the checkpoint writers.
//
// QuantizeModel walks the decoder layers in order. Calibration activations
// are the hidden states entering the current layer for every sample
// ([samples, seq_len, hidden], i.e. one layer's worth); each method
// runs the layer on them in chunks to collect what it needs (Hessians for
// GPTQ, per-channel activation statistics for AWQ and SmoothQuant), quantizes
// the layer, then computes the next layer's inputs. GPTQ is "true
// sequential": q/k/v, then o, then gate/up, then down, each group's Hessian
// taken from inputs that passed through the already-quantized groups.
//
// WriteQuantizedFolder writes one of the formats (GPTQ v1, AWQ GEMM, hearth
// INT8) as a Hugging Face folder: config.json with quantization_config,
// quantize_config.json, model.safetensors, plus the tokenizer files copied
// from the source.
#ifndef HEARTH_SERVICES_QUANTIZER_QUANTIZE_MODEL_H_
#define HEARTH_SERVICES_QUANTIZER_QUANTIZE_MODEL_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/hf_config.h"
#include "common/quant/quant_core.h"
#include "services/quantizer/gptq.h"

namespace hearth::quantizer {

enum class Method { kRtn, kDynamicInt8, kStaticInt8, kGptq, kAwq };

struct QuantizeOptions {
  Method method = Method::kRtn;
  quant::QuantScheme scheme;
  GptqConfig gptq;
  int awq_grid = 20;
  bool awq_clip = true;
  double smoothquant_alpha = 0;  // static INT8; 0 = no smoothing
  // Calibration sequences run through a layer at once.
  int64_t chunk = 8;
};

// A quantized model in memory: the float tensors that stay float (possibly
// changed by AWQ/SmoothQuant folding) and one QuantizedWeight per linear
// ("model.layers.0.self_attn.q_proj" -> weight).
struct QuantizedModel {
  formats::LlamaConfig config;
  QuantizeOptions options;
  std::map<std::string, at::Tensor> float_tensors;
  std::map<std::string, quant::QuantizedWeight> weights;
  std::map<std::string, double> input_scales;  // static INT8 only
};

// Called between steps; returns false to stop (the driver then returns
// CANCELLED).
using QuantizeProgressFn =
    std::function<bool(double fraction, const std::string& message)>;

// `tensors`: the float model by HF name (taken by value: modified in place).
// `calibration`: [samples, seq_len] int64 ids; ignored by RTN and dynamic
// INT8, required (non-empty) by the others.
absl::StatusOr<QuantizedModel> QuantizeModel(
    const formats::LlamaConfig& config,
    std::map<std::string, at::Tensor> tensors, const at::Tensor& calibration,
    const QuantizeOptions& options, const QuantizeProgressFn& progress);

enum class FolderFormat { kGptq, kAwq, kHearthInt8 };

// The format a method writes when the caller does not choose.
FolderFormat DefaultFolderFormat(const QuantizeOptions& options);

// Writes `folder` (atomically: into folder + ".tmp", then renamed).
// `source_folder` provides tokenizer and generation config files.
absl::Status WriteQuantizedFolder(const QuantizedModel& model,
                                  FolderFormat format,
                                  const std::string& source_folder,
                                  const std::string& folder);

// Loads every tensor of an HF float folder as float32 CPU tensors (the input
// of QuantizeModel). InvalidArgument naming a tensor that is not float.
absl::StatusOr<std::map<std::string, at::Tensor>> LoadFloatTensors(
    const std::string& folder);

// Replaces the linears of an HF float tensor map with
// the dequantized weights (fake quantization) — used by tests to compare the
// quantized runtime with its float reference.
std::map<std::string, at::Tensor> FakeQuantizedTensors(
    const QuantizedModel& model);

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_QUANTIZE_MODEL_H_
