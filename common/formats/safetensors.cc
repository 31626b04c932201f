#include "common/formats/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace hearth::formats {
namespace {

using json = nlohmann::json;

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

// A safetensors header is at most three levels deep; anything much deeper is an
// attack on the parser's stack or memory, not a checkpoint.
constexpr int kMaxJsonDepth = 16;

struct JsonRejected {
  std::string message;
};

// Parses strict JSON, rejecting duplicate object keys (as the reference reader
// does: two entries for one tensor name are ambiguous) and deep nesting.
// Throws json::exception or JsonRejected; callers turn both into a Status.
json ParseStrictJson(const char* begin, const char* end) {
  // nlohmann treats a NUL byte as the end of input, which would accept
  // arbitrary bytes after it; a NUL is never valid JSON.
  if (const void* nul = std::memchr(begin, '\0', end - begin)) {
    throw JsonRejected{absl::StrCat("NUL byte at byte ",
                                    static_cast<const char*>(nul) - begin)};
  }
  std::vector<std::set<std::string>> keys;
  int depth = 0;
  auto callback = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        [[fallthrough]];
      case json::parse_event_t::array_start:
        if (++depth > kMaxJsonDepth) {
          throw JsonRejected{absl::StrCat("JSON nested deeper than ",
                                          kMaxJsonDepth, " levels")};
        }
        break;
      case json::parse_event_t::object_end:
        keys.pop_back();
        --depth;
        break;
      case json::parse_event_t::array_end:
        --depth;
        break;
      case json::parse_event_t::key:
        if (!keys.empty() &&
            !keys.back().insert(parsed.get<std::string>()).second) {
          throw JsonRejected{absl::StrCat("duplicate key ", parsed.dump())};
        }
        break;
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  return json::parse(begin, end, callback, /*allow_exceptions=*/true,
                     /*ignore_comments=*/false);
}

// Error text may quote raw input; keep it printable ASCII so it survives logs
// and gRPC status messages.
std::string Printable(absl::string_view s) {
  std::string out;
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  return out;
}

std::string Quoted(std::string_view s) {
  return json(std::string(s))
      .dump(-1, ' ', true, json::error_handler_t::replace);
}

const char* JsonTypeName(const json& j) { return j.type_name(); }

// Debian's abseil keeps absl::string_view distinct from std::string_view, so
// StrCat needs the conversion spelled out.
absl::string_view Name(DType dtype) {
  const std::string_view name = SafetensorsName(dtype);
  return absl::string_view(name.data(), name.size());
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

uint64_t ReadLittleEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string JoinPath(const std::string& folder, const std::string& file) {
  if (folder.empty()) return file;
  if (folder.back() == '/') return folder + file;
  return folder + "/" + file;
}

absl::Status ErrnoError(int err, const std::string& what) {
  return absl::ErrnoToStatus(err, what);
}

// Writes all of [data, data + n), riding out short writes and EINTR.
absl::Status WriteAll(int fd, const void* data, size_t n,
                      const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    const ssize_t written = ::write(fd, p, chunk);
    if (written < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, absl::StrCat("write ", path));
    }
    p += written;
    n -= static_cast<size_t>(written);
  }
  return absl::OkStatus();
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

int64_t TensorView::numel() const {
  // Unsigned so that a hand-built view with absurd dims wraps instead of being
  // UB; views from a parsed file are checked to fit.
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return static_cast<int64_t>(n);
}

// ---------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBuffer(
    std::string bytes) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  // Views point into buffer_, so it must be in its final home before parsing.
  file->buffer_ = std::move(bytes);
  HEARTH_RETURN_IF_ERROR(
      file->Parse(reinterpret_cast<const uint8_t*>(file->buffer_.data()),
                  file->buffer_.size(), ""));
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return ErrnoError(errno, absl::StrCat("safetensors: open ", path));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, absl::StrCat("safetensors: stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors ", path, ": not a regular file"));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  const size_t size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoError(err, absl::StrCat("safetensors: mmap ", path));
    }
    file->mapping_ = mapping;
    file->mapping_size_ = size;
  }
  ::close(fd);  // The mapping keeps the file alive.
  HEARTH_RETURN_IF_ERROR(
      file->Parse(static_cast<const uint8_t*>(file->mapping_), size, path));
  return file;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorView& t, std::string_view n) {
                               return std::string_view(t.name) < n;
                             });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

