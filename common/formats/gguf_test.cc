#include "common/formats/gguf.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace hearth::formats {
namespace {

// gmock is not installed; this stands in for EXPECT_THAT(s, HasSubstr(needle)).
::testing::AssertionResult Contains(absl::string_view haystack,
                                    absl::string_view needle) {
  if (haystack.find(needle) != absl::string_view::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << haystack << "\"\n  does not contain \"" << needle << "\"";
}

// Builds GGUF bytes by hand, independently of GgufWriter, so that the tests pin
// the wire format rather than the writer's idea of it.
class Bytes {
 public:
  Bytes& U8(uint8_t v) { return Raw(&v, 1); }
  Bytes& U32(uint32_t v) { return Raw(&v, 4); }
  Bytes& U64(uint64_t v) { return Raw(&v, 8); }
  Bytes& F32(float v) { return Raw(&v, 4); }
  Bytes& Str(const std::string& s) {
    U64(s.size());
    s_ += s;
    return *this;
  }
  Bytes& PadTo(size_t align) {
    while (s_.size() % align != 0) s_ += '\0';
    return *this;
  }
  Bytes& Zeros(size_t n) {
    s_.append(n, '\0');
    return *this;
  }
  Bytes& Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return U32(kGgufMagic).U32(version).U64(n_tensors).U64(n_kv);
  }
  size_t size() const { return s_.size(); }
  const std::string& str() const { return s_; }

 private:
  Bytes& Raw(const void* p, size_t n) {
    s_.append(static_cast<const char*>(p), n);
    return *this;
  }
  std::string s_;
};

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name + "." +
         std::to_string(::getpid());
}

TEST(GgufWriter, ByteLayoutMatchesSpec) {
  GgufWriter w;
  w.Set("general.architecture", GgufValue::String("llama"));
  const std::vector<float> data = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(w.AddF32Tensor("t", {2, 3}, data.data(), GgmlType::kF32).ok());
  absl::StatusOr<std::string> file = w.Serialize();
  ASSERT_TRUE(file.ok()) << file.status();

  Bytes want;
  want.Header(1, 1);
  // The worked example of reference §1.1.
  want.Str("general.architecture").U32(8).Str("llama");
  // Tensor info: torch [2, 3] is ggml ne {3, 2}.
  want.Str("t").U32(2).U64(3).U64(2).U32(0).U64(0);
  want.PadTo(32);
  for (float f : data) want.F32(f);
  want.PadTo(32);  // The last tensor is padded too.
  EXPECT_EQ(*file, want.str());
  EXPECT_EQ(*w.Serialize(), *file);  // Serializing again gives the same bytes.
  EXPECT_EQ(file->substr(0, 4), "GGUF");
  EXPECT_EQ(file->substr(24, 8), std::string("\x14\0\0\0\0\0\0\0", 8));
}

TEST(GgufWriter, OffsetsAreConsecutivePaddedSums) {
  GgufWriter w;
  std::vector<float> a(5, 1.0f), b(64, 2.0f), c(3, 3.0f);
  ASSERT_TRUE(w.AddF32Tensor("a", {5}, a.data(), GgmlType::kF32).ok());  // 20 B
  ASSERT_TRUE(
      w.AddF32Tensor("b", {2, 32}, b.data(), GgmlType::kQ8_0).ok());     // 68 B
  ASSERT_TRUE(w.AddF32Tensor("c", {3}, c.data(), GgmlType::kF16).ok());  // 6 B
  auto file = GgufFile::FromBuffer(*w.Serialize());
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& t = (*file)->tensors();
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].offset, 0u);
  EXPECT_EQ(t[1].offset, 32u);
  EXPECT_EQ(t[2].offset, 32u + 96u);
  EXPECT_EQ(t[1].nbytes, 68u);
  EXPECT_EQ((*file)->data_offset() % 32, 0u);
}

