#include "services/distiller/student.h"

#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace hearth::distiller {

absl::StatusOr<formats::LlamaConfig> StudentConfig(
    const formats::LlamaConfig& base, const StudentShape& shape,
    const std::string& field_prefix) {
  formats::LlamaConfig c = base;
  auto check = [&](int64_t v, const char* name) -> absl::Status {
    if (v < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field_prefix, ".", name, ": must be >= 0"));
    }
    return absl::OkStatus();
  };
  for (auto [v, name] :
       {std::pair<int64_t, const char*>{shape.hidden_size, "hidden_size"},
        {shape.num_hidden_layers, "num_hidden_layers"},
        {shape.num_attention_heads, "num_attention_heads"},
        {shape.num_key_value_heads, "num_key_value_heads"},
        {shape.intermediate_size, "intermediate_size"}}) {
    if (absl::Status s = check(v, name); !s.ok()) return s;
  }
  if (shape.hidden_size) c.hidden_size = shape.hidden_size;
  if (shape.num_hidden_layers) c.num_hidden_layers = shape.num_hidden_layers;
  if (shape.num_attention_heads)
    c.num_attention_heads = shape.num_attention_heads;
  if (shape.num_key_value_heads) {
    c.num_key_value_heads = shape.num_key_value_heads;
  } else if (shape.num_attention_heads) {
    c.num_key_value_heads =
        std::min(base.num_key_value_heads, c.num_attention_heads);
  }
  if (shape.intermediate_size) c.intermediate_size = shape.intermediate_size;
  if (c.num_attention_heads <= 0 ||
      c.hidden_size % c.num_attention_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field_prefix, ".num_attention_heads: must divide hidden_size ",
        c.hidden_size));
  }
  if (c.num_key_value_heads <= 0 ||
      c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field_prefix, ".num_key_value_heads: must divide num_attention_heads ",
        c.num_attention_heads));
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  if (absl::Status s = formats::Validate(c); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field_prefix, ": ", s.message()));
  }
  return c;
}

absl::Status InitFromTeacherLayers(model::LlamaForCausalLM& teacher,
                                   model::LlamaForCausalLM& student,
                                   const std::vector<int64_t>& layers,
                                   const std::string& field) {
  const auto& tc = teacher.config();
  const auto& sc = student.config();
  if (static_cast<int64_t>(layers.size()) != sc.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": lists ", layers.size(),
                     " layers for a student with ", sc.num_hidden_layers));
  }
  for (int64_t l : layers) {
    if (l < 0 || l >= tc.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": teacher layer ", l, " does not exist (teacher has ",
          tc.num_hidden_layers, ")"));
    }
  }
  if (tc.hidden_size != sc.hidden_size ||
      tc.intermediate_size != sc.intermediate_size ||
      tc.num_attention_heads != sc.num_attention_heads ||
      tc.num_key_value_heads != sc.num_key_value_heads ||
      tc.vocab_size != sc.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(field,
                     ": copying teacher layers needs the teacher's width "
                     "(hidden, intermediate, "
                     "heads, vocabulary); only the depth may differ"));
  }
  auto teacher_params = teacher.named_parameters();
  torch::NoGradGuard no_grad;
  for (auto& p : student.named_parameters()) {
    std::string name = p.key();
    const std::string prefix = "model.layers.";
    if (absl::StartsWith(name, prefix)) {
      size_t dot = name.find('.', prefix.size());
      int64_t index =
          std::stoll(name.substr(prefix.size(), dot - prefix.size()));
      name = absl::StrCat(prefix, layers[index], name.substr(dot));
    }
    const at::Tensor* src = teacher_params.find(name);
    if (src == nullptr) {
      // A tied student of an untied teacher (or the reverse) keeps its init.
      continue;
    }
    p.value().copy_(*src);
  }
  return absl::OkStatus();
}

}  // namespace hearth::distiller
