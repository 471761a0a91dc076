#include "locmoe/topology/topology.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "locmoe/core/check.h"
#include "pci_tree.h"

namespace locmoe::topo {
namespace {

constexpr const char* kClassNames[] = {"X", "NV", "PIX", "PXB", "PHB", "NODE", "SYS"};

using detail::parse_hex;

bool parse_int(std::string_view text, int& out) {
  long v = 0;
  if (!detail::parse_long(text, v) || v < INT32_MIN || v > INT32_MAX) return false;
  out = static_cast<int>(v);
  return true;
}

}  // namespace

std::string path_name(Path path) {
  if (path.cls == PathClass::kNV && path.nvlinks > 0) return fmt::format("NV{}", path.nvlinks);
  return kClassNames[static_cast<int>(path.cls)];
}

Result<Path> parse_path(std::string_view text) {
  for (int c = 0; c < static_cast<int>(std::size(kClassNames)); ++c)
    if (text == kClassNames[c]) return Path{static_cast<PathClass>(c), 0};
  int links = 0;
  LOCMOE_CHECK(text.starts_with("NV") && parse_int(text.substr(2), links) && links > 0,
               Code::kParseError, "path class '{}' is not one of X, NV#, PIX, PXB, PHB, NODE, SYS", text);
  return Path{PathClass::kNV, links};
}

const char* nic_kind_name(NicKind kind) {
  switch (kind) {
    case NicKind::kInfiniBand: return "ib";
    case NicKind::kEthernet: return "eth";
    default: return "unknown";
  }
}

Result<std::string> normalize_pci_bus_id(std::string_view text) {
  // [domain:]bus:device.function, hex fields of at most 4/2/2/1 digits.
  unsigned long domain = 0, bus = 0, dev = 0, fn = 0;
  std::string_view rest = text;
  auto bad = [&] {
    return error(Code::kParseError, "PCI bus id '{}' is not of the form dddd:bb:dd.f", text);
  };
  size_t first = rest.find(':');
  if (first == std::string_view::npos) return bad();
  if (rest.find(':', first + 1) != std::string_view::npos) {
    if (first > 8 || !parse_hex(rest.substr(0, first), domain)) return bad();
    rest = rest.substr(first + 1);
    first = rest.find(':');
  }
  size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot < first || first > 2 || dot - first - 1 > 2 ||
      rest.size() - dot - 1 != 1)
    return bad();
  if (!parse_hex(rest.substr(0, first), bus) || !parse_hex(rest.substr(first + 1, dot - first - 1), dev) ||
      !parse_hex(rest.substr(dot + 1), fn) || domain > 0xffff || dev > 0x1f || fn > 7)
    return bad();
  return fmt::format("{:04x}:{:02x}:{:02x}.{:x}", domain, bus, dev, fn);
}

std::string cpu_list_string(std::span<const int> cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += j == i ? fmt::format("{}", cpus[i]) : fmt::format("{}-{}", cpus[i], cpus[j]);
    i = j + 1;
  }
  return out;
}

Result<std::vector<int>> parse_cpu_list(std::string_view text) {
  // Ranges are marked in a difference array, so the cost is the items plus the highest CPU id,
  // however often the ranges repeat or overlap (a std::set of every id took seconds on
  // "2-1018811", found by fuzz_topology_json).
  std::vector<std::pair<int, int>> ranges;
  int top = -1;
  std::string_view rest = text;
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    size_t dash = item.find('-');
    int lo = 0, hi = 0;
    bool ok = dash == std::string_view::npos
                  ? parse_int(item, lo) && (hi = lo, true)
                  : parse_int(item.substr(0, dash), lo) && parse_int(item.substr(dash + 1), hi);
    LOCMOE_CHECK(ok && lo >= 0 && lo <= hi && hi < kMaxCpus, Code::kParseError,
                 "CPU list '{}': item '{}' is not N or N-M with 0 <= N <= M < {}", text, item, kMaxCpus);
    ranges.emplace_back(lo, hi);
    top = std::max(top, hi);
  }
  std::vector<int> depth(static_cast<size_t>(top) + 2, 0), cpus;
  for (auto [lo, hi] : ranges) ++depth[lo], --depth[hi + 1];
  for (int c = 0, d = 0; c <= top; ++c)
    if ((d += depth[c]) > 0) cpus.push_back(c);
  return cpus;
}

// --- Path classes from the PCI tree ----------------------------------------------------------

namespace detail {

bool parse_hex(std::string_view text, unsigned long& out) {
  if (text.starts_with("0x") || text.starts_with("0X")) text.remove_prefix(2);
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out, 16);
  return ec == std::errc() && end == text.data() + text.size();
}

