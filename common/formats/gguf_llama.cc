#include "common/formats/gguf_llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/formats/dtype.h"
#include "common/formats/safetensors.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/sentencepiece_model.h"
#include "nlohmann/json.hpp"

namespace hearth::formats {
namespace {

using json = nlohmann::json;

// absl 20220623 builds its own string_view, which StrCat needs.
absl::string_view SV(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// llama.cpp's GGML_QNT_VERSION; convert_hf_to_gguf.py always writes it.
constexpr uint32_t kQuantizationVersion = 2;

// Byte-level BPE pre-tokenizer regexes llama.cpp knows by name (the Split
// pattern of tokenizer.json). convert_hf_to_gguf.py identifies them by hashing
// the tokenization of a probe text; comparing the pattern is the torch-free
// equivalent for the families hearth runs.
constexpr std::string_view kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr std::string_view kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

constexpr std::string_view kSpmSpace = "\xe2\x96\x81";  // U+2581 "▁"

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  return ss.str();
}

bool FileExists(const std::string& path) { return std::ifstream(path).good(); }

std::string Join(const std::string& folder, std::string_view name) {
  if (folder.empty() || folder.back() == '/') return folder + std::string(name);
  return folder + "/" + std::string(name);
}

std::string Basename(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// --------------------------------------------------------------- tokenizer

// Whether `j` (any JSON subtree) contains an object with "type": `type`.
bool HasComponent(const json& j, std::string_view type) {
  if (j.is_object()) {
    auto it = j.find("type");
    if (it != j.end() && it->is_string() && it->get<std::string>() == type)
      return true;
    for (const auto& [k, v] : j.items()) {
      if (HasComponent(v, type)) return true;
    }
  } else if (j.is_array()) {
    for (const json& v : j) {
      if (HasComponent(v, type)) return true;
    }
  }
  return false;
}

// The first Split pre-tokenizer's regex, or "".
std::string SplitRegex(const json& j) {
  if (j.is_object()) {
    auto type = j.find("type");
    if (type != j.end() && type->is_string() && *type == "Split") {
      auto pattern = j.find("pattern");
      if (pattern != j.end() && pattern->is_object()) {
        auto re = pattern->find("Regex");
        if (re != pattern->end() && re->is_string())
          return re->get<std::string>();
      }
    }
    for (const auto& [k, v] : j.items()) {
      std::string r = SplitRegex(v);
      if (!r.empty()) return r;
    }
  } else if (j.is_array()) {
    for (const json& v : j) {
      std::string r = SplitRegex(v);
      if (!r.empty()) return r;
    }
  }
  return "";
}

// Whether SentencePiece-style text is prefixed with "▁" before BPE: the legacy
// normalizer (Prepend "▁") or a Metaspace pre-tokenizer that prepends.
bool AddsSpacePrefix(const json& tok) {
  std::function<bool(const json&)> walk = [&](const json& j) -> bool {
    if (j.is_object()) {
      const std::string type = j.value("type", std::string());
      if (type == "Prepend" && j.value("prepend", std::string()) == kSpmSpace)
        return true;
      if (type == "Metaspace") {
        if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
          return j["prepend_scheme"] != "never";
        }
        if (j.contains("add_prefix_space") &&
            j["add_prefix_space"].is_boolean()) {
          return j["add_prefix_space"].get<bool>();
        }
        return true;
      }
      for (const auto& [k, v] : j.items()) {
        if (walk(v)) return true;
      }
    } else if (j.is_array()) {
      for (const json& v : j) {
        if (walk(v)) return true;
      }
    }
    return false;
  };
  return walk(tok.value("normalizer", json())) ||
         walk(tok.value("pre_tokenizer", json()));
}

// convert_hf_to_gguf.py's does_token_look_special, for added tokens not flagged
// special.
bool LooksSpecial(const std::string& t) {
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]")
    return true;
  auto wrapped = [&](std::string_view open, std::string_view close) {
    return t.size() >= open.size() + close.size() &&
           absl::StartsWith(t, SV(open)) && absl::EndsWith(t, SV(close));
  };
  return wrapped("<|", "|>") || wrapped("\xef\xbd\x9c", "\xef\xbd\x9c>");
}

bool IsByteToken(const std::string& t) {
  auto hex = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (c >= 'A' && c <= 'F');
  };
  return t.size() == 6 && t[0] == '<' && t[1] == '0' && t[2] == 'x' &&
         hex(t[3]) && hex(t[4]) && t[5] == '>';
}

void ReplaceAll(std::string* s, std::string_view from, std::string_view to) {
  for (size_t pos = 0; (pos = s->find(from, pos)) != std::string::npos;
       pos += to.size()) {
    s->replace(pos, from.size(), to);
  }
}

