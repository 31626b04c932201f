#include "services/distiller/task.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/formats/hf_config.h"
#include "common/formats/safetensors.h"
#include "common/model/model_loader.h"
#include "nlohmann/json.hpp"
#include "services/distiller/bpe_trainer.h"
#include "services/distiller/data.h"
#include "services/distiller/losses.h"

namespace hearth::distiller {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

absl::Status TorchError(const std::string& what, const c10::Error& e) {
  return absl::InternalError(
      absl::StrCat(what, ": ", e.what_without_backtrace()));
}

// A right-padded batch of examples[order[first .. first + n)].
void MakeBatch(const std::vector<EncodedExample>& examples,
               const std::vector<int64_t>& indices, int64_t pad_token_id,
               at::Tensor* ids, at::Tensor* lengths, at::Tensor* labels) {
  const int64_t b = static_cast<int64_t>(indices.size());
  int64_t t = 1;
  for (int64_t i : indices) t = std::max<int64_t>(t, examples[i].ids.size());
  *ids = torch::full({b, t}, pad_token_id, torch::kLong);
  *lengths = torch::empty({b}, torch::kLong);
  *labels = torch::empty({b}, torch::kLong);
  int64_t* id = ids->data_ptr<int64_t>();
  for (int64_t r = 0; r < b; ++r) {
    const EncodedExample& e = examples[indices[r]];
    std::copy(e.ids.begin(), e.ids.end(), id + r * t);
    lengths->data_ptr<int64_t>()[r] = static_cast<int64_t>(e.ids.size());
    labels->data_ptr<int64_t>()[r] = e.label;
  }
}

std::vector<std::pair<std::string, at::Tensor>> NamedTensors(
    SequenceClassifier& c) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& p : c.trunk().named_parameters(/*recurse=*/true)) {
    if (p.key() == "lm_head.weight") continue;
    out.emplace_back(p.key(), p.value());
  }
  out.emplace_back("score.weight", c.score());
  return out;
}

}  // namespace

absl::StatusOr<TaskData> ReadLabelledTsv(const std::string& path,
                                         double test_fraction,
                                         const std::string& field) {
  std::ifstream in(path);
  if (!in)
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": cannot read '", path, "'"));
  if (!(test_fraction > 0 && test_fraction <= 0.5)) {
    return absl::InvalidArgumentError(
        "data.heldout_fraction: must be in (0, 0.5]");
  }
  std::vector<std::pair<std::string, std::string>> rows;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const size_t tab = line.find('\t');
    if (tab == 0 || tab == std::string::npos || tab + 1 == line.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": line ", line_no,
                       " is not \"label<TAB>text\" with both non-empty"));
    }
    rows.emplace_back(line.substr(0, tab), line.substr(tab + 1));
  }
  TaskData data;
  std::map<std::string, int64_t> ids;
  for (const auto& r : rows) ids.emplace(r.first, 0);
  if (ids.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": needs at least two labels, found ", ids.size(),
                     rows.empty() ? " (empty file)" : ""));
  }
  for (auto& [name, id] : ids) {
    id = static_cast<int64_t>(data.label_names.size());
    data.label_names.push_back(name);
  }
  const int64_t k = std::max<int64_t>(2, std::llround(1.0 / test_fraction));
  std::vector<int64_t> seen(ids.size(), 0);
  for (auto& r : rows) {
    const int64_t label = ids[r.first];
    LabelledText e{std::move(r.second), label};
    (seen[label]++ % k == k - 1 ? data.test : data.train)
        .push_back(std::move(e));
  }
  for (size_t l = 0; l < seen.size(); ++l) {
    if (seen[l] < k) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": label '", data.label_names[l], "' has ", seen[l],
          " examples; each needs at least ", k, " for a test example"));
    }
  }
  return data;
}

