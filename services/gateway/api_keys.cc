#include "services/gateway/api_keys.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/log/logging.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace hearth::gateway {
namespace {

constexpr size_t kDigestBytes = SHA256_DIGEST_LENGTH;

std::string Sha256Raw(absl::string_view data) {
  std::string digest(kDigestBytes, '\0');
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         reinterpret_cast<unsigned char*>(digest.data()));
  return digest;
}

// The first 8 digest bytes, to bucket keys. See Authenticate() for why
// looking this up by the presented digest leaks nothing useful.
uint64_t DigestPrefix(absl::string_view digest) {
  uint64_t prefix = 0;
  std::memcpy(&prefix, digest.data(), sizeof(prefix));
  return prefix;
}

bool IsKnownScope(absl::string_view scope) {
  return scope == kScopeGenerate || scope == kScopeAdmin ||
         scope == kScopeQuantize || scope == kScopeDistill;
}

// Ids show up in logs and metric labels, so keep them to a safe alphabet.
bool IsValidId(absl::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ||
           c == '_' || c == '.';
  });
}

bool HexDecode(absl::string_view hex, std::string* out) {
  if (hex.size() % 2 != 0) return false;
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    int value = 0;
    for (int j = 0; j < 2; ++j) {
      char c = absl::ascii_tolower(static_cast<unsigned char>(hex[i + j]));
      int nibble;
      if (c >= '0' && c <= '9') {
        nibble = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        nibble = c - 'a' + 10;
      } else {
        return false;
      }
      value = value * 16 + nibble;
    }
    out->push_back(static_cast<char>(value));
  }
  return true;
}

std::string HexEncode(absl::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(
        "key file ", path, ": cannot be opened: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(
        absl::StrCat("key file ", path, ": read failed"));
  }
  return text.str();
}

// Writes `text` to a temp file beside `path`, fsyncs it and renames it over
// `path`, so readers see the old file or the new one, never a torn one.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view text, mode_t mode) {
  std::string tmp = path + ".tmp.XXXXXX";
  int fd = mkstemp(tmp.data());
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("key file ", path,
                     ": cannot create temp file: ", std::strerror(errno)));
  }
  auto fail = [&](absl::string_view what) {
    int err = errno;
    close(fd);
    unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("key file ", path, ": ", what, ": ", std::strerror(err)));
  };
  if (fchmod(fd, mode) != 0) return fail("chmod");
  size_t written = 0;
  while (written < text.size()) {
    ssize_t n = write(fd, text.data() + written, text.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail("fsync");
  if (close(fd) != 0) {
    unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("key file ", path, ": close: ", std::strerror(errno)));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("key file ", path, ": rename: ", std::strerror(err)));
  }
  // Make the rename itself durable.
  std::string dir = ".";
  if (size_t slash = path.rfind('/'); slash != std::string::npos) {
    dir = slash == 0 ? "/" : path.substr(0, slash);
  }
  int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    fsync(dir_fd);
    close(dir_fd);
  }
  return absl::OkStatus();
}

// Parsing helpers: each error is prefixed by the entry's context.
std::string Context(absl::string_view source, size_t index,
                    const std::string& id, const YAML::Node& node) {
  std::string out = absl::StrCat(source, ": keys[", index, "] (");
  if (!id.empty()) absl::StrAppend(&out, "id \"", id, "\", ");
  absl::StrAppend(&out, "line ", node.Mark().line + 1, ")");
  return out;
}

template <typename T>
absl::Status ReadScalar(const YAML::Node& node, absl::string_view ctx,
                        absl::string_view field, absl::string_view kind,
                        T* out) {
  if (!node.IsScalar()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ctx, ": ", field, ": must be ", kind));
  }
  try {
    *out = node.as<T>();
  } catch (const YAML::Exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat(ctx, ": ", field, ": must be ", kind, " (got \"",
                     node.Scalar(), "\")"));
  }
  return absl::OkStatus();
}

absl::Status ReadStringList(const YAML::Node& node, absl::string_view ctx,
                            absl::string_view field,
                            std::vector<std::string>* out) {
  if (!node.IsSequence()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ctx, ": ", field, ": must be a list of strings"));
  }
  out->clear();
  for (size_t i = 0; i < node.size(); ++i) {
    std::string value;
    HEARTH_RETURN_IF_ERROR(ReadScalar(
        node[i], ctx, absl::StrCat(field, "[", i, "]"), "a string", &value));
    if (value.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(ctx, ": ", field, "[", i, "]: must not be empty"));
    }
    out->push_back(std::move(value));
  }
  return absl::OkStatus();
}

