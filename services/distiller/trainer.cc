#include "services/distiller/trainer.h"

#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "services/distiller/bpe_trainer.h"

namespace hearth::distiller {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

void FsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

double Seconds(Clock::time_point from) {
  return std::chrono::duration<double>(Clock::now() - from).count();
}

}  // namespace

double ScheduledLearningRate(const TrainerOptions& o, int64_t step) {
  if (o.warmup_steps > 0 && step < o.warmup_steps) {
    return o.learning_rate * static_cast<double>(step + 1) /
           static_cast<double>(o.warmup_steps);
  }
  const double span = std::max<int64_t>(1, o.total_steps - o.warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return o.learning_rate * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

std::unique_ptr<torch::optim::AdamW> MakeAdamW(
    const std::vector<at::Tensor>& parameters, const TrainerOptions& options) {
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : parameters)
    (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto make_opts = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(options.learning_rate)
            .betas({options.beta1, options.beta2})
            .eps(1e-8)
            .weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, make_opts(options.weight_decay));
  if (!no_decay.empty()) groups.emplace_back(no_decay, make_opts(0.0));
  return std::make_unique<torch::optim::AdamW>(
      groups, torch::optim::AdamWOptions(options.learning_rate));
}

void SetLearningRate(torch::optim::AdamW& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
}

struct Trainer::State {
  TrainerOptions options;
  std::shared_ptr<model::LlamaForCausalLM> student;
  std::shared_ptr<model::LlamaForCausalLM> teacher;
  const TokenizedCorpus* corpus = nullptr;
  std::unique_ptr<SequenceSet> train_set;
  std::unique_ptr<ShuffledOrder> order;
  std::vector<at::Tensor> projections;
  LayerPairs pairs;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::vector<at::Tensor> all_params;
  int64_t step = 0;
  int64_t position = 0;  // Training sequences consumed.
  int64_t tokens_seen = 0;

  bool feature() const { return teacher && options.loss.feature_weight > 0; }

  absl::Status SaveCheckpoint();
  absl::StatusOr<bool> LoadCheckpoint();
};

absl::Status ValidateTrainerOptions(const TrainerOptions& o) {
  if (o.seq_len <= 0)
    return absl::InvalidArgumentError("data.sequence_length: must be > 0");
  if (o.batch_size <= 0)
    return absl::InvalidArgumentError("optimizer.batch_size: must be > 0");
  if (o.gradient_accumulation <= 0) {
    return absl::InvalidArgumentError(
        "optimizer.gradient_accumulation: must be > 0");
  }
  if (o.total_steps <= 0)
    return absl::InvalidArgumentError("optimizer.total_steps: must be > 0");
  if (o.warmup_steps < 0 || o.warmup_steps > o.total_steps) {
    return absl::InvalidArgumentError(
        "optimizer.warmup_steps: must be in [0, total_steps]");
  }
  if (!(o.learning_rate > 0) || !std::isfinite(o.learning_rate) ||
      o.learning_rate > 1) {
    return absl::InvalidArgumentError(
        "optimizer.learning_rate: must be in (0, 1]");
  }
  if (!(o.weight_decay >= 0) || o.weight_decay > 1) {
    return absl::InvalidArgumentError(
        "optimizer.weight_decay: must be in [0, 1]");
  }
  if (!(o.max_grad_norm >= 0) || !std::isfinite(o.max_grad_norm)) {
    return absl::InvalidArgumentError("optimizer.max_grad_norm: must be >= 0");
  }
  if (!(o.loss.temperature > 0) || !std::isfinite(o.loss.temperature)) {
    return absl::InvalidArgumentError("temperature: must be > 0");
  }
  if (!(o.loss.alpha >= 0 && o.loss.alpha <= 1)) {
    return absl::InvalidArgumentError("alpha: must be in [0, 1]");
  }
  if (!(o.loss.feature_weight >= 0) || !std::isfinite(o.loss.feature_weight)) {
    return absl::InvalidArgumentError("feature_weight: must be >= 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    const TrainerOptions& options,
    std::shared_ptr<model::LlamaForCausalLM> student,
    std::shared_ptr<model::LlamaForCausalLM> teacher,
    const TokenizedCorpus* corpus) {
  if (absl::Status s = ValidateTrainerOptions(options); !s.ok()) return s;
  if (!student) return absl::InvalidArgumentError("student: missing");
  if (corpus == nullptr)
    return absl::InvalidArgumentError("data: missing corpus");
  const auto& sc = student->config();
  if (teacher && teacher->config().vocab_size != sc.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "teacher_model: vocabulary size ", teacher->config().vocab_size,
        " differs from the student's ", sc.vocab_size,
        " (incompatible vocabularies)"));
  }
  if (options.seq_len > sc.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.sequence_length: ", options.seq_len,
        " exceeds max_position_embeddings ", sc.max_position_embeddings));
  }
  auto st = std::make_unique<State>();
  st->options = options;
  st->student = std::move(student);
  st->teacher = std::move(teacher);
  st->corpus = corpus;
  st->train_set =
      std::make_unique<SequenceSet>(&corpus->train, options.seq_len);
  if (st->train_set->size() == 0) {
    return absl::InvalidArgumentError(
        "data: the training split is shorter than one sequence (empty "
        "corpus?)");
  }
  st->order =
      std::make_unique<ShuffledOrder>(st->train_set->size(), options.seed);

  try {
    if (st->feature()) {
      const int64_t ls = sc.num_hidden_layers,
                    lt = st->teacher->config().num_hidden_layers;
      st->pairs = options.layer_pairs.empty() ? UniformLayerMapping(ls, lt)
                                              : options.layer_pairs;
      for (const auto& [s, t] : st->pairs) {
        if (s < 0 || s >= ls || t < 0 || t >= lt) {
          return absl::InvalidArgumentError(
              absl::StrCat("layer_mapping: pair (student ", s, ", teacher ", t,
                           ") outside the models"));
        }
      }
      const int64_t ds = sc.hidden_size, dt = st->teacher->config().hidden_size;
      at::Generator gen =
          at::make_generator<at::CPUGeneratorImpl>(options.seed + 17);
      for (size_t k = 0; k < st->pairs.size(); ++k) {
        // Identity when the widths match, so the loss starts as a plain MSE.
        at::Tensor w = ds == dt ? torch::eye(ds) : torch::empty({dt, ds});
        if (ds != dt)
          w.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(ds)), gen);
        st->projections.push_back(
            w.to(st->student->device()).set_requires_grad(true));
      }
    }
    for (auto& p : st->student->named_parameters())
      st->all_params.push_back(p.value());
    for (auto& w : st->projections) st->all_params.push_back(w);
    st->optimizer = MakeAdamW(st->all_params, options);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("trainer setup: ", e.what_without_backtrace()));
  }
  return std::unique_ptr<Trainer>(new Trainer(std::move(st)));
}

