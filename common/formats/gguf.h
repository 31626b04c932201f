// Reading and writing GGUF files (llama.cpp's model format) without ggml.
//
// A GGUF file is a header ("GGUF", version, tensor count, metadata count),
// typed metadata key/value pairs, tensor infos (name, dims, ggml type, data
// offset), zero padding to the alignment, then the tensor data, each tensor
// padded to the alignment. The byte-level definition, and the stricter rules
// llama.cpp applies on load, are in shared/reference/quantization-formats.md §0
// and §1.1; this code follows llama.cpp where the two differ because llama.cpp
// is what has to load the files:
//
//   * dims are stored innermost first (ggml `ne`), i.e. the reverse of a torch
//     shape; the API here takes and returns torch order and reverses on the
//     wire;
//   * the writer places tensor data at exactly consecutive padded offsets in
//   info
//     order and pads after the last tensor too (llama.cpp checks the offsets);
//   * tensor names are at most 63 bytes (GGML_MAX_NAME is 64 including the
//   NUL);
//   * `general.alignment` is a UINT32 power of two, default 32.
//
// The reader maps the file read-only and validates every count, length, type
// and offset against the file size before using it, so any input (it is fuzzed)
// gives either a GgufFile or an InvalidArgument error naming the byte offset of
// the bad field, never a crash or an out-of-bounds read.
//
//   GgufWriter w;
//   w.Set("general.architecture", GgufValue::String("llama"));
//   HEARTH_RETURN_IF_ERROR(w.AddF32Tensor("output_norm.weight", {64}, norm,
//   GgmlType::kF32)); HEARTH_RETURN_IF_ERROR(w.WriteFile("model.gguf"));
//
//   HEARTH_ASSIGN_OR_RETURN(auto gguf, GgufFile::Open("model.gguf"));
//   HEARTH_ASSIGN_OR_RETURN(uint32_t layers,
//   gguf->GetU32("llama.block_count"));
//   HEARTH_ASSIGN_OR_RETURN(std::vector<float> w,
//   gguf->DequantizeTensor("output.weight"));
#ifndef HEARTH_COMMON_FORMATS_GGUF_H_
#define HEARTH_COMMON_FORMATS_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/ggml_quants.h"

namespace hearth::formats {

inline constexpr uint32_t kGgufMagic =
    0x46554747;  // "GGUF" read little-endian.
inline constexpr uint32_t kGgufVersion = 3;
inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr size_t kGgufMaxTensorName =
    63;  // Bytes, excluding ggml's NUL.
inline constexpr int kGgufMaxDims = 4;

// `enum gguf_type`; the values are on the wire.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "UINT32", "STRING", ... as llama.cpp prints them in its type errors.
std::string_view GgufTypeName(GgufType type);

// One metadata value: a scalar, a string, or a flat array of scalars or strings
// (GGUF allows nested arrays in the spec, but llama.cpp rejects them, so
// neither the reader nor the writer supports them).
//
// Numeric values are kept as their little-endian wire bytes, so a value read
// from a file is written back bit-identically and large arrays (token scores)
// cost one copy. The typed accessors check the type exactly, like llama.cpp's
// loader; the As* accessors convert between widths where no value is lost.
class GgufValue {
 public:
  GgufValue() : GgufValue(U8(0)) {}

  static GgufValue U8(uint8_t v);
  static GgufValue I8(int8_t v);
  static GgufValue U16(uint16_t v);
  static GgufValue I16(int16_t v);
  static GgufValue U32(uint32_t v);
  static GgufValue I32(int32_t v);
  static GgufValue F32(float v);
  static GgufValue Bool(bool v);
  static GgufValue String(std::string v);
  static GgufValue U64(uint64_t v);
  static GgufValue I64(int64_t v);
  static GgufValue F64(double v);

