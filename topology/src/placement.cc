#include "locmoe/topology/placement.h"

#include <dirent.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "locmoe/core/check.h"
#include "locmoe/core/log.h"
#include "locmoe/core/params.h"

namespace locmoe::topo {
namespace {

std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t end = text.find(sep, start);
    std::string item(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    out.push_back(std::move(item));
    if (end == std::string_view::npos) return out;
    start = end + 1;
  }
}

bool parse_index(std::string_view text, int& out) {
  if (text.empty() || text.size() > 9 || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  out = std::atoi(std::string(text).c_str());
  return true;
}

// The override for this local rank: the API value, else the variable; a `sep` list gives one
// entry per local rank. `var` and `value` name it in errors. "" when none.
Result<std::string> pick_override(const std::string& api, params::Id id, char sep, int local_rank, int local_size,
                                  std::string& var, std::string& value) {
  var = api.empty() ? params::info(id).env : std::string("the API override of ") + params::info(id).env;
  if (api.empty()) {
    LOCMOE_ASSIGN_OR_RETURN(value, params::get_string(id));
  } else {
    value = api;
  }
  if (value.empty()) return std::string();
  if (value.find(sep) == std::string::npos) return value;
  std::vector<std::string> items = split(value, sep);
  LOCMOE_CHECK_ARG(static_cast<int>(items.size()) >= local_size,
                   "{}='{}' lists {} entries, one per local rank; this node has {} local ranks", var, value,
                   items.size(), local_size);
  LOCMOE_CHECK_ARG(!items[local_rank].empty(), "{}='{}': entry {} (local rank {}) is empty", var, value, local_rank,
                   local_rank);
  return items[local_rank];
}

std::string gpu_choices(const Topology& t) {
  if (t.num_gpus() == 0) return "this node has no GPU";
  return fmt::format("expected an index 0..{} or the PCI bus id of one of its GPUs ({}..{})", t.num_gpus() - 1,
                     t.gpus().front().pci_bus_id, t.gpus().back().pci_bus_id);
}

Result<int> resolve_gpu(const Topology& t, const std::string& item, const std::string& var, const std::string& value) {
  int idx = -1;
  if (parse_index(item, idx)) {
    LOCMOE_CHECK_ARG(idx < t.num_gpus(), "{}='{}': GPU {} is not a GPU of {}: {}", var, value, item, t.source(),
                     gpu_choices(t));
    return idx;
  }
  idx = t.find_gpu(item);
  LOCMOE_CHECK_ARG(idx >= 0, "{}='{}': '{}' is not a GPU of {}: {}", var, value, item, t.source(), gpu_choices(t));
  return idx;
}

Result<int> resolve_nic(const Topology& t, const std::string& item, const std::string& var, const std::string& value) {
  int idx = -1;
  std::string names;
  for (const Nic& n : t.nics()) names += (names.empty() ? "" : ", ") + n.label() + (n.name.empty() || n.name == n.label() ? "" : " (" + n.name + ")");
  const std::string choices = t.num_nics() == 0 ? std::string("this node has no NIC")
                                                : fmt::format("expected an index 0..{}, a name or a bus id of: {}",
                                                              t.num_nics() - 1, names);
  if (parse_index(item, idx)) {
    LOCMOE_CHECK_ARG(idx < t.num_nics(), "{}='{}': NIC {} is not a NIC of {}: {}", var, value, item, t.source(), choices);
    return idx;
  }
  Result<std::string> bus = normalize_pci_bus_id(item);
  for (int k = 0; k < t.num_nics(); ++k) {
    const Nic& n = t.nics()[k];
    if ((!n.name.empty() && n.name == item) || (bus.ok() && n.pci_bus_id == *bus)) return k;
  }
  return error(Code::kInvalidArgument, "{}='{}': '{}' is not a NIC of {}: {}", var, value, item, t.source(), choices);
}

std::vector<int> node_cpus(const Topology& t) {
  std::vector<int> all;
  for (const NumaDomain& d : t.numa_domains()) all.insert(all.end(), d.cpus.begin(), d.cpus.end());
  for (const Gpu& g : t.gpus()) all.insert(all.end(), g.cpus.begin(), g.cpus.end());
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  return all;
}

const NumaDomain* numa_domain(const Topology& t, int os_index) {
  for (const NumaDomain& d : t.numa_domains())
    if (d.os_index == os_index) return &d;
  return nullptr;
}

}  // namespace

Result<RankPlace> place_rank(const Topology& t, int local_rank, int local_size, const PlaceOverride& o) {
  LOCMOE_CHECK_ARG(local_size > 0 && local_rank >= 0 && local_rank < local_size,
                   "local rank {} of {} is out of range", local_rank, local_size);
  RankPlace p;
  std::string var, value;
  // GPU. A CUDA device the model lacks (a topology file of another machine) defers to the rule.
  if (!o.cuda_bus_id.empty() && t.find_gpu(o.cuda_bus_id) < 0)
    LOCMOE_INFO("the CUDA device of local rank {} ({}) is not a GPU of {}: placing by the rule", local_rank,
                o.cuda_bus_id, t.source());
  LOCMOE_ASSIGN_OR_RETURN(std::string gpu_item, pick_override(o.gpu, params::Id::gpu, ',', local_rank, local_size, var, value));
  if (!gpu_item.empty()) {
    LOCMOE_ASSIGN_OR_RETURN(p.gpu, resolve_gpu(t, gpu_item, var, value));
    p.how = fmt::format("{}={}", var, value);
  } else if (!o.cuda_bus_id.empty() && t.find_gpu(o.cuda_bus_id) >= 0) {
    p.gpu = t.find_gpu(o.cuda_bus_id);
    p.how = "the CUDA device";
  } else if (const char* cvd = std::getenv("CUDA_VISIBLE_DEVICES"); cvd != nullptr && t.num_gpus() > 0) {
    std::vector<std::string> items = std::string_view(cvd).empty() ? std::vector<std::string>{} : split(cvd, ',');
    std::vector<int> ordinals;
    bool all_ordinals = true;
    for (const std::string& it : items) {
      int v = -1;
      if (!parse_index(it, v)) all_ordinals = false;
      ordinals.push_back(v);
    }
    if (items.empty()) {
      p.how = "CUDA_VISIBLE_DEVICES is empty: no GPU";
    } else if (!all_ordinals) {
      LOCMOE_INFO("CUDA_VISIBLE_DEVICES='{}' is not a list of device ordinals (UUIDs need NVML): local rank {} takes GPU by the local-rank rule",
                  cvd, local_rank);
    } else {
      const int v = ordinals[local_rank % ordinals.size()];
      LOCMOE_CHECK_ARG(v < t.num_gpus(), "CUDA_VISIBLE_DEVICES='{}': device {} (local rank {}) is not a GPU of {}: {}",
                       cvd, v, local_rank, t.source(), gpu_choices(t));
      p.gpu = v;
      p.how = fmt::format("CUDA_VISIBLE_DEVICES={} (visible device {})", cvd, local_rank % ordinals.size());
    }
  }
  if (p.gpu < 0 && p.how.empty() && t.num_gpus() > 0) {
    p.gpu = local_rank % t.num_gpus();
    p.how = "local rank";
  }
  if (p.gpu >= 0) p.gpu_bus_id = t.gpus()[p.gpu].pci_bus_id;
  // NIC.
  LOCMOE_ASSIGN_OR_RETURN(std::string nic_item, pick_override(o.nic, params::Id::nic, ',', local_rank, local_size, var, value));
  if (!nic_item.empty()) {
    LOCMOE_ASSIGN_OR_RETURN(p.nic, resolve_nic(t, nic_item, var, value));
  } else if (p.gpu >= 0) {
    p.nic = t.rail(p.gpu);
  }
  if (p.nic >= 0) {
    const Nic& n = t.nics()[p.nic];
    p.nic_label = n.label();
    p.nic_name = n.name;
    p.nic_kind = n.kind;
  }
  // CPUs.
  LOCMOE_ASSIGN_OR_RETURN(std::string cpu_item, pick_override(o.cpus, params::Id::cpus, ';', local_rank, local_size, var, value));
  if (!cpu_item.empty()) {
    Result<std::vector<int>> cpus = parse_cpu_list(cpu_item);
    LOCMOE_CHECK_ARG(cpus.ok() && !cpus->empty(), "{}='{}': '{}' is not a CPU list like 0-23,48-71", var, value, cpu_item);
    const std::vector<int> all = node_cpus(t);
    if (!all.empty()) {
      std::vector<int> outside;
      std::set_difference(cpus->begin(), cpus->end(), all.begin(), all.end(), std::back_inserter(outside));
      LOCMOE_CHECK_ARG(outside.empty(), "{}='{}': CPUs {} are not CPUs of {} (it has {})", var, value,
                       cpu_list_string(outside), t.source(), cpu_list_string(all));
    }
    p.cpus = std::move(*cpus);
  } else if (p.gpu >= 0 && !t.gpus()[p.gpu].cpus.empty()) {
    p.cpus = t.gpus()[p.gpu].cpus;
  } else if (p.nic >= 0) {
    if (const NumaDomain* d = numa_domain(t, t.nics()[p.nic].numa)) p.cpus = d->cpus;
  }
  // NUMA domain.
  if (!p.cpus.empty()) {
    for (const NumaDomain& d : t.numa_domains())
      if (std::includes(d.cpus.begin(), d.cpus.end(), p.cpus.begin(), p.cpus.end())) p.numa = d.os_index;
  } else if (p.gpu >= 0 && t.gpus()[p.gpu].numa >= 0) {
    p.numa = t.gpus()[p.gpu].numa;
  } else if (p.nic >= 0) {
    p.numa = t.nics()[p.nic].numa;
  }
  return p;
}

RankDescriptor descriptor_of(const std::string& host_id, const Topology& t, const RankPlace& place) {
  RankDescriptor d{host_id, place.gpu_bus_id, place.nic_label};
  d.gpu = place.gpu;
  d.nic_index = place.nic;
  d.nic_name = place.nic_name;
  d.nic_kind = place.nic >= 0 ? nic_kind_name(place.nic_kind) : "";
  d.cpus = cpu_list_string(place.cpus);
  d.numa = place.numa;
  d.topo_digest = topology_digest(t);
  return d;
}

std::string topology_digest(const Topology& t) {
  TopologyParts parts = t.parts();
  parts.source.clear();
  parts.hwloc_xml.clear();
  Result<Topology> plain = Topology::create(std::move(parts));
  const std::string text = plain.ok() ? to_json(*plain, -1) : to_json(t, -1);
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return fmt::format("{:016x}", h);
}

Status bind_threads(const Topology& t, const RankPlace& place, std::string_view mode) {
  if (mode == "off") return ok_status();
  LOCMOE_CHECK_ARG(mode == "cpus" || mode == "numa", "LOCMOE_BIND='{}' is not one of off, cpus, numa", mode);
  std::vector<int> cpus = place.cpus;
  if (mode == "numa") {
    const NumaDomain* d = numa_domain(t, place.numa);
    LOCMOE_CHECK_ARG(d != nullptr && !d->cpus.empty(),
                     "LOCMOE_BIND=numa: this rank has no single NUMA domain with known CPUs (GPU {}, CPUs '{}')",
                     place.gpu_bus_id.empty() ? "-" : place.gpu_bus_id, cpu_list_string(place.cpus));
    cpus = d->cpus;
  }
  LOCMOE_CHECK_ARG(!cpus.empty(), "LOCMOE_BIND={}: the topology gives this rank no CPUs (GPU {}); set LOCMOE_CPUS",
                   mode, place.gpu_bus_id.empty() ? "-" : place.gpu_bus_id);
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  LOCMOE_CHECK(sched_getaffinity(0, sizeof allowed, &allowed) == 0, Code::kSystemError, "sched_getaffinity: {}",
               std::strerror(errno));
  std::vector<int> missing;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) {
    if (c >= CPU_SETSIZE || !CPU_ISSET(c, &allowed))
      missing.push_back(c);
    else
      CPU_SET(c, &set);
  }
  LOCMOE_CHECK_ARG(missing.empty(), "LOCMOE_BIND={}: CPUs {} of this rank ({}) are not available to this process here",
                   mode, cpu_list_string(missing), cpu_list_string(cpus));
  // Every thread alive now (sched_setaffinity binds one thread); later threads inherit.
  DIR* dir = opendir("/proc/self/task");
  LOCMOE_CHECK(dir != nullptr, Code::kSystemError, "opendir /proc/self/task: {}", std::strerror(errno));
  Status st = ok_status();
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const pid_t tid = static_cast<pid_t>(std::atol(e->d_name));
    if (sched_setaffinity(tid, sizeof set, &set) != 0 && errno != ESRCH && st.ok())
      st = error(Code::kSystemError, "LOCMOE_BIND={}: sched_setaffinity(thread {}, CPUs {}): {}", mode, tid,
                 cpu_list_string(cpus), std::strerror(errno));
  }
  closedir(dir);
  if (st.ok()) LOCMOE_INFO("bound {} threads to CPUs {}", mode, cpu_list_string(cpus));
  return st;
}