absl::Status ParseLimits(const YAML::Node& node, absl::string_view ctx,
                         RateLimits* limits) {
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ctx, ": limits: must be a mapping"));
  }
  for (const auto& field : node) {
    std::string name = field.first.as<std::string>();
    std::string qualified = absl::StrCat("limits.", name);
    if (name == "requests_per_second") {
      HEARTH_RETURN_IF_ERROR(ReadScalar(field.second, ctx, qualified,
                                        "a number",
                                        &limits->requests_per_second));
      if (!(limits->requests_per_second >= 0)) {  // also rejects NaN
        return absl::InvalidArgumentError(
            absl::StrCat(ctx, ": ", qualified, ": must be >= 0"));
      }
      continue;
    }
    int64_t* target = nullptr;
    if (name == "burst") target = &limits->burst;
    if (name == "tokens_per_minute") target = &limits->tokens_per_minute;
    if (name == "max_concurrent_streams") {
      target = &limits->max_concurrent_streams;
    }
    if (target == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(ctx, ": ", qualified,
                       ": unknown field (expected requests_per_second, burst, "
                       "tokens_per_minute, max_concurrent_streams)"));
    }
    HEARTH_RETURN_IF_ERROR(
        ReadScalar(field.second, ctx, qualified, "an integer", target));
    if (*target < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(ctx, ": ", qualified, ": must be >= 0"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ApiKey> ParseEntry(const YAML::Node& node,
                                  absl::string_view source, size_t index) {
  ApiKey key;
  std::string ctx = Context(source, index, "", node);
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(ctx, ": must be a mapping"));
  }
  if (node["id"]) {
    HEARTH_RETURN_IF_ERROR(
        ReadScalar(node["id"], ctx, "id", "a string", &key.id));
  }
  if (!IsValidId(key.id)) {
    return absl::InvalidArgumentError(
        absl::StrCat(ctx, ": id: must be 1-64 characters of [A-Za-z0-9._-]"));
  }
  ctx = Context(source, index, key.id, node);
  bool have_sha = false, have_scopes = false;
  for (const auto& field : node) {
    std::string name = field.first.as<std::string>();
    const YAML::Node& value = field.second;
    if (name == "id") continue;
    if (name == "sha256") {
      std::string hex;
      HEARTH_RETURN_IF_ERROR(
          ReadScalar(value, ctx, "sha256", "a hex string", &hex));
      if (hex.size() != 2 * kDigestBytes || !HexDecode(hex, &key.sha256)) {
        return absl::InvalidArgumentError(absl::StrCat(
            ctx,
            ": sha256: must be 64 hex digits (the SHA-256 of the secret, "
            "never the secret itself)"));
      }
      have_sha = true;
    } else if (name == "scopes") {
      HEARTH_RETURN_IF_ERROR(ReadStringList(value, ctx, "scopes", &key.scopes));
      for (const std::string& scope : key.scopes) {
        if (!IsKnownScope(scope)) {
          return absl::InvalidArgumentError(
              absl::StrCat(ctx, ": scopes: unknown scope \"", scope,
                           "\" (expected generate, admin, quantize, distill)"));
        }
      }
      have_scopes = true;
    } else if (name == "models") {
      HEARTH_RETURN_IF_ERROR(ReadStringList(value, ctx, "models", &key.models));
    } else if (name == "limits") {
      HEARTH_RETURN_IF_ERROR(ParseLimits(value, ctx, &key.limits));
    } else if (name == "max_priority") {
      HEARTH_RETURN_IF_ERROR(ReadScalar(value, ctx, "max_priority",
                                        "an integer", &key.max_priority));
      if (key.max_priority < 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            ctx, ": max_priority: must be >= 1 (1 is the highest level)"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          ctx, ": ", name,
          ": unknown field (expected id, sha256, scopes, models, limits, "
          "max_priority)"));
    }
  }
  if (!have_sha) {
    return absl::InvalidArgumentError(absl::StrCat(ctx, ": sha256: missing"));
  }
  if (!have_scopes) {
    return absl::InvalidArgumentError(absl::StrCat(ctx, ": scopes: missing"));
  }
  return key;
}