Trainer::Trainer(std::unique_ptr<State> state) : s_(std::move(state)) {}
Trainer::~Trainer() = default;

absl::Status Trainer::State::SaveCheckpoint() {
  if (options.checkpoint_dir.empty()) return absl::OkStatus();
  const std::string final_dir = options.checkpoint_dir + "/ckpt";
  const std::string new_dir = options.checkpoint_dir + "/ckpt.new";
  const std::string old_dir = options.checkpoint_dir + "/ckpt.old";
  std::error_code ec;
  fs::remove_all(new_dir, ec);
  fs::create_directories(new_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(new_dir, ": ", ec.message()));
  try {
    torch::serialize::OutputArchive model_archive;
    for (auto& p : student->named_parameters())
      model_archive.write(p.key(), p.value().detach());
    for (size_t k = 0; k < projections.size(); ++k) {
      model_archive.write(absl::StrCat("projection.", k),
                          projections[k].detach());
    }
    model_archive.save_to(new_dir + "/model.pt");
    torch::serialize::OutputArchive optim_archive;
    optimizer->save(optim_archive);
    optim_archive.save_to(new_dir + "/optimizer.pt");
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("checkpoint: ", e.what_without_backtrace()));
  }
  FsyncPath(new_dir + "/model.pt");
  FsyncPath(new_dir + "/optimizer.pt");
  nlohmann::json state = {{"step", step},
                          {"position", position},
                          {"tokens_seen", tokens_seen},
                          {"seed", options.seed},
                          {"total_steps", options.total_steps}};
  if (absl::Status s = WriteFileAtomic(new_dir + "/state.json", state.dump(2));
      !s.ok())
    return s;
  // ckpt -> ckpt.old, ckpt.new -> ckpt: at every instant one complete
  // checkpoint exists under one of the two names (LoadCheckpoint looks at
  // both).
  fs::remove_all(old_dir, ec);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir, ec);
  fs::rename(new_dir, final_dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat(final_dir, ": ", ec.message()));
  FsyncPath(options.checkpoint_dir);
  fs::remove_all(old_dir, ec);
  return absl::OkStatus();
}

