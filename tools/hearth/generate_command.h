// `hearth generate`, offline: loads a model folder or .gguf file through
// model::LoadModel and streams its continuation of a prompt to stdout as the
// tokens are sampled, with the same generator and sampler the worker runs.
//
//   hearth generate --model models/tiny-student --prompt "Once upon a time"
//   hearth generate --model m.gguf --prompt_ids 1,450,4996 --token_ids
//       --max_new_tokens 32 --ignore_eos
//
// The rule (also in `hearth --help`): generate runs offline when --model names
// an existing folder or file and neither --remote nor --addr is given;
// otherwise it is a gateway client and --model is a model name the gateway
// serves. Text goes to stdout, a one-line summary (finish reason, token counts,
// time to first token, decode tokens/s) to stderr.
#ifndef HEARTH_TOOLS_HEARTH_GENERATE_COMMAND_H_
#define HEARTH_TOOLS_HEARTH_GENERATE_COMMAND_H_

#include <string>
#include <vector>

namespace hearth::v1 {
class GenerateRequest;
}

namespace hearth::cli {

// The command-table summary of `generate`, with the local/remote rule.
extern const char kGenerateSummary[];

// The prompt: --prompt, else the positional arguments joined by spaces.
std::string GeneratePrompt(const std::vector<std::string>& args);

// Whether `hearth generate` runs offline (see the rule above).
bool GenerateIsLocal();

// Offline generation; returns the process exit code (0 ok, 1 failed, 2 usage).
int RunLocalGenerate(const std::vector<std::string>& args);

// Copies the sampling flags that are not main.cc's (top_k, top_p,
// repetition_penalty, stop, ignore_eos) into a gateway request.
void SetRemoteSampling(v1::GenerateRequest* request);

}  // namespace hearth::cli

#endif  // HEARTH_TOOLS_HEARTH_GENERATE_COMMAND_H_
