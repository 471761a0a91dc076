// Placement (placement.h) on real fixtures, single process: the rule's steps (local rank,
// CUDA_VISIBLE_DEVICES, the CUDA device, overrides from the API and the environment, per-local-rank
// lists), bad overrides refused with the value named, rail lanes and findings of a cluster map,
// and LOCMOE_BIND's binding of threads that already run. Expected GPUs/NICs are read by hand from
// the fixture files (the comment at each says where); the 8-rank check against an independent
// parse of the files is check_cluster_places.py.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <thread>

#include "locmoe/core/params.h"
#include "locmoe/topology/placement.h"
#include "locmoe/topology/rank_links.h"

namespace locmoe::topo {
namespace {

const std::string kDir = std::string(LOCMOE_TEST_DATA) + "/topologies/";

class Placement : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : {"LOCMOE_GPU", "LOCMOE_NIC", "LOCMOE_CPUS", "LOCMOE_BIND", "CUDA_VISIBLE_DEVICES"}) unsetenv(v);
    params::reset();
    auto t = load_file(kDir + "azure-ndv5.nccl.xml");
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    ndv5_ = std::make_unique<Topology>(std::move(*t));
  }
  void TearDown() override {
    for (const char* v : {"LOCMOE_GPU", "LOCMOE_NIC", "LOCMOE_CPUS", "LOCMOE_BIND", "CUDA_VISIBLE_DEVICES"}) unsetenv(v);
    params::reset();
  }
  std::unique_ptr<Topology> ndv5_;
};

// azure-ndv5.nccl.xml: GPUs 0001,0002,0003,0008 (NUMA 0, affinity ffffffff,ffff0000,00000000 =
// CPUs 48-95) and 0009,000a,000b,000c (NUMA 1, CPUs 0-47), each under a switch with NIC
// 0101..0108 in the same order.
TEST_F(Placement, LocalRankRuleTakesGpusInBusOrderAndTheirRails) {
  auto p = place_rank(*ndv5_, 3, 8);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->gpu_bus_id, "0008:00:00.0");
  EXPECT_EQ(p->nic_label, "0104:00:00.0");
  EXPECT_EQ(cpu_list_string(p->cpus), "48-95");
  EXPECT_EQ(p->numa, 0);
  p = place_rank(*ndv5_, 4, 8);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->gpu_bus_id, "0009:00:00.0");
  EXPECT_EQ(p->nic_label, "0105:00:00.0");
  EXPECT_EQ(cpu_list_string(p->cpus), "0-47");
  EXPECT_EQ(p->numa, 1);
}

TEST_F(Placement, CudaVisibleDevicesAndTheCudaDevice) {
  setenv("CUDA_VISIBLE_DEVICES", "6,7", 1);
  auto p = place_rank(*ndv5_, 1, 2);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->gpu, 7);  // visible device 1 = ordinal 7 = the 8th GPU in bus order
  EXPECT_EQ(p->gpu_bus_id, "000c:00:00.0");
  setenv("CUDA_VISIBLE_DEVICES", "GPU-0b1c2d3e", 1);  // a UUID: the local-rank rule
  p = place_rank(*ndv5_, 1, 2);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->gpu, 1);
  setenv("CUDA_VISIBLE_DEVICES", "9", 1);
  p = place_rank(*ndv5_, 0, 1);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("CUDA_VISIBLE_DEVICES='9'"), std::string::npos) << p.status().to_string();
  unsetenv("CUDA_VISIBLE_DEVICES");
  PlaceOverride o;
  o.cuda_bus_id = "0000:0a:00.0";  // bus 0a: not in the file; normalized "000a:00:00.0" is
  p = place_rank(*ndv5_, 2, 4, o);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->gpu, 2) << "a CUDA device the model lacks defers to the rule";
  o.cuda_bus_id = "000a:00:00.0";
  p = place_rank(*ndv5_, 2, 4, o);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->gpu_bus_id, "000a:00:00.0");
  EXPECT_EQ(p->nic_label, "0106:00:00.0");
}

