// The parameter registry and the logger are process-wide and used from any thread (router loops,
// transport progress threads, the application's own threads). These tests hammer them from
// several threads at once; under ThreadSanitizer (docs/TESTING.md, TSan tier) any unsynchronised
// access is a report, and the assertions check what each thread observed.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/core/log.h"
#include "locmoe/core/params.h"

namespace locmoe {
namespace {

namespace p = params;

constexpr int kThreads = 4;
constexpr int kIters = 300;

TEST(CoreThreads, ConcurrentSetGetResetSeeOnlyValuesThatWereSet) {
  p::reset();
  const double def = std::strtod(p::info(p::Id::timeout_s).def, nullptr);
  // Writers set LOCMOE_TIMEOUT_S to one of these; readers must only ever see one of them or the
  // default (after a reset), never a torn or foreign value, and never an error.
  const std::set<double> legal = {def, 1.5, 2.5, 3.5, 4.5};
  std::atomic<int> bad_reads{0};
  std::atomic<int> failed_sets{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string mine = std::to_string(t + 1) + ".5";
      for (int i = 0; i < kIters; ++i) {
        if (!p::set("LOCMOE_TIMEOUT_S", mine).ok()) failed_sets++;
        auto v = p::get_float(p::Id::timeout_s);
        if (!v.ok() || !legal.count(*v)) bad_reads++;
        (void)p::source(p::Id::timeout_s);
        (void)p::raw_value(p::Id::a2a_algo);
        if (i % 50 == 0) p::reset();
        if (i % 97 == 0) (void)p::validate_all();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad_reads.load(), 0);
  EXPECT_EQ(failed_sets.load(), 0);
  p::reset();
}

// Every line written by concurrent threads arrives whole: capture stderr in a file, let threads
// log, and check each line parses back to one (thread, index) pair, each pair exactly once.
TEST(CoreThreads, ConcurrentLogLinesArriveWholeAndOnce) {
  char path[] = "/tmp/locmoe_log_threads_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::fflush(stderr);
  int saved = dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  ASSERT_GE(dup2(fd, STDERR_FILENO), 0);

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kIters; ++i) {
        // Level changes and the lazy first read of LOCMOE_DEBUG race with the writes on purpose.
        if (i % 64 == 0) set_log_level(LogLevel::kWarn);
        set_log_rank(t);
        if (log_level() >= LogLevel::kWarn)
          log_write(LogLevel::kWarn, __FILE__, __LINE__, fmt::format("tsan-line {} {} end", t, i));
      }
    });
  }
  for (auto& th : threads) th.join();
  std::fflush(stderr);
  ASSERT_GE(dup2(saved, STDERR_FILENO), 0);
  close(saved);
  close(fd);

  std::ifstream in(path);
  std::string line;
  std::map<std::pair<int, int>, int> seen;
  int foreign = 0;
  while (std::getline(in, line)) {
    size_t at = line.find("tsan-line ");
    int t = -1, i = -1;
    char end[4] = {0};
    if (line.rfind("locmoe ", 0) != 0 || at == std::string::npos ||
        std::sscanf(line.c_str() + at, "tsan-line %d %d %3s", &t, &i, end) != 3 || std::string(end) != "end") {
      foreign++;
      continue;
    }
    seen[{t, i}]++;
  }
  unlink(path);
  EXPECT_EQ(foreign, 0);
  ASSERT_EQ(seen.size(), static_cast<size_t>(kThreads * kIters));
  for (const auto& [key, count] : seen) EXPECT_EQ(count, 1) << key.first << " " << key.second;
}

}  // namespace
}  // namespace locmoe
