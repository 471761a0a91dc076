// A multi-rank workload that exists from the start of the sanitizer tier: the MPI bootstrap's
// collectives (comm/bootstrap.h) checked against the same MPI collectives called directly (the
// oracle). Under ASan/UBSan/LSan it also proves that Open MPI's start-up and shutdown, with the
// suppressions in tests/sanitizers/, report nothing of ours.
#include <mpi.h>

#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/comm/bootstrap.h"

namespace locmoe {
namespace {

TEST(MpiBootstrap, CollectivesMatchMpiOracle) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  auto made = make_mpi_bootstrap(MPI_COMM_WORLD);
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  Bootstrap& b = **made;
  EXPECT_EQ(b.rank(), rank);
  EXPECT_EQ(b.size(), size);

  // allgather of a rank-dependent, odd-sized record.
  std::vector<uint8_t> mine(13);
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = static_cast<uint8_t>(rank * 31 + i);
  std::vector<uint8_t> got(mine.size() * size), want(mine.size() * size);
  ASSERT_TRUE(b.allgather(mine.data(), got.data(), mine.size()).ok());
  MPI_Allgather(mine.data(), 13, MPI_BYTE, want.data(), 13, MPI_BYTE, MPI_COMM_WORLD);
  EXPECT_EQ(got, want);

  // in-place sum of int64 histograms.
  std::vector<int64_t> hist(7);
  for (size_t e = 0; e < hist.size(); ++e) hist[e] = (rank + 1) * static_cast<int64_t>(e);
  std::vector<int64_t> oracle(hist.size());
  MPI_Allreduce(hist.data(), oracle.data(), 7, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  ASSERT_TRUE(b.allreduce(hist.data(), hist.data(), hist.size(), DataType::kInt64, ReduceOp::kSum).ok());
  EXPECT_EQ(hist, oracle);

  // broadcast from the last rank.
  double value = rank == size - 1 ? 2.75 : -1.0;
  ASSERT_TRUE(b.broadcast(&value, sizeof(value), size - 1).ok());
  EXPECT_EQ(value, 2.75);
  EXPECT_TRUE(b.barrier().ok());

  // sizes that differ across ranks are an error on every rank, naming the value.
  Status st = check_same_on_all_ranks(b, rank == 0 ? 64 : 65, "tokens");
  if (size > 1) {
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("tokens"), std::string::npos) << st.message();
  }
}

}  // namespace
}  // namespace locmoe
