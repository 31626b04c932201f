#include "services/distiller/bpe_trainer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fcntl.h>
#include <pcre2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <queue>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace hearth::distiller {

const char kLlama3PretokenizerRegex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

std::string CodepointToUtf8(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

const std::vector<std::string>& ByteAlphabet() {
  // GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
  // rest to U+0100 onwards in byte order.
  static const std::vector<std::string>* table = [] {
    auto* t = new std::vector<std::string>(256);
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      (*t)[b] = CodepointToUtf8(printable ? b : 256 + next++);
    }
    return t;
  }();
  return *table;
}

// Splits `text` into pre-tokenizer words with PCRE2 (UTF + UCP, as the
// tokenizers crate's onig regex treats \s, \p{L} by Unicode properties).
class Pretokenizer {
 public:
  Pretokenizer() {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(
        reinterpret_cast<PCRE2_SPTR>(kLlama3PretokenizerRegex),
        PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code_ != nullptr) {
      pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
      data_ = pcre2_match_data_create_from_pattern(code_, nullptr);
    }
  }
  ~Pretokenizer() {
    if (data_ != nullptr) pcre2_match_data_free(data_);
    if (code_ != nullptr) pcre2_code_free(code_);
  }
  bool ok() const { return code_ != nullptr; }

  // Calls fn(word) for each match; false on a matching error (invalid UTF-8).
  template <typename Fn>
  bool Split(std::string_view text, Fn&& fn) {
    PCRE2_SIZE start = 0;
    while (start < text.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()),
                           text.size(), start, 0, data_, nullptr);
      if (rc < 0) return rc == PCRE2_ERROR_NOMATCH;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data_);
      if (ov[1] == ov[0]) return false;  // The pattern never matches empty.
      fn(text.substr(ov[0], ov[1] - ov[0]));
      start = ov[1];
    }
    return true;
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_data* data_ = nullptr;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) |
         static_cast<uint32_t>(b);
}

}  // namespace

std::string ByteToUnicode(uint8_t b) { return ByteAlphabet()[b]; }

absl::StatusOr<BpeVocabulary> TrainBpe(
    const std::vector<std::string_view>& texts,
    const BpeTrainerOptions& options) {
  const int num_special = static_cast<int>(options.special_tokens.size());
  if (options.vocab_size < 256 + num_special) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab_size: must be at least 256 + ", num_special, " special tokens"));
  }
  Pretokenizer pretokenizer;
  if (!pretokenizer.ok())
    return absl::InternalError("pre-tokenizer regex does not compile");

  std::unordered_map<std::string, int64_t> word_counts;
  for (size_t i = 0; i < texts.size(); ++i) {
    bool ok = pretokenizer.Split(
        texts[i], [&](std::string_view w) { ++word_counts[std::string(w)]; });
    if (!ok)
      return absl::InvalidArgumentError(
          absl::StrCat("texts[", i, "]: invalid UTF-8"));
  }
  // Sorted so that the word order, and with it every tie, is the same each run.
  std::vector<std::pair<std::string, int64_t>> sorted(word_counts.begin(),
                                                      word_counts.end());
  std::sort(sorted.begin(), sorted.end());

  BpeVocabulary vocab;
  for (int b = 0; b < 256; ++b) vocab.tokens.push_back(ByteAlphabet()[b]);
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> counts(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    for (unsigned char c : sorted[w].first) words[w].push_back(c);
    counts[w] = sorted[w].second;
  }

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  auto add_word_pairs = [&](size_t w, int64_t sign) {
    const auto& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      uint64_t key = PairKey(s[i], s[i + 1]);
      pair_count[key] += sign * counts[w];
      if (sign > 0) pair_words[key].push_back(static_cast<int32_t>(w));
    }
  };
  for (size_t w = 0; w < words.size(); ++w) add_word_pairs(w, +1);

  // Max-heap by count, then by the pair's strings (smaller first), with lazy
  // deletion: an entry whose count is stale is re-pushed with the current one.
  struct Entry {
    int64_t count;
    uint64_t key;
  };
  auto less = [&](const Entry& x, const Entry& y) {
    if (x.count != y.count) return x.count < y.count;
    const std::string& xa = vocab.tokens[x.key >> 32];
    const std::string& ya = vocab.tokens[y.key >> 32];
    if (xa != ya) return xa > ya;
    return vocab.tokens[x.key & 0xffffffffu] >
           vocab.tokens[y.key & 0xffffffffu];
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(less)> heap(less);
  for (const auto& [key, count] : pair_count) heap.push({count, key});

  const int target = options.vocab_size - num_special;
  while (static_cast<int>(vocab.tokens.size()) < target && !heap.empty()) {
    Entry top = heap.top();
    heap.pop();
    auto it = pair_count.find(top.key);
    int64_t current = it == pair_count.end() ? 0 : it->second;
    if (current != top.count) {
      if (current > 0) heap.push({current, top.key});
      continue;
    }
    if (current < options.min_frequency) break;
    const int32_t a = static_cast<int32_t>(top.key >> 32);
    const int32_t b = static_cast<int32_t>(top.key & 0xffffffffu);
    const int32_t merged = static_cast<int32_t>(vocab.tokens.size());
    vocab.tokens.push_back(vocab.tokens[a] + vocab.tokens[b]);
    vocab.merges.emplace_back(vocab.tokens[a], vocab.tokens[b]);

    std::vector<int32_t> affected = std::move(pair_words[top.key]);
    pair_words.erase(top.key);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()),
                   affected.end());
    std::vector<uint64_t> touched;
    for (int32_t w : affected) {
      auto& s = words[w];
      bool present = false;
      for (size_t i = 0; i + 1 < s.size(); ++i)
        present |= (s[i] == a && s[i + 1] == b);
      if (!present) continue;  // A stale index: an earlier merge consumed it.
      add_word_pairs(w, -1);
      std::vector<int32_t> out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          out.push_back(merged);
          ++i;
        } else {
          out.push_back(s[i]);
        }
      }
      s = std::move(out);
      add_word_pairs(w, +1);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        if (s[i] == merged || s[i + 1] == merged)
          touched.push_back(PairKey(s[i], s[i + 1]));
      }
    }
    pair_count.erase(top.key);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t key : touched) heap.push({pair_count[key], key});
  }
  for (const auto& special : options.special_tokens)
    vocab.tokens.push_back(special);
  vocab.num_special = num_special;
  return vocab;
}

