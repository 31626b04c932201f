// libFuzzer target for the tokenizer.json loader and the BPE encoder.
//
// The first input byte picks the mode:
//   even: the rest is a tokenizer.json. Loading must fail cleanly or succeed;
//         a loaded tokenizer must then encode and decode without crashing.
//   odd:  the rest is text, encoded with fixed small tokenizers (Llama-3 style
//         byte-level and Llama-2 style SentencePiece BPE). Encoding invalid
//         UTF-8 must be an error; for valid text the byte-level tokenizer must
//         round-trip exactly and StreamingDecoder must reproduce Decode().
//
// Build: cmake -DHEARTH_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++
// -DCMAKE_C_COMPILER=clang Run:   tokenizer_json_fuzz -max_total_time=60
// CORPUS_DIR When CORPUS_DIR is empty, seeds (valid tokenizer.json files and
// texts) are written into it first, so the fuzzer starts past the JSON syntax.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/tokenizer/hf_bpe_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace {

using hearth::tokenizer::HfBpeTokenizer;
using hearth::tokenizer::StreamingDecoder;
using hearth::tokenizer::Tokenizer;
using Json = nlohmann::json;

constexpr char kLlama3Regex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string ByteChar(int b) {
  int next = 256;
  for (int i = 0; i < 256; ++i) {
    bool printable =
        (i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE;
    int cp = printable ? i : next++;
    if (i == b) {
      std::string s;
      hearth::tokenizer::utf8::Append(cp, &s);
      return s;
    }
  }
  return std::string();
}

Json ByteLevelJson() {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  const std::string sp = ByteChar(' ');
  std::vector<std::pair<std::string, std::string>> merges = {
      {sp, "t"},  {"h", "e"}, {sp + "t", "he"}, {"i", "n"},
      {"e", "r"}, {sp, sp},   {"1", "2"}};
  Json merge_list = Json::array();
  int next = 260;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merge_list.push_back({a, b});
  }
  return {{"added_tokens",
           {{{"id", 256}, {"content", "<|begin_of_text|>"}, {"special", true}},
            {{"id", 257}, {"content", "<|eot_id|>"}, {"special", true}},
            {{"id", 258},
             {"content", "<mask>"},
             {"lstrip", true},
             {"rstrip", true},
             {"normalized", false}}}},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"},
               {"pattern", {{"Regex", kLlama3Regex}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"use_regex", false}}}}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"special_tokens",
             {{"<|begin_of_text|>",
               {{"id", "<|begin_of_text|>"}, {"ids", {256}}}}}}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"vocab", vocab},
            {"merges", merge_list},
            {"ignore_merges", true}}}};
}

Json SentencePieceJson() {
  Json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  char name[8];
  for (int b = 0; b < 256; ++b) {
    snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  const char* pieces[] = {"\u2581",   "h", "i", "\u2581h",
                          "\u2581hi", "a", "b", "ab"};
  for (int i = 0; i < 8; ++i) vocab[pieces[i]] = 259 + i;
  return {
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
        {{"id", 1}, {"content", "<s>"}, {"special", true}},
        {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}},
          {{"type", "Replace"},
           {"pattern", {{"String", " "}}},
           {"content", "\u2581"}}}}}},
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
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"fuse_unk", true},
        {"vocab", vocab},
        {"merges", {"\u2581 h", "\u2581h i", "a b"}}}}};
}

const Tokenizer& Fixed(int which) {
  static const std::unique_ptr<HfBpeTokenizer>* tokenizers = [] {
    auto* t = new std::unique_ptr<HfBpeTokenizer>[2];
    for (int i = 0; i < 2; ++i) {
      auto loaded = HfBpeTokenizer::FromJson(
          (i == 0 ? ByteLevelJson() : SentencePieceJson()).dump());
      if (!loaded.ok()) {
        fprintf(stderr, "fixed tokenizer %d failed to load: %s\n", i,
                loaded.status().ToString().c_str());
        abort();
      }
      t[i] = std::move(loaded).value();
    }
    return t;
  }();
  return *tokenizers[which];
}

