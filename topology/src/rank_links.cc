#include "locmoe/topology/rank_links.h"

#include "locmoe/core/check.h"

namespace locmoe::topo {

Result<RankLinks> rank_links(const ClusterMap& map, const Topology& t) {
  const int n = map.size(), me = map.my_rank;
  RankLinks out;
  out.intra_path.assign(n, Path{PathClass::kSYS, 0});
  out.same_node.assign(n, 0);
  out.same_rail.assign(n, 0);
  const int my_gpu = map.ranks[me].desc.gpu;
  for (int r = 0; r < n; ++r) {
    const RankDescriptor& d = map.ranks[r].desc;
    if (map.node_of(r) != map.my_node()) {
      out.same_rail[r] = map.lane_of(r) == map.lane_of(me);
      continue;
    }
    out.same_node[r] = 1;
    LOCMOE_CHECK_ARG(d.gpu < t.num_gpus(), "rank {} drives GPU {}, but {} has {} GPUs", r, d.gpu, t.source(),
                     t.num_gpus());
    if (r == me || (my_gpu >= 0 && d.gpu == my_gpu))
      out.intra_path[r] = Path{PathClass::kX, 0};
    else if (my_gpu >= 0 && d.gpu >= 0)
      out.intra_path[r] = t.gpu_path(my_gpu, d.gpu);
  }
  return out;
}

}  // namespace locmoe::topo
