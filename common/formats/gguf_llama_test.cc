#include "common/formats/gguf_llama.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/formats/safetensors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hearth::formats {
namespace {

using json = nlohmann::json;

::testing::AssertionResult Contains(absl::string_view haystack,
                                    absl::string_view needle) {
  if (haystack.find(needle) != absl::string_view::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << haystack << "\"\n  does not contain \"" << needle << "\"";
}

std::string MakeTempDir(const std::string& name) {
  std::string dir = absl::StrCat(::testing::TempDir(), "/gguf_llama_test_",
                                 name, "_", ::getpid());
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// A Llama-2-style (SentencePiece BPE) tokenizer.json with 17 entries; the
// config pads it to 20.
json SpmTokenizerJson() {
  json vocab = {{"<unk>", 0},  {"<s>", 1},   {"</s>", 2}, {"<0x00>", 3},
                {"<0x0A>", 4}, {"▁", 5},     {"a", 6},    {"b", 7},
                {"c", 8},      {"▁a", 9},    {"ab", 10},  {"▁ab", 11},
                {"bc", 12},    {"▁abc", 13}, {"zz", 14}};
  json added = json::array();
  auto add = [&](int id, const char* text, bool special) {
    added.push_back({{"id", id},
                     {"content", text},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", special}});
  };
  add(0, "<unk>", true);
  add(1, "<s>", true);
  add(2, "</s>", true);
  add(15, "<|im_end|>", false);   // Looks special: CONTROL.
  add(16, "hello▁world", false);  // USER_DEFINED, "▁" pre-normalized to " ".
  return {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "▁"}},
          {{"type", "Replace"},
           {"pattern", {{"String", " "}}},
           {"content", "▁"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"},
           {"pattern", {{"String", "▁"}}},
           {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"fuse_unk", true},
        {"vocab", vocab},
        // Both spellings of a merge occur in the wild.
        {"merges", {"▁ a", "a b", json::array({"▁a", "b"}), "b c", "▁ab c"}}}},
  };
}

// A Llama-3-style byte-level BPE tokenizer.json.
json ByteLevelTokenizerJson() {
  const std::string regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  return {
      {"added_tokens",
       {{{"id", 5}, {"content", "<|begin_of_text|>"}, {"special", true}},
        {{"id", 6}, {"content", "<|end_of_text|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", regex}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "Sequence"},
        {"processors",
         {{{"type", "ByteLevel"}},
          {{"type", "TemplateProcessing"},
           {"single",
            {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"ignore_merges", true},
        {"byte_fallback", false},
        {"vocab", {{"a", 0}, {"b", 1}, {"Ġ", 2}, {"Ġa", 3}, {"ab", 4}}},
        {"merges",
         json::array({json::array({"Ġ", "a"}), json::array({"a", "b"})})}}},
  };
}

struct TinyModel {
  LlamaConfig config;
  std::map<std::string, std::vector<float>> weights;
  std::map<std::string, std::vector<int64_t>> shapes;
};

TinyModel MakeTinyLlama(bool tied, uint32_t seed) {
  TinyModel m;
  LlamaConfig& c = m.config;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 20;
  c.hidden_size = 64;
  c.intermediate_size = 80;  // ffn_down rows of 80 are not 32-divisible.
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.tie_word_embeddings = tied;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.eos_token_ids = {2};
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> w(n);
    for (float& v : w) v = dist(rng);
    if (shape.size() == 1) {
      for (float& v : w) v += 1.0f;  // Norm weights near 1.
    }
    m.weights[name] = std::move(w);
    m.shapes[name] = std::move(shape);
  };
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim,
                ff = c.intermediate_size;
  add("model.embed_tokens.weight", {c.vocab_size, h});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {h});
    add(p + "self_attn.q_proj.weight", {q, h});
    add(p + "self_attn.k_proj.weight", {kv, h});
    add(p + "self_attn.v_proj.weight", {kv, h});
    add(p + "self_attn.o_proj.weight", {h, q});
    add(p + "post_attention_layernorm.weight", {h});
    add(p + "mlp.gate_proj.weight", {ff, h});
    add(p + "mlp.up_proj.weight", {ff, h});
    add(p + "mlp.down_proj.weight", {h, ff});
  }
  add("model.norm.weight", {h});
  if (!tied) add("lm_head.weight", {c.vocab_size, h});
  return m;
}

std::string WriteModelFolder(const std::string& name, const TinyModel& m,
                             const json& tokenizer = SpmTokenizerJson(),
                             const json& tokenizer_config = json::object()) {
  const std::string dir = MakeTempDir(name);
  WriteText(dir + "/config.json", LlamaConfigToJson(m.config));
  WriteText(dir + "/tokenizer.json", tokenizer.dump());
  WriteText(dir + "/tokenizer_config.json", tokenizer_config.dump());
  SafetensorsWriter writer;
  for (const auto& [tensor, w] : m.weights) {
    writer.Add(tensor, DType::kF32, m.shapes.at(tensor), w.data(),
               w.size() * sizeof(float));
  }
  EXPECT_TRUE(writer.WriteFile(dir + "/model.safetensors").ok());
  return dir;
}

// The numpy definition from convert_hf_to_gguf.py, evaluated index by index:
// w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows,
// cols).
std::vector<float> NumpyPermute(const std::vector<float>& w, int64_t rows,
                                int64_t cols, int64_t n_head) {
  const int64_t half = rows / n_head / 2;
  std::vector<float> out(w.size());
  int64_t k = 0;
  for (int64_t h = 0; h < n_head;
       ++h) {  // Output index order: [h, half, 2, cols].
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        for (int64_t c = 0; c < cols; ++c) {
          out[k++] = w[((h * 2 + j) * half + i) * cols +
                       c];  // Input [h, 2, half, cols].
        }
      }
    }
  }
  return out;
}

TEST(QkPermutation, MatchesConvertHfToGgufAndInverts) {
  std::vector<float> w(32 * 3);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i);
  for (int64_t n_head : {1, 2, 4}) {
    std::vector<float> p(w.size()), back(w.size());
    ASSERT_TRUE(PermuteQkRows(w.data(), p.data(), 32, 3, n_head).ok());
    EXPECT_EQ(p, NumpyPermute(w, 32, 3, n_head)) << n_head;
    ASSERT_TRUE(UnpermuteQkRows(p.data(), back.data(), 32, 3, n_head).ok());
    EXPECT_EQ(back, w);
  }
  // Rows 0..7 of one 8-row head come out as 0 4 1 5 2 6 3 7.
  std::vector<float> rows = {0, 1, 2, 3, 4, 5, 6, 7}, out(8);
  ASSERT_TRUE(PermuteQkRows(rows.data(), out.data(), 8, 1, 1).ok());
  EXPECT_EQ(out, (std::vector<float>{0, 4, 1, 5, 2, 6, 3, 7}));
  EXPECT_FALSE(PermuteQkRows(rows.data(), out.data(), 8, 1, 3).ok());
}

TEST(Tokenizer, SentencePieceStyleBecomesLlamaVocab) {
  LlamaConfig c = MakeTinyLlama(false, 1).config;
  absl::StatusOr<GgufTokenizer> t = TokenizerFromHfJson(
      SpmTokenizerJson().dump(), R"({"add_bos_token": true})", c);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->model, "llama");
  EXPECT_EQ(t->pre, "default");
  ASSERT_EQ(t->tokens.size(), 20u);
  EXPECT_EQ(t->tokens[5], "▁");
  EXPECT_EQ(t->tokens[16], "hello world");
  EXPECT_EQ(t->tokens[17], "[PAD17]");
  const std::vector<int32_t> want_types = {2, 3, 3, 6, 6, 1, 1, 1, 1, 1,
                                           1, 1, 1, 1, 1, 3, 4, 5, 5, 5};
  EXPECT_EQ(t->token_types, want_types);
  // Merge products score minus their rank; single characters and tokens no
  // merge produces rank below every merge.
  EXPECT_EQ(t->scores[9], 0.0f);    // "▁ a", rank 0
  EXPECT_EQ(t->scores[10], -1.0f);  // "a b"
  EXPECT_EQ(t->scores[11], -2.0f);  // ["▁a", "b"]
  EXPECT_EQ(t->scores[12], -3.0f);
  EXPECT_EQ(t->scores[13], -4.0f);
  EXPECT_EQ(t->scores[6], -(5.0f + 6.0f));
  EXPECT_EQ(t->scores[14], -(5.0f + 14.0f));
  EXPECT_EQ(t->scores[0], 0.0f);
  EXPECT_EQ(t->scores[18], -1000.0f);
  EXPECT_TRUE(t->merges.empty());
  EXPECT_EQ(t->bos_id, 1);
  EXPECT_EQ(t->eos_id, 2);
  EXPECT_EQ(t->unk_id, 0);
  EXPECT_EQ(t->add_bos, true);
  EXPECT_EQ(t->add_space_prefix, true);
}

