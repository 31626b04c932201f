// Reading and writing safetensors checkpoints without libtorch.
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of
// JSON describing each tensor (dtype, shape, [begin, end) offsets into the data
// buffer) plus an optional "__metadata__" string map, then the data buffer
// itself. The format is specified in huggingface/safetensors; this reader
// applies the same checks as the reference implementation (header <= 100 MB,
// every tensor's size matches its shape, the buffer is covered exactly once
// with no holes and no trailing bytes), because the input may come from
// anywhere and is fuzzed.
//
// Readers hand out TensorView: a name, dtype, shape and a pointer into bytes
// the reader owns. Opening a file mmaps it read-only, so a multi-gigabyte
// checkpoint costs no copy; the views are valid for as long as the reader is
// alive. Data is little-endian and row-major. It is 8-byte aligned when the
// writer padded the header (hearth and the reference writer do), but a foreign
// file need not be, so consumers that need alignment must check or copy.
//
//   HEARTH_ASSIGN_OR_RETURN(auto ckpt, CheckpointReader::Open("models/tiny"));
//   const TensorView* w = ckpt->Find("model.embed_tokens.weight");
//
// The writer produces the reference layout: header keys sorted by name
// ("__metadata__" first, holding {"format": "pt"}, which transformers
// requires), the header padded with spaces to a multiple of 8, and contiguous
// data ordered like the reference writer, by descending element size and then
// by name. That order puts every tensor at an offset that is a multiple of its
// element size, so mapped int32/float32/int64 views are naturally aligned;
// plain name order would let a 3-byte U8 tensor misalign every tensor after it.
#ifndef HEARTH_COMMON_FORMATS_SAFETENSORS_H_
#define HEARTH_COMMON_FORMATS_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/dtype.h"

namespace hearth::formats {

// One tensor inside a safetensors buffer; `data` points into memory owned by
// the SafetensorsFile (or CheckpointReader) that produced it.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  // Product of the dims; 1 for a scalar (shape []).
  int64_t numel() const;
};

// The reference reader's limit; larger headers are rejected before parsing.
inline constexpr uint64_t kSafetensorsMaxHeaderSize = 100'000'000;

// Immutable once opened: const methods may be called from any thread.
class SafetensorsFile {
 public:
  // Maps `path` read-only. NotFound when it does not exist; InvalidArgument,
  // with the path, the byte offset and the JSON key, when its contents are
  // malformed. The file must not be truncated while mapped (the OS would raise
  // SIGBUS).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);

  // Parses an in-memory file, taking ownership of `bytes`.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBuffer(
      std::string bytes);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  // Sorted by name.
  const std::vector<TensorView>& tensors() const { return tensors_; }

  // nullptr when there is no tensor of that name.
  const TensorView* Find(std::string_view name) const;

  // The "__metadata__" map; empty when the header has none.
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }

  // Where the data buffer starts in the file: 8 + header length.
  uint64_t data_offset() const { return data_offset_; }

 private:
  SafetensorsFile() = default;
  // Validates the header in [base, base + size) and fills tensors_ / metadata_.
  // `source` names the file in error messages.
  absl::Status Parse(const uint8_t* base, size_t size,
                     const std::string& source);

  std::string buffer_;       // Owned bytes (FromBuffer).
  void* mapping_ = nullptr;  // mmap'd file (Open).
  size_t mapping_size_ = 0;
  uint64_t data_offset_ = 0;
  std::vector<TensorView> tensors_;  // Sorted by name, so Find can bisect.
  std::map<std::string, std::string> metadata_;
};

// Builds a safetensors file from caller-owned buffers.
//
// Add() only records the pointer: checkpoints are large and usually already
// live in memory (torch tensors, a mapped source file), so copying them here
// would double peak memory. The caller keeps every `data` alive and unchanged
// until WriteFile() or Serialize() returns. Argument errors (size mismatch,
// duplicate or reserved names) are reported by those two calls, so a long
// sequence of Add calls needs no per-call checking.
class SafetensorsWriter {
 public:
  SafetensorsWriter();

  void Add(std::string name, DType dtype, std::vector<int64_t> shape,
           const void* data, size_t nbytes);

  // "format" defaults to "pt"; setting it replaces the default.
  void SetMetadata(std::string key, std::string value);

  // Writes to `path + ".tmp"`, fsyncs, renames over `path` and fsyncs the
  // folder, so a crash leaves either the old file or the complete new one.
  absl::Status WriteFile(const std::string& path) const;

  // The whole file in memory (tests, small artifacts, fuzzing).
  absl::StatusOr<std::string> Serialize() const;

  // The 8-byte length prefix plus the padded JSON header: everything before the
  // data buffer. Tensor data follows in layout order (see the file comment).
  absl::StatusOr<std::string> SerializeHeader() const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const uint8_t* data;
    size_t nbytes;
  };
  // Entries in layout order (element size descending, then name), after
  // checking them all.
  absl::StatusOr<std::vector<const Entry*>> LayoutEntries() const;

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face model folder: either one `model.safetensors` or the shards
// named by `model.safetensors.index.json` ({"metadata": {...}, "weight_map":
// {tensor: file}}). The index wins when both exist, as in transformers.
//
// Immutable once opened: const methods may be called from any thread.
class CheckpointReader {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(
      const std::string& folder);

  // nullptr when absent. With an index, only tensors listed in weight_map
  // exist.
  const TensorView* Find(std::string_view name) const;

  // Sorted.
  std::vector<std::string> TensorNames() const;

  // The files opened, relative to the folder, in name order.
  std::vector<std::string> ShardFiles() const;

 private:
  CheckpointReader() = default;

  std::map<std::string, std::unique_ptr<SafetensorsFile>>
      shards_;  // file -> shard
  std::map<std::string, const TensorView*, std::less<>> tensors_;
};

}  // namespace hearth::formats

#endif  // HEARTH_COMMON_FORMATS_SAFETENSORS_H_