absl::Status SafetensorsFile::Parse(const uint8_t* base, size_t size,
                                    const std::string& source) {
  const std::string prefix = source.empty()
                                 ? "safetensors: "
                                 : absl::StrCat("safetensors ", source, ": ");
  auto invalid = [&prefix](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, parts...));
  };

  if (size < 8) {
    return invalid(
        "file is ", size,
        " bytes, too short for the 8-byte header length at offset 0");
  }
  const uint64_t header_len = ReadLittleEndian64(base);
  if (header_len > kSafetensorsMaxHeaderSize) {
    return invalid("header length ", header_len,
                   " (file offset 0) exceeds the ", kSafetensorsMaxHeaderSize,
                   "-byte limit");
  }
  if (header_len > size - 8) {
    return invalid("header length ", header_len,
                   " (file offset 0) runs past the end of the ", size,
                   "-byte file");
  }
  data_offset_ = 8 + header_len;
  const uint64_t buffer_size = size - data_offset_;
  const uint8_t* buffer = base + data_offset_;

  const char* text = reinterpret_cast<const char*>(base + 8);
  // nlohmann stops at a NUL byte as if the input ended there, which would let
  // garbage after it through; a NUL is never valid JSON, so reject it here.
  if (const void* nul = std::memchr(text, '\0', header_len)) {
    return invalid("header has a NUL byte at file offset ",
                   8 + (static_cast<const char*>(nul) - text));
  }
  json header;
  try {
    header = ParseStrictJson(text, text + header_len);
  } catch (const json::parse_error& e) {
    return invalid("header is not valid JSON at file offset ", 8 + e.byte - 1,
                   ": ", Printable(e.what()));
  } catch (const JsonRejected& e) {
    return invalid("header rejected: ", e.message);
  } catch (const std::exception& e) {
    return invalid("header is not valid JSON: ", Printable(e.what()));
  }
  if (!header.is_object()) {
    return invalid("header (file offset 8) is a JSON ", JsonTypeName(header),
                   ", not an object");
  }

  struct Span {
    uint64_t begin, end;
    size_t tensor;
  };
  std::vector<Span> spans;
  std::vector<TensorView> tensors;
  for (auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      if (entry.is_null()) continue;
      if (!entry.is_object()) {
        return invalid("\"__metadata__\" is a JSON ", JsonTypeName(entry),
                       ", not an object of strings");
      }
      for (auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return invalid("\"__metadata__\".", Quoted(key), " is a JSON ",
                         JsonTypeName(value), ", not a string");
        }
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor ", Quoted(name));
    if (!entry.is_object()) {
      return invalid(where, " is a JSON ", JsonTypeName(entry),
                     ", not an object");
    }

    TensorView view;
    view.name = name;
    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end()) return invalid(where, ": missing \"dtype\"");
    if (!dtype_it->is_string()) {
      return invalid(where, ": \"dtype\" is a JSON ", JsonTypeName(*dtype_it),
                     ", not a string");
    }
    auto dtype = DTypeFromSafetensorsName(dtype_it->get<std::string>());
    if (!dtype.ok())
      return invalid(where,
                     ": \"dtype\": ", Printable(dtype.status().message()));
    view.dtype = *dtype;

    auto shape_it = entry.find("shape");
    if (shape_it == entry.end()) return invalid(where, ": missing \"shape\"");
    if (!shape_it->is_array()) {
      return invalid(where, ": \"shape\" is a JSON ", JsonTypeName(*shape_it),
                     ", not an array");
    }
    // Byte size, with overflow checked at every step: a hostile shape must not
    // wrap around to a size that happens to match its offsets.
    uint64_t nbytes = DTypeSize(view.dtype);
    int64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < shape_it->size(); ++i) {
      const json& dim = (*shape_it)[i];
      if (!dim.is_number_integer() ||
          (dim.is_number_unsigned() &&
           dim.get<uint64_t>() >
               static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
        return invalid(where, ": \"shape\"[", i, "] is ", Printable(dim.dump()),
                       ", not a non-negative 64-bit integer");
      }
      const int64_t d = dim.get<int64_t>();
      if (d < 0)
        return invalid(where, ": \"shape\"[", i, "] is negative (", d, ")");
      view.shape.push_back(d);
      if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes) ||
          __builtin_mul_overflow(numel, d, &numel)) {
        overflow = true;
      }
    }
    if (overflow) {
      return invalid(where, ": shape ", ShapeString(view.shape), " ",
                     Name(view.dtype), " overflows a 64-bit byte count");
    }

    auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end())
      return invalid(where, ": missing \"data_offsets\"");
    if (!offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() ||
        !(*offsets_it)[1].is_number_unsigned()) {
      return invalid(where, ": \"data_offsets\" is ",
                     Printable(offsets_it->dump()),
                     ", not [begin, end] with non-negative integers");
    }
    const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
    const uint64_t end = (*offsets_it)[1].get<uint64_t>();
    const std::string range =
        absl::StrCat("data_offsets [", begin, ", ", end, ")");
    if (end < begin)
      return invalid(where, ": ", range, " ends before it begins");
    if (end > buffer_size) {
      return invalid(where, ": ", range, " runs past the ", buffer_size,
                     "-byte data buffer (file offset ", data_offset_, ")");
    }
    if (end - begin != nbytes) {
      return invalid(where, ": ", range, " holds ", end - begin,
                     " bytes but shape ", ShapeString(view.shape), " ",
                     Name(view.dtype), " needs ", nbytes,
                     " (data buffer at file offset ", data_offset_, ")");
    }
    view.data = buffer + begin;
    view.nbytes = static_cast<size_t>(nbytes);
    spans.push_back({begin, end, tensors.size()});
    tensors.push_back(std::move(view));
  }

  // The buffer must be tiled exactly: holes could hide data and overlaps make
  // two tensors alias, and the reference reader rejects both.
  std::sort(spans.begin(), spans.end(),
            [&tensors](const Span& a, const Span& b) {
              if (a.begin != b.begin) return a.begin < b.begin;
              if (a.end != b.end) return a.end < b.end;
              return tensors[a.tensor].name < tensors[b.tensor].name;
            });
  uint64_t covered = 0;
  const std::string* previous = nullptr;
  for (const Span& span : spans) {
    const std::string& name = tensors[span.tensor].name;
    if (span.begin > covered) {
      return invalid("data buffer bytes [", covered, ", ", span.begin,
                     ") (file offset ", data_offset_ + covered,
                     ") belong to no tensor; the next tensor is ",
                     Quoted(name));
    }
    if (span.begin < covered) {
      return invalid("tensor ", Quoted(name), ": data_offsets [", span.begin,
                     ", ", span.end, ") overlap tensor ",
                     Quoted(previous ? *previous : ""), " which ends at ",
                     covered);
    }
    covered = span.end;
    previous = &name;
  }
  if (covered != buffer_size) {
    return invalid("data buffer has ", buffer_size - covered,
                   " trailing bytes at file offset ", data_offset_ + covered,
                   " that belong to no tensor");
  }

  // Already in name order: nlohmann keeps object keys sorted.
  tensors_ = std::move(tensors);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

