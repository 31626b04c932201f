#include "services/quantizer/calibration.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/tokenizer/tokenizer.h"

namespace hearth::quantizer {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::string> LoadCalibrationText(const std::string& text_file,
                                                const std::string& corpus) {
  if (!text_file.empty() && !corpus.empty()) {
    return absl::InvalidArgumentError(
        "calibration: give text_file or corpus, not both");
  }
  std::string text;
  if (!text_file.empty()) {
    auto t = ReadFile(text_file);
    if (!t.ok()) {
      return absl::NotFoundError(
          absl::StrCat("calibration.text_file: ", t.status().message()));
    }
    text = *std::move(t);
  } else {
    const std::string name = corpus.empty() ? "licenses" : corpus;
    namespace fs = std::filesystem;
    std::vector<std::string> files;
    if (name == "licenses") {
      const fs::path dir = "/usr/share/common-licenses";
      if (fs::is_directory(dir)) {
        for (const auto& e : fs::directory_iterator(dir)) {
          if (e.is_regular_file()) files.push_back(e.path().string());
        }
      }
      std::sort(files.begin(), files.end());
    } else if (name == "gpl") {
      files = {"/usr/share/common-licenses/GPL-3"};
    } else if (name == "bible-kjv") {
      // Debian bible-kjv-text ships the text under /usr/share/bible-kjv*.
      for (const char* dir :
           {"/usr/share/bible-kjv-text", "/usr/share/bible-kjv"}) {
        if (fs::is_directory(dir)) {
          for (const auto& e : fs::recursive_directory_iterator(dir)) {
            if (e.is_regular_file()) files.push_back(e.path().string());
          }
        }
      }
      std::sort(files.begin(), files.end());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration.corpus: unknown corpus \"", name,
                       "\" (licenses, gpl, bible-kjv)"));
    }
    for (const std::string& f : files) {
      auto t = ReadFile(f);
      if (t.ok()) absl::StrAppend(&text, *t, "\n");
    }
    if (files.empty()) {
      return absl::NotFoundError(
          absl::StrCat("calibration.corpus: \"", name,
                       "\" is not installed on this machine"));
    }
  }
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return absl::InvalidArgumentError("calibration: the text is empty");
  }
  return text;
}

absl::StatusOr<std::vector<int64_t>> TokenizeText(
    const std::string& model_folder, const std::string& text,
    int64_t vocab_size) {
  std::vector<int64_t> ids;
  auto tok = tokenizer::LoadTokenizer(model_folder);
  if (tok.ok()) {
    // Encode per paragraph-sized piece: BPE cost grows with piece length.
    size_t start = 0;
    while (start < text.size()) {
      size_t end = std::min(text.size(), start + 4096);
      if (end < text.size()) {
        size_t nl = text.rfind('\n', end);
        if (nl != std::string::npos && nl > start) end = nl + 1;
      }
      auto piece =
          (*tok)->Encode(std::string_view(text).substr(start, end - start),
                         /*add_special_tokens=*/false);
      if (!piece.ok()) return piece.status();
      for (int32_t id : *piece) {
        if (id >= 0 && id < vocab_size) ids.push_back(id);
      }
      start = end;
    }
  } else {
    ids.reserve(text.size());
    for (unsigned char c : text) ids.push_back(c % vocab_size);
  }
  if (ids.empty()) {
    return absl::InvalidArgumentError("calibration: the text has no tokens");
  }
  return ids;
}

TokenSplit SplitTokens(const std::vector<int64_t>& tokens) {
  TokenSplit s;
  const size_t cut = tokens.size() * 9 / 10;
  s.calibration.assign(tokens.begin(), tokens.begin() + cut);
  s.held_out.assign(tokens.begin() + cut, tokens.end());
  if (s.calibration.empty()) s.calibration = tokens;
  if (s.held_out.empty()) s.held_out = tokens;
  return s;
}

absl::StatusOr<at::Tensor> SampleWindows(const std::vector<int64_t>& tokens,
                                         int64_t num_samples, int64_t seq_len) {
  if (tokens.empty()) {
    return absl::InvalidArgumentError("calibration: no tokens to sample");
  }
  at::Tensor out = torch::empty({num_samples, seq_len}, torch::kLong);
  auto acc = out.accessor<int64_t, 2>();
  std::mt19937_64 rng(0);
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t s = 0; s < num_samples; ++s) {
    const int64_t start =
        n > seq_len ? static_cast<int64_t>(rng() % (n - seq_len + 1)) : 0;
    for (int64_t t = 0; t < seq_len; ++t) acc[s][t] = tokens[(start + t) % n];
  }
  return out;
}

}  // namespace hearth::quantizer
