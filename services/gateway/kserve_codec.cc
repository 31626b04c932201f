#include "services/gateway/kserve_codec.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace hearth::gateway {
namespace {

using inference::InferParameter;
using inference::ModelInferRequest;

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

// Element size of a fixed-size datatype; 0 for BYTES or unknown.
int ElementSize(absl::string_view datatype) {
  if (datatype == "BOOL" || datatype == "INT8" || datatype == "UINT8") return 1;
  if (datatype == "INT16" || datatype == "UINT16" || datatype == "FP16" ||
      datatype == "BF16")
    return 2;
  if (datatype == "INT32" || datatype == "UINT32" || datatype == "FP32")
    return 4;
  if (datatype == "INT64" || datatype == "UINT64" || datatype == "FP64")
    return 8;
  return 0;
}

bool IsKnownDatatype(absl::string_view datatype) {
  return datatype == "BYTES" || ElementSize(datatype) > 0;
}

bool IsInteger(absl::string_view t) {
  return t == "INT8" || t == "INT16" || t == "INT32" || t == "INT64" ||
         t == "UINT8" || t == "UINT16" || t == "UINT32" || t == "UINT64";
}

bool IsFloat(absl::string_view t) {
  return t == "FP16" || t == "BF16" || t == "FP32" || t == "FP64";
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// One input tensor: its name, type, shape and where its data is.
struct Tensor {
  std::string field;  // "inputs[1] (temperature)"
  const ModelInferRequest::InferInputTensor* proto = nullptr;
  const std::string* raw = nullptr;  // raw_input_contents entry, if used
  int64_t elements = 0;
};

absl::StatusOr<std::vector<std::string>> ReadBytes(const Tensor& t) {
  if (t.proto->datatype() != "BYTES") {
    return Invalid(t.field, absl::StrCat("datatype must be BYTES, got ",
                                         t.proto->datatype()));
  }
  std::vector<std::string> out;
  if (t.raw != nullptr) {
    absl::string_view data = *t.raw;
    while (!data.empty()) {
      if (data.size() < 4) {
        return Invalid(t.field,
                       "raw_input_contents: truncated 4-byte length prefix");
      }
      const uint32_t len = static_cast<uint32_t>(
          static_cast<uint8_t>(data[0]) | (static_cast<uint8_t>(data[1]) << 8) |
          (static_cast<uint8_t>(data[2]) << 16) |
          (static_cast<uint32_t>(static_cast<uint8_t>(data[3])) << 24));
      data.remove_prefix(4);
      if (len > data.size()) {
        return Invalid(t.field,
                       absl::StrCat("raw_input_contents: element of ", len,
                                    " bytes but only ", data.size(), " left"));
      }
      out.emplace_back(data.substr(0, len));
      data.remove_prefix(len);
    }
  } else {
    out.assign(t.proto->contents().bytes_contents().begin(),
               t.proto->contents().bytes_contents().end());
  }
  if (static_cast<int64_t>(out.size()) != t.elements) {
    return Invalid(t.field,
                   absl::StrCat("shape holds ", t.elements, " elements but ",
                                out.size(), " were sent"));
  }
  return out;
}

// Reads a one-element numeric or BOOL tensor as a double.
absl::StatusOr<double> ReadScalar(const Tensor& t) {
  const std::string& type = t.proto->datatype();
  if (t.elements != 1) {
    return Invalid(t.field, absl::StrCat("must hold exactly one element, "
                                         "shape holds ",
                                         t.elements));
  }
  if (t.raw != nullptr) {
    const int size = ElementSize(type);
    if (size == 0) {
      return Invalid(t.field,
                     absl::StrCat("datatype ", type, " is not a number"));
    }
    if (static_cast<int64_t>(t.raw->size()) != size) {
      return Invalid(t.field,
                     absl::StrCat("raw_input_contents holds ", t.raw->size(),
                                  " bytes; one ", type, " is ", size));
    }
    const char* p = t.raw->data();
    auto load = [p](auto v) {
      std::memcpy(&v, p, sizeof(v));
      return v;
    };
    if (type == "BOOL") return load(uint8_t{}) != 0 ? 1.0 : 0.0;
    if (type == "INT8") return static_cast<double>(load(int8_t{}));
    if (type == "INT16") return static_cast<double>(load(int16_t{}));
    if (type == "INT32") return static_cast<double>(load(int32_t{}));
    if (type == "INT64") return static_cast<double>(load(int64_t{}));
    if (type == "UINT8") return static_cast<double>(load(uint8_t{}));
    if (type == "UINT16") return static_cast<double>(load(uint16_t{}));
    if (type == "UINT32") return static_cast<double>(load(uint32_t{}));
    if (type == "UINT64") return static_cast<double>(load(uint64_t{}));
    if (type == "FP16")
      return static_cast<double>(HalfToFloat(load(uint16_t{})));
    if (type == "BF16") {
      const uint32_t bits = static_cast<uint32_t>(load(uint16_t{})) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      return static_cast<double>(f);
    }
    if (type == "FP32") return static_cast<double>(load(float{}));
    return load(double{});
  }
  const inference::InferTensorContents& c = t.proto->contents();
  auto expect = [&](int count, absl::string_view field) -> absl::Status {
    if (count != 1) {
      return Invalid(t.field, absl::StrCat("datatype ", type,
                                           " expects one "
                                           "value in contents.",
                                           field, ", got ", count));
    }
    return absl::OkStatus();
  };
  if (type == "BOOL") {
    if (auto s = expect(c.bool_contents_size(), "bool_contents"); !s.ok())
      return s;
    return c.bool_contents(0) ? 1.0 : 0.0;
  }
  if (type == "INT8" || type == "INT16" || type == "INT32") {
    if (auto s = expect(c.int_contents_size(), "int_contents"); !s.ok())
      return s;
    return static_cast<double>(c.int_contents(0));
  }
  if (type == "INT64") {
    if (auto s = expect(c.int64_contents_size(), "int64_contents"); !s.ok())
      return s;
    return static_cast<double>(c.int64_contents(0));
  }
  if (type == "UINT8" || type == "UINT16" || type == "UINT32") {
    if (auto s = expect(c.uint_contents_size(), "uint_contents"); !s.ok())
      return s;
    return static_cast<double>(c.uint_contents(0));
  }
  if (type == "UINT64") {
    if (auto s = expect(c.uint64_contents_size(), "uint64_contents"); !s.ok())
      return s;
    return static_cast<double>(c.uint64_contents(0));
  }
  if (type == "FP32") {
    if (auto s = expect(c.fp32_contents_size(), "fp32_contents"); !s.ok())
      return s;
    return static_cast<double>(c.fp32_contents(0));
  }
  if (type == "FP64") {
    if (auto s = expect(c.fp64_contents_size(), "fp64_contents"); !s.ok())
      return s;
    return c.fp64_contents(0);
  }
  return Invalid(t.field, absl::StrCat("datatype ", type,
                                       " must be sent in raw_input_contents "
                                       "or is not a number"));
}

// The request's knobs before they become SamplingParams, each with the name
// of where it came from for error messages.
template <typename T>
struct Knob {
  std::optional<T> value;
  std::string source;
  void Set(T v, std::string from) {
    value = v;
    source = std::move(from);
  }
};

struct Knobs {
  Knob<double> max_tokens, temperature, top_k, top_p, repetition_penalty, seed,
      priority, timeout_us;
  Knob<bool> stream, ignore_eos;
  std::vector<std::string> stop;
};

enum class Kind { kInt, kFloat, kBool };

Kind KindOf(absl::string_view name) {
  if (name == "temperature" || name == "top_p" || name == "repetition_penalty")
    return Kind::kFloat;
  if (name == "stream" || name == "ignore_eos" ||
      name == "exclude_input_in_output")
    return Kind::kBool;
  return Kind::kInt;
}

// Routes a named numeric knob to its slot; false if the name is not one.
bool Assign(Knobs* k, absl::string_view name, double value,
            const std::string& source) {
  if (name == "max_tokens") {
    k->max_tokens.Set(value, source);
  } else if (name == "temperature") {
    k->temperature.Set(value, source);
  } else if (name == "top_k") {
    k->top_k.Set(value, source);
  } else if (name == "top_p") {
    k->top_p.Set(value, source);
  } else if (name == "repetition_penalty") {
    k->repetition_penalty.Set(value, source);
  } else if (name == "seed" || name == "random_seed") {
    k->seed.Set(value, source);
  } else if (name == "stream") {
    k->stream.Set(value != 0, source);
  } else if (name == "ignore_eos") {
    k->ignore_eos.Set(value != 0, source);
  } else if (name == "exclude_input_in_output") {
    // hearth never echoes the prompt; accepted for Triton compatibility.
  } else {
    return false;
  }
  return true;
}

absl::Status ParseSamplingJson(absl::string_view text, const std::string& field,
                               Knobs* knobs) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return Invalid(field, "must be a JSON object");
  }
  for (auto it = json.begin(); it != json.end(); ++it) {
    const std::string& name = it.key();
    const std::string source = absl::StrCat(field, ".", name);
    const nlohmann::json& v = it.value();
    if (name == "stop") {
      if (v.is_string()) {
        knobs->stop.push_back(v.get<std::string>());
      } else if (v.is_array()) {
        for (const auto& s : v) {
          if (!s.is_string()) return Invalid(source, "must hold strings");
          knobs->stop.push_back(s.get<std::string>());
        }
      } else {
        return Invalid(source, "must be a string or a list of strings");
      }
      continue;
    }
    double value = 0;
    if (v.is_boolean()) {
      value = v.get<bool>() ? 1 : 0;
    } else if (v.is_number()) {
      value = v.get<double>();
    } else if (v.is_null()) {
      continue;
    } else {
      return Invalid(source, "must be a number or a boolean");
    }
    // Unknown vLLM knobs (n, best_of, presence_penalty, ...) are ignored,
    // as Triton's vLLM backend passes them through to vLLM.
    Assign(knobs, name, value, source);
  }
  return absl::OkStatus();
}