// A special token of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> ConfigToken(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") &&
      (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

absl::StatusOr<GgufTokenizer> ParseTokenizer(const json& tok,
                                             const json& tok_config,
                                             const LlamaConfig& config) {
  if (!tok.is_object() || !tok.contains("model") || !tok["model"].is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: no \"model\" object");
  }
  const json& model = tok["model"];
  const std::string type = model.value("type", std::string());
  if (type != "BPE") {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer.json: model.type \"", type,
        "\" is not supported; only BPE tokenizers "
        "(Llama 2 SentencePiece-BPE, Llama 3 byte-level BPE) convert to GGUF"));
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError(
        "tokenizer.json: model.vocab is not an object");
  }

  // id -> text from the model vocabulary, then the added tokens on top.
  std::map<int64_t, std::string> by_id;
  std::map<std::string, int64_t> by_text;
  for (const auto& [text, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer.json: model.vocab[\"", text, "\"] is not a token id"));
    }
    by_id[id.get<int64_t>()] = text;
    by_text[text] = id.get<int64_t>();
  }
  struct Added {
    bool special;
  };
  std::map<int64_t, Added> added;
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const json& a : tok["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          a["id"].get<int64_t>() < 0 || !a.contains("content") ||
          !a["content"].is_string()) {
        return absl::InvalidArgumentError(
            "tokenizer.json: malformed added_tokens entry");
      }
      const int64_t id = a["id"].get<int64_t>();
      by_id[id] = a["content"].get<std::string>();
      by_text[a["content"].get<std::string>()] = id;
      added[id] = Added{a.value("special", false)};
    }
  }
  const int64_t max_id = by_id.empty() ? -1 : by_id.rbegin()->first;
  if (max_id >= config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json has token id ", max_id,
                     " but config.json vocab_size is ", config.vocab_size,
                     "; llama.cpp needs the vocabulary to fit the embedding"));
  }

  std::vector<std::pair<std::string, std::string>> merges;
  if (model.contains("merges") && !model["merges"].is_array()) {
    return absl::InvalidArgumentError(
        "tokenizer.json: model.merges is not an array");
  }
  if (model.contains("merges")) {
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        // "a b": split at the first space after position 0, as llama.cpp does.
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ', 1);
        if (space == std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("tokenizer.json: merge \"", s, "\" has no space"));
        }
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() &&
                 m[1].is_string()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        return absl::InvalidArgumentError(
            "tokenizer.json: a merge is neither \"a b\" nor [a, b]");
      }
    }
  }

  const bool byte_fallback = model.value("byte_fallback", false);
  const bool byte_level =
      HasComponent(tok.value("pre_tokenizer", json()), "ByteLevel") ||
      HasComponent(tok.value("decoder", json()), "ByteLevel");
  const bool sentencepiece =
      byte_fallback ||
      HasComponent(tok.value("pre_tokenizer", json()), "Metaspace") ||
      AddsSpacePrefix(tok);
  GgufTokenizer out;
  if (byte_level && !sentencepiece) {
    out.model = "gpt2";
    const std::string regex = SplitRegex(tok.value("pre_tokenizer", json()));
    if (regex == kLlama3Regex) {
      out.pre = "llama-bpe";
    } else if (regex == kQwen2Regex) {
      out.pre = "qwen2";
    } else if (regex.empty()) {
      out.pre = "gpt-2";  // Plain ByteLevel with its built-in GPT-2 regex.
    } else {
      // llama.cpp warns and uses its default splitting; better than failing.
      out.pre = "default";
    }
  } else if (sentencepiece) {
    out.model = "llama";
    out.pre = "default";  // What convert_hf_to_gguf.py writes for SPM vocabs.
    out.add_space_prefix = AddsSpacePrefix(tok);
  } else {
    return absl::UnimplementedError(
        "tokenizer.json: a BPE model that is neither byte-level (ByteLevel "
        "pre-tokenizer) nor "
        "SentencePiece-style (Metaspace / byte_fallback) cannot be expressed "
        "in GGUF");
  }

  std::optional<int64_t> unk_id;
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = by_text.find(model["unk_token"].get<std::string>());
    if (it != by_text.end()) unk_id = it->second;
  }

  const int64_t n = config.vocab_size;
  out.tokens.resize(n);
  out.token_types.resize(n);
  if (out.model == "llama") out.scores.assign(n, 0.0f);
  for (int64_t id = 0; id < n; ++id) {
    auto it = by_id.find(id);
    if (it == by_id.end()) {
      out.tokens[id] = absl::StrCat("[PAD", id, "]");
      out.token_types[id] = static_cast<int32_t>(GgufTokenType::kUnused);
      if (!out.scores.empty()) out.scores[id] = -1000.0f;
      continue;
    }
    std::string text = it->second;
    GgufTokenType type = GgufTokenType::kNormal;
    auto a = added.find(id);
    const bool in_model_vocab = model["vocab"].contains(text);
    if (unk_id == id && out.model == "llama") {
      type = GgufTokenType::kUnknown;
    } else if (a != added.end() && (a->second.special || LooksSpecial(text))) {
      type = GgufTokenType::kControl;
    } else if (a != added.end() && !in_model_vocab) {
      // llama.cpp matches user-defined tokens on raw text, so pre-normalize the
      // SentencePiece space marker as convert_hf_to_gguf.py does.
      ReplaceAll(&text, kSpmSpace, " ");
      type = GgufTokenType::kUserDefined;
    } else if (out.model == "llama" && byte_fallback && IsByteToken(text)) {
      type = GgufTokenType::kByte;
    }
    out.tokens[id] = std::move(text);
    out.token_types[id] = static_cast<int32_t>(type);
  }

  if (out.model == "gpt2") {
    if (merges.empty()) {
      // llama.cpp: "cannot find tokenizer merges in model file".
      return absl::InvalidArgumentError(
          "tokenizer.json: byte-level BPE without merges");
    }
    out.merges.reserve(merges.size());
    for (const auto& [a, b] : merges)
      out.merges.push_back(absl::StrCat(a, " ", b));
  } else {
    // llama.cpp's SPM tokenizer repeatedly merges the adjacent pair whose
    // concatenation is the vocabulary token with the highest score (leftmost on
    // ties). HF's BPE merges the pair of lowest merge rank (leftmost on ties).
    // Scoring each token by minus the rank of the first merge that produces it
    // makes the two agree. Tokens no merge produces (single characters) rank
    // below every merge, as in SentencePiece models.
    const float kUnset = std::numeric_limits<float>::infinity();
    std::vector<float> score(n, kUnset);
    for (size_t r = 0; r < merges.size(); ++r) {
      auto it = by_text.find(merges[r].first + merges[r].second);
      if (it != by_text.end() && it->second < n &&
          score[it->second] == kUnset) {
        score[it->second] = -static_cast<float>(r);
      }
    }
    for (int64_t id = 0; id < n; ++id) {
      if (out.token_types[id] != static_cast<int32_t>(GgufTokenType::kNormal))
        continue;
      out.scores[id] =
          score[id] != kUnset
              ? score[id]
              : -static_cast<float>(merges.size()) - static_cast<float>(id);
    }
  }

  // Special ids: tokenizer_config.json first, then config.json (SpecialVocab's
  // order in gguf-py).
  auto lookup = [&](const char* key) -> std::optional<int64_t> {
    std::optional<std::string> text = ConfigToken(tok_config, key);
    if (!text) return std::nullopt;
    auto it = by_text.find(*text);
    if (it == by_text.end()) return std::nullopt;
    return it->second;
  };
  auto in_range = [&](int64_t id) -> std::optional<int64_t> {
    if (id >= 0 && id < n) return id;
    return std::nullopt;
  };
  out.bos_id = lookup("bos_token");
  if (!out.bos_id) out.bos_id = in_range(config.bos_token_id);
  out.eos_id = lookup("eos_token");
  if (!out.eos_id) out.eos_id = in_range(config.eos_token_id);
  out.unk_id = unk_id ? unk_id : lookup("unk_token");
  out.pad_id = lookup("pad_token");
  if (!out.pad_id && config.pad_token_id)
    out.pad_id = in_range(*config.pad_token_id);

  if (tok_config.contains("add_bos_token") &&
      tok_config["add_bos_token"].is_boolean()) {
    out.add_bos = tok_config["add_bos_token"].get<bool>();
  } else {
    // A TemplateProcessing post-processor that starts with the BOS token is how
    // tokenizer.json itself says "add BOS".
    bool templated = false;
    std::function<void(const json&)> walk = [&](const json& j) {
      if (!j.is_object()) return;
      if (j.value("type", std::string()) == "TemplateProcessing" &&
          j.contains("single") && j["single"].is_array() &&
          !j["single"].empty() && j["single"][0].is_object() &&
          j["single"][0].contains("SpecialToken")) {
        templated = true;
      }
      if (j.contains("processors") && j["processors"].is_array()) {
        for (const json& p : j["processors"]) walk(p);
      }
    };
    walk(tok.value("post_processor", json()));
    // Llama-family vocabularies (SPM, llama-bpe) add BOS by default in
    // llama.cpp.
    out.add_bos = templated || out.model == "llama" || out.pre == "llama-bpe";
  }
  if (tok_config.contains("add_eos_token") &&
      tok_config["add_eos_token"].is_boolean()) {
    out.add_eos = tok_config["add_eos_token"].get<bool>();
  }
  if (tok_config.contains("chat_template")) {
    const json& t = tok_config["chat_template"];
    if (t.is_string()) {
      out.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      for (const json& e : t) {
        if (e.is_object() && e.value("name", std::string()) == "default" &&
            e.contains("template") && e["template"].is_string()) {
          out.chat_template = e["template"].get<std::string>();
        }
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------ tensors

absl::StatusOr<std::vector<float>> ToF32(const TensorView& v) {
  const int64_t n = v.numel();
  if (v.nbytes != static_cast<size_t>(n) * DTypeSize(v.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", v.name, " has ", v.nbytes, " bytes for ", n, " elements"));
  }
  std::vector<float> out(static_cast<size_t>(n));
  const uint8_t* p = v.data;
  switch (v.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), p, v.nbytes);
      break;
    case DType::kF16:
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = v.dtype == DType::kF16 ? HalfToFloat(h) : BFloat16ToFloat(h);
      }
      break;
    case DType::kF64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", v.name, " has dtype ", SV(SafetensorsName(v.dtype)),
          "; only float weights convert to GGUF"));
  }
  return out;
}

