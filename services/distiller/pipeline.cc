#include "services/distiller/pipeline.h"

#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/model/generator.h"
#include "common/model/kv_cache.h"
#include "common/model/model_loader.h"
#include "common/tokenizer/tokenizer.h"
#include "services/distiller/bpe_trainer.h"
#include "services/distiller/task.h"

namespace hearth::distiller {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

struct MethodName {
  Method method;
  const char* name;
};
constexpr MethodName kMethods[] = {
    {Method::kTrain, "DISTILLATION_METHOD_TRAIN"},
    {Method::kSoftTarget, "DISTILLATION_METHOD_SOFT_TARGET"},
    {Method::kFeature, "DISTILLATION_METHOD_FEATURE"},
    {Method::kSelf, "DISTILLATION_METHOD_SELF"},
    {Method::kProgressive, "DISTILLATION_METHOD_PROGRESSIVE"},
    {Method::kTask, "DISTILLATION_METHOD_TASK"},
};

const char* MethodToName(Method m) {
  for (const auto& e : kMethods) {
    if (e.method == m) return e.name;
  }
  return "DISTILLATION_METHOD_UNSPECIFIED";
}

// Field readers: proto JSON omits zero values, writes 64-bit ints as strings
// and accepts both; every error names the field.
absl::Status ReadInt(const Json& j, const char* key, const std::string& field,
                     int64_t* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  const Json& v = j[key];
  try {
    if (v.is_string()) {
      *out = std::stoll(v.get<std::string>());
    } else if (v.is_number_integer()) {
      *out = v.get<int64_t>();
    } else if (v.is_number_float() &&
               v.get<double>() == static_cast<int64_t>(v.get<double>())) {
      *out = static_cast<int64_t>(v.get<double>());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": must be an integer"));
    }
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be an integer"));
  }
  return absl::OkStatus();
}

absl::Status ReadDouble(const Json& j, const char* key,
                        const std::string& field, double* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  const Json& v = j[key];
  if (v.is_number()) {
    *out = v.get<double>();
  } else if (v.is_string()) {
    try {
      *out = std::stod(v.get<std::string>());
    } catch (const std::exception&) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": must be a number"));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be a number"));
  }
  return absl::OkStatus();
}

absl::Status ReadString(const Json& j, const char* key,
                        const std::string& field, std::string* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  if (!j[key].is_string())
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be a string"));
  *out = j[key].get<std::string>();
  return absl::OkStatus();
}

absl::Status ReadBool(const Json& j, const char* key, const std::string& field,
                      bool* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  if (!j[key].is_boolean())
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be a bool"));
  *out = j[key].get<bool>();
  return absl::OkStatus();
}

#define RETURN_IF_ERROR_(expr) \
  do {                         \
    absl::Status _s = (expr);  \
    if (!_s.ok()) return _s;   \
  } while (0)

absl::Status ReadShape(const Json& j, const std::string& field,
                       StudentShape* shape) {
  if (!j.is_object())
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be an object"));
  RETURN_IF_ERROR_(
      ReadInt(j, "hidden_size", field + ".hidden_size", &shape->hidden_size));
  RETURN_IF_ERROR_(ReadInt(j, "num_hidden_layers", field + ".num_hidden_layers",
                           &shape->num_hidden_layers));
  RETURN_IF_ERROR_(ReadInt(j, "num_attention_heads",
                           field + ".num_attention_heads",
                           &shape->num_attention_heads));
  RETURN_IF_ERROR_(ReadInt(j, "num_key_value_heads",
                           field + ".num_key_value_heads",
                           &shape->num_key_value_heads));
  RETURN_IF_ERROR_(ReadInt(j, "intermediate_size", field + ".intermediate_size",
                           &shape->intermediate_size));
  if (j.contains("init_from_teacher_layers")) {
    const Json& a = j["init_from_teacher_layers"];
    if (!a.is_array()) {
      return absl::InvalidArgumentError(
          field + ".init_from_teacher_layers: must be a list");
    }
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".init_from_teacher_layers[", i, "]: must be an integer"));
      }
      shape->init_from_teacher_layers.push_back(a[i].get<int64_t>());
    }
  }
  return absl::OkStatus();
}

std::string ResolveModel(const PipelineEnv& env, const std::string& name) {
  if (name.empty()) return "";
  if (fs::exists(name) && (absl::StrContains(name, "/"))) return name;
  return env.model_repository + "/" + name;
}

std::string ResolveCorpus(const JobSpec& spec, const PipelineEnv& env) {
  if (!spec.text_file.empty()) return spec.text_file;
  return env.model_repository + "/corpora/" + spec.corpus + ".txt";
}

