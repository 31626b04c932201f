// Building students: their config from the teacher's plus the requested shape,
// and their initial weights (random, or copied from a subset of teacher layers
// as in DistilBERT / shrink-and-fine-tune).
#ifndef HEARTH_SERVICES_DISTILLER_STUDENT_H_
#define HEARTH_SERVICES_DISTILLER_STUDENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/hf_config.h"
#include "common/model/llama_model.h"

namespace hearth::distiller {

// A requested student shape; zero fields are copied from the base config.
struct StudentShape {
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t intermediate_size = 0;
  std::vector<int64_t> init_from_teacher_layers;
};

// `base` with the shape's non-zero fields applied (head_dim re-derived).
// INVALID_ARGUMENT naming the field ("student.num_attention_heads: ...") when
// the result is not a valid Llama config.
absl::StatusOr<formats::LlamaConfig> StudentConfig(
    const formats::LlamaConfig& base, const StudentShape& shape,
    const std::string& field_prefix = "student");

// Copies embeddings, final norm, lm_head and teacher layer layers[i] into
// student layer i. The student must have the teacher's hidden/intermediate
// sizes and head geometry, and layers.size() == student layers.
absl::Status InitFromTeacherLayers(
    model::LlamaForCausalLM& teacher, model::LlamaForCausalLM& student,
    const std::vector<int64_t>& layers,
    const std::string& field = "student.init_from_teacher_layers");

}  // namespace hearth::distiller

#endif  // HEARTH_SERVICES_DISTILLER_STUDENT_H_