TEST(Tokenizer, ByteLevelBecomesGpt2Vocab) {
  LlamaConfig c = MakeTinyLlama(false, 1).config;
  c.vocab_size = 8;
  absl::StatusOr<GgufTokenizer> t = TokenizerFromHfJson(
      ByteLevelTokenizerJson().dump(),
      R"({"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|end_of_text|>"},
          "chat_template": "{{ messages }}"})",
      c);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->model, "gpt2");
  EXPECT_EQ(t->pre, "llama-bpe");
  EXPECT_EQ(t->tokens, (std::vector<std::string>{"a", "b", "Ġ", "Ġa", "ab",
                                                 "<|begin_of_text|>",
                                                 "<|end_of_text|>", "[PAD7]"}));
  EXPECT_EQ(t->token_types, (std::vector<int32_t>{1, 1, 1, 1, 1, 3, 3, 5}));
  EXPECT_EQ(t->merges, (std::vector<std::string>{"Ġ a", "a b"}));
  EXPECT_TRUE(t->scores.empty());
  EXPECT_EQ(t->bos_id, 5);
  EXPECT_EQ(t->eos_id, 6);
  EXPECT_EQ(t->add_bos, true);  // From the TemplateProcessing post-processor.
  EXPECT_FALSE(t->add_space_prefix.has_value());
  EXPECT_EQ(t->chat_template, "{{ messages }}");
}

