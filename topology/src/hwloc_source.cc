// The one file that includes hwloc.h: live discovery, hwloc XML (already validated by the caller,
// see xml_source.cc) and synthetic topologies, all reduced to TopologyParts + a PciTree.
#include <hwloc.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>

#include "locmoe/core/check.h"
#include "pci_tree.h"

namespace locmoe::topo {
namespace {

using detail::PciTree;

struct TopologyDeleter {
  void operator()(hwloc_topology* t) const { hwloc_topology_destroy(t); }
};
using HwlocTopology = std::unique_ptr<hwloc_topology, TopologyDeleter>;

std::vector<int> cpus_of(hwloc_const_cpuset_t set) {
  std::vector<int> cpus;
  if (set == nullptr || hwloc_bitmap_weight(set) < 0) return cpus;  // empty or infinite
  unsigned i;
  hwloc_bitmap_foreach_begin(i, set) cpus.push_back(static_cast<int>(i));
  hwloc_bitmap_foreach_end();
  return cpus;
}

// The single NUMA node os index of a normal object, -1 when it spans none or several.
int numa_of(hwloc_obj_t obj) {
  if (obj == nullptr || obj->nodeset == nullptr || hwloc_bitmap_weight(obj->nodeset) != 1) return -1;
  return hwloc_bitmap_first(obj->nodeset);
}

std::string bus_id_of(hwloc_obj_t pci) {
  const auto& a = pci->attr->pcidev;
  return fmt::format("{:04x}:{:02x}:{:02x}.{:x}", static_cast<unsigned>(a.domain), static_cast<unsigned>(a.bus),
                     static_cast<unsigned>(a.dev), static_cast<unsigned>(a.func));
}

// Reduces hwloc's object tree to a PciTree (rules in topology.h): PCIe switches appear in hwloc as
// an upstream-port bridge whose children are downstream-port bridges; root ports belong to their
// host bridge.
class TreeBuilder {
 public:
  int node_of(hwloc_obj_t obj) {
    if (auto it = nodes_.find(obj); it != nodes_.end()) return it->second;
    int id = -1;
    if (obj->type == HWLOC_OBJ_BRIDGE) {
      switch (role(obj)) {
        case Role::kHost: id = tree.add(PciTree::Kind::kHostBridge, node_of(obj->parent)); break;
        case Role::kRootPort:  // part of its host bridge (or acts as one when hwloc shows none)
          id = obj->parent->type == HWLOC_OBJ_BRIDGE ? node_of(obj->parent)
                                                    : tree.add(PciTree::Kind::kHostBridge, node_of(obj->parent));
          break;
        case Role::kUpstream: id = tree.add(PciTree::Kind::kSwitch, node_of(obj->parent)); break;
        case Role::kDownstream: id = node_of(obj->parent); break;
      }
    } else if (obj->type == HWLOC_OBJ_PCI_DEVICE) {
      id = tree.add(PciTree::Kind::kDevice, node_of(obj->parent));
    } else if (hwloc_obj_type_is_normal(obj->type)) {
      int numas = obj->nodeset ? hwloc_bitmap_weight(obj->nodeset) : 1;
      id = tree.add(PciTree::Kind::kLocality, obj->parent ? node_of(obj->parent) : -1, numas < 0 ? 2 : numas);
    } else {  // Misc, OS devices: where their parent is
      id = node_of(obj->parent);
    }
    nodes_[obj] = id;
    return id;
  }

  PciTree tree;