absl::StatusOr<bool> Trainer::State::LoadCheckpoint() {
  if (options.checkpoint_dir.empty()) return false;
  std::string dir = options.checkpoint_dir + "/ckpt";
  if (!fs::exists(dir + "/state.json"))
    dir = options.checkpoint_dir + "/ckpt.old";
  if (!fs::exists(dir + "/state.json")) return false;
  std::ifstream in(dir + "/state.json");
  nlohmann::json state =
      nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (state.is_discarded() || !state.contains("step")) {
    return absl::DataLossError(absl::StrCat(dir, "/state.json: unreadable"));
  }
  try {
    torch::serialize::InputArchive model_archive;
    model_archive.load_from(dir + "/model.pt");
    torch::NoGradGuard no_grad;
    for (auto& p : student->named_parameters()) {
      at::Tensor t;
      model_archive.read(p.key(), t);
      p.value().copy_(t);
    }
    for (size_t k = 0; k < projections.size(); ++k) {
      at::Tensor t;
      model_archive.read(absl::StrCat("projection.", k), t);
      projections[k].copy_(t);
    }
    torch::serialize::InputArchive optim_archive;
    optim_archive.load_from(dir + "/optimizer.pt");
    optimizer->load(optim_archive);
  } catch (const c10::Error& e) {
    return absl::DataLossError(
        absl::StrCat(dir, ": ", e.what_without_backtrace()));
  }
  step = state["step"].get<int64_t>();
  position = state["position"].get<int64_t>();
  tokens_seen = state.value("tokens_seen", int64_t{0});
  return true;
}

