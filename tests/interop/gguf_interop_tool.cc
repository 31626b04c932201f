// Command-line driver for the GGUF interop test (tests/interop/gguf_check.py).
//
//   gguf_interop_tool export <hf_folder> <out.gguf> <f32|f16|bf16|q8_0|q4_0>
//       ExportLlamaGguf.
//   gguf_interop_tool load <in.gguf> <out_folder>
//       LoadLlamaGguf, then writes what it got back as an HF folder
//       (config.json + model.safetensors, F32) so the Python side can compare
//       hearth's loader (dequantization, Q/K un-permutation) with its own.
//
// The interop script drives real peers (gguf-py, llama.cpp) against these
// files; this binary is only the hearth side of that comparison.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/formats/gguf_llama.h"
#include "common/formats/safetensors.h"

namespace {

using namespace hearth::formats;  // NOLINT: a small test driver.

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "gguf_interop_tool: %s\n",
               std::string(s.ToString()).c_str());
  return 1;
}

int Export(const std::string& folder, const std::string& out,
           const std::string& type_name) {
  GgmlType type;
  if (type_name == "f32") {
    type = GgmlType::kF32;
  } else if (type_name == "f16") {
    type = GgmlType::kF16;
  } else if (type_name == "bf16") {
    type = GgmlType::kBF16;
  } else if (type_name == "q8_0") {
    type = GgmlType::kQ8_0;
  } else if (type_name == "q4_0") {
    type = GgmlType::kQ4_0;
  } else {
    std::fprintf(stderr, "unknown type %s\n", type_name.c_str());
    return 2;
  }
  absl::Status s = ExportLlamaGguf(folder, out, type);
  return s.ok() ? 0 : Fail(s);
}

int Load(const std::string& in, const std::string& folder) {
  absl::StatusOr<LoadedGguf> loaded = LoadLlamaGguf(in);
  if (!loaded.ok()) return Fail(loaded.status());
  ::mkdir(folder.c_str(), 0755);
  std::ofstream(folder + "/config.json") << LlamaConfigToJson(loaded->config);
  SafetensorsWriter writer;
  for (const auto& [name, data] : loaded->tensors) {
    writer.Add(name, DType::kF32, loaded->shapes.at(name), data.data(),
               data.size() * sizeof(float));
  }
  absl::Status s = writer.WriteFile(folder + "/model.safetensors");
  return s.ok() ? 0 : Fail(s);
}

int Dequant(const std::string& in, const std::string& folder) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(in);
  if (!file.ok()) return Fail(file.status());
  ::mkdir(folder.c_str(), 0755);
  for (const GgufTensorInfo& t : (*file)->tensors()) {
    absl::StatusOr<std::vector<float>> data = (*file)->DequantizeTensor(t);
    if (!data.ok()) return Fail(data.status());
    std::ofstream out(folder + "/" + t.name + ".f32", std::ios::binary);
    out.write(reinterpret_cast<const char*>(data->data()),
              static_cast<std::streamsize>(data->size() * sizeof(float)));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::string(argv[1]) == "export")
    return Export(argv[2], argv[3], argv[4]);
  if (argc == 4 && std::string(argv[1]) == "load")
    return Load(argv[2], argv[3]);
  if (argc == 4 && std::string(argv[1]) == "dequant")
    return Dequant(argv[2], argv[3]);
  std::fprintf(
      stderr,
      "usage: %s export <hf_folder> <out.gguf> <f32|f16|bf16|q8_0|q4_0>\n"
      "       %s load <in.gguf> <out_folder>\n"
      "       %s dequant <in.gguf> <out_folder>\n",
      argv[0], argv[0], argv[0]);
  return 2;
}