std::string TokenizerJson(const BpeVocabulary& vocab) {
  using Json = nlohmann::ordered_json;
  const int first_special =
      static_cast<int>(vocab.tokens.size()) - vocab.num_special;
  Json added = Json::array();
  for (int id = first_special; id < static_cast<int>(vocab.tokens.size());
       ++id) {
    added.push_back(Json{{"id", id},
                         {"content", vocab.tokens[id]},
                         {"single_word", false},
                         {"lstrip", false},
                         {"rstrip", false},
                         {"normalized", false},
                         {"special", true}});
  }
  Json pre = Json{
      {"type", "Sequence"},
      {"pretokenizers",
       Json::array({Json{{"type", "Split"},
                         {"pattern", Json{{"Regex", kLlama3PretokenizerRegex}}},
                         {"behavior", "Isolated"},
                         {"invert", false}},
                    Json{{"type", "ByteLevel"},
                         {"add_prefix_space", false},
                         {"trim_offsets", true},
                         {"use_regex", false}}})}};
  Json post = nullptr;
  if (vocab.num_special > 0) {
    const std::string& bos = vocab.tokens[first_special];
    Json bos_piece = Json{{"SpecialToken", Json{{"id", bos}, {"type_id", 0}}}};
    post = Json{
        {"type", "TemplateProcessing"},
        {"single",
         Json::array({bos_piece,
                      Json{{"Sequence", Json{{"id", "A"}, {"type_id", 0}}}}})},
        {"pair",
         Json::array({bos_piece,
                      Json{{"Sequence", Json{{"id", "A"}, {"type_id", 0}}}},
                      Json{{"SpecialToken", Json{{"id", bos}, {"type_id", 1}}}},
                      Json{{"Sequence", Json{{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens",
         Json{{bos, Json{{"id", bos},
                         {"ids", Json::array({first_special})},
                         {"tokens", Json::array({bos})}}}}}};
  }
  Json model_vocab = Json::object();
  for (int id = 0; id < first_special; ++id) model_vocab[vocab.tokens[id]] = id;
  Json merges = Json::array();
  for (const auto& [a, b] : vocab.merges) merges.push_back(a + " " + b);
  Json out = Json{{"version", "1.0"},
                  {"truncation", nullptr},
                  {"padding", nullptr},
                  {"added_tokens", added},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", pre},
                  {"post_processor", post},
                  {"decoder", Json{{"type", "ByteLevel"},
                                   {"add_prefix_space", true},
                                   {"trim_offsets", true},
                                   {"use_regex", true}}},
                  {"model", Json{{"type", "BPE"},
                                 {"dropout", nullptr},
                                 {"unk_token", nullptr},
                                 {"continuing_subword_prefix", nullptr},
                                 {"end_of_word_suffix", nullptr},
                                 {"fuse_unk", false},
                                 {"byte_fallback", false},
                                 {"ignore_merges", true},
                                 {"vocab", model_vocab},
                                 {"merges", merges}}}};
  return out.dump(2) + "\n";
}

std::string TokenizerConfigJson(const BpeVocabulary& vocab,
                                const BpeTrainerOptions& options) {
  using Json = nlohmann::ordered_json;
  const int first_special =
      static_cast<int>(vocab.tokens.size()) - vocab.num_special;
  Json decoder = Json::object();
  for (int id = first_special; id < static_cast<int>(vocab.tokens.size());
       ++id) {
    decoder[std::to_string(id)] =
        Json{{"content", vocab.tokens[id]}, {"lstrip", false},
             {"normalized", false},         {"rstrip", false},
             {"single_word", false},        {"special", true}};
  }
  Json out = Json{{"added_tokens_decoder", decoder}};
  if (vocab.num_special > 0) out["bos_token"] = vocab.tokens[first_special];
  if (vocab.num_special > 1) out["eos_token"] = vocab.tokens[first_special + 1];
  out["clean_up_tokenization_spaces"] = false;
  out["model_input_names"] = Json::array({"input_ids", "attention_mask"});
  out["model_max_length"] = options.model_max_length;
  out["tokenizer_class"] = "PreTrainedTokenizerFast";
  return out.dump(2) + "\n";
}

absl::Status WriteFileAtomic(const std::string& path,
                             std::string_view contents) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return absl::InternalError(absl::StrCat(tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return absl::InternalError(
          absl::StrCat(tmp, ": write: ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    return absl::InternalError(
        absl::StrCat(tmp, ": fsync: ", std::strerror(errno)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat(path, ": rename: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status WriteTokenizer(const BpeVocabulary& vocab,
                            const BpeTrainerOptions& options,
                            const std::string& folder) {
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) return absl::InternalError(absl::StrCat(folder, ": ", ec.message()));
  absl::Status s =
      WriteFileAtomic(folder + "/tokenizer.json", TokenizerJson(vocab));
  if (!s.ok()) return s;
  return WriteFileAtomic(folder + "/tokenizer_config.json",
                         TokenizerConfigJson(vocab, options));
}

}  // namespace hearth::distiller
