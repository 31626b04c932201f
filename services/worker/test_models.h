// Tiny models for the worker's tests and benchmarks: a random Llama model saved
// as a Hugging Face folder, with a byte-level tokenizer.json (every byte one
// token, ids 0-255; 256 = <|begin_of_text|>, 257 = <|end_of_text|>), so that
// text prompts, streaming text and stop strings can be exercised without
// downloading anything.
//
// The weights are drawn with a larger spread than transformers' 0.02 init so
// that the logits differ by whole units: with near-uniform logits, greedy
// decoding would be decided by float rounding, and "batching does not change
// the tokens" would test nothing but luck.
#ifndef HEARTH_SERVICES_WORKER_TEST_MODELS_H_
#define HEARTH_SERVICES_WORKER_TEST_MODELS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/formats/hf_config.h"

namespace hearth::worker::testing {

inline constexpr int64_t kByteVocab = 258;
inline constexpr int64_t kBosId = 256;
inline constexpr int64_t kEosId = 257;

struct TinyModelOptions {
  int64_t vocab_size =
      kByteVocab;  // >= kByteVocab when a tokenizer is written.
  int64_t hidden_size = 64;
  int64_t intermediate_size = 128;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t max_position_embeddings = 512;
  bool tie_word_embeddings = false;
  uint64_t seed = 1;
  double init_std = 0.15;
  bool write_tokenizer = true;
};

formats::LlamaConfig TinyConfig(const TinyModelOptions& options);

// SmolLM-135M's shape (HuggingFaceTB/SmolLM-135M config.json): vocab 49152,
// hidden 576, intermediate 1536, 30 layers, 9 heads, 3 KV heads, tied
// embeddings, context 2048.
TinyModelOptions SmolLm135mShape();

// The byte-level tokenizer.json described above. With `with_merge`, one merge
// (two spaces -> id 258) is added, because GGUF's gpt2 tokenizer needs merges;
// WriteTinyModel adds it when the model's vocabulary has room.
std::string ByteTokenizerJson(bool with_merge = false);

// The device and dtype the worker tests run on: $HEARTH_WORKER_TEST_DEVICE
// (default "cpu") and $HEARTH_WORKER_TEST_DTYPE (default "auto"); set by
// scripts/gpu-check to run the same tests on a GPU.
std::string TestDevice();
std::string TestDtype();

// Writes config.json, model.safetensors and (optionally) tokenizer.json into
// `folder` (created).
absl::Status WriteTinyModel(const std::string& folder,
                            const TinyModelOptions& options = {});

}  // namespace hearth::worker::testing

#endif  // HEARTH_SERVICES_WORKER_TEST_MODELS_H_