absl::StatusOr<YAML::Node> LoadYaml(absl::string_view text,
                                    absl::string_view source) {
  try {
    return YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": line ", e.mark.line + 1, ", column ",
                     e.mark.column + 1, ": ", e.msg));
  }
}

YAML::Node KeyToYaml(const ApiKey& key) {
  YAML::Node node;
  node["id"] = key.id;
  node["sha256"] = HexEncode(key.sha256);
  YAML::Node scopes(YAML::NodeType::Sequence);
  for (const auto& s : key.scopes) scopes.push_back(s);
  scopes.SetStyle(YAML::EmitterStyle::Flow);
  node["scopes"] = scopes;
  YAML::Node models(YAML::NodeType::Sequence);
  for (const auto& m : key.models) models.push_back(m);
  models.SetStyle(YAML::EmitterStyle::Flow);
  node["models"] = models;
  YAML::Node limits;
  limits["requests_per_second"] = key.limits.requests_per_second;
  limits["burst"] = key.limits.burst;
  limits["tokens_per_minute"] = key.limits.tokens_per_minute;
  limits["max_concurrent_streams"] = key.limits.max_concurrent_streams;
  limits.SetStyle(YAML::EmitterStyle::Flow);
  node["limits"] = limits;
  node["max_priority"] = key.max_priority;
  return node;
}

nlohmann::json KeyToJson(const ApiKey& key) {
  return nlohmann::json{
      {"id", key.id},
      {"sha256", HexEncode(key.sha256)},
      {"scopes", key.scopes},
      {"models", key.models},
      {"limits",
       {{"requests_per_second", key.limits.requests_per_second},
        {"burst", key.limits.burst},
        {"tokens_per_minute", key.limits.tokens_per_minute},
        {"max_concurrent_streams", key.limits.max_concurrent_streams}}},
      {"max_priority", key.max_priority}};
}

std::string Emit(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

// Appends `key` to the YAML text as a new block-sequence item under `keys`,
// indented like the existing items. Returns "" when the file's shape does not
// allow that (flow style, `keys` not last, ...); the caller then rewrites.
std::string AppendAsText(const std::string& text, const YAML::Node& root,
                         const std::vector<ApiKey>& old_keys,
                         const ApiKey& key) {
  const YAML::Node keys = root["keys"];
  if (!keys || !keys.IsSequence() || keys.size() == 0 ||
      keys.Style() == YAML::EmitterStyle::Flow) {
    return "";
  }
  int item_column = keys[0].Mark().column;  // where "id" starts after "- "
  if (item_column < 2) return "";
  std::string dash_indent(item_column - 2, ' ');
  std::string body_indent(item_column, ' ');
  std::string entry = Emit(KeyToYaml(key));
  std::string candidate = text;
  if (!candidate.empty() && candidate.back() != '\n') candidate += '\n';
  bool first = true;
  for (absl::string_view line :
       absl::StrSplit(entry, '\n', absl::SkipEmpty())) {
    absl::StrAppend(&candidate, first ? dash_indent + "- " : body_indent, line,
                    "\n");
    first = false;
  }
  // Prove the text append meant what we wanted: old keys, in order, plus ours.
  auto parsed = ParseApiKeys(candidate, "candidate");
  if (!parsed.ok() || parsed->size() != old_keys.size() + 1) return "";
  for (size_t i = 0; i < old_keys.size(); ++i) {
    if ((*parsed)[i].id != old_keys[i].id) return "";
  }
  if (parsed->back().id != key.id || parsed->back().sha256 != key.sha256) {
    return "";
  }
  return candidate;
}

}  // namespace

bool ApiKey::HasScope(absl::string_view scope) const {
  return std::find(scopes.begin(), scopes.end(), scope) != scopes.end();
}

bool ApiKey::AllowsModel(absl::string_view model) const {
  for (const std::string& allowed : models) {
    if (allowed == "*" || allowed == model) return true;
  }
  return false;
}

int ApiKey::ClampPriority(int requested, int default_level) const {
  int level = requested > 0 ? requested : default_level;
  return std::max(level, max_priority);
}