// Protobuf encoding by hand: a SentencePiece ModelProto with a few pieces.
std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
  return out;
}
std::string LenField(int field, const std::string& bytes) {
  return Varint(static_cast<uint64_t>(field) << 3 | 2) + Varint(bytes.size()) +
         bytes;
}
std::string Piece(const std::string& text, float score, int type) {
  std::string score_bytes(4, '\0');
  std::memcpy(score_bytes.data(), &score, 4);
  return LenField(1, LenField(1, text) + Varint(2 << 3 | 5) + score_bytes +
                         Varint(3 << 3 | 0) + Varint(type));
}

TEST(Tokenizer, SentencePieceModelProto) {
  LlamaConfig c = MakeTinyLlama(false, 1).config;
  const std::string model =
      Piece("<unk>", 0, 2) + Piece("<s>", 0, 3) + Piece("</s>", 0, 3) +
      Piece("<0x0A>", 0, 6) + Piece("▁a", -1.5f, 1) + Piece("b", -2.0f, 1) +
      Piece("<user>", 0, 4) +
      LenField(2,
               Varint(3 << 3 | 0) + Varint(2)) +  // trainer_spec.model_type BPE
      LenField(3, Varint(3 << 3 | 0) + Varint(0));  // add_dummy_prefix: false
  absl::StatusOr<GgufTokenizer> t = TokenizerFromSentencePiece(model, "", c);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->model, "llama");
  ASSERT_EQ(t->tokens.size(), 20u);
  EXPECT_EQ(t->tokens[4], "▁a");
  EXPECT_EQ(t->tokens[7], "[PAD7]");
  EXPECT_EQ(t->scores[4], -1.5f);
  EXPECT_EQ(t->scores[5], -2.0f);
  EXPECT_EQ(t->scores[7], -1000.0f);
  EXPECT_EQ(
      std::vector<int32_t>(t->token_types.begin(), t->token_types.begin() + 8),
      (std::vector<int32_t>{2, 3, 3, 6, 1, 1, 1, 5}));
  EXPECT_EQ(t->unk_id, 0);
  EXPECT_EQ(t->bos_id, 1);
  EXPECT_EQ(t->add_space_prefix, false);
  EXPECT_EQ(
      TokenizerFromSentencePiece("not a proto \xff\xff", "", c).status().code(),
      absl::StatusCode::kInvalidArgument);
  // Every truncation of a valid proto fails cleanly or parses a prefix.
  for (size_t n = 0; n < model.size(); ++n)
    (void)TokenizerFromSentencePiece(model.substr(0, n), "", c);
}

