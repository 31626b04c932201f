#include "common/formats/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

// Set by CMakeLists.txt; the fallback works from the repository root.
#ifndef HEARTH_FORMATS_TESTDATA
#define HEARTH_FORMATS_TESTDATA "common/formats/testdata"
#endif

namespace hearth::formats {
namespace {

// gmock is not installed; this gives HasSubstr's failure message.
::testing::AssertionResult Contains(absl::string_view haystack,
                                    absl::string_view needle) {
  if (haystack.find(needle) != absl::string_view::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << haystack << "\"\n  does not contain \"" << needle << "\"";
}

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A file with the given header text (not padded) and `data_bytes` zero bytes.
std::string RawFile(const std::string& header, size_t data_bytes = 0) {
  return LengthPrefix(header.size()) + header + std::string(data_bytes, '\0');
}

std::string MakeTempDir(const std::string& name) {
  std::string dir = absl::StrCat(::testing::TempDir(), "/safetensors_test_",
                                 name, "_", ::getpid());
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string Bytes(const TensorView& v) {
  return std::string(reinterpret_cast<const char*>(v.data), v.nbytes);
}

TEST(SafetensorsTest, RoundTripsSeveralDTypes) {
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 1e-20f, 0.0f, 65504.0f};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff, 0x0001};
  const std::vector<uint16_t> bf16 = {0x3f80, 0x4049};
  const std::vector<int64_t> i64 = {-1, 0, 1LL << 40};
  const std::vector<uint8_t> u8 = {0, 7, 255};
  const std::vector<uint8_t> flags = {1, 0};
  const double scalar = 2.718281828459045;

  SafetensorsWriter writer;
  writer.Add("model.layers.0.mlp.up_proj.weight", DType::kF32, {2, 3},
             f32.data(), 24);
  writer.Add("half", DType::kF16, {4}, f16.data(), 8);
  writer.Add("brain", DType::kBF16, {1, 2}, bf16.data(), 4);
  writer.Add("ids", DType::kI64, {3}, i64.data(), 24);
  writer.Add("bytes", DType::kU8, {3}, u8.data(), 3);
  writer.Add("mask", DType::kBool, {2}, flags.data(), 2);
  writer.Add("scalar", DType::kF64, {}, &scalar, 8);
  writer.Add("empty", DType::kF32, {0, 3}, nullptr, 0);
  writer.SetMetadata("hearth_method", "gptq");
  auto bytes = writer.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status();

  auto file = SafetensorsFile::FromBuffer(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& tensors = (*file)->tensors();
  ASSERT_EQ(tensors.size(), 8u);

  // tensors() is in name order whatever the data layout.
  std::vector<std::string> names;
  for (const TensorView& t : tensors) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "brain", "bytes", "empty", "half", "ids", "mask",
                       "model.layers.0.mlp.up_proj.weight", "scalar"}));