absl::StatusOr<std::vector<EncodedExample>> EncodeExamples(
    const std::vector<LabelledText>& examples,
    const tokenizer::Tokenizer& tokenizer, int64_t max_length) {
  std::vector<EncodedExample> out;
  out.reserve(examples.size());
  for (const auto& e : examples) {
    auto ids = tokenizer.Encode(e.text, /*add_special_tokens=*/true);
    if (!ids.ok()) return ids.status();
    EncodedExample x;
    x.ids.assign(ids->begin(), ids->end());
    if (static_cast<int64_t>(x.ids.size()) > max_length)
      x.ids.resize(max_length);
    if (x.ids.empty()) x.ids.push_back(std::max(tokenizer.bos_id(), 0));
    x.label = e.label;
    out.push_back(std::move(x));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<SequenceClassifier>> SequenceClassifier::Create(
    std::shared_ptr<model::LlamaForCausalLM> trunk, int64_t num_labels,
    uint64_t seed) {
  if (!trunk) return absl::InvalidArgumentError("classifier: missing trunk");
  if (num_labels < 2)
    return absl::InvalidArgumentError("task.num_labels: must be >= 2");
  std::unique_ptr<SequenceClassifier> c(new SequenceClassifier());
  try {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    c->score_ = torch::empty({num_labels, trunk->config().hidden_size});
    c->score_.normal_(0.0, 0.02, gen);
    c->score_ =
        c->score_.to(trunk->device(), trunk->dtype()).set_requires_grad(true);
  } catch (const c10::Error& e) {
    return TorchError("classifier head", e);
  }
  c->trunk_ = std::move(trunk);
  return c;
}

at::Tensor SequenceClassifier::Logits(const at::Tensor& ids,
                                      const at::Tensor& lengths) {
  const at::Tensor dev_ids = ids.to(trunk_->device());
  const at::Tensor positions = torch::arange(ids.size(1)).unsqueeze(0);
  const at::Tensor mask =
      (positions < lengths.unsqueeze(1)).to(torch::kLong).to(trunk_->device());
  model::ForwardOptions fwd;
  fwd.output_hidden_states = true;
  model::ForwardOutput out = trunk_->Forward(dev_ids, mask, fwd);
  // [B, T, hidden] final-normed; pick position length - 1 of each row.
  const at::Tensor& h = out.hidden_states.back();
  const at::Tensor last = (lengths - 1).to(trunk_->device());
  const at::Tensor pooled =
      h.index({torch::arange(h.size(0), last.options()), last});
  return torch::matmul(pooled, score_.t());
}

int64_t SequenceClassifier::num_labels() const { return score_.size(0); }

int64_t SequenceClassifier::NumParameters() {
  int64_t n = 0;
  for (auto& [name, t] : NamedTensors(*this)) n += t.numel();
  return n;
}

std::vector<at::Tensor> SequenceClassifier::Parameters() {
  std::vector<at::Tensor> out;
  for (auto& p : trunk_->parameters()) out.push_back(p);
  out.push_back(score_);
  return out;
}

absl::Status SaveClassifierHf(SequenceClassifier& c,
                              const std::vector<std::string>& label_names,
                              int64_t pad_token_id, const std::string& folder) {
  if (static_cast<int64_t>(label_names.size()) != c.num_labels()) {
    return absl::InvalidArgumentError(
        absl::StrCat("task.num_labels: ", label_names.size(),
                     " label names for ", c.num_labels(), " labels"));
  }
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) return absl::InternalError(absl::StrCat(folder, ": ", ec.message()));
  std::vector<at::Tensor> host;
  formats::SafetensorsWriter writer;
  try {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : NamedTensors(c)) {
      at::Tensor h = t.detach().to(at::kCPU, at::kFloat).contiguous();
      writer.Add(name, formats::DType::kF32, h.sizes().vec(), h.data_ptr(),
                 static_cast<size_t>(h.numel()) * sizeof(float));
      host.push_back(std::move(h));
    }
  } catch (const c10::Error& e) {
    return TorchError("saving classifier", e);
  }
  if (absl::Status s = writer.WriteFile(folder + "/model.safetensors"); !s.ok())
    return s;
  formats::LlamaConfig config = c.trunk().config();
  config.torch_dtype = "float32";
  Json j = Json::parse(formats::LlamaConfigToJson(config));
  j["architectures"] = Json::array({"LlamaForSequenceClassification"});
  j["num_labels"] = c.num_labels();
  j["pad_token_id"] = pad_token_id;
  j["problem_type"] = "single_label_classification";
  Json id2label = Json::object(), label2id = Json::object();
  for (size_t i = 0; i < label_names.size(); ++i) {
    id2label[std::to_string(i)] = label_names[i];
    label2id[label_names[i]] = static_cast<int64_t>(i);
  }
  j["id2label"] = id2label;
  j["label2id"] = label2id;
  return WriteFileAtomic(folder + "/config.json", j.dump(2) + "\n");
}

