// Cluster map: which ranks share a node, each rank's local rank, GPU, rail NIC and CPUs.
//
// Each rank contributes a RankDescriptor (host identity and its place on the node: GPU, rail NIC,
// CPUs, NUMA domain, the digest of its node's topology; see placement.h, which builds it) and
// the descriptors are exchanged through a Bootstrap (MPI allgather, TCP rendezvous...). Ranks with
// equal host identity form one node. The host identity is the hostname unless LOCMOE_HOSTID
// overrides it, so 8 ranks on one machine can emulate "2 nodes x 4 GPUs". Nodes are numbered in
// order of their lowest rank; local ranks in rank order inside a node. Uneven nodes are allowed
// (ClusterMap::uniform() says whether every node has the same number of ranks).
#pragma once

#include <span>
#include <string>
#include <utility>
#include <vector>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"

namespace locmoe {

struct RankDescriptor {
  RankDescriptor() = default;
  // The identity fields alone (every other field unknown): RankDescriptor{host, "", ""}.
  RankDescriptor(std::string host, std::string gpu_bus, std::string rail_nic)
      : host_id(std::move(host)), gpu_bus_id(std::move(gpu_bus)), nic(std::move(rail_nic)) {}
  std::string host_id;     // node identity (hostname or LOCMOE_HOSTID)
  std::string gpu_bus_id;  // "0000:07:00.0", empty when the rank has no GPU
  std::string nic;         // rail NIC: PCI bus id when known, else name; may be empty
  // Filled by the placement (placement.h); the defaults mean "unknown" and leave rails to
  // local ranks.
  int gpu = -1;            // index of the GPU in its node's topology (PCI bus-id order), -1 none
  int nic_index = -1;      // index of the rail NIC in its node's topology, -1 none
  std::string nic_name;    // OS name of the NIC ("mlx5_0"), "" unknown
  std::string nic_kind;    // "ib", "eth", "unknown" or ""
  std::string cpus;        // CPU list ("0-23"), "" unknown
  int numa = -1;           // NUMA domain os index, -1 unknown or several
  std::string topo_digest; // topology_digest() of the node's model, "" unknown
};

struct RankInfo {
  int rank = 0;
  int node = 0;        // index into ClusterMap::nodes
  int local_rank = 0;  // position inside its node
  // The rank's rail: its position in ClusterMap::lanes[node], the order of its node's ranks by
  // rail NIC (nic_index, ranks without one last), then GPU index, then local rank. Equal to the
  // local rank when no rank of the node has a NIC. The hierarchical exchange pairs rank of lane l
  // of node m with rank of lane l of node n, so ranks are paired by NIC, not by local index.
  int lane = 0;
  RankDescriptor desc;
};

struct ClusterMap {
  int my_rank = 0;
  std::vector<RankInfo> ranks;          // indexed by rank
  std::vector<std::vector<int>> nodes;  // ranks of each node, ascending
  std::vector<std::vector<int>> lanes;  // ranks of each node in rail order (see RankInfo::lane)

  int size() const { return static_cast<int>(ranks.size()); }
  int num_nodes() const { return static_cast<int>(nodes.size()); }
  int node_of(int rank) const { return ranks[rank].node; }
  int local_rank_of(int rank) const { return ranks[rank].local_rank; }
  int local_size(int node) const { return static_cast<int>(nodes[node].size()); }
  int my_node() const { return node_of(my_rank); }
  int my_local_rank() const { return local_rank_of(my_rank); }
  int my_local_size() const { return local_size(my_node()); }
  const std::string& host_of_node(int node) const { return ranks[nodes[node][0]].desc.host_id; }
  int lane_of(int rank) const { return ranks[rank].lane; }
  // The rank of `node` on lane `l` (lane_of(rank_on_lane(node, l)) == l).
  int rank_on_lane(int node, int l) const { return lanes[node][l]; }
  // True when every node has the same number of ranks.
  bool uniform() const;
};

// What a cluster map says is off: nodes whose topologies differ from node 0's (by digest; nodes
// whose ranks report no digest are not compared), and groups of ranks of one node that share a
// GPU or a NIC (each group ascending, groups in order of their first rank).
struct ClusterFindings {
  std::vector<int> nodes_differing;                 // nodes (> 0) whose topology differs from node 0's
  std::vector<std::vector<int>> shared_gpus, shared_nics;
  bool clean() const { return nodes_differing.empty() && shared_gpus.empty() && shared_nics.empty(); }
};
ClusterFindings cluster_findings(const ClusterMap& map);

// This process's host identity: LOCMOE_HOSTID when set, else the hostname.
Result<std::string> local_host_id();

// Builds the map from every rank's descriptor (indexed by rank). Fails on an empty host id or
// a my_rank outside [0, descriptors.size()).
Result<ClusterMap> cluster_map_from_descriptors(std::span<const RankDescriptor> descriptors,
                                                int my_rank);

// Exchanges `mine` through `bootstrap` (a collective) and builds the map. Each field is limited
// to 255 bytes; a longer one is an error naming it.
Result<ClusterMap> exchange_cluster_map(Bootstrap& bootstrap, const RankDescriptor& mine);

// `nodes` x `ranks_per_node` ranks placed in rank order (rank r on node r / ranks_per_node), with
// host ids "node0", "node1", ...: the emulated shape single-process tools and tests use.
Result<ClusterMap> uniform_cluster_map(int nodes, int ranks_per_node, int my_rank = 0);

}  // namespace locmoe
