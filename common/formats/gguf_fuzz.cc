// libFuzzer target for the GGUF reader: any byte string must parse into a
// GgufFile or fail with a Status, never crash, hang or read out of bounds (ASan
// and UBSan watch). Whatever parses is also walked the way LoadLlamaGguf walks
// a file: every typed getter on every key, and every tensor dequantized.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using hearth::formats::GgufFile;
  auto file = GgufFile::FromBuffer(
      std::string(reinterpret_cast<const char*>(data), size));
  if (!file.ok()) return 0;
  const GgufFile& f = **file;
  for (const auto& [key, value] : f.metadata()) {
    (void)f.GetU32(key);
    (void)f.GetF32(key);
    (void)f.GetBool(key);
    (void)f.GetString(key);
    (void)f.GetInt(key);
    (void)f.GetFloat(key);
    (void)f.GetStringArray(key);
    (void)f.GetFloatArray(key);
    (void)f.GetIntArray(key);
    (void)value.DebugString();
  }
  for (const auto& t : f.tensors()) {
    // Dequantized output can be ~14x the input (Q2_K): bound the work so the
    // fuzzer explores parsing rather than allocating.
    if (t.nbytes <= (1u << 20)) (void)f.DequantizeTensor(t);
  }
  return 0;
}
