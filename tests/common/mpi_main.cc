// gtest main for multi-rank tests: MPI_Init, run, then agree on the result so that a failure on
// any rank fails every rank (mpirun then exits non-zero). Only rank 0 prints gtest's progress
// unless LOCMOE_TEST_ALL_RANKS_PRINT=1; failures are printed by whichever rank sees them.
//
// No wait here is without a deadline: a watchdog thread ends the process (exit code 124, which
// makes mpirun end the other ranks) when one test case runs longer than 2 x LOCMOE_TIMEOUT_S,
// naming the rank and the test, and the final agreement is a polled MPI_Iallreduce with the same
// bound. A hang (a blocking MPI call in a test that the others never join, a lost wakeup) then
// fails fast with the culprit's name instead of blocking ctest until its own timeout.
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "locmoe/core/log.h"
#include "locmoe/core/params.h"

namespace {
using Clock = std::chrono::steady_clock;

class QuietListener : public testing::EmptyTestEventListener {
 public:
  explicit QuietListener(testing::TestEventListener* inner) : inner_(inner) {}
  ~QuietListener() override { delete inner_; }
  void OnTestPartResult(const testing::TestPartResult& r) override { inner_->OnTestPartResult(r); }

 private:
  testing::TestEventListener* inner_;
};

// Ends the process when the current phase (a test case, the final agreement) outlives its limit.
class Watchdog : public testing::EmptyTestEventListener {
 public:
  Watchdog(int rank, double limit_s) : rank_(rank), limit_(std::chrono::duration<double>(limit_s)) {
    thread_ = std::thread([this] { watch(); });
  }
  ~Watchdog() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void arm(std::string what) {
    std::lock_guard<std::mutex> lock(mu_);
    what_ = std::move(what);
    until_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(limit_);
    cv_.notify_all();
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(mu_);
    what_.clear();
  }
  void OnTestStart(const testing::TestInfo& t) override {
    arm(std::string("test ") + t.test_suite_name() + "." + t.name());
  }
  void OnTestEnd(const testing::TestInfo&) override { disarm(); }
  double limit_s() const { return limit_.count(); }

 private:
  void watch() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      if (what_.empty()) {
        cv_.wait(lock);
        continue;
      }
      if (Clock::now() < until_) {
        cv_.wait_until(lock, until_);
        continue;
      }
      std::fprintf(stderr,
                   "rank %d: %s still running after %.1f s (2 x LOCMOE_TIMEOUT_S): a hang; ending this rank "
                   "(exit 124) so that mpirun ends the others\n",
                   rank_, what_.c_str(), limit_.count());
      std::fflush(stderr);
      std::fflush(stdout);
      std::_Exit(124);
    }
  }

  int rank_;
  std::chrono::duration<double> limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string what_;
  Clock::time_point until_{};
  bool stop_ = false;
  std::thread thread_;
};
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  locmoe::set_log_rank(rank);
  testing::InitGoogleTest(&argc, argv);
  auto& listeners = testing::UnitTest::GetInstance()->listeners();
  const char* all = std::getenv("LOCMOE_TEST_ALL_RANKS_PRINT");
  if (rank != 0 && !(all && all[0] == '1')) {
    auto* def = listeners.Release(listeners.default_result_printer());
    listeners.Append(new QuietListener(def));
  }
  auto timeout = locmoe::params::get_float(locmoe::params::Id::timeout_s);
  const double limit_s = 2 * (timeout.ok() && *timeout > 0 ? *timeout : 120.0);
  auto* watchdog = new Watchdog(rank, limit_s);
  listeners.Append(watchdog);  // owned by gtest from here on

  int local = RUN_ALL_TESTS();
  int any = 0;
  watchdog->arm("the final MPI_Iallreduce of the test results");
  MPI_Request req;
  MPI_Iallreduce(&local, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD, &req);
  for (int done = 0; !done;) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(100));  // leave the cores to peers
  }
  watchdog->disarm();
  MPI_Finalize();
  return any;
}