bool parse_long(std::string_view text, long& out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

Path PciTree::classify(int a, int b) const {
  if (a == b) return {PathClass::kX, 0};
  std::vector<int> up_a;
  for (int n = a; n >= 0; n = nodes_[n].parent) up_a.push_back(n);
  int lca = -1;
  for (int n = b; n >= 0 && lca < 0; n = nodes_[n].parent)
    if (std::find(up_a.begin(), up_a.end(), n) != up_a.end()) lca = n;
  if (lca < 0) return {PathClass::kSYS, 0};
  switch (nodes_[lca].kind) {
    case Kind::kDevice:  // one device below the other (functions of one card): one hop
      return {PathClass::kPIX, 0};
    case Kind::kSwitch:
      return {nodes_[a].parent == lca && nodes_[b].parent == lca ? PathClass::kPIX : PathClass::kPXB, 0};
    case Kind::kHostBridge:
      return {PathClass::kPHB, 0};
    case Kind::kLocality:
      return {nodes_[lca].numa_count <= 1 ? PathClass::kNODE : PathClass::kSYS, 0};
  }
  return {PathClass::kSYS, 0};
}

void fill_paths(const PciTree& tree, std::span<const int> gpu_nodes, std::span<const int> nic_nodes,
                const NvLinks& nvlinks, TopologyParts& parts) {
  const size_t g = gpu_nodes.size(), n = nic_nodes.size();
  parts.gpu_paths.assign(g * g, Path{});
  parts.nic_paths.assign(g * n, Path{});
  for (size_t a = 0; a < g; ++a) {
    for (size_t b = 0; b < g; ++b) {
      Path p = tree.classify(gpu_nodes[a], gpu_nodes[b]);
      if (a != b) {
        int links = 0;
        for (auto key : {std::pair<int, int>(a, b), std::pair<int, int>(b, a)})
          if (auto it = nvlinks.direct.find(key); it != nvlinks.direct.end()) links = std::max(links, it->second);
        auto sa = nvlinks.to_switch.find(static_cast<int>(a)), sb = nvlinks.to_switch.find(static_cast<int>(b));
        if (sa != nvlinks.to_switch.end() && sb != nvlinks.to_switch.end())
          links = std::max(links, std::min(sa->second, sb->second));
        if (links > 0) p = {PathClass::kNV, links};
      }
      parts.gpu_paths[a * g + b] = p;
    }
    for (size_t k = 0; k < n; ++k) parts.nic_paths[a * n + k] = tree.classify(gpu_nodes[a], nic_nodes[k]);
  }
}

Result<std::string> read_topology_file(const std::string& path) {
  std::error_code ec;
  LOCMOE_CHECK(!std::filesystem::is_directory(path, ec), Code::kInvalidArgument,
               "topology file '{}' is a directory, expected a file", path);
  std::ifstream in(path, std::ios::binary);
  LOCMOE_CHECK(in.is_open(), Code::kNotFound, "topology file '{}' cannot be opened: {}", path,
               std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  LOCMOE_CHECK(!in.bad(), Code::kSystemError, "topology file '{}': read error", path);
  std::string content = std::move(text).str();
  LOCMOE_CHECK(std::any_of(content.begin(), content.end(), [](unsigned char c) { return !std::isspace(c); }),
               Code::kParseError, "topology file '{}' is empty", path);
  return content;
}

}  // namespace detail

// --- The model -------------------------------------------------------------------------------

namespace {

// Sort key of NICs: with a bus id first, by bus id; then by name.
bool nic_less(const Nic& a, const Nic& b) {
  if (a.pci_bus_id.empty() != b.pci_bus_id.empty()) return !a.pci_bus_id.empty();
  return std::tie(a.pci_bus_id, a.name) < std::tie(b.pci_bus_id, b.name);
}

std::vector<int> compute_rails(const TopologyParts& p) {
  const int g = static_cast<int>(p.gpus.size()), n = static_cast<int>(p.nics.size());
  std::vector<int> rails(g, -1);
  if (n == 0) return rails;
  bool any_ib = std::any_of(p.nics.begin(), p.nics.end(), [](const Nic& x) { return x.kind == NicKind::kInfiniBand; });
  auto candidate = [&](int k) { return !any_ib || p.nics[k].kind == NicKind::kInfiniBand; };
  // GPUs (ascending bus id, as stored) grouped by their set of equally nearest candidate NICs.
  std::map<std::vector<int>, std::vector<int>> groups;
  for (int a = 0; a < g; ++a) {
    PathClass best = PathClass::kSYS;
    for (int k = 0; k < n; ++k)
      if (candidate(k)) best = std::min(best, p.nic_paths[static_cast<size_t>(a) * n + k].cls);
    std::vector<int> nearest;
    for (int k = 0; k < n; ++k)
      if (candidate(k) && p.nic_paths[static_cast<size_t>(a) * n + k].cls == best) nearest.push_back(k);
    groups[nearest].push_back(a);
  }
  for (const auto& [nearest, gpus] : groups) {
    const size_t m = nearest.size(), count = gpus.size();
    for (size_t i = 0; i < count; ++i) rails[gpus[i]] = nearest[m >= count ? i : i * m / count];
  }
  return rails;
}

}  // namespace

Result<Topology> Topology::create(TopologyParts parts) {
  const size_t g = parts.gpus.size(), n = parts.nics.size();
  LOCMOE_CHECK_ARG(parts.gpu_paths.size() == g * g, "{}: gpu_paths has {} entries; {} GPUs need {}",
                   parts.source, parts.gpu_paths.size(), g, g * g);
  LOCMOE_CHECK_ARG(parts.nic_paths.size() == g * n, "{}: nic_paths has {} entries; {} GPUs x {} NICs need {}",
                   parts.source, parts.nic_paths.size(), g, n, g * n);
  std::set<std::string> ids;
  for (Gpu& gpu : parts.gpus) {
    LOCMOE_ASSIGN_OR_RETURN(gpu.pci_bus_id, normalize_pci_bus_id(gpu.pci_bus_id));
    LOCMOE_CHECK_ARG(ids.insert(gpu.pci_bus_id).second, "{}: two GPUs have PCI bus id {}", parts.source,
                     gpu.pci_bus_id);
  }
  std::set<std::pair<std::string, std::string>> nic_ids;
  for (Nic& nic : parts.nics) {
    if (!nic.pci_bus_id.empty()) {
      LOCMOE_ASSIGN_OR_RETURN(nic.pci_bus_id, normalize_pci_bus_id(nic.pci_bus_id));
    }
    LOCMOE_CHECK_ARG(!nic.label().empty(), "{}: a NIC has neither a name nor a PCI bus id", parts.source);
    LOCMOE_CHECK_ARG(nic_ids.emplace(nic.pci_bus_id, nic.name).second, "{}: NIC {} appears twice",
                     parts.source, nic.label());
  }
  for (size_t a = 0; a < g; ++a) {
    for (size_t b = 0; b < g; ++b) {
      Path p = parts.gpu_paths[a * g + b];
      LOCMOE_CHECK_ARG((p.cls == PathClass::kX) == (a == b), "{}: path {} between GPUs {} and {}: X is the diagonal only",
                       parts.source, path_name(p), a, b);
      LOCMOE_CHECK_ARG(p == parts.gpu_paths[b * g + a], "{}: path between GPUs {} and {} is not symmetric ({} vs {})",
                       parts.source, a, b, path_name(p), path_name(parts.gpu_paths[b * g + a]));
    }
    for (size_t k = 0; k < n; ++k) {
      Path p = parts.nic_paths[a * n + k];
      LOCMOE_CHECK_ARG(p.cls != PathClass::kX && p.cls != PathClass::kNV, "{}: path {} between GPU {} and NIC {}",
                       parts.source, path_name(p), a, k);
    }
  }
  // Sort GPUs and NICs, carrying the matrices along.
  std::vector<size_t> go(g), no(n);
  std::iota(go.begin(), go.end(), 0);
  std::iota(no.begin(), no.end(), 0);
  std::sort(go.begin(), go.end(), [&](size_t x, size_t y) { return parts.gpus[x].pci_bus_id < parts.gpus[y].pci_bus_id; });
  std::sort(no.begin(), no.end(), [&](size_t x, size_t y) { return nic_less(parts.nics[x], parts.nics[y]); });
  TopologyParts sorted;
  sorted.source = std::move(parts.source);
  sorted.numa_domains = std::move(parts.numa_domains);
  std::sort(sorted.numa_domains.begin(), sorted.numa_domains.end(),
            [](const NumaDomain& x, const NumaDomain& y) { return x.os_index < y.os_index; });
  sorted.hwloc_xml = std::move(parts.hwloc_xml);
  for (size_t a : go) sorted.gpus.push_back(parts.gpus[a]);
  for (size_t k : no) sorted.nics.push_back(parts.nics[k]);
  for (size_t a : go) {
    for (size_t b : go) sorted.gpu_paths.push_back(parts.gpu_paths[a * g + b]);
  }
  for (size_t a : go) {
    for (size_t k : no) sorted.nic_paths.push_back(parts.nic_paths[a * n + k]);
  }
  Topology t;
  t.rails_ = compute_rails(sorted);
  t.p_ = std::move(sorted);
  return t;
}

int Topology::find_gpu(std::string_view pci_bus_id) const {
  Result<std::string> id = normalize_pci_bus_id(pci_bus_id);
  if (!id.ok()) return -1;
  for (int a = 0; a < num_gpus(); ++a)
    if (p_.gpus[a].pci_bus_id == *id) return a;
  return -1;
}

bool Topology::same_model(const Topology& o) const {
  return p_.numa_domains == o.p_.numa_domains && p_.gpus == o.p_.gpus && p_.nics == o.p_.nics &&
         p_.gpu_paths == o.p_.gpu_paths && p_.nic_paths == o.p_.nic_paths && rails_ == o.rails_;
}

}  // namespace locmoe::topo