  const TensorView* w = (*file)->Find("model.layers.0.mlp.up_proj.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kF32);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w->numel(), 6);
  ASSERT_EQ(w->nbytes, 24u);
  float got[6];
  std::memcpy(got, w->data, 24);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(got[i], f32[i]) << i;

  const TensorView* half = (*file)->Find("half");
  ASSERT_NE(half, nullptr);
  EXPECT_EQ(half->dtype, DType::kF16);
  EXPECT_EQ(Bytes(*half),
            std::string(reinterpret_cast<const char*>(f16.data()), 8));
  const TensorView* brain = (*file)->Find("brain");
  ASSERT_NE(brain, nullptr);
  EXPECT_EQ(brain->dtype, DType::kBF16);
  EXPECT_EQ(brain->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(Bytes(*brain),
            std::string(reinterpret_cast<const char*>(bf16.data()), 4));
  int64_t ids[3];
  std::memcpy(ids, (*file)->Find("ids")->data, 24);
  EXPECT_EQ(ids[2], 1LL << 40);
  EXPECT_EQ(Bytes(*(*file)->Find("bytes")), std::string("\x00\x07\xff", 3));
  EXPECT_EQ((*file)->Find("mask")->dtype, DType::kBool);
  const TensorView* s = (*file)->Find("scalar");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->numel(), 1);
  double scalar_back;
  std::memcpy(&scalar_back, s->data, 8);
  EXPECT_EQ(scalar_back, scalar);
  const TensorView* empty = (*file)->Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(empty->nbytes, 0u);
  EXPECT_EQ((*file)->Find("missing"), nullptr);

  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->metadata().at("hearth_method"), "gptq");
  // The data buffer starts 8-aligned and each tensor sits at a multiple of its
  // element size, so views into an aligned buffer are naturally aligned.
  EXPECT_EQ((*file)->data_offset() % 8, 0u);
  const uint8_t* base = tensors.front().data;
  for (const TensorView& t : tensors) base = std::min(base, t.data);
  for (const TensorView& t : tensors) {
    EXPECT_EQ(static_cast<size_t>(t.data - base) % DTypeSize(t.dtype), 0u)
        << t.name;
  }
}

TEST(SafetensorsTest, DataIsLaidOutByElementSizeThenName) {
  const uint8_t a[3] = {1, 2, 3};
  const float b = 1.0f;
  const uint16_t c = 0x3c00;
  SafetensorsWriter writer;
  writer.Add("a", DType::kU8, {3}, a, 3);
  writer.Add("b", DType::kF32, {}, &b, 4);
  writer.Add("c", DType::kF16, {1}, &c, 2);
  auto bytes = writer.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const std::string json =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[6,9]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
      "\"c\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4,6]}}";
  ASSERT_EQ(json.size(), 189u);
  EXPECT_EQ(*bytes, LengthPrefix(192) + json + "   " +
                        std::string("\x00\x00\x80\x3f\x00\x3c\x01\x02\x03", 9));
}

TEST(SafetensorsTest, HeaderIsByteExact) {
  const float a[2] = {1.0f, 2.0f};
  const int8_t b[3] = {-1, 0, 1};
  SafetensorsWriter writer;
  writer.Add("b", DType::kI8, {1, 3}, b, 3);  // Added out of order on purpose.
  writer.Add("a", DType::kF32, {2}, a, 8);
  writer.SetMetadata("step", "7");
  auto bytes = writer.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status();

  const std::string json =
      "{\"__metadata__\":{\"format\":\"pt\",\"step\":\"7\"},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"I8\",\"shape\":[1,3],\"data_offsets\":[8,11]}}";
  ASSERT_EQ(json.size(), 151u);
  const std::string expected =
      std::string("\x98\0\0\0\0\0\0\0", 8) + json + " " +
      std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8) +
      std::string("\xff\x00\x01", 3);
  EXPECT_EQ(*bytes, expected);
  EXPECT_EQ((bytes->size() - 11) % 8, 0u);  // Data starts 8-byte aligned.

  auto header = writer.SerializeHeader();
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(*header, expected.substr(0, 8 + 152));
}

