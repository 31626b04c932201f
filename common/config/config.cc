#include "common/config/config.h"

#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/log/logging.h"

ABSL_FLAG(std::string, config, "",
          "YAML or JSON config file; its top-level keys set flags that are not "
          "given on the command line");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace hearth {

absl::StatusOr<ConfigFile> ConfigFile::Parse(const std::string& text,
                                             const std::string& source_name) {
  ConfigFile file;
  file.source_name_ = source_name;
  try {
    file.root_ = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": line ", e.mark.line + 1, ", column ",
                     e.mark.column + 1, ": ", e.msg));
  }
  if (file.root_ && !file.root_.IsNull() && !file.root_.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": top level must be a mapping of keys"));
  }
  return file;
}

absl::StatusOr<ConfigFile> ConfigFile::Load(const std::string& path) {
  YAML::Node node;
  try {
    node = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return absl::NotFoundError(
        absl::StrCat("config file ", path, ": cannot be opened"));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": line ", e.mark.line + 1, ", column ",
                     e.mark.column + 1, ": ", e.msg));
  }
  ConfigFile file;
  file.source_name_ = path;
  file.root_ = node;
  if (node && !node.IsNull() && !node.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": top level must be a mapping of keys"));
  }
  return file;
}

absl::Status ConfigFile::ApplyToFlags(
    const std::set<std::string>& explicit_flags) const {
  if (empty()) return absl::OkStatus();
  for (const auto& entry : root_) {
    const std::string key = entry.first.as<std::string>();
    if (!entry.second.IsScalar()) continue;  // structured: the service reads it
    const std::string name = absl::StrReplaceAll(key, {{"-", "_"}});
    if (explicit_flags.count(name) > 0) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr || name == "config") {
      return absl::InvalidArgumentError(absl::StrCat(
          source_name_, ": key \"", key, "\" is not a flag of this service"));
    }
    std::string error;
    if (!flag->ParseFrom(entry.second.Scalar(), &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_name_, ": key \"", key, "\": ", error));
    }
  }
  return absl::OkStatus();
}

std::set<std::string> ExplicitFlagNames(const std::vector<std::string>& args) {
  std::set<std::string> names;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;
    size_t start = arg[1] == '-' ? 2 : 1;
    std::string name = arg.substr(start, arg.find('=') - start);
    names.insert(absl::StrReplaceAll(name, {{"-", "_"}}));
    // absl also accepts --noflag for booleans.
    if (name.rfind("no", 0) == 0) names.insert(name.substr(2));
  }
  return names;
}

std::vector<std::string> NormalizeFlagSpellings(int argc, char** argv) {
  std::vector<std::string> out;
  bool positional_only = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && !positional_only && arg == "--") positional_only = true;
    if (i > 0 && !positional_only && arg.size() > 2 && arg[0] == '-') {
      size_t start = arg[1] == '-' ? 2 : 1;
      size_t eq = arg.find('=');
      size_t end = eq == std::string::npos ? arg.size() : eq;
      for (size_t c = start; c < end; ++c) {
        if (arg[c] == '-') arg[c] = '_';
      }
    }
    out.push_back(std::move(arg));
  }
  return out;
}

std::vector<std::string> InitServiceFlags(int argc, char** argv,
                                          const std::string& usage,
                                          ConfigFile* config_out) {
  absl::SetProgramUsageMessage(usage);
  std::vector<std::string> normalized = NormalizeFlagSpellings(argc, argv);
  std::vector<char*> cargv;
  for (auto& arg : normalized) cargv.push_back(arg.data());
  std::vector<char*> rest =
      absl::ParseCommandLine(static_cast<int>(cargv.size()), cargv.data());
  std::vector<std::string> positional(rest.begin(), rest.end());

  ConfigFile config;
  const std::string path = absl::GetFlag(FLAGS_config);
  if (!path.empty()) {
    absl::StatusOr<ConfigFile> loaded = ConfigFile::Load(path);
    absl::Status status = loaded.status();
    if (status.ok()) {
      config = *std::move(loaded);
      status = config.ApplyToFlags(ExplicitFlagNames(normalized));
    }
    if (!status.ok()) {
      std::cerr << argv[0] << ": " << status.message() << "\n";
      std::exit(2);
    }
  }
  LogLevel level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << argv[0] << ": --log_level: expected debug, info, warning or "
              << "error, got \"" << absl::GetFlag(FLAGS_log_level) << "\"\n";
    std::exit(2);
  }
  SetMinLogLevel(level);
  if (config_out != nullptr) *config_out = std::move(config);
  return positional;
}

}  // namespace hearth
