// JSON and hwloc XML dumps, and the choice of source from LOCMOE_TOPO_* parameters.
#include <cerrno>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "locmoe/topology/topology.h"

namespace locmoe::topo {
namespace {

using nlohmann::json;
using ojson = nlohmann::ordered_json;  // dumps keep the documented field order

ojson or_null(const std::string& s) { return s.empty() ? ojson(nullptr) : ojson(s); }
ojson or_null(int64_t v) { return v < 0 ? ojson(nullptr) : ojson(v); }
ojson hex_or_null(uint16_t v) { return v == 0 ? ojson(nullptr) : ojson(fmt::format("0x{:04x}", v)); }

ojson path_matrix(const std::vector<Path>& paths, size_t cols) {
  ojson rows = ojson::array();
  for (size_t i = 0; cols > 0 && i < paths.size(); i += cols) {
    ojson row = ojson::array();
    for (size_t j = 0; j < cols; ++j) row.push_back(path_name(paths[i + j]));
    rows.push_back(row);
  }
  return rows;
}

// Field readers for from_json: a missing or mistyped field throws nlohmann's exception, which
// from_json turns into a Status naming the field.
std::string str_or_empty(const json& j, const char* key) { return j.at(key).is_null() ? "" : j.at(key).get<std::string>(); }
int64_t int_or_minus1(const json& j, const char* key) { return j.at(key).is_null() ? -1 : j.at(key).get<int64_t>(); }

Result<std::vector<Path>> read_matrix(const json& rows, size_t nrows, size_t ncols, const char* what) {
  std::vector<Path> out;
  LOCMOE_CHECK(rows.is_array() && rows.size() == (ncols == 0 ? 0 : nrows), Code::kParseError,
               "{}: expected {} rows", what, nrows);
  for (const json& row : rows) {
    LOCMOE_CHECK(row.is_array() && row.size() == ncols, Code::kParseError, "{}: expected rows of {}", what, ncols);
    for (const json& cell : row) {
      LOCMOE_ASSIGN_OR_RETURN(Path p, parse_path(cell.get<std::string>()));
      out.push_back(p);
    }
  }
  return out;
}

Result<Topology> parse_json(const json& doc) {
  TopologyParts parts;
  parts.source = doc.at("source").get<std::string>();
  for (const json& n : doc.at("numa")) {
    LOCMOE_ASSIGN_OR_RETURN(std::vector<int> cpus, parse_cpu_list(n.at("cpus").get<std::string>()));
    parts.numa_domains.push_back({n.at("os_index").get<int>(), cpus});
  }
  for (const json& g : doc.at("gpus")) {
    Gpu gpu;
    gpu.pci_bus_id = g.at("pci_bus_id").get<std::string>();
    for (auto [key, field] : {std::pair{"vendor_id", &gpu.vendor_id}, std::pair{"device_id", &gpu.device_id}})
      if (!g.at(key).is_null()) *field = static_cast<uint16_t>(std::stoul(g.at(key).get<std::string>(), nullptr, 16));
    gpu.numa = static_cast<int>(int_or_minus1(g, "numa"));
    LOCMOE_ASSIGN_OR_RETURN(gpu.cpus, parse_cpu_list(g.at("cpus").get<std::string>()));
    gpu.name = str_or_empty(g, "name");
    parts.gpus.push_back(std::move(gpu));
  }
  for (const json& n : doc.at("nics")) {
    Nic nic;
    nic.name = str_or_empty(n, "name");
    nic.pci_bus_id = str_or_empty(n, "pci_bus_id");
    nic.numa = static_cast<int>(int_or_minus1(n, "numa"));
    nic.speed_mbps = int_or_minus1(n, "speed_mbps");
    std::string kind = n.at("kind").get<std::string>();
    nic.kind = kind == "ib" ? NicKind::kInfiniBand : kind == "eth" ? NicKind::kEthernet : NicKind::kUnknown;
    parts.nics.push_back(std::move(nic));
  }
  const size_t g = parts.gpus.size(), k = parts.nics.size();
  LOCMOE_ASSIGN_OR_RETURN(parts.gpu_paths, read_matrix(doc.at("gpu_paths"), g, g, "gpu_paths"));
  LOCMOE_ASSIGN_OR_RETURN(parts.nic_paths, read_matrix(doc.at("nic_paths"), g, k, "nic_paths"));
  return Topology::create(std::move(parts));
}

}  // namespace

std::string to_json(const Topology& t, int indent) {
  ojson numa = ojson::array();
  for (const NumaDomain& d : t.numa_domains()) numa.push_back({{"os_index", d.os_index}, {"cpus", cpu_list_string(d.cpus)}});
  ojson gpus = ojson::array();
  for (int a = 0; a < t.num_gpus(); ++a) {
    const Gpu& g = t.gpus()[a];
    const int rail = t.rail(a);
    gpus.push_back({{"pci_bus_id", g.pci_bus_id},
                    {"vendor_id", hex_or_null(g.vendor_id)},
                    {"device_id", hex_or_null(g.device_id)},
                    {"numa", or_null(int64_t{g.numa})},
                    {"cpus", cpu_list_string(g.cpus)},
                    {"name", or_null(g.name)},
                    {"nearest_nic", rail < 0 ? ojson(nullptr) : ojson(t.nics()[rail].label())},
                    {"nic_path", rail < 0 ? ojson(nullptr) : ojson(path_name(t.nic_path(a, rail)))},
                    {"rail", rail < 0 ? ojson(nullptr) : ojson(rail)}});
  }
  ojson nics = ojson::array();
  for (const Nic& n : t.nics())
    nics.push_back({{"name", or_null(n.name)},
                    {"pci_bus_id", or_null(n.pci_bus_id)},
                    {"numa", or_null(int64_t{n.numa})},
                    {"speed_mbps", or_null(n.speed_mbps)},
                    {"kind", nic_kind_name(n.kind)}});
  ojson doc = {{"source", t.source()},
              {"numa", numa},
              {"gpus", gpus},
              {"nics", nics},
              {"gpu_paths", path_matrix(t.parts().gpu_paths, t.gpus().size())},
              {"nic_paths", path_matrix(t.parts().nic_paths, t.nics().size())}};
  // Names and the source path come from files and the environment and need not be UTF-8;
  // nlohmann's default dump throws on invalid UTF-8 (found by fuzz_nccl_topo), so replace such
  // bytes with U+FFFD instead.
  return doc.dump(indent, ' ', false, json::error_handler_t::replace);
}

Result<Topology> from_json(std::string_view text, std::string_view what) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  LOCMOE_CHECK(!doc.is_discarded(), Code::kParseError, "{}: not valid JSON", what);
  try {
    Result<Topology> t = parse_json(doc);
    if (!t.ok()) return Status(t.status()).with_context(what);
    return t;
  } catch (const std::exception& e) {  // missing or mistyped field: nlohmann names it
    return error(Code::kParseError, "{}: {}", what, e.what());
  }
}