absl::Status Authorize(const ApiKey& key, absl::string_view scope,
                       absl::string_view model) {
  if (!key.HasScope(scope)) {
    return absl::PermissionDeniedError(
        absl::StrCat("API key '", key.id, "' lacks scope '", scope, "'"));
  }
  if (!model.empty() && !key.AllowsModel(model)) {
    return absl::PermissionDeniedError(
        absl::StrCat("API key '", key.id, "' may not use model '", model, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::string_view> ExtractApiKey(absl::string_view authorization,
                                                absl::string_view x_api_key) {
  authorization = absl::StripAsciiWhitespace(authorization);
  if (!authorization.empty()) {
    constexpr absl::string_view kBearer = "bearer";
    if (authorization.size() <= kBearer.size() ||
        !absl::StartsWithIgnoreCase(authorization, kBearer) ||
        !absl::ascii_isspace(
            static_cast<unsigned char>(authorization[kBearer.size()]))) {
      return absl::UnauthenticatedError(
          "authorization header must be 'Bearer <API key>'");
    }
    absl::string_view token =
        absl::StripAsciiWhitespace(authorization.substr(kBearer.size()));
    if (token.empty()) {
      return absl::UnauthenticatedError(
          "authorization header has an empty bearer token");
    }
    return token;
  }
  x_api_key = absl::StripAsciiWhitespace(x_api_key);
  if (!x_api_key.empty()) return x_api_key;
  return absl::UnauthenticatedError(
      "missing API key: send 'authorization: Bearer <key>' or 'x-api-key: "
      "<key>'");
}

std::string Sha256Hex(absl::string_view data) {
  return HexEncode(Sha256Raw(data));
}

std::string GenerateKeySecret() {
  unsigned char bytes[32];
  size_t filled = 0;
  while (filled < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + filled, sizeof(bytes) - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // No randomness means no safe key; refuse loudly rather than weakly.
      HLOG(ERROR) << "getrandom failed: " << std::strerror(errno);
      std::abort();
    }
    filled += static_cast<size_t>(n);
  }
  // RFC 4648 base32, lowercase, unpadded: 256 bits -> 52 characters.
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
  std::string out = "hk_";
  uint32_t buffer = 0;
  int bits = 0;
  for (unsigned char byte : bytes) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out.push_back(kAlphabet[(buffer >> (bits - 5)) & 31]);
      bits -= 5;
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(buffer << (5 - bits)) & 31]);
  OPENSSL_cleanse(bytes, sizeof(bytes));
  return out;
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

namespace {

absl::StatusOr<std::vector<ApiKey>> ParseApiKeysOrThrow(
    absl::string_view text, absl::string_view source) {
  HEARTH_ASSIGN_OR_RETURN(YAML::Node root, LoadYaml(text, source));
  if (!root.IsMap() || !root["keys"]) {
    return absl::InvalidArgumentError(absl::StrCat(
        source,
        ": must be a mapping with a 'keys' list (use 'keys: []' for "
        "none)"));
  }
  const YAML::Node keys = root["keys"];
  if (!keys.IsSequence()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": keys (line ", keys.Mark().line + 1, "): must be a list"));
  }
  std::vector<ApiKey> out;
  absl::flat_hash_map<std::string, size_t> ids;
  absl::flat_hash_map<std::string, size_t> digests;
  for (size_t i = 0; i < keys.size(); ++i) {
    HEARTH_ASSIGN_OR_RETURN(ApiKey key, ParseEntry(keys[i], source, i));
    std::string ctx = Context(source, i, key.id, keys[i]);
    if (auto [it, inserted] = ids.emplace(key.id, i); !inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat(ctx, ": id: duplicates keys[", it->second, "]"));
    }
    if (auto [it, inserted] = digests.emplace(key.sha256, i); !inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat(ctx, ": sha256: same secret as keys[", it->second,
                       "] (id \"", out[it->second].id, "\")"));
    }
    out.push_back(std::move(key));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<ApiKey>> ParseApiKeys(absl::string_view text,
                                                 absl::string_view source) {
  // yaml-cpp reports odd shapes (a mapping used as a key, ...) by throwing;
  // exceptions must not leave the module.
  try {
    return ParseApiKeysOrThrow(text, source);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": line ", e.mark.line + 1, ": ", e.msg));
  }
}