absl::Status ParseParameter(const std::string& name, const InferParameter& p,
                            Knobs* knobs) {
  const std::string field = absl::StrCat("parameters.", name);
  if (name == "sampling_parameters") {
    if (p.parameter_choice_case() != InferParameter::kStringParam) {
      return Invalid(field, "must be a string_param holding JSON");
    }
    return ParseSamplingJson(p.string_param(), field, knobs);
  }
  if (name == "stop") {
    if (p.parameter_choice_case() != InferParameter::kStringParam) {
      return Invalid(field, "must be a string_param");
    }
    knobs->stop.push_back(p.string_param());
    return absl::OkStatus();
  }
  double value = 0;
  switch (p.parameter_choice_case()) {
    case InferParameter::kBoolParam:
      value = p.bool_param() ? 1 : 0;
      break;
    case InferParameter::kInt64Param:
      value = static_cast<double>(p.int64_param());
      break;
    case InferParameter::kUint64Param:
      value = static_cast<double>(p.uint64_param());
      break;
    case InferParameter::kDoubleParam:
      value = p.double_param();
      break;
    case InferParameter::kStringParam:
    case InferParameter::PARAMETER_CHOICE_NOT_SET:
      if (name == "priority" || name == "timeout" || name == "max_tokens" ||
          name == "temperature" || name == "top_k" || name == "top_p" ||
          name == "repetition_penalty" || name == "seed" ||
          name == "random_seed" || name == "stream" || name == "ignore_eos") {
        return Invalid(field, "must be a bool, int64, uint64 or double param");
      }
      return absl::OkStatus();  // someone else's parameter: ignore
  }
  if (name == "priority") {
    knobs->priority.Set(value, field);
  } else if (name == "timeout") {
    knobs->timeout_us.Set(value, field);
  } else {
    // Other parameters (sequence_id, binary_data_output, triton_*, ...) are
    // Triton's or another backend's business; ignore them as Triton does.
    Assign(knobs, name, value, field);
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ToInt(const Knob<double>& knob, int64_t min,
                              int64_t max) {
  const double v = *knob.value;
  if (!std::isfinite(v) || v != std::floor(v)) {
    return Invalid(knob.source, absl::StrCat("must be an integer, got ", v));
  }
  if (v < static_cast<double>(min) || v > static_cast<double>(max)) {
    return Invalid(knob.source,
                   absl::StrCat("must be in [", min, ", ", max, "], got ", v));
  }
  return static_cast<int64_t>(v);
}

}  // namespace

absl::StatusOr<KServeGenerate> ParseInferRequest(
    const ModelInferRequest& request) {
  KServeGenerate out;
  if (request.model_name().empty()) return Invalid("model_name", "required");
  if (!request.model_version().empty() &&
      request.model_version() != kModelVersion) {
    return absl::NotFoundError(
        absl::StrCat("model '", request.model_name(), "' has no version '",
                     request.model_version(), "' (hearth serves version ",
                     kModelVersion, ")"));
  }
  out.id = request.id();
  out.model_version = std::string(kModelVersion);
  out.generate.set_model(request.model_name());
  out.generate.set_request_id(request.id());

  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != request.inputs_size()) {
    return Invalid(
        "raw_input_contents",
        absl::StrCat(request.raw_input_contents_size(), " entries for ",
                     request.inputs_size(), " inputs; send one per input"));
  }
  out.raw_output = raw;

  Knobs knobs;
  // Parameters first; inputs override them.
  for (const auto& [name, param] : request.parameters()) {
    if (auto s = ParseParameter(name, param, &knobs); !s.ok()) return s;
  }

  bool have_text = false;
  std::vector<const Tensor*> ordered;
  std::vector<Tensor> tensors(request.inputs_size());
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& input = request.inputs(i);
    Tensor& t = tensors[i];
    t.proto = &input;
    t.field = absl::StrCat("inputs[", i, "] (", input.name(), ")");
    if (input.name().empty()) {
      return Invalid(absl::StrCat("inputs[", i, "].name"), "required");
    }
    if (!IsKnownDatatype(input.datatype())) {
      return Invalid(
          t.field, absl::StrCat("unknown datatype \"", input.datatype(), "\""));
    }
    int64_t elements = 1;
    for (int64_t dim : input.shape()) {
      if (dim < 0) {
        return Invalid(
            t.field, absl::StrCat("shape [", absl::StrJoin(input.shape(), ","),
                                  "] has a negative dimension"));
      }
      if (dim > 0 && elements > (int64_t{1} << 40) / dim) {
        return Invalid(t.field, "shape is too large");
      }
      elements *= dim;
    }
    t.elements = elements;
    if (raw) {
      if (input.has_contents()) {
        return Invalid(t.field,
                       "contents must be empty when raw_input_contents is "
                       "used");
      }
      t.raw = &request.raw_input_contents(i);
    }
    for (int j = 0; j < i; ++j) {
      if (request.inputs(j).name() == input.name()) {
        return Invalid(t.field, "duplicate input name");
      }
    }

    if (input.name() == kTextInput) {
      auto texts = ReadBytes(t);
      if (!texts.ok()) return texts.status();
      if (texts->size() != 1) {
        return Invalid(
            t.field, absl::StrCat("shape [", absl::StrJoin(input.shape(), ","),
                                  "] holds ", texts->size(),
                                  " prompts; send one prompt per request "
                                  "(shape [1] or [1,1]) and let the gateway "
                                  "batch them"));
      }
      out.generate.set_prompt(std::move((*texts)[0]));
      out.output_shape.assign(input.shape().begin(), input.shape().end());
      if (out.output_shape.empty()) out.output_shape = {1};
      have_text = true;
    } else if (input.name() == "sampling_parameters") {
      auto texts = ReadBytes(t);
      if (!texts.ok()) return texts.status();
      if (texts->size() != 1) {
        return Invalid(t.field, "must hold exactly one JSON string");
      }
      if (auto s = ParseSamplingJson((*texts)[0], t.field, &knobs); !s.ok())
        return s;
    } else if (input.name() == "stop" || input.name() == "stop_words") {
      auto texts = ReadBytes(t);
      if (!texts.ok()) return texts.status();
      for (auto& s : *texts) knobs.stop.push_back(std::move(s));
    } else {
      const Kind kind = KindOf(input.name());
      const std::string& type = input.datatype();
      if (kind == Kind::kBool && type != "BOOL") {
        return Invalid(t.field,
                       absl::StrCat("datatype must be BOOL, got ", type));
      }
      if (kind == Kind::kInt && !IsInteger(type)) {
        return Invalid(t.field, absl::StrCat("datatype must be an integer "
                                             "type (INT32, INT64, UINT64, "
                                             "...), got ",
                                             type));
      }
      if (kind == Kind::kFloat && !IsFloat(type) && !IsInteger(type)) {
        return Invalid(t.field, absl::StrCat("datatype must be FP32 or FP64, "
                                             "got ",
                                             type));
      }
      auto value = ReadScalar(t);
      if (!value.ok()) return value.status();
      if (!Assign(&knobs, input.name(), *value, t.field)) {
        return Invalid(
            t.field,
            "unknown input (hearth LLM models take text_input, max_tokens, "
            "temperature, top_k, top_p, repetition_penalty, seed, "
            "random_seed, stream, ignore_eos, stop, sampling_parameters)");
      }
    }
  }
  if (!have_text) {
    return Invalid("inputs", absl::StrCat("missing the BYTES input '",
                                          kTextInput, "' (the prompt)"));
  }
  for (int i = 0; i < request.outputs_size(); ++i) {
    if (request.outputs(i).name() != kTextOutput) {
      return Invalid(
          absl::StrCat("outputs[", i, "].name"),
          absl::StrCat("unknown output \"", request.outputs(i).name(),
                       "\" (hearth LLM models produce ", kTextOutput, ")"));
    }
  }

  hearth::v1::SamplingParams* sampling = out.generate.mutable_sampling();
  if (knobs.max_tokens.value) {
    auto v = ToInt(knobs.max_tokens, 0, std::numeric_limits<int32_t>::max());
    if (!v.ok()) return v.status();
    sampling->set_max_new_tokens(static_cast<uint32_t>(*v));
  }
  if (knobs.top_k.value) {
    auto v = ToInt(knobs.top_k, 0, std::numeric_limits<int32_t>::max());
    if (!v.ok()) return v.status();
    sampling->set_top_k(static_cast<uint32_t>(*v));
  }
  if (knobs.seed.value) {
    auto v = ToInt(knobs.seed, 0, std::numeric_limits<int64_t>::max());
    if (!v.ok()) return v.status();
    sampling->set_seed(static_cast<uint64_t>(*v));
  }
  auto set_float = [&](const Knob<double>& knob, auto setter) -> absl::Status {
    if (knob.value) (sampling->*setter)(static_cast<float>(*knob.value));
    return absl::OkStatus();
  };
  // Range-check floats here so the error names where the value came from.
  struct FloatRule {
    const Knob<double>* knob;
    bool (*ok)(double);
    const char* rule;
  };
  const FloatRule rules[] = {
      {&knobs.temperature, [](double v) { return std::isfinite(v) && v >= 0; },
       "must be finite and >= 0"},
      {&knobs.top_p,
       [](double v) { return std::isfinite(v) && v > 0 && v <= 1; },
       "must be in (0, 1]"},
      {&knobs.repetition_penalty,
       [](double v) { return std::isfinite(v) && v > 0; },
       "must be finite and > 0"},
  };
  for (const FloatRule& rule : rules) {
    if (rule.knob->value && !rule.ok(*rule.knob->value)) {
      const double v = *rule.knob->value;
      return Invalid(
          rule.knob->source,
          absl::StrCat(rule.rule, ", got ",
                       std::isnan(v) ? std::string("nan") : absl::StrCat(v)));
    }
  }
  if (auto s = set_float(knobs.temperature,
                         &hearth::v1::SamplingParams::set_temperature);
      !s.ok())
    return s;
  if (auto s = set_float(knobs.top_p, &hearth::v1::SamplingParams::set_top_p);
      !s.ok())
    return s;
  if (auto s = set_float(knobs.repetition_penalty,
                         &hearth::v1::SamplingParams::set_repetition_penalty);
      !s.ok())
    return s;
  if (knobs.ignore_eos.value) sampling->set_ignore_eos(*knobs.ignore_eos.value);
  for (std::string& stop : knobs.stop) sampling->add_stop(std::move(stop));
  if (knobs.priority.value) {
    auto v = ToInt(knobs.priority, 0, std::numeric_limits<int32_t>::max());
    if (!v.ok()) return v.status();
    out.generate.set_priority(static_cast<uint32_t>(*v));
  }
  if (knobs.timeout_us.value) {
    auto v = ToInt(knobs.timeout_us, 0, std::numeric_limits<int64_t>::max());
    if (!v.ok()) return v.status();
    // Round up so that a positive timeout never becomes "no timeout".
    const int64_t ms = (*v + 999) / 1000;
    out.generate.set_timeout_ms(static_cast<uint32_t>(
        std::min<int64_t>(ms, std::numeric_limits<uint32_t>::max())));
  }
  if (knobs.stream.value) out.stream = *knobs.stream.value;
  return out;
}

