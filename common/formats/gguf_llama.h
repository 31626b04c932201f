// Converting between a Hugging Face Llama model folder and a llama.cpp GGUF.
//
// ExportLlamaGguf does what llama.cpp's convert_hf_to_gguf.py does for
// LlamaForCausalLM (and MistralForCausalLM, which llama.cpp also runs as
// "llama"; Qwen2ForCausalLM becomes arch "qwen2"), so that the file loads in
// llama.cpp and behaves like the HF model:
//
//   * hyperparameters go to `<arch>.*` keys with llama.cpp's exact types
//   (UINT32
//     counts, FLOAT32 eps / rope base), because llama.cpp type-checks them;
//   * tensors get llama.cpp's names (token_embd, blk.N.attn_q, ...,
//   output_norm,
//     output; `output` is omitted for tied embeddings, llama.cpp then reuses
//     token_embd) and ggml dims (the torch shape reversed);
//   * for arch llama, the rows of q_proj and k_proj are permuted from HF's
//     rotate-half RoPE layout to the adjacent-pairs layout llama.cpp's "normal"
//     RoPE expects (reference §1.7); qwen2 uses NEOX RoPE and is not permuted;
//   * 1-D tensors (norms, biases) stay F32; 2-D weights take the requested
//   type,
//     falling back to F16 when a row is not a whole number of 32-value blocks
//     (convert_hf_to_gguf.py's fallback; llama.cpp rejects such Q8_0/Q4_0
//     rows);
//   * Llama-3 rope scaling becomes the `rope_freqs.weight` factor tensor,
//   linear
//     scaling the rope.scaling.* keys;
//   * the tokenizer comes from tokenizer.json: a byte-level BPE (Llama 3)
//   becomes
//     tokenizer.ggml.model "gpt2" with merges; a SentencePiece-style BPE
//     (Llama 2: "▁", byte_fallback, <0xNN> tokens) becomes "llama" with scores
//     derived from merge ranks, since llama.cpp's SPM tokenizer merges by score
//     and a constant score breaks tokenization (interop-notes.md).
//
// LoadLlamaGguf goes the other way for hearth's runtime: it reads a llama/qwen2
// GGUF (hearth's own or llama.cpp's), dequantizes every tensor to float,
// renames it to the HF name, undoes the Q/K permutation, and rebuilds the
// LlamaConfig.
#ifndef HEARTH_COMMON_FORMATS_GGUF_LLAMA_H_
#define HEARTH_COMMON_FORMATS_GGUF_LLAMA_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/ggml_quants.h"
#include "common/formats/gguf.h"
#include "common/formats/hf_config.h"

