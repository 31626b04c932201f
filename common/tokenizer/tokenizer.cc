#include "common/tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/hf_bpe_tokenizer.h"
#include "common/tokenizer/sentencepiece_tokenizer.h"
#include "nlohmann/json.hpp"

namespace hearth::tokenizer {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// What hearth takes from tokenizer_config.json. The file is advisory: when it
// is missing or unreadable the tokenizer still loads, with its own defaults.
struct TokenizerConfig {
  std::string bos_token;
  std::string eos_token;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
};

// bos_token/eos_token are either a string or an AddedToken object
// {"content": "<s>", ...}.
std::string TokenName(const Json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string())
      return content->get<std::string>();
  }
  return std::string();
}

TokenizerConfig ReadTokenizerConfig(const fs::path& folder) {
  TokenizerConfig config;
  std::ifstream in(folder / "tokenizer_config.json", std::ios::binary);
  if (!in) return config;
  std::stringstream buffer;
  buffer << in.rdbuf();
  Json j = Json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return config;
  config.bos_token = TokenName(j, "bos_token");
  config.eos_token = TokenName(j, "eos_token");
  for (auto [key, field] :
       {std::pair{"add_bos_token", &config.add_bos_token},
        std::pair{"add_eos_token", &config.add_eos_token}}) {
    auto it = j.find(key);
    if (it != j.end() && it->is_boolean()) *field = it->get<bool>();
  }
  return config;
}

bool EndsWithIncompleteChar(std::string_view text) {
  return text.size() >= 3 &&
         text.substr(text.size() - 3) == "\xEF\xBF\xBD";  // U+FFFD
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(
    const std::string& model_folder) {
  std::error_code ec;
  fs::path folder(model_folder);
  fs::path json_path, model_path;
  if (fs::is_regular_file(folder, ec)) {
    (folder.extension() == ".json" ? json_path : model_path) = folder;
    folder = folder.parent_path();
  } else if (fs::is_directory(folder, ec)) {
    if (fs::is_regular_file(folder / "tokenizer.json", ec))
      json_path = folder / "tokenizer.json";
    if (fs::is_regular_file(folder / "tokenizer.model", ec)) {
      model_path = folder / "tokenizer.model";
    }
  } else {
    return absl::NotFoundError(
        absl::StrCat("model folder ", model_folder, " does not exist"));
  }
  if (json_path.empty() && model_path.empty()) {
    return absl::NotFoundError(absl::StrCat(
        model_folder, " has neither tokenizer.json nor tokenizer.model"));
  }
  TokenizerConfig config = ReadTokenizerConfig(folder);

  if (!json_path.empty()) {
    HfBpeTokenizer::Options options;
    options.bos_token = config.bos_token;
    options.eos_token = config.eos_token;
    auto hf = HfBpeTokenizer::FromFile(json_path.string(), options);
    if (hf.ok()) return std::unique_ptr<Tokenizer>(std::move(hf).value());
    // A tokenizer.json hearth cannot run (e.g. a Unigram model) may sit next
    // to the SentencePiece model it was converted from.
    if (!absl::IsUnimplemented(hf.status()) || model_path.empty())
      return hf.status();
  }
  SentencePieceTokenizer::Options options;
  options.add_bos = config.add_bos_token.value_or(true);
  options.add_eos = config.add_eos_token.value_or(false);
  HEARTH_ASSIGN_OR_RETURN(
      auto sp, SentencePieceTokenizer::FromFile(model_path.string(), options));
  return std::unique_ptr<Tokenizer>(std::move(sp));
}

StreamingDecoder::StreamingDecoder(const Tokenizer* tokenizer,
                                   bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

absl::StatusOr<std::string> StreamingDecoder::Push(int32_t id) {
  ids_.push_back(id);
  absl::Span<const int32_t> all(ids_);
  auto new_text =
      tokenizer_->Decode(all.subspan(prefix_offset_), skip_special_tokens_);
  if (!new_text.ok()) {
    ids_.pop_back();  // keep the decoder usable after a bad id
    return new_text.status();
  }
  HEARTH_ASSIGN_OR_RETURN(
      std::string prefix_text,
      tokenizer_->Decode(
          all.subspan(prefix_offset_, read_offset_ - prefix_offset_),
          skip_special_tokens_));
  // A trailing U+FFFD means the last character is still incomplete: wait for
  // the bytes that finish it.
  if (new_text->size() <= prefix_text.size() ||
      EndsWithIncompleteChar(*new_text)) {
    return std::string();
  }
  std::string delta = new_text->substr(prefix_text.size());
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  // Ids before prefix_offset_ never matter again.
  ids_.erase(ids_.begin(), ids_.begin() + prefix_offset_);
  read_offset_ -= prefix_offset_;
  prefix_offset_ = 0;
  return delta;
}

std::string StreamingDecoder::Finish() {
  std::string delta;
  if (read_offset_ < ids_.size()) {
    absl::Span<const int32_t> all(ids_);
    auto new_text =
        tokenizer_->Decode(all.subspan(prefix_offset_), skip_special_tokens_);
    auto prefix_text = tokenizer_->Decode(
        all.subspan(prefix_offset_, read_offset_ - prefix_offset_),
        skip_special_tokens_);
    if (new_text.ok() && prefix_text.ok() &&
        new_text->size() > prefix_text->size()) {
      delta = new_text->substr(prefix_text->size());
    }
  }
  ids_.clear();
  prefix_offset_ = 0;
  read_offset_ = 0;
  return delta;
}

}  // namespace hearth::tokenizer
