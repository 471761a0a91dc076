// locmoe-topo: the topology locmoe sees (NUMA domains, GPUs, NICs, the GPU x (GPU, NIC) path
// matrix like `nvidia-smi topo -m`, each GPU's rail NIC), the cluster map under mpirun
// (--cluster), and the LOCMOE_* parameters (--params). Exit status: 0 ok, 1 usage, 2 error.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "locmoe/topology/cluster.h"
#include "locmoe/topology/placement.h"
#include "locmoe/topology/topology.h"

namespace {

using locmoe::Result;
using locmoe::Status;
namespace topo = locmoe::topo;

struct Options {
  std::string file, synthetic, dump;
  bool json = false, cluster = false, params = false;
};

// --file / --synthetic, else what load_default() picks (LOCMOE_TOPO_FILE, LOCMOE_TOPO_SYNTHETIC,
// this machine). LOCMOE_TOPO_DUMP_FILE applies to all (load_default() writes it itself).
Result<topo::Topology> load(const Options& o) {
  if (o.file.empty() && o.synthetic.empty()) return topo::load_default();
  Result<topo::Topology> t = !o.file.empty() ? topo::load_file(o.file) : topo::load_synthetic(o.synthetic);
  if (!t.ok()) return t;
  LOCMOE_ASSIGN_OR_RETURN(std::string dump, locmoe::params::get_string(locmoe::params::Id::topo_dump_file));
  if (!dump.empty()) LOCMOE_RETURN_IF_ERROR(topo::dump_file(*t, dump));
  return t;
}

std::string gpu_label(int a) { return fmt::format("GPU{}", a); }
std::string nic_label(int k) { return fmt::format("NIC{}", k); }
std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }
std::string numa_text(int numa) { return numa < 0 ? "-" : std::to_string(numa); }

void print_text(const topo::Topology& t) {
  std::printf("source: %s\n\nNUMA domains: %zu\n", t.source().c_str(), t.numa_domains().size());
  for (const topo::NumaDomain& d : t.numa_domains())
    std::printf("  NUMA %d: CPUs %s\n", d.os_index, or_dash(topo::cpu_list_string(d.cpus)).c_str());
  std::printf("\nGPUs: %d\n", t.num_gpus());
  for (int a = 0; a < t.num_gpus(); ++a) {
    const topo::Gpu& g = t.gpus()[a];
    std::string ids = g.vendor_id ? fmt::format("[{:04x}:{:04x}]", g.vendor_id, g.device_id) : "[-]";
    std::printf("  %-6s %s %s NUMA %s  CPUs %s  %s\n", gpu_label(a).c_str(), g.pci_bus_id.c_str(), ids.c_str(),
                numa_text(g.numa).c_str(), or_dash(topo::cpu_list_string(g.cpus)).c_str(), g.name.c_str());
  }
  std::printf("\nNICs: %d\n", t.num_nics());
  for (int k = 0; k < t.num_nics(); ++k) {
    const topo::Nic& n = t.nics()[k];
    std::string speed = n.speed_mbps < 0 ? "speed -" : fmt::format("{} Mb/s", n.speed_mbps);
    std::printf("  %-6s %-10s %-12s %-7s NUMA %s  %s\n", nic_label(k).c_str(), or_dash(n.name).c_str(),
                or_dash(n.pci_bus_id).c_str(), topo::nic_kind_name(n.kind), numa_text(n.numa).c_str(), speed.c_str());
  }
  if (t.num_gpus() == 0) {
    std::printf("\nno GPU: no path matrix\n");
    return;
  }
  // The matrix, laid out like `nvidia-smi topo -m`.
  std::printf("\n%-8s", "");
  for (int b = 0; b < t.num_gpus(); ++b) std::printf("%-7s", gpu_label(b).c_str());
  for (int k = 0; k < t.num_nics(); ++k) std::printf("%-7s", nic_label(k).c_str());
  std::printf("%-16s %-14s %s\n", "CPU Affinity", "NUMA Affinity", "Rail NIC");
  for (int a = 0; a < t.num_gpus(); ++a) {
    std::printf("%-8s", gpu_label(a).c_str());
    for (int b = 0; b < t.num_gpus(); ++b) std::printf("%-7s", topo::path_name(t.gpu_path(a, b)).c_str());
    for (int k = 0; k < t.num_nics(); ++k) std::printf("%-7s", topo::path_name(t.nic_path(a, k)).c_str());
    const int rail = t.rail(a);
    std::string rail_text = rail < 0 ? "-" : fmt::format("{} ({})", nic_label(rail), topo::path_name(t.nic_path(a, rail)));
    std::printf("%-16s %-14s %s\n", or_dash(topo::cpu_list_string(t.gpus()[a].cpus)).c_str(),
                numa_text(t.gpus()[a].numa).c_str(), rail_text.c_str());
  }
  std::printf(
      "\nLegend:\n\n"
      "  X    = Self\n"
      "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)\n"
      "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node\n"
      "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)\n"
      "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)\n"
      "  PIX  = Connection traversing at most a single PCIe bridge\n"
      "  NV#  = Connection traversing a bonded set of # NVLinks\n");
  if (t.num_nics() > 0) {
    std::printf("\nNIC Legend:\n\n");
    for (int k = 0; k < t.num_nics(); ++k)
      std::printf("  %s: %s\n", nic_label(k).c_str(), t.nics()[k].label().c_str());
  }
}

