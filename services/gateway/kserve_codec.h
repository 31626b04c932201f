// Translation between KServe v2 inference messages and hearth generation
// requests, following the LLM convention of Triton's vLLM and TensorRT-LLM
// backends (reference/serving-anchors.md §1):
//
//   inputs     text_input  BYTES [1] or [1,1]   the prompt (required)
//              max_tokens, top_k, seed|random_seed      integer types
//              temperature, top_p, repetition_penalty   FP32/FP64 (or ints)
//              stream, ignore_eos, exclude_input_in_output   BOOL
//              sampling_parameters BYTES: vLLM-backend JSON with the same keys
//              (+ "stop": string or list)
//   parameters the same names, plus Triton's schedule policy `priority` and
//              `timeout` (microseconds)
//   outputs    text_output BYTES, same shape as text_input
//
// Tensor data may come in the typed `contents` fields or in
// raw_input_contents (BYTES elements each prefixed by a 4-byte little-endian
// length); the response uses the encoding the request used. Every error is
// INVALID_ARGUMENT naming the input (`inputs[1] (temperature): ...`) or the
// parameter (`parameters.max_tokens: ...`).
#ifndef HEARTH_SERVICES_GATEWAY_KSERVE_CODEC_H_
#define HEARTH_SERVICES_GATEWAY_KSERVE_CODEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "hearth/v1/generation.pb.h"
#include "inference/grpc_service.pb.h"
#include "services/gateway/gateway_core.h"

namespace hearth::gateway {

inline constexpr absl::string_view kTextInput = "text_input";
inline constexpr absl::string_view kTextOutput = "text_output";

struct KServeGenerate {
  hearth::v1::GenerateRequest generate;
  // Set when the request said; ModelInfer ignores it, ModelStreamInfer
  // defaults to streaming.
  std::optional<bool> stream;
  bool raw_output = false;
  std::vector<int64_t> output_shape = {1};
  std::string id;
  std::string model_version;
};

// Validates and translates one ModelInferRequest.
absl::StatusOr<KServeGenerate> ParseInferRequest(
    const inference::ModelInferRequest& request);

// Fills name, version, id and a text_output holding `text`.
void SetTextOutput(const KServeGenerate& request, absl::string_view text,
                   inference::ModelInferResponse* response);

// Inputs and outputs a hearth LLM model declares.
inference::ModelMetadataResponse LlmModelMetadata(const std::string& name);

// How hearth.v1 field names map to KServe's, for the core's messages.
const FieldNames& KServeFieldNames();

// The model version hearth reports ("1"); an empty request version means it.
inline constexpr absl::string_view kModelVersion = "1";

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_KSERVE_CODEC_H_
