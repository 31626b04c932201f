// Training data for the distiller: a text corpus tokenized into one packed
// token stream per split, cut into fixed-length sequences, and served in a
// shuffled order that is a pure function of (seed, position).
//
// Documents are the non-empty lines of the corpus file (the default model's
// corpus has one Bible chapter per line). Each document is encoded as BOS +
// text + EOS and the documents are concatenated ("packed"), so no compute is
// spent on padding. Every k-th document (k = round(1 / heldout_fraction)) goes
// to the held-out split: a deterministic split that samples the whole corpus
// rather than its tail (the tail of the Bible is Revelation, which would be an
// odd test set).
//
// The order of training sequences is an mt19937_64 permutation per epoch,
// seeded by (seed, epoch). Because it depends on nothing else, the only data
// state a checkpoint needs is the number of sequences consumed so far.
#ifndef HEARTH_SERVICES_DISTILLER_DATA_H_
#define HEARTH_SERVICES_DISTILLER_DATA_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"

namespace hearth::distiller {

struct CorpusOptions {
  // Fraction of documents held out for evaluation, in (0, 0.5].
  double heldout_fraction = 0.05;
  // Whether to wrap each document in BOS/EOS (when the tokenizer has them).
  bool add_bos_eos = true;
};

struct TokenizedCorpus {
  std::vector<int32_t> train;
  std::vector<int32_t> heldout;
  int64_t num_documents = 0;
  int64_t num_heldout_documents = 0;
};

// Reads the documents (non-empty lines) of a UTF-8 text file.
absl::StatusOr<std::vector<std::string>> ReadDocuments(const std::string& path);

// Tokenizes and splits documents. INVALID_ARGUMENT when there are no documents
// or a split ends up empty.
absl::StatusOr<TokenizedCorpus> TokenizeCorpus(
    const std::vector<std::string>& documents,
    const tokenizer::Tokenizer& tokenizer, const CorpusOptions& options);

// Fixed-length [seq_len + 1]-token windows over a packed stream (input = the
// first seq_len tokens, labels = the last seq_len), windows overlapping by one
// token.
class SequenceSet {
 public:
  SequenceSet(const std::vector<int32_t>* tokens, int64_t seq_len);
  int64_t size() const { return count_; }
  int64_t seq_len() const { return seq_len_; }
  // The window's seq_len + 1 tokens.
  const int32_t* window(int64_t index) const {
    return tokens_->data() + index * seq_len_;
  }

 private:
  const std::vector<int32_t>* tokens_;
  int64_t seq_len_;
  int64_t count_;
};

// Maps a global sample position to a sequence index: epoch e = position / size
// uses permutation e of the sequences.
class ShuffledOrder {
 public:
  ShuffledOrder(int64_t size, uint64_t seed);
  int64_t IndexAt(int64_t position);

 private:
  void BuildEpoch(int64_t epoch);
  int64_t size_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> permutation_;
};

}  // namespace hearth::distiller

#endif  // HEARTH_SERVICES_DISTILLER_DATA_H_