  static GgufValue U8Array(const std::vector<uint8_t>& v);
  static GgufValue I8Array(const std::vector<int8_t>& v);
  static GgufValue U16Array(const std::vector<uint16_t>& v);
  static GgufValue I16Array(const std::vector<int16_t>& v);
  static GgufValue U32Array(const std::vector<uint32_t>& v);
  static GgufValue I32Array(const std::vector<int32_t>& v);
  static GgufValue F32Array(const std::vector<float>& v);
  static GgufValue BoolArray(const std::vector<bool>& v);
  static GgufValue U64Array(const std::vector<uint64_t>& v);
  static GgufValue I64Array(const std::vector<int64_t>& v);
  static GgufValue F64Array(const std::vector<double>& v);
  static GgufValue StringArray(std::vector<std::string> v);

  // Values from their little-endian wire bytes (the reader's path). A scalar's
  // `raw` holds GgufScalarSize(type) bytes; an array's a multiple of that.
  static GgufValue RawScalar(GgufType type, std::string raw);
  static GgufValue RawArray(GgufType element_type, std::string raw);

  GgufType type() const { return type_; }
  bool is_array() const { return type_ == GgufType::kArray; }
  // For arrays, the element type; otherwise type().
  GgufType element_type() const { return element_type_; }
  // Elements of an array; 1 for a scalar or string.
  size_t size() const;

  // Exact-type scalar accessors: InvalidArgument naming both types on mismatch.
  absl::StatusOr<uint32_t> GetU32() const;
  absl::StatusOr<int32_t> GetI32() const;
  absl::StatusOr<float> GetF32() const;
  absl::StatusOr<bool> GetBool() const;
  absl::StatusOr<std::string> GetString() const;

  // Any integer scalar (and BOOL) as int64; UINT64 values above INT64_MAX fail.
  absl::StatusOr<int64_t> AsInt64() const;
  // FLOAT32/FLOAT64 and the integer types, as double.
  absl::StatusOr<double> AsDouble() const;

  // Array accessors. The typed ones require that element type exactly.
  absl::StatusOr<std::vector<std::string>> GetStringArray() const;
  absl::StatusOr<std::vector<float>> GetF32Array() const;
  absl::StatusOr<std::vector<int32_t>> GetI32Array() const;
  // Any integer element type as int64 (UINT64 above INT64_MAX fails).
  absl::StatusOr<std::vector<int64_t>> AsInt64Array() const;
  // Numeric elements (integers, floats) as float.
  absl::StatusOr<std::vector<float>> AsFloatArray() const;

  // Wire bytes of a scalar or numeric array (not for strings).
  const std::string& raw() const { return raw_; }
  // The string of a STRING value, or the elements of a string array.
  const std::string& str() const { return str_; }
  const std::vector<std::string>& strings() const { return strings_; }

  // A short human-readable rendering for diagnostics ("UINT32 4096",
  // "[STRING x32000]").
  std::string DebugString() const;

 private:
  GgufValue(GgufType type, GgufType element_type)
      : type_(type), element_type_(element_type) {}
  absl::Status TypeError(GgufType want) const;
  absl::Status ArrayTypeError(GgufType want) const;

  GgufType type_;
  GgufType element_type_;
  std::string raw_;                   // Numeric scalar or array elements.
  std::string str_;                   // STRING scalar.
  std::vector<std::string> strings_;  // ARRAY of STRING.
};

// Size in bytes of a numeric GGUF type; 0 for STRING and ARRAY.
size_t GgufScalarSize(GgufType type);

// Writes a GGUF v3 file.
//
// Metadata keys keep the order of their first Set(); setting a key again
// replaces the value in place. Tensor data is produced lazily when `DataFn` is
// used, so exporting a model needs memory for one tensor at a time, not the
// whole file. Argument errors are reported by AddTensor immediately.
class GgufWriter {
 public:
  // Returns the encoded bytes of one tensor; called once, in tensor order, by
  // WriteFile/Serialize. Its size must equal the size implied by type and
  // shape.
  using DataFn = std::function<absl::StatusOr<std::string>()>;

  GgufWriter() = default;