enum class Permute { kNone, kQ, kK };

struct PlannedTensor {
  std::string hf_name;
  std::string gguf_name;
  Permute permute = Permute::kNone;
};

// HF -> GGUF names for one layer, in llama.cpp's order.
const std::pair<const char*, const char*> kLayerTensors[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.gate_proj.bias", "ffn_gate.bias"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.up_proj.bias", "ffn_up.bias"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.down_proj.bias", "ffn_down.bias"},
};

bool RequiredLayerTensor(std::string_view hf_suffix) {
  return absl::EndsWith(SV(hf_suffix), ".weight");
}

struct Arch {
  std::string name;  // general.architecture
  bool permute_qk;
};

absl::StatusOr<Arch> ArchFor(const LlamaConfig& c) {
  if (c.model_type == "llama" || c.model_type == "mistral")
    return Arch{"llama", true};
  if (c.model_type == "qwen2") return Arch{"qwen2", false};
  return absl::UnimplementedError(absl::StrCat(
      "GGUF export supports llama, mistral and qwen2 models, not \"",
      c.model_type, "\""));
}

double ShortestDecimal(float f) {
  char buf[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, static_cast<double>(f));
    if (std::strtof(buf, nullptr) == f) break;
  }
  return std::strtod(buf, nullptr);
}

absl::Status CheckU32(std::string_view what, int64_t v) {
  if (v < 0 || v > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat(SV(what), " = ", v, " does not fit the UINT32 GGUF key"));
  }
  return absl::OkStatus();
}

}  // namespace

// --------------------------------------------------------------- public API

absl::Status PermuteQkRows(const float* src, float* dst, int64_t rows,
                           int64_t cols, int64_t n_head) {
  if (n_head <= 0 || rows % (2 * n_head) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot permute ", rows, " rows for RoPE: not a multiple of 2 * ",
        n_head, " heads"));
  }
  const int64_t hd = rows / n_head;
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const float* from = src + (h * hd + j * (hd / 2) + i) * cols;
        std::copy(from, from + cols, dst + (h * hd + 2 * i + j) * cols);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status UnpermuteQkRows(const float* src, float* dst, int64_t rows,
                             int64_t cols, int64_t n_head) {
  if (n_head <= 0 || rows % (2 * n_head) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot un-permute ", rows, " rows for RoPE: not a multiple of 2 * ",
        n_head, " heads"));
  }
  const int64_t hd = rows / n_head;
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const float* from = src + (h * hd + 2 * i + j) * cols;
        std::copy(from, from + cols, dst + (h * hd + j * (hd / 2) + i) * cols);
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> LlamaFileType(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::kF32:
      return 0;
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ4_0:
      return 2;
    case GgmlType::kQ8_0:
      return 7;
    case GgmlType::kBF16:
      return 32;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "GGUF export writes f32, f16, bf16, q8_0 or q4_0 weights, not ",
          SV(GgmlTypeName(weight_type))));
  }
}

