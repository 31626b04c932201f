// Cost of the gateway's per-request admission checks on one thread:
// header parsing, API key authentication (SHA-256 + constant-time compare),
// scope/model authorization, and a rate-limiter Admit + Complete against
// token buckets that are live but not limiting. The target is
// >= 50,000 checks/s per core (docs/BENCHMARKS.md).
//
//   bench_gateway_auth [--iterations=N] [--keys=K]
//
// Prints one line per stage and a final summary line.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "services/gateway/api_keys.h"
#include "services/gateway/rate_limiter.h"

namespace {

using hearth::gateway::ApiKey;
using hearth::gateway::ApiKeyStore;
using hearth::gateway::RateLimiter;

int64_t FlagValue(int argc, char** argv, const char* name, int64_t fallback) {
  const std::string prefix = absl::StrCat("--", name, "=");
  for (int i = 1; i < argc; ++i) {
    int64_t value = 0;
    if (absl::StartsWith(argv[i], prefix) &&
        absl::SimpleAtoi(argv[i] + prefix.size(), &value) && value > 0) {
      return value;
    }
  }
  return fallback;
}

// Runs `body(i)` `iterations` times and prints the rate.
template <typename Body>
double Measure(const char* name, int64_t iterations, Body body) {
  for (int64_t i = 0; i < iterations / 10; ++i) body(i);  // warm up
  const absl::Time start = absl::Now();
  for (int64_t i = 0; i < iterations; ++i) body(i);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const double rate = static_cast<double>(iterations) / seconds;
  std::printf("%-44s %12.0f /s  %8.0f ns each\n", name, rate,
              1e9 * seconds / static_cast<double>(iterations));
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t iterations = FlagValue(argc, argv, "iterations", 1000000);
  const int64_t key_count = FlagValue(argc, argv, "keys", 1000);

  // A key file of `key_count` keys; requests rotate over all of them so the
  // limiter sees many buckets, as a gateway with many tenants does.
  std::vector<std::string> secrets;
  std::vector<std::string> headers;
  std::string text = "keys:\n";
  for (int64_t i = 0; i < key_count; ++i) {
    secrets.push_back(hearth::gateway::GenerateKeySecret());
    headers.push_back("Bearer " + secrets.back());
    absl::StrAppend(&text, "  - id: key-", i, "\n    sha256: ",
                    hearth::gateway::Sha256Hex(secrets.back()),
                    "\n    scopes: [generate]\n    models: [tiny, small]\n"
                    "    limits: {requests_per_second: 1e9, burst: 1000000000,"
                    " tokens_per_minute: 1000000000000,"
                    " max_concurrent_streams: 64}\n");
  }
  auto store = ApiKeyStore::FromText(text, "bench");
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  RateLimiter limiter;
  const size_t n = secrets.size();
  std::vector<const ApiKey*> keys;
  for (int64_t i = 0; i < key_count; ++i) {
    keys.push_back((*store)->FindById(absl::StrCat("key-", i)));
  }
  int64_t failures = 0;

  Measure("sha256 + lookup (Authenticate)", iterations, [&](int64_t i) {
    if (!(*store)->Authenticate(secrets[i % n]).ok()) ++failures;
  });
  Measure("rate limiter Admit + Complete", iterations, [&](int64_t i) {
    const ApiKey* key = keys[i % n];
    auto admission = limiter.Admit(key->id, key->limits, 300, absl::Now());
    if (!admission.ok()) ++failures;
    admission->Complete(120);
  });
  const double rate = Measure(
      "full check (extract+auth+authorize+admit)", iterations, [&](int64_t i) {
        auto secret = hearth::gateway::ExtractApiKey(headers[i % n], "");
        auto key = (*store)->Authenticate(*secret);
        if (!key.ok() || !hearth::gateway::Authorize(
                              **key, hearth::gateway::kScopeGenerate, "small")
                              .ok()) {
          ++failures;
          return;
        }
        auto admission =
            limiter.Admit((*key)->id, (*key)->limits, 300, absl::Now());
        if (!admission.ok()) {
          ++failures;
          return;
        }
        admission->Complete(120);
      });
  std::printf(
      "bench_gateway_auth: %.0f checks/s on 1 thread (%lld keys, %lld "
      "iterations, target >= 50000) %s\n",
      rate, static_cast<long long>(key_count),
      static_cast<long long>(iterations), rate >= 50000 ? "PASS" : "BELOW");
  if (failures != 0) {
    std::fprintf(stderr, "%lld checks failed unexpectedly\n",
                 static_cast<long long>(failures));
    return 1;
  }
  return 0;
}