std::string TokenizerSource(const JobSpec& spec, const PipelineEnv& env) {
  if (!spec.tokenizer.empty()) return ResolveModel(env, spec.tokenizer);
  return ResolveModel(env, spec.teacher_model);
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(from, ": cannot open"));
  std::string data((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  return WriteFileAtomic(to, data);
}

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Stage {
  std::string name;
  formats::LlamaConfig config;
  int teacher =
      -1;  // -1: no teacher; 0: the job's teacher; k > 0: stage k - 1's model.
  std::vector<int64_t> init_layers;
  bool report_as_scratch = false;
};

// A continuation of `prompt` and its decode speed (batch 1, KV cache): greedy
// when params.temperature is 0, else seeded sampling.
absl::Status Sample(model::LlamaForCausalLM& m, const tokenizer::Tokenizer& tok,
                    const std::string& prompt,
                    const model::SamplingParams& params, std::string* text,
                    double* tokens_per_second) {
  auto ids = tok.Encode(prompt, /*add_special_tokens=*/true);
  if (!ids.ok()) return ids.status();
  std::vector<int64_t> p(ids->begin(), ids->end());
  auto cache =
      model::KvCache::Create(m.CacheDims(), model::KvCacheOptions{1024, 16});
  if (!cache.ok()) return cache.status();
  const double t0 = Now();
  auto out = model::Generate(m, **cache, {p}, params);
  const double dt = Now() - t0;
  if (!out.ok()) return out.status();
  std::vector<int32_t> gen((*out)[0].tokens.begin(), (*out)[0].tokens.end());
  *tokens_per_second = gen.size() / std::max(dt, 1e-9);
  auto decoded = tok.Decode(gen, /*skip_special_tokens=*/true);
  if (!decoded.ok()) return decoded.status();
  *text = prompt + *decoded;
  return absl::OkStatus();
}

// The report's samples: "sample" as a worker would serve it with the output's
// generation_config.json (greedy unless it says do_sample), "sample_greedy"
// plain greedy and "sample_sampled" seeded sampling with the config's
// temperature / top-p / penalty. decode_tokens_per_second is timed on a
// separate 128-token greedy run after those (so the weights are packed and
// warm), batch 1.
void AddSamples(model::LlamaForCausalLM& m, const tokenizer::Tokenizer& tok,
                const std::string& prompt, const formats::GenerationConfig& g,
                nlohmann::json* entry) {
  model::SamplingParams greedy;
  greedy.max_new_tokens = 48;
  greedy.temperature = 0;
  greedy.ignore_eos = true;
  model::SamplingParams sampled = greedy;
  sampled.temperature = g.temperature;
  sampled.top_p = g.top_p;
  sampled.repetition_penalty = g.repetition_penalty;
  sampled.seed = 1;
  model::SamplingParams served = g.do_sample ? sampled : greedy;
  served.repetition_penalty = g.repetition_penalty;
  std::string text;
  double tps = 0;
  if (Sample(m, tok, prompt, greedy, &text, &tps).ok())
    (*entry)["sample_greedy"] = text;
  if (Sample(m, tok, prompt, sampled, &text, &tps).ok())
    (*entry)["sample_sampled"] = text;
  if (Sample(m, tok, prompt, served, &text, &tps).ok())
    (*entry)["sample"] = text;
  model::SamplingParams timed = greedy;
  timed.max_new_tokens =
      std::min<int64_t>(128, m.config().max_position_embeddings - 16);
  if (Sample(m, tok, prompt, timed, &text, &tps).ok())
    (*entry)["decode_tokens_per_second"] = tps;
}

// A finished stage's folder holds its model, stage.json (its report entry) and
// a DONE marker written last.
absl::Status MarkStageDone(const std::string& final_dir, const Json& report) {
  RETURN_IF_ERROR_(WriteFileAtomic(final_dir + "/stage.json", report.dump(2)));
  return WriteFileAtomic(final_dir + "/DONE", "");
}

Json StageReport(const std::string& final_dir) {
  std::ifstream in(final_dir + "/stage.json");
  return Json::parse(in, nullptr, false);
}

// Copies the tokenizer files next to `tok_src` (a folder or a tokenizer.json)
// into out_dir.
absl::Status CopyTokenizerFiles(const std::string& tok_src,
                                const std::string& out_dir) {
  const std::string tok_dir = fs::is_directory(tok_src)
                                  ? tok_src
                                  : fs::path(tok_src).parent_path().string();
  for (const char* f : {"tokenizer.json", "tokenizer_config.json",
                        "tokenizer.model", "special_tokens_map.json"}) {
    if (fs::exists(tok_dir + "/" + f))
      RETURN_IF_ERROR_(CopyFile(tok_dir + "/" + f, out_dir + "/" + f));
  }
  return absl::OkStatus();
}

nlohmann::json HyperparametersJson(const TrainerOptions& o) {
  return Json{{"learning_rate", o.learning_rate},
              {"total_steps", o.total_steps},
              {"warmup_steps", o.warmup_steps},
              {"batch_size", o.batch_size},
              {"gradient_accumulation", o.gradient_accumulation},
              {"weight_decay", o.weight_decay},
              {"max_grad_norm", o.max_grad_norm},
              {"temperature", o.loss.temperature},
              {"alpha", o.loss.alpha},
              {"feature_weight", o.loss.feature_weight},
              {"attention_loss", o.loss.attention_loss},
              {"seed", o.seed}};
}

// Trainer progress of stage `index` of `count`, as pipeline progress.
ProgressCallback StageProgress(
    const std::function<void(const PipelineProgress&)>& on_progress,
    const std::string& name, size_t index, size_t count) {
  return [on_progress, name, index, count](const TrainerProgress& tp) {
    if (!on_progress) return;
    PipelineProgress pp;
    pp.stage = name;
    pp.stage_index = static_cast<int>(index);
    pp.num_stages = static_cast<int>(count);
    pp.trainer = tp;
    pp.fraction =
        (index + static_cast<double>(tp.step) / tp.total_steps) / count;
    on_progress(pp);
  };
}

// DISTILLATION_METHOD_TASK: stages "teacher" (the teacher LM's trunk plus a new
// head, fine-tuned on the task), "student" (a student-shaped trunk trained on
// the teacher's class logits and the labels) and "scratch" (the same initial
// weights and steps, labels only).
absl::StatusOr<PipelineResult> RunTaskPipeline(
    const JobSpec& spec, const PipelineEnv& env, const std::string& tok_src,
    const tokenizer::Tokenizer& tok,
    const std::function<void(const PipelineProgress&)>& on_progress,
    const CancelPredicate& cancelled, double t_start) {
  const std::string data_field =
      spec.text_file.empty() ? "data.corpus" : "data.text_file";
  auto data = ReadLabelledTsv(ResolveCorpus(spec, env), spec.heldout_fraction,
                              data_field);
  if (!data.ok()) return data.status();
  const int64_t num_labels = static_cast<int64_t>(data->label_names.size());
  if (spec.num_labels != 0 && spec.num_labels != num_labels) {
    return absl::InvalidArgumentError(
        absl::StrCat("task.num_labels: ", spec.num_labels, " but ", data_field,
                     " has ", num_labels, " labels"));
  }
  auto train = EncodeExamples(data->train, tok, spec.sequence_length);
  if (!train.ok()) return train.status();
  auto test = EncodeExamples(data->test, tok, spec.sequence_length);
  if (!test.ok()) return test.status();
  const int64_t pad = std::max(tok.eos_id(), 0);

  auto teacher_lm = model::LoadModel(ResolveModel(env, spec.teacher_model));
  if (!teacher_lm.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("teacher_model: ", teacher_lm.status().message()));
  }
  formats::LlamaConfig base = (*teacher_lm)->config();
  base.torch_dtype = "float32";
  if (tok.vocab_size() > base.vocab_size) {
    return absl::InvalidArgumentError(
        "data.tokenizer: incompatible vocabularies");
  }
  auto student_config = StudentConfig(base, spec.student, "student");
  if (!student_config.ok()) return student_config.status();

  const std::vector<std::string> names = {"teacher", "student", "scratch"};
  std::vector<std::unique_ptr<SequenceClassifier>> stages(names.size());
  std::vector<Json> reports(names.size());
  PipelineResult result;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string dir = env.checkpoint_dir + "/" + names[i];
    const std::string final_dir = dir + "/final";
    if (fs::exists(final_dir + "/DONE")) {
      auto c = LoadClassifierStage(final_dir);
      if (!c.ok()) return c.status();
      stages[i] = std::move(*c);
      reports[i] = StageReport(final_dir);
      continue;
    }
    std::error_code ec;
    fs::create_directories(dir, ec);
    std::shared_ptr<model::LlamaForCausalLM> trunk;
    if (i == 0) {
      trunk = *teacher_lm;
    } else {
      // KD and scratch students start from the same weights.
      auto m =
          model::MakeRandomModel(*student_config, spec.trainer.seed * 1000 + 7);
      if (!m.ok()) return m.status();
      trunk = *m;
      if (!spec.student.init_from_teacher_layers.empty()) {
        RETURN_IF_ERROR_(InitFromTeacherLayers(
            **teacher_lm, *trunk, spec.student.init_from_teacher_layers));
      }
    }
    auto c = SequenceClassifier::Create(trunk, num_labels,
                                        spec.trainer.seed + (i == 0 ? 1 : 2));
    if (!c.ok()) return c.status();
    TrainerOptions topts = spec.trainer;
    topts.checkpoint_dir = dir;
    if (i == 0 && spec.task_teacher_steps > 0)
      topts.total_steps = spec.task_teacher_steps;
    if (i == 0 && spec.task_teacher_learning_rate > 0)
      topts.learning_rate = spec.task_teacher_learning_rate;
    topts.warmup_steps = std::min(topts.warmup_steps, topts.total_steps);
    SequenceClassifier* teacher = i == 1 ? stages[0].get() : nullptr;
    auto r = TrainClassifier(
        topts, **c, teacher, *train, pad,
        StageProgress(on_progress, names[i], i, names.size()), cancelled);
    if (!r.ok()) return r.status();
    if (r->cancelled) {
      result.cancelled = true;
      return result;
    }
    auto eval = EvaluateClassifier(**c, *test, pad, spec.trainer.batch_size);
    if (!eval.ok()) return eval.status();
    auto train_eval =
        EvaluateClassifier(**c, *train, pad, spec.trainer.batch_size);
    if (!train_eval.ok()) return train_eval.status();
    reports[i] = Json{{"stage", names[i]},
                      {"parameters", (*c)->NumParameters()},
                      {"accuracy", eval->accuracy},
                      {"test_loss", eval->loss},
                      {"train_accuracy", train_eval->accuracy},
                      {"first_train_loss", r->first_loss},
                      {"final_train_loss", r->final_loss},
                      {"steps", r->steps},
                      {"train_wall_seconds", r->wall_seconds},
                      {"resumed", r->resumed}};
    RETURN_IF_ERROR_(SaveClassifierStage(**c, final_dir));
    RETURN_IF_ERROR_(MarkStageDone(final_dir, reports[i]));
    stages[i] = std::move(*c);
  }

  const std::string out_dir = env.model_repository + "/" + spec.output_name;
  RETURN_IF_ERROR_(
      SaveClassifierHf(*stages[1], data->label_names, pad, out_dir));
  RETURN_IF_ERROR_(CopyTokenizerFiles(tok_src, out_dir));
  std::vector<int64_t> per_label(num_labels, 0);
  for (const auto& e : data->test) ++per_label[e.label];
  const double majority = static_cast<double>(*std::max_element(
                              per_label.begin(), per_label.end())) /
                          data->test.size();
  Json report;
  report["method"] = MethodToName(spec.method);
  report["output"] = spec.output_name;
  report["task"] = Json{{"name", spec.task_name},
                        {"file", ResolveCorpus(spec, env)},
                        {"labels", data->label_names},
                        {"num_labels", num_labels},
                        {"train_examples", data->train.size()},
                        {"test_examples", data->test.size()},
                        {"max_tokens", spec.sequence_length},
                        {"majority_class_accuracy", majority}};
  report["hyperparameters"] = HyperparametersJson(spec.trainer);
  report["hyperparameters"]["teacher_steps"] = reports[0]["steps"];
  report["hyperparameters"]["teacher_learning_rate"] =
      spec.task_teacher_learning_rate > 0 ? spec.task_teacher_learning_rate
                                          : spec.trainer.learning_rate;
  report["teacher"] = reports[0];
  report["teacher"]["name"] = spec.teacher_model;
  report["student"] = reports[1];
  report["scratch_student"] = reports[2];
  report["kd_beats_scratch"] = reports[1]["accuracy"].get<double>() >
                               reports[2]["accuracy"].get<double>();
  report["wall_seconds_this_run"] = Now() - t_start;
  RETURN_IF_ERROR_(
      WriteFileAtomic(out_dir + "/distill_report.json", report.dump(2) + "\n"));
  result.output_dir = out_dir;
  result.report_path = out_dir + "/distill_report.json";
  result.report = report;
  return result;
}