std::vector<float> Llama3RopeFactors(const LlamaConfig& c) {
  const RopeScaling& s = c.rope_scaling;
  if (s.type != "llama3" || c.head_dim <= 0) return {};
  const double low_wavelen =
      s.original_max_position_embeddings / s.low_freq_factor;
  const double high_wavelen =
      s.original_max_position_embeddings / s.high_freq_factor;
  std::vector<float> out;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    // torch computes base ** (arange(0, dim, 2).float() / dim) in float32.
    const float exponent =
        static_cast<float>(i) / static_cast<float>(c.head_dim);
    const float freq =
        1.0f / std::pow(static_cast<float>(c.rope_theta), exponent);
    const double wavelen = 2 * M_PI / static_cast<double>(freq);
    double f;
    if (wavelen < high_wavelen) {
      f = 1;
    } else if (wavelen > low_wavelen) {
      f = s.factor;
    } else {
      const double smooth =
          (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
          (s.high_freq_factor - s.low_freq_factor);
      f = 1 / ((1 - smooth) / s.factor + smooth);
    }
    out.push_back(static_cast<float>(f));
  }
  return out;
}

absl::StatusOr<GgufTokenizer> TokenizerFromHfJson(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json,
    const LlamaConfig& config) {
  json tok =
      json::parse(tokenizer_json.begin(), tokenizer_json.end(), nullptr, false);
  if (tok.is_discarded())
    return absl::InvalidArgumentError("tokenizer.json is not valid JSON");
  json tok_config = json::object();
  if (!tokenizer_config_json.empty()) {
    tok_config = json::parse(tokenizer_config_json.begin(),
                             tokenizer_config_json.end(), nullptr, false);
    if (tok_config.is_discarded() || !tok_config.is_object()) {
      return absl::InvalidArgumentError(
          "tokenizer_config.json is not a JSON object");
    }
  }
  try {
    return ParseTokenizer(tok, tok_config, config);
  } catch (const json::exception& e) {
    // Typed accessors throw on an unexpected shape; nothing escapes this
    // module.
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<GgufTokenizer> TokenizerFromSentencePiece(
    std::string_view model_proto, std::string_view tokenizer_config_json,
    const LlamaConfig& config) {
  HEARTH_ASSIGN_OR_RETURN(tokenizer::SentencePieceModel spm,
                          tokenizer::ParseSentencePieceModel(model_proto));
  std::vector<tokenizer::SentencePieceModel::Piece>& pieces = spm.pieces;
  const bool add_dummy_prefix = spm.add_dummy_prefix;
  const int64_t n = config.vocab_size;
  if (static_cast<int64_t>(pieces.size()) > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.model has ", pieces.size(),
                     " pieces but config.json vocab_size is ", n));
  }
  json tok_config = json::object();
  if (!tokenizer_config_json.empty()) {
    tok_config = json::parse(tokenizer_config_json.begin(),
                             tokenizer_config_json.end(), nullptr, false);
    if (tok_config.is_discarded() || !tok_config.is_object()) {
      return absl::InvalidArgumentError(
          "tokenizer_config.json is not a JSON object");
    }
  }
  // What convert_hf_to_gguf.py's _create_vocab_sentencepiece writes: the pieces
  // with their own scores, and SentencePiece's piece types, which use the same
  // numbers as GGUF's (USER_DEFINED pieces are written as NORMAL there too).
  GgufTokenizer out;
  out.model = "llama";
  out.pre = "default";
  out.add_space_prefix = add_dummy_prefix;
  std::map<std::string, int64_t> by_text;
  for (int64_t id = 0; id < n; ++id) {
    if (id < static_cast<int64_t>(pieces.size())) {
      tokenizer::SentencePieceModel::Piece& p = pieces[id];
      int32_t type = static_cast<int32_t>(p.type);
      if (type == static_cast<int32_t>(GgufTokenType::kUserDefined)) {
        type = static_cast<int32_t>(GgufTokenType::kNormal);
      }
      if (type == static_cast<int32_t>(GgufTokenType::kUnknown) && !out.unk_id)
        out.unk_id = id;
      by_text.emplace(p.piece, id);
      out.tokens.push_back(std::move(p.piece));
      out.scores.push_back(p.score);
      out.token_types.push_back(type);
    } else {
      out.tokens.push_back(absl::StrCat("[PAD", id, "]"));
      out.scores.push_back(-1000.0f);
      out.token_types.push_back(static_cast<int32_t>(GgufTokenType::kUnused));
    }
  }
  auto lookup = [&](const char* key) -> std::optional<int64_t> {
    std::optional<std::string> text = ConfigToken(tok_config, key);
    if (!text) return std::nullopt;
    auto it = by_text.find(*text);
    if (it == by_text.end()) return std::nullopt;
    return it->second;
  };
  auto in_range = [&](int64_t id) -> std::optional<int64_t> {
    if (id >= 0 && id < n) return id;
    return std::nullopt;
  };
  out.bos_id = lookup("bos_token");
  if (!out.bos_id) out.bos_id = in_range(config.bos_token_id);
  out.eos_id = lookup("eos_token");
  if (!out.eos_id) out.eos_id = in_range(config.eos_token_id);
  out.pad_id = lookup("pad_token");
  if (!out.pad_id && config.pad_token_id)
    out.pad_id = in_range(*config.pad_token_id);
  out.add_bos =
      true;  // SentencePiece Llama adds BOS unless the config says not.
  if (tok_config.contains("add_bos_token") &&
      tok_config["add_bos_token"].is_boolean()) {
    out.add_bos = tok_config["add_bos_token"].get<bool>();
  }
  if (tok_config.contains("add_eos_token") &&
      tok_config["add_eos_token"].is_boolean()) {
    out.add_eos = tok_config["add_eos_token"].get<bool>();
  }
  if (tok_config.contains("chat_template") &&
      tok_config["chat_template"].is_string()) {
    out.chat_template = tok_config["chat_template"].get<std::string>();
  }
  return out;
}

