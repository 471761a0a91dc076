// Levelled logging to stderr. The level comes from LOCMOE_DEBUG (NONE, WARN, INFO, TRACE;
// default WARN), read once. Lines look like
//   locmoe host:pid [rank 3] WARN message
// so the output of many ranks interleaved by mpirun stays attributable.
#pragma once

#include <string_view>

#include <fmt/format.h>

namespace locmoe {

enum class LogLevel : int { kNone = 0, kWarn = 1, kInfo = 2, kTrace = 3 };

// Current level (LOCMOE_DEBUG, parsed once; an invalid value falls back to WARN with a warning).
LogLevel log_level() noexcept;
// Overrides the level (tests, tools' -v flags).
void set_log_level(LogLevel level) noexcept;
// Rank shown in each line once known (-1: not shown).
void set_log_rank(int rank) noexcept;
void log_write(LogLevel level, const char* file, int line, std::string_view message);

}  // namespace locmoe

#define LOCMOE_LOG(level, ...)                                                              \
  do {                                                                                      \
    if (::locmoe::log_level() >= (level))                                                   \
      ::locmoe::log_write((level), __FILE__, __LINE__, ::fmt::format(__VA_ARGS__));         \
  } while (0)
#define LOCMOE_WARN(...) LOCMOE_LOG(::locmoe::LogLevel::kWarn, __VA_ARGS__)
#define LOCMOE_INFO(...) LOCMOE_LOG(::locmoe::LogLevel::kInfo, __VA_ARGS__)
#define LOCMOE_TRACE(...) LOCMOE_LOG(::locmoe::LogLevel::kTrace, __VA_ARGS__)
