// `hearth quantize`: builds a hearth.v1.QuantizationSpec from flags (or reads
// one from --spec JSON), submits it to hearth.v1.Quantization at --addr (the
// gateway's admin proxy or hearth-quantizer itself), and follows the job with
// WatchJob: a progress bar with the per-layer message ("layer 3/12: gptq
// q_proj"), then the final state, the artifacts and the evaluation table.
//
//   hearth quantize --model=hearth-student --method=gptq --bits=4 \
//       --group_size=128 --calibration_corpus=licenses --evaluate \
//       --addr=localhost:7001
//
// With --local no service is needed: the command starts a private
// hearth-quantizer (found next to this binary, else on PATH) on a free
// loopback port over --model_repository (job store <repo>/.quantizer-local,
// log <repo>/.quantizer-local.log), runs the job through it the same way, and
// stops it.
#ifndef HEARTH_TOOLS_HEARTH_QUANTIZE_COMMAND_H_
#define HEARTH_TOOLS_HEARTH_QUANTIZE_COMMAND_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hearth/v1/quantization.pb.h"

namespace hearth::cli {

// The spec from the quantize flags (or --spec); InvalidArgument naming the
// flag when one is wrong. Exposed for tests.
absl::StatusOr<v1::QuantizationSpec> QuantizeSpecFromFlags();

// The command's entry point (exit code).
int RunQuantize(const std::vector<std::string>& args);

}  // namespace hearth::cli

#endif  // HEARTH_TOOLS_HEARTH_QUANTIZE_COMMAND_H_
