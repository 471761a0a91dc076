// What the model says about the link from this rank to every other rank: the hook that routers'
// link costs read (router/ turns these into costs; this header only reports the model).
//
// For a rank on this rank's node: the path class between the two ranks' GPUs in this node's
// topology (NV#, PIX, ..., SYS; kX when both drive the same GPU; kSYS when either has no GPU).
// For a rank on another node: whether it is on this rank's rail (same lane, ClusterMap::lane,
// i.e. the same rail NIC index: rail-optimized fabrics join those through the leaf switch alone,
// other rails through the spine).
#pragma once

#include <cstdint>
#include <vector>

#include "locmoe/core/status.h"
#include "locmoe/topology/cluster.h"
#include "locmoe/topology/topology.h"

namespace locmoe::topo {

struct RankLinks {
  std::vector<Path> intra_path;      // [ranks]: for ranks of this node, else kSYS (and self kX)
  std::vector<uint8_t> same_node;    // [ranks]: 1 for ranks of this node (self included)
  std::vector<uint8_t> same_rail;    // [ranks]: for ranks of other nodes, 1 when on this rank's lane
};

// The links of `map.my_rank`; `node_topology` is the topology of this rank's node (the one its
// place came from). Fails (kInvalidArgument) when a rank of this node names a GPU index outside
// `node_topology` (a map built from another node's model), naming the rank.
Result<RankLinks> rank_links(const ClusterMap& map, const Topology& node_topology);

}  // namespace locmoe::topo