absl::StatusOr<TrainResult> Trainer::Run(const ProgressCallback& on_progress,
                                         const CancelPredicate& cancelled) {
  State& s = *s_;
  const TrainerOptions& o = s.options;
  TrainResult result;
  auto loaded = s.LoadCheckpoint();
  if (!loaded.ok()) return loaded.status();
  result.resumed = *loaded;

  const auto start = Clock::now();
  const int64_t start_step = s.step;
  const int64_t tokens_per_step =
      o.batch_size * o.gradient_accumulation * o.seq_len;
  const int64_t window = o.seq_len + 1;
  const bool feature = s.feature();
  model::ForwardOptions fwd;
  fwd.output_hidden_states = feature;
  fwd.output_attentions = feature && o.loss.attention_loss;
  if (s.teacher) s.teacher->eval();
  s.student->train();

  try {
    while (s.step < o.total_steps) {
      if (cancelled && cancelled()) {
        if (absl::Status st = s.SaveCheckpoint(); !st.ok()) return st;
        result.cancelled = true;
        break;
      }
      const double lr = ScheduledLearningRate(o, s.step);
      SetLearningRate(*s.optimizer, lr);
      s.optimizer->zero_grad();
      TrainerProgress p;
      for (int64_t micro = 0; micro < o.gradient_accumulation; ++micro) {
        at::Tensor batch = torch::empty({o.batch_size, window}, torch::kLong);
        int64_t* out = batch.data_ptr<int64_t>();
        for (int64_t b = 0; b < o.batch_size; ++b) {
          const int32_t* w =
              s.train_set->window(s.order->IndexAt(s.position++));
          for (int64_t i = 0; i < window; ++i) out[b * window + i] = w[i];
        }
        batch = batch.to(s.student->device());
        at::Tensor input = batch.slice(1, 0, o.seq_len);
        at::Tensor labels = batch.slice(1, 1, window);
        model::ForwardOutput so = s.student->Forward(input, std::nullopt, fwd);
        at::Tensor ce = CrossEntropyLoss(so.logits, labels);
        at::Tensor loss;
        if (s.teacher) {
          model::ForwardOutput to;
          {
            torch::NoGradGuard no_grad;
            to = s.teacher->Forward(input, std::nullopt, fwd);
          }
          at::Tensor kd =
              SoftTargetKdLoss(so.logits, to.logits, o.loss.temperature);
          loss = o.loss.alpha * kd + (1.0 - o.loss.alpha) * ce;
          p.kd += kd.item<double>() / o.gradient_accumulation;
          if (feature) {
            at::Tensor hid = HiddenStateLoss(so.hidden_states, to.hidden_states,
                                             s.pairs, s.projections);
            loss = loss + o.loss.feature_weight * hid;
            p.hidden += hid.item<double>() / o.gradient_accumulation;
            if (o.loss.attention_loss) {
              at::Tensor att =
                  AttentionMapLoss(so.attentions, to.attentions, s.pairs);
              loss = loss + o.loss.feature_weight * att;
              p.attention += att.item<double>() / o.gradient_accumulation;
            }
          }
        } else {
          loss = ce;
        }
        p.ce += ce.item<double>() / o.gradient_accumulation;
        p.loss += loss.item<double>() / o.gradient_accumulation;
        (loss / static_cast<double>(o.gradient_accumulation)).backward();
      }
      if (o.max_grad_norm > 0)
        torch::nn::utils::clip_grad_norm_(s.all_params, o.max_grad_norm);
      s.optimizer->step();
      ++s.step;
      s.tokens_seen += tokens_per_step;
      result.final_loss = p.loss;

      const double elapsed = Seconds(start);
      p.step = s.step;
      p.total_steps = o.total_steps;
      p.learning_rate = lr;
      p.elapsed_seconds = elapsed;
      p.tokens_per_second =
          (s.step - start_step) * tokens_per_step / std::max(elapsed, 1e-9);
      p.eta_seconds =
          elapsed / (s.step - start_step) * (o.total_steps - s.step);
      if (o.eval_every_steps > 0 && s.step % o.eval_every_steps == 0 &&
          s.step < o.total_steps) {
        auto ppl = HeldoutPerplexity(*s.student, s.corpus->heldout, o.seq_len,
                                     o.eval_sequences, o.batch_size);
        if (!ppl.ok()) return ppl.status();
        p.eval_perplexity = *ppl;
        s.student->train();
      }
      if (on_progress) on_progress(p);
      if (o.checkpoint_every_steps > 0 &&
          s.step % o.checkpoint_every_steps == 0 && s.step < o.total_steps) {
        if (absl::Status st = s.SaveCheckpoint(); !st.ok()) return st;
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("training step ", s.step, ": ",
                                            e.what_without_backtrace()));
  }
  result.steps = s.step;
  result.tokens_seen = s.tokens_seen;
  result.wall_seconds = Seconds(start);
  result.tokens_per_second = (s.step - start_step) * tokens_per_step /
                             std::max(result.wall_seconds, 1e-9);
  if (!result.cancelled) {
    auto ppl = HeldoutPerplexity(*s.student, s.corpus->heldout, o.seq_len,
                                 o.eval_sequences, o.batch_size);
    if (!ppl.ok()) return ppl.status();
    result.heldout_perplexity = *ppl;
  }
  return result;
}

absl::StatusOr<double> HeldoutPerplexity(model::LlamaForCausalLM& model,
                                         const std::vector<int32_t>& tokens,
                                         int64_t seq_len, int64_t max_sequences,
                                         int64_t batch_size) {
  SequenceSet set(&tokens, seq_len);
  int64_t n = set.size();
  if (max_sequences > 0) n = std::min(n, max_sequences);
  if (n == 0)
    return absl::InvalidArgumentError(
        "held-out split shorter than one sequence");
  try {
    torch::NoGradGuard no_grad;
    model.eval();
    double total = 0;
    int64_t count = 0;
    for (int64_t first = 0; first < n; first += batch_size) {
      const int64_t b = std::min(batch_size, n - first);
      at::Tensor batch = torch::empty({b, seq_len + 1}, torch::kLong);
      int64_t* out = batch.data_ptr<int64_t>();
      for (int64_t i = 0; i < b; ++i) {
        const int32_t* w = set.window(first + i);
        for (int64_t j = 0; j <= seq_len; ++j)
          out[i * (seq_len + 1) + j] = w[j];
      }
      batch = batch.to(model.device());
      at::Tensor logits = model.Forward(batch.slice(1, 0, seq_len)).logits;
      at::Tensor ce = CrossEntropyLoss(logits, batch.slice(1, 1, seq_len + 1));
      total += ce.item<double>() * b * seq_len;
      count += b * seq_len;
    }
    return std::exp(total / count);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("evaluation: ", e.what_without_backtrace()));
  }
}

int64_t CountParameters(model::LlamaForCausalLM& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

}  // namespace hearth::distiller
