#include "common/formats/hf_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status/status_macros.h"

namespace hearth::formats {
namespace {

using json = nlohmann::json;

// Real configs are at most four levels deep (quantization_config.dynamic.*);
// the limit keeps hostile input from exhausting the stack in dump().
constexpr int kMaxJsonDepth = 32;
// Configs are a few kilobytes; this only bounds memory for hostile input.
constexpr size_t kMaxConfigBytes = 16 << 20;

struct JsonRejected {
  std::string message;
};

std::string Printable(absl::string_view s) {
  std::string out;
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  return out;
}

// Short, printable rendering of a value for error messages.
std::string Describe(const json& j) {
  std::string text = j.dump(-1, ' ', true, json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return absl::StrCat(j.type_name(), " ", Printable(text));
}

absl::StatusOr<json> ParseObject(absl::string_view text,
                                 absl::string_view what) {
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", text.size(), " bytes is implausibly large"));
  }
  // nlohmann treats a NUL byte as the end of input, which would accept
  // arbitrary bytes after it; a NUL is never valid JSON.
  if (size_t nul = text.find('\0'); nul != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not valid JSON: NUL byte at byte ", nul));
  }
  int depth = 0;
  auto callback = [&depth](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (++depth > kMaxJsonDepth) {
          throw JsonRejected{
              absl::StrCat("nested deeper than ", kMaxJsonDepth, " levels")};
        }
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        --depth;
        break;
      case json::parse_event_t::value:
        // 1e999 parses as infinity, which JSON cannot represent on output.
        if (parsed.is_number_float() && !std::isfinite(parsed.get<double>())) {
          throw JsonRejected{"a number is out of the range of a double"};
        }
        break;
      case json::parse_event_t::key:
        break;
    }
    return true;
  };
  json root;
  try {
    root = json::parse(text.begin(), text.end(), callback,
                       /*allow_exceptions=*/true,
                       /*ignore_comments=*/false);
  } catch (const json::parse_error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not valid JSON at byte ", e.byte - 1, ": ",
                     Printable(e.what())));
  } catch (const JsonRejected& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.message));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not valid JSON: ", Printable(e.what())));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": top level is a JSON ", root.type_name(), ", not an object"));
  }
  return root;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot be opened"));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return contents.str();
}

// Typed access to one JSON object. A null value counts as absent, because
// transformers writes null for unset optional fields. `scope` prefixes key
// names in errors ("rope_scaling.").
class Fields {
 public:
  Fields(const json& object, std::string what, std::string scope = "")
      : object_(object), what_(std::move(what)), scope_(std::move(scope)) {}

  const json* Get(absl::string_view key) const {
    auto it = object_.find(std::string(key));
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::Status Missing(absl::string_view key) const {
    return absl::InvalidArgumentError(
        absl::StrCat(what_, ": missing required key \"", scope_, key, "\""));
  }

  absl::Status WrongType(absl::string_view key, absl::string_view expected,
                         const json& value) const {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": \"", scope_, key,
                                                   "\" must be ", expected,
                                                   ", got ", Describe(value)));
  }

  absl::Status Error(absl::StatusCode code, absl::string_view key,
                     absl::string_view text) const {
    return absl::Status(code,
                        absl::StrCat(what_, ": \"", scope_, key, "\" ", text));
  }

  static bool IsInt64(const json& v) {
    return v.is_number_integer() &&
           !(v.is_number_unsigned() &&
             v.get<uint64_t>() >
                 static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  }

  // Leaves *out untouched when the key is absent and not required.
  absl::Status Int(absl::string_view key, int64_t* out,
                   bool required = false) const {
    const json* v = Get(key);
    if (v == nullptr) return required ? Missing(key) : absl::OkStatus();
    if (!IsInt64(*v)) return WrongType(key, "an integer", *v);
    *out = v->get<int64_t>();
    return absl::OkStatus();
  }

  absl::Status OptionalInt(absl::string_view key,
                           std::optional<int64_t>* out) const {
    const json* v = Get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!IsInt64(*v)) return WrongType(key, "an integer", *v);
    *out = v->get<int64_t>();
    return absl::OkStatus();
  }

  absl::Status Double(absl::string_view key, double* out,
                      bool required = false) const {
    const json* v = Get(key);
    if (v == nullptr) return required ? Missing(key) : absl::OkStatus();
    if (!v->is_number()) return WrongType(key, "a number", *v);
    *out = v->get<double>();
    return absl::OkStatus();
  }

  absl::Status Bool(absl::string_view key, bool* out) const {
    const json* v = Get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return WrongType(key, "true or false", *v);
    *out = v->get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(absl::string_view key, std::string* out) const {
    const json* v = Get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_string()) return WrongType(key, "a string", *v);
    *out = v->get<std::string>();
    return absl::OkStatus();
  }

  // An integer or a non-empty array of integers (eos_token_id). Untouched when
  // absent.
  absl::Status IntList(absl::string_view key, std::vector<int64_t>* out) const {
    const json* v = Get(key);
    if (v == nullptr) return absl::OkStatus();
    if (IsInt64(*v)) {
      *out = {v->get<int64_t>()};
      return absl::OkStatus();
    }
    if (!v->is_array() || v->empty()) {
      return WrongType(key, "an integer or a non-empty array of integers", *v);
    }
    std::vector<int64_t> ids;
    for (size_t i = 0; i < v->size(); ++i) {
      if (!IsInt64((*v)[i])) {
        return WrongType(absl::StrCat(key, "[", i, "]"), "an integer", (*v)[i]);
      }
      ids.push_back((*v)[i].get<int64_t>());
    }
    *out = std::move(ids);
    return absl::OkStatus();
  }

 private:
  const json& object_;
  std::string what_;
  std::string scope_;
};

