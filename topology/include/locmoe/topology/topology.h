// Topology of one host: NUMA domains, GPUs, NICs, the path class between every GPU pair and every
// GPU-NIC pair, and each GPU's rail NIC.
//
// The model is plain, immutable data (a Topology is built once by a loader and only read after),
// so it can be copied to any thread, printed, dumped to JSON and compared. Sources:
//   - live discovery through hwloc (default); needs libhwloc-plugins for PCI devices;
//   - an hwloc XML file (as written by `lstopo foo.xml` or LOCMOE_TOPO_DUMP_FILE=foo.xml);
//   - an NCCL topology file (`<system version="1">`, the files users pass as NCCL_TOPO_FILE);
//   - an hwloc synthetic string ("pack:2 numa:1 core:4 pu:1"), which has no PCI devices.
// load_default() picks among them from LOCMOE_TOPO_FILE / LOCMOE_TOPO_SYNTHETIC (params.def).
// Only topology/src/hwloc_source.cc includes hwloc.h; every other file sees this model.
//
// Path classes (the names and order of `nvidia-smi topo -m`, best first):
//   X     the device itself
//   NV#   # NVLinks connect the two GPUs (directly, or both through NVSwitches: then # is the
//         smaller link count of the two GPUs). Known from NCCL files (`<nvlink>` elements) and from
//         hwloc XML files that carry hwloc's "NVLinkBandwidth" distances (written by its NVML
//         backend; # = bandwidth / the smallest non-zero GPU bandwidth in that matrix, one link).
//         hwloc 2.9 on Debian has no NVML plugin, so live discovery here gives PCI classes only.
//   PIX   both devices sit directly under one PCIe switch
//   PXB   several PCIe switches between them, no host bridge
//   PHB   through one PCIe host bridge (root complex): different root ports of one host bridge
//   NODE  through the interconnect between host bridges of one NUMA node
//   SYS   across NUMA nodes (QPI/UPI/Infinity Fabric), or locality unknown
// How a PCI tree maps onto these classes:
//   - hwloc: a PCIe switch appears as an upstream-port bridge whose children are downstream-port
//     bridges; both are one switch here. Root ports belong to their host bridge. Devices attached
//     to the same non-IO hwloc object (Package, Group, Machine) but different host bridges are NODE
//     when that object spans one NUMA node, else SYS.
//   - NCCL files: every `<pci>` element of class 0x0604 is one switch (NCCL collapses switches the
//     same way); each `<pci>` or `<nic>` directly under a `<cpu>` hangs from its own host bridge
//     (root port), so devices under one `<cpu>` without a common switch are NODE; across `<cpu>`
//     elements SYS.
//
// Which devices count:
//   - GPUs: PCI class 0x0302 (3D controller) of any vendor; class 0x0300 (VGA) only from NVIDIA
//     (0x10de) or AMD (0x1002) in hwloc sources, so a server's BMC VGA is not a GPU. In NCCL files
//     every 0x0302/0x0300 device and every `<pci>` with a `<gpu>` child is a GPU.
//   - NICs: PCI class 0x0207 (InfiniBand) or 0x0200 (Ethernet), named by their hwloc OpenFabrics
//     (mlx5_0) or Network (eth0) OS device; NCCL `<nic><net>` elements (one NIC per `<net>`).
// GPUs are sorted by PCI bus id; NICs by bus id (NICs without one last, by name). Indices into
// gpus()/nics() are what gpu_path(), nic_path() and rail() take and return.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "locmoe/core/status.h"