Result<ClusterMap> build_cluster_map(Bootstrap& bootstrap, const PlaceOverride& o, const Topology* topology,
                                     RankPlace* place_out) {
  RankDescriptor mine;
  LOCMOE_ASSIGN_OR_RETURN(mine.host_id, local_host_id());
  LOCMOE_ASSIGN_OR_RETURN(ClusterMap first, exchange_cluster_map(bootstrap, mine));
  // Every rank joins the second exchange whatever happens here, so one rank's bad override fails
  // every rank at once (naming the rank) rather than leaving its peers waiting.
  Result<Topology> loaded = topology != nullptr ? Result<Topology>(*topology) : load_default();
  if (!loaded.ok() && topology == nullptr) {
    // A topology file or string the user named must load; live discovery that fails (a
    // container without /sys, hwloc without its plugins) leaves this rank unplaced instead:
    // the exchange still works, pairing by local rank.
    Result<std::string> file = params::get_string(params::Id::topo_file);
    Result<std::string> synth = params::get_string(params::Id::topo_synthetic);
    if (file.ok() && synth.ok() && file->empty() && synth->empty()) {
      LOCMOE_WARN("rank {}: topology discovery failed ({}); this rank has no GPU, NIC or CPUs in the cluster map",
                  bootstrap.rank(), loaded.status().to_string());
      Result<Topology> none = Topology::create(TopologyParts{"no topology (discovery failed)", {}, {}, {}, {}, {}, ""});
      if (none.ok()) loaded = std::move(none);
    }
  }
  Result<RankPlace> place = loaded.ok() ? place_rank(*loaded, first.my_local_rank(), first.my_local_size(), o)
                                        : Result<RankPlace>(loaded.status());
  if (place.ok()) {
    Result<std::string> mode = params::get_string(params::Id::bind);
    Status bound = mode.ok() ? bind_threads(*loaded, *place, *mode) : mode.status();
    if (!bound.ok()) place = bound;
  }
  uint64_t failed = place.ok() ? 0 : static_cast<uint64_t>(bootstrap.rank()) + 1;
  LOCMOE_RETURN_IF_ERROR(bootstrap.allreduce(&failed, &failed, 1, DataType::kUint64, ReduceOp::kMax)
                             .with_context("agreeing on every rank's placement"));
  if (!place.ok()) return Status(place.status()).with_context(fmt::format("placing rank {} on its node", bootstrap.rank()));
  LOCMOE_CHECK(failed == 0, Code::kPeerFailure, "rank {} could not place itself on its node (its error says why)",
               failed - 1);
  if (place_out != nullptr) *place_out = *place;
  return exchange_cluster_map(bootstrap, descriptor_of(mine.host_id, *loaded, *place));
}

}  // namespace locmoe::topo