// The runtime's own map (placement.h: the rule, overrides, LOCMOE_BIND), on --file/--synthetic
// when given, else load_default()'s topology.
// *joined: whether this rank took part in build_cluster_map's exchanges, whose failures every
// rank learns (a bad override, a peer that cannot place itself); false when it failed alone first.
Result<locmoe::ClusterMap> cluster_map(const Options& o, locmoe::Bootstrap& boot, bool* joined) {
  Result<topo::Topology> t = load(o);
  *joined = true;
  // A rank that cannot load its topology still joins the exchanges (build_cluster_map agrees on
  // failures), so its peers fail with it instead of waiting.
  if (!t.ok() && o.file.empty() && o.synthetic.empty()) return topo::build_cluster_map(boot);
  if (!t.ok()) {
    *joined = false;
    return t.status();
  }
  return topo::build_cluster_map(boot, {}, &*t);
}

std::string rank_list(const std::vector<int>& ranks) { return topo::cpu_list_string(ranks); }

std::string groups_text(const std::vector<std::vector<int>>& groups) {
  std::string out;
  for (const auto& g : groups) out += (out.empty() ? "" : "; ") + std::string("ranks ") + rank_list(g);
  return out;
}

void print_cluster(const locmoe::ClusterMap& map, bool json) {
  const locmoe::ClusterFindings f = locmoe::cluster_findings(map);
  auto null_if_empty = [](const std::string& s) { return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s); };
  auto null_if_negative = [](int v) { return v < 0 ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v); };
  if (json) {
    nlohmann::ordered_json nodes = nlohmann::ordered_json::array(), ranks = nlohmann::ordered_json::array();
    for (int n = 0; n < map.num_nodes(); ++n)
      nodes.push_back({{"node", n}, {"host", map.host_of_node(n)}, {"ranks", map.nodes[n]}, {"lanes", map.lanes[n]},
                       {"topology", null_if_empty(map.ranks[map.nodes[n][0]].desc.topo_digest)},
                       {"topology_differs", std::find(f.nodes_differing.begin(), f.nodes_differing.end(), n) !=
                                                f.nodes_differing.end()}});
    for (const locmoe::RankInfo& r : map.ranks)
      ranks.push_back({{"rank", r.rank}, {"node", r.node}, {"local_rank", r.local_rank},
                       {"local_size", map.local_size(r.node)}, {"host", r.desc.host_id}, {"lane", r.lane},
                       {"gpu", null_if_empty(r.desc.gpu_bus_id)}, {"gpu_index", null_if_negative(r.desc.gpu)},
                       {"nic", null_if_empty(r.desc.nic)}, {"nic_index", null_if_negative(r.desc.nic_index)},
                       {"nic_name", null_if_empty(r.desc.nic_name)}, {"nic_kind", null_if_empty(r.desc.nic_kind)},
                       {"cpus", null_if_empty(r.desc.cpus)}, {"numa", null_if_negative(r.desc.numa)}});
    nlohmann::ordered_json doc = {{"size", map.size()}, {"num_nodes", map.num_nodes()}, {"uniform", map.uniform()},
                          {"nodes", nodes}, {"ranks", ranks},
                          {"findings", {{"nodes_differing", f.nodes_differing}, {"shared_gpus", f.shared_gpus},
                                        {"shared_nics", f.shared_nics}}}};
    // Host ids (LOCMOE_HOSTID) and NIC names need not be UTF-8: replace bad bytes, never throw.
    std::printf("%s\n", doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }
  std::printf("cluster: %d ranks on %d nodes (%s)\n", map.size(), map.num_nodes(),
              map.uniform() ? "uniform" : "UNEVEN: nodes have different rank counts");
  for (int n = 0; n < map.num_nodes(); ++n) {
    const std::string& digest = map.ranks[map.nodes[n][0]].desc.topo_digest;
    std::printf("\nnode %d '%s': %d ranks (%s), topology %s\n", n, map.host_of_node(n).c_str(), map.local_size(n),
                rank_list(map.nodes[n]).c_str(), or_dash(digest).c_str());
    for (int r : map.nodes[n]) {
      const locmoe::RankInfo& i = map.ranks[r];
      std::string nic = i.desc.nic.empty() ? "-" : i.desc.nic_name.empty() || i.desc.nic_name == i.desc.nic ? i.desc.nic
                                                 : fmt::format("{} ({})", i.desc.nic, i.desc.nic_name);
      std::printf("  rank %-4d local %d/%d  lane %-3d GPU %-14s NIC %-22s NUMA %-3s CPUs %s\n", r, i.local_rank,
                  map.local_size(n), i.lane, or_dash(i.desc.gpu_bus_id).c_str(), nic.c_str(),
                  numa_text(i.desc.numa).c_str(), or_dash(i.desc.cpus).c_str());
    }
  }
  for (int n : f.nodes_differing)
    std::printf("\nWARNING: node %d '%s' has a different topology from node 0 '%s'\n", n, map.host_of_node(n).c_str(),
                map.host_of_node(0).c_str());
  if (!f.shared_gpus.empty()) std::printf("\nWARNING: ranks share a GPU: %s\n", groups_text(f.shared_gpus).c_str());
  if (!f.shared_nics.empty()) std::printf("\nNOTE: ranks share a NIC: %s\n", groups_text(f.shared_nics).c_str());
}

