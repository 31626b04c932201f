#include "common/tokenizer/sentencepiece_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/sentencepiece_model.h"
#include "common/tokenizer/utf8.h"

namespace hearth::tokenizer {
namespace {

using PieceType = SentencePieceModel::PieceType;

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"

// This abseil does not alias std::string_view, so its string helpers and
// string-keyed hash maps take absl::string_view.
absl::string_view Absl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

struct SentencePieceTokenizer::Impl {
  SentencePieceModel model;
  // What SentencePiece's model_interface calls pieces_ (NORMAL, USER_DEFINED
  // and UNUSED pieces: those merges may produce) and reserved_id_map_ (the
  // rest: control, unknown, byte pieces).
  absl::flat_hash_map<std::string, int32_t> mergeable;
  absl::flat_hash_map<std::string, int32_t> reserved;
  std::vector<std::string> user_defined;  // longest first
  // For UNUSED pieces that merges produced: the two pieces they were made of,
  // so that they can be split again (bpe_model.cc's rev_merge).
  int32_t unk_id = -1;
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t byte_ids[256];

  int32_t PieceToId(std::string_view piece) const {
    if (auto it = mergeable.find(Absl(piece)); it != mergeable.end())
      return it->second;
    if (auto it = reserved.find(Absl(piece)); it != reserved.end())
      return it->second;
    return -1;
  }
  PieceType Type(int32_t id) const { return model.pieces[id].type; }

  // SentencePiece's identity normalizer: optional removal of leading, trailing
  // and repeated spaces, the dummy prefix, spaces escaped as "▁".
  std::string Normalize(std::string_view text) const;
  // bpe_model.cc's Encode on normalized text, then the processor's byte
  // fallback / unknown handling.
  void EncodeNormalized(std::string_view normalized,
                        std::vector<int32_t>* ids) const;
};

std::string SentencePieceTokenizer::Impl::Normalize(
    std::string_view text) const {
  const bool remove_ws = model.remove_extra_whitespaces;
  if (remove_ws) {
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  }
  std::string out;
  if (text.empty()) return out;
  const std::string space =
      model.escape_whitespaces ? std::string(kSpaceSymbol) : std::string(" ");
  out.reserve(text.size() + text.size() / 2 + 3);
  if (model.add_dummy_prefix) out += space;
  bool prev_space = false;
  size_t i = 0;
  while (i < text.size()) {
    // User-defined symbols are never normalized.
    bool matched = false;
    for (const std::string& u : user_defined) {
      if (StartsWith(text.substr(i), u)) {
        out += u;
        i += u.size();
        prev_space = false;
        matched = true;
        break;
      }
    }
    if (matched) continue;
    if (text[i] == ' ') {
      if (!(remove_ws && prev_space)) out += space;
      prev_space = true;
      ++i;
      continue;
    }
    out += text[i++];
    prev_space = false;
  }
  if (remove_ws) {
    while (EndsWith(out, space)) out.resize(out.size() - space.size());
  }
  return out;
}

void SentencePieceTokenizer::Impl::EncodeNormalized(
    std::string_view normalized, std::vector<int32_t>* ids) const {
  // Symbols are a doubly linked list over `normalized`; a max-heap of adjacent
  // pairs whose concatenation is a piece, by score, then leftmost first.
  struct Symbol {
    int prev;
    int next;
    std::string_view piece;
  };
  struct Pair {
    int left;
    int right;
    float score;
    size_t size;
  };
  struct Lower {
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };
  std::vector<Symbol> symbols;
  symbols.reserve(normalized.size());
  for (size_t i = 0; i < normalized.size();) {
    size_t len = 0;
    for (const std::string& u : user_defined) {
      if (StartsWith(normalized.substr(i), u)) {
        len = u.size();
        break;
      }
    }
    if (len == 0) {
      len = utf8::SequenceLength(normalized, i);
      if (len == 0) len = 1;  // unreachable: the text was validated
    }
    const int n = static_cast<int>(symbols.size());
    symbols.push_back({n - 1, n + 1, normalized.substr(i, len)});
    i += len;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  std::priority_queue<Pair, std::vector<Pair>, Lower> agenda;
  auto maybe_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const std::string_view merged(
        symbols[left].piece.data(),
        symbols[left].piece.size() + symbols[right].piece.size());
    auto it = mergeable.find(Absl(merged));
    if (it == mergeable.end()) return;
    agenda.push({left, right, model.pieces[it->second].score, merged.size()});
  };
  for (size_t i = 1; i < symbols.size(); ++i) {
    maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));
  }
  // Pieces made of two others, remembered for UNUSED pieces.
  absl::flat_hash_map<absl::string_view,
                      std::pair<std::string_view, std::string_view>>
      rev_merge;
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    // Stale entry: one side was merged away or changed since.
    if (left.piece.empty() || right.piece.empty() ||
        left.piece.size() + right.piece.size() != top.size) {
      continue;
    }
    const std::string_view merged(left.piece.data(), top.size);
    if (Type(mergeable.find(Absl(merged))->second) == PieceType::kUnused) {
      rev_merge[Absl(merged)] = {left.piece, right.piece};
    }
    left.piece = merged;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.piece = std::string_view();
    maybe_add(left.prev, top.left);
    maybe_add(top.left, left.next);
  }

  bool last_unk = false;
  auto emit = [&](std::string_view piece, auto&& self) -> void {
    const int32_t id = PieceToId(piece);
    if (id >= 0 && Type(id) == PieceType::kUnused) {
      if (auto it = rev_merge.find(Absl(piece)); it != rev_merge.end()) {
        self(it->second.first, self);
        self(it->second.second, self);
        return;
      }
    }
    if (id >= 0 && Type(id) != PieceType::kUnknown) {
      ids->push_back(id);
      last_unk = false;
      return;
    }
    if (model.byte_fallback) {
      for (unsigned char c : piece) ids->push_back(byte_ids[c]);
      last_unk = false;
      return;
    }
    // SentencePieceProcessor folds a run of unknown pieces into one.
    if (!last_unk) ids->push_back(unk_id);
    last_unk = true;
  };
  for (int i = 0; i >= 0; i = symbols[i].next) emit(symbols[i].piece, emit);
}

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<Impl> impl,
                                               const Options& options)
    : impl_(std::move(impl)), options_(options) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>>
