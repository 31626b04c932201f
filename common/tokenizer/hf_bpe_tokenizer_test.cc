#include "common/tokenizer/hf_bpe_tokenizer.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hearth::tokenizer {
namespace {

using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

// gmock is not available; a tiny substring matcher keeps messages readable.
::testing::AssertionResult Contains(absl::string_view haystack,
                                    absl::string_view needle) {
  if (haystack.find(needle) != std::string_view::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << haystack << "\" does not contain \"" << needle << "\"";
}

// The pre-tokenizer regex of Llama-3's tokenizer.json.
constexpr char kLlama3Regex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// GPT-2's byte -> printable character table, written out independently of the
// implementation: printable Latin-1 maps to itself, the rest to U+0100 onwards.
std::string ByteChar(int b) {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int next = 256;
    for (int i = 0; i < 256; ++i) {
      bool printable =
          (i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE);
      int cp = printable ? i : next++;
      std::string s;
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
      t[i] = s;
    }
    return t;
  }();
  return table[b];
}

Json Llama3PreTokenizer() {
  return Json{{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"},
                 {"pattern", {{"Regex", kLlama3Regex}}},
                 {"behavior", "Isolated"},
                 {"invert", false}},
                {{"type", "ByteLevel"},
                 {"add_prefix_space", false},
                 {"trim_offsets", true},
                 {"use_regex", false}}}}};
}

// A Llama-3-shaped tokenizer whose vocabulary is just the 256 byte characters
// (id = byte value) plus `extra` tokens, with the given merges.
Json BytesOnlyTokenizer(const std::vector<std::string>& extra,
                        const std::vector<std::string>& merges) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  for (size_t i = 0; i < extra.size(); ++i)
    vocab[extra[i]] = 256 + static_cast<int>(i);
  return Json{{"version", "1.0"},
              {"added_tokens", Json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", Llama3PreTokenizer()},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model",
               {{"type", "BPE"},
                {"vocab", vocab},
                {"merges", merges},
                {"ignore_merges", false}}}};
}

// Like BytesOnlyTokenizer, with a ByteLevel(use_regex=false) step after
// `pre_tokenizer` (none if null) and the given normalizer.
Json BytesOnlyWith(const Json& normalizer, const Json& pre_tokenizer,
                   const std::vector<std::string>& extra,
                   const std::vector<std::string>& merges) {
  Json j = BytesOnlyTokenizer(extra, merges);
  Json steps = Json::array();
  if (!pre_tokenizer.is_null()) steps.push_back(pre_tokenizer);
  steps.push_back({{"type", "ByteLevel"},
                   {"add_prefix_space", false},
                   {"use_regex", false}});
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
  j["normalizer"] = normalizer;
  return j;
}

