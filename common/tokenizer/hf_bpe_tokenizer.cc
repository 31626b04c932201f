#include "common/tokenizer/hf_bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace hearth::tokenizer {
namespace {

using Json = nlohmann::json;

// This abseil build has its own absl::string_view class, which std::string_view
// does not convert to implicitly; the interface speaks std::string_view.
absl::string_view AV(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// Ids index dense tables; a corrupt file must not make us allocate gigabytes.
constexpr int64_t kMaxTokenId = (1 << 24) - 1;

// Words longer than this are merged but not memoised: they rarely repeat, and
// a SentencePiece-style tokenizer without a pre-tokenizer sees whole paragraphs
// as one "word".
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kWordCacheCapacity = 100000;

// Longest text Encode() accepts (normalizers may grow it a little).
constexpr size_t kMaxTextBytes = size_t{1} << 30;

// ---------------------------------------------------------------------------
// Reading tokenizer.json. Every error names the key path, so that a user with a
// broken file knows where to look.

absl::Status KeyError(const std::string& path, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json: ", path, " ", AV(what)));
}

const Json* Find(const Json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string Join(const std::string& path, const char* key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

std::string Index(const std::string& path, size_t i) {
  return absl::StrCat(path, "[", i, "]");
}

absl::StatusOr<const Json*> RequireObject(const Json& parent, const char* key,
                                          const std::string& path) {
  const Json* v = Find(parent, key);
  if (v == nullptr) return KeyError(Join(path, key), "is missing");
  if (!v->is_object()) return KeyError(Join(path, key), "must be an object");
  return v;
}

absl::StatusOr<const Json*> RequireArray(const Json& parent, const char* key,
                                         const std::string& path) {
  const Json* v = Find(parent, key);
  if (v == nullptr) return KeyError(Join(path, key), "is missing");
  if (!v->is_array()) return KeyError(Join(path, key), "must be an array");
  return v;
}

absl::StatusOr<std::string> RequireString(const Json& parent, const char* key,
                                          const std::string& path) {
  const Json* v = Find(parent, key);
  if (v == nullptr) return KeyError(Join(path, key), "is missing");
  if (!v->is_string()) return KeyError(Join(path, key), "must be a string");
  return v->get_ref<const std::string&>();
}

absl::StatusOr<std::string> OptionalString(const Json& parent, const char* key,
                                           const std::string& path,
                                           std::string default_value) {
  const Json* v = Find(parent, key);
  if (v == nullptr) return default_value;
  if (!v->is_string()) return KeyError(Join(path, key), "must be a string");
  return v->get_ref<const std::string&>();
}

absl::StatusOr<bool> OptionalBool(const Json& parent, const char* key,
                                  const std::string& path, bool default_value) {
  const Json* v = Find(parent, key);
  if (v == nullptr) return default_value;
  if (!v->is_boolean()) return KeyError(Join(path, key), "must be a boolean");
  return v->get<bool>();
}

absl::StatusOr<int64_t> ToInt(const Json& v, const std::string& path,
                              int64_t min, int64_t max) {
  if (!v.is_number_integer()) return KeyError(path, "must be an integer");
  if (v.is_number_unsigned() &&
      v.get<uint64_t>() > static_cast<uint64_t>(max)) {
    return KeyError(path, absl::StrCat("must be at most ", max));
  }
  int64_t x = v.get<int64_t>();
  if (x < min || x > max) {
    return KeyError(path,
                    absl::StrCat("must be in [", min, ", ", max, "], got ", x));
  }
  return x;
}

absl::StatusOr<int64_t> OptionalInt(const Json& parent, const char* key,
                                    const std::string& path,
                                    int64_t default_value, int64_t min,
                                    int64_t max) {
  const Json* v = Find(parent, key);
  if (v == nullptr) return default_value;
  return ToInt(*v, Join(path, key), min, max);
}

absl::StatusOr<int32_t> ToTokenId(const Json& v, const std::string& path) {
  HEARTH_ASSIGN_OR_RETURN(int64_t id, ToInt(v, path, 0, kMaxTokenId));
  return static_cast<int32_t>(id);
}

// The "type" of a component object, e.g. "ByteLevel".
absl::StatusOr<std::string> ComponentType(const Json& component,
                                          const std::string& path) {
  if (!component.is_object()) return KeyError(path, "must be an object");
  return RequireString(component, "type", path);
}

absl::Status Unsupported(const std::string& path, const std::string& type) {
  return absl::UnimplementedError(
      absl::StrCat("tokenizer.json: ", path, ".type \"", type,
                   "\" is not supported by hearth"));
}

// ---------------------------------------------------------------------------
// Patterns: the {"String": ...} / {"Regex": ...} objects of Split, Replace.

struct Range {
  size_t begin;
  size_t end;
};

// Per-thread PCRE2 matching state. A pcre2_code is immutable and shared; the
// match data and the JIT stack are not, so each thread keeps its own.
struct Pcre2ThreadState {
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  Pcre2ThreadState() {
    match_data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    // The default 32 KiB JIT stack is too small for long whitespace runs under
    // patterns like `\s+(?!\S)`.
    jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    if (context != nullptr && jit_stack != nullptr) {
      pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
  }
  ~Pcre2ThreadState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(match_data);
  }
  static Pcre2ThreadState& Get() {
    thread_local Pcre2ThreadState state;
    return state;
  }
};

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buffer[256];
  int n = pcre2_get_error_message(code, buffer, sizeof(buffer));
  if (n < 0) return absl::StrCat("PCRE2 error ", code);
  return std::string(reinterpret_cast<const char*>(buffer), n);
}

class Pattern {
 public:
  // `spec` is {"String": "..."} or {"Regex": "..."}.
  static absl::StatusOr<std::unique_ptr<Pattern>> FromJson(
      const Json& spec, const std::string& path) {
    if (!spec.is_object()) return KeyError(path, "must be an object");
    if (const Json* s = Find(spec, "String")) {
      if (!s->is_string())
        return KeyError(Join(path, "String"), "must be a string");
      return Literal(s->get_ref<const std::string&>());
    }
    if (const Json* r = Find(spec, "Regex")) {
      if (!r->is_string())
        return KeyError(Join(path, "Regex"), "must be a string");
      return Regex(r->get_ref<const std::string&>(), Join(path, "Regex"));
    }
    return KeyError(path, "must have a \"String\" or \"Regex\" key");
  }

  static std::unique_ptr<Pattern> Literal(std::string literal) {
    auto p = std::unique_ptr<Pattern>(new Pattern());
    p->literal_ = std::move(literal);
    return p;
  }

  static absl::StatusOr<std::unique_ptr<Pattern>> Regex(
      std::string_view regex, const std::string& path) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(regex.data()),
                                     regex.size(), PCRE2_UTF | PCRE2_UCP,
                                     &error_code, &error_offset, nullptr);
    if (code == nullptr) {
      return KeyError(
          path, absl::StrCat("is not a valid regex (offset ", error_offset,
                             "): ", Pcre2Message(error_code)));
    }
    // JIT is an optimisation; the interpreter gives the same answers.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    auto p = std::unique_ptr<Pattern>(new Pattern());
    p->code_ = code;
    return p;
  }

  ~Pattern() { pcre2_code_free(code_); }

  // Appends the non-empty, non-overlapping matches in `subject` (valid UTF-8),
  // leftmost first, as JavaScript's matchAll and Rust's find_iter produce them.
  absl::Status FindAll(std::string_view subject,
                       std::vector<Range>* out) const {
    if (code_ == nullptr) {
      if (literal_.empty()) return absl::OkStatus();
      size_t pos = 0;
      while ((pos = subject.find(literal_, pos)) != std::string_view::npos) {
        out->push_back({pos, pos + literal_.size()});
        pos += literal_.size();
      }
      return absl::OkStatus();
    }
    Pcre2ThreadState& state = Pcre2ThreadState::Get();
    if (state.match_data == nullptr || state.context == nullptr) {
      return absl::ResourceExhaustedError("cannot allocate PCRE2 match data");
    }
    size_t start = 0;
    while (start <= subject.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(subject.data()),
                           subject.size(), start, PCRE2_NO_UTF_CHECK,
                           state.match_data, state.context);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      // rc == 0 only means the ovector had no room for capture groups.
      if (rc < 0) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "regex match failed at byte ", start, ": ", Pcre2Message(rc)));
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data);
      size_t begin = ovector[0];
      size_t end = ovector[1];
      if (end > begin) {
        out->push_back({begin, end});
        start = end;
      } else {
        // Empty match: step over one character, as matchAll does.
        if (begin >= subject.size()) break;
        size_t len = utf8::SequenceLength(subject, begin);
        start = begin + (len == 0 ? 1 : len);
      }
    }
    return absl::OkStatus();
  }

  // Replaces every match with `content`.
  absl::StatusOr<std::string> ReplaceAll(std::string_view subject,
                                         std::string_view content) const {
    std::vector<Range> matches;
    HEARTH_RETURN_IF_ERROR(FindAll(subject, &matches));
    if (matches.empty()) return std::string(subject);
    std::string out;
    out.reserve(subject.size());
    size_t prev = 0;
    for (const Range& m : matches) {
      out.append(subject.substr(prev, m.begin - prev));
      out.append(content);
      prev = m.end;
    }
    out.append(subject.substr(prev));
    return out;
  }

 private:
  Pattern() = default;
  std::string literal_;
  pcre2_code* code_ = nullptr;
};