 private:
  enum class Role { kHost, kRootPort, kUpstream, kDownstream };
  Role role(hwloc_obj_t bridge) {
    if (bridge->attr->bridge.upstream_type == HWLOC_OBJ_BRIDGE_HOST) return Role::kHost;
    hwloc_obj_t parent = bridge->parent;
    if (parent == nullptr || parent->type != HWLOC_OBJ_BRIDGE) return Role::kRootPort;
    switch (role(parent)) {
      case Role::kHost: return Role::kRootPort;
      case Role::kUpstream: return Role::kDownstream;
      default: return Role::kUpstream;  // below a root or downstream port: the next switch
    }
  }
  std::map<hwloc_obj_t, int> nodes_;
};

bool is_gpu(const hwloc_obj_attr_u::hwloc_pcidev_attr_s& a) {
  if (a.class_id == 0x0302) return true;
  return a.class_id == 0x0300 && (a.vendor_id == 0x10de || a.vendor_id == 0x1002);
}

// Link speed of a live network device from sysfs, -1 when unknown (files absent, link down).
int64_t live_speed_mbps(const std::string& netdev, const std::string& ibdev) {
  if (!ibdev.empty()) {  // "200 Gb/sec (4X HDR)"
    std::ifstream rate("/sys/class/infiniband/" + ibdev + "/ports/1/rate");
    double gbps = 0;
    if (rate >> gbps && gbps > 0) return static_cast<int64_t>(gbps * 1000);
  }
  if (!netdev.empty()) {
    std::ifstream speed("/sys/class/net/" + netdev + "/speed");
    int64_t mbps = -1;
    if (speed >> mbps && mbps > 0) return mbps;
  }
  return -1;
}

bool is_nvswitch(hwloc_obj_t obj) {
  if (obj->type != HWLOC_OBJ_PCI_DEVICE) return false;
  if (obj->subtype != nullptr && std::string_view(obj->subtype) == "NVSwitch") return true;
  return obj->attr->pcidev.vendor_id == 0x10de && obj->attr->pcidev.class_id == 0x0680;
}

// NVLinks from hwloc's "NVLinkBandwidth" distances (written by its NVML backend; hwloc XML files
// from NVIDIA machines carry them). Values are bandwidths, not link counts: one link is taken to
// be the smallest non-zero bandwidth of a GPU entry, so NV# is bandwidth / that unit. GPUs appear
// as NVML OS devices (their parent is the PCI device) or PCI devices; NVSwitches as PCI devices.
detail::NvLinks nvlinks_of(hwloc_topology_t t, const std::vector<hwloc_obj_t>& gpu_objs) {
  detail::NvLinks nv;
  unsigned nr = 1;
  hwloc_distances_s* d = nullptr;
  if (hwloc_distances_get_by_name(t, "NVLinkBandwidth", &nr, &d, 0) != 0 || nr == 0 || d == nullptr) return nv;
  auto gpu_index = [&](hwloc_obj_t obj) {
    if (obj != nullptr && obj->type == HWLOC_OBJ_OS_DEVICE) obj = obj->parent;
    auto it = std::find(gpu_objs.begin(), gpu_objs.end(), obj);
    return it == gpu_objs.end() ? -1 : static_cast<int>(it - gpu_objs.begin());
  };
  const unsigned n = d->nbobjs;
  hwloc_uint64_t unit = 0;
  for (unsigned i = 0; i < n; ++i)
    for (unsigned j = 0; j < n; ++j)
      if (hwloc_uint64_t v = d->values[i * n + j]; v > 0 && gpu_index(d->objs[i]) >= 0 && (unit == 0 || v < unit)) unit = v;
  for (unsigned i = 0; i < n && unit > 0; ++i) {
    const int a = gpu_index(d->objs[i]);
    if (a < 0) continue;
    for (unsigned j = 0; j < n; ++j) {
      const hwloc_uint64_t v = d->values[i * n + j];
      if (v == 0 || i == j) continue;
      const int links = static_cast<int>((v + unit / 2) / unit);
      if (const int b = gpu_index(d->objs[j]); b >= 0 && b != a) {
        nv.direct[{a, b}] = std::max(nv.direct[{a, b}], links);
      } else if (is_nvswitch(d->objs[j])) {
        nv.to_switch[a] += links;
      }
    }
  }
  hwloc_distances_release(t, d);
  return nv;
}

Result<Topology> build(hwloc_topology_t t, std::string source, bool live) {
  TopologyParts parts;
  parts.source = std::move(source);
  for (hwloc_obj_t numa = nullptr; (numa = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, numa));)
    parts.numa_domains.push_back({static_cast<int>(numa->os_index), cpus_of(numa->cpuset)});

  TreeBuilder builder;
  std::vector<int> gpu_nodes, nic_nodes;
  std::vector<hwloc_obj_t> gpu_objs;
  for (hwloc_obj_t pci = nullptr; (pci = hwloc_get_next_pcidev(t, pci));) {
    const hwloc_obj_attr_u::hwloc_pcidev_attr_s& a = pci->attr->pcidev;
    hwloc_obj_t local = hwloc_get_non_io_ancestor_obj(t, pci);
    if (is_gpu(a)) {
      Gpu gpu;
      gpu.pci_bus_id = bus_id_of(pci);
      gpu.vendor_id = a.vendor_id;
      gpu.device_id = a.device_id;
      gpu.numa = numa_of(local);
      gpu.cpus = cpus_of(local ? local->cpuset : nullptr);
      for (hwloc_obj_t os = pci->io_first_child; os; os = os->next_sibling)
        if (const char* model = hwloc_obj_get_info_by_name(os, "GPUModel"); model && gpu.name.empty()) gpu.name = model;
      if (const char* dev = hwloc_obj_get_info_by_name(pci, "PCIDevice"); dev && gpu.name.empty()) gpu.name = dev;
      parts.gpus.push_back(std::move(gpu));
      gpu_nodes.push_back(builder.node_of(pci));
      gpu_objs.push_back(pci);
    } else if (a.class_id == 0x0207 || a.class_id == 0x0200) {
      Nic nic;
      nic.pci_bus_id = bus_id_of(pci);
      nic.numa = numa_of(local);
      nic.kind = a.class_id == 0x0207 ? NicKind::kInfiniBand : NicKind::kEthernet;
      std::string netdev, ibdev;
      for (hwloc_obj_t os = pci->io_first_child; os; os = os->next_sibling) {
        if (os->type != HWLOC_OBJ_OS_DEVICE || os->name == nullptr) continue;
        if (os->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS) {
          ibdev = os->name;
          // RoCE: an OpenFabrics device whose port speaks Ethernet.
          if (const char* ll = hwloc_obj_get_info_by_name(os, "Port1LinkLayer"))
            nic.kind = std::string_view(ll) == "Ethernet" ? NicKind::kEthernet : NicKind::kInfiniBand;
        } else if (os->attr->osdev.type == HWLOC_OBJ_OSDEV_NETWORK && netdev.empty()) {
          netdev = os->name;
        }
      }
      nic.name = !ibdev.empty() ? ibdev : netdev;  // "" when hwloc saw no OS device: labelled by bus id
      if (live) nic.speed_mbps = live_speed_mbps(netdev, ibdev);
      parts.nics.push_back(std::move(nic));
      nic_nodes.push_back(builder.node_of(pci));
    }
  }
  detail::fill_paths(builder.tree, gpu_nodes, nic_nodes, nvlinks_of(t, gpu_objs), parts);