TEST_F(Placement, OverridesFromTheApiAndTheEnvironment) {
  setenv("LOCMOE_GPU", "7,6,5,4", 1);
  params::reset();
  auto p = place_rank(*ndv5_, 1, 4);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->gpu, 6);
  EXPECT_EQ(p->nic_label, "0107:00:00.0");  // the rail follows the GPU
  PlaceOverride o;
  o.gpu = "0001:00:00.0";  // API beats the environment
  o.nic = "0108:00:00.0";
  o.cpus = "1-2;3-4";
  p = place_rank(*ndv5_, 1, 2, o);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->gpu, 0);
  EXPECT_EQ(p->nic_label, "0108:00:00.0");
  EXPECT_EQ(cpu_list_string(p->cpus), "3-4");
  EXPECT_EQ(p->numa, 1);  // CPUs 3-4 lie in NUMA 1 (0-47)
  o.cpus = "40-50";       // spans both domains
  p = place_rank(*ndv5_, 0, 2, o);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->numa, -1);
}

TEST_F(Placement, BadOverridesAreRefusedNamingTheValue) {
  struct Case {
    PlaceOverride o;
    int local, size;
    const char* needle;
  };
  const Case cases[] = {
      {{"8", "", "", ""}, 0, 1, "'8'"},
      {{"0000:99:00.0", "", "", ""}, 0, 1, "'0000:99:00.0' is not a GPU"},
      {{"banana", "", "", ""}, 0, 1, "'banana' is not a GPU"},
      {{"0,1", "", "", ""}, 0, 4, "lists 2 entries"},
      {{"0,,2", "", "", ""}, 1, 3, "entry 1 (local rank 1) is empty"},
      {{"", "8", "", ""}, 0, 1, "NIC 8 is not a NIC"},
      {{"", "mlx5_0", "", ""}, 0, 1, "'mlx5_0' is not a NIC"},
      {{"", "", "0-95,96", ""}, 0, 1, "CPUs 96 are not CPUs"},
      {{"", "", "3-1", ""}, 0, 1, "'3-1' is not a CPU list"},
  };
  for (const Case& c : cases) {
    auto p = place_rank(*ndv5_, c.local, c.size, c.o);
    ASSERT_FALSE(p.ok()) << c.needle;
    EXPECT_EQ(p.status().code(), Code::kInvalidArgument);
    EXPECT_NE(p.status().message().find(c.needle), std::string::npos) << p.status().to_string();
  }
  setenv("LOCMOE_NIC", "nope", 1);
  params::reset();
  auto p = place_rank(*ndv5_, 0, 1);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("LOCMOE_NIC='nope'"), std::string::npos) << p.status().to_string();
}

TEST(PlacementMap, LanesPairRanksByNicAndFindingsFlagSharing) {
  // Node a: local ranks drive NICs 2, 0, 1 (out of order); node b: NICs 0, 1, and one rank without.
  std::vector<RankDescriptor> d;
  auto add = [&](const char* host, int gpu, int nic, const char* digest) {
    RankDescriptor r{host, gpu < 0 ? "" : fmt::format("0000:{:02x}:00.0", gpu), nic < 0 ? "" : fmt::format("nic{}", nic)};
    r.gpu = gpu;
    r.nic_index = nic;
    r.topo_digest = digest;
    d.push_back(r);
  };
  add("a", 2, 2, "x");
  add("a", 0, 0, "x");
  add("a", 1, 1, "x");
  add("b", 0, 0, "y");
  add("b", -1, -1, "y");
  add("b", 0, 0, "y");  // shares GPU 0 and nic0 with rank 3
  auto map = cluster_map_from_descriptors(d, 0);
  ASSERT_TRUE(map.ok());
  EXPECT_EQ(map->lanes[0], (std::vector<int>{1, 2, 0}));
  EXPECT_EQ(map->lanes[1], (std::vector<int>{3, 5, 4}));
  EXPECT_EQ(map->lane_of(0), 2);
  EXPECT_EQ(map->rank_on_lane(1, 1), 5);
  ClusterFindings f = cluster_findings(*map);
  EXPECT_EQ(f.nodes_differing, (std::vector<int>{1}));
  EXPECT_EQ(f.shared_gpus, (std::vector<std::vector<int>>{{3, 5}}));
  EXPECT_EQ(f.shared_nics, (std::vector<std::vector<int>>{{3, 5}}));
  // Without places (host ids alone) lanes are local ranks and nothing is flagged.
  auto plain = uniform_cluster_map(2, 3);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->lanes[1], (std::vector<int>{3, 4, 5}));
  EXPECT_TRUE(cluster_findings(*plain).clean());
}