// The student's tokenizer must be the teacher's token for token: KD compares
// distributions over the same ids.
absl::Status CheckSameVocabulary(const tokenizer::Tokenizer& teacher,
                                 const tokenizer::Tokenizer& data) {
  if (teacher.vocab_size() != data.vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.tokenizer: incompatible vocabularies: ", data.vocab_size(),
        " tokens, the teacher's tokenizer has ", teacher.vocab_size()));
  }
  for (int32_t id = 0; id < teacher.vocab_size(); ++id) {
    auto x = teacher.Decode({id}, /*skip_special_tokens=*/false);
    auto y = data.Decode({id}, /*skip_special_tokens=*/false);
    if (x.ok() != y.ok() || (x.ok() && *x != *y)) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.tokenizer: incompatible vocabularies: token ", id,
                       " differs from the teacher's"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<JobSpec> ParseJobSpec(const std::string& json_text) {
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("spec: not a JSON object");
  }
  JobSpec spec;
  if (j.contains("method")) {
    const Json& m = j["method"];
    bool found = false;
    for (const auto& e : kMethods) {
      if ((m.is_string() && m.get<std::string>() == e.name) ||
          (m.is_number_integer() &&
           m.get<int>() == static_cast<int>(e.method) + 1)) {
        spec.method = e.method;
        found = true;
      }
    }
    if (!found)
      return absl::InvalidArgumentError("method: unknown or unspecified");
  } else {
    return absl::InvalidArgumentError("method: required");
  }
  RETURN_IF_ERROR_(
      ReadString(j, "teacher_model", "teacher_model", &spec.teacher_model));
  RETURN_IF_ERROR_(
      ReadString(j, "output_name", "output_name", &spec.output_name));
  if (j.contains("student"))
    RETURN_IF_ERROR_(ReadShape(j["student"], "student", &spec.student));
  if (j.contains("assistants")) {
    if (!j["assistants"].is_array())
      return absl::InvalidArgumentError("assistants: must be a list");
    for (size_t i = 0; i < j["assistants"].size(); ++i) {
      StudentShape s;
      RETURN_IF_ERROR_(ReadShape(j["assistants"][i],
                                 absl::StrCat("assistants[", i, "]"), &s));
      spec.assistants.push_back(s);
    }
  }
  TrainerOptions& t = spec.trainer;
  if (j.contains("data")) {
    const Json& d = j["data"];
    RETURN_IF_ERROR_(ReadString(d, "corpus", "data.corpus", &spec.corpus));
    RETURN_IF_ERROR_(
        ReadString(d, "text_file", "data.text_file", &spec.text_file));
    RETURN_IF_ERROR_(
        ReadString(d, "tokenizer", "data.tokenizer", &spec.tokenizer));
    int64_t seq = 0;
    RETURN_IF_ERROR_(
        ReadInt(d, "sequence_length", "data.sequence_length", &seq));
    if (seq < 0)
      return absl::InvalidArgumentError("data.sequence_length: must be >= 0");
    if (seq > 0) spec.sequence_length = seq;
    double held = 0;
    RETURN_IF_ERROR_(
        ReadDouble(d, "heldout_fraction", "data.heldout_fraction", &held));
    if (held != 0) spec.heldout_fraction = held;
    if (!(spec.heldout_fraction > 0 && spec.heldout_fraction <= 0.5)) {
      return absl::InvalidArgumentError(
          "data.heldout_fraction: must be in (0, 0.5]");
    }
  }
  if (spec.corpus.empty() && spec.text_file.empty()) {
    return absl::InvalidArgumentError(
        "data.text_file: a corpus (data.corpus or data.text_file) is required");
  }
  if (!spec.corpus.empty() && (absl::StrContains(spec.corpus, "/") ||
                               absl::StrContains(spec.corpus, ".."))) {
    return absl::InvalidArgumentError("data.corpus: must be a plain name");
  }
  t.seq_len = spec.sequence_length;
  // Proto3 cannot tell 0 from unset; 0 takes the documented default.
  t.learning_rate = 0;
  t.total_steps = 0;
  t.batch_size = 0;
  t.gradient_accumulation = 0;
  t.warmup_steps = -1;
  t.weight_decay = 0;
  t.max_grad_norm = 0;
  if (j.contains("optimizer")) {
    const Json& o = j["optimizer"];
    RETURN_IF_ERROR_(ReadDouble(o, "learning_rate", "optimizer.learning_rate",
                                &t.learning_rate));
    RETURN_IF_ERROR_(
        ReadInt(o, "warmup_steps", "optimizer.warmup_steps", &t.warmup_steps));
    RETURN_IF_ERROR_(
        ReadInt(o, "total_steps", "optimizer.total_steps", &t.total_steps));
    RETURN_IF_ERROR_(
        ReadInt(o, "batch_size", "optimizer.batch_size", &t.batch_size));
    RETURN_IF_ERROR_(ReadInt(o, "gradient_accumulation",
                             "optimizer.gradient_accumulation",
                             &t.gradient_accumulation));
    RETURN_IF_ERROR_(ReadDouble(o, "weight_decay", "optimizer.weight_decay",
                                &t.weight_decay));
    RETURN_IF_ERROR_(ReadDouble(o, "max_grad_norm", "optimizer.max_grad_norm",
                                &t.max_grad_norm));
    RETURN_IF_ERROR_(ReadDouble(o, "min_lr_ratio", "optimizer.min_lr_ratio",
                                &t.min_lr_ratio));
  }
  if (t.learning_rate < 0)
    return absl::InvalidArgumentError("optimizer.learning_rate: must be > 0");
  if (t.learning_rate == 0) t.learning_rate = 1e-3;
  // total_steps, temperature and alpha have explicit presence in the proto
  // (`optional`): absent takes the default, a present 0 is an error.
  const bool has_steps =
      j.contains("optimizer") && j["optimizer"].contains("total_steps");
  if (t.total_steps < 0 || (has_steps && t.total_steps == 0))
    return absl::InvalidArgumentError("optimizer.total_steps: must be > 0");
  if (t.total_steps == 0) t.total_steps = 1000;
  if (t.batch_size < 0)
    return absl::InvalidArgumentError("optimizer.batch_size: must be > 0");
  if (t.batch_size == 0) t.batch_size = 8;
  if (t.gradient_accumulation == 0) t.gradient_accumulation = 1;
  if (t.warmup_steps < 0) t.warmup_steps = t.total_steps / 20;
  double temperature = 0;
  RETURN_IF_ERROR_(ReadDouble(j, "temperature", "temperature", &temperature));
  if (j.contains("temperature") &&
      (!(temperature > 0) || !std::isfinite(temperature))) {
    return absl::InvalidArgumentError("temperature: must be > 0");
  }
  t.loss.temperature = j.contains("temperature") ? temperature : 2.0;
  double alpha = 0;
  RETURN_IF_ERROR_(ReadDouble(j, "alpha", "alpha", &alpha));
  // An omitted alpha (proto3 default 0) would silently turn KD off; it means
  // 0.5.
  t.loss.alpha = j.contains("alpha") ? alpha : 0.5;
  RETURN_IF_ERROR_(ReadDouble(j, "feature_weight", "feature_weight",
                              &t.loss.feature_weight));
  RETURN_IF_ERROR_(
      ReadBool(j, "attention_loss", "attention_loss", &t.loss.attention_loss));
  if (j.contains("layer_mapping")) {
    const Json& a = j["layer_mapping"];
    if (!a.is_array())
      return absl::InvalidArgumentError("layer_mapping: must be a list");
    for (size_t i = 0; i < a.size(); ++i) {
      int64_t s = 0, te = 0;
      const std::string f = absl::StrCat("layer_mapping[", i, "]");
      RETURN_IF_ERROR_(
          ReadInt(a[i], "student_layer", f + ".student_layer", &s));
      RETURN_IF_ERROR_(
          ReadInt(a[i], "teacher_layer", f + ".teacher_layer", &te));
      t.layer_pairs.emplace_back(s, te);
    }
  }
  if (spec.method == Method::kFeature && t.loss.feature_weight == 0)
    t.loss.feature_weight = 1.0;
  int64_t seed = 0;
  RETURN_IF_ERROR_(ReadInt(j, "seed", "seed", &seed));
  t.seed = static_cast<uint64_t>(seed);
  RETURN_IF_ERROR_(
      ReadInt(j, "eval_every_steps", "eval_every_steps", &t.eval_every_steps));
  RETURN_IF_ERROR_(ReadInt(j, "checkpoint_every_steps",
                           "checkpoint_every_steps",
                           &t.checkpoint_every_steps));
  if (t.checkpoint_every_steps == 0) t.checkpoint_every_steps = 50;
  RETURN_IF_ERROR_(
      ReadInt(j, "eval_sequences", "eval_sequences", &t.eval_sequences));
  RETURN_IF_ERROR_(ReadBool(j, "scratch_baseline", "scratch_baseline",
                            &spec.scratch_baseline));
  RETURN_IF_ERROR_(ReadInt(j, "max_position_embeddings",
                           "max_position_embeddings",
                           &spec.max_position_embeddings));
  RETURN_IF_ERROR_(
      ReadString(j, "output_dtype", "output_dtype", &spec.output_dtype));
  RETURN_IF_ERROR_(
      ReadString(j, "sample_prompt", "sample_prompt", &spec.sample_prompt));
  if (j.contains("generation")) {
    const Json& g = j["generation"];
    formats::GenerationConfig& gen = spec.generation;
    if (!g.is_object())
      return absl::InvalidArgumentError("generation: must be an object");
    RETURN_IF_ERROR_(
        ReadBool(g, "do_sample", "generation.do_sample", &gen.do_sample));
    RETURN_IF_ERROR_(ReadDouble(g, "temperature", "generation.temperature",
                                &gen.temperature));
    RETURN_IF_ERROR_(ReadDouble(g, "top_p", "generation.top_p", &gen.top_p));
    RETURN_IF_ERROR_(ReadInt(g, "top_k", "generation.top_k", &gen.top_k));
    RETURN_IF_ERROR_(ReadDouble(g, "repetition_penalty",
                                "generation.repetition_penalty",
                                &gen.repetition_penalty));
    if (!(gen.temperature > 0) || !std::isfinite(gen.temperature))
      return absl::InvalidArgumentError("generation.temperature: must be > 0");
    if (!(gen.top_p > 0 && gen.top_p <= 1))
      return absl::InvalidArgumentError("generation.top_p: must be in (0, 1]");
    if (gen.top_k < 0)
      return absl::InvalidArgumentError("generation.top_k: must be >= 0");
    if (!(gen.repetition_penalty > 0) ||
        !std::isfinite(gen.repetition_penalty)) {
      return absl::InvalidArgumentError(
          "generation.repetition_penalty: must be > 0");
    }
  }
  if (j.contains("task")) {
    const Json& task = j["task"];
    if (!task.is_object())
      return absl::InvalidArgumentError("task: must be an object");
    RETURN_IF_ERROR_(ReadString(task, "name", "task.name", &spec.task_name));
    RETURN_IF_ERROR_(
        ReadInt(task, "num_labels", "task.num_labels", &spec.num_labels));
    RETURN_IF_ERROR_(ReadInt(task, "teacher_steps", "task.teacher_steps",
                             &spec.task_teacher_steps));
    RETURN_IF_ERROR_(ReadDouble(task, "teacher_learning_rate",
                                "task.teacher_learning_rate",
                                &spec.task_teacher_learning_rate));
    if (spec.task_teacher_steps < 0)
      return absl::InvalidArgumentError("task.teacher_steps: must be >= 0");
    if (spec.task_teacher_learning_rate < 0 ||
        spec.task_teacher_learning_rate > 1 ||
        !std::isfinite(spec.task_teacher_learning_rate)) {
      return absl::InvalidArgumentError(
          "task.teacher_learning_rate: must be in (0, 1] (0 = the "
          "optimizer's)");
    }
    if (spec.num_labels < 0 || spec.num_labels == 1)
      return absl::InvalidArgumentError(
          "task.num_labels: must be >= 2 (0 = from the data)");
  }
  int64_t threads = 0;
  RETURN_IF_ERROR_(ReadInt(j, "threads", "threads", &threads));
  spec.threads = static_cast<int>(threads);
  RETURN_IF_ERROR_(ValidateTrainerOptions(t));

  if (spec.output_name.empty() || absl::StrContains(spec.output_name, "/") ||
      spec.output_name == "." || spec.output_name == "..") {
    return absl::InvalidArgumentError(
        "output_name: required, a plain folder name");
  }
  if (spec.output_dtype != "float32" && spec.output_dtype != "bfloat16" &&
      spec.output_dtype != "float16") {
    return absl::InvalidArgumentError(
        "output_dtype: float32, bfloat16 or float16");
  }
  if (spec.method == Method::kTask) {
    // Accuracy is reported for teacher, KD student and scratch student.
    spec.scratch_baseline = true;
  }
  if (spec.method == Method::kTrain) {
    const StudentShape& s = spec.student;
    if (s.hidden_size <= 0)
      return absl::InvalidArgumentError(
          "student.hidden_size: required for DISTILLATION_METHOD_TRAIN");
    if (s.num_hidden_layers <= 0)
      return absl::InvalidArgumentError(
          "student.num_hidden_layers: required for DISTILLATION_METHOD_TRAIN");
    if (s.num_attention_heads <= 0)
      return absl::InvalidArgumentError(
          "student.num_attention_heads: required for "
          "DISTILLATION_METHOD_TRAIN");
    if (s.intermediate_size <= 0)
      return absl::InvalidArgumentError(
          "student.intermediate_size: required for DISTILLATION_METHOD_TRAIN");
    if (spec.tokenizer.empty())
      return absl::InvalidArgumentError(
          "data.tokenizer: required for DISTILLATION_METHOD_TRAIN (a model "
          "folder or tokenizer.json)");
  } else if (spec.teacher_model.empty()) {
    return absl::InvalidArgumentError("teacher_model: required");
  }
  if (spec.method == Method::kProgressive && spec.assistants.empty()) {
    return absl::InvalidArgumentError(
        "assistants: DISTILLATION_METHOD_PROGRESSIVE needs at least one");
  }
  return spec;
}

