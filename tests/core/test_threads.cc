// The default host thread count (core/threads.h): a rank's share of the node's cores, never every
// core in every rank. Expected values are worked out from the rule's words, case by case.
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include <gtest/gtest.h>

#include "locmoe/core/params.h"
#include "locmoe/core/threads.h"

namespace locmoe {
namespace {

constexpr const char* kLauncherVars[] = {"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                                         "SLURM_NTASKS_PER_NODE", "LOCMOE_NUM_THREADS"};

class Threads : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kLauncherVars) unsetenv(v);
    params::reset();
  }
  void TearDown() override { SetUp(); }
};

TEST_F(Threads, ShareOfCoresDividesAmongTheRanksSharingTheCpus) {
  // Not bound: every rank sees all 64 CPUs; 8 ranks -> 8 each, 4 -> 16, 64 -> 1, 100 -> 1.
  EXPECT_EQ(share_of_cores(64, 64, 8), 8);
  EXPECT_EQ(share_of_cores(64, 64, 4), 16);
  EXPECT_EQ(share_of_cores(64, 64, 64), 1);
  EXPECT_EQ(share_of_cores(64, 64, 100), 1);
  EXPECT_EQ(share_of_cores(2, 2, 8), 1);   // this CI machine: 8 ranks on 2 cores
  EXPECT_EQ(share_of_cores(24, 24, 5), 4);  // rounds down
  // Alone (or launcher unknown): every CPU.
  EXPECT_EQ(share_of_cores(64, 64, 1), 64);
  EXPECT_EQ(share_of_cores(64, 64, 0), 64);
  // Bound to one core each: 1. Bound to 4 cores of 32 with 8 ranks: 4 (its own cores).
  EXPECT_EQ(share_of_cores(1, 64, 8), 1);
  EXPECT_EQ(share_of_cores(4, 32, 8), 4);
  // Bound to a socket (32 of 64 CPUs), 8 ranks: 4 ranks per socket, 8 threads each.
  EXPECT_EQ(share_of_cores(32, 64, 8), 8);
  // Unknown machine size: the mask is taken as the machine.
  EXPECT_EQ(share_of_cores(16, 0, 4), 4);
  EXPECT_EQ(share_of_cores(0, 0, 0), 1);
}

TEST_F(Threads, LocalRanksComeFromTheLauncher) {
  EXPECT_EQ(launcher_local_ranks(), 0);
  setenv("SLURM_NTASKS_PER_NODE", "3", 1);
  EXPECT_EQ(launcher_local_ranks(), 3);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "6", 1);
  EXPECT_EQ(launcher_local_ranks(), 6);
  setenv("LOCAL_WORLD_SIZE", "4", 1);  // torchrun's first
  EXPECT_EQ(launcher_local_ranks(), 4);
  setenv("LOCAL_WORLD_SIZE", "four", 1);  // no count: ignored, the next one says
  EXPECT_EQ(launcher_local_ranks(), 6);
}

TEST_F(Threads, DefaultIsThisRanksShareNotEveryCore) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int usable = CPU_COUNT(&set);
  EXPECT_EQ(host_threads(), std::min(usable, 256));  // alone: all of them
  // As many local ranks as this process has CPUs, and more: one thread each (when the process is
  // not bound to part of the machine, where the rule takes the mask as its share).
  if (usable != sysconf(_SC_NPROCESSORS_ONLN)) GTEST_SKIP() << "this process is bound to " << usable << " CPUs";
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", std::to_string(usable).c_str(), 1);
  EXPECT_EQ(host_threads(), 1);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", std::to_string(8 * usable).c_str(), 1);
  EXPECT_EQ(host_threads(), 1);
  setenv("LOCAL_WORLD_SIZE", "1", 1);  // torchrun's count comes first
  EXPECT_EQ(host_threads(), std::min(usable, 256));
}

TEST_F(Threads, ExplicitCountWinsFromTheApiThenTheEnvironment) {
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "1000", 1);
  EXPECT_EQ(host_threads(5), 5);
  setenv("LOCMOE_NUM_THREADS", "3", 1);
  params::reset();
  EXPECT_EQ(host_threads(), 3);
  EXPECT_EQ(host_threads(7), 7);
}

}  // namespace
}  // namespace locmoe
