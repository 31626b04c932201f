#include "common/formats/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace hearth::formats {
namespace {

// absl 20220623 builds its own string_view, which StrCat needs.
absl::string_view SV(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

constexpr uint64_t kInt64Max =
    static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

bool IsKnownType(uint32_t t) {
  return t <= static_cast<uint32_t>(GgufType::kFloat64);
}

bool IsIntegerType(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kBool:
      return true;
    default:
      return false;
  }
}

template <typename T>
T LoadLE(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Reads element `i` of a numeric raw buffer as int64; false when it does not
// fit.
bool RawElementAsInt64(GgufType t, const std::string& raw, size_t i,
                       int64_t* out) {
  const char* p = raw.data() + i * GgufScalarSize(t);
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kBool:
      *out = LoadLE<uint8_t>(p);
      return true;
    case GgufType::kInt8:
      *out = LoadLE<int8_t>(p);
      return true;
    case GgufType::kUint16:
      *out = LoadLE<uint16_t>(p);
      return true;
    case GgufType::kInt16:
      *out = LoadLE<int16_t>(p);
      return true;
    case GgufType::kUint32:
      *out = LoadLE<uint32_t>(p);
      return true;
    case GgufType::kInt32:
      *out = LoadLE<int32_t>(p);
      return true;
    case GgufType::kUint64: {
      const uint64_t v = LoadLE<uint64_t>(p);
      if (v > kInt64Max) return false;
      *out = static_cast<int64_t>(v);
      return true;
    }
    case GgufType::kInt64:
      *out = LoadLE<int64_t>(p);
      return true;
    default:
      return false;
  }
}

bool RawElementAsDouble(GgufType t, const std::string& raw, size_t i,
                        double* out) {
  const char* p = raw.data() + i * GgufScalarSize(t);
  if (t == GgufType::kFloat32) {
    *out = LoadLE<float>(p);
    return true;
  }
  if (t == GgufType::kFloat64) {
    *out = LoadLE<double>(p);
    return true;
  }
  if (t == GgufType::kUint64) {
    *out = static_cast<double>(LoadLE<uint64_t>(p));
    return true;
  }
  int64_t v;
  if (!RawElementAsInt64(t, raw, i, &v)) return false;
  *out = static_cast<double>(v);
  return true;
}

// ceil(x / align) * align for a power-of-two `align`; x is far below 2^63 here.
uint64_t Pad(uint64_t x, uint64_t align) {
  return (x + align - 1) & ~(align - 1);
}

bool MulOverflows(int64_t a, int64_t b, int64_t* out) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) return true;
  *out = a * b;
  return false;
}

// Bytes of a tensor of `type` with ggml dims `ne`; false on overflow. ne[0]
// must already be a whole number of blocks.
bool TensorBytes(GgmlType type, const std::vector<int64_t>& ne, uint64_t* out) {
  const GgmlTypeTraits& t = GetGgmlTypeTraits(type);
  int64_t n = static_cast<int64_t>(t.type_size);
  if (ne.empty()) {
    *out = static_cast<uint64_t>(n);  // Zero dims: one value.
    return t.block_size == 1;
  }
  if (MulOverflows(n, ne[0] / t.block_size, &n)) return false;
  for (size_t i = 1; i < ne.size(); ++i) {
    if (MulOverflows(n, ne[i], &n)) return false;
  }
  *out = static_cast<uint64_t>(n);
  return true;
}

void AppendU32(std::string* s, uint32_t v) {
  s->append(reinterpret_cast<char*>(&v), 4);
}
void AppendU64(std::string* s, uint64_t v) {
  s->append(reinterpret_cast<char*>(&v), 8);
}
void AppendString(std::string* s, std::string_view v) {
  AppendU64(s, v.size());
  s->append(v.data(), v.size());
}

// A bounds-checked reader over the file bytes. Every failure names the source
// and the byte offset of the field being read.
class Cursor {
 public:
  Cursor(const uint8_t* base, size_t size, const std::string& source)
      : base_(base), size_(size), source_(source) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  absl::Status Error(size_t at, absl::string_view msg) const {
    return absl::InvalidArgumentError(
        absl::StrCat("gguf ", source_, ": at byte ", at, ": ", msg));
  }