absl::Status SaveClassifierStage(SequenceClassifier& c,
                                 const std::string& folder) {
  if (absl::Status s = model::SaveModel(c.trunk(), folder); !s.ok()) return s;
  try {
    torch::serialize::OutputArchive archive;
    archive.write("score", c.score().detach());
    archive.save_to(folder + "/score.pt");
  } catch (const c10::Error& e) {
    return TorchError("saving classifier head", e);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SequenceClassifier>> LoadClassifierStage(
    const std::string& folder) {
  auto trunk = model::LoadModel(folder);
  if (!trunk.ok()) return trunk.status();
  at::Tensor score;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(folder + "/score.pt");
    archive.read("score", score);
  } catch (const c10::Error& e) {
    return absl::DataLossError(
        absl::StrCat(folder, "/score.pt: ", e.what_without_backtrace()));
  }
  auto c = SequenceClassifier::Create(*trunk, score.size(0), 0);
  if (!c.ok()) return c.status();
  torch::NoGradGuard no_grad;
  (*c)->score().copy_(score);
  return c;
}

absl::StatusOr<ClassifierEval> EvaluateClassifier(
    SequenceClassifier& c, const std::vector<EncodedExample>& examples,
    int64_t pad_token_id, int64_t batch_size) {
  if (examples.empty())
    return absl::InvalidArgumentError("evaluation: no examples");
  ClassifierEval result;
  try {
    torch::NoGradGuard no_grad;
    c.trunk().eval();
    int64_t correct = 0;
    double loss = 0;
    const int64_t n = static_cast<int64_t>(examples.size());
    for (int64_t first = 0; first < n; first += batch_size) {
      std::vector<int64_t> idx;
      for (int64_t i = first; i < std::min(n, first + batch_size); ++i)
        idx.push_back(i);
      at::Tensor ids, lengths, labels;
      MakeBatch(examples, idx, pad_token_id, &ids, &lengths, &labels);
      at::Tensor logits = c.Logits(ids, lengths).to(at::kCPU, at::kFloat);
      correct += logits.argmax(-1).eq(labels).sum().item<int64_t>();
      loss += CrossEntropyLoss(logits, labels).item<double>() * idx.size();
    }
    result.accuracy = static_cast<double>(correct) / n;
    result.loss = loss / n;
  } catch (const c10::Error& e) {
    return TorchError("classifier evaluation", e);
  }
  return result;
}

absl::StatusOr<ClassifierTrainResult> TrainClassifier(
    const TrainerOptions& o, SequenceClassifier& student,
    SequenceClassifier* teacher, const std::vector<EncodedExample>& train,
    int64_t pad_token_id, const ProgressCallback& on_progress,
    const CancelPredicate& cancelled) {
  if (absl::Status s = ValidateTrainerOptions(o); !s.ok()) return s;
  if (train.empty()) {
    return absl::InvalidArgumentError(
        "data: no training examples (empty task file?)");
  }
  if (teacher && teacher->num_labels() != student.num_labels()) {
    return absl::InvalidArgumentError(
        "task.num_labels: teacher and student heads differ");
  }
  const int64_t max_len = student.trunk().config().max_position_embeddings;
  for (const auto& e : train) {
    if (static_cast<int64_t>(e.ids.size()) > max_len) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.sequence_length: examples of ", e.ids.size(),
                       " tokens exceed max_position_embeddings ", max_len));
    }
  }
  ClassifierTrainResult result;
  const auto start = Clock::now();
  std::vector<at::Tensor> params = student.Parameters();
  ShuffledOrder order(static_cast<int64_t>(train.size()), o.seed);
  int64_t step = 0, position = 0;
  const std::string ckpt =
      o.checkpoint_dir.empty() ? "" : o.checkpoint_dir + "/ckpt";
  std::vector<double> losses;
  int64_t tokens = 0;  // Non-pad example tokens this run.
  try {
    std::unique_ptr<torch::optim::AdamW> optimizer = MakeAdamW(params, o);
    auto save = [&]() -> absl::Status {
      if (ckpt.empty()) return absl::OkStatus();
      const std::string tmp = ckpt + ".new";
      std::error_code ec;
      fs::remove_all(tmp, ec);
      fs::create_directories(tmp, ec);
      torch::serialize::OutputArchive weights;
      for (size_t i = 0; i < params.size(); ++i)
        weights.write(absl::StrCat("p", i), params[i].detach());
      weights.save_to(tmp + "/weights.pt");
      torch::serialize::OutputArchive optim;
      optimizer->save(optim);
      optim.save_to(tmp + "/optimizer.pt");
      Json state = {{"step", step}, {"position", position}};
      if (absl::Status s = WriteFileAtomic(tmp + "/state.json", state.dump());
          !s.ok())
        return s;
      fs::remove_all(ckpt, ec);
      fs::rename(tmp, ckpt, ec);
      if (ec)
        return absl::InternalError(absl::StrCat(ckpt, ": ", ec.message()));
      return absl::OkStatus();
    };
    if (!ckpt.empty() && fs::exists(ckpt + "/state.json")) {
      std::ifstream in(ckpt + "/state.json");
      Json state = Json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (state.is_discarded() || !state.contains("step"))
        return absl::DataLossError(
            absl::StrCat(ckpt, "/state.json: unreadable"));
      torch::serialize::InputArchive weights;
      weights.load_from(ckpt + "/weights.pt");
      {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < params.size(); ++i) {
          at::Tensor t;
          weights.read(absl::StrCat("p", i), t);
          params[i].copy_(t);
        }
      }
      torch::serialize::InputArchive optim;
      optim.load_from(ckpt + "/optimizer.pt");
      optimizer->load(optim);
      step = state["step"].get<int64_t>();
      position = state["position"].get<int64_t>();
      result.resumed = true;
    }
    if (teacher) teacher->trunk().eval();
    student.trunk().train();
    const int64_t start_step = step;
    while (step < o.total_steps) {
      if (cancelled && cancelled()) {
        if (absl::Status s = save(); !s.ok()) return s;
        result.cancelled = true;
        break;
      }
      const double lr = ScheduledLearningRate(o, step);
      SetLearningRate(*optimizer, lr);
      optimizer->zero_grad();
      TrainerProgress p;
      for (int64_t micro = 0; micro < o.gradient_accumulation; ++micro) {
        std::vector<int64_t> idx;
        for (int64_t b = 0; b < o.batch_size; ++b)
          idx.push_back(order.IndexAt(position++));
        at::Tensor ids, lengths, labels;
        MakeBatch(train, idx, pad_token_id, &ids, &lengths, &labels);
        tokens += lengths.sum().item<int64_t>();
        at::Tensor logits = student.Logits(ids, lengths);
        labels = labels.to(logits.device());
        at::Tensor ce = CrossEntropyLoss(logits, labels);
        at::Tensor loss = ce;
        if (teacher) {
          at::Tensor t_logits;
          {
            torch::NoGradGuard no_grad;
            t_logits = teacher->Logits(ids, lengths);
          }
          at::Tensor kd =
              SoftTargetKdLoss(logits, t_logits, o.loss.temperature);
          loss = o.loss.alpha * kd + (1.0 - o.loss.alpha) * ce;
          p.kd += kd.item<double>() / o.gradient_accumulation;
        }
        p.ce += ce.item<double>() / o.gradient_accumulation;
        p.loss += loss.item<double>() / o.gradient_accumulation;
        (loss / static_cast<double>(o.gradient_accumulation)).backward();
      }
      if (o.max_grad_norm > 0)
        torch::nn::utils::clip_grad_norm_(params, o.max_grad_norm);
      optimizer->step();
      ++step;
      losses.push_back(p.loss);
      const double elapsed =
          std::chrono::duration<double>(Clock::now() - start).count();
      p.step = step;
      p.total_steps = o.total_steps;
      p.learning_rate = lr;
      p.elapsed_seconds = elapsed;
      p.eta_seconds = elapsed / (step - start_step) * (o.total_steps - step);
      p.tokens_per_second = tokens / std::max(elapsed, 1e-9);
      if (on_progress) on_progress(p);
      if (o.checkpoint_every_steps > 0 &&
          step % o.checkpoint_every_steps == 0 && step < o.total_steps) {
        if (absl::Status s = save(); !s.ok()) return s;
      }
    }
  } catch (const c10::Error& e) {
    return TorchError(absl::StrCat("classifier training step ", step), e);
  }
  result.steps = step;
  result.wall_seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  if (!losses.empty()) {
    const size_t tenth = std::max<size_t>(1, losses.size() / 10);
    double first = 0, last = 0;
    for (size_t i = 0; i < tenth; ++i) {
      first += losses[i];
      last += losses[losses.size() - 1 - i];
    }
    result.first_loss = first / tenth;
    result.final_loss = last / tenth;
  }
  return result;
}

}  // namespace hearth::distiller