absl::StatusOr<GgufTokenizer> TokenizerFromHfFolder(const std::string& folder,
                                                    const LlamaConfig& config) {
  std::string config_text;
  const std::string config_path = Join(folder, "tokenizer_config.json");
  if (FileExists(config_path)) {
    HEARTH_ASSIGN_OR_RETURN(config_text, ReadFile(config_path));
  }
  // tokenizer.json first, then tokenizer.model: the same order as hearth's
  // tokenizer (common/tokenizer), so that the GGUF tokenizes as hearth does.
  const std::string json_path = Join(folder, "tokenizer.json");
  const std::string spm_path = Join(folder, "tokenizer.model");
  absl::StatusOr<GgufTokenizer> out;
  if (FileExists(json_path)) {
    HEARTH_ASSIGN_OR_RETURN(std::string text, ReadFile(json_path));
    out = TokenizerFromHfJson(text, config_text, config);
  } else if (FileExists(spm_path)) {
    HEARTH_ASSIGN_OR_RETURN(std::string proto, ReadFile(spm_path));
    out = TokenizerFromSentencePiece(proto, config_text, config);
  } else {
    return absl::NotFoundError(
        absl::StrCat(folder,
                     ": no tokenizer.json or tokenizer.model; GGUF files carry "
                     "the tokenizer"));
  }
  if (!out.ok()) {
    return absl::Status(out.status().code(),
                        absl::StrCat(folder, ": ", out.status().message()));
  }
  return out;
}

void AddTokenizerMetadata(const GgufTokenizer& t, GgufWriter* w) {
  w->Set("tokenizer.ggml.model", GgufValue::String(t.model));
  if (!t.pre.empty()) w->Set("tokenizer.ggml.pre", GgufValue::String(t.pre));
  w->Set("tokenizer.ggml.tokens", GgufValue::StringArray(t.tokens));
  if (!t.scores.empty())
    w->Set("tokenizer.ggml.scores", GgufValue::F32Array(t.scores));
  if (!t.token_types.empty()) {
    w->Set("tokenizer.ggml.token_type", GgufValue::I32Array(t.token_types));
  }
  if (!t.merges.empty())
    w->Set("tokenizer.ggml.merges", GgufValue::StringArray(t.merges));
  auto id = [&](const char* key, const std::optional<int64_t>& v) {
    if (v) w->Set(key, GgufValue::U32(static_cast<uint32_t>(*v)));
  };
  id("tokenizer.ggml.bos_token_id", t.bos_id);
  id("tokenizer.ggml.eos_token_id", t.eos_id);
  id("tokenizer.ggml.unknown_token_id", t.unk_id);
  id("tokenizer.ggml.padding_token_id", t.pad_id);
  if (t.add_bos)
    w->Set("tokenizer.ggml.add_bos_token", GgufValue::Bool(*t.add_bos));
  if (t.add_eos)
    w->Set("tokenizer.ggml.add_eos_token", GgufValue::Bool(*t.add_eos));
  if (t.add_space_prefix) {
    w->Set("tokenizer.ggml.add_space_prefix",
           GgufValue::Bool(*t.add_space_prefix));
  }
  if (!t.chat_template.empty()) {
    w->Set("tokenizer.chat_template", GgufValue::String(t.chat_template));
  }
}