  void Set(std::string key, GgufValue value);
  // nullptr when not set.
  const GgufValue* Find(std::string_view key) const;

  // `shape` is in torch order (outermost first), 1 to 4 dims; it is written
  // reversed as ggml `ne`. The last dim must be a whole number of blocks of
  // `type`. `data` must hold exactly the encoded bytes.
  absl::Status AddTensor(std::string name, GgmlType type,
                         std::vector<int64_t> shape, std::string data);
  absl::Status AddTensor(std::string name, GgmlType type,
                         std::vector<int64_t> shape, DataFn data);
  // Encodes `src` (numel(shape) floats, row-major) as `type` now.
  absl::Status AddF32Tensor(std::string name, std::vector<int64_t> shape,
                            const float* src, GgmlType type);

  // The whole file in memory (tests, small files, fuzzing seeds).
  absl::StatusOr<std::string> Serialize() const;

  // Writes `path + ".tmp"`, fsyncs it, renames it over `path` and fsyncs the
  // folder: a crash leaves the old file or the complete new one, never a torn
  // GGUF that llama.cpp would half-load.
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;  // ggml order.
    uint64_t nbytes;
    DataFn data;                               // Lazily produced bytes, or:
    std::shared_ptr<const std::string> owned;  // bytes given to AddTensor.
  };

  absl::StatusOr<uint32_t> Alignment() const;
  // Everything before the first tensor's data, padding included.
  absl::StatusOr<std::string> SerializeHeader(uint32_t alignment) const;
  // Calls `sink` with consecutive chunks of the file.
  absl::Status Emit(
      const std::function<absl::Status(std::string_view)>& sink) const;

  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// One tensor of a GgufFile. `data` points into the file's mapping.
struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous dim.
  uint64_t offset = 0;      // Relative to the start of the data section.
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;

  // The torch-order shape (ne reversed).
  std::vector<int64_t> shape() const { return {ne.rbegin(), ne.rend()}; }
  int64_t numel() const;
};

// A parsed, validated GGUF file (v2 or v3, little-endian).
class GgufFile {
 public:
  // Maps `path` read-only. NotFound when missing; InvalidArgument naming the
  // path and byte offset when malformed. The file must not be truncated while
  // open.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(
      const std::string& path);
  // Parses an in-memory file, taking ownership of `bytes`.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBuffer(
      std::string bytes);

  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile();

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  // File offset of the data section.
  uint64_t data_offset() const { return data_offset_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const {
    return kv_;
  }
  // nullptr when absent.
  const GgufValue* Find(std::string_view key) const;

  // Typed lookups: NotFound when the key is absent, InvalidArgument (naming the
  // key and both types) when its type differs.
  absl::StatusOr<uint32_t> GetU32(std::string_view key) const;
  absl::StatusOr<int32_t> GetI32(std::string_view key) const;
  absl::StatusOr<float> GetF32(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(
      std::string_view key) const;  // Any integer type.
  absl::StatusOr<double> GetFloat(
      std::string_view key) const;  // Any numeric type.
  absl::StatusOr<std::vector<std::string>> GetStringArray(
      std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;

  // The tensor decoded to floats, row-major in torch order (numel values).
  // NotFound for an unknown name, Unimplemented for types without a
  // dequantizer.
  absl::StatusOr<std::vector<float>> DequantizeTensor(
      std::string_view name) const;
  absl::StatusOr<std::vector<float>> DequantizeTensor(
      const GgufTensorInfo& info) const;

 private:
  GgufFile() = default;
  absl::Status Parse(const uint8_t* base, size_t size);
  absl::Status KeyError(std::string_view key, const absl::Status& status) const;

  std::string source_;       // The path, or "<buffer>", for messages.
  std::string buffer_;       // FromBuffer storage.
  void* mapping_ = nullptr;  // Open storage.
  size_t mapping_size_ = 0;

  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace hearth::formats

#endif  // HEARTH_COMMON_FORMATS_GGUF_H_
