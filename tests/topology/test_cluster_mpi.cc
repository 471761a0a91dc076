// 8 ranks (mpirun -np 8) emulating nodes: each rank sets LOCMOE_HOSTID from its own rank before
// the exchange, for an even 4+4 and an uneven 3+5 split. Every rank checks the whole map against
// the split it built (node, local rank, local size of every rank), so the expected values come
// from the test's own arithmetic, not from the code under test.
#include <mpi.h>

#include <string>

#include <gtest/gtest.h>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/params.h"
#include "locmoe/topology/cluster.h"

namespace locmoe {
namespace {

class ClusterMapMpi : public testing::TestWithParam<int> {
 protected:
  void TearDown() override { params::reset(); }
};

TEST_P(ClusterMapMpi, EmulatedNodes) {
  const int first_node_ranks = GetParam();  // ranks [0, first) on host "a", the rest on "b"
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  ASSERT_EQ(size, 8) << "run with mpirun -np 8";
  ASSERT_TRUE(params::set("LOCMOE_HOSTID", rank < first_node_ranks ? "host-a" : "host-b").ok());
  auto boot = make_mpi_bootstrap(MPI_COMM_WORLD);
  ASSERT_TRUE(boot.ok()) << boot.status().to_string();

  RankDescriptor mine;
  Result<std::string> host = local_host_id();
  ASSERT_TRUE(host.ok());
  mine.host_id = *host;
  mine.gpu_bus_id = fmt::format("0000:{:02x}:00.0", 0x10 + rank);  // made up, to check it travels
  mine.nic = fmt::format("mlx5_{}", rank);
  Result<ClusterMap> map = exchange_cluster_map(**boot, mine);
  ASSERT_TRUE(map.ok()) << map.status().to_string();

  EXPECT_EQ(map->my_rank, rank);
  ASSERT_EQ(map->size(), 8);
  ASSERT_EQ(map->num_nodes(), 2);
  EXPECT_EQ(map->host_of_node(0), "host-a");
  EXPECT_EQ(map->host_of_node(1), "host-b");
  EXPECT_EQ(map->uniform(), first_node_ranks == 4);
  for (int r = 0; r < 8; ++r) {
    const bool on_a = r < first_node_ranks;
    EXPECT_EQ(map->node_of(r), on_a ? 0 : 1) << "rank " << r;
    EXPECT_EQ(map->local_rank_of(r), on_a ? r : r - first_node_ranks) << "rank " << r;
    EXPECT_EQ(map->local_size(map->node_of(r)), on_a ? first_node_ranks : 8 - first_node_ranks);
    EXPECT_EQ(map->ranks[r].desc.gpu_bus_id, fmt::format("0000:{:02x}:00.0", 0x10 + r));
    EXPECT_EQ(map->ranks[r].desc.nic, fmt::format("mlx5_{}", r));
  }
  EXPECT_EQ(map->my_local_size(), rank < first_node_ranks ? first_node_ranks : 8 - first_node_ranks);
}

INSTANTIATE_TEST_SUITE_P(Splits, ClusterMapMpi, testing::Values(4, 3),
                         [](const testing::TestParamInfo<int>& p) { return p.param == 4 ? "Even4x4" : "Uneven3x5"; });

}  // namespace
}  // namespace locmoe
