// Topology files: format detection, validation of hwloc XML before hwloc sees it (hwloc 2.9
// segfaults on some malformed files, e.g. an object without complete_cpuset), and our own reader
// of NCCL topology files. Parsed with pugixml; hwloc.h stays in hwloc_source.cc.
#include <pugixml.hpp>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <map>
#include <cctype>
#include <set>

#include "locmoe/core/check.h"
#include "pci_tree.h"

namespace locmoe::topo {
namespace {

using detail::PciTree;

// Context for messages: "topology file 'x.xml', line 12".
class Where {
 public:
  Where(const std::string& path, const std::string& content) : path_(path), content_(content) {}
  std::string at(pugi::xml_node node) const { return at_offset(node.offset_debug()); }
  std::string at_offset(ptrdiff_t offset) const {
    if (offset < 0) return fmt::format("topology file '{}'", path_);
    size_t end = std::min(static_cast<size_t>(offset), content_.size());
    return fmt::format("topology file '{}', line {}", path_, 1 + std::count(content_.begin(), content_.begin() + end, '\n'));
  }
  const std::string& path() const { return path_; }

 private:
  const std::string& path_;
  const std::string& content_;
};

using detail::parse_hex;
using detail::parse_long;

// --- hwloc XML validation ----------------------------------------------------------------------

// Object types hwloc 2.9 reads (v2 names, and the v1 names its importer still accepts).
const std::set<std::string_view> kNormalTypes = {
    "Machine", "Package", "Die", "Core", "PU", "Group", "NUMANode", "MemCache", "L1Cache", "L2Cache",
    "L3Cache", "L4Cache", "L5Cache", "L1iCache", "L2iCache", "L3iCache", "System", "Socket", "Cache", "Node"};
constexpr long kMaxOsIndex = 1L << 20;  // CPUs or NUMA nodes; far above any machine
const std::set<std::string_view> kIoTypes = {"Bridge", "PCIDev", "OSDev", "Misc"};


// hwloc's XML bitmap syntax: comma-separated 32-bit hex words, the first possibly "0xf...f"
// (infinitely many bits set).
// (A loop, not std::regex: its recursion overflows the stack on a long bitmap.)
bool valid_bitmap(std::string_view text) {
  for (bool first = true;; first = false) {
    if (!text.starts_with("0x")) return false;
    text.remove_prefix(2);
    if (first && text.starts_with("f...f")) {
      text.remove_prefix(5);
    } else {
      size_t digits = 0;
      while (digits < text.size() && std::isxdigit(static_cast<unsigned char>(text[digits]))) ++digits;
      if (digits == 0 || digits > 8) return false;
      text.remove_prefix(digits);
    }
    if (text.empty()) return true;
    if (text.front() != ',') return false;
    text.remove_prefix(1);
  }
}

// hwloc 2.9 fails the whole load on a child element it does not expect, and on its error paths it
// leaks the objects imported so far (found by fuzz_nccl_topo / fuzz_hwloc_xml): what it rejects,
// we reject first. Its importer reads an object's <info>/<page_type>/<userdata> children before
// the first child <object> and only <object> after it; <info> takes name and value, <page_type>
// size and count (on NUMA nodes and the top object only); an I/O or Misc object cannot hold
// normal or memory objects, nor Misc hold I/O ones. <userdata> (opaque application data, which we
// never need and whose content hwloc checks against a length attribute) is refused.
bool attributes_within(pugi::xml_node node, std::initializer_list<std::string_view> allowed) {
  for (pugi::xml_attribute attr : node.attributes())
    if (std::find(allowed.begin(), allowed.end(), std::string_view(attr.name())) == allowed.end()) return false;
  return true;
}

Status validate_object_children(const Where& where, pugi::xml_node obj, std::string_view type, int depth) {
  const bool io_parent = kIoTypes.count(type) > 0;  // Bridge, PCIDev, OSDev, Misc
  bool seen_object = false;
  for (pugi::xml_node child : obj.children()) {
    if (child.type() != pugi::node_element) continue;
    std::string_view tag = child.name();
    if (tag == "object") {
      seen_object = true;
      std::string_view ctype = child.attribute("type").value();
      const bool child_io = kIoTypes.count(ctype) > 0 && ctype != "Misc";
      LOCMOE_CHECK(!io_parent || kIoTypes.count(ctype) > 0, Code::kParseError,
                   "{}: a {} object inside a {} object (hwloc allows only I/O and Misc objects there)",
                   where.at(child), ctype, type);
      LOCMOE_CHECK(type != "Misc" || !child_io, Code::kParseError, "{}: a {} object inside a Misc object",
                   where.at(child), ctype);
      continue;
    }
    LOCMOE_CHECK(!seen_object, Code::kParseError,
                 "{}: <{}> after a child <object>; hwloc reads <info> and <page_type> before child objects",
                 where.at(child), tag);
    if (tag == "info") {
      LOCMOE_CHECK(attributes_within(child, {"name", "value"}), Code::kParseError,
                   "{}: <info> may only have name and value attributes", where.at(child));
    } else if (tag == "page_type") {
      LOCMOE_CHECK(attributes_within(child, {"size", "count"}), Code::kParseError,
                   "{}: <page_type> may only have size and count attributes", where.at(child));
      LOCMOE_CHECK(type == "NUMANode" || type == "Node" || depth == 0, Code::kParseError,
                   "{}: <page_type> inside a {} object (only NUMA nodes and the top object have them)",
                   where.at(child), type);
    } else {
      LOCMOE_CHECK(tag == "distances", Code::kParseError,
                   "{}: <{}> inside a {} object; hwloc XML objects contain only <object>, <info>, "
                   "<page_type> and (version 1) <distances>",
                   where.at(child), tag, type);
    }
  }
  return ok_status();
}

Status validate_object(const Where& where, pugi::xml_node obj, int depth) {
  LOCMOE_CHECK(depth < 256, Code::kParseError, "{}: objects nested more than 256 deep", where.at(obj));
  std::string_view type = obj.attribute("type").value();
  LOCMOE_CHECK(!type.empty(), Code::kParseError, "{}: <object> without a type attribute", where.at(obj));
  const bool normal = kNormalTypes.count(type) > 0;
  LOCMOE_CHECK(normal || kIoTypes.count(type) > 0, Code::kParseError, "{}: unknown hwloc object type '{}'",
               where.at(obj), type);
  for (pugi::xml_attribute attr : obj.attributes()) {
    std::string_view name = attr.name();
    if (name.ends_with("set")) {
      LOCMOE_CHECK(valid_bitmap(attr.value()), Code::kParseError,
                   "{}: {} object has {}=\"{}\", not an hwloc bitmap (0x...,0x...)", where.at(obj), type, name,
                   attr.value());
    }
    if (name == "os_index" || name == "depth" || name == "osdev_type") {
      long v = 0;
      LOCMOE_CHECK(parse_long(attr.value(), v) && v >= 0, Code::kParseError,
                   "{}: {} object has {}=\"{}\", not a non-negative integer", where.at(obj), type, name, attr.value());
      // hwloc sizes bitmaps by OS indices: a huge one (or a missing one, read as ~0u) makes it
      // spin for tens of seconds.
      LOCMOE_CHECK(name != "os_index" || v < kMaxOsIndex, Code::kParseError,
                   "{}: {} object has os_index {}, expected below {}", where.at(obj), type, v, kMaxOsIndex);
    }
    // hwloc reads gp_index, and id="obj<N>" (hwloc 3 files), with strtoull: "obj-4" would become
    // 2^64-4, which it then exports as gp_index and which we used to refuse on reading back (found
    // by fuzz_nccl_topo's round trip). Both are unsigned 64-bit decimals.
    if (name == "gp_index" || (name == "id" && std::string_view(attr.value()).starts_with("obj"))) {
      std::string_view digits = attr.value();
      if (name == "id") digits.remove_prefix(3);
      unsigned long long v = 0;
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
      LOCMOE_CHECK(!digits.empty() && ec == std::errc() && end == digits.data() + digits.size(), Code::kParseError,
                   "{}: {} object has {}=\"{}\", not {}a non-negative 64-bit integer", where.at(obj), type, name,
                   attr.value(), name == "id" ? "'obj' followed by " : "");
    }
  }
  if (normal) {
    // hwloc 2.9 dereferences these without checking (the crash this validation exists for).
    for (const char* attr : {"cpuset", "complete_cpuset"})
      LOCMOE_CHECK(!obj.attribute(attr).empty(), Code::kParseError, "{}: {} object without the required {} attribute",
                   where.at(obj), type, attr);
    const bool numa = type == "NUMANode" || type == "Node";
    LOCMOE_CHECK(!(numa || type == "PU") || !obj.attribute("os_index").empty(), Code::kParseError,
                 "{}: {} object without the required os_index attribute", where.at(obj), type);
    if (numa || !obj.attribute("nodeset").empty())
      for (const char* attr : {"nodeset", "complete_nodeset"})
        LOCMOE_CHECK(!obj.attribute(attr).empty(), Code::kParseError,
                     "{}: {} object without the required {} attribute", where.at(obj), type, attr);
  } else if (type == "PCIDev") {
    Result<std::string> id = normalize_pci_bus_id(obj.attribute("pci_busid").value());
    LOCMOE_CHECK(id.ok(), Code::kParseError, "{}: PCIDev object needs a pci_busid \"dddd:bb:dd.f\", has \"{}\"",
                 where.at(obj), obj.attribute("pci_busid").value());
  } else if (type == "Bridge") {
    std::string_view bt = obj.attribute("bridge_type").value();
    LOCMOE_CHECK(bt == "0-1" || bt == "1-1", Code::kParseError,
                 "{}: Bridge object needs bridge_type \"0-1\" (host) or \"1-1\" (PCI), has \"{}\"", where.at(obj), bt);
    if (bt == "1-1") {
      Result<std::string> id = normalize_pci_bus_id(obj.attribute("pci_busid").value());
      LOCMOE_CHECK(id.ok(), Code::kParseError, "{}: PCI Bridge object needs a pci_busid \"dddd:bb:dd.f\", has \"{}\"",
                   where.at(obj), obj.attribute("pci_busid").value());
    }
    LOCMOE_CHECK(!obj.attribute("bridge_pci").empty(), Code::kParseError,
                 "{}: Bridge object without the required bridge_pci attribute", where.at(obj));
  } else if (type == "OSDev") {
    LOCMOE_CHECK(!obj.attribute("osdev_type").empty() && !obj.attribute("name").empty(), Code::kParseError,
                 "{}: OSDev object needs name and osdev_type attributes", where.at(obj));
  }
  LOCMOE_RETURN_IF_ERROR(validate_object_children(where, obj, type, depth));
  for (pugi::xml_node child : obj.children("object"))
    LOCMOE_RETURN_IF_ERROR(validate_object(where, child, depth + 1));
  return ok_status();
}

// hwloc hands the file to libxml2, which honours <?xml encoding="..."?> through iconv; an unknown
// encoding name makes it fail and leak its converter state (found by fuzz_hwloc_xml). hwloc
// writes UTF-8 and nothing else is needed here: accept UTF-8 and its ASCII subset only.
Status validate_xml_encoding(const Where& where, std::string_view content) {
  size_t start = content.find_first_not_of(" \t\r\n");
  if (start == std::string_view::npos || content.substr(start, 5) != "<?xml") return ok_status();
  std::string_view decl = content.substr(start, content.find("?>", start) - start);
  size_t at = decl.find("encoding");
  if (at == std::string_view::npos) return ok_status();
  size_t open = decl.find_first_of("'\"", at);
  size_t close = open == std::string_view::npos ? open : decl.find(decl[open], open + 1);
  std::string enc(open == std::string_view::npos || close == std::string_view::npos ? decl.substr(at)
                                                                                     : decl.substr(open + 1, close - open - 1));
  std::transform(enc.begin(), enc.end(), enc.begin(), [](unsigned char c) { return std::tolower(c); });
  LOCMOE_CHECK(enc == "utf-8" || enc == "utf8" || enc == "us-ascii" || enc == "ascii", Code::kParseError,
               "{}: XML encoding \"{}\" is not supported for hwloc XML (expected UTF-8)", where.at_offset(0), enc);
  return ok_status();
}

Status validate_hwloc_xml(const Where& where, pugi::xml_node root) {
  pugi::xml_node top = root.child("object");
  LOCMOE_CHECK(top, Code::kParseError, "{}: hwloc XML <topology> has no <object>", where.at(root));
  std::string_view type = top.attribute("type").value();
  LOCMOE_CHECK(type == "Machine" || type == "System", Code::kParseError,
               "{}: the top hwloc object is '{}', expected 'Machine'", where.at(top), type);
  LOCMOE_CHECK(!top.next_sibling("object"), Code::kParseError, "{}: hwloc XML has several top objects",
               where.at(top.next_sibling("object")));
  return validate_object(where, top, 0);
}

// --- NCCL topology files -------------------------------------------------------------------------

// Linux cpumask "ffffffff,ffff0000,00000000": 32-bit hex words, most significant first.
Result<std::vector<int>> parse_cpumask(const Where& where, pugi::xml_node node, std::string_view text) {
  std::vector<std::string_view> words;
  for (size_t start = 0;;) {
    size_t comma = text.find(',', start);
    words.push_back(text.substr(start, comma == std::string_view::npos ? comma : comma - start));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  std::vector<int> cpus;
  for (size_t k = 0; k < words.size(); ++k) {
    unsigned long bits = 0;
    std::string_view w = words[words.size() - 1 - k];
    LOCMOE_CHECK(w.size() <= 10 && parse_hex(w, bits) && bits <= 0xffffffffUL, Code::kParseError,
                 "{}: affinity \"{}\" is not a CPU mask of comma-separated 32-bit hex words", where.at(node), text);
    for (int b = 0; b < 32; ++b)
      if (bits >> b & 1UL) cpus.push_back(static_cast<int>(32 * k) + b);
  }
  std::sort(cpus.begin(), cpus.end());
  return cpus;
}

// PCI class code in attribute `attr` ("0x030200" -> 0x0302, programming interface dropped); -1
// when absent.
Result<long> class_code(const Where& where, pugi::xml_node node, const char* attr) {
  std::string_view text = node.attribute(attr).value();
  if (text.empty()) return -1L;
  unsigned long v = 0;
  LOCMOE_CHECK(parse_hex(text, v), Code::kParseError, "{}: {} \"{}\" is not hexadecimal", where.at(node), attr, text);
  std::string_view digits = text.substr(text.starts_with("0x") || text.starts_with("0X") ? 2 : 0);
  return static_cast<long>(digits.size() > 4 ? v >> 8 : v);
}

NicKind kind_from_name(std::string_view name) {
  if (name.starts_with("mlx") || name.starts_with("ib")) return NicKind::kInfiniBand;
  if (name.starts_with("eth") || name.starts_with("en")) return NicKind::kEthernet;
  return NicKind::kUnknown;
}

class NcclReader {
 public:
  NcclReader(const Where& where, TopologyParts& parts) : where_(where), parts_(parts) {}

  Status read(pugi::xml_node system) {
    const size_t cpus = std::distance(system.children("cpu").begin(), system.children("cpu").end());
    LOCMOE_CHECK(cpus > 0, Code::kParseError, "{}: NCCL topology <system> without any <cpu> element",
                 where_.at(system));
    int root = tree_.add(PciTree::Kind::kLocality, -1, static_cast<int>(cpus));
    std::set<int> numa_ids;
    for (pugi::xml_node cpu : system.children("cpu")) {
      long numa = 0;
      LOCMOE_CHECK(parse_long(cpu.attribute("numaid").value(), numa) && numa >= 0 && numa < kMaxOsIndex,
                   Code::kParseError, "{}: <cpu> needs a numaid attribute (integer in [0, {})), has \"{}\"",
                   where_.at(cpu), kMaxOsIndex,
                   cpu.attribute("numaid").value());
      LOCMOE_CHECK(numa_ids.insert(static_cast<int>(numa)).second, Code::kParseError,
                   "{}: a second <cpu numaid=\"{}\">", where_.at(cpu), numa);
      std::vector<int> local;
      if (!cpu.attribute("affinity").empty()) {
        LOCMOE_ASSIGN_OR_RETURN(local, parse_cpumask(where_, cpu, cpu.attribute("affinity").value()));
      }
      parts_.numa_domains.push_back({static_cast<int>(numa), local});
      Locality loc{static_cast<int>(numa), local, tree_.add(PciTree::Kind::kLocality, root, 1)};
      LOCMOE_RETURN_IF_ERROR(read_children(cpu, loc, loc.node));
    }
    return finish();
  }

 private:
  struct Locality {
    int numa;
    std::vector<int> cpus;
    int node;
  };
  struct Link {
    std::string target;
    int count;
    long tclass;
  };

  Status read_children(pugi::xml_node parent, const Locality& loc, int parent_node, int depth = 0) {
    LOCMOE_CHECK(depth < 64, Code::kParseError, "{}: <pci> elements nested more than 64 deep", where_.at(parent));
    for (pugi::xml_node child : parent.children()) {
      std::string_view name = child.name();
      if (name == "pci") {
        LOCMOE_RETURN_IF_ERROR(read_pci(child, loc, parent_node, depth));
      } else if (name == "nic") {
        LOCMOE_RETURN_IF_ERROR(read_nic(child, loc, tree_.add(PciTree::Kind::kDevice, parent_node), "", -1));
      }
    }
    return ok_status();
  }

  Status read_pci(pugi::xml_node pci, const Locality& loc, int parent_node, int depth) {
    Result<std::string> id = normalize_pci_bus_id(pci.attribute("busid").value());
    LOCMOE_CHECK(id.ok(), Code::kParseError, "{}: <pci> needs a busid \"dddd:bb:dd.f\", has \"{}\"",
                 where_.at(pci), pci.attribute("busid").value());
    LOCMOE_ASSIGN_OR_RETURN(long cls, class_code(where_, pci, "class"));
    if (cls == 0x0604 || pci.child("pci")) {  // a switch (NCCL flattens each switch to one <pci>)
      return read_children(pci, loc, tree_.add(PciTree::Kind::kSwitch, parent_node), depth + 1);
    }
    if (cls == 0x0302 || cls == 0x0300 || pci.child("gpu")) {
      Gpu gpu;
      gpu.pci_bus_id = *id;
      unsigned long v = 0;
      if (parse_hex(pci.attribute("vendor").value(), v)) gpu.vendor_id = static_cast<uint16_t>(v);
      if (parse_hex(pci.attribute("device").value(), v)) gpu.device_id = static_cast<uint16_t>(v);
      gpu.numa = loc.numa;
      gpu.cpus = loc.cpus;
      for (pugi::xml_node link : pci.child("gpu").children("nvlink")) {
        long count = 0;
        LOCMOE_CHECK(parse_long(link.attribute("count").value(), count) && count >= 0 && count < 1024,
                     Code::kParseError, "{}: <nvlink> count \"{}\" is not an integer in [0, 1024)", where_.at(link),
                     link.attribute("count").value());
        // Targets that are not a PCI bus id (NVSwitch placeholders) simply match no GPU.
        Result<std::string> target = normalize_pci_bus_id(link.attribute("target").value());
        LOCMOE_ASSIGN_OR_RETURN(long tclass, class_code(where_, link, "tclass"));
        links_.push_back({target.ok() ? *target : std::string(link.attribute("target").value()),
                          static_cast<int>(count), tclass});
        link_owner_.push_back(static_cast<int>(parts_.gpus.size()));
      }
      parts_.gpus.push_back(std::move(gpu));
      gpu_nodes_.push_back(tree_.add(PciTree::Kind::kDevice, parent_node));
      return ok_status();
    }
    if (cls == 0x0207 || cls == 0x0200 || pci.child("nic")) {
      int node = tree_.add(PciTree::Kind::kDevice, parent_node);
      if (!pci.child("nic")) return add_nic(loc, node, *id, "", -1, cls);
      for (pugi::xml_node nic : pci.children("nic"))
        LOCMOE_RETURN_IF_ERROR(read_nic(nic, loc, node, *id, cls));
    }
    return ok_status();  // other devices (NVSwitches, storage) do not matter here
  }

  // <nic> with <net> children (one NIC each); `node` is its device's tree node, `bus_id` that of
  // the enclosing <pci> ("" for a <nic> directly under a <cpu>).
  Status read_nic(pugi::xml_node nic, const Locality& loc, int node, const std::string& bus_id, long cls) {
    bool any = false;
    for (pugi::xml_node net : nic.children("net")) {
      long speed = -1;
      if (!net.attribute("speed").empty())
        LOCMOE_CHECK(parse_long(net.attribute("speed").value(), speed), Code::kParseError,
                     "{}: <net> speed \"{}\" is not an integer (Mb/s)", where_.at(net), net.attribute("speed").value());
      LOCMOE_RETURN_IF_ERROR(add_nic(loc, node, bus_id, net.attribute("name").value(), speed, cls));
      any = true;
    }
    if (!any && !bus_id.empty()) return add_nic(loc, node, bus_id, "", -1, cls);
    return ok_status();
  }

  Status add_nic(const Locality& loc, int node, const std::string& bus_id, std::string name, long speed, long cls) {
    LOCMOE_CHECK(!bus_id.empty() || !name.empty(), Code::kParseError,
                 "topology file '{}': a <net> without name outside any <pci>", where_.path());
    Nic n;
    n.kind = cls == 0x0207 ? NicKind::kInfiniBand : cls == 0x0200 ? NicKind::kEthernet : kind_from_name(name);
    n.name = std::move(name);
    n.pci_bus_id = bus_id;
    n.numa = loc.numa;
    n.speed_mbps = speed > 0 ? speed : -1;
    parts_.nics.push_back(std::move(n));
    nic_nodes_.push_back(node);
    return ok_status();
  }

  Status finish() {
    detail::NvLinks nv;
    std::map<std::string, int> gpu_index;
    for (size_t a = 0; a < parts_.gpus.size(); ++a) gpu_index[parts_.gpus[a].pci_bus_id] = static_cast<int>(a);
    for (size_t i = 0; i < links_.size(); ++i) {
      const Link& l = links_[i];
      int a = link_owner_[i];
      if (auto it = gpu_index.find(l.target); it != gpu_index.end()) {
        if (it->second != a) nv.direct[{a, it->second}] += l.count;  // a link to itself says nothing
      } else if (l.tclass == 0x0680) {  // NVSwitch
        nv.to_switch[a] += l.count;
      }
    }
    detail::fill_paths(tree_, gpu_nodes_, nic_nodes_, nv, parts_);
    return ok_status();
  }

  const Where& where_;
  TopologyParts& parts_;
  PciTree tree_;
  std::vector<int> gpu_nodes_, nic_nodes_;
  std::vector<Link> links_;
  std::vector<int> link_owner_;
};

}  // namespace

Result<Topology> load_file(const std::string& path) {
  LOCMOE_CHECK(!path.empty(), Code::kInvalidArgument, "topology file name is empty");
  LOCMOE_ASSIGN_OR_RETURN(std::string content, detail::read_topology_file(path));
  Where where(path, content);
  pugi::xml_document doc;
  pugi::xml_parse_result parsed = doc.load_buffer(content.data(), content.size(), pugi::parse_default);
  LOCMOE_CHECK(parsed.status != pugi::status_no_document_element, Code::kParseError,
               "topology file '{}': unknown format: not XML (no root element); expected hwloc XML or an NCCL "
               "topology file", path);
  LOCMOE_CHECK(parsed, Code::kParseError, "{}: not well-formed XML: {} (truncated or malformed file?)",
               where.at_offset(parsed.offset), parsed.description());
  pugi::xml_node root = doc.document_element();
  std::string_view name = root.name();
  if (name == "topology") {
    LOCMOE_RETURN_IF_ERROR(validate_xml_encoding(where, content));
    LOCMOE_RETURN_IF_ERROR(validate_hwloc_xml(where, root));
    return detail::load_hwloc_xml(content, fmt::format("file '{}' (hwloc XML)", path));
  }
  LOCMOE_CHECK(name == "system", Code::kParseError,
               "topology file '{}': unknown format: root element <{}>, expected <topology> (hwloc XML) or "
               "<system> (NCCL topology)",
               path, name);
  TopologyParts parts;
  parts.source = fmt::format("file '{}' (NCCL topology)", path);
  NcclReader reader(where, parts);
  LOCMOE_RETURN_IF_ERROR(reader.read(root));
  Result<Topology> t = Topology::create(std::move(parts));
  if (!t.ok()) return Status(t.status()).with_context(fmt::format("topology file '{}'", path));
  return t;
}

}  // namespace locmoe::topo
