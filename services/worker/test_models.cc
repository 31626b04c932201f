#include "services/worker/test_models.h"

#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/model/model_loader.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace hearth::worker::testing {

formats::LlamaConfig TinyConfig(const TinyModelOptions& o) {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = o.vocab_size;
  c.hidden_size = o.hidden_size;
  c.intermediate_size = o.intermediate_size;
  c.num_hidden_layers = o.num_layers;
  c.num_attention_heads = o.num_heads;
  c.num_key_value_heads = o.num_kv_heads;
  c.head_dim = o.hidden_size / o.num_heads;
  c.max_position_embeddings = o.max_position_embeddings;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.tie_word_embeddings = o.tie_word_embeddings;
  c.bos_token_id = kBosId;
  c.eos_token_id = kEosId;
  c.eos_token_ids = {kEosId};
  return c;
}

TinyModelOptions SmolLm135mShape() {
  TinyModelOptions o;
  o.vocab_size = 49152;
  o.hidden_size = 576;
  o.intermediate_size = 1536;
  o.num_layers = 30;
  o.num_heads = 9;
  o.num_kv_heads = 3;
  o.max_position_embeddings = 2048;
  o.tie_word_embeddings = true;
  o.init_std = 0.02;
  return o;
}

std::string ByteTokenizerJson(bool with_merge) {
  using Json = nlohmann::json;
  // GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest
  // to U+0100 onwards.
  Json vocab = Json::object();
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    std::string s;
    tokenizer::utf8::Append(static_cast<char32_t>(printable ? b : next++), &s);
    vocab[s] = b;
  }
  // GGUF's gpt2 tokenizer needs at least one merge (hearth's exporter and
  // llama.cpp refuse a byte-level BPE without merges): two spaces -> id 258.
  Json merges = Json::array();
  if (with_merge) {
    vocab["\u0120\u0120"] = kByteVocab;
    merges.push_back("\u0120 \u0120");
  }
  Json j = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", kBosId}, {"content", "<|begin_of_text|>"}, {"special", true}},
        {{"id", kEosId}, {"content", "<|end_of_text|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  return j.dump();
}

std::string TestDevice() {
  const char* v = std::getenv("HEARTH_WORKER_TEST_DEVICE");
  return v != nullptr && *v != 0 ? v : "cpu";
}

std::string TestDtype() {
  const char* v = std::getenv("HEARTH_WORKER_TEST_DTYPE");
  return v != nullptr && *v != 0 ? v : "auto";
}

absl::Status WriteTinyModel(const std::string& folder,
                            const TinyModelOptions& options) {
  const formats::LlamaConfig config = TinyConfig(options);
  HEARTH_RETURN_IF_ERROR(formats::Validate(config));
  model::RandomInitOptions init;
  init.init_std = options.init_std;
  HEARTH_ASSIGN_OR_RETURN(auto model,
                          model::MakeRandomModel(config, options.seed, init));
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  HEARTH_RETURN_IF_ERROR(model::SaveModel(*model, folder));
  if (options.write_tokenizer) {
    std::ofstream out(folder + "/tokenizer.json");
    out << ByteTokenizerJson(/*with_merge=*/options.vocab_size > kByteVocab);
    if (!out) {
      return absl::InternalError(
          absl::StrCat("cannot write ", folder, "/tokenizer.json"));
    }
  }
  return absl::OkStatus();
}

}  // namespace hearth::worker::testing
