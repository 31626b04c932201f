// hearth-distill-local: runs the distiller's core in-process, without the
// service.
//
//   hearth-distill-local tokenizer --corpus kjv.txt --out
//   models/hearth-tokenizer hearth-distill-local run --spec job.json
//   --model_repository models --work_dir /tmp/w
//
// `run` takes the same spec JSON that hearth.v1.Distillation stores (proto
// field names), prints a progress line every couple of seconds, and resumes
// from
// --work_dir when it already holds checkpoints of the same job.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "common/model/llama_model.h"
#include "common/tokenizer/tokenizer.h"
#include "services/distiller/bpe_trainer.h"
#include "services/distiller/data.h"
#include "services/distiller/pipeline.h"

ABSL_FLAG(std::string, corpus, "",
          "tokenizer: corpus text file (one document per line)");
ABSL_FLAG(std::string, out, "", "tokenizer: output folder");
ABSL_FLAG(int32_t, vocab_size, 4096,
          "tokenizer: vocabulary size incl. special tokens");
ABSL_FLAG(int64_t, model_max_length, 256,
          "tokenizer: tokenizer_config.json model_max_length");
ABSL_FLAG(std::string, spec, "", "run: job spec JSON file");
ABSL_FLAG(std::string, model_repository, "models",
          "run: model repository folder");
ABSL_FLAG(std::string, work_dir, "",
          "run: checkpoint folder (resumes when it has one)");
ABSL_FLAG(int32_t, threads, 2,
          "libtorch / BLAS threads (fixed for reproducibility)");
ABSL_FLAG(double, progress_seconds, 2.0, "seconds between progress lines");

namespace {

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int Tokenizer() {
  const std::string corpus = absl::GetFlag(FLAGS_corpus),
                    out = absl::GetFlag(FLAGS_out);
  if (corpus.empty() || out.empty()) {
    std::cerr << "tokenizer: --corpus and --out are required\n";
    return 2;
  }
  auto docs = hearth::distiller::ReadDocuments(corpus);
  if (!docs.ok()) {
    std::cerr << docs.status() << "\n";
    return 1;
  }
  std::vector<std::string_view> views;
  std::string joined;
  for (const auto& d : *docs) views.emplace_back(d);
  hearth::distiller::BpeTrainerOptions options;
  options.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  options.model_max_length = absl::GetFlag(FLAGS_model_max_length);
  const double t0 = Now();
  auto vocab = hearth::distiller::TrainBpe(views, options);
  if (!vocab.ok()) {
    std::cerr << vocab.status() << "\n";
    return 1;
  }
  if (auto s = hearth::distiller::WriteTokenizer(*vocab, options, out);
      !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  // Round trip through the runtime's loader: what we wrote must load and
  // encode.
  auto tok = hearth::tokenizer::LoadTokenizer(out);
  if (!tok.ok()) {
    std::cerr << "written tokenizer does not load: " << tok.status() << "\n";
    return 1;
  }
  int64_t bytes = 0, tokens = 0;
  for (const auto& d : *docs) {
    auto ids = (*tok)->Encode(d, false);
    if (!ids.ok()) {
      std::cerr << ids.status() << "\n";
      return 1;
    }
    bytes += d.size();
    tokens += ids->size();
  }
  std::printf(
      "tokenizer: %zu tokens (%zu merges) in %.1fs; corpus %lld bytes -> %lld "
      "tokens (%.2f bytes/token) -> %s\n",
      vocab->tokens.size(), vocab->merges.size(), Now() - t0,
      static_cast<long long>(bytes), static_cast<long long>(tokens),
      static_cast<double>(bytes) / tokens, out.c_str());
  return 0;
}

std::string Bar(double fraction) {
  const int width = 24;
  int filled = static_cast<int>(fraction * width + 0.5);
  return "[" + std::string(filled, '#') + std::string(width - filled, '.') +
         "]";
}

int Run() {
  std::ifstream in(absl::GetFlag(FLAGS_spec));
  if (!in) {
    std::cerr << "run: cannot read --spec " << absl::GetFlag(FLAGS_spec)
              << "\n";
    return 2;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto spec = hearth::distiller::ParseJobSpec(ss.str());
  if (!spec.ok()) {
    std::cerr << spec.status() << "\n";
    return 2;
  }
  if (spec->threads == 0) spec->threads = absl::GetFlag(FLAGS_threads);
  hearth::distiller::PipelineEnv env;
  env.model_repository = absl::GetFlag(FLAGS_model_repository);
  env.checkpoint_dir = absl::GetFlag(FLAGS_work_dir);
  if (env.checkpoint_dir.empty())
    env.checkpoint_dir = env.model_repository + "/.work/" + spec->output_name;
  const double interval = absl::GetFlag(FLAGS_progress_seconds);
  double last = 0;
  const double t0 = Now();
  auto result = hearth::distiller::RunPipeline(
      *spec, env,
      [&](const hearth::distiller::PipelineProgress& p) {
        const auto& t = p.trainer;
        const double now = Now();
        if (now - last < interval && !t.eval_perplexity &&
            t.step != t.total_steps)
          return;
        last = now;
        std::string line = absl::StrFormat(
            "%s %5.1f%% %s %d/%d step %lld/%lld loss %.4f ce %.4f",
            Bar(p.fraction), 100 * p.fraction, p.stage, p.stage_index + 1,
            p.num_stages, static_cast<long long>(t.step),
            static_cast<long long>(t.total_steps), t.loss, t.ce);
        if (t.kd != 0) line += absl::StrFormat(" kd %.4f", t.kd);
        if (t.hidden != 0) line += absl::StrFormat(" hid %.4f", t.hidden);
        if (t.attention != 0) line += absl::StrFormat(" att %.5f", t.attention);
        line +=
            absl::StrFormat(" lr %.2e %.0f tok/s eta %.0fs", t.learning_rate,
                            t.tokens_per_second, t.eta_seconds);
        if (t.eval_perplexity)
          line += absl::StrFormat(" heldout ppl %.2f", *t.eval_perplexity);
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      },
      nullptr);
  if (!result.ok()) {
    std::cerr << "run: " << result.status() << "\n";
    return 1;
  }
  std::printf("done in %.1fs: %s\n%s\n", Now() - t0, result->output_dir.c_str(),
              result->report.dump(2).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "hearth-distill-local tokenizer|run [flags]: the distiller core without "
      "the service");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << "usage: hearth-distill-local tokenizer|run [flags]\n";
    return 2;
  }
  hearth::model::SetCpuThreads(absl::GetFlag(FLAGS_threads));
  const std::string cmd = args[1];
  if (cmd == "tokenizer") return Tokenizer();
  if (cmd == "run") return Run();
  std::cerr << "unknown command " << cmd << "\n";
  return 2;
}