absl::Status CheckJobInputs(const JobSpec& spec, const PipelineEnv& env) {
  if (spec.method != Method::kTrain) {
    const std::string teacher = ResolveModel(env, spec.teacher_model);
    if (!fs::exists(teacher + "/config.json")) {
      return absl::InvalidArgumentError(
          absl::StrCat("teacher_model: no model '", spec.teacher_model,
                       "' in the repository"));
    }
  }
  const std::string tok = TokenizerSource(spec, env);
  if (!fs::exists(tok)) {
    return absl::InvalidArgumentError(
        absl::StrCat("data.tokenizer: '", tok, "' not found"));
  }
  const std::string corpus = ResolveCorpus(spec, env);
  std::error_code ec;
  if (!fs::is_regular_file(corpus, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(spec.text_file.empty() ? "data.corpus" : "data.text_file",
                     ": '", corpus, "' is not a readable file"));
  }
  if (fs::file_size(corpus, ec) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(spec.text_file.empty() ? "data.corpus" : "data.text_file",
                     ": empty corpus"));
  }
  if (spec.method != Method::kTrain && !spec.tokenizer.empty()) {
    auto a = tokenizer::LoadTokenizer(tok);
    auto b = tokenizer::LoadTokenizer(ResolveModel(env, spec.teacher_model));
    if (!a.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.tokenizer: ", a.status().message()));
    }
    if (b.ok()) RETURN_IF_ERROR_(CheckSameVocabulary(**b, **a));
  }
  return absl::OkStatus();
}

