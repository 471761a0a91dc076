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
#include "locmoe/core/host.h"  // local_host_id, used with the cluster map
#include "locmoe/core/status.h"
#include "locmoe/topology/cluster_map.h"

namespace locmoe {

// What a cluster map says is off: nodes whose topologies differ from node 0's (by digest; nodes
// whose ranks report no digest are not compared), and groups of ranks of one node that share a
// GPU or a NIC (each group ascending, groups in order of their first rank).
struct ClusterFindings {
  std::vector<int> nodes_differing;                 // nodes (> 0) whose topology differs from node 0's
  std::vector<std::vector<int>> shared_gpus, shared_nics;
  bool clean() const { return nodes_differing.empty() && shared_gpus.empty() && shared_nics.empty(); }
};
ClusterFindings cluster_findings(const ClusterMap& map);

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
