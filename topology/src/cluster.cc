#include "locmoe/topology/cluster.h"

#include <unistd.h>

#include <array>
#include <cstring>
#include <map>

#include "locmoe/core/check.h"
#include "locmoe/core/params.h"

namespace locmoe {
namespace {

// Fixed-size wire form of a descriptor, so one allgather of equal sizes carries them all.
constexpr size_t kField = 256;
struct WireDescriptor {
  std::array<char, kField> host_id, gpu_bus_id, nic;
};

Status pack_field(std::array<char, kField>& dst, const std::string& src, const char* what) {
  LOCMOE_CHECK_ARG(src.size() < kField, "{} '{}' is {} bytes long; at most {} allowed", what, src,
                   src.size(), kField - 1);
  dst.fill('\0');
  std::memcpy(dst.data(), src.data(), src.size());
  return ok_status();
}

std::string unpack_field(const std::array<char, kField>& src) {
  return std::string(src.data(), strnlen(src.data(), kField));
}

}  // namespace

bool ClusterMap::uniform() const {
  for (const auto& n : nodes)
    if (n.size() != nodes.front().size()) return false;
  return true;
}

Result<std::string> local_host_id() {
  LOCMOE_ASSIGN_OR_RETURN(std::string id, params::get_string(params::Id::hostid));
  if (!id.empty()) return id;
  char buf[256] = {0};
  LOCMOE_CHECK(gethostname(buf, sizeof(buf) - 1) == 0, Code::kSystemError, "gethostname failed: {}",
               std::strerror(errno));
  return std::string(buf);
}

Result<ClusterMap> cluster_map_from_descriptors(std::span<const RankDescriptor> descriptors,
                                                int my_rank) {
  LOCMOE_CHECK_ARG(!descriptors.empty(), "a cluster map needs at least one rank");
  LOCMOE_CHECK_RANGE(my_rank >= 0 && static_cast<size_t>(my_rank) < descriptors.size(),
                     "rank {} out of range [0, {})", my_rank, descriptors.size());
  ClusterMap map;
  map.my_rank = my_rank;
  std::map<std::string, int> node_of_host;
  for (size_t r = 0; r < descriptors.size(); ++r) {
    const RankDescriptor& d = descriptors[r];
    LOCMOE_CHECK_ARG(!d.host_id.empty(), "rank {} has an empty host id", r);
    auto [it, inserted] = node_of_host.emplace(d.host_id, map.num_nodes());
    if (inserted) map.nodes.emplace_back();
    RankInfo info;
    info.rank = static_cast<int>(r);
    info.node = it->second;
    info.local_rank = static_cast<int>(map.nodes[info.node].size());
    info.desc = d;
    map.nodes[info.node].push_back(info.rank);
    map.ranks.push_back(std::move(info));
  }
  return map;
}

Result<ClusterMap> exchange_cluster_map(Bootstrap& bootstrap, const RankDescriptor& mine) {
  WireDescriptor wire;
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.host_id, mine.host_id, "host id"));
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.gpu_bus_id, mine.gpu_bus_id, "GPU bus id"));
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.nic, mine.nic, "NIC"));
  std::vector<WireDescriptor> all(static_cast<size_t>(bootstrap.size()));
  LOCMOE_RETURN_IF_ERROR(bootstrap.allgather(&wire, all.data(), sizeof(WireDescriptor))
                             .with_context("exchanging cluster descriptors"));
  std::vector<RankDescriptor> descriptors;
  descriptors.reserve(all.size());
  for (const WireDescriptor& w : all)
    descriptors.push_back({unpack_field(w.host_id), unpack_field(w.gpu_bus_id), unpack_field(w.nic)});
  return cluster_map_from_descriptors(descriptors, bootstrap.rank());
}

Result<ClusterMap> uniform_cluster_map(int nodes, int ranks_per_node, int my_rank) {
  LOCMOE_CHECK_ARG(nodes > 0, "node count {} must be positive", nodes);
  LOCMOE_CHECK_ARG(ranks_per_node > 0, "ranks per node {} must be positive", ranks_per_node);
  std::vector<RankDescriptor> descriptors(static_cast<size_t>(nodes) * ranks_per_node);
  for (size_t r = 0; r < descriptors.size(); ++r)
    descriptors[r].host_id = fmt::format("node{}", r / ranks_per_node);
  return cluster_map_from_descriptors(descriptors, my_rank);
}

}  // namespace locmoe
