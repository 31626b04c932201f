// Minimal leveled logging to stderr, safe to call from any thread.
//
//   HLOG(INFO) << "listening on " << address;
//   HLOG(ERROR) << "load failed: " << status;
//
// One line per statement, prefixed with level, UTC time and source location,
// written with a single write(2) so lines from different threads never
// interleave. The threshold comes from --log_level (or SetMinLogLevel).
// Abseil's own logging library is newer than the one Debian 12 ships, hence
// this small stand-in.
#ifndef HEARTH_COMMON_LOG_LOGGING_H_
#define HEARTH_COMMON_LOG_LOGGING_H_

#include <sstream>
#include <string_view>

namespace hearth {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Parses "debug", "info", "warning", "error"; returns false on anything else.
bool ParseLogLevel(std::string_view text, LogLevel* level);

namespace log_internal {

// Collects one log line and emits it when destroyed.
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

// Lets the macro below discard a stream expression when the level is disabled.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace log_internal
}  // namespace hearth

#define HEARTH_LOG_LEVEL_DEBUG ::hearth::LogLevel::kDebug
#define HEARTH_LOG_LEVEL_INFO ::hearth::LogLevel::kInfo
#define HEARTH_LOG_LEVEL_WARNING ::hearth::LogLevel::kWarning
#define HEARTH_LOG_LEVEL_ERROR ::hearth::LogLevel::kError

#define HLOG(severity)                                                      \
  (HEARTH_LOG_LEVEL_##severity < ::hearth::MinLogLevel())                   \
      ? (void)0                                                             \
      : ::hearth::log_internal::Voidify() &                                 \
            ::hearth::log_internal::LogMessage(HEARTH_LOG_LEVEL_##severity, \
                                               __FILE__, __LINE__)          \
                .stream()

#endif  // HEARTH_COMMON_LOG_LOGGING_H_
