#include "services/distiller/data.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace hearth::distiller {

absl::StatusOr<std::vector<std::string>> ReadDocuments(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<std::string> docs;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    docs.push_back(std::move(line));
  }
  return docs;
}

absl::StatusOr<TokenizedCorpus> TokenizeCorpus(
    const std::vector<std::string>& documents,
    const tokenizer::Tokenizer& tokenizer, const CorpusOptions& options) {
  if (documents.empty())
    return absl::InvalidArgumentError("corpus: no documents (empty corpus)");
  if (!(options.heldout_fraction > 0 && options.heldout_fraction <= 0.5)) {
    return absl::InvalidArgumentError("heldout_fraction: must be in (0, 0.5]");
  }
  const int64_t every =
      std::max<int64_t>(2, std::llround(1.0 / options.heldout_fraction));
  TokenizedCorpus corpus;
  corpus.num_documents = static_cast<int64_t>(documents.size());
  for (size_t i = 0; i < documents.size(); ++i) {
    auto ids = tokenizer.Encode(documents[i], /*add_special_tokens=*/false);
    if (!ids.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("corpus document ", i, ": ", ids.status().message()));
    }
    const bool heldout = (static_cast<int64_t>(i) % every) == every - 1;
    std::vector<int32_t>& out = heldout ? corpus.heldout : corpus.train;
    if (heldout) ++corpus.num_heldout_documents;
    if (options.add_bos_eos && tokenizer.bos_id() >= 0)
      out.push_back(tokenizer.bos_id());
    out.insert(out.end(), ids->begin(), ids->end());
    if (options.add_bos_eos && tokenizer.eos_id() >= 0)
      out.push_back(tokenizer.eos_id());
  }
  if (corpus.train.size() < 2 || corpus.heldout.size() < 2) {
    return absl::InvalidArgumentError(
        "corpus: too small to split into training and held-out text");
  }
  return corpus;
}

SequenceSet::SequenceSet(const std::vector<int32_t>* tokens, int64_t seq_len)
    : tokens_(tokens),
      seq_len_(seq_len),
      count_(tokens->size() > 1
                 ? (static_cast<int64_t>(tokens->size()) - 1) / seq_len
                 : 0) {}

ShuffledOrder::ShuffledOrder(int64_t size, uint64_t seed)
    : size_(size), seed_(seed) {}

void ShuffledOrder::BuildEpoch(int64_t epoch) {
  permutation_.resize(size_);
  std::iota(permutation_.begin(), permutation_.end(), 0);
  // std::shuffle's algorithm is implementation-defined; a hand-written
  // Fisher-Yates over mt19937_64 (whose output is fixed by the standard) keeps
  // the order identical across standard libraries.
  std::mt19937_64 rng(seed_ * 1000003ull + static_cast<uint64_t>(epoch));
  for (int64_t i = size_ - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(permutation_[i], permutation_[j]);
  }
  epoch_ = epoch;
}

int64_t ShuffledOrder::IndexAt(int64_t position) {
  const int64_t epoch = position / size_;
  if (epoch != epoch_) BuildEpoch(epoch);
  return permutation_[position % size_];
}

}  // namespace hearth::distiller