absl::StatusOr<GgufTokenizer> ReadGgufTokenizer(const GgufFile& f) {
  GgufTokenizer t;
  HEARTH_ASSIGN_OR_RETURN(t.model, f.GetString("tokenizer.ggml.model"));
  if (f.Find("tokenizer.ggml.pre") != nullptr) {
    HEARTH_ASSIGN_OR_RETURN(t.pre, f.GetString("tokenizer.ggml.pre"));
  }
  HEARTH_ASSIGN_OR_RETURN(t.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  if (f.Find("tokenizer.ggml.scores") != nullptr) {
    HEARTH_ASSIGN_OR_RETURN(t.scores, f.GetFloatArray("tokenizer.ggml.scores"));
  }
  if (f.Find("tokenizer.ggml.token_type") != nullptr) {
    HEARTH_ASSIGN_OR_RETURN(std::vector<int64_t> types,
                            f.GetIntArray("tokenizer.ggml.token_type"));
    t.token_types.assign(types.begin(), types.end());
  }
  if (f.Find("tokenizer.ggml.merges") != nullptr) {
    HEARTH_ASSIGN_OR_RETURN(t.merges,
                            f.GetStringArray("tokenizer.ggml.merges"));
  }
  for (auto [key, field] :
       {std::pair{"tokenizer.ggml.bos_token_id", &t.bos_id},
        std::pair{"tokenizer.ggml.eos_token_id", &t.eos_id},
        std::pair{"tokenizer.ggml.unknown_token_id", &t.unk_id},
        std::pair{"tokenizer.ggml.padding_token_id", &t.pad_id}}) {
    if (f.Find(key) != nullptr) {
      HEARTH_ASSIGN_OR_RETURN(*field, f.GetInt(key));
    }
  }
  for (auto [key, field] :
       {std::pair{"tokenizer.ggml.add_bos_token", &t.add_bos},
        std::pair{"tokenizer.ggml.add_eos_token", &t.add_eos},
        std::pair{"tokenizer.ggml.add_space_prefix", &t.add_space_prefix}}) {
    if (f.Find(key) != nullptr) {
      HEARTH_ASSIGN_OR_RETURN(*field, f.GetBool(key));
    }
  }
  if (f.Find("tokenizer.chat_template") != nullptr) {
    HEARTH_ASSIGN_OR_RETURN(t.chat_template,
                            f.GetString("tokenizer.chat_template"));
  }
  return t;
}

absl::Status ExportLlamaGguf(const std::string& folder,
                             const std::string& out_path, GgmlType weight_type,
                             const GgufExportProgressFn* progress) {
  HEARTH_ASSIGN_OR_RETURN(const uint32_t file_type, LlamaFileType(weight_type));
  HEARTH_ASSIGN_OR_RETURN(const LlamaConfig c,
                          LoadLlamaConfig(Join(folder, "config.json")));
  HEARTH_ASSIGN_OR_RETURN(const Arch arch, ArchFor(c));
  HEARTH_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> ckpt,
                          CheckpointReader::Open(folder));
  HEARTH_ASSIGN_OR_RETURN(const GgufTokenizer tokenizer,
                          TokenizerFromHfFolder(folder, c));

  for (auto [what, v] :
       {std::pair<const char*, int64_t>{"max_position_embeddings",
                                        c.max_position_embeddings},
        {"hidden_size", c.hidden_size},
        {"num_hidden_layers", c.num_hidden_layers},
        {"intermediate_size", c.intermediate_size},
        {"num_attention_heads", c.num_attention_heads},
        {"num_key_value_heads", c.num_key_value_heads},
        {"head_dim", c.head_dim},
        {"vocab_size", c.vocab_size}}) {
    HEARTH_RETURN_IF_ERROR(CheckU32(what, v));
  }

  GgufWriter w;
  const std::string& a = arch.name;
  w.Set("general.architecture", GgufValue::String(a));
  w.Set("general.type", GgufValue::String("model"));
  w.Set("general.name", GgufValue::String(Basename(folder)));
  w.Set(a + ".vocab_size", GgufValue::U32(static_cast<uint32_t>(c.vocab_size)));
  w.Set(a + ".context_length",
        GgufValue::U32(static_cast<uint32_t>(c.max_position_embeddings)));
  w.Set(a + ".embedding_length",
        GgufValue::U32(static_cast<uint32_t>(c.hidden_size)));
  w.Set(a + ".block_count",
        GgufValue::U32(static_cast<uint32_t>(c.num_hidden_layers)));
  w.Set(a + ".feed_forward_length",
        GgufValue::U32(static_cast<uint32_t>(c.intermediate_size)));
  w.Set(a + ".attention.head_count",
        GgufValue::U32(static_cast<uint32_t>(c.num_attention_heads)));
  w.Set(a + ".attention.head_count_kv",
        GgufValue::U32(static_cast<uint32_t>(c.num_key_value_heads)));
  w.Set(a + ".rope.freq_base",
        GgufValue::F32(static_cast<float>(c.rope_theta)));
  w.Set(a + ".attention.layer_norm_rms_epsilon",
        GgufValue::F32(static_cast<float>(c.rms_norm_eps)));
  // llama.cpp requires n_rot == head_dim for llama ("invalid n_rot").
  w.Set(a + ".rope.dimension_count",
        GgufValue::U32(static_cast<uint32_t>(c.head_dim)));
  // Without these llama.cpp assumes head_dim = hidden_size /
  // num_attention_heads.
  w.Set(a + ".attention.key_length",
        GgufValue::U32(static_cast<uint32_t>(c.head_dim)));
  w.Set(a + ".attention.value_length",
        GgufValue::U32(static_cast<uint32_t>(c.head_dim)));
  if (c.rope_scaling.type == "linear") {
    w.Set(a + ".rope.scaling.type", GgufValue::String("linear"));
    w.Set(a + ".rope.scaling.factor",
          GgufValue::F32(static_cast<float>(c.rope_scaling.factor)));
  } else if (!c.rope_scaling.type.empty() && c.rope_scaling.type != "llama3") {
    return absl::UnimplementedError(
        absl::StrCat("GGUF export: rope_scaling type \"", c.rope_scaling.type,
                     "\" is not supported"));
  }
  w.Set("general.file_type", GgufValue::U32(file_type));
  w.Set("general.quantization_version", GgufValue::U32(kQuantizationVersion));
  AddTokenizerMetadata(tokenizer, &w);

  // Plan the tensors in llama.cpp's order, checking that the checkpoint holds
  // exactly what the architecture needs: llama.cpp rejects extra tensors.
  std::vector<PlannedTensor> plan;
  std::set<std::string> used;
  auto want = [&](const std::string& hf, const std::string& gguf, bool required,
                  Permute permute) -> absl::Status {
    if (ckpt->Find(hf) == nullptr) {
      if (required) {
        return absl::InvalidArgumentError(
            absl::StrCat(folder, ": checkpoint has no tensor ", hf));
      }
      return absl::OkStatus();
    }
    plan.push_back({hf, gguf, permute});
    used.insert(hf);
    return absl::OkStatus();
  };
  HEARTH_RETURN_IF_ERROR(want("model.embed_tokens.weight", "token_embd.weight",
                              true, Permute::kNone));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string hf = absl::StrCat("model.layers.", l, ".");
    const std::string gg = absl::StrCat("blk.", l, ".");
    for (const auto& [hf_suffix, gguf_suffix] : kLayerTensors) {
      Permute p = Permute::kNone;
      if (arch.permute_qk && absl::StartsWith(hf_suffix, "self_attn.q_proj"))
        p = Permute::kQ;
      if (arch.permute_qk && absl::StartsWith(hf_suffix, "self_attn.k_proj"))
        p = Permute::kK;
      HEARTH_RETURN_IF_ERROR(want(hf + hf_suffix, gg + gguf_suffix,
                                  RequiredLayerTensor(hf_suffix), p));
    }
  }
  HEARTH_RETURN_IF_ERROR(
      want("model.norm.weight", "output_norm.weight", true, Permute::kNone));
  if (!c.tie_word_embeddings) {
    HEARTH_RETURN_IF_ERROR(
        want("lm_head.weight", "output.weight", true, Permute::kNone));
  } else {
    used.insert("lm_head.weight");  // A tied copy, if saved, is not written.
  }
  for (const std::string& name : ckpt->TensorNames()) {
    if (used.count(name) != 0 || absl::EndsWith(name, "rotary_emb.inv_freq"))
      continue;
    return absl::UnimplementedError(
        absl::StrCat(folder, ": checkpoint tensor ", name,
                     " has no GGUF counterpart for arch ", a,
                     " (llama.cpp rejects files with extra tensors)"));
  }

  // Llama-3 RoPE scaling is a tensor, not a key.
  const std::vector<float> rope_factors = Llama3RopeFactors(c);
  if (!rope_factors.empty()) {
    HEARTH_RETURN_IF_ERROR(w.AddF32Tensor(
        "rope_freqs.weight", {static_cast<int64_t>(rope_factors.size())},
        rope_factors.data(), GgmlType::kF32));
  }

  const int64_t total = static_cast<int64_t>(plan.size());
  auto done = std::make_shared<int64_t>(0);
  for (const PlannedTensor& t : plan) {
    const TensorView* view = ckpt->Find(t.hf_name);
    const std::vector<int64_t>& shape = view->shape;
    if (shape.empty() || shape.size() > 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.hf_name, " has ", shape.size(),
                       " dims; expected a matrix or vector"));
    }
    // 1-D tensors stay F32: llama.cpp's kernels for norms and biases take F32.
    GgmlType type = shape.size() == 1 ? GgmlType::kF32 : weight_type;
    if (!RowFitsBlocks(type, shape.back())) type = GgmlType::kF16;
    int64_t n_head = 0;
    if (t.permute == Permute::kQ) n_head = c.num_attention_heads;
    if (t.permute == Permute::kK) n_head = c.num_key_value_heads;
    if (n_head > 0 && shape[0] != n_head * c.head_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.hf_name, " has ", shape[0],
                       " rows; expected ", n_head, " heads x ", c.head_dim));
    }
    GgufWriter::DataFn data = [view, type, n_head, name = t.gguf_name, total,
                               done,
                               progress]() -> absl::StatusOr<std::string> {
      HEARTH_ASSIGN_OR_RETURN(std::vector<float> f, ToF32(*view));
      const int64_t cols = view->shape.size() == 2 ? view->shape[1] : 1;
      const int64_t rows = view->shape[0];
      if (n_head > 0) {
        std::vector<float> permuted(f.size());
        HEARTH_RETURN_IF_ERROR(
            PermuteQkRows(f.data(), permuted.data(), rows, cols, n_head));
        f.swap(permuted);
      }
      const int64_t row_len = view->shape.back();
      const int64_t n_rows =
          row_len == 0 ? 0 : static_cast<int64_t>(f.size()) / row_len;
      const size_t row_bytes = GgmlRowSize(type, row_len);
      std::string out(row_bytes * static_cast<size_t>(n_rows), '\0');
      for (int64_t r = 0; r < n_rows; ++r) {
        HEARTH_RETURN_IF_ERROR(QuantizeRow(
            type, f.data() + r * row_len, row_len,
            reinterpret_cast<uint8_t*>(out.data()) + r * row_bytes));
      }
      ++*done;
      if (progress != nullptr && *progress) (*progress)(*done, total, name);
      return out;
    };
    HEARTH_RETURN_IF_ERROR(
        w.AddTensor(t.gguf_name, type, shape, std::move(data)));
  }
  return w.WriteFile(out_path);
}