Result<std::string> to_hwloc_xml(const Topology& t) {
  LOCMOE_CHECK(!t.parts().hwloc_xml.empty(), Code::kUnsupported,
               "topology from {} has no hwloc tree behind it, so it cannot be written as hwloc XML; "
               "dump it as JSON instead (a file name not ending in .xml)",
               t.source());
  return t.parts().hwloc_xml;
}

Status dump_file(const Topology& t, const std::string& path) {
  std::string text;
  if (path.ends_with(".xml")) {
    LOCMOE_ASSIGN_OR_RETURN(text, to_hwloc_xml(t));
  } else {
    text = to_json(t) + "\n";
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  LOCMOE_CHECK(out.is_open(), Code::kSystemError, "cannot write topology dump '{}': {}", path, std::strerror(errno));
  out << text;
  out.close();
  LOCMOE_CHECK(!out.fail(), Code::kSystemError, "writing topology dump '{}' failed", path);
  return ok_status();
}

Result<Topology> load_default() {
  LOCMOE_ASSIGN_OR_RETURN(std::string file, params::get_string(params::Id::topo_file));
  LOCMOE_ASSIGN_OR_RETURN(std::string synthetic, params::get_string(params::Id::topo_synthetic));
  LOCMOE_CHECK_ARG(file.empty() || synthetic.empty(),
                   "LOCMOE_TOPO_FILE='{}' and LOCMOE_TOPO_SYNTHETIC='{}' are both set; set at most one", file,
                   synthetic);
  Result<Topology> t = !file.empty() ? load_file(file) : !synthetic.empty() ? load_synthetic(synthetic) : discover();
  if (!t.ok()) return t;
  LOCMOE_ASSIGN_OR_RETURN(std::string dump, params::get_string(params::Id::topo_dump_file));
  if (!dump.empty()) {
    Status st = dump_file(*t, dump);
    if (!st.ok()) return st.with_context("LOCMOE_TOPO_DUMP_FILE");
  }
  return t;
}

}  // namespace locmoe::topo