SafetensorsWriter::SafetensorsWriter() { metadata_["format"] = "pt"; }

void SafetensorsWriter::Add(std::string name, DType dtype,
                            std::vector<int64_t> shape, const void* data,
                            size_t nbytes) {
  entries_.push_back({std::move(name), dtype, std::move(shape),
                      static_cast<const uint8_t*>(data), nbytes});
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

absl::StatusOr<std::vector<const SafetensorsWriter::Entry*>>
SafetensorsWriter::LayoutEntries() const {
  std::vector<const Entry*> sorted;
  sorted.reserve(entries_.size());
  for (const Entry& e : entries_) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(),
            [](const Entry* a, const Entry* b) { return a->name < b->name; });
  for (size_t i = 0; i < sorted.size(); ++i) {
    const Entry& e = *sorted[i];
    const std::string where =
        absl::StrCat("safetensors writer: tensor ", Quoted(e.name));
    if (e.name == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": the name is reserved"));
    }
    if (i > 0 && sorted[i - 1]->name == e.name) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": added twice"));
    }
    uint64_t need = DTypeSize(e.dtype);
    for (int64_t d : e.shape) {
      if (d < 0 ||
          __builtin_mul_overflow(need, static_cast<uint64_t>(d), &need)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": invalid shape ", ShapeString(e.shape)));
      }
    }
    if (need != e.nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": ", e.nbytes, " bytes given but shape ",
          ShapeString(e.shape), " ", Name(e.dtype), " needs ", need));
    }
    if (e.data == nullptr && e.nbytes != 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": null data"));
    }
  }
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const Entry* a, const Entry* b) {
                     return DTypeSize(a->dtype) > DTypeSize(b->dtype);
                   });
  return sorted;
}

