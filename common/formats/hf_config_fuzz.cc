// libFuzzer target for ParseLlamaConfig / ParseGenerationConfig.
//
// Any accepted config must serialize to JSON that parses back to an equal
// config: that is what lets hearth rewrite a model folder without drift.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/formats/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hearth::formats;
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  auto config = ParseLlamaConfig(text);
  if (config.ok()) {
    auto back = ParseLlamaConfig(LlamaConfigToJson(*config));
    if (!back.ok() || !(*back == *config)) std::abort();
  }
  auto generation = ParseGenerationConfig(text);
  if (generation.ok()) {
    auto back = ParseGenerationConfig(GenerationConfigToJson(*generation));
    if (!back.ok() || !(*back == *generation)) std::abort();
  }
  return 0;
}