SentencePieceTokenizer::FromFile(const std::string& path,
                                 const Options& options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  auto tok = FromSerialized(bytes.str(), options);
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(path, ": ", tok.status().message()));
  }
  return tok;
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>>
SentencePieceTokenizer::FromSerialized(std::string_view serialized,
                                       const Options& options) {
  auto impl = std::make_unique<Impl>();
  HEARTH_ASSIGN_OR_RETURN(impl->model, ParseSentencePieceModel(serialized));
  const SentencePieceModel& m = impl->model;
  if (m.model_type != SentencePieceModel::ModelType::kBpe) {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer.model: trainer_spec.model_type ",
        ModelTypeName(m.model_type),
        " is not supported (only BPE, as in Llama-2, TinyLlama and Mistral)"));
  }
  if (m.has_precompiled_charsmap) {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer.model: normalizer_spec \"", m.normalizer_name,
        "\" has a precompiled_charsmap; only the identity normalizer (as in "
        "Llama-2, TinyLlama and Mistral) is supported"));
  }
  if (m.treat_whitespace_as_suffix) {
    return absl::UnimplementedError(
        "tokenizer.model: trainer_spec.treat_whitespace_as_suffix is not "
        "supported");
  }
  std::fill(std::begin(impl->byte_ids), std::end(impl->byte_ids), -1);
  int bytes_seen = 0;
  for (int32_t id = 0; id < static_cast<int32_t>(m.pieces.size()); ++id) {
    const SentencePieceModel::Piece& p = m.pieces[id];
    if (p.piece.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.model: piece ", id, " is empty"));
    }
    const bool mergeable = p.type == PieceType::kNormal ||
                           p.type == PieceType::kUserDefined ||
                           p.type == PieceType::kUnused;
    auto& map = mergeable ? impl->mergeable : impl->reserved;
    if (!map.emplace(p.piece, id).second ||
        (mergeable ? impl->reserved : impl->mergeable).contains(p.piece)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer.model: piece ", id, " \"", p.piece, "\" is duplicated"));
    }
    if (p.type == PieceType::kUserDefined)
      impl->user_defined.push_back(p.piece);
    if (p.type == PieceType::kUnknown && impl->unk_id < 0) impl->unk_id = id;
    if (p.type == PieceType::kByte) {
      unsigned int b;
      char tail;
      if (p.piece.size() != 6 ||
          std::sscanf(p.piece.c_str(), "<0x%2X>%c", &b, &tail) != 1 ||
          b > 255) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.model: BYTE piece ", id, " is \"", p.piece,
                         "\", not <0xNN>"));
      }
      if (impl->byte_ids[b] < 0) ++bytes_seen;
      impl->byte_ids[b] = id;
    }
  }
  if (impl->unk_id < 0) {
    return absl::InvalidArgumentError(
        "tokenizer.model has no UNKNOWN piece (trainer_spec.unk_piece)");
  }
  if (m.byte_fallback && bytes_seen != 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer.model: trainer_spec.byte_fallback is set but only ",
        bytes_seen, " of the 256 <0xNN> BYTE pieces exist"));
  }
  std::sort(impl->user_defined.begin(), impl->user_defined.end(),
            [](const std::string& a, const std::string& b) {
              return a.size() > b.size();
            });
  auto control_id = [&](const std::string& text) -> int32_t {
    const int32_t id = impl->PieceToId(text);
    return id >= 0 && impl->Type(id) == PieceType::kControl ? id : -1;
  };
  impl->bos_id = control_id(m.bos_piece);
  impl->eos_id = control_id(m.eos_piece);
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(std::move(impl), options));
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(
    std::string_view text, bool add_special_tokens) const {
  if (size_t bad = utf8::FindInvalid(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is not valid UTF-8 at byte offset ", bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 2 + 4);
  if (add_special_tokens && options_.add_bos && bos_id() >= 0)
    ids.push_back(bos_id());
  impl_->EncodeNormalized(impl_->Normalize(text), &ids);
  if (add_special_tokens && options_.add_eos && eos_id() >= 0)
    ids.push_back(eos_id());
  return ids;
}

absl::StatusOr<std::string> SentencePieceTokenizer::Decode(
    absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  const int32_t size = vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", ids[i], " at index ", i,
                       " is out of range [0, ", size, ")"));
    }
  }
  // As SentencePieceProcessor::Decode: control pieces vanish, the unknown
  // piece reads as unk_surface, runs of byte pieces are decoded together
  // (lossily), "▁" is a space, and the first piece's leading "▁" (the dummy
  // prefix) is dropped. Control pieces kept on request (skip_special_tokens =
  // false) are written as their text; a run after one keeps its leading space,
  // the way the tokenizer.json of the same model decodes it.
  const SentencePieceModel& m = impl_->model;
  const bool strip_first = m.add_dummy_prefix || m.remove_extra_whitespaces;
  std::string out;
  std::string bytes;
  bool at_start = true;
  auto text = [&](std::string_view piece) {
    if (at_start && strip_first && StartsWith(piece, kSpaceSymbol)) {
      piece.remove_prefix(kSpaceSymbol.size());
      // Text that was normalized this way had no leading spaces at all.
      if (m.remove_extra_whitespaces) {
        while (StartsWith(piece, kSpaceSymbol))
          piece.remove_prefix(kSpaceSymbol.size());
        if (piece.empty()) return;
      }
    }
    absl::StrAppend(
        &out, absl::StrReplaceAll(Absl(piece), {{Absl(kSpaceSymbol), " "}}));
    at_start = false;
  };
  auto flush_bytes = [&]() {
    if (bytes.empty()) return;
    text(utf8::DecodeLossy(bytes));
    bytes.clear();
  };
  for (int32_t id : ids) {
    const SentencePieceModel::Piece& p = m.pieces[id];
    if (p.type == PieceType::kByte) {
      for (int b = 0; b < 256; ++b) {
        if (impl_->byte_ids[b] == id) {
          bytes.push_back(static_cast<char>(b));
          break;
        }
      }
      continue;
    }
    flush_bytes();
    switch (p.type) {
      case PieceType::kControl:
        if (!skip_special_tokens) {
          out += p.piece;
          at_start = false;
        }
        break;
      case PieceType::kUnknown:
        out += m.unk_surface;
        at_start = false;
        break;
      default:
        text(p.piece);
    }
  }
  flush_bytes();
  return out;
}

int32_t SentencePieceTokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->model.pieces.size());
}
int32_t SentencePieceTokenizer::bos_id() const { return impl_->bos_id; }
int32_t SentencePieceTokenizer::eos_id() const { return impl_->eos_id; }

std::optional<int32_t> SentencePieceTokenizer::TokenToId(
    std::string_view token) const {
  const int32_t id = impl_->PieceToId(token);
  if (id < 0) return std::nullopt;
  return id;
}

std::string SentencePieceTokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  return impl_->model.pieces[id].piece;
}

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->Type(id) == PieceType::kControl;
}

}  // namespace hearth::tokenizer
