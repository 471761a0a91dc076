// Cluster map data: which ranks share a node, each rank's local rank, lane, GPU, rail NIC and CPUs.
//
// Plain structs only (header-only target locmoe_contracts): the transports and the communicator
// (comm/) read a map, the topology layer builds one (locmoe/topology/cluster.h: exchange,
// descriptors, findings). Nodes are numbered in order of their lowest rank; local ranks in rank
// order inside a node. Uneven nodes are allowed (ClusterMap::uniform()).
#pragma once

#include <string>
#include <utility>
#include <vector>

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
  bool uniform() const {
    for (const auto& n : nodes)
      if (n.size() != nodes.front().size()) return false;
    return true;
  }
};

}  // namespace locmoe