absl::StatusOr<LoadedGguf> LoadLlamaGguf(const std::string& path) {
  HEARTH_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> f, GgufFile::Open(path));
  HEARTH_ASSIGN_OR_RETURN(const std::string a,
                          f->GetString("general.architecture"));
  LoadedGguf out;
  LlamaConfig& c = out.config;
  bool permute_qk;
  if (a == "llama") {
    c.architecture = "LlamaForCausalLM";
    c.model_type = "llama";
    permute_qk = true;
  } else if (a == "qwen2") {
    c.architecture = "Qwen2ForCausalLM";
    c.model_type = "qwen2";
    permute_qk = false;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        path, ": general.architecture \"", a, "\" is not llama or qwen2"));
  }
  if (f->Find("general.name") != nullptr) {
    HEARTH_ASSIGN_OR_RETURN(out.name, f->GetString("general.name"));
  }
  auto get_int = [&](const std::string& key, int64_t* field,
                     bool required) -> absl::Status {
    if (f->Find(key) == nullptr) {
      if (!required) return absl::OkStatus();
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": missing key ", key));
    }
    absl::StatusOr<int64_t> v = f->GetInt(key);
    if (!v.ok()) {
      // Per-layer arrays (variable head counts) are valid GGUF but not a Llama
      // hearth can run.
      return absl::UnimplementedError(v.status().message());
    }
    *field = *v;
    return absl::OkStatus();
  };
  HEARTH_RETURN_IF_ERROR(
      get_int(a + ".embedding_length", &c.hidden_size, true));
  HEARTH_RETURN_IF_ERROR(
      get_int(a + ".block_count", &c.num_hidden_layers, true));
  HEARTH_RETURN_IF_ERROR(
      get_int(a + ".feed_forward_length", &c.intermediate_size, true));
  HEARTH_RETURN_IF_ERROR(
      get_int(a + ".attention.head_count", &c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  HEARTH_RETURN_IF_ERROR(
      get_int(a + ".attention.head_count_kv", &c.num_key_value_heads, false));
  HEARTH_RETURN_IF_ERROR(
      get_int(a + ".context_length", &c.max_position_embeddings, true));
  c.head_dim =
      c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  HEARTH_RETURN_IF_ERROR(
      get_int(a + ".rope.dimension_count", &c.head_dim, false));
  HEARTH_RETURN_IF_ERROR(
      get_int(a + ".attention.key_length", &c.head_dim, false));
  HEARTH_ASSIGN_OR_RETURN(c.rms_norm_eps,
                          f->GetFloat(a + ".attention.layer_norm_rms_epsilon"));
  c.rope_theta = 10000;
  if (f->Find(a + ".rope.freq_base") != nullptr) {
    HEARTH_ASSIGN_OR_RETURN(c.rope_theta, f->GetFloat(a + ".rope.freq_base"));
  }
  // The keys are f32; take the shortest decimal that rounds to the same float
  // (1e-05, not 9.99999974737875e-06), which is what config.json held.
  c.rms_norm_eps = ShortestDecimal(static_cast<float>(c.rms_norm_eps));
  c.rope_theta = ShortestDecimal(static_cast<float>(c.rope_theta));
  if (f->Find(a + ".rope.scaling.type") != nullptr) {
    HEARTH_ASSIGN_OR_RETURN(std::string type,
                            f->GetString(a + ".rope.scaling.type"));
    if (type == "linear") {
      c.rope_scaling.type = "linear";
      HEARTH_ASSIGN_OR_RETURN(c.rope_scaling.factor,
                              f->GetFloat(a + ".rope.scaling.factor"));
    } else if (type != "none") {
      return absl::UnimplementedError(
          absl::StrCat(path, ": rope scaling \"", type, "\" is not supported"));
    }
  }

  absl::StatusOr<GgufTokenizer> tok = ReadGgufTokenizer(*f);
  if (tok.ok()) {
    out.tokenizer = std::move(*tok);
    if (out.tokenizer.bos_id) c.bos_token_id = *out.tokenizer.bos_id;
    if (out.tokenizer.eos_id) {
      c.eos_token_id = *out.tokenizer.eos_id;
      c.eos_token_ids = {*out.tokenizer.eos_id};
    }
    if (out.tokenizer.pad_id) c.pad_token_id = *out.tokenizer.pad_id;
  } else if (tok.status().code() != absl::StatusCode::kNotFound) {
    return tok.status();
  }

  // GGUF name -> HF name, with the permutation to undo.
  std::map<std::string, std::pair<std::string, int64_t>> names;
  names["token_embd.weight"] = {"model.embed_tokens.weight", 0};
  names["output_norm.weight"] = {"model.norm.weight", 0};
  names["output.weight"] = {"lm_head.weight", 0};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (const auto& [hf_suffix, gguf_suffix] : kLayerTensors) {
      int64_t n_head = 0;
      if (permute_qk && absl::StartsWith(hf_suffix, "self_attn.q_proj")) {
        n_head = c.num_attention_heads;
      }
      if (permute_qk && absl::StartsWith(hf_suffix, "self_attn.k_proj")) {
        n_head = c.num_key_value_heads;
      }
      names[absl::StrCat("blk.", l, ".", gguf_suffix)] = {
          absl::StrCat("model.layers.", l, ".", hf_suffix), n_head};
    }
  }

  for (const GgufTensorInfo& t : f->tensors()) {
    if (t.name == "rope_freqs.weight") {
      HEARTH_ASSIGN_OR_RETURN(out.rope_freqs, f->DequantizeTensor(t));
      continue;
    }
    auto it = names.find(t.name);
    if (it == names.end()) {
      return absl::UnimplementedError(absl::StrCat(
          path, ": tensor ", t.name, " is not part of a ", a, " model"));
    }
    const auto& [hf_name, n_head] = it->second;
    HEARTH_ASSIGN_OR_RETURN(std::vector<float> data, f->DequantizeTensor(t));
    std::vector<int64_t> shape = t.shape();
    if (n_head > 0) {
      const int64_t rows = shape[0];
      const int64_t cols =
          shape.size() > 1 ? static_cast<int64_t>(data.size()) / rows : 1;
      std::vector<float> unpermuted(data.size());
      HEARTH_RETURN_IF_ERROR(
          UnpermuteQkRows(data.data(), unpermuted.data(), rows, cols, n_head));
      data.swap(unpermuted);
    }
    if (absl::EndsWith(hf_name, "q_proj.bias")) c.attention_bias = true;
    out.stored_types[hf_name] = t.type;
    out.shapes[hf_name] = std::move(shape);
    out.tensors[hf_name] = std::move(data);
  }
  auto embed = out.shapes.find("model.embed_tokens.weight");
  if (embed == out.shapes.end() || embed->second.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no 2-D token_embd.weight"));
  }
  c.vocab_size = embed->second[0];
  c.tie_word_embeddings = out.tensors.count("lm_head.weight") == 0;
  c.torch_dtype = "float32";

  if (!out.rope_freqs.empty()) {
    // llama3 scaling is stored only as factors; recover the parameters when the
    // factors match the formula for one of the usual settings.
    auto max_it =
        std::max_element(out.rope_freqs.begin(), out.rope_freqs.end());
    LlamaConfig probe = c;
    probe.rope_scaling.type = "llama3";
    probe.rope_scaling.factor = *max_it;
    bool matched = false;
    for (int64_t ctx : {8192, 4096, 2048, 16384, 32768, 65536, 131072}) {
      for (double low : {1.0, 2.0, 4.0}) {
        for (double high : {2.0, 4.0, 8.0, 16.0, 32.0}) {
          if (matched || high <= low) continue;
          probe.rope_scaling.original_max_position_embeddings = ctx;
          probe.rope_scaling.low_freq_factor = low;
          probe.rope_scaling.high_freq_factor = high;
          const std::vector<float> want = Llama3RopeFactors(probe);
          if (want.size() != out.rope_freqs.size()) continue;
          bool same = true;
          for (size_t i = 0; i < want.size() && same; ++i) {
            same = std::fabs(want[i] - out.rope_freqs[i]) <=
                   1e-5f * std::fabs(want[i]);
          }
          if (same) {
            matched = true;
            c.rope_scaling = probe.rope_scaling;
          }
        }
      }
    }
  }
  HEARTH_RETURN_IF_ERROR(Validate(c));
  return out;
}

}  // namespace hearth::formats