struct Family {
  absl::string_view architecture;
  absl::string_view model_type;
  int64_t default_max_position_embeddings;
};

constexpr Family kFamilies[] = {
    {"LlamaForCausalLM", "llama", 2048},
    {"Qwen2ForCausalLM", "qwen2", 32768},
    {"MistralForCausalLM", "mistral", 4096 * 32},
};

const Family* FamilyByArchitecture(absl::string_view architecture) {
  for (const Family& f : kFamilies) {
    if (f.architecture == architecture) return &f;
  }
  return nullptr;
}

const Family* FamilyByModelType(absl::string_view model_type) {
  for (const Family& f : kFamilies) {
    if (f.model_type == model_type) return &f;
  }
  return nullptr;
}

bool IsQwen2(const LlamaConfig& c) {
  return c.architecture == "Qwen2ForCausalLM";
}
bool IsMistral(const LlamaConfig& c) {
  return c.architecture == "MistralForCausalLM";
}

// rope_scaling, or (transformers >= 4.57) rope_parameters, which also carries
// rope_theta.
absl::Status ParseRope(const Fields& top, absl::string_view what,
                       LlamaConfig* config) {
  for (absl::string_view key : {"rope_parameters", "rope_scaling"}) {
    const json* value = top.Get(key);
    if (value == nullptr) continue;
    if (!value->is_object())
      return top.WrongType(key, "an object or null", *value);
    Fields rope(*value, std::string(what), absl::StrCat(key, "."));
    HEARTH_RETURN_IF_ERROR(rope.Double("rope_theta", &config->rope_theta));
    std::string type;
    const char* type_key =
        rope.Get("rope_type") != nullptr ? "rope_type" : "type";
    HEARTH_RETURN_IF_ERROR(rope.String(type_key, &type));
    RopeScaling& s = config->rope_scaling;
    if (type.empty() || type == "default") {
      s = RopeScaling();
    } else if (type == "linear") {
      s = RopeScaling();
      s.type = type;
      HEARTH_RETURN_IF_ERROR(
          rope.Double("factor", &s.factor, /*required=*/true));
    } else if (type == "llama3") {
      s.type = type;
      HEARTH_RETURN_IF_ERROR(rope.Double("factor", &s.factor, true));
      HEARTH_RETURN_IF_ERROR(
          rope.Double("low_freq_factor", &s.low_freq_factor, true));
      HEARTH_RETURN_IF_ERROR(
          rope.Double("high_freq_factor", &s.high_freq_factor, true));
      HEARTH_RETURN_IF_ERROR(rope.Int("original_max_position_embeddings",
                                      &s.original_max_position_embeddings,
                                      true));
    } else {
      return rope.Error(
          absl::StatusCode::kUnimplemented, type_key,
          absl::StrCat(
              "is \"", Printable(type),
              "\"; hearth implements only default, linear and llama3"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LlamaConfig> ParseLlamaConfigFrom(absl::string_view text,
                                                 absl::string_view what) {
  HEARTH_ASSIGN_OR_RETURN(json root, ParseObject(text, what));
  Fields f(root, std::string(what));
  LlamaConfig c;

  const Family* family = nullptr;
  if (const json* archs = f.Get("architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return f.WrongType("architectures", "a non-empty array of strings",
                         *archs);
    }
    c.architecture = (*archs)[0].get<std::string>();
    family = FamilyByArchitecture(c.architecture);
    if (family == nullptr) {
      return f.Error(
          absl::StatusCode::kUnimplemented, "architectures",
          absl::StrCat("is \"", Printable(c.architecture),
                       "\"; hearth runs LlamaForCausalLM, Qwen2ForCausalLM and "
                       "MistralForCausalLM"));
    }
  }
  HEARTH_RETURN_IF_ERROR(f.String("model_type", &c.model_type));
  if (family == nullptr) {
    if (c.model_type.empty()) return f.Missing("architectures");
    family = FamilyByModelType(c.model_type);
    if (family == nullptr) {
      return f.Error(absl::StatusCode::kUnimplemented, "model_type",
                     absl::StrCat("is \"", Printable(c.model_type),
                                  "\"; hearth runs llama, qwen2 and mistral"));
    }
    c.architecture = std::string(family->architecture);
  }
  if (c.model_type.empty()) c.model_type = std::string(family->model_type);

  HEARTH_RETURN_IF_ERROR(f.Int("vocab_size", &c.vocab_size, /*required=*/true));
  HEARTH_RETURN_IF_ERROR(f.Int("hidden_size", &c.hidden_size, true));
  HEARTH_RETURN_IF_ERROR(
      f.Int("intermediate_size", &c.intermediate_size, true));
  HEARTH_RETURN_IF_ERROR(
      f.Int("num_hidden_layers", &c.num_hidden_layers, true));
  HEARTH_RETURN_IF_ERROR(
      f.Int("num_attention_heads", &c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  HEARTH_RETURN_IF_ERROR(f.Int("num_key_value_heads", &c.num_key_value_heads));
  if (c.num_attention_heads > 0)
    c.head_dim = c.hidden_size / c.num_attention_heads;
  HEARTH_RETURN_IF_ERROR(f.Int("head_dim", &c.head_dim));
  c.max_position_embeddings = family->default_max_position_embeddings;
  HEARTH_RETURN_IF_ERROR(
      f.Int("max_position_embeddings", &c.max_position_embeddings));
  HEARTH_RETURN_IF_ERROR(f.Double("rms_norm_eps", &c.rms_norm_eps));
  HEARTH_RETURN_IF_ERROR(f.Double("rope_theta", &c.rope_theta));
  HEARTH_RETURN_IF_ERROR(ParseRope(f, what, &c));
  HEARTH_RETURN_IF_ERROR(f.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  // Qwen2's q/k/v projections always have a bias; its config has no key for it.
  c.attention_bias = IsQwen2(c);
  HEARTH_RETURN_IF_ERROR(f.Bool("attention_bias", &c.attention_bias));

  bool mlp_bias = false;
  HEARTH_RETURN_IF_ERROR(f.Bool("mlp_bias", &mlp_bias));
  if (mlp_bias) {
    return f.Error(absl::StatusCode::kUnimplemented, "mlp_bias",
                   "is true; hearth's MLP has no bias");
  }
  std::string hidden_act = "silu";
  HEARTH_RETURN_IF_ERROR(f.String("hidden_act", &hidden_act));
  if (hidden_act != "silu") {
    return f.Error(absl::StatusCode::kUnimplemented, "hidden_act",
                   absl::StrCat("is \"", Printable(hidden_act),
                                "\"; hearth implements silu"));
  }

  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  HEARTH_RETURN_IF_ERROR(f.String("torch_dtype", &c.torch_dtype));
  HEARTH_RETURN_IF_ERROR(f.String("dtype", &c.torch_dtype));

  HEARTH_RETURN_IF_ERROR(f.Int("bos_token_id", &c.bos_token_id));
  HEARTH_RETURN_IF_ERROR(f.IntList("eos_token_id", &c.eos_token_ids));
  // Parsed configs always list their eos ids, so callers need look in one
  // place.
  if (c.eos_token_ids.empty()) c.eos_token_ids = {c.eos_token_id};
  c.eos_token_id = c.eos_token_ids[0];
  HEARTH_RETURN_IF_ERROR(f.OptionalInt("pad_token_id", &c.pad_token_id));

  if (IsMistral(c)) {
    HEARTH_RETURN_IF_ERROR(f.OptionalInt("sliding_window", &c.sliding_window));
  } else if (IsQwen2(c)) {
    bool use_sliding_window = false;
    HEARTH_RETURN_IF_ERROR(f.Bool("use_sliding_window", &use_sliding_window));
    if (use_sliding_window) {
      HEARTH_RETURN_IF_ERROR(
          f.OptionalInt("sliding_window", &c.sliding_window));
    }
  }

  if (const json* q = f.Get("quantization_config")) {
    if (!q->is_object())
      return f.WrongType("quantization_config", "an object or null", *q);
    c.quantization_config = *q;
  }

  absl::Status status = Validate(c);
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat(what, ": ", status.message()));
  }
  return c;
}

absl::Status Invalid(absl::string_view key, absl::string_view text) {
  return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" ", text));
}

absl::Status RequirePositive(absl::string_view key, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return Invalid(key, absl::StrCat("must be positive, got ", value));
}

json IdsToJson(const std::vector<int64_t>& ids) {
  if (ids.size() == 1) return ids[0];
  return ids;
}

absl::StatusOr<GenerationConfig> ParseGenerationConfigFrom(
    absl::string_view text, absl::string_view what) {
  HEARTH_ASSIGN_OR_RETURN(json root, ParseObject(text, what));
  Fields f(root, std::string(what));
  GenerationConfig g;
  HEARTH_RETURN_IF_ERROR(f.OptionalInt("bos_token_id", &g.bos_token_id));
  HEARTH_RETURN_IF_ERROR(f.IntList("eos_token_id", &g.eos_token_ids));
  HEARTH_RETURN_IF_ERROR(f.OptionalInt("pad_token_id", &g.pad_token_id));
  HEARTH_RETURN_IF_ERROR(f.Double("temperature", &g.temperature));
  HEARTH_RETURN_IF_ERROR(f.Double("top_p", &g.top_p));
  HEARTH_RETURN_IF_ERROR(f.Int("top_k", &g.top_k));
  HEARTH_RETURN_IF_ERROR(f.Double("repetition_penalty", &g.repetition_penalty));
  HEARTH_RETURN_IF_ERROR(f.OptionalInt("max_new_tokens", &g.max_new_tokens));
  HEARTH_RETURN_IF_ERROR(f.Bool("do_sample", &g.do_sample));

  // The ranges transformers' logits processors enforce.
  if (g.temperature < 0) {
    return f.Error(absl::StatusCode::kInvalidArgument, "temperature",
                   "must be >= 0");
  }
  if (!(g.top_p >= 0 && g.top_p <= 1)) {
    return f.Error(absl::StatusCode::kInvalidArgument, "top_p",
                   "must be in [0, 1]");
  }
  if (g.top_k < 0)
    return f.Error(absl::StatusCode::kInvalidArgument, "top_k", "must be >= 0");
  if (!(g.repetition_penalty > 0)) {
    return f.Error(absl::StatusCode::kInvalidArgument, "repetition_penalty",
                   "must be > 0");
  }
  if (g.max_new_tokens.has_value() && *g.max_new_tokens <= 0) {
    return f.Error(absl::StatusCode::kInvalidArgument, "max_new_tokens",
                   "must be > 0");
  }
  return g;
}

}  // namespace

bool operator==(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && a.factor == b.factor &&
         a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor &&
         a.original_max_position_embeddings ==
             b.original_max_position_embeddings;
}

bool operator==(const LlamaConfig& a, const LlamaConfig& b) {
  return a.architecture == b.architecture && a.model_type == b.model_type &&
         a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size &&
         a.intermediate_size == b.intermediate_size &&
         a.num_hidden_layers == b.num_hidden_layers &&
         a.num_attention_heads == b.num_attention_heads &&
         a.num_key_value_heads == b.num_key_value_heads &&
         a.head_dim == b.head_dim &&
         a.max_position_embeddings == b.max_position_embeddings &&
         a.rms_norm_eps == b.rms_norm_eps && a.rope_theta == b.rope_theta &&
         a.rope_scaling == b.rope_scaling &&
         a.tie_word_embeddings == b.tie_word_embeddings &&
         a.attention_bias == b.attention_bias &&
         a.torch_dtype == b.torch_dtype && a.bos_token_id == b.bos_token_id &&
         a.eos_token_id == b.eos_token_id &&
         a.eos_token_ids == b.eos_token_ids &&
         a.pad_token_id == b.pad_token_id &&
         a.sliding_window == b.sliding_window &&
         a.quantization_config == b.quantization_config;
}

bool operator==(const GenerationConfig& a, const GenerationConfig& b) {
  return a.bos_token_id == b.bos_token_id &&
         a.eos_token_ids == b.eos_token_ids &&
         a.pad_token_id == b.pad_token_id && a.temperature == b.temperature &&
         a.top_p == b.top_p && a.top_k == b.top_k &&
         a.repetition_penalty == b.repetition_penalty &&
         a.max_new_tokens == b.max_new_tokens && a.do_sample == b.do_sample;
}

absl::StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json_text) {
  return ParseLlamaConfigFrom(
      absl::string_view(json_text.data(), json_text.size()), "config.json");
}

absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& path) {
  HEARTH_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseLlamaConfigFrom(text, path);
}

