// Cluster map: which ranks share a node, each rank's local rank, GPU and rail NIC.
//
// Each rank contributes a RankDescriptor (host identity, GPU PCI bus id if any, nearest NIC) and
// the descriptors are exchanged through a Bootstrap (MPI allgather, TCP rendezvous...). Ranks with
// equal host identity form one node. The host identity is the hostname unless LOCMOE_HOSTID
// overrides it, so 8 ranks on one machine can emulate "2 nodes x 4 GPUs". Nodes are numbered in
// order of their lowest rank; local ranks in rank order inside a node. Uneven nodes are allowed
// (ClusterMap::uniform() says whether every node has the same number of ranks).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"

namespace locmoe {

struct RankDescriptor {
  std::string host_id;     // node identity (hostname or LOCMOE_HOSTID)
  std::string gpu_bus_id;  // "0000:07:00.0", empty when the rank has no GPU
  std::string nic;         // nearest (rail) NIC: PCI bus id when known, else name; may be empty
};

struct RankInfo {
  int rank = 0;
  int node = 0;        // index into ClusterMap::nodes
  int local_rank = 0;  // position inside its node
  RankDescriptor desc;
};

struct ClusterMap {
  int my_rank = 0;
  std::vector<RankInfo> ranks;          // indexed by rank
  std::vector<std::vector<int>> nodes;  // ranks of each node, ascending

  int size() const { return static_cast<int>(ranks.size()); }
  int num_nodes() const { return static_cast<int>(nodes.size()); }
  int node_of(int rank) const { return ranks[rank].node; }
  int local_rank_of(int rank) const { return ranks[rank].local_rank; }
  int local_size(int node) const { return static_cast<int>(nodes[node].size()); }
  int my_node() const { return node_of(my_rank); }
  int my_local_rank() const { return local_rank_of(my_rank); }
  int my_local_size() const { return local_size(my_node()); }
  const std::string& host_of_node(int node) const { return ranks[nodes[node][0]].desc.host_id; }
  // True when every node has the same number of ranks.
  bool uniform() const;
};

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
