#include "tools/hearth/generate_command.h"

#include <c10/util/Exception.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/formats/hf_config.h"
#include "common/model/generator.h"
#include "common/model/kv_cache.h"
#include "common/model/llama_model.h"
#include "common/model/model_loader.h"
#include "common/model/sampler.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/tokenizer.h"
#include "hearth/v1/generation.pb.h"

// Defined in main.cc, shared with the gateway client.
ABSL_DECLARE_FLAG(std::string, addr);
ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(int32_t, max_new_tokens);
ABSL_DECLARE_FLAG(double, temperature);
ABSL_DECLARE_FLAG(int64_t, seed);

ABSL_FLAG(std::string, prompt, "",
          "generate: the prompt (else the positional arguments)");
ABSL_FLAG(std::vector<std::string>, prompt_ids, {},
          "generate (offline): prompt token ids, comma-separated, instead of "
          "text (no tokenizer needed; BOS is not added)");
ABSL_FLAG(int64_t, top_k, 0,
          "generate: keep the k most likely tokens (0 = off)");
ABSL_FLAG(double, top_p, 1.0, "generate: nucleus sampling mass (1 = off)");
ABSL_FLAG(double, repetition_penalty, 0,
          "generate: > 1 discourages repeats (1 = off; 0 = the model's "
          "generation_config.json, as the worker does)");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "generate: stop strings, comma-separated");
ABSL_FLAG(bool, ignore_eos, false, "generate: keep going past EOS");
ABSL_FLAG(bool, remote, false,
          "generate: always ask the gateway at --addr, even when --model is a "
          "path");
ABSL_FLAG(bool, token_ids, false,
          "generate (offline): print the generated token ids instead of text");
ABSL_FLAG(int32_t, threads, 0,
          "generate (offline): CPU threads (0 = libtorch's default)");
ABSL_FLAG(std::string, device, "cpu", "generate (offline): cpu or cuda:N");
ABSL_FLAG(std::string, dtype, "auto",
          "generate (offline): auto, float32, float16 or bfloat16");
ABSL_FLAG(std::string, tokenizer, "",
          "generate (offline), init-model: tokenizer.json/.model or a folder "
          "with one (generate's default: the model folder; for X.gguf the "
          "folder X/ beside it, else the .gguf's folder; init-model's: the "
          "Llama-2 tokenizer.json under .deps/node)");

namespace hearth::cli {

const char kGenerateSummary[] =
    "generate text: hearth generate --model=M --prompt=TEXT (or <prompt...>); "
    "offline when --model is an existing folder or .gguf file and neither "
    "--remote nor --addr is given, else through the gateway at --addr";

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

bool IsFile(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

bool HasTokenizer(const fs::path& folder) {
  return IsFile(folder / "tokenizer.json") ||
         IsFile(folder / "tokenizer.model");
}

// Where the tokenizer of `model_path` is, or "" when there is none.
std::string FindTokenizer(const std::string& model_path) {
  if (!absl::GetFlag(FLAGS_tokenizer).empty()) {
    return absl::GetFlag(FLAGS_tokenizer);
  }
  const fs::path p(model_path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) return HasTokenizer(p) ? p.string() : "";
  const fs::path beside = p.parent_path() / p.stem();
  if (HasTokenizer(beside)) return beside.string();
  const fs::path parent = p.parent_path().empty() ? "." : p.parent_path();
  return HasTokenizer(parent) ? parent.string() : "";
}

absl::StatusOr<model::SamplingParams> SamplingFromFlags() {
  model::SamplingParams params;
  params.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  params.temperature = absl::GetFlag(FLAGS_temperature);
  params.top_k = absl::GetFlag(FLAGS_top_k);
  params.top_p = absl::GetFlag(FLAGS_top_p);
  params.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    params.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  }
  params.stop = absl::GetFlag(FLAGS_stop);
  params.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  return params;
}

absl::StatusOr<model::LoadOptions> LoadOptionsFromFlags() {
  model::LoadOptions options;
  const std::string device = absl::GetFlag(FLAGS_device);
  try {
    options.device = c10::Device(device);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device: \"", device, "\" is not cpu or cuda:N"));
  }
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "float32") {
    options.dtype = c10::kFloat;
  } else if (dtype == "float16") {
    options.dtype = c10::kHalf;
  } else if (dtype == "bfloat16") {
    options.dtype = c10::kBFloat16;
  } else if (dtype != "auto") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dtype: \"", dtype, "\" is not auto, float32, float16 or bfloat16"));
  }
  return options;
}