absl::Status Validate(const LlamaConfig& c) {
  const Family* family = FamilyByArchitecture(c.architecture);
  if (family == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat("\"architectures\" is \"", Printable(c.architecture),
                     "\"; hearth runs LlamaForCausalLM, Qwen2ForCausalLM and "
                     "MistralForCausalLM"));
  }
  if (c.model_type != family->model_type) {
    return Invalid(
        "model_type",
        absl::StrCat("is \"", Printable(c.model_type), "\" but ",
                     c.architecture, " needs \"", family->model_type, "\""));
  }
  HEARTH_RETURN_IF_ERROR(RequirePositive("vocab_size", c.vocab_size));
  HEARTH_RETURN_IF_ERROR(RequirePositive("hidden_size", c.hidden_size));
  HEARTH_RETURN_IF_ERROR(
      RequirePositive("intermediate_size", c.intermediate_size));
  HEARTH_RETURN_IF_ERROR(
      RequirePositive("num_hidden_layers", c.num_hidden_layers));
  HEARTH_RETURN_IF_ERROR(
      RequirePositive("num_attention_heads", c.num_attention_heads));
  HEARTH_RETURN_IF_ERROR(
      RequirePositive("num_key_value_heads", c.num_key_value_heads));
  HEARTH_RETURN_IF_ERROR(RequirePositive("head_dim", c.head_dim));
  HEARTH_RETURN_IF_ERROR(
      RequirePositive("max_position_embeddings", c.max_position_embeddings));
  if (c.hidden_size % c.num_attention_heads != 0) {
    return Invalid(
        "hidden_size",
        absl::StrCat(c.hidden_size, " is not divisible by num_attention_heads ",
                     c.num_attention_heads));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return Invalid("num_attention_heads",
                   absl::StrCat(c.num_attention_heads,
                                " is not divisible by num_key_value_heads ",
                                c.num_key_value_heads));
  }
  if (c.head_dim % 2 != 0) {
    return Invalid("head_dim",
                   absl::StrCat(c.head_dim, " is odd; RoPE rotates pairs"));
  }
  if (!(c.rms_norm_eps > 0)) return Invalid("rms_norm_eps", "must be > 0");
  if (!(c.rope_theta > 0)) return Invalid("rope_theta", "must be > 0");
  const RopeScaling& s = c.rope_scaling;
  if (!s.type.empty()) {
    if (s.type != "linear" && s.type != "llama3") {
      return absl::UnimplementedError(absl::StrCat(
          "\"rope_scaling.rope_type\" is \"", Printable(s.type),
          "\"; hearth implements only default, linear and llama3"));
    }
    if (!(s.factor > 0)) return Invalid("rope_scaling.factor", "must be > 0");
    if (s.type == "llama3") {
      if (!(s.low_freq_factor > 0))
        return Invalid("rope_scaling.low_freq_factor", "must be > 0");
      if (!(s.high_freq_factor > s.low_freq_factor)) {
        return Invalid("rope_scaling.high_freq_factor",
                       "must be > low_freq_factor");
      }
      HEARTH_RETURN_IF_ERROR(
          RequirePositive("rope_scaling.original_max_position_embeddings",
                          s.original_max_position_embeddings));
    }
  }
  if (IsQwen2(c) && !c.attention_bias) {
    return Invalid("attention_bias",
                   "is false but Qwen2 always has q/k/v biases");
  }
  if (c.sliding_window.has_value()) {
    if (!IsMistral(c) && !IsQwen2(c)) {
      return Invalid("sliding_window",
                     absl::StrCat("is set but ", c.architecture,
                                  " has no sliding-window attention"));
    }
    if (*c.sliding_window < c.max_position_embeddings) {
      return absl::UnimplementedError(absl::StrCat(
          "\"sliding_window\" is ", *c.sliding_window,
          ", shorter than max_position_embeddings ", c.max_position_embeddings,
          "; hearth implements only full attention"));
    }
  }
  if (c.torch_dtype != "float32" && c.torch_dtype != "float16" &&
      c.torch_dtype != "bfloat16") {
    return Invalid("torch_dtype",
                   absl::StrCat("is \"", Printable(c.torch_dtype),
                                "\"; expected float32, float16 or bfloat16"));
  }
  if (!c.quantization_config.is_null() && !c.quantization_config.is_object()) {
    return Invalid("quantization_config", "must be an object or null");
  }
  return absl::OkStatus();
}