namespace locmoe::topo {

// Path classes, best (nearest) first; comparisons by enum order are meaningful.
enum class PathClass : uint8_t { kX, kNV, kPIX, kPXB, kPHB, kNODE, kSYS };

struct Path {
  PathClass cls = PathClass::kSYS;
  int nvlinks = 0;  // number of NVLinks when cls == kNV, else 0
  bool operator==(const Path&) const = default;
};

// "X", "PIX", ..., or "NV12" for Path{kNV, 12} ("NV" when the count is 0).
std::string path_name(Path path);
// Parses what path_name() writes. Error (kParseError) names the text.
Result<Path> parse_path(std::string_view text);

enum class NicKind : uint8_t { kUnknown, kInfiniBand, kEthernet };
// "ib", "eth" or "unknown".
const char* nic_kind_name(NicKind kind);

struct NumaDomain {
  int os_index = 0;       // Linux NUMA node number
  std::vector<int> cpus;  // OS indices of its logical CPUs, ascending
  bool operator==(const NumaDomain&) const = default;
};

struct Gpu {
  std::string pci_bus_id;   // normalized "dddd:bb:dd.f", lower-case hex
  uint16_t vendor_id = 0;   // PCI vendor id, 0 when unknown (NCCL files often omit it)
  uint16_t device_id = 0;   // PCI device id, 0 when unknown
  int numa = -1;            // NUMA node os index, -1 when unknown or several
  std::vector<int> cpus;    // CPUs local to the GPU (OS indices, ascending); empty when unknown
  std::string name;         // model name when the source says it ("Tesla V100-SXM3-32GB-H"), else ""
  bool operator==(const Gpu&) const = default;
};

struct Nic {
  std::string name;         // OS name ("mlx5_0", "eth0"); "" when the source does not say
  std::string pci_bus_id;   // normalized bus id; "" for NICs without a known PCI device
  int numa = -1;            // NUMA node os index, -1 when unknown
  int64_t speed_mbps = -1;  // link speed in Mb/s, -1 when unknown
  NicKind kind = NicKind::kUnknown;
  // How a NIC is named to users and in cluster descriptors: bus id when known, else name.
  const std::string& label() const { return pci_bus_id.empty() ? name : pci_bus_id; }
  bool operator==(const Nic&) const = default;
};

// Everything a Topology is built from. Loaders fill it; tests and other layers may fill it by hand
// to describe an imaginary machine. gpu_paths is gpus.size()^2 row-major (diagonal kX, symmetric);
// nic_paths is gpus.size() x nics.size() row-major.
struct TopologyParts {
  std::string source;  // where it came from, for messages: "hwloc (this machine)", "file 'x.xml' (NCCL)"
  std::vector<NumaDomain> numa_domains;
  std::vector<Gpu> gpus;
  std::vector<Nic> nics;
  std::vector<Path> gpu_paths;
  std::vector<Path> nic_paths;
  std::string hwloc_xml;  // the hwloc XML export when the source was hwloc, else "" (see to_hwloc_xml)
};

class Topology {
 public:
  // Validates `parts` (sizes of the matrices, symmetric gpu_paths with kX on the diagonal and only
  // there, no kX/kNV between a GPU and a NIC, well-formed unique bus ids), sorts GPUs and NICs into
  // the documented order (permuting the matrices along) and computes the rails. Errors
  // (kInvalidArgument) name the offending entry.
  static Result<Topology> create(TopologyParts parts);

  const std::string& source() const { return p_.source; }
  const std::vector<NumaDomain>& numa_domains() const { return p_.numa_domains; }
  const std::vector<Gpu>& gpus() const { return p_.gpus; }
  const std::vector<Nic>& nics() const { return p_.nics; }
  int num_gpus() const { return static_cast<int>(p_.gpus.size()); }
  int num_nics() const { return static_cast<int>(p_.nics.size()); }

  // Path between GPUs a and b (indices into gpus()); kX when a == b.
  Path gpu_path(int a, int b) const { return p_.gpu_paths[static_cast<size_t>(a) * p_.gpus.size() + b]; }
  // Path between GPU `gpu` and NIC `nic` (indices into gpus() / nics()).
  Path nic_path(int gpu, int nic) const { return p_.nic_paths[static_cast<size_t>(gpu) * p_.nics.size() + nic]; }

