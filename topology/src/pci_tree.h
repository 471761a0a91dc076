// Internal: the neutral PCI tree every source is reduced to, and the one place where path classes
// are decided (rules in topology.h). Not installed.
#pragma once

#include <map>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "locmoe/topology/topology.h"

namespace locmoe::topo::detail {

class PciTree {
 public:
  // kLocality: a CPU-side attachment point (hwloc non-IO object, NCCL <cpu> or <system>) spanning
  // `numa_count` NUMA nodes; kHostBridge: a root complex with its root ports; kSwitch: one PCIe
  // switch (upstream and downstream ports together); kDevice: a GPU, NIC or other endpoint.
  enum class Kind { kLocality, kHostBridge, kSwitch, kDevice };

  // Adds a node under `parent` (-1 for the root) and returns its id.
  int add(Kind kind, int parent, int numa_count = 1) {
    nodes_.push_back({kind, parent, numa_count});
    return static_cast<int>(nodes_.size()) - 1;
  }
  // Path class between two device nodes, from their lowest common ancestor.
  Path classify(int a, int b) const;

 private:
  struct Node {
    Kind kind;
    int parent;
    int numa_count;
  };
  std::vector<Node> nodes_;
};

// NVLink counts known from the source: direct GPU-GPU counts keyed by (gpu, gpu) indices of the
// `gpu_nodes` order, and each GPU's NVLink count to NVSwitches.
struct NvLinks {
  std::map<std::pair<int, int>, int> direct;
  std::map<int, int> to_switch;
};

// Fills parts.gpu_paths and parts.nic_paths for GPUs and NICs in the order of parts.gpus /
// parts.nics, whose tree nodes are gpu_nodes / nic_nodes.
void fill_paths(const PciTree& tree, std::span<const int> gpu_nodes, std::span<const int> nic_nodes,
                const NvLinks& nvlinks, TopologyParts& parts);

// Whole-string number parsers shared by the sources; parse_hex accepts an optional "0x".
bool parse_hex(std::string_view text, unsigned long& out);
bool parse_long(std::string_view text, long& out);

// Shared by the sources: reads a whole file. Errors name the file: kNotFound when it cannot be
// opened, kParseError when it is empty (or only white space).
Result<std::string> read_topology_file(const std::string& path);

// Loaders behind load_file(): hwloc XML (hwloc_source.cc, after validation by the caller) and NCCL.
Result<Topology> load_hwloc_xml(const std::string& xml, const std::string& source);

}  // namespace locmoe::topo::detail