std::unique_ptr<HfBpeTokenizer> MustLoad(const Json& j) {
  auto tok = HfBpeTokenizer::FromJson(j.dump());
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

std::vector<int32_t> MustEncode(const Tokenizer& tok, std::string_view text,
                                bool special) {
  auto ids = tok.Encode(text, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// A tiny hand-checked byte-level BPE (see the comments at each expectation).
constexpr char kTinyByteLevel[] = R"json({
  "version": "1.0",
  "added_tokens": [
    {"id": 18, "content": "<|bos|>", "single_word": false, "lstrip": false,
     "rstrip": false, "normalized": false, "special": true},
    {"id": 20, "content": "<mask>", "single_word": false, "lstrip": true,
     "rstrip": true, "normalized": false, "special": false}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": " ?\\p{L}+| ?[^\\s\\p{L}]+|\\s+"},
     "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
  "post_processor": {"type": "Sequence", "processors": [
    {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
    {"type": "TemplateProcessing",
     "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}],
     "pair": [],
     "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [18], "tokens": ["<|bos|>"]}}}]},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
              "use_regex": true},
  "model": {
    "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
    "ignore_merges": IGNORE_MERGES,
    "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "\u0120": 4, "w": 5, "r": 6, "d": 7,
              "he": 8, "ll": 9, "llo": 10, "hello": 11, "\u0120w": 12, "or": 13,
              "\u0120wor": 14, "ld": 15, "\u0120world": 16, "!": 17, "\u0120he": 19},
    "merges": MERGES
  }
})json";

std::string TinyByteLevel(bool ignore_merges, bool array_merges) {
  std::string text = kTinyByteLevel;
  const char* merges =
      array_merges
          ? R"([["h","e"],["l","l"],["ll","o"],["he","llo"],["\u0120","w"],["o","r"],)"
            R"(["\u0120w","or"],["l","d"],["\u0120wor","ld"]])"
          : R"(["h e","l l","ll o","he llo","\u0120 w","o r","\u0120w or","l d","\u0120wor ld"])";
  // IGNORE_MERGES first: it contains "MERGES".
  text.replace(text.find("IGNORE_MERGES"), 13,
               ignore_merges ? "true" : "false");
  text.replace(text.find("MERGES"), 6, merges);
  return text;
}

TEST(HfBpeTokenizerTest, ByteLevelMergesByRank) {
  auto tok = HfBpeTokenizer::FromJson(TinyByteLevel(false, false));
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "hello": h e l l o -> (h,e)#0 -> he l l o -> (l,l)#1 -> he ll o -> (ll,o)#2
  // -> he llo -> (he,llo)#3 -> hello(11). " world" -> Ġ w o r l d -> (Ġ,w)#4,
  // (o,r)#5, (Ġw,or)#6, (l,d)#7, (Ġwor,ld)#8 -> Ġworld(16). "!" -> 17.
  EXPECT_EQ(MustEncode(**tok, "hello world!", false), (Ids{11, 16, 17}));
  // TemplateProcessing prepends <|bos|>.
  EXPECT_EQ(MustEncode(**tok, "hello world!", true), (Ids{18, 11, 16, 17}));
  // Equal ranks: the leftmost pair merges first. "lll" -> ll l.
  EXPECT_EQ(MustEncode(**tok, "lll", false), (Ids{9, 2}));
  EXPECT_EQ((*tok)->bos_id(), 18);
  EXPECT_EQ((*tok)->vocab_size(), 21);
}

TEST(HfBpeTokenizerTest, MergesAsArraysMatchMergesAsStrings) {
  auto a = HfBpeTokenizer::FromJson(TinyByteLevel(false, false));
  auto b = HfBpeTokenizer::FromJson(TinyByteLevel(false, true));
  ASSERT_TRUE(a.ok() && b.ok());
  for (const char* text : {"hello world!", "lll", "he llo wor ld", " hello"}) {
    EXPECT_EQ(MustEncode(**a, text, true), MustEncode(**b, text, true)) << text;
  }
}

TEST(HfBpeTokenizerTest, IgnoreMergesTakesWholeWordFromVocab) {
  auto plain = HfBpeTokenizer::FromJson(TinyByteLevel(false, false));
  auto ignore = HfBpeTokenizer::FromJson(TinyByteLevel(true, false));
  ASSERT_TRUE(plain.ok() && ignore.ok());
  // "Ġhe" (19) is in the vocabulary but no merge builds it.
  EXPECT_EQ(MustEncode(**plain, " he", false), (Ids{4, 8}));
  EXPECT_EQ(MustEncode(**ignore, " he", false), (Ids{19}));
}

TEST(HfBpeTokenizerTest, AddedTokensAreSplitOutFirst) {
  auto tok = HfBpeTokenizer::FromJson(TinyByteLevel(false, false));
  ASSERT_TRUE(tok.ok());
  // "world" without its space: w (o,r) (l,d) -> w or ld.
  EXPECT_EQ(MustEncode(**tok, "hello<|bos|>world", false),
            (Ids{11, 18, 5, 13, 15}));
  // <mask> has lstrip and rstrip: the spaces around it disappear.
  EXPECT_EQ(MustEncode(**tok, "hello <mask> world", false),
            (Ids{11, 20, 5, 13, 15}));
  EXPECT_EQ((*tok)->TokenToId("<mask>"), 20);
  EXPECT_EQ((*tok)->TokenToId("\xC4\xA0world"), 16);
  EXPECT_EQ((*tok)->TokenToId("nope"), std::nullopt);
  EXPECT_EQ((*tok)->IdToToken(11), "hello");
  EXPECT_TRUE((*tok)->IsSpecial(18));
  EXPECT_FALSE((*tok)->IsSpecial(20));
}

TEST(HfBpeTokenizerTest, ByteLevelDecode) {
  auto tok = HfBpeTokenizer::FromJson(TinyByteLevel(false, false));
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->Decode({18, 11, 16, 17}, true).value(), "hello world!");
  EXPECT_EQ((*tok)->Decode({18, 11, 16, 17}, false).value(),
            "<|bos|>hello world!");
  auto bad = (*tok)->Decode({11, 99}, false);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(bad.status().message(), "index 1"));
}

TEST(HfBpeTokenizerTest, RejectsInvalidUtf8WithOffset) {
  auto tok = HfBpeTokenizer::FromJson(TinyByteLevel(false, false));
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("hel\xC3(", false);
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ids.status().message(), "byte offset 3"));
}

