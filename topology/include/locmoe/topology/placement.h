// A rank's place on its node: the GPU it drives, its rail NIC, the CPUs and NUMA domain nearest
// them, from the node's topology (topology.h) and the rank's local index; and the cluster map
// built from every rank's place (the one entry point the runtime uses: build_cluster_map).
//
// The placement rule (one rule; each step can be overridden per rank, see PlaceOverride):
//   GPU   1. the override (PlaceOverride::gpu, else LOCMOE_GPU), see below;
//         2. else the CUDA device the caller drives (PlaceOverride::cuda_bus_id), by bus id, when
//            the model has it (a topology file of another machine does not: logged at INFO);
//         3. else CUDA_VISIBLE_DEVICES when it lists device ordinals: the rank drives visible
//            device (local rank mod count), i.e. the physical GPU of that ordinal, counted in PCI
//            bus-id order (CUDA's order under CUDA_DEVICE_ORDER=PCI_BUS_ID, which is the order of
//            Topology::gpus()); an entry that is not an ordinal (GPU-uuid, MIG-...) cannot be
//            matched without NVML, so the rule goes on to step 4 (logged at INFO);
//         4. else local rank l drives GPU l mod (GPUs of the node): ranks in rank order take the
//            GPUs in PCI bus-id order, as launchers that start one rank per GPU expect. More ranks
//            than GPUs share GPUs (the cluster map flags that); a node without GPUs gives none.
//   NIC   the override (PlaceOverride::nic, else LOCMOE_NIC), else the GPU's rail
//         (Topology::rail: the nearest InfiniBand NIC, spread evenly); none without a GPU.
//   CPUs  the override (PlaceOverride::cpus, else LOCMOE_CPUS), else the GPU's local CPUs, else
//         the CPUs of the NIC's NUMA domain; empty when the model does not say.
//   NUMA  the domain holding all of the rank's CPUs (-1 when they span several); without CPUs the
//         GPU's, else the NIC's domain.
// Override values: GPU an index into gpus() ("3") or a PCI bus id; NIC an index into nics(), a NIC
// name ("mlx5_0") or a PCI bus id; CPUs a CPU list ("0-23,48-71") inside the node's CPUs. A GPU or
// NIC value with commas is one entry per local rank (entry l for local rank l; the list must
// cover every local rank); CPU lists per local rank are separated by ';'. Launchers that place
// ranks their own way set these per rank (mpirun -x, a wrapper reading the launcher's local rank)
// or once as lists. A value that names no GPU/NIC/CPU of the node, or a list too short, is an
// error (kInvalidArgument) naming the variable, the value and what was expected.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"
#include "locmoe/topology/cluster.h"
#include "locmoe/topology/topology.h"

namespace locmoe::topo {

// API overrides; an empty field defers to the environment variable named, then to the rule.
struct PlaceOverride {
  std::string gpu;          // as LOCMOE_GPU
  std::string nic;          // as LOCMOE_NIC
  std::string cpus;         // as LOCMOE_CPUS
  std::string cuda_bus_id;  // PCI bus id of the CUDA device this rank drives, "" when none/unknown
};

struct RankPlace {
  int gpu = -1;             // index into Topology::gpus(), -1 = none
  std::string gpu_bus_id;   // normalized bus id, "" = none
  int nic = -1;             // index into Topology::nics(), -1 = none
  std::string nic_label;    // Nic::label() (bus id, else name), "" = none
  std::string nic_name;     // OS name ("mlx5_0"), "" when the model does not say
  NicKind nic_kind = NicKind::kUnknown;
  std::vector<int> cpus;    // ascending OS indices, empty = unknown
  int numa = -1;            // NUMA os index, -1 = unknown or several
  std::string how;          // which rule or override chose the GPU, for messages and locmoe-topo
};

// The place of local rank `local_rank` of `local_size` on a node with topology `t`. Reads
// LOCMOE_GPU, LOCMOE_NIC, LOCMOE_CPUS and CUDA_VISIBLE_DEVICES. Errors: bad overrides, as above.
Result<RankPlace> place_rank(const Topology& t, int local_rank, int local_size, const PlaceOverride& o = {});

// The descriptor a rank contributes to the cluster map for `place` on a node with topology `t`.
RankDescriptor descriptor_of(const std::string& host_id, const Topology& t, const RankPlace& place);

// 16 hex digits identifying the model of `t` (NUMA domains, GPUs, NICs, paths; not its source
// text): nodes with equal digests have equal topologies (up to a 64-bit hash collision).
std::string topology_digest(const Topology& t);

// Binds every thread of this process (those alive now; threads started later inherit it) to
// `cpus` (mode "cpus") or to the CPUs of NUMA domain place.numa (mode "numa"); "off" does
// nothing. A place without CPUs (or NUMA domain) is an error naming the mode; so is a CPU set
// the kernel refuses (not online here: a fixture's CPUs this machine lacks), naming the set.
Status bind_threads(const Topology& t, const RankPlace& place, std::string_view mode);

// The runtime's cluster map. Collective over `bootstrap`: exchanges host ids (LOCMOE_HOSTID or
// the hostname) to learn each rank's local index, places the rank on its node's topology
// (`topology` when given, else load_default(): LOCMOE_TOPO_FILE, LOCMOE_TOPO_SYNTHETIC or live
// hwloc) with place_rank, binds its threads when LOCMOE_BIND is not "off", and exchanges the full
// descriptors. When `place_out` is given it receives this rank's place. Every rank agrees on
// failures before the second exchange: a rank whose topology file, placement override or binding
// fails returns that error, the others Code::kPeerFailure naming it (nobody is left waiting).
// Live discovery that fails (no LOCMOE_TOPO_FILE/_SYNTHETIC set) is a warning: the rank is then
// unplaced (no GPU, NIC, CPUs), and lanes fall back to local ranks.
Result<ClusterMap> build_cluster_map(Bootstrap& bootstrap, const PlaceOverride& o = {},
                                     const Topology* topology = nullptr, RankPlace* place_out = nullptr);

}  // namespace locmoe::topo