  absl::Status Need(uint64_t n, absl::string_view what) const {
    if (n > remaining()) {
      return Error(pos_, absl::StrCat(what, " needs ", n, " bytes but only ",
                                      remaining(), " remain in the ", size_,
                                      "-byte file"));
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status Read(T* out, absl::string_view what) {
    HEARTH_RETURN_IF_ERROR(Need(sizeof(T), what));
    std::memcpy(out, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status ReadBytes(uint64_t n, std::string* out, absl::string_view what) {
    HEARTH_RETURN_IF_ERROR(Need(n, what));
    out->assign(reinterpret_cast<const char*>(base_ + pos_),
                static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return absl::OkStatus();
  }

  absl::Status ReadString(std::string* out, absl::string_view what) {
    const size_t at = pos_;
    uint64_t len;
    HEARTH_RETURN_IF_ERROR(Read(&len, absl::StrCat(what, " length")));
    if (len > remaining()) {
      return Error(at, absl::StrCat(what, " length ", len, " exceeds the ",
                                    remaining(), " bytes left in the file"));
    }
    return ReadBytes(len, out, what);
  }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& source_;
};

// Parses one value of type `type` (an array header included) at the cursor.
absl::Status ReadValue(Cursor& c, GgufType type, const std::string& key,
                       GgufValue* out) {
  if (type == GgufType::kString) {
    std::string s;
    HEARTH_RETURN_IF_ERROR(
        c.ReadString(&s, absl::StrCat("value of '", key, "'")));
    *out = GgufValue::String(std::move(s));
    return absl::OkStatus();
  }
  if (type != GgufType::kArray) {
    std::string raw;
    HEARTH_RETURN_IF_ERROR(c.ReadBytes(GgufScalarSize(type), &raw,
                                       absl::StrCat("value of '", key, "'")));
    *out = GgufValue::RawScalar(type, std::move(raw));
    return absl::OkStatus();
  }
  const size_t type_at = c.pos();
  uint32_t elem;
  HEARTH_RETURN_IF_ERROR(
      c.Read(&elem, absl::StrCat("element type of '", key, "'")));
  if (!IsKnownType(elem) || elem == static_cast<uint32_t>(GgufType::kArray)) {
    return c.Error(
        type_at,
        absl::StrCat("array '", key, "' has invalid element type ", elem,
                     elem == 9 ? " (nested arrays are not supported)" : ""));
  }
  const GgufType elem_type = static_cast<GgufType>(elem);
  const size_t count_at = c.pos();
  uint64_t n;
  HEARTH_RETURN_IF_ERROR(
      c.Read(&n, absl::StrCat("element count of '", key, "'")));
  // Every element takes at least its scalar size (8 for a string's length), so
  // a count the rest of the file cannot hold is rejected before allocating.
  const uint64_t min_elem =
      elem_type == GgufType::kString ? 8 : GgufScalarSize(elem_type);
  if (n > c.remaining() / min_elem) {
    return c.Error(count_at,
                   absl::StrCat("array '", key, "' claims ", n, " elements of ",
                                SV(GgufTypeName(elem_type)), " but only ",
                                c.remaining(), " bytes remain"));
  }
  if (elem_type == GgufType::kString) {
    std::vector<std::string> strings(static_cast<size_t>(n));
    for (uint64_t i = 0; i < n; ++i) {
      HEARTH_RETURN_IF_ERROR(c.ReadString(
          &strings[i], absl::StrCat("element ", i, " of '", key, "'")));
    }
    *out = GgufValue::StringArray(std::move(strings));
    return absl::OkStatus();
  }
  std::string raw;
  HEARTH_RETURN_IF_ERROR(
      c.ReadBytes(n * min_elem, &raw, absl::StrCat("elements of '", key, "'")));
  *out = GgufValue::RawArray(elem_type, std::move(raw));
  return absl::OkStatus();
}

}  // namespace

std::string_view GgufTypeName(GgufType type) {
  static constexpr std::string_view kNames[] = {
      "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",  "FLOAT32",
      "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
  const uint32_t i = static_cast<uint32_t>(type);
  return i < std::size(kNames) ? kNames[i] : "UNKNOWN";
}

size_t GgufScalarSize(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

// ---------------------------------------------------------------- GgufValue

#define HEARTH_GGUF_SCALAR(Name, T, Tag)                     \
  GgufValue GgufValue::Name(T v) {                           \
    GgufValue out(GgufType::Tag, GgufType::Tag);             \
    out.raw_.assign(reinterpret_cast<char*>(&v), sizeof(T)); \
    return out;                                              \
  }
HEARTH_GGUF_SCALAR(U8, uint8_t, kUint8)
HEARTH_GGUF_SCALAR(I8, int8_t, kInt8)
HEARTH_GGUF_SCALAR(U16, uint16_t, kUint16)
HEARTH_GGUF_SCALAR(I16, int16_t, kInt16)
HEARTH_GGUF_SCALAR(U32, uint32_t, kUint32)
HEARTH_GGUF_SCALAR(I32, int32_t, kInt32)
HEARTH_GGUF_SCALAR(F32, float, kFloat32)
HEARTH_GGUF_SCALAR(U64, uint64_t, kUint64)
HEARTH_GGUF_SCALAR(I64, int64_t, kInt64)
HEARTH_GGUF_SCALAR(F64, double, kFloat64)
#undef HEARTH_GGUF_SCALAR

GgufValue GgufValue::Bool(bool v) {
  return RawScalar(GgufType::kBool, std::string(1, v ? 1 : 0));
}

GgufValue GgufValue::String(std::string v) {
  GgufValue out(GgufType::kString, GgufType::kString);
  out.str_ = std::move(v);
  return out;
}

#define HEARTH_GGUF_ARRAY(Name, T, Tag)                                  \
  GgufValue GgufValue::Name(const std::vector<T>& v) {                   \
    return RawArray(GgufType::Tag,                                       \
                    std::string(reinterpret_cast<const char*>(v.data()), \
                                v.size() * sizeof(T)));                  \
  }
HEARTH_GGUF_ARRAY(U8Array, uint8_t, kUint8)
HEARTH_GGUF_ARRAY(I8Array, int8_t, kInt8)
HEARTH_GGUF_ARRAY(U16Array, uint16_t, kUint16)
HEARTH_GGUF_ARRAY(I16Array, int16_t, kInt16)
HEARTH_GGUF_ARRAY(U32Array, uint32_t, kUint32)
HEARTH_GGUF_ARRAY(I32Array, int32_t, kInt32)
HEARTH_GGUF_ARRAY(F32Array, float, kFloat32)
HEARTH_GGUF_ARRAY(U64Array, uint64_t, kUint64)
HEARTH_GGUF_ARRAY(I64Array, int64_t, kInt64)
HEARTH_GGUF_ARRAY(F64Array, double, kFloat64)
#undef HEARTH_GGUF_ARRAY

GgufValue GgufValue::BoolArray(const std::vector<bool>& v) {
  std::string raw(v.size(), '\0');
  for (size_t i = 0; i < v.size(); ++i) raw[i] = v[i] ? 1 : 0;
  return RawArray(GgufType::kBool, std::move(raw));
}

GgufValue GgufValue::StringArray(std::vector<std::string> v) {
  GgufValue out(GgufType::kArray, GgufType::kString);
  out.strings_ = std::move(v);
  return out;
}

GgufValue GgufValue::RawArray(GgufType element_type, std::string raw) {
  GgufValue out(GgufType::kArray, element_type);
  out.raw_ = std::move(raw);
  return out;
}

GgufValue GgufValue::RawScalar(GgufType type, std::string raw) {
  GgufValue out(type, type);
  out.raw_ = std::move(raw);
  return out;
}

size_t GgufValue::size() const {
  if (!is_array()) return 1;
  if (element_type_ == GgufType::kString) return strings_.size();
  const size_t s = GgufScalarSize(element_type_);
  return s == 0 ? 0 : raw_.size() / s;
}

absl::Status GgufValue::TypeError(GgufType want) const {
  return absl::InvalidArgumentError(absl::StrCat(
      "has type ",
      is_array() ? absl::StrCat("ARRAY of ", SV(GgufTypeName(element_type_)))
                 : std::string(GgufTypeName(type_)),
      ", expected ", SV(GgufTypeName(want))));
}

absl::Status GgufValue::ArrayTypeError(GgufType want) const {
  return absl::InvalidArgumentError(absl::StrCat(
      "has type ",
      is_array() ? absl::StrCat("ARRAY of ", SV(GgufTypeName(element_type_)))
                 : std::string(GgufTypeName(type_)),
      ", expected ARRAY of ", SV(GgufTypeName(want))));
}

absl::StatusOr<uint32_t> GgufValue::GetU32() const {
  if (type_ != GgufType::kUint32) return TypeError(GgufType::kUint32);
  return LoadLE<uint32_t>(raw_.data());
}

absl::StatusOr<int32_t> GgufValue::GetI32() const {
  if (type_ != GgufType::kInt32) return TypeError(GgufType::kInt32);
  return LoadLE<int32_t>(raw_.data());
}

absl::StatusOr<float> GgufValue::GetF32() const {
  if (type_ != GgufType::kFloat32) return TypeError(GgufType::kFloat32);
  return LoadLE<float>(raw_.data());
}

absl::StatusOr<bool> GgufValue::GetBool() const {
  if (type_ != GgufType::kBool) return TypeError(GgufType::kBool);
  return raw_[0] != 0;
}

absl::StatusOr<std::string> GgufValue::GetString() const {
  if (type_ != GgufType::kString) return TypeError(GgufType::kString);
  return str_;
}

absl::StatusOr<int64_t> GgufValue::AsInt64() const {
  int64_t v;
  if (is_array() || !IsIntegerType(type_) ||
      !RawElementAsInt64(type_, raw_, 0, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("has type ", SV(GgufTypeName(type_)),
                     ", expected an integer that fits int64"));
  }
  return v;
}

absl::StatusOr<double> GgufValue::AsDouble() const {
  double v;
  if (is_array() || type_ == GgufType::kString ||
      !RawElementAsDouble(type_, raw_, 0, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "has type ", SV(GgufTypeName(type_)), ", expected a number"));
  }
  return v;
}

absl::StatusOr<std::vector<std::string>> GgufValue::GetStringArray() const {
  if (!is_array() || element_type_ != GgufType::kString) {
    return ArrayTypeError(GgufType::kString);
  }
  return strings_;
}

absl::StatusOr<std::vector<float>> GgufValue::GetF32Array() const {
  if (!is_array() || element_type_ != GgufType::kFloat32) {
    return ArrayTypeError(GgufType::kFloat32);
  }
  std::vector<float> out(size());
  if (!out.empty())
    std::memcpy(out.data(), raw_.data(), out.size() * sizeof(float));
  return out;
}

absl::StatusOr<std::vector<int32_t>> GgufValue::GetI32Array() const {
  if (!is_array() || element_type_ != GgufType::kInt32) {
    return ArrayTypeError(GgufType::kInt32);
  }
  std::vector<int32_t> out(size());
  if (!out.empty())
    std::memcpy(out.data(), raw_.data(), out.size() * sizeof(int32_t));
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufValue::AsInt64Array() const {
  if (!is_array() || !IsIntegerType(element_type_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "has type ", DebugString(), ", expected an ARRAY of integers"));
  }
  std::vector<int64_t> out(size());
  for (size_t i = 0; i < out.size(); ++i) {
    if (!RawElementAsInt64(element_type_, raw_, i, &out[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("element ", i, " does not fit int64"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufValue::AsFloatArray() const {
  if (!is_array() || element_type_ == GgufType::kString) {
    return absl::InvalidArgumentError(
        absl::StrCat("has type ", DebugString(), ", expected a numeric ARRAY"));
  }
  std::vector<float> out(size());
  for (size_t i = 0; i < out.size(); ++i) {
    double d = 0;
    RawElementAsDouble(element_type_, raw_, i, &d);
    out[i] = static_cast<float>(d);
  }
  return out;
}

std::string GgufValue::DebugString() const {
  if (is_array()) {
    return absl::StrCat("[", SV(GgufTypeName(element_type_)), " x", size(),
                        "]");
  }
  if (type_ == GgufType::kString) return absl::StrCat("STRING \"", str_, "\"");
  double d = 0;
  RawElementAsDouble(type_, raw_, 0, &d);
  return absl::StrCat(SV(GgufTypeName(type_)), " ", d);
}

// --------------------------------------------------------------- GgufWriter

void GgufWriter::Set(std::string key, GgufValue value) {
  auto it = kv_index_.find(key);
  if (it != kv_index_.end()) {
    kv_[it->second].second = std::move(value);
    return;
  }
  kv_index_.emplace(key, kv_.size());
  kv_.emplace_back(std::move(key), std::move(value));
}

const GgufValue* GgufWriter::Find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

absl::Status GgufWriter::AddTensor(std::string name, GgmlType type,
                                   std::vector<int64_t> shape,
                                   std::string data) {
  const size_t size = data.size();
  HEARTH_RETURN_IF_ERROR(AddTensor(name, type, std::move(shape), DataFn()));
  tensors_.back().owned = std::make_shared<const std::string>(std::move(data));
  if (size != tensors_.back().nbytes) {
    const uint64_t want = tensors_.back().nbytes;
    tensor_index_.erase(tensors_.back().name);
    tensors_.pop_back();
    return absl::InvalidArgumentError(
        absl::StrCat("gguf tensor '", name, "' has ", size,
                     " bytes of data, expected ", want));
  }
  return absl::OkStatus();
}

absl::Status GgufWriter::AddTensor(std::string name, GgmlType type,
                                   std::vector<int64_t> shape, DataFn data) {
  auto error = [&](absl::string_view msg) {
    return absl::InvalidArgumentError(
        absl::StrCat("gguf tensor '", name, "': ", msg));
  };
  if (name.empty()) return error("empty name");
  if (name.size() > kGgufMaxTensorName) {
    return error(absl::StrCat("name is ", name.size(),
                              " bytes; llama.cpp allows at most ",
                              kGgufMaxTensorName));
  }
  if (tensor_index_.count(name) != 0) return error("duplicate tensor name");
  if (shape.empty() || shape.size() > static_cast<size_t>(kGgufMaxDims)) {
    return error(
        absl::StrCat("has ", shape.size(), " dims; GGUF tensors have 1 to 4"));
  }
  if (FindGgmlTypeTraits(static_cast<uint32_t>(type)) == nullptr) {
    return error(
        absl::StrCat("unknown ggml type ", static_cast<uint32_t>(type)));
  }
  for (int64_t d : shape) {
    if (d < 0) return error("negative dimension");
  }
  std::vector<int64_t> ne(shape.rbegin(), shape.rend());
  if (!RowFitsBlocks(type, ne[0])) {
    return error(absl::StrCat("row length ", ne[0],
                              " is not a multiple of the ",
                              SV(GgmlTypeName(type)), " block size ",
                              GetGgmlTypeTraits(type).block_size));
  }
  uint64_t nbytes;
  if (!TensorBytes(type, ne, &nbytes)) return error("size overflows");
  tensor_index_.emplace(name, tensors_.size());
  tensors_.push_back(Tensor{std::move(name), type, std::move(ne), nbytes,
                            std::move(data), nullptr});
  return absl::OkStatus();
}

absl::Status GgufWriter::AddF32Tensor(std::string name,
                                      std::vector<int64_t> shape,
                                      const float* src, GgmlType type) {
  if (!shape.empty() && !RowFitsBlocks(type, shape.back())) {
    return absl::InvalidArgumentError(
        absl::StrCat("gguf tensor '", name, "': row length ", shape.back(),
                     " is not a multiple of the ", SV(GgmlTypeName(type)),
                     " block size ", GetGgmlTypeTraits(type).block_size));
  }
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || MulOverflows(numel, d, &numel)) {
      return absl::InvalidArgumentError(
          absl::StrCat("gguf tensor '", name, "': bad shape"));
    }
  }
  std::string data;
  if (numel > 0) {
    const int64_t row = shape.back();
    const size_t row_bytes = GgmlRowSize(type, row);
    data.resize(row_bytes * static_cast<size_t>(numel / row));
    for (int64_t r = 0; r < numel / row; ++r) {
      HEARTH_RETURN_IF_ERROR(
          QuantizeRow(type, src + r * row, row,
                      reinterpret_cast<uint8_t*>(data.data()) + r * row_bytes));
    }
  }
  return AddTensor(std::move(name), type, std::move(shape), std::move(data));
}

absl::StatusOr<uint32_t> GgufWriter::Alignment() const {
  const GgufValue* v = Find("general.alignment");
  if (v == nullptr) return kGgufDefaultAlignment;
  // llama.cpp aborts (GGML_ASSERT) on a non-UINT32 alignment, so never write
  // one.
  absl::StatusOr<uint32_t> a = v->GetU32();
  if (!a.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("gguf key 'general.alignment' ", a.status().message()));
  }
  if (*a == 0 || (*a & (*a - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("gguf general.alignment ", *a, " is not a power of 2"));
  }
  return *a;
}

absl::StatusOr<std::string> GgufWriter::SerializeHeader(
    uint32_t alignment) const {
  std::string out;
  AppendU32(&out, kGgufMagic);
  AppendU32(&out, kGgufVersion);
  AppendU64(&out, tensors_.size());
  AppendU64(&out, kv_.size());
  for (const auto& [key, value] : kv_) {
    AppendString(&out, key);
    AppendU32(&out, static_cast<uint32_t>(value.type()));
    if (value.type() == GgufType::kString) {
      AppendString(&out, value.str());
    } else if (!value.is_array()) {
      out += value.raw();
    } else {
      AppendU32(&out, static_cast<uint32_t>(value.element_type()));
      AppendU64(&out, value.size());
      if (value.element_type() == GgufType::kString) {
        for (const std::string& s : value.strings()) AppendString(&out, s);
      } else {
        out += value.raw();
      }
    }
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    AppendString(&out, t.name);
    AppendU32(&out, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) AppendU64(&out, static_cast<uint64_t>(d));
    AppendU32(&out, static_cast<uint32_t>(t.type));
    AppendU64(&out, offset);
    offset += Pad(t.nbytes, alignment);
  }
  out.resize(Pad(out.size(), alignment), '\0');
  return out;
}

absl::Status GgufWriter::Emit(
    const std::function<absl::Status(std::string_view)>& sink) const {
  HEARTH_ASSIGN_OR_RETURN(const uint32_t alignment, Alignment());
  HEARTH_ASSIGN_OR_RETURN(std::string header, SerializeHeader(alignment));
  HEARTH_RETURN_IF_ERROR(sink(header));
  const std::string zeros(alignment, '\0');
  for (const Tensor& t : tensors_) {
    if (t.owned != nullptr) {  // Size checked by AddTensor.
      HEARTH_RETURN_IF_ERROR(sink(*t.owned));
      const uint64_t pad = Pad(t.nbytes, alignment) - t.nbytes;
      if (pad > 0)
        HEARTH_RETURN_IF_ERROR(sink(std::string_view(zeros.data(), pad)));
      continue;
    }
    absl::StatusOr<std::string> data = t.data();
    if (!data.ok()) {
      return absl::Status(data.status().code(),
                          absl::StrCat("gguf tensor '", t.name,
                                       "': ", data.status().message()));
    }
    if (data->size() != t.nbytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("gguf tensor '", t.name, "' produced ", data->size(),
                       " bytes, expected ", t.nbytes));
    }
    HEARTH_RETURN_IF_ERROR(sink(*data));
    const uint64_t pad = Pad(t.nbytes, alignment) - t.nbytes;
    if (pad > 0)
      HEARTH_RETURN_IF_ERROR(sink(std::string_view(zeros.data(), pad)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> GgufWriter::Serialize() const {
  std::string out;
  HEARTH_RETURN_IF_ERROR(Emit([&](std::string_view chunk) {
    out.append(chunk.data(), chunk.size());
    return absl::OkStatus();
  }));
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  auto errno_error = [](absl::string_view what, const std::string& p) {
    return absl::InternalError(
        absl::StrCat(what, " ", p, ": ", std::strerror(errno)));
  };
  const int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error("cannot create", tmp);
  absl::Status status = Emit([&](std::string_view chunk) -> absl::Status {
    while (!chunk.empty()) {
      const ssize_t n = ::write(fd, chunk.data(), chunk.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno_error("cannot write", tmp);
      }
      chunk.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  });
  if (status.ok() && ::fsync(fd) != 0)
    status = errno_error("cannot fsync", tmp);
  if (::close(fd) != 0 && status.ok())
    status = errno_error("cannot close", tmp);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = errno_error("cannot rename onto", path);
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  // Make the rename itself durable.
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

// ----------------------------------------------------------------- GgufFile

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // Validated not to overflow when parsed.
  return n;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg =
        absl::StrCat("cannot open gguf ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::InternalError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(
        absl::StrCat("cannot stat ", path, ": ", std::strerror(errno)));
  }
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->source_ = path;
  const size_t size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ::close(fd);
      return absl::InternalError(
          absl::StrCat("cannot mmap ", path, ": ", std::strerror(errno)));
    }
    file->mapping_ = m;
    file->mapping_size_ = size;
  }
  ::close(fd);
  HEARTH_RETURN_IF_ERROR(file->Parse(
      static_cast<const uint8_t*>(file->mapping_), file->mapping_size_));
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBuffer(
    std::string bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->source_ = "<buffer>";
  file->buffer_ = std::move(bytes);
  HEARTH_RETURN_IF_ERROR(
      file->Parse(reinterpret_cast<const uint8_t*>(file->buffer_.data()),
                  file->buffer_.size()));
  return file;
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

absl::Status GgufFile::Parse(const uint8_t* base, size_t size) {
  Cursor c(base, size, source_);
  uint32_t magic;
  HEARTH_RETURN_IF_ERROR(c.Read(&magic, "magic"));
  if (magic != kGgufMagic) return c.Error(0, "bad magic, not a GGUF file");
  HEARTH_RETURN_IF_ERROR(c.Read(&version_, "version"));
  if (version_ == 0x02000000u || version_ == 0x03000000u) {
    return c.Error(4, "big-endian GGUF files are not supported");
  }
  if (version_ == 1) return c.Error(4, "GGUF version 1 is not supported");
  if (version_ < 2 || version_ > kGgufVersion) {
    return c.Error(4, absl::StrCat("unsupported GGUF version ", version_));
  }
  uint64_t n_tensors, n_kv;
  HEARTH_RETURN_IF_ERROR(c.Read(&n_tensors, "tensor count"));
  HEARTH_RETURN_IF_ERROR(c.Read(&n_kv, "metadata count"));
  // The smallest KV is 8 (key length) + 4 (type) + 1 bytes; the smallest tensor
  // info 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset). Reject counts
  // the file cannot hold before reserving anything for them.
  if (n_kv > c.remaining() / 13) {
    return c.Error(16,
                   absl::StrCat("metadata count ", n_kv, " cannot fit in the ",
                                c.remaining(), " bytes that follow"));
  }
  if (n_tensors > c.remaining() / 24) {
    return c.Error(
        8, absl::StrCat("tensor count ", n_tensors, " cannot fit in the ",
                        c.remaining(), " bytes that follow"));
  }

  kv_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    const size_t key_at = c.pos();
    std::string key;
    HEARTH_RETURN_IF_ERROR(
        c.ReadString(&key, absl::StrCat("key of metadata entry ", i)));
    if (kv_index_.count(key) != 0) {
      return c.Error(key_at, absl::StrCat("duplicate key '", key, "'"));
    }
    const size_t type_at = c.pos();
    uint32_t type;
    HEARTH_RETURN_IF_ERROR(c.Read(&type, absl::StrCat("type of '", key, "'")));
    if (!IsKnownType(type)) {
      return c.Error(type_at, absl::StrCat("key '", key,
                                           "' has invalid GGUF type ", type));
    }
    GgufValue value;
    HEARTH_RETURN_IF_ERROR(
        ReadValue(c, static_cast<GgufType>(type), key, &value));
    if (key == "general.alignment") {
      absl::StatusOr<uint32_t> a = value.GetU32();
      if (!a.ok()) {
        return c.Error(
            type_at, absl::StrCat("general.alignment ", a.status().message()));
      }
      if (*a == 0 || (*a & (*a - 1)) != 0) {
        return c.Error(type_at, absl::StrCat("general.alignment ", *a,
                                             " is not a power of 2"));
      }
      alignment_ = *a;
    }
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(value));
  }

  std::vector<size_t> offset_at(static_cast<size_t>(n_tensors));
  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    const size_t name_at = c.pos();
    HEARTH_RETURN_IF_ERROR(
        c.ReadString(&t.name, absl::StrCat("name of tensor ", i)));
    if (t.name.size() > kGgufMaxTensorName) {
      return c.Error(name_at,
                     absl::StrCat("tensor name of ", t.name.size(),
                                  " bytes exceeds llama.cpp's limit of ",
                                  kGgufMaxTensorName));
    }
    if (tensor_index_.count(t.name) != 0) {
      return c.Error(name_at,
                     absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
    const size_t dims_at = c.pos();
    uint32_t n_dims;
    HEARTH_RETURN_IF_ERROR(
        c.Read(&n_dims, absl::StrCat("n_dims of '", t.name, "'")));
    if (n_dims > static_cast<uint32_t>(kGgufMaxDims)) {
      return c.Error(dims_at, absl::StrCat("tensor '", t.name, "' has ", n_dims,
                                           " dims, more than ", kGgufMaxDims));
    }
    int64_t numel = 1;
    for (uint32_t j = 0; j < n_dims; ++j) {
      const size_t ne_at = c.pos();
      uint64_t ne;
      HEARTH_RETURN_IF_ERROR(
          c.Read(&ne, absl::StrCat("ne[", j, "] of '", t.name, "'")));
      if (ne > kInt64Max ||
          MulOverflows(numel, static_cast<int64_t>(ne), &numel)) {
        return c.Error(ne_at,
                       absl::StrCat("tensor '", t.name, "' ne[", j, "] = ", ne,
                                    " overflows the element count"));
      }
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    const size_t type_at = c.pos();
    uint32_t type;
    HEARTH_RETURN_IF_ERROR(
        c.Read(&type, absl::StrCat("type of '", t.name, "'")));
    const GgmlTypeTraits* traits = FindGgmlTypeTraits(type);
    if (traits == nullptr) {
      return c.Error(type_at, absl::StrCat("tensor '", t.name,
                                           "' has invalid ggml type ", type));
    }
    t.type = traits->type;
    const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    if (ne0 % traits->block_size != 0) {
      return c.Error(type_at, absl::StrCat("tensor '", t.name, "' of type ",
                                           SV(traits->name), ": ne[0] = ", ne0,
                                           " is not a multiple of block size ",
                                           traits->block_size));
    }
    if (!TensorBytes(t.type, t.ne, &t.nbytes)) {
      return c.Error(type_at,
                     absl::StrCat("tensor '", t.name, "' size overflows"));
    }
    offset_at[i] = c.pos();
    HEARTH_RETURN_IF_ERROR(
        c.Read(&t.offset, absl::StrCat("offset of '", t.name, "'")));
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  data_offset_ = Pad(c.pos(), alignment_);
  if (!tensors_.empty() && data_offset_ > size) {
    return c.Error(
        c.pos(), absl::StrCat("data section would start at byte ", data_offset_,
                              ", past the end of the ", size, "-byte file"));
  }
  const uint64_t data_size = data_offset_ <= size ? size - data_offset_ : 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    GgufTensorInfo& t = tensors_[i];
    if (t.offset % alignment_ != 0) {
      return c.Error(
          offset_at[i],
          absl::StrCat("tensor '", t.name, "' offset ", t.offset,
                       " is not a multiple of the alignment ", alignment_));
    }
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return c.Error(
          offset_at[i],
          absl::StrCat("tensor '", t.name, "' data [", t.offset, ", +",
                       t.nbytes, ") lies outside the ", data_size,
                       "-byte data section at byte ", data_offset_));
    }
    t.data = base + data_offset_ + t.offset;
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

absl::Status GgufFile::KeyError(std::string_view key,
                                const absl::Status& status) const {
  return absl::Status(status.code(),
                      absl::StrCat("gguf ", source_, ": key '", SV(key), "' ",
                                   status.message()));
}

#define HEARTH_GGUF_GETTER(Ret, Name, Call)                                   \
  absl::StatusOr<Ret> GgufFile::Name(std::string_view key) const {            \
    const GgufValue* v = Find(key);                                           \
    if (v == nullptr) {                                                       \
      return absl::NotFoundError(                                             \
          absl::StrCat("gguf ", source_, ": key '", SV(key), "' not found")); \
    }                                                                         \
    absl::StatusOr<Ret> r = v->Call();                                        \
    if (!r.ok()) return KeyError(key, r.status());                            \
    return r;                                                                 \
  }
HEARTH_GGUF_GETTER(uint32_t, GetU32, GetU32)
HEARTH_GGUF_GETTER(int32_t, GetI32, GetI32)
HEARTH_GGUF_GETTER(float, GetF32, GetF32)
HEARTH_GGUF_GETTER(bool, GetBool, GetBool)
HEARTH_GGUF_GETTER(std::string, GetString, GetString)
HEARTH_GGUF_GETTER(int64_t, GetInt, AsInt64)
HEARTH_GGUF_GETTER(double, GetFloat, AsDouble)
HEARTH_GGUF_GETTER(std::vector<std::string>, GetStringArray, GetStringArray)
HEARTH_GGUF_GETTER(std::vector<float>, GetFloatArray, AsFloatArray)
HEARTH_GGUF_GETTER(std::vector<int64_t>, GetIntArray, AsInt64Array)
#undef HEARTH_GGUF_GETTER

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::vector<float>> GgufFile::DequantizeTensor(
    std::string_view name) const {
  const GgufTensorInfo* t = FindTensor(name);
  if (t == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("gguf ", source_, ": no tensor '", SV(name), "'"));
  }
  return DequantizeTensor(*t);
}

absl::StatusOr<std::vector<float>> GgufFile::DequantizeTensor(
    const GgufTensorInfo& t) const {
  if (!GetGgmlTypeTraits(t.type).can_dequantize) {
    return absl::UnimplementedError(absl::StrCat(
        "gguf ", source_, ": tensor '", t.name, "' has type ",
        SV(GgmlTypeName(t.type)), ", which hearth cannot dequantize"));
  }
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) {
    HEARTH_RETURN_IF_ERROR(DequantizeRow(
        t.type, t.data, static_cast<int64_t>(out.size()), out.data()));
  }
  return out;
}

}  // namespace hearth::formats