TEST(GgufWriter, CustomAlignment) {
  GgufWriter w;
  w.Set("general.alignment", GgufValue::U32(64));
  std::vector<float> a(5, 1.0f);
  ASSERT_TRUE(w.AddF32Tensor("a", {5}, a.data(), GgmlType::kF32).ok());
  ASSERT_TRUE(w.AddF32Tensor("b", {5}, a.data(), GgmlType::kF32).ok());
  std::string bytes = *w.Serialize();
  EXPECT_EQ(bytes.size() % 64, 0u);
  auto file = GgufFile::FromBuffer(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->alignment(), 64u);
  EXPECT_EQ((*file)->data_offset() % 64, 0u);
  EXPECT_EQ((*file)->tensors()[1].offset, 64u);

  GgufWriter bad;
  bad.Set("general.alignment", GgufValue::U32(48));
  EXPECT_TRUE(Contains(bad.Serialize().status().message(), "not a power of 2"));
  bad.Set("general.alignment",
          GgufValue::U64(64));  // llama.cpp aborts on this.
  EXPECT_TRUE(Contains(bad.Serialize().status().message(), "expected UINT32"));
}

TEST(GgufWriter, RejectsWhatLlamaCppRejects) {
  GgufWriter w;
  std::vector<float> x(64, 0.0f);
  EXPECT_TRUE(Contains(
      w.AddF32Tensor(std::string(64, 'n'), {64}, x.data(), GgmlType::kF32)
          .message(),
      "at most 63"));
  EXPECT_TRUE(
      w.AddF32Tensor(std::string(63, 'n'), {64}, x.data(), GgmlType::kF32)
          .ok());
  EXPECT_TRUE(Contains(
      w.AddF32Tensor(std::string(63, 'n'), {64}, x.data(), GgmlType::kF32)
          .message(),
      "duplicate"));
  EXPECT_TRUE(Contains(
      w.AddF32Tensor("q", {2, 24}, x.data(), GgmlType::kQ4_0).message(),
      "not a multiple of the q4_0 block size 32"));
  EXPECT_TRUE(Contains(
      w.AddTensor("five", GgmlType::kF32, {1, 1, 1, 1, 1}, std::string(4, '\0'))
          .message(),
      "1 to 4"));
  EXPECT_TRUE(
      Contains(w.AddTensor("short", GgmlType::kF32, {4}, std::string(15, '\0'))
                   .message(),
               "expected 16"));
  // A failed AddTensor leaves no trace.
  EXPECT_TRUE(
      w.AddTensor("short", GgmlType::kF32, {4}, std::string(16, '\0')).ok());

  GgufWriter lazy;
  ASSERT_TRUE(lazy.AddTensor("t", GgmlType::kF32, {4},
                             []() -> absl::StatusOr<std::string> {
                               return std::string(12, '\0');
                             })
                  .ok());
  EXPECT_TRUE(Contains(lazy.Serialize().status().message(),
                       "produced 12 bytes, expected 16"));
}