TEST(SafetensorsTest, MetadataFormatCanBeOverridden) {
  SafetensorsWriter writer;
  writer.SetMetadata("format", "mlx");
  auto bytes = writer.Serialize();
  ASSERT_TRUE(bytes.ok());
  // An empty checkpoint is legal: the header alone.
  EXPECT_EQ(bytes->substr(8), "{\"__metadata__\":{\"format\":\"mlx\"}}       ");
  auto file = SafetensorsFile::FromBuffer(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_EQ((*file)->metadata().at("format"), "mlx");
}

// The reference writer orders tensors by dtype alignment, not by name, and
// readers must not care.
TEST(SafetensorsTest, ReadsReferenceWriterLayout) {
  const std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
      "\"bias\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]}}";
  std::string padded = "  " + header;  // Leading whitespace is tolerated too.
  padded.append((8 - padded.size() % 8) % 8, ' ');
  std::string data(22, '\0');
  for (int i = 0; i < 22; ++i) data[i] = static_cast<char>(i);
  auto file =
      SafetensorsFile::FromBuffer(LengthPrefix(padded.size()) + padded + data);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 2u);
  EXPECT_EQ((*file)->tensors()[0].name,
            "bias");  // Name order, not buffer order.
  EXPECT_EQ((*file)->tensors()[1].name, "weight");
  const TensorView* bias = (*file)->Find("bias");
  const TensorView* weight = (*file)->Find("weight");
  ASSERT_NE(bias, nullptr);
  ASSERT_NE(weight, nullptr);
  EXPECT_EQ(weight->data[0], 0);
  EXPECT_EQ(bias->data - weight->data, 16);
  EXPECT_EQ(bias->nbytes, 6u);
  EXPECT_EQ(bias->data[0], 16);
  EXPECT_EQ(bias->data[5], 21);
}

TEST(SafetensorsTest, WriteFileIsDurableAndMmapped) {
  const std::string dir = MakeTempDir("write");
  const std::string path = dir + "/model.safetensors";
  std::vector<float> values(1000);
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = static_cast<float>(i) * 0.5f;
  SafetensorsWriter writer;
  writer.Add("w", DType::kF32, {10, 100}, values.data(), values.size() * 4);
  ASSERT_TRUE(writer.WriteFile(path).ok());
  EXPECT_NE(::access(path.c_str(), F_OK), -1);
  EXPECT_EQ(::access((path + ".tmp").c_str(), F_OK), -1);  // Renamed away.

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->numel(), 1000);
  float last;
  std::memcpy(&last, w->data + 999 * 4, 4);
  EXPECT_EQ(last, 499.5f);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), (*file)->data_offset() + 4000);

  // Same bytes as Serialize().
  std::ifstream in(path, std::ios::binary);
  std::string on_disk((std::istreambuf_iterator<char>(in)),
                      std::istreambuf_iterator<char>());
  EXPECT_EQ(on_disk, *writer.Serialize());
}

TEST(SafetensorsTest, OpenReportsMissingFilesAndDirectories) {
  auto missing = SafetensorsFile::Open("/nonexistent/model.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status().message(), "/nonexistent/model"));
  auto dir = SafetensorsFile::Open(MakeTempDir("dir"));
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(dir.status().message(), "not a regular file"));

  const std::string empty = MakeTempDir("empty") + "/empty.safetensors";
  WriteText(empty, "");
  auto opened = SafetensorsFile::Open(empty);
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(opened.status().message(), empty));
  EXPECT_TRUE(Contains(opened.status().message(), "0 bytes"));
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  const float x[4] = {};
  struct Case {
    const char* label;
    std::function<void(SafetensorsWriter&)> add;
    const char* message;
  };
  const Case cases[] = {
      {"size",
       [&](SafetensorsWriter& w) { w.Add("t", DType::kF32, {4}, x, 12); },
       "tensor \"t\": 12 bytes given but shape [4] F32 needs 16"},
      {"duplicate",
       [&](SafetensorsWriter& w) {
         w.Add("t", DType::kF32, {1}, x, 4);
         w.Add("t", DType::kF32, {1}, x, 4);
       },
       "tensor \"t\": added twice"},
      {"reserved",
       [&](SafetensorsWriter& w) {
         w.Add("__metadata__", DType::kU8, {0}, x, 0);
       },
       "reserved"},
      {"negative",
       [&](SafetensorsWriter& w) { w.Add("t", DType::kF32, {-1}, x, 0); },
       "invalid shape [-1]"},
      {"null",
       [&](SafetensorsWriter& w) { w.Add("t", DType::kU8, {2}, nullptr, 2); },
       "null data"},
      {"utf8",
       [&](SafetensorsWriter& w) { w.Add("bad\xff", DType::kU8, {0}, x, 0); },
       "not valid UTF-8"},
  };
  for (const Case& c : cases) {
    SafetensorsWriter writer;
    c.add(writer);
    auto bytes = writer.Serialize();
    ASSERT_FALSE(bytes.ok()) << c.label;
    EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument)
        << c.label;
    EXPECT_TRUE(Contains(bytes.status().message(), c.message)) << c.label;
    EXPECT_FALSE(writer.WriteFile(MakeTempDir("bad") + "/x.safetensors").ok())
        << c.label;
  }
}