absl::StatusOr<std::string> SafetensorsWriter::SerializeHeader() const {
  HEARTH_ASSIGN_OR_RETURN(std::vector<const Entry*> layout, LayoutEntries());
  // Header keys in name order, each with its offset in layout order.
  std::map<std::string_view, std::pair<const Entry*, uint64_t>> by_name;
  uint64_t end = 0;
  for (const Entry* e : layout) {
    by_name[e->name] = {e, end};
    end += e->nbytes;
  }
  // Built by hand rather than with json::dump so that the output is byte-stable
  // and the field order matches the reference writer (dtype, shape,
  // data_offsets).
  std::string text;
  try {
    auto quote = [](const std::string& s) {
      return json(s).dump();
    };  // Throws on bad UTF-8.
    text = "{\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata_) {
      absl::StrAppend(&text, first ? "" : ",", quote(key), ":", quote(value));
      first = false;
    }
    text += "}";
    for (const auto& [name, placed] : by_name) {
      const auto& [entry, offset] = placed;
      const Entry& e = *entry;
      absl::StrAppend(&text, ",", quote(e.name), ":{\"dtype\":\"",
                      Name(e.dtype), "\",\"shape\":[",
                      absl::StrJoin(e.shape, ","), "],\"data_offsets\":[",
                      offset, ",", offset + e.nbytes, "]}");
    }
    text += "}";
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors writer: a tensor name or metadata string is "
                     "not valid UTF-8: ",
                     Printable(e.what())));
  }
  // Pad so that the data buffer starts 8-byte aligned in the file.
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kSafetensorsMaxHeaderSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors writer: header of ", text.size(),
                     " bytes exceeds the limit"));
  }
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  return out + text;
}