std::string LlamaConfigToJson(const LlamaConfig& c) {
  json j;
  j["architectures"] = json::array({c.architecture});
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    json rope = {{"rope_type", c.rope_scaling.type},
                 {"factor", c.rope_scaling.factor}};
    if (c.rope_scaling.type == "llama3") {
      rope["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      rope["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      rope["original_max_position_embeddings"] =
          c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = rope;
  }
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["torch_dtype"] = c.torch_dtype;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_ids.empty() ? json(c.eos_token_id)
                                              : IdsToJson(c.eos_token_ids);
  if (c.pad_token_id.has_value()) j["pad_token_id"] = *c.pad_token_id;
  if (c.architecture == "LlamaForCausalLM") {
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  } else if (c.architecture == "MistralForCausalLM") {
    j["sliding_window"] =
        c.sliding_window.has_value() ? json(*c.sliding_window) : json();
  } else if (c.architecture == "Qwen2ForCausalLM") {
    j["use_sliding_window"] = c.sliding_window.has_value();
    j["sliding_window"] =
        c.sliding_window.has_value() ? json(*c.sliding_window) : json();
    j["max_window_layers"] = c.num_hidden_layers;
  }
  if (!c.quantization_config.is_null())
    j["quantization_config"] = c.quantization_config;
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

absl::StatusOr<GenerationConfig> ParseGenerationConfig(
    std::string_view json_text) {
  return ParseGenerationConfigFrom(
      absl::string_view(json_text.data(), json_text.size()),
      "generation_config.json");
}

absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& path) {
  HEARTH_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseGenerationConfigFrom(text, path);
}

std::string GenerationConfigToJson(const GenerationConfig& g) {
  json j = json::object();
  if (g.bos_token_id.has_value()) j["bos_token_id"] = *g.bos_token_id;
  if (!g.eos_token_ids.empty()) j["eos_token_id"] = IdsToJson(g.eos_token_ids);
  if (g.pad_token_id.has_value()) j["pad_token_id"] = *g.pad_token_id;
  j["do_sample"] = g.do_sample;
  // transformers warns when sampling knobs are set while do_sample is false, so
  // greedy configs carry only the knobs that differ from the defaults.
  const GenerationConfig defaults;
  if (g.do_sample || g.temperature != defaults.temperature)
    j["temperature"] = g.temperature;
  if (g.do_sample || g.top_p != defaults.top_p) j["top_p"] = g.top_p;
  if (g.do_sample || g.top_k != defaults.top_k) j["top_k"] = g.top_k;
  if (g.repetition_penalty != defaults.repetition_penalty) {
    j["repetition_penalty"] = g.repetition_penalty;
  }
  if (g.max_new_tokens.has_value()) j["max_new_tokens"] = *g.max_new_tokens;
  return j.dump(2) + "\n";
}

}  // namespace hearth::formats