int fail(const Status& st, int rank = -1) {
  std::string who = rank < 0 ? "" : fmt::format(" rank {}", rank);
  std::fprintf(stderr, "locmoe-topo%s: %s\n", who.c_str(), st.to_string().c_str());
  return 2;
}

int run_cluster(const Options& o, int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  auto boot = locmoe::make_mpi_bootstrap(MPI_COMM_WORLD);
  bool joined = false;
  Result<locmoe::ClusterMap> map = boot.ok() ? cluster_map(o, **boot, &joined) : Result<locmoe::ClusterMap>(boot.status());
  if (!map.ok()) {
    fail(map.status(), rank);
    std::fflush(stderr);
    std::fflush(stdout);
    // A failure inside build_cluster_map's exchanges reaches every rank (it agrees on each rank's
    // placement; a dead or stuck peer ends them at the deadline), so every rank leaves the same
    // way: MPI_Finalize and exit status 2, which mpirun returns. A rank that failed before
    // joining them may leave peers waiting: it ends the whole job by leaving without
    // MPI_Finalize, which mpirun answers by stopping every rank. Not MPI_Abort: concurrent
    // MPI_Abort calls crash mpirun (Open MPI 4.1: a segfault in PMIx_server_finalize) or hang it;
    // and not _Exit on an agreed failure either: with a whole node's ranks leaving without
    // MPI_Finalize while the other node's ranks were in it, mpirun once hung (CI, 2026-12-03).
    if (!joined) std::_Exit(2);
    boot = Status();
    MPI_Finalize();
    return 2;
  }
  if (rank == 0) print_cluster(*map, o.json);
  std::fflush(stdout);
  boot = Status();  // release the duplicated communicator before MPI_Finalize
  MPI_Finalize();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"locmoe-topo: the GPUs, NICs and paths locmoe sees, and the cluster map"};
  Options o;
  auto* file = app.add_option("--file", o.file, "Topology file (hwloc XML or NCCL topology; format from the content)");
  app.add_option("--synthetic", o.synthetic, "hwloc synthetic topology, e.g. 'pack:2 numa:1 core:4 pu:1'")->excludes(file);
  app.add_option("--dump", o.dump, "Also write the topology to this file (.xml: hwloc XML, else JSON)");
  app.add_flag("--json", o.json, "Print one JSON document");
  app.add_flag("--cluster", o.cluster, "Under mpirun: exchange rank descriptors and print the cluster map (rank 0)");
  app.add_flag("--params", o.params, "Print every LOCMOE_* parameter (name, type, default, value, source)");
  CLI11_PARSE(app, argc, argv);

  if (Status st = locmoe::params::validate_all(); !st.ok()) return fail(st);
  if (o.params) {
    locmoe::params::print_table(stdout, o.json);
    return 0;
  }
  if (o.cluster) return run_cluster(o, argc, argv);

  Result<topo::Topology> t = load(o);
  if (!t.ok()) return fail(t.status());
  if (!o.dump.empty())
    if (Status st = topo::dump_file(*t, o.dump); !st.ok()) return fail(st);
  if (o.json)
    std::printf("%s\n", topo::to_json(*t).c_str());
  else
    print_text(*t);
  return 0;
}
