// gtest main for multi-rank tests: MPI_Init, run, then agree on the result so that a failure on
// any rank fails every rank (mpirun then exits non-zero). Only rank 0 prints gtest's progress
// unless LOCMOE_TEST_ALL_RANKS_PRINT=1; failures are printed by whichever rank sees them.
#include <mpi.h>

#include <cstdlib>

#include <gtest/gtest.h>

#include "locmoe/core/log.h"

namespace {
class QuietListener : public testing::EmptyTestEventListener {
 public:
  explicit QuietListener(testing::TestEventListener* inner) : inner_(inner) {}
  ~QuietListener() override { delete inner_; }
  void OnTestPartResult(const testing::TestPartResult& r) override { inner_->OnTestPartResult(r); }

 private:
  testing::TestEventListener* inner_;
};
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  locmoe::set_log_rank(rank);
  testing::InitGoogleTest(&argc, argv);
  const char* all = std::getenv("LOCMOE_TEST_ALL_RANKS_PRINT");
  if (rank != 0 && !(all && all[0] == '1')) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    auto* def = listeners.Release(listeners.default_result_printer());
    listeners.Append(new QuietListener(def));
  }
  int local = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&local, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