absl::StatusOr<PipelineResult> RunPipeline(
    const JobSpec& spec, const PipelineEnv& env,
    const std::function<void(const PipelineProgress&)>& on_progress,
    const CancelPredicate& cancelled) {
  const double t_start = Now();
  if (spec.threads > 0) model::SetCpuThreads(spec.threads);
  RETURN_IF_ERROR_(CheckJobInputs(spec, env));
  const std::string tok_src = TokenizerSource(spec, env);
  auto tok = tokenizer::LoadTokenizer(tok_src);
  if (!tok.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data.tokenizer: ", tok.status().message()));
  }
  if (spec.method == Method::kTask) {
    return RunTaskPipeline(spec, env, tok_src, **tok, on_progress, cancelled,
                           t_start);
  }
  auto docs = ReadDocuments(ResolveCorpus(spec, env));
  if (!docs.ok()) return docs.status();
  CorpusOptions copts;
  copts.heldout_fraction = spec.heldout_fraction;
  auto corpus = TokenizeCorpus(*docs, **tok, copts);
  if (!corpus.ok()) return corpus.status();

  std::shared_ptr<model::LlamaForCausalLM> teacher;
  formats::LlamaConfig base;
  if (spec.method == Method::kTrain) {
    base.architecture = "LlamaForCausalLM";
    base.model_type = "llama";
    base.vocab_size = (*tok)->vocab_size();
    base.hidden_size = spec.student.hidden_size;
    base.num_hidden_layers = spec.student.num_hidden_layers;
    base.num_attention_heads = spec.student.num_attention_heads;
    base.num_key_value_heads = spec.student.num_key_value_heads > 0
                                   ? spec.student.num_key_value_heads
                                   : spec.student.num_attention_heads;
    base.intermediate_size = spec.student.intermediate_size;
    base.head_dim =
        base.hidden_size / std::max<int64_t>(1, base.num_attention_heads);
    base.max_position_embeddings =
        std::max(spec.max_position_embeddings, spec.sequence_length);
    base.rms_norm_eps = 1e-5;
    base.rope_theta = 10000;
    base.tie_word_embeddings = true;
    base.bos_token_id = std::max((*tok)->bos_id(), 0);
    base.eos_token_id = std::max((*tok)->eos_id(), 0);
    base.eos_token_ids = {base.eos_token_id};
  } else {
    auto t = model::LoadModel(ResolveModel(env, spec.teacher_model));
    if (!t.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("teacher_model: ", t.status().message()));
    }
    teacher = *t;
    base = teacher->config();
    base.torch_dtype = "float32";
    if (base.vocab_size != (*tok)->vocab_size() &&
        (*tok)->vocab_size() > base.vocab_size) {
      return absl::InvalidArgumentError(
          "data.tokenizer: incompatible vocabularies");
    }
  }

  std::vector<Stage> stages;
  auto make_stage = [&](const std::string& name, const StudentShape& shape,
                        const std::string& field) -> absl::Status {
    Stage st;
    st.name = name;
    auto c = spec.method == Method::kTrain
                 ? absl::StatusOr<formats::LlamaConfig>(base)
                 : StudentConfig(base, shape, field);
    if (!c.ok()) return c.status();
    st.config = *c;
    st.init_layers = shape.init_from_teacher_layers;
    stages.push_back(st);
    return absl::OkStatus();
  };
  switch (spec.method) {
    case Method::kTrain:
      RETURN_IF_ERROR_(make_stage("model", spec.student, "student"));
      break;
    case Method::kSelf:
      RETURN_IF_ERROR_(make_stage("student", StudentShape{}, "student"));
      stages.back().teacher = 0;
      break;
    case Method::kProgressive:
      for (size_t i = 0; i < spec.assistants.size(); ++i) {
        RETURN_IF_ERROR_(make_stage(absl::StrCat("assistant", i),
                                    spec.assistants[i],
                                    absl::StrCat("assistants[", i, "]")));
        stages.back().teacher =
            static_cast<int>(i);  // 0 = teacher, else stage i-1.
      }
      RETURN_IF_ERROR_(make_stage("student", spec.student, "student"));
      stages.back().teacher = static_cast<int>(spec.assistants.size());
      break;
    default:
      RETURN_IF_ERROR_(make_stage("student", spec.student, "student"));
      stages.back().teacher = 0;
      break;
  }
  const int student_stage = static_cast<int>(stages.size()) - 1;
  if (spec.scratch_baseline && spec.method != Method::kTrain) {
    Stage scratch = stages.back();
    scratch.name = "scratch";
    scratch.teacher = -1;
    scratch.init_layers.clear();
    scratch.report_as_scratch = true;
    stages.push_back(scratch);
  }

  std::vector<std::shared_ptr<model::LlamaForCausalLM>> models(stages.size());
  std::vector<Json> stage_reports(stages.size());
  PipelineResult result;
  for (size_t i = 0; i < stages.size(); ++i) {
    const Stage& st = stages[i];
    const std::string dir = env.checkpoint_dir + "/" + st.name;
    const std::string final_dir = dir + "/final";
    if (fs::exists(final_dir + "/DONE")) {
      auto m = model::LoadModel(final_dir);
      if (!m.ok()) return m.status();
      models[i] = *m;
      stage_reports[i] = StageReport(final_dir);
      continue;
    }
    std::error_code ec;
    fs::create_directories(dir, ec);
    // The scratch baseline starts from the KD student's initial weights, so the
    // comparison isolates what the teacher adds.
    const size_t init_index = st.report_as_scratch ? student_stage : i;
    auto m = model::MakeRandomModel(
        st.config, spec.trainer.seed * 1000 + 7919 * (init_index + 1));
    if (!m.ok()) return m.status();
    std::shared_ptr<model::LlamaForCausalLM> stage_teacher =
        st.teacher < 0 ? nullptr
                       : (st.teacher == 0 ? teacher : models[st.teacher - 1]);
    if (!st.init_layers.empty() && stage_teacher) {
      RETURN_IF_ERROR_(
          InitFromTeacherLayers(*stage_teacher, **m, st.init_layers));
    }
    TrainerOptions topts = spec.trainer;
    topts.checkpoint_dir = dir;
    topts.seed =
        spec.trainer.seed;  // Same data order for every stage: same tokens.
    auto trainer = Trainer::Create(topts, *m, stage_teacher, &*corpus);
    if (!trainer.ok()) return trainer.status();
    auto r = (*trainer)->Run(
        StageProgress(on_progress, st.name, i, stages.size()), cancelled);
    if (!r.ok()) return r.status();
    if (r->cancelled) {
      result.cancelled = true;
      return result;
    }
    models[i] = *m;
    stage_reports[i] = Json{{"stage", st.name},
                            {"parameters", CountParameters(**m)},
                            {"heldout_perplexity", r->heldout_perplexity},
                            {"final_train_loss", r->final_loss},
                            {"steps", r->steps},
                            {"tokens_seen", r->tokens_seen},
                            {"train_tokens_per_second", r->tokens_per_second},
                            {"train_wall_seconds", r->wall_seconds},
                            {"resumed", r->resumed}};
    RETURN_IF_ERROR_(model::SaveModel(**m, final_dir));
    RETURN_IF_ERROR_(MarkStageDone(final_dir, stage_reports[i]));
  }

  // Output folder.
  model::LlamaForCausalLM& out_model = *models[student_stage];
  const std::string out_dir = env.model_repository + "/" + spec.output_name;
  model::SaveOptions sopts;
  if (spec.output_dtype == "bfloat16") sopts.dtype = at::kBFloat16;
  if (spec.output_dtype == "float16") sopts.dtype = at::kHalf;
  RETURN_IF_ERROR_(model::SaveModel(out_model, out_dir, sopts));
  RETURN_IF_ERROR_(CopyTokenizerFiles(tok_src, out_dir));
  formats::GenerationConfig gen = spec.generation;
  gen.bos_token_id = out_model.config().bos_token_id;
  gen.eos_token_ids = out_model.config().eos_token_ids;
  if (gen.eos_token_ids.empty())
    gen.eos_token_ids = {out_model.config().eos_token_id};
  RETURN_IF_ERROR_(WriteFileAtomic(out_dir + "/generation_config.json",
                                   formats::GenerationConfigToJson(gen)));

  // Report.
  const TrainerOptions& o = spec.trainer;
  auto describe = [&](model::LlamaForCausalLM& m,
                      Json entry) -> absl::StatusOr<Json> {
    const auto& c = m.config();
    entry["parameters"] = CountParameters(m);
    entry["architecture"] = Json{{"hidden_size", c.hidden_size},
                                 {"num_hidden_layers", c.num_hidden_layers},
                                 {"num_attention_heads", c.num_attention_heads},
                                 {"num_key_value_heads", c.num_key_value_heads},
                                 {"intermediate_size", c.intermediate_size},
                                 {"vocab_size", c.vocab_size}};
    auto ppl = HeldoutPerplexity(m, corpus->heldout, o.seq_len,
                                 o.eval_sequences, o.batch_size);
    if (!ppl.ok()) return ppl.status();
    entry["heldout_perplexity"] = *ppl;
    AddSamples(m, **tok, spec.sample_prompt, spec.generation, &entry);
    return entry;
  };
  Json report;
  report["method"] = MethodToName(spec.method);
  report["output"] = spec.output_name;
  report["corpus"] = Json{{"file", ResolveCorpus(spec, env)},
                          {"documents", corpus->num_documents},
                          {"heldout_documents", corpus->num_heldout_documents},
                          {"train_tokens", corpus->train.size()},
                          {"heldout_tokens", corpus->heldout.size()},
                          {"eval_sequences", o.eval_sequences},
                          {"sequence_length", o.seq_len}};
  report["hyperparameters"] = HyperparametersJson(o);
  report["generation_config"] =
      Json::parse(formats::GenerationConfigToJson(gen), nullptr, false);
  if (teacher) {
    auto e = describe(*teacher, Json{{"name", spec.teacher_model}});
    if (!e.ok()) return e.status();
    report["teacher"] = *e;
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    const char* key =
        stages[i].report_as_scratch ? "scratch_student"
        : static_cast<int>(i) == student_stage
            ? (spec.method == Method::kTrain ? "model" : "student")
            : nullptr;
    auto e = describe(*models[i], stage_reports[i]);
    if (!e.ok()) return e.status();
    if (key != nullptr) {
      report[key] = *e;
    } else {
      report["assistants"].push_back(*e);
    }
  }
  if (report.contains("teacher") && report.contains("student") &&
      report.contains("scratch_student")) {
    const double t = report["teacher"]["heldout_perplexity"].get<double>();
    const double s = report["student"]["heldout_perplexity"].get<double>();
    const double z =
        report["scratch_student"]["heldout_perplexity"].get<double>();
    report["kd_beats_scratch"] = s < z;
    report["gap_ratio"] = (s - t) / std::max(z - t, 1e-9);
  }
  report["wall_seconds_this_run"] = Now() - t_start;
  RETURN_IF_ERROR_(
      WriteFileAtomic(out_dir + "/distill_report.json", report.dump(2) + "\n"));
  result.output_dir = out_dir;
  result.report_path = out_dir + "/distill_report.json";
  result.report = report;
  return result;
}

}  // namespace hearth::distiller