// Streams the tokens to stdout; the summary goes to stderr.
absl::Status Generate(const std::string& prompt_text) {
  const std::string path = absl::GetFlag(FLAGS_model);
  HEARTH_ASSIGN_OR_RETURN(model::SamplingParams params, SamplingFromFlags());
  HEARTH_ASSIGN_OR_RETURN(model::LoadOptions load, LoadOptionsFromFlags());
  if (absl::GetFlag(FLAGS_threads) > 0) {
    model::SetCpuThreads(absl::GetFlag(FLAGS_threads));
  }

  std::unique_ptr<tokenizer::Tokenizer> tok;
  const std::string tokenizer_path = FindTokenizer(path);
  if (!tokenizer_path.empty()) {
    auto loaded = tokenizer::LoadTokenizer(tokenizer_path);
    if (!loaded.ok()) {
      return absl::Status(loaded.status().code(),
                          absl::StrCat("tokenizer ", tokenizer_path, ": ",
                                       loaded.status().message()));
    }
    tok = std::move(loaded).value();
  }

  std::vector<int64_t> prompt;
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    for (const std::string& s : absl::GetFlag(FLAGS_prompt_ids)) {
      int64_t id = 0;
      if (!absl::SimpleAtoi(s, &id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--prompt_ids: \"", s, "\" is not an integer"));
      }
      prompt.push_back(id);
    }
  } else {
    if (tok == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no tokenizer.json or tokenizer.model found for ", path,
          "; pass --tokenizer or give the prompt as --prompt_ids"));
    }
    HEARTH_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                            tok->Encode(prompt_text, true));
    prompt.assign(ids.begin(), ids.end());
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  const bool print_ids = absl::GetFlag(FLAGS_token_ids) || tok == nullptr;
  if (!params.stop.empty() && tok == nullptr) {
    return absl::InvalidArgumentError("--stop needs a tokenizer");
  }

  const Clock::time_point load_start = Clock::now();
  auto loaded = model::LoadModel(path, load);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrCat(path, ": ", loaded.status().message()));
  }
  std::shared_ptr<model::LlamaForCausalLM> llama = std::move(loaded).value();
  if (params.repetition_penalty == 0) {
    // Same default as the worker's: the model's generation_config.json.
    params.repetition_penalty = 1.0;
    const fs::path gen_path = fs::path(path) / "generation_config.json";
    if (IsFile(gen_path)) {
      auto gen = formats::LoadGenerationConfig(gen_path.string());
      if (!gen.ok()) {
        return absl::Status(
            gen.status().code(),
            absl::StrCat(gen_path.string(), ": ", gen.status().message()));
      }
      if (gen->repetition_penalty > 0 &&
          std::isfinite(gen->repetition_penalty)) {
        params.repetition_penalty = gen->repetition_penalty;
      }
    }
  }
  const double load_s =
      std::chrono::duration<double>(Clock::now() - load_start).count();
  const int64_t vocab = llama->config().vocab_size;
  for (int64_t id : prompt) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt token id ", id,
                       " is outside the vocabulary [0, ", vocab, ")"));
    }
  }

  model::KvCacheOptions kv;
  kv.capacity_tokens =
      std::min<int64_t>(
          static_cast<int64_t>(prompt.size()) + params.max_new_tokens,
          llama->config().max_position_embeddings) +
      kv.block_size;
  HEARTH_ASSIGN_OR_RETURN(auto cache,
                          model::KvCache::Create(llama->CacheDims(), kv));

  tokenizer::StreamingDecoder stream(tok.get(), /*skip_special_tokens=*/true);
  Clock::time_point first, last;
  int64_t produced = 0;
  absl::Status stream_error;
  model::GenerateOptions options;
  options.on_token = [&](size_t, int64_t token) {
    last = Clock::now();
    if (produced++ == 0) first = last;
    if (print_ids) {
      std::cout << (produced > 1 ? " " : "") << token << std::flush;
      return;
    }
    auto piece = stream.Push(static_cast<int32_t>(token));
    if (!piece.ok()) {
      stream_error.Update(piece.status());
      return;
    }
    std::cout << *piece << std::flush;
  };
  if (tok != nullptr) {
    options.detokenize = [&](const std::vector<int64_t>& ids) {
      std::vector<int32_t> narrow(ids.begin(), ids.end());
      auto text = tok->Decode(narrow, true);
      return text.ok() ? *text : std::string();
    };
  }
  const Clock::time_point start = Clock::now();
  HEARTH_ASSIGN_OR_RETURN(
      std::vector<model::GenerationOutput> out,
      model::Generate(*llama, *cache, {prompt}, params, options));
  if (!print_ids) std::cout << stream.Finish();
  std::cout << "\n" << std::flush;
  HEARTH_RETURN_IF_ERROR(stream_error);

  const double ttft = std::chrono::duration<double>(first - start).count();
  const double decode_s = std::chrono::duration<double>(last - first).count();
  std::string summary = absl::StrFormat(
      "[%s, %d prompt + %d new tokens | load %.2f s | TTFT %.3f s",
      model::FinishReasonName(out[0].finish_reason),
      static_cast<int64_t>(prompt.size()), produced, load_s, ttft);
  if (produced > 1 && decode_s > 0) {
    absl::StrAppendFormat(&summary, " | decode %.2f tok/s",
                          static_cast<double>(produced - 1) / decode_s);
  }
  std::cerr << summary << "]\n";
  return absl::OkStatus();
}

