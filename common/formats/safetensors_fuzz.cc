// libFuzzer target for SafetensorsFile::FromBuffer.
//
// Beyond "does not crash" (ASan/UBSan catch out-of-bounds reads and overflow),
// it checks two properties: every accepted view lies inside the input, and an
// accepted file survives a write/read round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/formats/safetensors.h"

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using hearth::formats::SafetensorsFile;
  using hearth::formats::SafetensorsWriter;
  using hearth::formats::TensorView;

  auto file = SafetensorsFile::FromBuffer(
      std::string(reinterpret_cast<const char*>(data), size));
  if (!file.ok()) return 0;

  SafetensorsWriter writer;
  uint64_t total = 0;
  for (const TensorView& t : (*file)->tensors()) {
    Check(static_cast<uint64_t>(t.numel()) * DTypeSize(t.dtype) == t.nbytes);
    // Touch every byte so ASan sees any view that escapes the buffer.
    uint8_t sum = 0;
    for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
    (void)sum;
    total += t.nbytes;
    Check((*file)->Find(t.name) == &t);
    writer.Add(t.name, t.dtype, t.shape, t.data, t.nbytes);
  }
  Check((*file)->data_offset() + total == size);
  for (const auto& [key, value] : (*file)->metadata())
    writer.SetMetadata(key, value);

  auto bytes = writer.Serialize();
  Check(bytes.ok());
  auto again = SafetensorsFile::FromBuffer(*bytes);
  Check(again.ok());
  Check((*again)->tensors().size() == (*file)->tensors().size());
  for (const TensorView& t : (*file)->tensors()) {
    const TensorView* u = (*again)->Find(t.name);
    Check(u != nullptr && u->dtype == t.dtype && u->shape == t.shape &&
          u->nbytes == t.nbytes);
    Check(t.nbytes == 0 || std::memcmp(u->data, t.data, t.nbytes) == 0);
  }
  for (const auto& [key, value] : (*file)->metadata()) {
    Check((*again)->metadata().at(key) == value);
  }
  return 0;
}
