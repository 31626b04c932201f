// API keys: who may call the gateway, for what, and how much.
//
// A key file (YAML or JSON) lists keys by id with the SHA-256 of each secret,
// never the secret itself, so a leaked key file does not leak credentials:
//
//   keys:
//     - id: alice
//       sha256:
//       9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//       scopes: [generate]            # generate, admin, quantize, distill
//       models: ["tiny-student"]      # "*" = every model; omitted = "*"
//       limits: {requests_per_second: 5, burst: 10,
//                tokens_per_minute: 60000, max_concurrent_streams: 4}
//       max_priority: 2               # 1 = highest (Triton's convention)
//
// ApiKeyStore holds the parsed file as an immutable snapshot behind an atomic
// pointer: Authenticate() never takes a lock, and Reload() swaps in a new
// snapshot or, if the file is bad, keeps serving the old one. Superseded
// snapshots are kept until the store is destroyed, so an `const ApiKey*`
// handed out stays valid for the store's lifetime; a reload whose file content
// is unchanged builds no snapshot, so this costs memory only per real edit.
//
// Secrets are hashed on arrival and compared as digests in constant time; no
// function here logs or returns a secret, except GenerateKeySecret() and
// CreateApiKey(), which exist to show a new secret to its owner once.
#ifndef HEARTH_SERVICES_GATEWAY_API_KEYS_H_
#define HEARTH_SERVICES_GATEWAY_API_KEYS_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/gateway/rate_limiter.h"

namespace hearth::gateway {

inline constexpr absl::string_view kScopeGenerate = "generate";
inline constexpr absl::string_view kScopeAdmin = "admin";
inline constexpr absl::string_view kScopeQuantize = "quantize";
inline constexpr absl::string_view kScopeDistill = "distill";

struct ApiKey {
  std::string id;
  std::string sha256;  // 32 raw bytes: the digest of the secret
  // Each scope must be listed explicitly; `admin` does not imply the others,
  // so an operator key cannot run up generation traffic by accident.
  std::vector<std::string> scopes;
  std::vector<std::string> models = {"*"};
  RateLimits limits;
  // The highest priority level (smallest number) the key may ask for.
  int max_priority = 1;

  bool HasScope(absl::string_view scope) const;
  bool AllowsModel(absl::string_view model) const;
  // The level a request of this key runs at: `requested` (0 = the model's
  // `default_level`), lowered to max_priority if it asks for more.
  int ClampPriority(int requested, int default_level) const;
};

// OK, or PERMISSION_DENIED naming the key and the missing scope or model. An
// empty `model` checks the scope only (admin rpcs name no model).
absl::Status Authorize(const ApiKey& key, absl::string_view scope,
                       absl::string_view model);

// The secret from request metadata: `authorization: Bearer <key>` (scheme is
// case-insensitive) or else `x-api-key: <key>`; pass "" for a header that is
// absent. UNAUTHENTICATED when neither carries a key or `authorization` is not
// a bearer token. The result points into the arguments.
absl::StatusOr<absl::string_view> ExtractApiKey(absl::string_view authorization,
                                                absl::string_view x_api_key);

// Lowercase hex SHA-256, as stored in a key file.
std::string Sha256Hex(absl::string_view data);
// "hk_" + 52 lowercase base32 characters encoding 32 bytes from the kernel's
// CSPRNG (getrandom(2)): 256 bits, so hashing without salt or stretching is
// enough (nobody can brute-force a digest of a random 256-bit string).
std::string GenerateKeySecret();
// Byte-wise equality whose running time depends only on the lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// Parses and validates key-file text. Errors name the source, the key (index
// and id) and the line, e.g. `keys.yaml: keys[2] (id "bob", line 14): scopes:
// unknown scope "generat"`.
absl::StatusOr<std::vector<ApiKey>> ParseApiKeys(absl::string_view text,
                                                 absl::string_view source);

// Adds `key` (whose `sha256` must be set) to the key file at `path`, creating
// the file (mode 0600) if needed. A YAML file gets the entry appended as text
// so comments survive, when that provably yields the same keys plus the new
// one; otherwise the file is rewritten. The result is validated before it
// replaces the file (temp file, fsync, rename), so a duplicate id is refused
// and a running gateway never sees a half-written file.
absl::Status AppendApiKey(const std::string& path, const ApiKey& key);
// Generates a secret, stores `key` with its hash via AppendApiKey() and
// returns the secret: the only time it exists outside its owner's hands.
absl::StatusOr<std::string> CreateApiKey(const std::string& path, ApiKey key);

class ApiKeyStore {
 public:
  // Loads `path`; fails if it cannot be read or parsed.
  static absl::StatusOr<std::unique_ptr<ApiKeyStore>> Open(std::string path);
  // A store over fixed text (tests, inline config); Reload() is a no-op.
  static absl::StatusOr<std::unique_ptr<ApiKeyStore>> FromText(
      absl::string_view text, absl::string_view source);

  ~ApiKeyStore();
  ApiKeyStore(const ApiKeyStore&) = delete;
  ApiKeyStore& operator=(const ApiKeyStore&) = delete;

  // The key whose secret is `secret`, or UNAUTHENTICATED. Lock-free.
  absl::StatusOr<const ApiKey*> Authenticate(absl::string_view secret) const;
  // nullptr if no key has this id in the current snapshot.
  const ApiKey* FindById(absl::string_view id) const;
  size_t size() const;
  // Increments each time a reload installs a changed snapshot.
  uint64_t generation() const;

  // Re-reads the file and swaps in its keys atomically; a removed key stops
  // authenticating at once. On error the old keys stay and the error names the
  // file, key and line.
  absl::Status Reload();
  // Reload() if the file's mtime, size or inode changed since the last
  // attempt (a failed attempt is not retried until the file changes again).
  // Returns whether a reload was attempted and succeeded.
  absl::StatusOr<bool> ReloadIfChanged();
  // Calls ReloadIfChanged() every `period` on a background thread, logging
  // outcomes (never secrets). Stopped by StopPolling() or the destructor.
  void StartPolling(absl::Duration period);
  void StopPolling();

 private:
  struct Snapshot;
  struct FileStamp {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = -1;
    int64_t mtime_ns = -1;
    bool operator==(const FileStamp& o) const {
      return dev == o.dev && ino == o.ino && size == o.size &&
             mtime_ns == o.mtime_ns;
    }
  };

  explicit ApiKeyStore(std::string path);
  absl::Status InstallText(absl::string_view text, absl::string_view source)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_);
  const Snapshot& current() const {
    return *current_.load(std::memory_order_acquire);
  }

  const std::string path_;  // empty for FromText()
  std::atomic<const Snapshot*> current_{nullptr};

  absl::Mutex reload_mu_;
  // Every snapshot ever installed, so that readers' pointers never dangle.
  std::vector<std::unique_ptr<const Snapshot>> snapshots_
      ABSL_GUARDED_BY(reload_mu_);
  FileStamp last_stamp_ ABSL_GUARDED_BY(reload_mu_);
  std::atomic<uint64_t> generation_{0};

  absl::Mutex poll_mu_;
  bool stop_polling_ ABSL_GUARDED_BY(poll_mu_) = false;
  std::thread poller_;
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_API_KEYS_H_
