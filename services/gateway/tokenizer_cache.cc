#include "services/gateway/tokenizer_cache.h"

#include <sys/stat.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace hearth::gateway {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

}  // namespace

TokenizerCache::TokenizerCache(std::string model_repository,
                               absl::Duration retry_after)
    : model_repository_(std::move(model_repository)),
      retry_after_(retry_after) {}

absl::StatusOr<std::shared_ptr<const tokenizer::Tokenizer>> TokenizerCache::Get(
    const std::string& model, const std::string& worker_path) {
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(model);
    if (it != entries_.end()) {
      if (it->second.tokenizer) return it->second.tokenizer;
      if (now - it->second.checked < retry_after_) return it->second.error;
    }
  }
  // Load outside the lock: a large tokenizer.json takes a while, and other
  // models must not wait for it. Two racing loads are harmless.
  std::vector<std::string> candidates;
  if (!worker_path.empty() && worker_path[0] == '/') {
    candidates.push_back(worker_path);
  }
  if (!model_repository_.empty()) {
    if (!worker_path.empty() && worker_path[0] != '/') {
      candidates.push_back(absl::StrCat(model_repository_, "/", worker_path));
    }
    candidates.push_back(absl::StrCat(model_repository_, "/", model));
  }
  Entry entry;
  entry.checked = now;
  std::vector<std::string> tried;
  for (const std::string& path : candidates) {
    if (!Exists(path)) {
      tried.push_back(absl::StrCat(path, " (missing)"));
      continue;
    }
    auto loaded = tokenizer::LoadTokenizer(path);
    if (loaded.ok()) {
      entry.tokenizer =
          std::shared_ptr<const tokenizer::Tokenizer>(std::move(*loaded));
      break;
    }
    tried.push_back(absl::StrCat(path, " (", loaded.status().message(), ")"));
  }
  if (!entry.tokenizer) {
    entry.error = absl::NotFoundError(absl::StrCat(
        "the gateway has no tokenizer for model '", model, "'",
        candidates.empty()
            ? "; start it with --model_repository=<the workers' repository>"
            : absl::StrCat("; looked in ", absl::StrJoin(tried, ", "))));
  }
  absl::MutexLock lock(&mu_);
  entries_[model] = entry;
  if (entry.tokenizer) return entry.tokenizer;
  return entry.error;
}

}  // namespace hearth::gateway