TEST(HfBpeTokenizerTest, Llama3RegexSplitsBeforeMerging) {
  // Merge "o Ġ" would glue words together if the regex did not split first.
  auto tok = MustLoad(BytesOnlyTokenizer({"o\xC4\xA0"}, {"o \xC4\xA0"}));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(MustEncode(*tok, "o o", false), (Ids{'o', ' ', 'o'}));
}

TEST(HfBpeTokenizerTest, Llama3RegexContractionsAreCaseInsensitive) {
  // "'Sa": (?i:'s) takes "'S" and leaves "a". Were it case-sensitive, "'Sa"
  // would be one piece and "S a" (rank 0) would win.
  auto tok = MustLoad(BytesOnlyTokenizer({"Sa", "'S"}, {"S a", "' S"}));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(MustEncode(*tok, "'Sa", false), (Ids{257, 'a'}));
}

TEST(HfBpeTokenizerTest, Llama3RegexGroupsDigitsByThree) {
  // "12345" -> "123" "45". Unsplit, "3 4" (rank 0) would merge first.
  auto tok = MustLoad(BytesOnlyTokenizer({"34", "12", "123", "45"},
                                         {"3 4", "1 2", "12 3", "4 5"}));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(MustEncode(*tok, "12345", false), (Ids{258, 259}));
}

TEST(HfBpeTokenizerTest, ByteLevelRoundTripsAnyText) {
  auto tok = MustLoad(BytesOnlyTokenizer({}, {}));
  ASSERT_NE(tok, nullptr);
  for (const char* text :
       {"日本語", "👨‍👩‍👧 emoji", "tabs\t\tand\n\n  spaces   ",
        "e\xCC\x81t\xC3\xA9"}) {
    auto ids = MustEncode(*tok, text, false);
    EXPECT_EQ(ids.size(), std::string(text).size()) << text;  // one id per byte
    EXPECT_EQ(tok->Decode(ids, false).value(), text);
  }
  // A character cut in half decodes to U+FFFD, as in tokenizers.
  EXPECT_EQ(tok->Decode({0xE6, 0x97}, false).value(), "\xEF\xBF\xBD");
}

TEST(HfBpeTokenizerTest, SplitBehaviors) {
  const std::string sp = ByteChar(' ');
  // Merges that only fire when a space shares a piece with its neighbour.
  const std::vector<std::string> extra = {"a" + sp, sp + "b", sp + sp};
  const std::vector<std::string> merges = {"a " + sp, sp + " b", sp + " " + sp};
  auto split = [&](const char* behavior) {
    return MustLoad(BytesOnlyWith(nullptr,
                                  {{"type", "Split"},
                                   {"pattern", {{"String", " "}}},
                                   {"behavior", behavior},
                                   {"invert", false}},
                                  extra, merges));
  };
  EXPECT_EQ(MustEncode(*split("Removed"), "a b", false), (Ids{'a', 'b'}));
  EXPECT_EQ(MustEncode(*split("Isolated"), "a b", false), (Ids{'a', ' ', 'b'}));
  EXPECT_EQ(MustEncode(*split("MergedWithPrevious"), "a b", false),
            (Ids{256, 'b'}));
  EXPECT_EQ(MustEncode(*split("MergedWithNext"), "a b", false),
            (Ids{'a', 257}));
  EXPECT_EQ(MustEncode(*split("Isolated"), "a  b", false),
            (Ids{'a', ' ', ' ', 'b'}));
  EXPECT_EQ(MustEncode(*split("Contiguous"), "a  b", false),
            (Ids{'a', 258, 'b'}));
}