absl::StatusOr<std::string> SafetensorsWriter::Serialize() const {
  HEARTH_ASSIGN_OR_RETURN(std::string out, SerializeHeader());
  HEARTH_ASSIGN_OR_RETURN(std::vector<const Entry*> layout, LayoutEntries());
  for (const Entry* e : layout) {
    out.append(reinterpret_cast<const char*>(e->data), e->nbytes);
  }
  return out;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path) const {
  HEARTH_ASSIGN_OR_RETURN(std::string header, SerializeHeader());
  HEARTH_ASSIGN_OR_RETURN(std::vector<const Entry*> layout, LayoutEntries());
  const std::string tmp = path + ".tmp";
  const int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return ErrnoError(errno, absl::StrCat("safetensors writer: create ", tmp));
  auto fail = [&](absl::Status status) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return status;
  };
  absl::Status status = WriteAll(fd, header.data(), header.size(), tmp);
  for (const Entry* e : layout) {
    if (!status.ok()) break;
    status = WriteAll(fd, e->data, e->nbytes, tmp);
  }
  if (!status.ok()) return fail(status);
  if (::fsync(fd) != 0)
    return fail(ErrnoError(errno, absl::StrCat("fsync ", tmp)));
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError(err, absl::StrCat("close ", tmp));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError(err, absl::StrCat("rename ", tmp, " to ", path));
  }
  // Make the rename itself durable.
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// CheckpointReader

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(
    const std::string& folder) {
  std::unique_ptr<CheckpointReader> reader(new CheckpointReader());
  const std::string index_path = JoinPath(folder, kIndexFile);

  if (!FileExists(index_path)) {
    const std::string single = JoinPath(folder, kSingleFile);
    if (!FileExists(single)) {
      return absl::NotFoundError(absl::StrCat("checkpoint ", folder,
                                              ": neither ", kSingleFile,
                                              " nor ", kIndexFile, " exists"));
    }
    HEARTH_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    for (const TensorView& t : file->tensors())
      reader->tensors_.emplace(t.name, &t);
    reader->shards_.emplace(kSingleFile, std::move(file));
    return reader;
  }

  auto invalid = [&index_path](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", parts...));
  };
  std::ifstream in(index_path, std::ios::binary);
  if (!in) return ErrnoError(errno, absl::StrCat("open ", index_path));
  std::ostringstream contents;
  contents << in.rdbuf();
  const std::string text = contents.str();
  if (text.size() > kSafetensorsMaxHeaderSize) {
    return invalid("index of ", text.size(), " bytes is implausibly large");
  }
  json index;
  try {
    index = ParseStrictJson(text.data(), text.data() + text.size());
  } catch (const json::parse_error& e) {
    return invalid("not valid JSON at byte ", e.byte - 1, ": ",
                   Printable(e.what()));
  } catch (const JsonRejected& e) {
    return invalid(e.message);
  } catch (const std::exception& e) {
    return invalid("not valid JSON: ", Printable(e.what()));
  }
  if (!index.is_object())
    return invalid("is a JSON ", JsonTypeName(index), ", not an object");
  auto metadata = index.find("metadata");
  if (metadata != index.end() && !metadata->is_object() &&
      !metadata->is_null()) {
    return invalid("\"metadata\" is a JSON ", JsonTypeName(*metadata),
                   ", not an object");
  }
  auto weight_map = index.find("weight_map");
  if (weight_map == index.end()) return invalid("missing \"weight_map\"");
  if (!weight_map->is_object()) {
    return invalid("\"weight_map\" is a JSON ", JsonTypeName(*weight_map),
                   ", not an object");
  }

  for (auto& [tensor, shard_json] : weight_map->items()) {
    const std::string key = absl::StrCat("weight_map[", Quoted(tensor), "]");
    if (!shard_json.is_string()) {
      return invalid(key, " is a JSON ", JsonTypeName(shard_json),
                     ", not a file name");
    }
    const std::string shard = shard_json.get<std::string>();
    // Shards live beside the index; a path could escape the model folder.
    if (shard.empty() || shard == "." || shard == ".." ||
        shard.find_first_of("/\\") != std::string::npos) {
      return invalid(key, " = ", Quoted(shard),
                     " is not a file name in the model folder");
    }
    auto it = reader->shards_.find(shard);
    if (it == reader->shards_.end()) {
      auto file = SafetensorsFile::Open(JoinPath(folder, shard));
      if (!file.ok()) {
        return absl::Status(
            file.status().code(),
            absl::StrCat(index_path, ": ", key, " = ", Quoted(shard), ": ",
                         file.status().message()));
      }
      it = reader->shards_.emplace(shard, std::move(*file)).first;
    }
    const TensorView* view = it->second->Find(tensor);
    if (view == nullptr) {
      return invalid(key, " = ", Quoted(shard),
                     " but that shard has no tensor ", Quoted(tensor));
    }
    reader->tensors_.emplace(tensor, view);
  }
  return reader;
}

const TensorView* CheckpointReader::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

std::vector<std::string> CheckpointReader::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  return names;
}

std::vector<std::string> CheckpointReader::ShardFiles() const {
  std::vector<std::string> files;
  for (const auto& [file, shard] : shards_) files.push_back(file);
  return files;
}

}  // namespace hearth::formats