void SetTextOutput(const KServeGenerate& request, absl::string_view text,
                   inference::ModelInferResponse* response) {
  response->set_model_name(request.generate.model());
  response->set_model_version(request.model_version);
  response->set_id(request.id);
  auto* output = response->add_outputs();
  output->set_name(std::string(kTextOutput));
  output->set_datatype("BYTES");
  for (int64_t dim : request.output_shape) output->add_shape(dim);
  if (request.raw_output) {
    std::string raw(4, '\0');
    const uint32_t len = static_cast<uint32_t>(text.size());
    for (int i = 0; i < 4; ++i)
      raw[i] = static_cast<char>((len >> (8 * i)) & 0xff);
    raw.append(text.data(), text.size());
    response->add_raw_output_contents(std::move(raw));
  } else {
    output->mutable_contents()->add_bytes_contents(std::string(text));
  }
}

inference::ModelMetadataResponse LlmModelMetadata(const std::string& name) {
  inference::ModelMetadataResponse response;
  response.set_name(name);
  response.add_versions(std::string(kModelVersion));
  response.set_platform("hearth_llm");
  auto add = [](auto* list, const char* tensor, const char* type,
                std::initializer_list<int64_t> shape) {
    auto* t = list->Add();
    t->set_name(tensor);
    t->set_datatype(type);
    for (int64_t d : shape) t->add_shape(d);
  };
  add(response.mutable_inputs(), "text_input", "BYTES", {1});
  add(response.mutable_inputs(), "max_tokens", "INT32", {1});
  add(response.mutable_inputs(), "temperature", "FP32", {1});
  add(response.mutable_inputs(), "top_k", "INT32", {1});
  add(response.mutable_inputs(), "top_p", "FP32", {1});
  add(response.mutable_inputs(), "repetition_penalty", "FP32", {1});
  add(response.mutable_inputs(), "seed", "UINT64", {1});
  add(response.mutable_inputs(), "stream", "BOOL", {1});
  add(response.mutable_inputs(), "ignore_eos", "BOOL", {1});
  add(response.mutable_inputs(), "stop", "BYTES", {-1});
  add(response.mutable_inputs(), "sampling_parameters", "BYTES", {1});
  add(response.mutable_outputs(), "text_output", "BYTES", {-1});
  return response;
}

const FieldNames& KServeFieldNames() {
  static const FieldNames* names = [] {
    auto* n = new FieldNames;
    n->model = "model_name";
    n->prompt = "inputs (text_input)";
    n->prompt_token_ids = "inputs (text_input)";
    n->sampling_prefix = "";
    n->max_new_tokens = "max_tokens";
    n->seed = "seed";
    n->request_id = "id";
    return n;
  }();
  return *names;
}

}  // namespace hearth::gateway
