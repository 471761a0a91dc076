#include "locmoe/topology/cluster.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <tuple>

#include "locmoe/core/check.h"

namespace locmoe {
namespace {

// Fixed-size wire form of a descriptor, so one allgather of equal sizes carries them all.
constexpr size_t kField = 256;
constexpr size_t kCpuField = 1024;  // CPU lists of big hosts with scattered CPUs run long
struct WireDescriptor {
  std::array<char, kField> host_id, gpu_bus_id, nic, nic_name, nic_kind, topo_digest;
  std::array<char, kCpuField> cpus;
  int32_t gpu, nic_index, numa;
};

template <size_t N>
Status pack_field(std::array<char, N>& dst, const std::string& src, const char* what) {
  LOCMOE_CHECK_ARG(src.size() < N, "{} '{}' is {} bytes long; at most {} allowed", what, src,
                   src.size(), N - 1);
  dst.fill('\0');
  std::memcpy(dst.data(), src.data(), src.size());
  return ok_status();
}

template <size_t N>
std::string unpack_field(const std::array<char, N>& src) {
  return std::string(src.data(), strnlen(src.data(), N));
}

}  // namespace

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
  // Rail order inside each node: by NIC (ranks without one last), then GPU, then local rank.
  for (const std::vector<int>& node : map.nodes) {
    std::vector<int> order = node;
    auto key = [&](int r) {
      const RankDescriptor& d = map.ranks[r].desc;
      return std::make_tuple(d.nic_index < 0, d.nic_index, d.gpu, map.ranks[r].local_rank);
    };
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) < key(b); });
    for (size_t l = 0; l < order.size(); ++l) map.ranks[order[l]].lane = static_cast<int>(l);
    map.lanes.push_back(std::move(order));
  }
  return map;
}

ClusterFindings cluster_findings(const ClusterMap& map) {
  ClusterFindings f;
  if (map.ranks.empty()) return f;
  const std::string& ref = map.ranks[map.nodes[0][0]].desc.topo_digest;
  for (int n = 1; n < map.num_nodes(); ++n)
    for (int r : map.nodes[n]) {
      const std::string& d = map.ranks[r].desc.topo_digest;
      if (!ref.empty() && !d.empty() && d != ref) {
        f.nodes_differing.push_back(n);
        break;
      }
    }
  auto shared = [&](auto field, std::vector<std::vector<int>>& out) {
    for (const std::vector<int>& node : map.nodes) {
      std::map<std::string, std::vector<int>> by;
      for (int r : node)
        if (const std::string& v = field(map.ranks[r].desc); !v.empty()) by[v].push_back(r);
      for (auto& [v, ranks] : by)
        if (ranks.size() > 1) out.push_back(ranks);
    }
    std::sort(out.begin(), out.end());
  };
  shared([](const RankDescriptor& d) -> const std::string& { return d.gpu_bus_id; }, f.shared_gpus);
  shared([](const RankDescriptor& d) -> const std::string& { return d.nic; }, f.shared_nics);
  return f;
}

Result<ClusterMap> exchange_cluster_map(Bootstrap& bootstrap, const RankDescriptor& mine) {
  WireDescriptor wire{};
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.host_id, mine.host_id, "host id"));
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.gpu_bus_id, mine.gpu_bus_id, "GPU bus id"));
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.nic, mine.nic, "NIC"));
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.nic_name, mine.nic_name, "NIC name"));
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.nic_kind, mine.nic_kind, "NIC kind"));
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.topo_digest, mine.topo_digest, "topology digest"));
  LOCMOE_RETURN_IF_ERROR(pack_field(wire.cpus, mine.cpus, "CPU list"));
  wire.gpu = mine.gpu;
  wire.nic_index = mine.nic_index;
  wire.numa = mine.numa;
  std::vector<WireDescriptor> all(static_cast<size_t>(bootstrap.size()));
  LOCMOE_RETURN_IF_ERROR(bootstrap.allgather(&wire, all.data(), sizeof(WireDescriptor))
                             .with_context("exchanging cluster descriptors"));
  std::vector<RankDescriptor> descriptors;
  descriptors.reserve(all.size());
  for (const WireDescriptor& w : all) {
    RankDescriptor d{unpack_field(w.host_id), unpack_field(w.gpu_bus_id), unpack_field(w.nic)};
    d.gpu = w.gpu;
    d.nic_index = w.nic_index;
    d.nic_name = unpack_field(w.nic_name);
    d.nic_kind = unpack_field(w.nic_kind);
    d.cpus = unpack_field(w.cpus);
    d.numa = w.numa;
    d.topo_digest = unpack_field(w.topo_digest);
    descriptors.push_back(std::move(d));
  }
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
