// One quantization job end to end, without gRPC: validate the spec (the JSON
// form of hearth.v1.QuantizationSpec with proto field names), load the source
// model from the repository, quantize it with progress per layer, write every
// requested format, and evaluate before/after into quant_report.json.
//
// A job that is re-run after a crash starts over: outputs are written to a
// temporary name and renamed into place, so a killed job never leaves a
// folder that looks finished.
#ifndef HEARTH_SERVICES_QUANTIZER_QUANTIZE_JOB_H_
#define HEARTH_SERVICES_QUANTIZER_QUANTIZE_JOB_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/jobs/job_manager.h"
#include "services/quantizer/quantize_model.h"

namespace hearth::quantizer {

struct JobSpec {
  std::string source_model;
  std::string output_name;
  std::string
      method;  // "rtn", "dynamic_int8", "static_int8", "gptq", "awq", "gguf"
  QuantizeOptions options;
  std::string text_file, corpus;
  int64_t num_samples = 128;
  int64_t sequence_length = 512;
  // "hearth", "gptq", "awq", "gguf_f16", "gguf_q8_0", "gguf_q4_0",
  // "gguf_q4_k_m".
  std::vector<std::string> formats;
  bool evaluate = false;
};

// Parses and checks the spec JSON. InvalidArgument names the field; NotFound
// when the source model is not in `model_repo`.
absl::StatusOr<JobSpec> ParseJobSpec(const std::string& spec_json,
                                     const std::string& model_repo);

// Runs the job; the JobRunner registered for kind "quantization".
absl::Status RunQuantizeJob(const std::string& model_repo,
                            jobs::JobContext& ctx);

}  // namespace hearth::quantizer

#endif  // HEARTH_SERVICES_QUANTIZER_QUANTIZE_JOB_H_