TEST(HfBpeTokenizerTest, DigitsAndStrip) {
  auto digits = [](bool individual) {
    return MustLoad(BytesOnlyWith(
        {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
        {{"type", "Digits"}, {"individual_digits", individual}}, {"12"},
        {"1 2"}));
  };
  EXPECT_EQ(MustEncode(*digits(false), "a123", false), (Ids{'a', 256, '3'}));
  EXPECT_EQ(MustEncode(*digits(true), "a123", false),
            (Ids{'a', '1', '2', '3'}));
  // Strip removes Unicode whitespace at both ends (here U+3000 and \t).
  EXPECT_EQ(MustEncode(*digits(false), "\xE3\x80\x80 a \t", false), (Ids{'a'}));
}

// A tiny SentencePiece-style (Llama-2) tokenizer.json. Ids 3..258 are the byte
// tokens <0x00>..<0xFF>.
Json TinySentencePiece(bool byte_fallback, bool metaspace) {
  Json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  char name[8];
  for (int b = 0; b < 256; ++b) {
    snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab["\u2581"] = 259;
  vocab["h"] = 260;
  vocab["i"] = 261;
  vocab["\u2581h"] = 262;
  vocab["\u2581hi"] = 263;
  Json added = Json::array();
  for (int id = 0; id < 3; ++id) {
    added.push_back({{"id", id},
                     {"content", id == 0   ? "<unk>"
                                 : id == 1 ? "<s>"
                                           : "</s>"},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  Json j = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}},
          {{"type", "Replace"},
           {"pattern", {{"String", " "}}},
           {"content", "\u2581"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens",
         {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"},
           {"pattern", {{"String", "\u2581"}}},
           {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", byte_fallback},
        {"vocab", vocab},
        {"merges", {"\u2581 h", "\u2581h i"}}}}};
  if (metaspace) {
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {{"type", "Metaspace"},
                          {"replacement", "\u2581"},
                          {"prepend_scheme", "first"},
                          {"split", true}};
    j["decoder"] = {{"type", "Metaspace"},
                    {"replacement", "\u2581"},
                    {"prepend_scheme", "first"},
                    {"split", true}};
  }
  return j;
}

TEST(HfBpeTokenizerTest, SentencePieceStyleMerges) {
  auto tok = MustLoad(TinySentencePiece(true, false));
  ASSERT_NE(tok, nullptr);
  // "▁hi▁hi": (▁,h)#0 twice, then (▁h,i)#1 twice -> ▁hi ▁hi.
  EXPECT_EQ(MustEncode(*tok, "hi hi", false), (Ids{263, 263}));
  EXPECT_EQ(MustEncode(*tok, "hi hi", true), (Ids{1, 263, 263}));
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->Decode({1, 263, 263}, true).value(), "hi hi");
  EXPECT_EQ(tok->Decode({1, 263, 263}, false).value(), "<s> hi hi");
}

TEST(HfBpeTokenizerTest, ByteFallbackSpellsUnknownCharactersInBytes) {
  auto tok = MustLoad(TinySentencePiece(true, false));
  ASSERT_NE(tok, nullptr);
  // 日 = E6 97 A5 -> <0xE6> <0x97> <0xA5> = 3 + byte.
  std::vector<int32_t> ids = MustEncode(*tok, "hi 日", false);
  EXPECT_EQ(ids, (Ids{263, 259, 3 + 0xE6, 3 + 0x97, 3 + 0xA5}));
  EXPECT_EQ(tok->Decode(ids, false).value(), "hi 日");
}

TEST(HfBpeTokenizerTest, FuseUnkWithoutByteFallback) {
  auto tok = MustLoad(TinySentencePiece(false, false));
  ASSERT_NE(tok, nullptr);
  // 日本 are both unknown; fuse_unk makes one <unk>.
  EXPECT_EQ(MustEncode(*tok, "hi 日本", false), (Ids{263, 259, 0}));
}

TEST(HfBpeTokenizerTest, MetaspacePrependsOnlyAtTheStart) {
  auto tok = MustLoad(TinySentencePiece(true, true));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(MustEncode(*tok, "hi hi", false), (Ids{263, 263}));
  // After <s> the text no longer starts the input: no ▁ is prepended.
  EXPECT_EQ(MustEncode(*tok, "<s>hi", false), (Ids{1, 260, 261}));
  EXPECT_EQ(tok->Decode({263, 263}, false).value(), "hi hi");
}

struct MalformedCase {
  const char* name;
  std::string json;
  absl::StatusCode code;
  const char* message;  // must appear in the error
};

std::string WithModel(const std::string& model, const std::string& rest = "") {
  return R"({"added_tokens": [], )" + rest + R"("model": )" + model + "}";
}

TEST(HfBpeTokenizerTest, MalformedFilesGiveClearErrors) {
  const std::string ok_vocab = R"("vocab": {"a": 0, "b": 1, "ab": 2})";
  const std::vector<MalformedCase> cases = {
      {"not json", "{\"model\": ", absl::StatusCode::kInvalidArgument,
       "not valid JSON"},
      {"top level array", "[]", absl::StatusCode::kInvalidArgument,
       "top level"},
      {"no model", "{}", absl::StatusCode::kInvalidArgument,
       "model is missing"},
      {"missing vocab", WithModel(R"({"type": "BPE", "merges": []})"),
       absl::StatusCode::kInvalidArgument, "model.vocab is missing"},
      {"vocab not object",
       WithModel(R"({"type": "BPE", "vocab": [], "merges": []})"),
       absl::StatusCode::kInvalidArgument, "model.vocab must be an object"},
      {"vocab id not integer",
       WithModel(R"({"type": "BPE", "vocab": {"a": "x"}, "merges": []})"),
       absl::StatusCode::kInvalidArgument, "model.vocab[\"a\"]"},
      {"vocab id too large",
       WithModel(
           R"({"type": "BPE", "vocab": {"a": 2000000000}, "merges": []})"),
       absl::StatusCode::kInvalidArgument, "model.vocab[\"a\"]"},
      {"missing merges", WithModel(R"({"type": "BPE", )" + ok_vocab + "}"),
       absl::StatusCode::kInvalidArgument, "model.merges is missing"},
      {"merge without space",
       WithModel(R"({"type": "BPE", )" + ok_vocab + R"(, "merges": ["ab"]})"),
       absl::StatusCode::kInvalidArgument, "model.merges[0]"},
      {"merge not string",
       WithModel(R"({"type": "BPE", )" + ok_vocab +
                 R"(, "merges": ["a b", 7]})"),
       absl::StatusCode::kInvalidArgument, "model.merges[1]"},
      {"merge unknown token",
       WithModel(R"({"type": "BPE", )" + ok_vocab +
                 R"(, "merges": [["a", "c"]]})"),
       absl::StatusCode::kInvalidArgument, "\"c\" that is not in model.vocab"},
      {"merge result unknown",
       WithModel(R"({"type": "BPE", )" + ok_vocab + R"(, "merges": ["b a"]})"),
       absl::StatusCode::kInvalidArgument, "merges into \"ba\""},
      {"unknown model type", WithModel(R"({"type": "Unigram", "vocab": []})"),
       absl::StatusCode::kUnimplemented, "model.type \"Unigram\""},
      {"unknown pre_tokenizer",
       WithModel(R"({"type": "BPE", )" + ok_vocab + R"(, "merges": []})",
                 R"("pre_tokenizer": {"type": "Sequence", "pretokenizers": [)"
                 R"({"type": "Digits"}, {"type": "Whatever"}]}, )"),
       absl::StatusCode::kUnimplemented,
       "pre_tokenizer.pretokenizers[1].type \"Whatever\""},
      {"bad regex",
       WithModel(
           R"({"type": "BPE", )" + ok_vocab + R"(, "merges": []})",
           R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, )"
           R"("behavior": "Isolated"}, )"),
       absl::StatusCode::kInvalidArgument,
       "pre_tokenizer.pattern.Regex is not a valid regex"},
      {"added token without id",
       R"({"added_tokens": [{"content": "<s>"}], "model": {"type": "BPE", )" +
           ok_vocab + R"(, "merges": []}})",
       absl::StatusCode::kInvalidArgument, "added_tokens[0].id is missing"},
      {"template names unknown special",
       WithModel(
           R"({"type": "BPE", )" + ok_vocab + R"(, "merges": []})",
           R"("post_processor": {"type": "TemplateProcessing", "single": [)"
           R"({"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {}}, )"),
       absl::StatusCode::kInvalidArgument,
       "post_processor.special_tokens[\"<s>\"] is missing"},
      {"unsupported decoder",
       WithModel(R"({"type": "BPE", )" + ok_vocab + R"(, "merges": []})",
                 R"("decoder": {"type": "WordPiece"}, )"),
       absl::StatusCode::kUnimplemented, "decoder.type \"WordPiece\""},
  };
  for (const MalformedCase& c : cases) {
    auto tok = HfBpeTokenizer::FromJson(c.json);
    ASSERT_FALSE(tok.ok()) << c.name;
    EXPECT_EQ(tok.status().code(), c.code) << c.name << ": " << tok.status();
    EXPECT_TRUE(Contains(tok.status().message(), c.message)) << c.name;
  }
}

TEST(HfBpeTokenizerTest, FromFileNamesThePath) {
  auto tok = HfBpeTokenizer::FromFile("/nonexistent/tokenizer.json", {});
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(tok.status().message(), "/nonexistent/tokenizer.json"));
}

}  // namespace
}  // namespace hearth::tokenizer