TEST(GgufRoundTrip, AllMetadataTypes) {
  GgufWriter w;
  w.Set("u8", GgufValue::U8(200));
  w.Set("i8", GgufValue::I8(-100));
  w.Set("u16", GgufValue::U16(60000));
  w.Set("i16", GgufValue::I16(-30000));
  w.Set("u32", GgufValue::U32(4000000000u));
  w.Set("i32", GgufValue::I32(-2000000000));
  w.Set("f32", GgufValue::F32(1.5f));
  w.Set("bool", GgufValue::Bool(true));
  w.Set("str", GgufValue::String("héllo"));
  w.Set("u64", GgufValue::U64(1ull << 60));
  w.Set("i64", GgufValue::I64(-(1ll << 60)));
  w.Set("f64", GgufValue::F64(0.1));
  w.Set("a.i32", GgufValue::I32Array({1, -2, 3}));
  w.Set("a.f32", GgufValue::F32Array({0.5f, -0.25f}));
  w.Set("a.str", GgufValue::StringArray({"a", "", "▁b c"}));
  w.Set("a.bool", GgufValue::BoolArray({true, false}));
  w.Set("a.u64", GgufValue::U64Array({7, 8}));
  w.Set("a.empty", GgufValue::U32Array({}));
  w.Set("u32", GgufValue::U32(7));  // Replaces in place.

  auto parsed = GgufFile::FromBuffer(*w.Serialize());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const GgufFile& f = **parsed;
  EXPECT_EQ(f.version(), 3u);
  ASSERT_EQ(f.metadata().size(), 18u);
  EXPECT_EQ(f.metadata()[4].first, "u32");
  EXPECT_EQ(*f.GetInt("u8"), 200);
  EXPECT_EQ(*f.GetInt("i8"), -100);
  EXPECT_EQ(*f.GetInt("u16"), 60000);
  EXPECT_EQ(*f.GetInt("i16"), -30000);
  EXPECT_EQ(*f.GetU32("u32"), 7u);
  EXPECT_EQ(*f.GetI32("i32"), -2000000000);
  EXPECT_EQ(*f.GetF32("f32"), 1.5f);
  EXPECT_EQ(*f.GetBool("bool"), true);
  EXPECT_EQ(*f.GetString("str"), "héllo");
  EXPECT_EQ(*f.GetInt("u64"), 1ll << 60);
  EXPECT_EQ(*f.GetInt("i64"), -(1ll << 60));
  EXPECT_EQ(*f.GetFloat("f64"), 0.1);
  EXPECT_EQ(*f.GetFloat("f32"), 1.5);
  EXPECT_EQ(*f.GetIntArray("a.i32"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(*f.Find("a.i32")->GetI32Array(), (std::vector<int32_t>{1, -2, 3}));
  EXPECT_EQ(*f.GetFloatArray("a.f32"), (std::vector<float>{0.5f, -0.25f}));
  EXPECT_EQ(*f.GetStringArray("a.str"),
            (std::vector<std::string>{"a", "", "▁b c"}));
  EXPECT_EQ(*f.GetIntArray("a.bool"), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(*f.GetIntArray("a.u64"), (std::vector<int64_t>{7, 8}));
  EXPECT_TRUE(f.GetIntArray("a.empty")->empty());
  EXPECT_EQ(f.Find("a.str")->element_type(), GgufType::kString);

  // Exact typed getters behave like llama.cpp's loader.
  EXPECT_TRUE(Contains(f.GetU32("u64").status().message(),
                       "key 'u64' has type UINT64, expected UINT32"));
  EXPECT_TRUE(Contains(f.GetString("a.str").status().message(),
                       "has type ARRAY of STRING, expected STRING"));
  EXPECT_EQ(f.GetU32("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(f.GetInt("str").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GgufRoundTrip, TensorsShapesAndDequantization) {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> w(4 * 64);
  for (float& v : w) v = dist(rng);

  GgufWriter writer;
  ASSERT_TRUE(
      writer.AddF32Tensor("f32", {4, 64}, w.data(), GgmlType::kF32).ok());
  ASSERT_TRUE(
      writer.AddF32Tensor("f16", {4, 64}, w.data(), GgmlType::kF16).ok());
  ASSERT_TRUE(
      writer.AddF32Tensor("bf16", {4, 64}, w.data(), GgmlType::kBF16).ok());
  ASSERT_TRUE(
      writer.AddF32Tensor("q8", {4, 64}, w.data(), GgmlType::kQ8_0).ok());
  ASSERT_TRUE(
      writer.AddF32Tensor("q4", {2, 2, 64}, w.data(), GgmlType::kQ4_0).ok());
  ASSERT_TRUE(
      writer.AddF32Tensor("empty", {0, 32}, w.data(), GgmlType::kQ8_0).ok());
  const std::string path = TempPath("gguf_test_roundtrip.gguf");
  ASSERT_TRUE(writer.WriteFile(path).ok());
  EXPECT_NE(::access((path + ".tmp").c_str(), F_OK), 0);  // Renamed away.

  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  const GgufTensorInfo* q4 = f.FindTensor("q4");
  ASSERT_NE(q4, nullptr);
  EXPECT_EQ(q4->ne, (std::vector<int64_t>{64, 2, 2}));
  EXPECT_EQ(q4->shape(), (std::vector<int64_t>{2, 2, 64}));
  EXPECT_EQ(q4->type, GgmlType::kQ4_0);
  EXPECT_EQ(q4->nbytes, 4u * 36u);

  EXPECT_EQ(*f.DequantizeTensor("f32"), w);
  auto check = [&](const char* name, float tol) {
    auto got = f.DequantizeTensor(name);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), w.size());
    for (size_t i = 0; i < w.size(); ++i)
      EXPECT_NEAR((*got)[i], w[i], tol) << name << i;
  };
  check("f16", 2e-3f);
  check("bf16", 2e-2f);
  check("q8", 0.03f);
  check("q4", 0.8f);
  EXPECT_TRUE(f.DequantizeTensor("empty")->empty());
  EXPECT_EQ(f.DequantizeTensor("nope").status().code(),
            absl::StatusCode::kNotFound);
  ::unlink(path.c_str());
  EXPECT_EQ(GgufFile::Open(path).status().code(), absl::StatusCode::kNotFound);
}

TEST(GgufReader, AcceptsVersion2) {
  Bytes b;
  b.Header(0, 1, 2).Str("k").U32(4).U32(5);
  auto f = GgufFile::FromBuffer(b.str());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ(*(*f)->GetU32("k"), 5u);
}

// A valid two-tensor file with a known layout, to corrupt field by field.
struct Layout {
  std::string bytes;
  size_t kv_type_at;      // Type of the first KV.
  size_t tensor_name_at;  // Name length of the first tensor.
  size_t n_dims_at;
  size_t ne0_at;
  size_t ggml_type_at;
  size_t offset_at;
  size_t second_offset_at;
};

Layout MakeLayout() {
  Layout l;
  Bytes b;
  b.Header(2, 1).Str("general.alignment");
  l.kv_type_at = b.size();
  b.U32(4).U32(32);
  l.tensor_name_at = b.size();
  b.Str("a");
  l.n_dims_at = b.size();
  b.U32(1);
  l.ne0_at = b.size();
  b.U64(32);
  l.ggml_type_at = b.size();
  b.U32(8);  // Q8_0: 34 bytes.
  l.offset_at = b.size();
  b.U64(0);
  b.Str("b").U32(1).U64(4).U32(0);
  l.second_offset_at = b.size();
  b.U64(64);
  b.PadTo(32).Zeros(64 + 32);
  l.bytes = b.str();
  return l;
}

template <typename T>
std::string Patch(std::string s, size_t at, T v) {
  std::memcpy(s.data() + at, &v, sizeof(T));
  return s;
}

TEST(GgufReader, LayoutIsValid) {
  Layout l = MakeLayout();
  auto f = GgufFile::FromBuffer(l.bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors()[1].offset, 64u);
}

struct Malformed {
  const char* what;
  std::string bytes;
  std::string message;  // Expected substring, byte offset included.
};

std::vector<Malformed> MalformedCases() {
  const Layout l = MakeLayout();
  auto at = [](size_t n) { return "at byte " + std::to_string(n) + ": "; };
  std::vector<Malformed> cases = {
      {"empty", "", at(0) + "magic needs 4 bytes but only 0 remain"},
      {"bad magic", "GGUX" + l.bytes.substr(4), at(0) + "bad magic"},
      {"version 1", Patch<uint32_t>(l.bytes, 4, 1),
       at(4) + "GGUF version 1 is not supported"},
      {"version 4", Patch<uint32_t>(l.bytes, 4, 4),
       at(4) + "unsupported GGUF version 4"},
      {"big endian", Patch<uint32_t>(l.bytes, 4, 0x03000000),
       at(4) + "big-endian"},
      {"huge tensor count", Patch<uint64_t>(l.bytes, 8, 1ull << 40),
       at(8) + "tensor count 1099511627776 cannot fit"},
      {"huge kv count", Patch<uint64_t>(l.bytes, 16, ~0ull),
       at(16) + "metadata count 18446744073709551615 cannot fit"},
      {"huge key length", Patch<uint64_t>(l.bytes, 24, 1ull << 62),
       at(24) + "key of metadata entry 0 length 4611686018427387904 exceeds"},
      {"invalid kv type", Patch<uint32_t>(l.bytes, l.kv_type_at, 13),
       at(l.kv_type_at) + "key 'general.alignment' has invalid GGUF type 13"},
      {"alignment type", Patch<uint32_t>(l.bytes, l.kv_type_at, 5),
       at(l.kv_type_at) + "general.alignment has type INT32, expected UINT32"},
      {"alignment value", Patch<uint32_t>(l.bytes, l.kv_type_at + 4, 24),
       at(l.kv_type_at) + "general.alignment 24 is not a power of 2"},
      {"long tensor name",
       Patch<uint64_t>(l.bytes, l.tensor_name_at, 1ull << 50),
       at(l.tensor_name_at) +
           "name of tensor 0 length 1125899906842624 exceeds"},
      {"too many dims", Patch<uint32_t>(l.bytes, l.n_dims_at, 5),
       at(l.n_dims_at) + "tensor 'a' has 5 dims, more than 4"},
      {"negative ne", Patch<uint64_t>(l.bytes, l.ne0_at, ~0ull),
       at(l.ne0_at) + "tensor 'a' ne[0] = 18446744073709551615 overflows"},
      {"partial block", Patch<uint64_t>(l.bytes, l.ne0_at, 48),
       at(l.ggml_type_at) + "tensor 'a' of type q8_0: ne[0] = 48 is not a "
                            "multiple of block size 32"},
      {"removed ggml type", Patch<uint32_t>(l.bytes, l.ggml_type_at, 4),
       at(l.ggml_type_at) + "tensor 'a' has invalid ggml type 4"},
      {"unknown ggml type", Patch<uint32_t>(l.bytes, l.ggml_type_at, 99),
       at(l.ggml_type_at) + "tensor 'a' has invalid ggml type 99"},
      {"misaligned offset", Patch<uint64_t>(l.bytes, l.offset_at, 8),
       at(l.offset_at) +
           "tensor 'a' offset 8 is not a multiple of the alignment 32"},
      {"offset past end", Patch<uint64_t>(l.bytes, l.second_offset_at, 96),
       at(l.second_offset_at) +
           "tensor 'b' data [96, +16) lies outside the 96-byte data section"},
      {"offset overflow",
       Patch<uint64_t>(l.bytes, l.second_offset_at, ~0ull << 5),
       at(l.second_offset_at) +
           "tensor 'b' data [18446744073709551584, +16) lies outside"},
      {"huge ne", Patch<uint64_t>(l.bytes, l.ne0_at, 1ull << 40),
       at(l.offset_at) + "tensor 'a' data [0, +"},
  };
  {
    Bytes b;
    b.Header(0, 2).Str("k").U32(4).U32(1).Str("k").U32(4).U32(2);
    cases.push_back({"duplicate key", b.str(), at(41) + "duplicate key 'k'"});
  }
  {
    Bytes b;
    b.Header(0, 1).Str("arr").U32(9).U32(9).U64(1);
    cases.push_back(
        {"nested array", b.str(),
         at(39) + "array 'arr' has invalid element type 9 (nested arrays"});
  }
  {
    Bytes b;
    b.Header(0, 1).Str("arr").U32(9).U32(8).U64(1ull << 61).Zeros(16);
    cases.push_back(
        {"array count", b.str(),
         at(43) + "array 'arr' claims 2305843009213693952 elements of STRING"});
  }
  {
    Bytes b;
    b.Header(0, 1).Str("arr").U32(9).U32(6).U64(5).F32(1).F32(2);
    cases.push_back(
        {"short array", b.str(), "array 'arr' claims 5 elements of FLOAT32"});
  }
  {
    Bytes b;
    b.Header(2, 0).Str("t").U32(1).U64(4).U32(0).U64(0);
    b.Str("t").U32(1).U64(4).U32(0).U64(32).PadTo(32).Zeros(64);
    cases.push_back(
        {"duplicate tensor", b.str(), at(57) + "duplicate tensor name 't'"});
  }
  {
    Bytes b;
    b.Header(1, 0).Str("t").U32(1).U64(4).U32(0).U64(
        0);  // No data section at all.
    cases.push_back({"no data", b.str(),
                     at(57) + "data section would start at byte 64, past the "
                              "end of the 57-byte file"});
  }
  return cases;
}

TEST(GgufReader, MalformedInputsNameTheOffset) {
  for (const Malformed& c : MalformedCases()) {
    auto f = GgufFile::FromBuffer(c.bytes);
    ASSERT_FALSE(f.ok()) << c.what;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_TRUE(Contains(f.status().message(), c.message)) << c.what;
    EXPECT_TRUE(Contains(f.status().message(), "gguf <buffer>: at byte "))
        << c.what;
  }
}

TEST(GgufReader, EveryTruncationFailsCleanly) {
  GgufWriter w;
  w.Set("general.architecture", GgufValue::String("llama"));
  w.Set("tokens", GgufValue::StringArray({"a", "bb", "ccc"}));
  w.Set("scores", GgufValue::F32Array({1, 2, 3}));
  std::vector<float> x(64, 1.0f);
  ASSERT_TRUE(w.AddF32Tensor("w", {2, 32}, x.data(), GgmlType::kQ4_0).ok());
  const std::string full = *w.Serialize();
  ASSERT_TRUE(GgufFile::FromBuffer(full).ok());
  // The data of the last (only) tensor ends 36 bytes into the data section; any
  // cut before that must fail, with a message naming a byte offset.
  const size_t data_end = full.size() - 28;
  for (size_t n = 0; n < data_end; ++n) {
    auto f = GgufFile::FromBuffer(full.substr(0, n));
    ASSERT_FALSE(f.ok()) << "truncated to " << n;
    EXPECT_TRUE(Contains(f.status().message(), "at byte ")) << n;
  }
  // The trailing padding after the last tensor is optional for readers.
  EXPECT_TRUE(GgufFile::FromBuffer(full.substr(0, data_end)).ok());
}

TEST(GgufReader, RandomCorruptionNeverCrashes) {
  GgufWriter w;
  w.Set("general.architecture", GgufValue::String("llama"));
  w.Set("tokens", GgufValue::StringArray({"a", "bb", "ccc"}));
  std::vector<float> x(256, 0.5f);
  ASSERT_TRUE(w.AddF32Tensor("w", {2, 128}, x.data(), GgmlType::kQ8_0).ok());
  ASSERT_TRUE(w.AddF32Tensor("n", {128}, x.data(), GgmlType::kF32).ok());
  const std::string full = *w.Serialize();
  std::mt19937 rng(3);
  int parsed = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = full;
    const int flips = 1 + iter % 4;
    for (int k = 0; k < flips; ++k) {
      const size_t pos = rng() % s.size();
      s[pos] = static_cast<char>(rng());
    }
    auto f = GgufFile::FromBuffer(s);
    if (!f.ok()) continue;
    ++parsed;
    for (const GgufTensorInfo& t : (*f)->tensors()) {
      auto d = (*f)->DequantizeTensor(t);
      if (d.ok()) EXPECT_EQ(d->size(), static_cast<size_t>(t.numel()));
    }
  }
  EXPECT_GT(parsed, 0);
}

}  // namespace
}  // namespace hearth::formats