  // The rail NIC of GPU `gpu` (index into nics()), -1 when the host has no NIC. Rule: the
  // candidates are the InfiniBand NICs when the host has any (NCCL prefers its IB transport), else
  // all NICs; among them the GPU takes those at its best path class. GPUs whose best candidates are
  // the same set are paired with that set one-to-one in PCI bus-id order (GPU i under a switch gets
  // NIC i under that switch); when the set has fewer NICs than GPUs, consecutive GPUs share
  // (GPU i of n gets NIC i * m / n of m), so NICs are spread evenly and no NIC is left idle.
  int rail(int gpu) const { return rails_[gpu]; }
  // Index of the GPU with this bus id (normalized first), -1 when absent.
  int find_gpu(std::string_view pci_bus_id) const;

  // The parts, e.g. to change one field and create() a variant.
  const TopologyParts& parts() const { return p_; }
  // Equal models (the source text and the hwloc XML are not compared).
  bool same_model(const Topology& other) const;

 private:
  TopologyParts p_;
  std::vector<int> rails_;
};

// --- Sources -------------------------------------------------------------------------------

// Live discovery of this machine through hwloc, I/O devices included.
Result<Topology> discover();
// A topology file; the format is detected from the root element: <topology> is hwloc XML,
// <system> an NCCL topology file. A missing, empty, truncated or malformed file, another root, or
// an hwloc XML that hwloc 2.9 could crash on (it is validated first: known object types, cpusets
// present and well-formed, required I/O attributes) is an error naming the file and the reason.
Result<Topology> load_file(const std::string& path);
// An hwloc synthetic description ("pack:2 numa:1 core:4 pu:1"). A string hwloc rejects is an error
// (kParseError) naming it.
Result<Topology> load_synthetic(const std::string& description);
// LOCMOE_TOPO_FILE when set, else LOCMOE_TOPO_SYNTHETIC when set, else discover(); then, when
// LOCMOE_TOPO_DUMP_FILE is set, writes the result there (dump_file).
Result<Topology> load_default();

// --- Dumps ---------------------------------------------------------------------------------

// One JSON document: {"source", "numa": [{"os_index","cpus"}], "gpus": [{"pci_bus_id","vendor_id",
// "device_id","numa","cpus","name","nearest_nic","nic_path","rail"}], "nics": [{"name","pci_bus_id",
// "numa","speed_mbps","kind"}], "gpu_paths": [[..]], "nic_paths": [[..]]} where "cpus" is a list
// string ("0-23,48-71"), "nearest_nic" the rail's label (bus id, else name; null without NICs),
// "rail" its index, unknown values null, and paths are path_name() strings.
std::string to_json(const Topology& topology, int indent = 2);
// Reads what to_json() writes (rails are recomputed). Errors (kParseError) name the field.
Result<Topology> from_json(std::string_view json, std::string_view what = "JSON topology");
// hwloc XML of a topology that came from hwloc (live, hwloc XML, synthetic). Models from NCCL
// files or JSON have no hwloc tree behind them: kUnsupported, saying so and suggesting JSON.
Result<std::string> to_hwloc_xml(const Topology& topology);
// Writes to_hwloc_xml() when `path` ends in ".xml", else to_json(). Errors name the path.
Status dump_file(const Topology& topology, const std::string& path);

// --- Helpers -------------------------------------------------------------------------------

// Normalizes a PCI bus id "dddd:bb:dd.f" or "bb:dd.f" (domain 0) to lower-case "dddd:bb:dd.f".
// Error (kParseError) names the text.
Result<std::string> normalize_pci_bus_id(std::string_view text);
// "0-3,8,10-11" for {0,1,2,3,8,10,11}; "" for none.
std::string cpu_list_string(std::span<const int> cpus);
// Parses what cpu_list_string() writes (CPU ids below kMaxCpus; items may repeat or overlap).
// Error (kParseError) names the text.
inline constexpr int kMaxCpus = 1 << 16;
Result<std::vector<int>> parse_cpu_list(std::string_view text);

}  // namespace locmoe::topo
