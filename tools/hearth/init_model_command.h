// `hearth init-model`: writes a Hugging Face model folder with deterministic
// random weights and a real tokenizer, for tests and benchmarks.
//
//   hearth init-model --preset small --out /tmp/small [--tokenizer T]
//       [--seed 1] [--init_std 0.02]
//
// Presets (vocabulary: the tokenizer's, 32000 for the default Llama-2 one):
//   tiny   hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 128,
//          untied head, context 512.
//   small  SmolLM-135M's shape: hidden 576, 30 layers, 9 heads, 3 KV heads,
//          intermediate 1536, tied embeddings, context 2048.
// The folder gets config.json, model.safetensors, generation_config.json and
// the tokenizer's tokenizer.json (or tokenizer.model) and tokenizer_config.json
// copied beside them; --tokenizer takes a file or a folder and defaults to the
// Llama-2 tokenizer.json that scripts/setup installs under .deps/node.
#ifndef HEARTH_TOOLS_HEARTH_INIT_MODEL_COMMAND_H_
#define HEARTH_TOOLS_HEARTH_INIT_MODEL_COMMAND_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/formats/hf_config.h"

namespace hearth::cli {

extern const char kInitModelSummary[];

// The config of a preset ("tiny" or "small") for a tokenizer of `vocab_size`
// ids; InvalidArgument for another name.
absl::StatusOr<formats::LlamaConfig> PresetConfig(const std::string& preset,
                                                  int64_t vocab_size);

// Returns the process exit code (0 ok, 1 failed, 2 usage).
int RunInitModel(const std::vector<std::string>& args);

}  // namespace hearth::cli

#endif  // HEARTH_TOOLS_HEARTH_INIT_MODEL_COMMAND_H_