// Whether --addr was given on the command line. (This absl release keeps
// CommandLineFlag::IsSpecifiedOnCommandLine private, so read our own argv.)
bool AddrOnCommandLine() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string arg;
  while (std::getline(in, arg, '\0')) {
    if (arg == "--") break;
    for (const char* prefix : {"--addr", "-addr"}) {
      if (absl::StartsWith(arg, prefix) &&
          (arg.size() == strlen(prefix) || arg[strlen(prefix)] == '=')) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace

std::string GeneratePrompt(const std::vector<std::string>& args) {
  if (!absl::GetFlag(FLAGS_prompt).empty()) return absl::GetFlag(FLAGS_prompt);
  return absl::StrJoin(args, " ");
}

bool GenerateIsLocal() {
  if (absl::GetFlag(FLAGS_remote) || AddrOnCommandLine()) return false;
  const std::string model = absl::GetFlag(FLAGS_model);
  std::error_code ec;
  return !model.empty() && fs::exists(model, ec);
}

int RunLocalGenerate(const std::vector<std::string>& args) {
  const std::string prompt = GeneratePrompt(args);
  if (prompt.empty() && absl::GetFlag(FLAGS_prompt_ids).empty()) {
    std::cerr << "hearth generate: give --prompt, --prompt_ids or the prompt "
                 "as arguments\n";
    return 2;
  }
  try {
    absl::Status status = Generate(prompt);
    if (!status.ok()) {
      std::cerr << "hearth generate: " << status << "\n";
      return 1;
    }
  } catch (const c10::Error& e) {
    std::cerr << "hearth generate: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}

void SetRemoteSampling(v1::GenerateRequest* request) {
  auto* sampling = request->mutable_sampling();
  sampling->set_top_k(static_cast<uint32_t>(absl::GetFlag(FLAGS_top_k)));
  if (absl::GetFlag(FLAGS_top_p) != 1.0) {
    sampling->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  }
  if (absl::GetFlag(FLAGS_repetition_penalty) != 0) {
    sampling->set_repetition_penalty(
        static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty)));
  }
  for (const std::string& s : absl::GetFlag(FLAGS_stop)) sampling->add_stop(s);
  sampling->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
}

}  // namespace hearth::cli
