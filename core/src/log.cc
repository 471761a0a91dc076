#include "locmoe/core/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>

#include "locmoe/core/params.h"

namespace locmoe {
namespace {

std::atomic<int> g_level{-1};  // -1: not read yet
std::atomic<int> g_rank{-1};

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kWarn: return "WARN";
    case LogLevel::kInfo: return "INFO";
    case LogLevel::kTrace: return "TRACE";
    default: return "NONE";
  }
}

LogLevel parse_level() {
  auto value = params::get_string(params::Id::debug);
  if (!value.ok()) {
    std::fprintf(stderr, "locmoe WARN %s; using WARN\n", value.status().message().c_str());
    return LogLevel::kWarn;
  }
  const std::string& v = *value;
  if (v == "NONE") return LogLevel::kNone;
  if (v == "INFO") return LogLevel::kInfo;
  if (v == "TRACE") return LogLevel::kTrace;
  return LogLevel::kWarn;
}

}  // namespace

LogLevel log_level() noexcept {
  int level = g_level.load(std::memory_order_relaxed);
  if (level < 0) {
    level = static_cast<int>(parse_level());
    g_level.store(level, std::memory_order_relaxed);
  }
  return static_cast<LogLevel>(level);
}

void set_log_level(LogLevel level) noexcept { g_level.store(static_cast<int>(level)); }
void set_log_rank(int rank) noexcept { g_rank.store(rank); }

void log_write(LogLevel level, const char* file, int line, std::string_view message) {
  static std::mutex mu;
  static const std::string host = [] {
    char buf[256] = {0};
    if (gethostname(buf, sizeof(buf) - 1) != 0) return std::string("?");
    return std::string(buf);
  }();
  std::string prefix = fmt::format("locmoe {}:{}", host, static_cast<long>(getpid()));
  if (int rank = g_rank.load(); rank >= 0) prefix += fmt::format(" [rank {}]", rank);
  std::string text = level >= LogLevel::kTrace
                         ? fmt::format("{} {} {}:{} {}\n", prefix, level_name(level), file, line, message)
                         : fmt::format("{} {} {}\n", prefix, level_name(level), message);
  std::lock_guard<std::mutex> lock(mu);
  std::fwrite(text.data(), 1, text.size(), stderr);
}

}  // namespace locmoe