// How a Split pre-tokenizer turns matches into pieces (tokenizers'
// SplitDelimiterBehavior).
enum class SplitBehavior {
  kRemoved,
  kIsolated,
  kMergedWithPrevious,
  kMergedWithNext,
  kContiguous
};

absl::StatusOr<SplitBehavior> ParseSplitBehavior(const std::string& name,
                                                 const std::string& path) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return KeyError(path, absl::StrCat("has unknown behavior \"", name, "\""));
}

// Splits `s` at `matches` following tokenizers' NormalizedString::split.
void SplitByMatches(std::string_view s, const std::vector<Range>& matches,
                    bool invert, SplitBehavior behavior,
                    std::vector<std::string>* out) {
  struct Part {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Part> parts;
  parts.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (const Range& m : matches) {
    if (m.begin > prev) parts.push_back({prev, m.begin, invert});
    parts.push_back({m.begin, m.end, !invert});
    prev = m.end;
  }
  if (prev < s.size()) parts.push_back({prev, s.size(), invert});

  std::vector<Part> merged;
  merged.reserve(parts.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      merged = std::move(parts);
      break;
    case SplitBehavior::kRemoved:
      for (const Part& p : parts) {
        if (!p.is_match) merged.push_back(p);
      }
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.is_match && !previous_match && !merged.empty()) {
          merged.back().end = p.end;
        } else {
          merged.push_back(p);
        }
        previous_match = p.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !merged.empty()) {
          merged.back().begin = it->begin;
        } else {
          merged.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.is_match == previous_match && !merged.empty()) {
          merged.back().end = p.end;
        } else {
          merged.push_back(p);
        }
        previous_match = p.is_match;
      }
      break;
    }
  }
  for (const Part& p : merged) {
    if (p.end > p.begin) out->emplace_back(s.substr(p.begin, p.end - p.begin));
  }
}

// ---------------------------------------------------------------------------
// The GPT-2 byte alphabet: every byte maps to a printable character, so that
// byte strings can live in a JSON vocabulary.

struct ByteAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  // Indexed by code point; -1 for characters outside the alphabet.
  std::array<int16_t, 324> char_to_byte;

  ByteAlphabet() {
    char_to_byte.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
                       (b >= 0xAE && b <= 0xFF);
      char32_t cp = printable ? b : next++;
      utf8::Append(cp, &byte_to_utf8[b]);
      char_to_byte[cp] = static_cast<int16_t>(b);
    }
  }

  static const ByteAlphabet& Get() {
    static const ByteAlphabet* alphabet = new ByteAlphabet();
    return *alphabet;
  }
};

// The pre-tokenizer regex of GPT-2, used by ByteLevel when use_regex is true.
constexpr char kGpt2Regex[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---------------------------------------------------------------------------
// Normalizers.

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual absl::Status Apply(std::string* s) const = 0;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Apply(std::string* s) const override {
    for (const auto& step : steps_) HEARTH_RETURN_IF_ERROR(step->Apply(s));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::Status Apply(std::string* s) const override {
    if (!s->empty()) s->insert(0, prefix_);
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status Apply(std::string* s) const override {
    HEARTH_ASSIGN_OR_RETURN(*s, pattern_->ReplaceAll(*s, content_));
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  std::string content_;
};

// Byte length of the Unicode whitespace that starts `s`, and the length of `s`
// without the whitespace that ends it. `s` is valid UTF-8.
size_t TrimLeftWhitespace(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t len;
    if (!utf8::IsWhitespace(utf8::DecodeAt(s, pos, &len))) break;
    pos += len;
  }
  return pos;
}

size_t TrimRightWhitespace(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80)
      --start;
    size_t len;
    if (!utf8::IsWhitespace(utf8::DecodeAt(s, start, &len))) break;
    end = start;
  }
  return end;
}

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::Status Apply(std::string* s) const override {
    if (right_) s->resize(TrimRightWhitespace(*s));
    if (left_) s->erase(0, TrimLeftWhitespace(*s));
    return absl::OkStatus();
  }

 private:
  bool left_, right_;
};

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(
    const Json& j, const std::string& path) {
  HEARTH_ASSIGN_OR_RETURN(std::string type, ComponentType(j, path));
  if (type == "Sequence") {
    std::string list_path = Join(path, "normalizers");
    HEARTH_ASSIGN_OR_RETURN(const Json* list,
                            RequireArray(j, "normalizers", path));
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      HEARTH_ASSIGN_OR_RETURN(auto step,
                              ParseNormalizer((*list)[i], Index(list_path, i)));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") {
    HEARTH_ASSIGN_OR_RETURN(std::string prefix,
                            RequireString(j, "prepend", path));
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Replace") {
    const Json* spec = Find(j, "pattern");
    if (spec == nullptr) return KeyError(Join(path, "pattern"), "is missing");
    HEARTH_ASSIGN_OR_RETURN(auto pattern,
                            Pattern::FromJson(*spec, Join(path, "pattern")));
    HEARTH_ASSIGN_OR_RETURN(std::string content,
                            RequireString(j, "content", path));
    return std::make_unique<ReplaceNormalizer>(std::move(pattern),
                                               std::move(content));
  }
  if (type == "Strip") {
    HEARTH_ASSIGN_OR_RETURN(bool left,
                            OptionalBool(j, "strip_left", path, true));
    HEARTH_ASSIGN_OR_RETURN(bool right,
                            OptionalBool(j, "strip_right", path, true));
    return std::make_unique<StripNormalizer>(left, right);
  }
  return Unsupported(path, type);
}