TEST_F(Placement, DigestIgnoresTheSourceAndSeesTheModel) {
  auto again = load_file(kDir + "azure-ndv5.nccl.xml");
  auto ndv4 = load_file(kDir + "azure-ndv4.nccl.xml");
  ASSERT_TRUE(again.ok() && ndv4.ok());
  TopologyParts parts = again->parts();
  parts.source = "somewhere else";
  auto renamed = Topology::create(parts);
  ASSERT_TRUE(renamed.ok());
  EXPECT_EQ(topology_digest(*ndv5_), topology_digest(*renamed));
  EXPECT_NE(topology_digest(*ndv5_), topology_digest(*ndv4));
}

// Two ND v5 nodes, node 0 placed 3,1,0,2. In the file GPUs 0001/0002/0003/0008 hang under
// different PCIe switches of one <cpu> (NODE between them) and 0009.. under the other (SYS);
// there are no <nvlink> elements.
TEST_F(Placement, RankLinksReportTheModelForTheRouter) {
  std::vector<RankDescriptor> d;
  const int perm[4] = {3, 1, 0, 2};
  for (int r = 0; r < 8; ++r) {
    PlaceOverride o;
    o.gpu = std::to_string(r < 4 ? perm[r] : (r == 7 ? 4 : r - 4));  // rank 7 on GPU 4 (NUMA 1)
    auto p = place_rank(*ndv5_, r % 4, 4, o);
    ASSERT_TRUE(p.ok()) << p.status().to_string();
    d.push_back(descriptor_of(r < 4 ? "a" : "b", *ndv5_, *p));
  }
  auto map = cluster_map_from_descriptors(d, 5);  // rank 5: node b, GPU 1, NIC 1, lane 1
  ASSERT_TRUE(map.ok());
  auto links = rank_links(*map, *ndv5_);
  ASSERT_TRUE(links.ok()) << links.status().to_string();
  EXPECT_EQ(links->same_node, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(links->same_rail, (std::vector<uint8_t>{0, 1, 0, 0, 0, 0, 0, 0}));  // rank 1 drives GPU 1 too
  EXPECT_EQ(links->intra_path[5].cls, PathClass::kX);
  EXPECT_EQ(links->intra_path[4].cls, PathClass::kNODE);
  EXPECT_EQ(links->intra_path[6].cls, PathClass::kNODE);
  EXPECT_EQ(links->intra_path[7].cls, PathClass::kSYS);
  EXPECT_EQ(links->intra_path[0].cls, PathClass::kSYS);  // other node: not an intra path
}

std::vector<int> affinity_of(pid_t tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(tid, sizeof set, &set), 0);
  std::vector<int> out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

TEST_F(Placement, BindPinsThreadsAlreadyRunning) {
  const std::vector<int> before = affinity_of(0);
  ASSERT_FALSE(before.empty());
  std::atomic<pid_t> tid{0};
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    tid = static_cast<pid_t>(syscall(SYS_gettid));
    while (!stop) std::this_thread::yield();
  });
  while (tid == 0) std::this_thread::yield();
  RankPlace place;
  place.cpus = {before.back()};
  ASSERT_TRUE(bind_threads(*ndv5_, place, "off").ok());
  EXPECT_EQ(affinity_of(tid), before) << "off binds nothing";
  Status st = bind_threads(*ndv5_, place, "cpus");
  EXPECT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(affinity_of(0), place.cpus);
  EXPECT_EQ(affinity_of(tid), place.cpus) << "a thread started before binding is bound too";
  // CPUs this process does not have (a fixture's 48-95 on a small machine) are refused, named.
  RankPlace far;
  far.cpus = {CPU_SETSIZE - 1};
  st = bind_threads(*ndv5_, far, "cpus");
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find(std::to_string(CPU_SETSIZE - 1)), std::string::npos) << st.to_string();
  RankPlace none;
  st = bind_threads(*ndv5_, none, "numa");
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.to_string();
  stop = true;
  worker.join();
  // Restore this process's CPUs for the tests after us.
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : before) CPU_SET(c, &set);
  ASSERT_EQ(sched_setaffinity(0, sizeof set, &set), 0);
}

}  // namespace
}  // namespace locmoe::topo