  char* xml = nullptr;
  int len = 0;
  if (hwloc_topology_export_xmlbuffer(t, &xml, &len, 0) == 0 && xml != nullptr) {
    parts.hwloc_xml.assign(xml, len > 0 ? static_cast<size_t>(len - 1) : 0);  // len counts the '\0'
    hwloc_free_xmlbuffer(t, xml);
  }
  return Topology::create(std::move(parts));
}

Result<HwlocTopology> init(const std::string& what, bool keep_io) {
  hwloc_topology_t raw = nullptr;
  LOCMOE_CHECK(hwloc_topology_init(&raw) == 0, Code::kSystemError, "{}: hwloc_topology_init failed: {}", what,
               std::strerror(errno));
  HwlocTopology t(raw);
  // Live: GPUs, NICs and the bridges above them; XML: every I/O object the file has.
  hwloc_topology_set_io_types_filter(t.get(), keep_io ? HWLOC_TYPE_FILTER_KEEP_ALL : HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
  return t;
}

}  // namespace

Result<Topology> discover() {
  const std::string what = "hwloc discovery of this machine";
  LOCMOE_ASSIGN_OR_RETURN(HwlocTopology t, init(what, false));
  LOCMOE_CHECK(hwloc_topology_load(t.get()) == 0, Code::kSystemError, "{} failed: {}", what, std::strerror(errno));
  if (hwloc_get_next_bridge(t.get(), nullptr) == nullptr && hwloc_get_next_pcidev(t.get(), nullptr) == nullptr)
    LOCMOE_WARN("hwloc found no PCI device on this machine: GPUs and NICs are unknown "
                "(is libhwloc-plugins installed? It holds hwloc's PCI discovery)");
  return build(t.get(), "hwloc (this machine)", true);
}

Result<Topology> load_synthetic(const std::string& description) {
  LOCMOE_CHECK(!description.empty(), Code::kParseError, "hwloc synthetic topology string is empty");
  const std::string what = fmt::format("hwloc synthetic topology '{}'", description);
  LOCMOE_ASSIGN_OR_RETURN(HwlocTopology t, init(what, false));
  LOCMOE_CHECK(hwloc_topology_set_synthetic(t.get(), description.c_str()) == 0, Code::kParseError,
               "{} rejected by hwloc (expected levels like 'pack:2 numa:1 core:4 pu:1'): {}", what,
               std::strerror(errno));
  LOCMOE_CHECK(hwloc_topology_load(t.get()) == 0, Code::kParseError, "{}: hwloc could not build it: {}", what,
               std::strerror(errno));
  return build(t.get(), what, false);
}

namespace detail {

Result<Topology> load_hwloc_xml(const std::string& xml, const std::string& source) {
  LOCMOE_ASSIGN_OR_RETURN(HwlocTopology t, init(source, true));
  // The buffer length given to hwloc counts the terminating '\0'.
  LOCMOE_CHECK(hwloc_topology_set_xmlbuffer(t.get(), xml.c_str(), static_cast<int>(xml.size() + 1)) == 0,
               Code::kParseError, "{}: hwloc cannot read it as XML: {}", source, std::strerror(errno));
  LOCMOE_CHECK(hwloc_topology_load(t.get()) == 0, Code::kParseError,
               "{}: hwloc rejected it: {} (HWLOC_XML_VERBOSE=1 makes hwloc print its reason)", source,
               std::strerror(errno));
  return build(t.get(), source, false);
}

}  // namespace detail
}  // namespace locmoe::topo