absl::Status AppendApiKey(const std::string& path, const ApiKey& key) {
  if (key.sha256.size() != kDigestBytes) {
    return absl::InvalidArgumentError(
        "sha256: must be set to the 32-byte digest of the secret");
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) {
      return absl::InternalError(
          absl::StrCat("key file ", path, ": stat: ", std::strerror(errno)));
    }
    std::string text =
        "# hearth API keys: SHA-256 of each secret, never the "
        "secret.\nkeys:\n";
    YAML::Node root;
    root["keys"].push_back(KeyToYaml(key));
    text += Emit(root).substr(std::string("keys:\n").size());
    HEARTH_RETURN_IF_ERROR(ParseApiKeys(text, path).status());
    return WriteFileAtomically(path, text, 0600);
  }
  HEARTH_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  HEARTH_ASSIGN_OR_RETURN(std::vector<ApiKey> old_keys,
                          ParseApiKeys(text, path));
  for (const ApiKey& existing : old_keys) {
    if (existing.id == key.id) {
      return absl::AlreadyExistsError(absl::StrCat(
          "key file ", path, ": a key with id \"", key.id, "\" exists"));
    }
  }

  std::string updated;
  absl::string_view trimmed = absl::StripLeadingAsciiWhitespace(text);
  if (!trimmed.empty() && trimmed.front() == '{') {
    nlohmann::json json =
        nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!json.is_discarded() && json.contains("keys") &&
        json["keys"].is_array()) {
      json["keys"].push_back(KeyToJson(key));
      updated = json.dump(2) + "\n";
    }
  }
  if (updated.empty()) {
    HEARTH_ASSIGN_OR_RETURN(YAML::Node root, LoadYaml(text, path));
    updated = AppendAsText(text, root, old_keys, key);
    if (updated.empty()) {
      root["keys"].push_back(KeyToYaml(key));
      updated = Emit(root);
    }
  }
  HEARTH_ASSIGN_OR_RETURN(std::vector<ApiKey> new_keys,
                          ParseApiKeys(updated, path));
  if (new_keys.size() != old_keys.size() + 1) {
    return absl::InternalError(
        absl::StrCat("key file ", path, ": appending the key went wrong"));
  }
  return WriteFileAtomically(path, updated, st.st_mode & 07777);
}

absl::StatusOr<std::string> CreateApiKey(const std::string& path, ApiKey key) {
  std::string secret = GenerateKeySecret();
  key.sha256 = Sha256Raw(secret);
  HEARTH_RETURN_IF_ERROR(AppendApiKey(path, key));
  return secret;
}

// ---------------------------------------------------------------------------
// ApiKeyStore

struct ApiKeyStore::Snapshot {
  std::vector<ApiKey> keys;
  // Digest prefix -> indices into `keys`; almost always one index.
  absl::flat_hash_map<uint64_t, absl::InlinedVector<uint32_t, 1>> by_prefix;
  absl::flat_hash_map<std::string, uint32_t> by_id;
  std::string content_digest;  // of the file text, to skip no-op reloads
};

ApiKeyStore::ApiKeyStore(std::string path) : path_(std::move(path)) {}

ApiKeyStore::~ApiKeyStore() { StopPolling(); }

absl::StatusOr<std::unique_ptr<ApiKeyStore>> ApiKeyStore::Open(
    std::string path) {
  std::unique_ptr<ApiKeyStore> store(new ApiKeyStore(std::move(path)));
  HEARTH_RETURN_IF_ERROR(store->Reload());
  return store;
}

absl::StatusOr<std::unique_ptr<ApiKeyStore>> ApiKeyStore::FromText(
    absl::string_view text, absl::string_view source) {
  std::unique_ptr<ApiKeyStore> store(new ApiKeyStore(""));
  absl::MutexLock lock(&store->reload_mu_);
  HEARTH_RETURN_IF_ERROR(store->InstallText(text, source));
  return store;
}