void Check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "property violated: %s\n", what);
    abort();
  }
}

void FuzzText(const Tokenizer& tok, std::string_view text,
              bool exact_roundtrip) {
  bool valid =
      hearth::tokenizer::utf8::FindInvalid(text) == std::string_view::npos;
  for (bool special : {false, true}) {
    auto ids = tok.Encode(text, special);
    Check(ids.ok() == valid, "Encode fails exactly on invalid UTF-8");
    if (!ids.ok()) return;
    for (int32_t id : *ids)
      Check(id >= 0 && id < tok.vocab_size(), "ids are in range");
    auto decoded = tok.Decode(*ids, /*skip_special_tokens=*/true);
    Check(decoded.ok(), "Decode of Encode output succeeds");
    Check(hearth::tokenizer::utf8::FindInvalid(*decoded) ==
              std::string_view::npos,
          "Decode returns valid UTF-8");
    if (exact_roundtrip && !special &&
        text.find("<|") == std::string_view::npos &&
        text.find("<mask>") == std::string_view::npos) {
      Check(*decoded == text, "byte-level decode(encode(x)) == x");
    }
    StreamingDecoder stream(&tok, /*skip_special_tokens=*/true);
    std::string streamed;
    for (int32_t id : *ids) {
      auto piece = stream.Push(id);
      Check(piece.ok(), "StreamingDecoder accepts valid ids");
      streamed += *piece;
    }
    streamed += stream.Finish();
    Check(streamed == *decoded, "streamed text == Decode()");
  }
}

void FuzzJson(std::string_view json) {
  auto loaded = HfBpeTokenizer::FromJson(json);
  if (!loaded.ok()) return;
  const Tokenizer& tok = **loaded;
  for (const char* text : {"Hello world, it's 2024! 日本語 😀",
                           "<s>hi</s> <|eot_id|>", "  \n\t x"}) {
    auto ids = tok.Encode(text, true);
    if (!ids.ok())
      continue;  // e.g. a pathological regex hitting its match limit
    for (int32_t id : *ids)
      Check(id >= 0 && id < tok.vocab_size(), "ids are in range");
    (void)tok.Decode(*ids, false);
    (void)tok.Decode(*ids, true);
  }
  // Decode every id, including holes in the vocabulary.
  std::vector<int32_t> all;
  for (int32_t id = 0; id < tok.vocab_size() && id < 4096; ++id)
    all.push_back(id);
  (void)tok.Decode(all, false);
  (void)tok.IdToToken(tok.vocab_size());
  (void)tok.TokenToId("<s>");
}

void WriteSeeds(const std::filesystem::path& dir) {
  auto write = [&dir](const std::string& name, char mode,
                      const std::string& body) {
    std::ofstream(dir / name, std::ios::binary) << mode << body;
  };
  write("seed_bytelevel.json", '\0', ByteLevelJson().dump());
  write("seed_sentencepiece.json", '\0', SentencePieceJson().dump());
  write("seed_text_1", '\1',
        "Hello world, it's 2024! I'M here.\n\n\tcode();  ");
  write(
      "seed_text_2", '\1',
      "日本語 👨‍👩‍👧 café e\xCC\x81 <|eot_id|> <mask> 1234567");
  write("seed_text_3", '\3', "hi hi ab <s> 日本");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // Seed the first corpus directory on the command line when it is empty.
  for (int i = 1; i < *argc; ++i) {
    std::error_code ec;
    std::filesystem::path p((*argv)[i]);
    if ((*argv)[i][0] != '-' && std::filesystem::is_directory(p, ec)) {
      if (std::filesystem::is_empty(p, ec)) WriteSeeds(p);
      break;
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) == 0) {
    FuzzJson(rest);
  } else {
    int which = (data[0] >> 1) & 1;
    FuzzText(Fixed(which), rest, /*exact_roundtrip=*/which == 0);
  }
  return 0;
}