struct Malformed {
  const char* label;
  std::string bytes;
  const char* message;  // Must appear in the error.
};

std::vector<Malformed> MalformedCases() {
  const std::string ok_entry =
      "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
  std::string huge_len = LengthPrefix(100'000'001) + std::string(16, ' ');
  return {
      {"empty", "",
       "file is 0 bytes, too short for the 8-byte header length at offset 0"},
      {"seven bytes", std::string(7, '\0'), "file is 7 bytes"},
      {"header over limit", huge_len,
       "header length 100000001 (file offset 0) exceeds the 100000000-byte "
       "limit"},
      {"header past end", LengthPrefix(64) + "{}",
       "header length 64 (file offset 0) runs past the end of the 10-byte "
       "file"},
      {"not json", RawFile("{\"a\":"),
       "header is not valid JSON at file offset"},
      {"garbage byte", RawFile("{\"a\"\x01}"),
       "not valid JSON at file offset 12"},
      {"trailing nul padding", RawFile(std::string("{}") + '\0' + "garbage"),
       "header has a NUL byte at file offset 10"},
      {"not object", RawFile("[1,2]"),
       "header (file offset 8) is a JSON array, not an object"},
      {"entry not object", RawFile("{\"t\":[1]}"),
       "tensor \"t\" is a JSON array"},
      {"missing dtype",
       RawFile("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
       "tensor \"t\": missing \"dtype\""},
      {"missing shape",
       RawFile("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8),
       "tensor \"t\": missing \"shape\""},
      {"missing offsets",
       RawFile("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8),
       "tensor \"t\": missing \"data_offsets\""},
      {"dtype not string",
       RawFile("{\"t\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
       "tensor \"t\": \"dtype\" is a JSON number"},
      {"unknown dtype",
       RawFile(
           "{\"t\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[0,4]}}",
           4),
       "tensor \"t\": \"dtype\": unsupported safetensors dtype \"U16\""},
      {"shape not array",
       RawFile("{\"t\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}",
               8),
       "tensor \"t\": \"shape\" is a JSON number, not an array"},
      {"negative dim",
       RawFile("{\"t\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,"
               "8]}}",
               8),
       "tensor \"t\": \"shape\"[1] is negative (-1)"},
      {"fractional dim",
       RawFile(
           "{\"t\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}",
           8),
       "tensor \"t\": \"shape\"[0] is 2.5, not a non-negative 64-bit integer"},
      {"dim over int64",
       RawFile("{\"t\":{\"dtype\":\"U8\",\"shape\":[9223372036854775808],"
               "\"data_offsets\":[0,8]}}",
               8),
       "\"shape\"[0] is 9223372036854775808"},
      {"size overflow",
       RawFile("{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
               "\"data_offsets\":[0,0]}}"),
       "tensor \"t\": shape [4611686018427387904, 4] F32 overflows a 64-bit "
       "byte count"},
      {"element overflow hidden by zero dim",
       RawFile("{\"t\":{\"dtype\":\"U8\",\"shape\":[4611686018427387904,2,0],"
               "\"data_offsets\":[0,0]}}"),
       "overflows"},
      {"size mismatch",
       RawFile(
           "{\"model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[4,8],"
           "\"data_offsets\":[0,100]}}",
           100),
       "tensor \"model.embed_tokens.weight\": data_offsets [0, 100) holds 100 "
       "bytes but "
       "shape [4, 8] F32 needs 128 (data buffer at file offset 90)"},
      {"offsets arity",
       RawFile("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,"
               "16]}}",
               8),
       "tensor \"t\": \"data_offsets\" is [0,8,16], not [begin, end]"},
      {"negative offset",
       RawFile(
           "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}",
           8),
       "\"data_offsets\" is [-8,0]"},
      {"end before begin",
       RawFile(
           "{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}",
           8),
       "tensor \"t\": data_offsets [8, 0) ends before it begins"},
      {"past buffer", RawFile("{\"t\":" + ok_entry + "}", 4),
       "tensor \"t\": data_offsets [0, 8) runs past the 4-byte data buffer "
       "(file offset 62)"},
      {"hole",
       RawFile("{\"a\":" + ok_entry +
                   ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":["
                   "12,16]}}",
               16),
       "data buffer bytes [8, 12) (file offset"},
      {"gap at start",
       RawFile(
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
           8),
       "data buffer bytes [0, 4)"},
      {"overlap",
       RawFile("{\"a\":" + ok_entry +
                   ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":["
                   "4,8]}}",
               8),
       "tensor \"b\": data_offsets [4, 8) overlap tensor \"a\" which ends at "
       "8"},
      {"trailing bytes", RawFile("{\"t\":" + ok_entry + "}", 12),
       "data buffer has 4 trailing bytes at file offset"},
      {"metadata not object", RawFile("{\"__metadata__\":[\"pt\"]}"),
       "\"__metadata__\" is a JSON array, not an object of strings"},
      {"metadata value not string",
       RawFile("{\"__metadata__\":{\"format\":\"pt\",\"n\":3}}"),
       "\"__metadata__\".\"n\" is a JSON number, not a string"},
      {"duplicate tensor",
       RawFile("{\"t\":" + ok_entry + ",\"t\":" + ok_entry + "}", 8),
       "duplicate key \"t\""},
      {"deep nesting", RawFile(std::string(100, '[') + std::string(100, ']')),
       "nested deeper than"},
      {"invalid utf8 name", RawFile("{\"\xc3\x28\":" + ok_entry + "}", 8),
       "not valid JSON"},
  };
}

TEST(SafetensorsTest, RejectsMalformedInputWithPreciseErrors) {
  for (const Malformed& c : MalformedCases()) {
    auto file = SafetensorsFile::FromBuffer(c.bytes);
    ASSERT_FALSE(file.ok()) << c.label;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument)
        << c.label;
    EXPECT_TRUE(Contains(file.status().message(), c.message)) << c.label;
    EXPECT_TRUE(Contains(file.status().message(), "safetensors: ")) << c.label;
  }
}

TEST(SafetensorsTest, MalformedFileErrorsNameThePath) {
  const std::string path = MakeTempDir("malformed") + "/bad.safetensors";
  WriteText(path, RawFile("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8));
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      Contains(file.status().message(),
               absl::StrCat("safetensors ", path, ": tensor \"t\": missing")));
}

// Every prefix of a valid file is invalid, and none may crash.
TEST(SafetensorsTest, TruncationsAreRejected) {
  const float v[3] = {1, 2, 3};
  SafetensorsWriter writer;
  writer.Add("v", DType::kF32, {3}, v, 12);
  const std::string bytes = *writer.Serialize();
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(SafetensorsFile::FromBuffer(bytes.substr(0, n)).ok()) << n;
  }
  EXPECT_TRUE(SafetensorsFile::FromBuffer(bytes).ok());
}

// testdata/safetensors_corpus was written by Python's json/struct modules
// (make_corpus.py), an encoder independent of this one.
TEST(SafetensorsTest, ReadsFilesWrittenByPython) {
  const std::string dir =
      std::string(HEARTH_FORMATS_TESTDATA) + "/safetensors_corpus/";
  auto dtypes = SafetensorsFile::Open(dir + "dtypes.safetensors");
  ASSERT_TRUE(dtypes.ok()) << dtypes.status();
  const auto& file = **dtypes;
  ASSERT_EQ(file.tensors().size(), 10u);
  EXPECT_EQ(file.metadata().at("note"), "seed");
  double f64;
  std::memcpy(&f64, file.Find("f64")->data, 8);
  EXPECT_EQ(f64, 2.5);
  EXPECT_TRUE(file.Find("f64")->shape.empty());
  int64_t i64[2];
  std::memcpy(i64, file.Find("i64")->data, 16);
  EXPECT_EQ(i64[0], -1);
  EXPECT_EQ(i64[1], int64_t{1} << 40);
  int32_t i32[2];
  std::memcpy(i32, file.Find("i32")->data, 8);
  EXPECT_EQ(i32[1], -7);
  EXPECT_EQ(file.Find("i32")->shape, (std::vector<int64_t>{1, 2}));
  uint16_t f16[3];
  std::memcpy(f16, file.Find("f16")->data, 6);
  EXPECT_EQ(HalfToFloat(f16[2]), 65504.0f);
  uint16_t bf16;
  std::memcpy(&bf16, file.Find("bf16")->data, 2);
  EXPECT_EQ(BFloat16ToFloat(bf16), 1.0f);
  EXPECT_EQ(file.Find("i8")->dtype, DType::kI8);
  EXPECT_EQ(static_cast<int8_t>(file.Find("i8")->data[0]), -1);
  EXPECT_EQ(Bytes(*file.Find("u8")), std::string("\x00\x7f\xff", 3));
  EXPECT_EQ(file.Find("mask")->dtype, DType::kBool);
  EXPECT_EQ(file.Find("none")->numel(), 0);

  auto f32 = SafetensorsFile::Open(dir + "f32.safetensors");
  ASSERT_TRUE(f32.ok()) << f32.status();
  float w[4];
  std::memcpy(w, (*f32)->Find("w")->data, 16);
  EXPECT_EQ(w[1], -2.0f);
  EXPECT_EQ(w[2], 0.5f);

  auto trailing = SafetensorsFile::Open(dir + "near_miss_trailing.safetensors");
  EXPECT_EQ(trailing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(trailing.status().message(), "2 trailing bytes"));
}

class CheckpointReaderTest : public ::testing::Test {
 protected:
  void WriteShard(const std::string& dir, const std::string& file,
                  const std::vector<std::pair<std::string, float>>& tensors) {
    SafetensorsWriter writer;
    for (const auto& [name, value] : tensors) {
      values_.push_back(std::make_unique<float[]>(2));
      values_.back()[0] = value;
      values_.back()[1] = -value;
      writer.Add(name, DType::kF32, {2}, values_.back().get(), 8);
    }
    ASSERT_TRUE(writer.WriteFile(dir + "/" + file).ok());
  }

  float First(const TensorView* view) {
    float f;
    std::memcpy(&f, view->data, 4);
    return f;
  }

  std::vector<std::unique_ptr<float[]>> values_;
};

TEST_F(CheckpointReaderTest, SingleFile) {
  const std::string dir = MakeTempDir("single");
  WriteShard(dir, "model.safetensors", {{"a", 1}, {"b", 2}});
  auto reader = CheckpointReader::Open(dir + "/");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->TensorNames(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ((*reader)->ShardFiles(),
            (std::vector<std::string>{"model.safetensors"}));
  ASSERT_NE((*reader)->Find("b"), nullptr);
  EXPECT_EQ(First((*reader)->Find("b")), 2.0f);
  EXPECT_EQ((*reader)->Find("c"), nullptr);
}

TEST_F(CheckpointReaderTest, ShardedWithIndex) {
  const std::string dir = MakeTempDir("sharded");
  WriteShard(dir, "model-00001-of-00002.safetensors",
             {{"model.embed_tokens.weight", 1},
              {"model.layers.0.mlp.up_proj.weight", 2}});
  WriteShard(dir, "model-00002-of-00002.safetensors", {{"lm_head.weight", 3}});
  // A stale single file beside the index must be ignored.
  WriteShard(dir, "model.safetensors", {{"stale", 9}});
  WriteText(dir + "/model.safetensors.index.json", R"({
    "metadata": {"total_size": 24},
    "weight_map": {
      "lm_head.weight": "model-00002-of-00002.safetensors",
      "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
      "model.layers.0.mlp.up_proj.weight": "model-00001-of-00002.safetensors"
    }
  })");
  auto reader = CheckpointReader::Open(dir);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(
      (*reader)->TensorNames(),
      (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight",
                                "model.layers.0.mlp.up_proj.weight"}));
  EXPECT_EQ((*reader)->ShardFiles(),
            (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors"}));
  EXPECT_EQ(First((*reader)->Find("lm_head.weight")), 3.0f);
  EXPECT_EQ(First((*reader)->Find("model.embed_tokens.weight")), 1.0f);
  EXPECT_EQ(First((*reader)->Find("model.layers.0.mlp.up_proj.weight")), 2.0f);
  EXPECT_EQ((*reader)->Find("stale"), nullptr);
}

TEST_F(CheckpointReaderTest, ErrorsNameTheFileAndKey) {
  const std::string empty_dir = MakeTempDir("none");
  auto none = CheckpointReader::Open(empty_dir);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(none.status().message(), empty_dir));
  EXPECT_TRUE(
      Contains(none.status().message(), "model.safetensors.index.json"));

  struct Case {
    const char* label;
    std::string index;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"not json", "{", absl::StatusCode::kInvalidArgument, "not valid JSON"},
      {"no weight_map", "{\"metadata\":{}}", absl::StatusCode::kInvalidArgument,
       "missing \"weight_map\""},
      {"weight_map type", "{\"weight_map\":[]}",
       absl::StatusCode::kInvalidArgument, "\"weight_map\" is a JSON array"},
      {"file not string", "{\"weight_map\":{\"a\":1}}",
       absl::StatusCode::kInvalidArgument,
       "weight_map[\"a\"] is a JSON number"},
      {"missing shard", "{\"weight_map\":{\"a\":\"gone.safetensors\"}}",
       absl::StatusCode::kNotFound, "weight_map[\"a\"] = \"gone.safetensors\""},
      {"tensor not in shard", "{\"weight_map\":{\"zz\":\"shard.safetensors\"}}",
       absl::StatusCode::kInvalidArgument,
       "weight_map[\"zz\"] = \"shard.safetensors\" but that shard has no "
       "tensor \"zz\""},
      {"path escape", "{\"weight_map\":{\"a\":\"../shard.safetensors\"}}",
       absl::StatusCode::kInvalidArgument,
       "is not a file name in the model folder"},
      {"bad shard", "{\"weight_map\":{\"a\":\"bad.safetensors\"}}",
       absl::StatusCode::kInvalidArgument, "bad.safetensors: file is 3 bytes"},
  };
  for (const Case& c : cases) {
    const std::string dir =
        MakeTempDir(std::string("err_") + std::to_string(&c - cases));
    WriteShard(dir, "shard.safetensors", {{"a", 1}});
    WriteText(dir + "/bad.safetensors", "abc");
    const std::string index_path = dir + "/model.safetensors.index.json";
    WriteText(index_path, c.index);
    auto reader = CheckpointReader::Open(dir);
    ASSERT_FALSE(reader.ok()) << c.label;
    EXPECT_EQ(reader.status().code(), c.code)
        << c.label << ": " << reader.status();
    EXPECT_TRUE(Contains(reader.status().message(), index_path)) << c.label;
    EXPECT_TRUE(Contains(reader.status().message(), c.message)) << c.label;
  }
}

}  // namespace
}  // namespace hearth::formats