absl::Status ApiKeyStore::InstallText(absl::string_view text,
                                      absl::string_view source) {
  std::string content_digest = Sha256Raw(text);
  const Snapshot* old = current_.load(std::memory_order_relaxed);
  if (old != nullptr && old->content_digest == content_digest) {
    return absl::OkStatus();
  }
  HEARTH_ASSIGN_OR_RETURN(std::vector<ApiKey> keys, ParseApiKeys(text, source));
  auto snapshot = std::make_unique<Snapshot>();
  snapshot->keys = std::move(keys);
  snapshot->content_digest = std::move(content_digest);
  for (uint32_t i = 0; i < snapshot->keys.size(); ++i) {
    const ApiKey& key = snapshot->keys[i];
    snapshot->by_prefix[DigestPrefix(key.sha256)].push_back(i);
    snapshot->by_id.emplace(key.id, i);
  }
  current_.store(snapshot.get(), std::memory_order_release);
  snapshots_.push_back(std::move(snapshot));
  generation_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::StatusOr<const ApiKey*> ApiKeyStore::Authenticate(
    absl::string_view secret) const {
  if (secret.empty()) return absl::UnauthenticatedError("missing API key");
  std::string digest = Sha256Raw(secret);
  const Snapshot& snapshot = current();
  // The lookup is keyed by the digest of what the caller sent, so its timing
  // tells the caller only about SHA-256 of its own guess; turning that into
  // knowledge of a stored digest needs a 64-bit partial preimage. The final
  // comparison is constant-time all the same.
  auto it = snapshot.by_prefix.find(DigestPrefix(digest));
  if (it != snapshot.by_prefix.end()) {
    for (uint32_t index : it->second) {
      const ApiKey& key = snapshot.keys[index];
      if (ConstantTimeEquals(digest, key.sha256)) return &key;
    }
  }
  return absl::UnauthenticatedError("invalid API key");
}

const ApiKey* ApiKeyStore::FindById(absl::string_view id) const {
  const Snapshot& snapshot = current();
  auto it = snapshot.by_id.find(id);
  return it == snapshot.by_id.end() ? nullptr : &snapshot.keys[it->second];
}

size_t ApiKeyStore::size() const { return current().keys.size(); }

uint64_t ApiKeyStore::generation() const {
  return generation_.load(std::memory_order_relaxed);
}

absl::Status ApiKeyStore::Reload() {
  if (path_.empty()) return absl::OkStatus();
  absl::MutexLock lock(&reload_mu_);
  struct stat st;
  if (stat(path_.c_str(), &st) == 0) {
    last_stamp_ =
        FileStamp{st.st_dev, st.st_ino, st.st_size,
                  static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
                      st.st_mtim.tv_nsec};
  }
  HEARTH_ASSIGN_OR_RETURN(std::string text, ReadFile(path_));
  return InstallText(text, path_);
}

absl::StatusOr<bool> ApiKeyStore::ReloadIfChanged() {
  if (path_.empty()) return false;
  {
    absl::MutexLock lock(&reload_mu_);
    struct stat st;
    if (stat(path_.c_str(), &st) != 0) {
      // A file being replaced by rename never disappears; a missing file is
      // an operator error, and the old keys keep serving meanwhile.
      return absl::NotFoundError(absl::StrCat(
          "key file ", path_, ": cannot be read: ", std::strerror(errno)));
    }
    FileStamp stamp{st.st_dev, st.st_ino, st.st_size,
                    static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
                        st.st_mtim.tv_nsec};
    if (stamp == last_stamp_) return false;
  }
  uint64_t before = generation();
  HEARTH_RETURN_IF_ERROR(Reload());
  return generation() != before;
}

void ApiKeyStore::StartPolling(absl::Duration period) {
  if (path_.empty() || poller_.joinable()) return;
  {
    absl::MutexLock lock(&poll_mu_);
    stop_polling_ = false;
  }
  poller_ = std::thread([this, period] {
    absl::MutexLock lock(&poll_mu_);
    while (
        !poll_mu_.AwaitWithTimeout(absl::Condition(&stop_polling_), period)) {
      poll_mu_.Unlock();
      absl::StatusOr<bool> reloaded = ReloadIfChanged();
      if (!reloaded.ok()) {
        HLOG(ERROR) << "API keys not reloaded, old keys stay in force: "
                    << reloaded.status();
      } else if (*reloaded) {
        HLOG(INFO) << "API keys reloaded from " << path_ << ": " << size()
                   << " keys";
      }
      poll_mu_.Lock();
    }
  });
}

void ApiKeyStore::StopPolling() {
  if (!poller_.joinable()) return;
  {
    absl::MutexLock lock(&poll_mu_);
    stop_polling_ = true;
  }
  poller_.join();
}

}  // namespace hearth::gateway