namespace hearth::formats {

// llama.cpp's token types (`enum llama_token_type`, gguf-py TokenType).
enum class GgufTokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// The tokenizer.ggml.* content of a GGUF.
struct GgufTokenizer {
  std::string model;  // "llama" (SentencePiece) or "gpt2" (byte-level BPE).
  std::string pre;  // Pre-tokenizer: "default", "llama-bpe", "qwen2", "gpt-2".
  std::vector<std::string> tokens;
  std::vector<float> scores;         // Empty when the file has none.
  std::vector<int32_t> token_types;  // GgufTokenType values; empty when absent.
  std::vector<std::string> merges;   // "a b", rank = index; gpt2 only.
  std::optional<int64_t> bos_id;
  std::optional<int64_t> eos_id;
  std::optional<int64_t> unk_id;
  std::optional<int64_t> pad_id;
  std::optional<bool> add_bos;
  std::optional<bool> add_eos;
  std::optional<bool> add_space_prefix;
  std::string chat_template;  // Empty when absent.
};

// Reads `folder`/tokenizer.json, or else `folder`/tokenizer.model
// (SentencePiece), plus tokenizer_config.json when present, into GGUF tokenizer
// content. The vocabulary is padded with "[PADn]" (UNUSED) up to
// config.vocab_size, because llama.cpp sizes the embedding by the token count.
// Special ids come from tokenizer_config.json first, then from `config`.
absl::StatusOr<GgufTokenizer> TokenizerFromHfFolder(const std::string& folder,
                                                    const LlamaConfig& config);
// The same from tokenizer.json / tokenizer_config.json text (`config_json` may
// be empty).
absl::StatusOr<GgufTokenizer> TokenizerFromHfJson(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json,
    const LlamaConfig& config);

// The same from a SentencePiece tokenizer.model (a serialized ModelProto): the
// pieces with their own scores and types, as convert_hf_to_gguf.py writes them.
absl::StatusOr<GgufTokenizer> TokenizerFromSentencePiece(
    std::string_view model_proto, std::string_view tokenizer_config_json,
    const LlamaConfig& config);

// Writes the tokenizer.ggml.* keys (and tokenizer.chat_template).
void AddTokenizerMetadata(const GgufTokenizer& tokenizer, GgufWriter* writer);
// Reads them back; NotFound when the file has no tokenizer.ggml.model.
absl::StatusOr<GgufTokenizer> ReadGgufTokenizer(const GgufFile& file);

// Progress of an export: called after each tensor is written.
using GgufExportProgressFn = std::function<void(
    int64_t tensors_done, int64_t tensors_total, std::string_view name)>;

// Converts the HF model folder (config.json, model.safetensors or shards,
// tokenizer.json) to a GGUF at `out_path` (written atomically). `weight_type`
// is the type of the 2-D weights: kF32, kF16, kBF16, kQ8_0 or kQ4_0. Memory use
// is about one tensor; the checkpoint is mapped, not read.
absl::Status ExportLlamaGguf(const std::string& hf_model_folder,
                             const std::string& out_path, GgmlType weight_type,
                             const GgufExportProgressFn* progress = nullptr);

// A GGUF model dequantized into HF terms.
struct LoadedGguf {
  LlamaConfig config;
  // HF tensor names ("model.layers.0.self_attn.q_proj.weight", ...), row-major
  // float data in HF layout (Q/K un-permuted). lm_head.weight is absent when
  // the embeddings are tied.
  std::map<std::string, std::vector<float>> tensors;
  std::map<std::string, std::vector<int64_t>> shapes;  // HF (torch) order.
  // The ggml type each tensor was stored as, by HF name.
  std::map<std::string, GgmlType> stored_types;
  GgufTokenizer tokenizer;
  // llama.cpp's Llama-3 RoPE frequency factors (n_rot/2), when the file has
  // them; config.rope_scaling is filled in too when they match the llama3
  // formula.
  std::vector<float> rope_freqs;
  std::string name;  // general.name, or empty.
};

absl::StatusOr<LoadedGguf> LoadLlamaGguf(const std::string& path);

// The Q/K row permutation of convert_hf_to_gguf.py (LlamaModel.permute) on a
// row-major [rows, cols] matrix (cols = 1 for a bias), with rows = n_head *
// head_dim: dst row h*hd + 2i + j = src row h*hd + j*hd/2 + i. Unpermute is its
// inverse. InvalidArgument when rows is not a multiple of 2 * n_head.
absl::Status PermuteQkRows(const float* src, float* dst, int64_t rows,
                           int64_t cols, int64_t n_head);
absl::Status UnpermuteQkRows(const float* src, float* dst, int64_t rows,
                             int64_t cols, int64_t n_head);

// llama.cpp's general.file_type (llama_ftype) for a weight type: F32 0, F16 1,
// Q4_0 2, Q8_0 7, BF16 32.
absl::StatusOr<uint32_t> LlamaFileType(GgmlType weight_type);

// The llama3 RoPE factors llama.cpp expects in rope_freqs.weight, as
// convert_hf_to_gguf.py computes them; empty unless rope_scaling.type is
// "llama3".
std::vector<float> Llama3RopeFactors(const LlamaConfig& config);

}  // namespace hearth::formats

#endif  // HEARTH_COMMON_FORMATS_GGUF_LLAMA_H_