// ---------------------------------------------------------------------------
// Pre-tokenizers: split a normalized segment into words.

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // `at_start`: pieces->front() begins at offset 0 of the original text (what
  // Metaspace's prepend_scheme "first" looks at).
  virtual absl::Status Apply(std::vector<std::string>* pieces,
                             bool at_start) const = 0;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(
      std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Apply(std::vector<std::string>* pieces,
                     bool at_start) const override {
    for (const auto& step : steps_)
      HEARTH_RETURN_IF_ERROR(step->Apply(pieces, at_start));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Pattern> pattern, SplitBehavior behavior,
                    bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  absl::Status Apply(std::vector<std::string>* pieces, bool) const override {
    std::vector<std::string> out;
    std::vector<Range> matches;
    for (const std::string& piece : *pieces) {
      matches.clear();
      HEARTH_RETURN_IF_ERROR(pattern_->FindAll(piece, &matches));
      SplitByMatches(piece, matches, invert_, behavior_, &out);
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Pattern> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status Apply(std::vector<std::string>* pieces, bool) const override {
    std::vector<std::string> split;
    std::vector<Range> matches;
    for (std::string& piece : *pieces) {
      if (add_prefix_space_ && (piece.empty() || piece[0] != ' '))
        piece.insert(0, " ");
      if (regex_ == nullptr) {
        split.push_back(std::move(piece));
        continue;
      }
      matches.clear();
      HEARTH_RETURN_IF_ERROR(regex_->FindAll(piece, &matches));
      SplitByMatches(piece, matches, false, SplitBehavior::kIsolated, &split);
    }
    const ByteAlphabet& alphabet = ByteAlphabet::Get();
    pieces->clear();
    for (const std::string& piece : split) {
      std::string mapped;
      mapped.reserve(piece.size() * 2);
      for (unsigned char b : piece) mapped += alphabet.byte_to_utf8[b];
      pieces->push_back(std::move(mapped));
    }
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Pattern> regex_;  // null when use_regex is false
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme,
                        bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  absl::Status Apply(std::vector<std::string>* pieces,
                     bool at_start) const override {
    std::vector<std::string> out;
    std::vector<Range> matches;
    for (size_t i = 0; i < pieces->size(); ++i) {
      std::string s;
      for (char c : (*pieces)[i]) {
        if (c == ' ') {
          s += replacement_;
        } else {
          s += c;
        }
      }
      bool prepend = scheme_ == PrependScheme::kAlways ||
                     (scheme_ == PrependScheme::kFirst && at_start && i == 0);
      if (prepend && s.compare(0, replacement_.size(), replacement_) != 0) {
        s.insert(0, replacement_);
      }
      if (!split_ || replacement_.empty()) {
        out.push_back(std::move(s));
        continue;
      }
      matches.clear();
      for (size_t pos = s.find(replacement_); pos != std::string::npos;
           pos = s.find(replacement_, pos + replacement_.size())) {
        matches.push_back({pos, pos + replacement_.size()});
      }
      SplitByMatches(s, matches, false, SplitBehavior::kMergedWithNext, &out);
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class DigitsPreTokenizer : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  absl::Status Apply(std::vector<std::string>* pieces, bool) const override {
    std::vector<std::string> out;
    std::vector<Range> matches;
    for (const std::string& piece : *pieces) {
      matches.clear();
      for (size_t i = 0; i < piece.size();) {
        if (piece[i] < '0' || piece[i] > '9') {
          ++i;
          continue;
        }
        size_t j = i + 1;
        if (!individual_) {
          while (j < piece.size() && piece[j] >= '0' && piece[j] <= '9') ++j;
        }
        matches.push_back({i, j});
        i = j;
      }
      SplitByMatches(piece, matches, false, SplitBehavior::kIsolated, &out);
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  bool individual_;
};

absl::StatusOr<PrependScheme> ParsePrependScheme(const Json& j,
                                                 const std::string& path) {
  const Json* scheme = Find(j, "prepend_scheme");
  if (scheme == nullptr) {
    // Files written before prepend_scheme existed say add_prefix_space.
    HEARTH_ASSIGN_OR_RETURN(bool add,
                            OptionalBool(j, "add_prefix_space", path, true));
    return add ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  if (!scheme->is_string())
    return KeyError(Join(path, "prepend_scheme"), "must be a string");
  const std::string& s = scheme->get_ref<const std::string&>();
  if (s == "always") return PrependScheme::kAlways;
  if (s == "first") return PrependScheme::kFirst;
  if (s == "never") return PrependScheme::kNever;
  return KeyError(Join(path, "prepend_scheme"),
                  absl::StrCat("has unknown value \"", s, "\""));
}

absl::StatusOr<std::string> ParseReplacementChar(const Json& j,
                                                 const std::string& path) {
  HEARTH_ASSIGN_OR_RETURN(
      std::string replacement,
      OptionalString(j, "replacement", path, "\xE2\x96\x81"));
  if (replacement.empty())
    return KeyError(Join(path, "replacement"), "must not be empty");
  return replacement;
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(
    const Json& j, const std::string& path) {
  HEARTH_ASSIGN_OR_RETURN(std::string type, ComponentType(j, path));
  if (type == "Sequence") {
    std::string list_path = Join(path, "pretokenizers");
    HEARTH_ASSIGN_OR_RETURN(const Json* list,
                            RequireArray(j, "pretokenizers", path));
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      HEARTH_ASSIGN_OR_RETURN(
          auto step, ParsePreTokenizer((*list)[i], Index(list_path, i)));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    const Json* spec = Find(j, "pattern");
    if (spec == nullptr) return KeyError(Join(path, "pattern"), "is missing");
    HEARTH_ASSIGN_OR_RETURN(auto pattern,
                            Pattern::FromJson(*spec, Join(path, "pattern")));
    HEARTH_ASSIGN_OR_RETURN(std::string behavior_name,
                            RequireString(j, "behavior", path));
    HEARTH_ASSIGN_OR_RETURN(
        SplitBehavior behavior,
        ParseSplitBehavior(behavior_name, Join(path, "behavior")));
    HEARTH_ASSIGN_OR_RETURN(bool invert,
                            OptionalBool(j, "invert", path, false));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), behavior,
                                               invert);
  }
  if (type == "ByteLevel") {
    HEARTH_ASSIGN_OR_RETURN(bool add_prefix_space,
                            OptionalBool(j, "add_prefix_space", path, true));
    HEARTH_ASSIGN_OR_RETURN(bool use_regex,
                            OptionalBool(j, "use_regex", path, true));
    std::unique_ptr<Pattern> regex;
    if (use_regex) {
      HEARTH_ASSIGN_OR_RETURN(regex, Pattern::Regex(kGpt2Regex, path));
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space,
                                                   std::move(regex));
  }
  if (type == "Metaspace") {
    HEARTH_ASSIGN_OR_RETURN(std::string replacement,
                            ParseReplacementChar(j, path));
    HEARTH_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(j, path));
    HEARTH_ASSIGN_OR_RETURN(bool split, OptionalBool(j, "split", path, true));
    return std::make_unique<MetaspacePreTokenizer>(std::move(replacement),
                                                   scheme, split);
  }
  if (type == "Digits") {
    HEARTH_ASSIGN_OR_RETURN(bool individual,
                            OptionalBool(j, "individual_digits", path, false));
    return std::make_unique<DigitsPreTokenizer>(individual);
  }
  return Unsupported(path, type);
}

// ---------------------------------------------------------------------------
// Decoders: turn token strings back into text. Each step maps a list of
// strings to a list of strings, as in tokenizers' decode_chain.

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual absl::Status Apply(std::vector<std::string>* tokens) const = 0;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Apply(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) HEARTH_RETURN_IF_ERROR(step->Apply(tokens));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ByteLevelDecoder : public Decoder {
 public:
  absl::Status Apply(std::vector<std::string>* tokens) const override {
    const ByteAlphabet& alphabet = ByteAlphabet::Get();
    std::string bytes;
    for (const std::string& token : *tokens) {
      size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t pos = 0; pos < token.size();) {
        size_t len;
        char32_t cp = utf8::DecodeAt(token, pos, &len);
        if (cp >= alphabet.char_to_byte.size() ||
            alphabet.char_to_byte[cp] < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(alphabet.char_to_byte[cp]));
        pos += len;
      }
      // A token outside the byte alphabet (an added token such as
      // "<|im start|>" with a real space) is taken literally, as in tokenizers.
      if (!all_mapped) {
        bytes.resize(mark);
        bytes += token;
      }
    }
    tokens->assign(1, utf8::DecodeLossy(bytes));
    return absl::OkStatus();
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status Apply(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      HEARTH_ASSIGN_OR_RETURN(token, pattern_->ReplaceAll(token, content_));
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  std::string content_;
};

// Parses "<0xAB>" into 0xAB; -1 for anything else.
int ParseByteToken(std::string_view token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>')
    return -1;
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    char c = token[i];
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

class ByteFallbackDecoder : public Decoder {
 public:
  // Runs of <0xXX> tokens become the text their bytes spell. An ill-formed run
  // is decoded lossily (one U+FFFD per maximal subpart, like transformers.js);
  // Rust's tokenizers emits one U+FFFD per byte there instead. Lossy decoding
  // keeps decoding prefix-stable, which StreamingDecoder relies on.
  absl::Status Apply(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string bytes;
    for (std::string& token : *tokens) {
      int b = ParseByteToken(token);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
        continue;
      }
      if (!bytes.empty()) {
        out.push_back(utf8::DecodeLossy(bytes));
        bytes.clear();
      }
      out.push_back(std::move(token));
    }
    if (!bytes.empty()) out.push_back(utf8::DecodeLossy(bytes));
    *tokens = std::move(out);
    return absl::OkStatus();
  }
};

class FuseDecoder : public Decoder {
 public:
  absl::Status Apply(std::vector<std::string>* tokens) const override {
    std::string joined;
    for (const std::string& token : *tokens) joined += token;
    tokens->assign(1, std::move(joined));
    return absl::OkStatus();
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, int64_t start, int64_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  absl::Status Apply(std::vector<std::string>* tokens) const override {
    if (content_.empty()) return absl::OkStatus();
    for (std::string& token : *tokens) {
      std::string_view view(token);
      for (int64_t i = 0; i < start_ && absl::StartsWith(AV(view), content_);
           ++i) {
        view.remove_prefix(content_.size());
      }
      for (int64_t i = 0; i < stop_ && absl::EndsWith(AV(view), content_);
           ++i) {
        view.remove_suffix(content_.size());
      }
      token = std::string(view);
    }
    return absl::OkStatus();
  }

 private:
  std::string content_;
  int64_t start_, stop_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  absl::Status Apply(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& token = (*tokens)[i];
      token = absl::StrReplaceAll(token, {{replacement_, " "}});
      if (i == 0 && strip_first_ && !token.empty() && token[0] == ' ')
        token.erase(0, 1);
    }
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j,
                                                      const std::string& path) {
  HEARTH_ASSIGN_OR_RETURN(std::string type, ComponentType(j, path));
  if (type == "Sequence") {
    std::string list_path = Join(path, "decoders");
    HEARTH_ASSIGN_OR_RETURN(const Json* list,
                            RequireArray(j, "decoders", path));
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      HEARTH_ASSIGN_OR_RETURN(auto step,
                              ParseDecoder((*list)[i], Index(list_path, i)));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Replace") {
    const Json* spec = Find(j, "pattern");
    if (spec == nullptr) return KeyError(Join(path, "pattern"), "is missing");
    HEARTH_ASSIGN_OR_RETURN(auto pattern,
                            Pattern::FromJson(*spec, Join(path, "pattern")));
    HEARTH_ASSIGN_OR_RETURN(std::string content,
                            RequireString(j, "content", path));
    return std::make_unique<ReplaceDecoder>(std::move(pattern),
                                            std::move(content));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    HEARTH_ASSIGN_OR_RETURN(std::string content,
                            RequireString(j, "content", path));
    HEARTH_ASSIGN_OR_RETURN(int64_t start,
                            OptionalInt(j, "start", path, 0, 0, 1 << 20));
    HEARTH_ASSIGN_OR_RETURN(int64_t stop,
                            OptionalInt(j, "stop", path, 0, 0, 1 << 20));
    return std::make_unique<StripDecoder>(std::move(content), start, stop);
  }
  if (type == "Metaspace") {
    HEARTH_ASSIGN_OR_RETURN(std::string replacement,
                            ParseReplacementChar(j, path));
    HEARTH_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(j, path));
    return std::make_unique<MetaspaceDecoder>(std::move(replacement),
                                              scheme != PrependScheme::kNever);
  }
  return Unsupported(path, type);
}

// ---------------------------------------------------------------------------
// Post-processors. Only the ids matter to hearth (no offsets, no type ids), so
// every supported processor reduces to a list of templates, each wrapping the
// sequence in special-token ids.

struct TemplatePiece {
  bool is_sequence = false;
  std::vector<int32_t> ids;  // for special-token pieces
};
using Template = std::vector<TemplatePiece>;

absl::StatusOr<Template> ParseTemplateProcessing(const Json& j,
                                                 const std::string& path) {
  std::string single_path = Join(path, "single");
  HEARTH_ASSIGN_OR_RETURN(const Json* single, RequireArray(j, "single", path));
  const Json* specials = Find(j, "special_tokens");
  if (specials != nullptr && !specials->is_object()) {
    return KeyError(Join(path, "special_tokens"), "must be an object");
  }
  Template result;
  for (size_t i = 0; i < single->size(); ++i) {
    const Json& item = (*single)[i];
    std::string item_path = Index(single_path, i);
    if (const Json* seq = Find(item, "Sequence")) {
      HEARTH_ASSIGN_OR_RETURN(
          std::string id,
          RequireString(*seq, "id", Join(item_path, "Sequence")));
      // A "B" piece only matters for pairs, which hearth never encodes.
      if (id == "A") result.push_back({true, {}});
      continue;
    }
    const Json* special = Find(item, "SpecialToken");
    if (special == nullptr) {
      return KeyError(item_path, "must hold \"Sequence\" or \"SpecialToken\"");
    }
    HEARTH_ASSIGN_OR_RETURN(
        std::string name,
        RequireString(*special, "id", Join(item_path, "SpecialToken")));
    std::string entry_path =
        absl::StrCat(Join(path, "special_tokens"), "[\"", name, "\"]");
    const Json* entry =
        specials == nullptr ? nullptr : Find(*specials, name.c_str());
    if (entry == nullptr) return KeyError(entry_path, "is missing");
    std::string ids_path = Join(entry_path, "ids");
    HEARTH_ASSIGN_OR_RETURN(const Json* ids,
                            RequireArray(*entry, "ids", entry_path));
    TemplatePiece piece;
    for (size_t k = 0; k < ids->size(); ++k) {
      HEARTH_ASSIGN_OR_RETURN(int32_t id,
                              ToTokenId((*ids)[k], Index(ids_path, k)));
      piece.ids.push_back(id);
    }
    result.push_back(std::move(piece));
  }
  return result;
}

// BertProcessing/RobertaProcessing: {"cls": ["<s>", 0], "sep": ["</s>", 2]}.
absl::StatusOr<Template> ParseClsSepProcessing(const Json& j,
                                               const std::string& path) {
  Template result;
  for (const char* key : {"cls", "sep"}) {
    const Json* pair = Find(j, key);
    std::string key_path = Join(path, key);
    if (pair == nullptr) return KeyError(key_path, "is missing");
    if (!pair->is_array() || pair->size() != 2) {
      return KeyError(key_path, "must be a [token, id] pair");
    }
    HEARTH_ASSIGN_OR_RETURN(int32_t id,
                            ToTokenId((*pair)[1], Index(key_path, 1)));
    if (std::string(key) == "sep") result.push_back({true, {}});
    result.push_back({false, {id}});
  }
  return result;
}

absl::Status ParsePostProcessor(const Json& j, const std::string& path,
                                std::vector<Template>* templates) {
  HEARTH_ASSIGN_OR_RETURN(std::string type, ComponentType(j, path));
  if (type == "Sequence") {
    std::string list_path = Join(path, "processors");
    HEARTH_ASSIGN_OR_RETURN(const Json* list,
                            RequireArray(j, "processors", path));
    for (size_t i = 0; i < list->size(); ++i) {
      HEARTH_RETURN_IF_ERROR(
          ParsePostProcessor((*list)[i], Index(list_path, i), templates));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // adjusts offsets only
  if (type == "TemplateProcessing") {
    HEARTH_ASSIGN_OR_RETURN(Template t, ParseTemplateProcessing(j, path));
    templates->push_back(std::move(t));
    return absl::OkStatus();
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    HEARTH_ASSIGN_OR_RETURN(Template t, ParseClsSepProcessing(j, path));
    templates->push_back(std::move(t));
    return absl::OkStatus();
  }
  return Unsupported(path, type);
}

// ---------------------------------------------------------------------------
// Added tokens: matched as whole strings before anything else runs.

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// Leftmost-longest matching of a set of strings (a byte trie).
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() : nodes_(1) { first_byte_.fill(false); }

  void Add(std::string_view content, int32_t token_index) {
    if (content.empty()) return;
    first_byte_[static_cast<uint8_t>(content[0])] = true;
    int32_t node = 0;
    for (unsigned char c : content) {
      auto it = nodes_[node].children.find(c);
      if (it == nodes_[node].children.end()) {
        nodes_.emplace_back();
        int32_t child = static_cast<int32_t>(nodes_.size() - 1);
        nodes_[node].children.emplace(c, child);
        node = child;
      } else {
        node = it->second;
      }
    }
    nodes_[node].token_index = token_index;
  }

  bool empty() const { return nodes_.size() == 1; }

  // Finds the leftmost match at or after `from`, the longest one there.
  bool FindNext(std::string_view text, size_t from, size_t* begin, size_t* end,
                int32_t* token_index) const {
    for (size_t i = from; i < text.size(); ++i) {
      if (!first_byte_[static_cast<uint8_t>(text[i])]) continue;
      int32_t node = 0;
      int32_t best = -1;
      size_t best_end = 0;
      for (size_t j = i; j < text.size(); ++j) {
        auto it =
            nodes_[node].children.find(static_cast<unsigned char>(text[j]));
        if (it == nodes_[node].children.end()) break;
        node = it->second;
        if (nodes_[node].token_index >= 0) {
          best = nodes_[node].token_index;
          best_end = j + 1;
        }
      }
      if (best >= 0) {
        *begin = i;
        *end = best_end;
        *token_index = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    absl::flat_hash_map<unsigned char, int32_t> children;
    int32_t token_index = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_;
};

// A piece of input after added-token extraction: either literal text or one
// added token.
struct Segment {
  std::string_view text;
  int32_t token_index = -1;  // into Impl::added_tokens; -1 for text
  bool at_start = false;     // text begins at offset 0 of the whole input
};

// ---------------------------------------------------------------------------
// The BPE model.

class BpeModel {
 public:
  absl::flat_hash_map<std::string, int32_t> vocab;
  // (left id << 32 | right id) -> merge rank and merged id.
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  absl::flat_hash_map<uint64_t, Merge> merges;
  int32_t unk_id = -1;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::array<int32_t, 256> byte_ids;  // ids of "<0xXX>", -1 if absent

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  // Appends the ids of one pre-tokenized word.
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
    if (ignore_merges) {
      auto it = vocab.find(AV(word));
      if (it != vocab.end()) {
        out->push_back(it->second);
        return;
      }
    }
    if (word.size() > kMaxCachedWordBytes) {
      MergeWord(word, out);
      return;
    }
    {
      absl::MutexLock lock(&cache_mu_);
      auto it = cache_.find(AV(word));
      if (it != cache_.end()) {
        out->insert(out->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    size_t mark = out->size();
    MergeWord(word, out);
    std::vector<int32_t> ids(out->begin() + mark, out->end());
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() >= kWordCacheCapacity) cache_.clear();
    cache_.emplace(std::string(word), std::move(ids));
  }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol index; lower index = earlier in the word
    int32_t right;
    int32_t left_id;
    int32_t right_id;
    int32_t new_id;
    // std::priority_queue pops the largest: invert to pop (lowest rank,
    // leftmost), the order tokenizers and transformers.js merge in.
    bool operator<(const Candidate& o) const {
      if (rank != o.rank) return rank > o.rank;
      return left > o.left;
    }
  };

  void MergeWord(std::string_view word, std::vector<int32_t>* out) const {
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto add = [&symbols](int32_t id) {
      int32_t index = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, index - 1, -1, true});
      if (index > 0) symbols[index - 1].next = index;
    };
    for (size_t pos = 0; pos < word.size();) {
      size_t len = utf8::SequenceLength(word, pos);
      if (len == 0) len = 1;  // cannot happen for validated text; stay safe
      std::string_view ch = word.substr(pos, len);
      pos += len;
      auto it = vocab.find(AV(ch));
      if (it != vocab.end()) {
        add(it->second);
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (unsigned char b : ch) all = all && byte_ids[b] >= 0;
        if (all) {
          for (unsigned char b : ch) add(byte_ids[b]);
          continue;
        }
      }
      if (unk_id < 0) continue;  // no unk token: the character is dropped
      if (fuse_unk && !symbols.empty() && symbols.back().id == unk_id) continue;
      add(unk_id);
    }

    std::priority_queue<Candidate> queue;
    auto push = [&](int32_t left) {
      int32_t right = symbols[left].next;
      if (right < 0) return;
      auto it = merges.find(PairKey(symbols[left].id, symbols[right].id));
      if (it == merges.end()) return;
      queue.push({it->second.rank, left, right, symbols[left].id,
                  symbols[right].id, it->second.new_id});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i)
      push(i);

    while (!queue.empty()) {
      Candidate c = queue.top();
      queue.pop();
      Symbol& left = symbols[c.left];
      // Stale candidates: one side was merged away or changed since the push.
      if (!left.alive || left.next != c.right || left.id != c.left_id ||
          symbols[c.right].id != c.right_id || !symbols[c.right].alive) {
        continue;
      }
      Symbol& right = symbols[c.right];
      left.id = c.new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = c.left;
      if (left.prev >= 0) push(left.prev);
      push(c.left);
    }
    for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
      out->push_back(symbols[i].id);
    }
  }

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_
      ABSL_GUARDED_BY(cache_mu_);
};

// model.vocab and model.merges in flat form. They are nearly all of a
// tokenizer.json (128k + 280k entries for Llama-3), so the loader fills them
// straight from the JSON parser's events instead of building, walking and
// freeing a DOM node per entry; that halves the load time.
struct FlatModel {
  bool has_vocab = false;
  std::vector<std::pair<std::string, int32_t>> vocab;
  bool has_merges = false;
  struct Merge {
    std::string left;  // the whole "left right" string when legacy
    std::string right;
    bool legacy;
  };
  std::vector<Merge> merges;
};

// nlohmann SAX handler: builds the DOM of everything except model.vocab and
// model.merges (which become null in the DOM and go to a FlatModel). On any
// shape it does not expect there (a non-integer id, a merge that is neither a
// string nor a pair of strings) it stops, and the caller re-reads the file the
// plain way, whose checks produce the precise error message.
class StreamingLoader {
 public:
  StreamingLoader(Json* root, FlatModel* flat) : root_(root), flat_(flat) {}

  bool unusual() const { return unusual_; }
  size_t error_position() const { return error_position_; }
  const std::string& error_message() const { return error_message_; }

  bool null() { return Value(Json(nullptr)); }
  bool boolean(bool v) { return Value(Json(v)); }
  bool number_integer(Json::number_integer_t v) { return Value(Json(v)); }
  bool number_unsigned(Json::number_unsigned_t v) {
    if (mode_ == kVocab) {
      if (v > static_cast<uint64_t>(kMaxTokenId)) return Unusual();
      flat_->vocab.emplace_back(std::move(key_), static_cast<int32_t>(v));
      return true;
    }
    return Value(Json(v));
  }
  bool number_float(Json::number_float_t v, const Json::string_t&) {
    return Value(Json(v));
  }
  bool string(Json::string_t& v) {
    if (mode_ == kMerges) {
      flat_->merges.push_back({std::move(v), std::string(), true});
      return true;
    }
    if (mode_ == kMergePair) {
      if (pair_size_ >= 2) return Unusual();
      FlatModel::Merge& m = flat_->merges.back();
      (pair_size_++ == 0 ? m.left : m.right) = std::move(v);
      return true;
    }
    return Value(Json(std::move(v)));
  }
  bool binary(Json::binary_t&) { return Unusual(); }
  bool key(Json::string_t& k) {
    key_ = std::move(k);
    return true;
  }
  bool start_object(size_t) {
    if (mode_ != kDom) return Unusual();
    if (AtModelMember("vocab")) {
      if (!Value(Json(nullptr))) return false;  // the DOM keeps a placeholder
      mode_ = kVocab;
      flat_->has_vocab = true;
      flat_->vocab.clear();
      return true;
    }
    return Open(Json(Json::value_t::object));
  }
  bool end_object() {
    if (mode_ == kVocab) {
      mode_ = kDom;
    } else {
      stack_.pop_back();
    }
    return true;
  }
  bool start_array(size_t) {
    if (mode_ == kMerges) {
      mode_ = kMergePair;
      pair_size_ = 0;
      flat_->merges.push_back({std::string(), std::string(), false});
      return true;
    }
    if (mode_ != kDom) return Unusual();
    if (AtModelMember("merges")) {
      if (!Value(Json(nullptr))) return false;
      mode_ = kMerges;
      flat_->has_merges = true;
      flat_->merges.clear();
      return true;
    }
    return Open(Json(Json::value_t::array));
  }
  bool end_array() {
    if (mode_ == kMergePair) {
      if (pair_size_ != 2) return Unusual();
      mode_ = kMerges;
    } else if (mode_ == kMerges) {
      mode_ = kDom;
    } else {
      stack_.pop_back();
    }
    return true;
  }
  bool parse_error(size_t position, const std::string&,
                   const Json::exception& e) {
    error_position_ = position;
    error_message_ = e.what();
    return false;
  }

 private:
  enum Mode { kDom, kVocab, kMerges, kMergePair };

  bool Unusual() {
    unusual_ = true;
    return false;
  }

  // Whether the member being opened is root["model"][name].
  bool AtModelMember(const char* name) const {
    return stack_.size() == 2 && stack_[0].node->is_object() &&
           stack_[1].key == "model" && stack_[1].node->is_object() &&
           key_ == name;
  }

  // Stores a value in the innermost open container (or as the root).
  Json* Insert(Json value) {
    if (mode_ != kDom) {
      Unusual();
      return nullptr;
    }
    if (stack_.empty()) {
      *root_ = std::move(value);
      return root_;
    }
    Json* top = stack_.back().node;
    if (top->is_object()) {
      Json& slot = (*top)[key_];
      slot = std::move(value);
      return &slot;
    }
    top->push_back(std::move(value));
    return &top->back();
  }
  bool Value(Json value) { return Insert(std::move(value)) != nullptr; }
  bool Open(Json container) {
    std::string key = stack_.empty() || !stack_.back().node->is_object()
                          ? std::string()
                          : key_;
    Json* node = Insert(std::move(container));
    if (node == nullptr) return false;
    // Children only ever go into the innermost container, so pointers to the
    // enclosing ones stay valid.
    stack_.push_back({node, std::move(key)});
    return true;
  }

  struct Frame {
    Json* node;
    std::string key;  // the key this container sits under in its parent
  };
  Json* root_;
  FlatModel* flat_;
  std::vector<Frame> stack_;
  std::string key_;
  Mode mode_ = kDom;
  int pair_size_ = 0;
  bool unusual_ = false;
  size_t error_position_ = 0;
  std::string error_message_;
};

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad())
    return absl::DataLossError(absl::StrCat("error reading ", path));
  return buffer.str();
}

}  // namespace

// ---------------------------------------------------------------------------

struct HfBpeTokenizer::Impl {
  BpeModel model;
  std::vector<AddedToken> added_tokens;
  AddedTokenMatcher raw_matcher;         // normalized == false
  AddedTokenMatcher normalized_matcher;  // normalized == true
  absl::flat_hash_map<std::string, int32_t> added_by_content;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Decoder> decoder;
  std::vector<Template> templates;

  // Indexed by id.
  std::vector<std::string> id_to_token;
  enum : uint8_t { kPresent = 1, kSpecial = 2 };
  std::vector<uint8_t> id_flags;

  int32_t bos_id = -1;
  int32_t eos_id = -1;

  absl::Status Load(const Json& root, FlatModel* flat, const Options& options);
  absl::Status LoadModel(const Json& root, FlatModel* flat);
  absl::Status LoadAddedTokens(const Json& root);
  void ResolveBosEos(const Options& options);

  // Splits `text` around the added tokens of `matcher`, honouring
  // lstrip/rstrip.
  void SplitAdded(const AddedTokenMatcher& matcher, std::string_view text,
                  bool at_start, std::vector<Segment>* out) const;
  absl::Status EncodeText(std::string_view text, bool at_start,
                          std::vector<int32_t>* ids) const;
  absl::Status EncodeNormalized(std::string_view text, bool at_start,
                                std::vector<int32_t>* ids) const;
};

absl::Status HfBpeTokenizer::Impl::LoadModel(const Json& root,
                                             FlatModel* flat) {
  HEARTH_ASSIGN_OR_RETURN(const Json* m, RequireObject(root, "model", ""));
  HEARTH_ASSIGN_OR_RETURN(std::string type,
                          OptionalString(*m, "type", "model", ""));
  if (type.empty()) {
    // Files from early tokenizers versions omit the type; BPE is the model with
    // merges.
    if (Find(*m, "merges") == nullptr && !flat->has_merges) {
      return KeyError("model.type", "is missing and model has no merges");
    }
    type = "BPE";
  }
  if (type != "BPE") return Unsupported("model", type);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    HEARTH_ASSIGN_OR_RETURN(std::string affix,
                            OptionalString(*m, key, "model", ""));
    if (!affix.empty()) {
      return absl::UnimplementedError(absl::StrCat(
          "tokenizer.json: model.", key, " is not supported by hearth"));
    }
  }
  // `dropout` is ignored: it randomises merges while training a model and is
  // null in every released tokenizer.
  HEARTH_ASSIGN_OR_RETURN(model.byte_fallback,
                          OptionalBool(*m, "byte_fallback", "model", false));
  HEARTH_ASSIGN_OR_RETURN(model.fuse_unk,
                          OptionalBool(*m, "fuse_unk", "model", false));
  HEARTH_ASSIGN_OR_RETURN(model.ignore_merges,
                          OptionalBool(*m, "ignore_merges", "model", false));

  if (!flat->has_vocab) {
    HEARTH_ASSIGN_OR_RETURN(const Json* vocab,
                            RequireObject(*m, "vocab", "model"));
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      HEARTH_ASSIGN_OR_RETURN(
          int32_t id, ToTokenId(it.value(), absl::StrCat("model.vocab[\"",
                                                         it.key(), "\"]")));
      flat->vocab.emplace_back(it.key(), id);
    }
  }
  model.vocab.reserve(flat->vocab.size());
  for (auto& [token, id] : flat->vocab) {
    model.vocab.insert_or_assign(std::move(token), id);
  }
  flat->vocab.clear();

  if (!flat->has_merges) {
    HEARTH_ASSIGN_OR_RETURN(const Json* merges,
                            RequireArray(*m, "merges", "model"));
    for (size_t i = 0; i < merges->size(); ++i) {
      const Json& entry = (*merges)[i];
      if (entry.is_string()) {
        flat->merges.push_back({entry.get<std::string>(), std::string(), true});
      } else if (entry.is_array() && entry.size() == 2 &&
                 entry[0].is_string() && entry[1].is_string()) {
        flat->merges.push_back(
            {entry[0].get<std::string>(), entry[1].get<std::string>(), false});
      } else {
        return KeyError(
            Index("model.merges", i),
            "must be a \"left right\" string or a [left, right] array");
      }
    }
  }
  if (flat->merges.size() >
      static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return KeyError("model.merges", "has too many entries");
  }
  model.merges.reserve(flat->merges.size());
  std::string merged;
  for (size_t i = 0; i < flat->merges.size(); ++i) {
    const FlatModel::Merge& entry = flat->merges[i];
    std::string_view left = entry.left;
    std::string_view right = entry.right;
    if (entry.legacy) {
      // "left right"; neither side can contain a space in this form.
      size_t space = left.find(' ');
      if (space == std::string_view::npos) {
        return KeyError(Index("model.merges", i),
                        "must be \"left right\" (no space found)");
      }
      right = left.substr(space + 1);
      left = left.substr(0, space);
    }
    auto l = model.vocab.find(AV(left));
    auto r = model.vocab.find(AV(right));
    for (auto [it, side] : {std::pair{l, left}, std::pair{r, right}}) {
      if (it == model.vocab.end()) {
        return KeyError(Index("model.merges", i),
                        absl::StrCat("names token \"", AV(side),
                                     "\" that is not in model.vocab"));
      }
    }
    merged.assign(left);
    merged.append(right);
    auto result = model.vocab.find(merged);
    if (result == model.vocab.end()) {
      return KeyError(Index("model.merges", i),
                      absl::StrCat("merges into \"", merged,
                                   "\" that is not in model.vocab"));
    }
    // Later duplicates win, as in tokenizers and transformers.js.
    model.merges.insert_or_assign(
        BpeModel::PairKey(l->second, r->second),
        BpeModel::Merge{static_cast<int32_t>(i), result->second});
  }
  flat->merges.clear();

  if (const Json* unk = Find(*m, "unk_token")) {
    if (!unk->is_string())
      return KeyError("model.unk_token", "must be a string or null");
    auto it = model.vocab.find(unk->get_ref<const std::string&>());
    if (it != model.vocab.end()) model.unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = model.vocab.find(absl::StrFormat("<0x%02X>", b));
    model.byte_ids[b] = it == model.vocab.end() ? -1 : it->second;
  }
  return absl::OkStatus();
}

absl::Status HfBpeTokenizer::Impl::LoadAddedTokens(const Json& root) {
  const Json* list = Find(root, "added_tokens");
  if (list == nullptr) return absl::OkStatus();
  if (!list->is_array()) return KeyError("added_tokens", "must be an array");
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& item = (*list)[i];
    std::string path = Index("added_tokens", i);
    if (!item.is_object()) return KeyError(path, "must be an object");
    AddedToken token;
    const Json* id = Find(item, "id");
    if (id == nullptr) return KeyError(Join(path, "id"), "is missing");
    HEARTH_ASSIGN_OR_RETURN(token.id, ToTokenId(*id, Join(path, "id")));
    HEARTH_ASSIGN_OR_RETURN(token.content,
                            RequireString(item, "content", path));
    if (token.content.empty())
      return KeyError(Join(path, "content"), "must not be empty");
    HEARTH_ASSIGN_OR_RETURN(token.special,
                            OptionalBool(item, "special", path, false));
    HEARTH_ASSIGN_OR_RETURN(token.lstrip,
                            OptionalBool(item, "lstrip", path, false));
    HEARTH_ASSIGN_OR_RETURN(token.rstrip,
                            OptionalBool(item, "rstrip", path, false));
    // tokenizers' default: special tokens are matched on the raw text.
    HEARTH_ASSIGN_OR_RETURN(
        token.normalized,
        OptionalBool(item, "normalized", path, !token.special));
    added_tokens.push_back(std::move(token));
  }
  return absl::OkStatus();
}

void HfBpeTokenizer::Impl::ResolveBosEos(const Options& options) {
  auto lookup = [this](const std::string& name) -> int32_t {
    if (name.empty()) return -1;
    if (auto it = added_by_content.find(name); it != added_by_content.end())
      return it->second;
    if (auto it = model.vocab.find(name); it != model.vocab.end())
      return it->second;
    return -1;
  };
  bos_id = lookup(options.bos_token);
  eos_id = lookup(options.eos_token);
  // The post-processor's template says which token it prepends.
  for (const Template& t : templates) {
    if (bos_id < 0 && !t.empty() && !t.front().is_sequence &&
        !t.front().ids.empty()) {
      bos_id = t.front().ids.front();
    }
  }
  for (const char* name :
       {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"}) {
    if (bos_id < 0) bos_id = lookup(name);
  }
  for (const char* name :
       {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"}) {
    if (eos_id < 0) eos_id = lookup(name);
  }
}

absl::Status HfBpeTokenizer::Impl::Load(const Json& root, FlatModel* flat,
                                        const Options& options) {
  HEARTH_RETURN_IF_ERROR(LoadModel(root, flat));
  HEARTH_RETURN_IF_ERROR(LoadAddedTokens(root));
  if (const Json* j = Find(root, "normalizer")) {
    HEARTH_ASSIGN_OR_RETURN(normalizer, ParseNormalizer(*j, "normalizer"));
  }
  if (const Json* j = Find(root, "pre_tokenizer")) {
    HEARTH_ASSIGN_OR_RETURN(pre_tokenizer,
                            ParsePreTokenizer(*j, "pre_tokenizer"));
  }
  if (const Json* j = Find(root, "decoder")) {
    HEARTH_ASSIGN_OR_RETURN(decoder, ParseDecoder(*j, "decoder"));
  }
  if (const Json* j = Find(root, "post_processor")) {
    HEARTH_RETURN_IF_ERROR(
        ParsePostProcessor(*j, "post_processor", &templates));
  }

  int32_t max_id = -1;
  for (const auto& [token, id] : model.vocab) max_id = std::max(max_id, id);
  for (const AddedToken& t : added_tokens) max_id = std::max(max_id, t.id);
  id_to_token.assign(static_cast<size_t>(max_id) + 1, std::string());
  id_flags.assign(static_cast<size_t>(max_id) + 1, 0);
  for (const auto& [token, id] : model.vocab) {
    id_to_token[id] = token;
    id_flags[id] |= kPresent;
  }
  for (size_t i = 0; i < added_tokens.size(); ++i) {
    const AddedToken& t = added_tokens[i];
    id_to_token[t.id] = t.content;
    id_flags[t.id] |= kPresent;
    if (t.special) id_flags[t.id] |= kSpecial;
    added_by_content.insert_or_assign(t.content, t.id);
    (t.normalized ? normalized_matcher : raw_matcher)
        .Add(t.content, static_cast<int32_t>(i));
  }
  for (const Template& t : templates) {
    for (const TemplatePiece& piece : t) {
      for (int32_t id : piece.ids) {
        if (id > max_id) {
          return KeyError("post_processor",
                          absl::StrCat("names token id ", id,
                                       " that is not in the vocabulary"));
        }
      }
    }
  }
  ResolveBosEos(options);
  return absl::OkStatus();
}

void HfBpeTokenizer::Impl::SplitAdded(const AddedTokenMatcher& matcher,
                                      std::string_view text, bool at_start,
                                      std::vector<Segment>* out) const {
  if (matcher.empty()) {
    out->push_back({text, -1, at_start});
    return;
  }
  std::vector<Segment> segments;
  size_t begin, end, text_start = 0;
  int32_t index;
  while (matcher.FindNext(text, text_start, &begin, &end, &index)) {
    segments.push_back({text.substr(text_start, begin - text_start), -1,
                        at_start && text_start == 0});
    segments.push_back({text.substr(begin, end - begin), index, false});
    text_start = end;
  }
  segments.push_back(
      {text.substr(text_start), -1, at_start && text_start == 0});
  // lstrip/rstrip tokens swallow the whitespace next to them.
  for (size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].token_index < 0) continue;
    const AddedToken& token = added_tokens[segments[i].token_index];
    if (token.lstrip && i > 0 && segments[i - 1].token_index < 0) {
      std::string_view& prev = segments[i - 1].text;
      prev = prev.substr(0, TrimRightWhitespace(prev));
    }
    if (token.rstrip && i + 1 < segments.size() &&
        segments[i + 1].token_index < 0) {
      std::string_view& next = segments[i + 1].text;
      next.remove_prefix(TrimLeftWhitespace(next));
    }
  }
  for (const Segment& s : segments) {
    if (s.token_index >= 0 || !s.text.empty()) out->push_back(s);
  }
}

absl::Status HfBpeTokenizer::Impl::EncodeText(std::string_view text,
                                              bool at_start,
                                              std::vector<int32_t>* ids) const {
  if (normalizer == nullptr) return EncodeNormalized(text, at_start, ids);
  std::string normalized(text);
  HEARTH_RETURN_IF_ERROR(normalizer->Apply(&normalized));
  if (normalized_matcher.empty())
    return EncodeNormalized(normalized, at_start, ids);
  std::vector<Segment> segments;
  SplitAdded(normalized_matcher, normalized, at_start, &segments);
  for (const Segment& s : segments) {
    if (s.token_index >= 0) {
      ids->push_back(added_tokens[s.token_index].id);
    } else {
      HEARTH_RETURN_IF_ERROR(EncodeNormalized(s.text, s.at_start, ids));
    }
  }
  return absl::OkStatus();
}

absl::Status HfBpeTokenizer::Impl::EncodeNormalized(
    std::string_view text, bool at_start, std::vector<int32_t>* ids) const {
  if (text.empty()) return absl::OkStatus();
  if (pre_tokenizer == nullptr) {
    model.EncodeWord(text, ids);
    return absl::OkStatus();
  }
  std::vector<std::string> pieces;
  pieces.emplace_back(text);
  HEARTH_RETURN_IF_ERROR(pre_tokenizer->Apply(&pieces, at_start));
  for (const std::string& piece : pieces) {
    if (!piece.empty()) model.EncodeWord(piece, ids);
  }
  return absl::OkStatus();
}

HfBpeTokenizer::HfBpeTokenizer(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
HfBpeTokenizer::~HfBpeTokenizer() = default;

absl::StatusOr<std::unique_ptr<HfBpeTokenizer>> HfBpeTokenizer::FromJson(
    std::string_view json_text, const Options& options) {
  // nlohmann reports problems by throwing; nothing is allowed to escape.
  try {
    Json root;
    FlatModel flat;
    StreamingLoader loader(&root, &flat);
    if (!Json::sax_parse(json_text.begin(), json_text.end(), &loader)) {
      if (!loader.unusual()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tokenizer.json is not valid JSON (byte ", loader.error_position(),
            "): ", loader.error_message()));
      }
      // Valid JSON of a shape the streaming loader does not take: read it the
      // plain way so that the checks below can say what is wrong.
      flat = FlatModel();
      root = Json::parse(json_text.begin(), json_text.end());
    }
    if (!root.is_object()) {
      return absl::InvalidArgumentError(
          "tokenizer.json: the top level must be an object");
    }
    auto impl = std::make_unique<Impl>();
    HEARTH_RETURN_IF_ERROR(impl->Load(root, &flat, options));
    return std::unique_ptr<HfBpeTokenizer>(new HfBpeTokenizer(std::move(impl)));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "tokenizer.json: out of memory while loading");
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<HfBpeTokenizer>> HfBpeTokenizer::FromFile(
    const std::string& path, const Options& options) {
  HEARTH_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto tokenizer = FromJson(text, options);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::vector<int32_t>> HfBpeTokenizer::Encode(
    std::string_view text, bool add_special_tokens) const {
  // Symbol indices inside a word are int32_t.
  if (text.size() > kMaxTextBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is too long (", text.size(), " bytes; the limit is ",
                     kMaxTextBytes, ")"));
  }
  if (size_t bad = utf8::FindInvalid(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is not valid UTF-8 at byte offset ", bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Segment> segments;
  impl_->SplitAdded(impl_->raw_matcher, text, /*at_start=*/true, &segments);
  for (const Segment& s : segments) {
    if (s.token_index >= 0) {
      ids.push_back(impl_->added_tokens[s.token_index].id);
    } else {
      HEARTH_RETURN_IF_ERROR(impl_->EncodeText(s.text, s.at_start, &ids));
    }
  }
  if (!add_special_tokens || impl_->templates.empty()) return ids;
  for (const Template& t : impl_->templates) {
    std::vector<int32_t> wrapped;
    wrapped.reserve(ids.size() + 4);
    for (const TemplatePiece& piece : t) {
      if (piece.is_sequence) {
        wrapped.insert(wrapped.end(), ids.begin(), ids.end());
      } else {
        wrapped.insert(wrapped.end(), piece.ids.begin(), piece.ids.end());
      }
    }
    ids = std::move(wrapped);
  }
  return ids;
}

absl::StatusOr<std::string> HfBpeTokenizer::Decode(
    absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  const int32_t size = vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (id < 0 || id >= size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " at index ", i,
                       " is out of range [0, ", size, ")"));
    }
    uint8_t flags = impl_->id_flags[id];
    if (!(flags & Impl::kPresent)) continue;
    if (skip_special_tokens && (flags & Impl::kSpecial)) continue;
    tokens.push_back(impl_->id_to_token[id]);
  }
  if (impl_->decoder == nullptr) return absl::StrJoin(tokens, " ");
  HEARTH_RETURN_IF_ERROR(impl_->decoder->Apply(&tokens));
  return absl::StrJoin(tokens, "");
}

int32_t HfBpeTokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->id_to_token.size());
}
int32_t HfBpeTokenizer::bos_id() const { return impl_->bos_id; }
int32_t HfBpeTokenizer::eos_id() const { return impl_->eos_id; }

std::optional<int32_t> HfBpeTokenizer::TokenToId(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(AV(token));
      it != impl_->added_by_content.end()) {
    return it->second;
  }
  if (auto it = impl_->model.vocab.find(AV(token));
      it != impl_->model.vocab.end()) {
    return it->second;
  }
  return std::nullopt;
}

std::string HfBpeTokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  return impl_->id_to_token[id];
}

bool HfBpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && (impl_->id_flags[id] & Impl::kSpecial);
}

}  // namespace hearth::tokenizer
