// Tokenizers the gateway loads itself, for Tokenize and for counting prompt
// tokens (context-length checks and honest tokens/min reservations) without a
// round trip to a worker.
//
// A model's tokenizer is looked for in the folder its worker reports
// (LoadedModel.path, when absolute and present on this machine) and then in
// <--model_repository>/<model>. Missing tokenizers are remembered for
// `retry_after` so that a gateway without the model files does not hit the
// file system on every request; callers fall back to byte counts.
#ifndef HEARTH_SERVICES_GATEWAY_TOKENIZER_CACHE_H_
#define HEARTH_SERVICES_GATEWAY_TOKENIZER_CACHE_H_

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/tokenizer/tokenizer.h"

namespace hearth::gateway {

class TokenizerCache {
 public:
  // `model_repository` may be empty (then only absolute worker paths work).
  explicit TokenizerCache(std::string model_repository,
                          absl::Duration retry_after = absl::Seconds(30));

  // The tokenizer of `model`, or NOT_FOUND saying where it looked.
  // `worker_path` is the LoadedModel.path a worker reported ("" if none).
  absl::StatusOr<std::shared_ptr<const tokenizer::Tokenizer>> Get(
      const std::string& model, const std::string& worker_path);

 private:
  struct Entry {
    std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
    absl::Status error;
    absl::Time checked;
  };

  const std::string model_repository_;
  const absl::Duration retry_after_;
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hearth::gateway

#endif  // HEARTH_SERVICES_GATEWAY_TOKENIZER_CACHE_H_