TEST(ExportLlamaGguf, FallsBackToTokenizerModel) {
  const TinyModel m = MakeTinyLlama(false, 2);
  const std::string dir = WriteModelFolder("spm_model", m);
  ::unlink((dir + "/tokenizer.json").c_str());
  WriteText(dir + "/tokenizer.model",
            Piece("<unk>", 0, 2) + Piece("<s>", 0, 3) + Piece("</s>", 0, 3) +
                Piece("▁a", -1.5f, 1));
  absl::Status s = ExportLlamaGguf(dir, dir + "/m.gguf", GgmlType::kQ8_0);
  ASSERT_TRUE(s.ok()) << s;
  auto file = GgufFile::Open(dir + "/m.gguf");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->GetFloatArray("tokenizer.ggml.scores")->at(3), -1.5f);
  EXPECT_TRUE(*(*file)->GetBool("tokenizer.ggml.add_space_prefix"));
  ::unlink((dir + "/tokenizer.model").c_str());
  EXPECT_EQ(ExportLlamaGguf(dir, dir + "/m.gguf", GgmlType::kQ8_0).code(),
            absl::StatusCode::kNotFound);
}

TEST(Tokenizer, Rejections) {
  LlamaConfig c = MakeTinyLlama(false, 1).config;
  c.vocab_size = 10;  // Smaller than the 17 ids the tokenizer uses.
  EXPECT_TRUE(Contains(
      TokenizerFromHfJson(SpmTokenizerJson().dump(), "", c).status().message(),
      "has token id 16 but config.json vocab_size is 10"));
  json unigram = {{"model", {{"type", "Unigram"}, {"vocab", json::array()}}}};
  EXPECT_EQ(TokenizerFromHfJson(unigram.dump(), "", c).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(TokenizerFromHfJson("{not json", "", c).status().code(),
            absl::StatusCode::kInvalidArgument);
  json bad_vocab = {{"model", {{"type", "BPE"}, {"vocab", {{"a", "zero"}}}}}};
  EXPECT_EQ(TokenizerFromHfJson(bad_vocab.dump(), "", c).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// What is expected of every export: keys with llama.cpp's types, names, dims.
void CheckLayout(const GgufFile& f, const TinyModel& m, GgmlType weight_type) {
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetU32("llama.context_length"), 256u);
  EXPECT_EQ(*f.GetU32("llama.embedding_length"), 64u);
  EXPECT_EQ(*f.GetU32("llama.block_count"), 2u);
  EXPECT_EQ(*f.GetU32("llama.feed_forward_length"), 80u);
  EXPECT_EQ(*f.GetU32("llama.attention.head_count"), 4u);
  EXPECT_EQ(*f.GetU32("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(*f.GetU32("llama.rope.dimension_count"), 16u);
  EXPECT_EQ(*f.GetU32("llama.vocab_size"), 20u);
  EXPECT_EQ(*f.GetF32("llama.rope.freq_base"), 10000.0f);
  EXPECT_EQ(*f.GetF32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(*f.GetU32("general.file_type"), *LlamaFileType(weight_type));
  EXPECT_EQ(*f.GetU32("general.quantization_version"), 2u);
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens")->size(), 20u);
  EXPECT_EQ(f.Find("tokenizer.ggml.scores")->element_type(),
            GgufType::kFloat32);
  EXPECT_EQ(f.Find("tokenizer.ggml.token_type")->element_type(),
            GgufType::kInt32);
  EXPECT_EQ(*f.GetU32("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_TRUE(*f.GetBool("tokenizer.ggml.add_bos_token"));

  const bool tied = m.config.tie_word_embeddings;
  ASSERT_EQ(f.tensors().size(), 3u + 9u * 2u - (tied ? 1u : 0u));
  EXPECT_EQ(f.tensors()[0].name, "token_embd.weight");
  EXPECT_EQ(f.tensors()[1].name, "blk.0.attn_norm.weight");
  EXPECT_EQ(f.tensors()[2].name, "blk.0.attn_q.weight");
  EXPECT_EQ(f.FindTensor("output.weight") == nullptr, tied);
  const GgufTensorInfo* q = f.FindTensor("blk.1.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->ne, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(q->type, weight_type);
  const GgufTensorInfo* k = f.FindTensor("blk.1.attn_k.weight");
  EXPECT_EQ(k->ne,
            (std::vector<int64_t>{64, 32}));  // {n_embd, head_dim * n_head_kv}
  const GgufTensorInfo* down = f.FindTensor("blk.0.ffn_down.weight");
  EXPECT_EQ(down->ne, (std::vector<int64_t>{80, 64}));
  const bool quantized =
      weight_type == GgmlType::kQ8_0 || weight_type == GgmlType::kQ4_0;
  EXPECT_EQ(down->type, quantized ? GgmlType::kF16 : weight_type);  // Fallback.
  EXPECT_EQ(f.FindTensor("blk.0.ffn_norm.weight")->type, GgmlType::kF32);
  EXPECT_EQ(f.FindTensor("output_norm.weight")->type, GgmlType::kF32);
  EXPECT_EQ(f.FindTensor("token_embd.weight")->type, weight_type);
  EXPECT_EQ(f.FindTensor("token_embd.weight")->ne,
            (std::vector<int64_t>{64, 20}));
}

TEST(ExportLlamaGguf, F32RoundTripIsExact) {
  const TinyModel m = MakeTinyLlama(false, 11);
  const std::string dir = WriteModelFolder("f32", m);
  const std::string out = dir + "/model.f32.gguf";
  int64_t calls = 0, last_total = 0;
  GgufExportProgressFn progress = [&](int64_t done, int64_t total,
                                      std::string_view) {
    ++calls;
    last_total = total;
    EXPECT_EQ(done, calls);
  };
  absl::Status s = ExportLlamaGguf(dir, out, GgmlType::kF32, &progress);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(calls, 21);
  EXPECT_EQ(last_total, 21);

  auto file = GgufFile::Open(out);
  ASSERT_TRUE(file.ok()) << file.status();
  CheckLayout(**file, m, GgmlType::kF32);
  // On disk, q and k rows are permuted for llama.cpp's adjacent-pair RoPE.
  const auto& hf_q = m.weights.at("model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(*(*file)->DequantizeTensor("blk.1.attn_q.weight"),
            NumpyPermute(hf_q, 64, 64, 4));
  const auto& hf_k = m.weights.at("model.layers.1.self_attn.k_proj.weight");
  EXPECT_EQ(*(*file)->DequantizeTensor("blk.1.attn_k.weight"),
            NumpyPermute(hf_k, 32, 64, 2));
  EXPECT_EQ(*(*file)->DequantizeTensor("blk.1.attn_v.weight"),
            m.weights.at("model.layers.1.self_attn.v_proj.weight"));

  absl::StatusOr<LoadedGguf> loaded = LoadLlamaGguf(out);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tensors.size(), m.weights.size());
  for (const auto& [name, w] : m.weights) {
    ASSERT_EQ(loaded->tensors.count(name), 1u) << name;
    EXPECT_EQ(loaded->tensors.at(name), w) << name;
    EXPECT_EQ(loaded->shapes.at(name), m.shapes.at(name)) << name;
  }
  const LlamaConfig& c = loaded->config;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 20);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 80);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 256);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(loaded->tokenizer.model, "llama");
  EXPECT_EQ(loaded->tokenizer.tokens.size(), 20u);
  EXPECT_EQ(loaded->tokenizer.scores[11], -2.0f);
  EXPECT_EQ(loaded->name, dir.substr(dir.rfind('/') + 1));
}

// Row-wise Dequantize(Quantize(w)) as the exporter must have produced it.
std::vector<float> QuantRoundTrip(const std::vector<float>& w, int64_t row,
                                  GgmlType type) {
  std::vector<uint8_t> q(GgmlRowSize(type, row));
  std::vector<float> out(w.size());
  for (size_t r = 0; r < w.size() / row; ++r) {
    EXPECT_TRUE(QuantizeRow(type, w.data() + r * row, row, q.data()).ok());
    EXPECT_TRUE(DequantizeRow(type, q.data(), row, out.data() + r * row).ok());
  }
  return out;
}

class ExportQuantized : public ::testing::TestWithParam<GgmlType> {};

TEST_P(ExportQuantized, LoadsBackWithinQuantizationError) {
  const GgmlType type = GetParam();
  const TinyModel m = MakeTinyLlama(true, 5);
  const std::string dir =
      WriteModelFolder(absl::StrCat("q", static_cast<int>(type)), m);
  const std::string out = dir + "/model.gguf";
  ASSERT_TRUE(ExportLlamaGguf(dir, out, type).ok());
  auto file = GgufFile::Open(out);
  ASSERT_TRUE(file.ok()) << file.status();
  CheckLayout(**file, m, type);

  absl::StatusOr<LoadedGguf> loaded = LoadLlamaGguf(out);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->config.tie_word_embeddings);
  EXPECT_EQ(loaded->tensors.count("lm_head.weight"), 0u);
  for (const auto& [name, w] : m.weights) {
    const std::vector<int64_t>& shape = m.shapes.at(name);
    const std::vector<float>& got = loaded->tensors.at(name);
    ASSERT_EQ(got.size(), w.size()) << name;
    GgmlType stored = loaded->stored_types.at(name);
    // The permutation moves whole rows, so it commutes with row-wise
    // quantization: the loaded (un-permuted) weights must be exactly the
    // row-wise round trip of the HF weights.
    EXPECT_EQ(got, QuantRoundTrip(w, shape.back(), stored)) << name;
    const float tol = stored == GgmlType::kQ4_0   ? 0.1f
                      : stored == GgmlType::kQ8_0 ? 3e-3f
                                                  : 1e-3f;
    for (size_t i = 0; i < w.size(); ++i) {
      ASSERT_NEAR(got[i], w[i], tol) << name << "[" << i << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, ExportQuantized,
                         ::testing::Values(GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_0),
                         [](const auto& info) {
                           return std::string(GgmlTypeName(info.param));
                         });

TEST(ExportLlamaGguf, Llama3RopeScalingBecomesRopeFreqs) {
  TinyModel m = MakeTinyLlama(true, 3);
  m.config.rope_theta = 500000;
  m.config.max_position_embeddings = 131072;
  m.config.rope_scaling.type = "llama3";
  m.config.rope_scaling.factor = 8;
  m.config.rope_scaling.low_freq_factor = 1;
  m.config.rope_scaling.high_freq_factor = 4;
  m.config.rope_scaling.original_max_position_embeddings = 8192;
  const std::string dir = WriteModelFolder("llama3", m);
  ASSERT_TRUE(ExportLlamaGguf(dir, dir + "/m.gguf", GgmlType::kF32).ok());
  auto file = GgufFile::Open(dir + "/m.gguf");
  ASSERT_TRUE(file.ok());
  const GgufTensorInfo* freqs = (*file)->FindTensor("rope_freqs.weight");
  ASSERT_NE(freqs, nullptr);
  EXPECT_EQ(freqs->ne, (std::vector<int64_t>{8}));
  EXPECT_EQ(freqs->type, GgmlType::kF32);
  const std::vector<float> f = *(*file)->DequantizeTensor(*freqs);
  EXPECT_EQ(f.front(), 1.0f);  // Highest frequency: unscaled.
  EXPECT_EQ(f.back(), 8.0f);   // Lowest: scaled by the factor.
  auto loaded = LoadLlamaGguf(dir + "/m.gguf");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->rope_freqs, f);
  EXPECT_EQ(loaded->config.rope_scaling, m.config.rope_scaling);
  EXPECT_EQ(loaded->config.rope_theta, 500000.0);
}

TEST(ExportLlamaGguf, ByteLevelTokenizer) {
  TinyModel m = MakeTinyLlama(true, 4);
  m.config.vocab_size = 8;
  m.weights["model.embed_tokens.weight"].resize(8 * 64);
  m.shapes["model.embed_tokens.weight"] = {8, 64};
  const std::string dir =
      WriteModelFolder("bytelevel", m, ByteLevelTokenizerJson());
  ASSERT_TRUE(ExportLlamaGguf(dir, dir + "/m.gguf", GgmlType::kQ8_0).ok());
  auto file = GgufFile::Open(dir + "/m.gguf");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(*(*file)->GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(*(*file)->GetString("tokenizer.ggml.pre"), "llama-bpe");
  EXPECT_EQ(*(*file)->GetStringArray("tokenizer.ggml.merges"),
            (std::vector<std::string>{"Ġ a", "a b"}));
  EXPECT_EQ((*file)->Find("tokenizer.ggml.scores"), nullptr);
}

TEST(ExportLlamaGguf, Errors) {
  const TinyModel m = MakeTinyLlama(false, 9);
  const std::string dir = WriteModelFolder("errors", m);
  EXPECT_EQ(ExportLlamaGguf(dir, dir + "/x.gguf", GgmlType::kQ4_K).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      ExportLlamaGguf(dir + "/missing", dir + "/x.gguf", GgmlType::kF32).code(),
      absl::StatusCode::kNotFound);

  TinyModel extra = m;
  extra.weights["model.layers.0.self_attn.rotary_emb.inv_freq"] =
      std::vector<float>(8, 1.0f);
  extra.shapes["model.layers.0.self_attn.rotary_emb.inv_freq"] = {8};
  const std::string inv_dir = WriteModelFolder("inv_freq", extra);
  EXPECT_TRUE(ExportLlamaGguf(inv_dir, inv_dir + "/x.gguf", GgmlType::kF32)
                  .ok());  // Skipped.
  extra.weights["model.vision_tower.weight"] = std::vector<float>(8, 1.0f);
  extra.shapes["model.vision_tower.weight"] = {8};
  const std::string extra_dir = WriteModelFolder("extra", extra);
  absl::Status s =
      ExportLlamaGguf(extra_dir, extra_dir + "/x.gguf", GgmlType::kF32);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(s.message(), "model.vision_tower.weight"));

  TinyModel missing = m;
  missing.weights.erase("model.layers.1.self_attn.k_proj.weight");
  const std::string missing_dir = WriteModelFolder("missing_k", missing);
  s = ExportLlamaGguf(missing_dir, missing_dir + "/x.gguf", GgmlType::kF32);
  EXPECT_TRUE(Contains(s.message(),
                       "no tensor model.layers.1.self_attn.k_proj.weight"));
  EXPECT_NE(::access((missing_dir + "/x.gguf").c_str(), F_OK), 0);
}

}  // namespace
}  // namespace hearth::formats
