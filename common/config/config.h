// Service configuration: command-line flags (absl) plus an optional YAML or
// JSON file, with flags winning over the file.
//
// Every service calls InitServiceFlags() first thing in main(). It accepts the
// documented dashed spellings (`--grpc-port`) as well as absl's
// (`--grpc_port`), parses the flags, and, when `--config=<file>` is given,
// loads the file: each top-level scalar key that names a flag (`grpc-port:
// 8001`) sets that flag unless the command line already set it. Structured
// sections (API keys, per-model batcher settings, worker lists) stay in the
// returned ConfigFile for the service to read.
#ifndef HEARTH_COMMON_CONFIG_CONFIG_H_
#define HEARTH_COMMON_CONFIG_CONFIG_H_

#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "yaml-cpp/yaml.h"

namespace hearth {

// A parsed configuration file. YAML is a superset of JSON, so both load.
class ConfigFile {
 public:
  ConfigFile() = default;
  // Errors name the file and the line/column of a syntax error.
  static absl::StatusOr<ConfigFile> Load(const std::string& path);
  static absl::StatusOr<ConfigFile> Parse(const std::string& text,
                                          const std::string& source_name);

  const YAML::Node& root() const { return root_; }
  const std::string& source_name() const { return source_name_; }
  bool empty() const { return !root_ || root_.IsNull(); }

  // Sets every flag named by a top-level scalar key (dashes or underscores)
  // that is not in `explicit_flags`. Unknown keys that are scalars are errors
  // (a typo in a config file must not be silently ignored); mappings and
  // sequences are left to the service.
  absl::Status ApplyToFlags(const std::set<std::string>& explicit_flags) const;

 private:
  YAML::Node root_;
  std::string source_name_;
};

// Names (underscored) of the flags given on the command line.
std::set<std::string> ExplicitFlagNames(const std::vector<std::string>& args);

// Returns argv with flag names rewritten from `--foo-bar` to `--foo_bar`
// (values untouched; everything after a bare `--` untouched).
std::vector<std::string> NormalizeFlagSpellings(int argc, char** argv);

// Parses flags and the --config file as described above; sets the log level
// from
// --log_level. Exits with a message naming the bad flag or key on error.
// Returns the positional arguments (argv[0] first).
std::vector<std::string> InitServiceFlags(int argc, char** argv,
                                          const std::string& usage,
                                          ConfigFile* config_out);

}  // namespace hearth

#endif  // HEARTH_COMMON_CONFIG_CONFIG_H_
