// Real machine topologies (tests/data/topologies): each file was read by hand and its facts are
// written below as tables (GPU and NIC bus ids, NUMA node of each, which PCIe switch each device
// sits under). Expected path classes and rails are derived from those tables by the rules of
// topology.h (same switch -> PIX, nested switches -> PXB, same NUMA node -> NODE, else SYS; rails:
// the NIC under the GPU's own switch), never copied from the library's output.
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "locmoe/topology/topology.h"

namespace locmoe::topo {
namespace {

const std::string kDir = std::string(LOCMOE_TEST_DATA) + "/topologies/";

// One device as read from the file: bus id, NUMA node, innermost switch ("" = none), outer switch.
struct Dev {
  std::string bus;
  int numa;
  std::string sw;
  std::string outer_sw = "";
};

PathClass expected_class(const Dev& a, const Dev& b) {
  if (!a.sw.empty() && a.sw == b.sw) return PathClass::kPIX;
  if (!a.outer_sw.empty() && a.outer_sw == b.outer_sw) return PathClass::kPXB;
  if (a.numa == b.numa) return PathClass::kNODE;
  return PathClass::kSYS;
}

Topology load_ok(const std::string& name) {
  Result<Topology> t = load_file(kDir + name);
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  if (!t.ok()) std::abort();
  return std::move(t).value();
}

// Checks GPUs (ascending bus ids), NICs, NUMA and path classes of `t` against the tables.
void check_devices(const Topology& t, const std::vector<Dev>& gpus, const std::vector<Dev>& nics) {
  ASSERT_EQ(t.num_gpus(), static_cast<int>(gpus.size()));
  ASSERT_EQ(t.num_nics(), static_cast<int>(nics.size()));
  for (size_t a = 0; a < gpus.size(); ++a) {
    EXPECT_EQ(t.gpus()[a].pci_bus_id, gpus[a].bus);
    EXPECT_EQ(t.gpus()[a].numa, gpus[a].numa) << gpus[a].bus;
    for (size_t b = 0; b < gpus.size(); ++b) {
      PathClass want = a == b ? PathClass::kX : expected_class(gpus[a], gpus[b]);
      EXPECT_EQ(t.gpu_path(a, b).cls, want) << gpus[a].bus << " - " << gpus[b].bus << ": "
                                            << path_name(t.gpu_path(a, b));
    }
    for (size_t k = 0; k < nics.size(); ++k)
      EXPECT_EQ(t.nic_path(a, k).cls, expected_class(gpus[a], nics[k]))
          << gpus[a].bus << " - NIC " << nics[k].bus << ": " << path_name(t.nic_path(a, k));
  }
  for (size_t k = 0; k < nics.size(); ++k) {
    EXPECT_EQ(t.nics()[k].pci_bus_id, nics[k].bus);
    EXPECT_EQ(t.nics()[k].numa, nics[k].numa);
  }
}

void check_rails(const Topology& t, const std::map<std::string, std::string>& rail_of) {
  for (int a = 0; a < t.num_gpus(); ++a) {
    ASSERT_GE(t.rail(a), 0);
    EXPECT_EQ(t.nics()[t.rail(a)].label(), rail_of.at(t.gpus()[a].pci_bus_id)) << t.gpus()[a].pci_bus_id;
  }
}

void check_numa(const Topology& t, const std::vector<std::pair<int, std::string>>& numa) {
  ASSERT_EQ(t.numa_domains().size(), numa.size());
  for (size_t i = 0; i < numa.size(); ++i) {
    EXPECT_EQ(t.numa_domains()[i].os_index, numa[i].first);
    EXPECT_EQ(cpu_list_string(t.numa_domains()[i].cpus), numa[i].second);
  }
}

TEST(TopologyFixtures, AzureNdH100v5) {
  Topology t = load_ok("azure-ndv5.nccl.xml");
  // Each switch ffff:ff:0N.0 holds one GPU and one IB NIC; switches 1-4 on NUMA 0, 5-8 on NUMA 1.
  std::vector<Dev> gpus = {{"0001:00:00.0", 0, "s1"}, {"0002:00:00.0", 0, "s2"}, {"0003:00:00.0", 0, "s3"},
                           {"0008:00:00.0", 0, "s4"}, {"0009:00:00.0", 1, "s5"}, {"000a:00:00.0", 1, "s6"},
                           {"000b:00:00.0", 1, "s7"}, {"000c:00:00.0", 1, "s8"}};
  std::vector<Dev> nics = {{"0101:00:00.0", 0, "s1"}, {"0102:00:00.0", 0, "s2"}, {"0103:00:00.0", 0, "s3"},
                           {"0104:00:00.0", 0, "s4"}, {"0105:00:00.0", 1, "s5"}, {"0106:00:00.0", 1, "s6"},
                           {"0107:00:00.0", 1, "s7"}, {"0108:00:00.0", 1, "s8"}};
  check_devices(t, gpus, nics);
  check_numa(t, {{0, "48-95"}, {1, "0-47"}});  // affinity masks ffffffff,ffff0000,00000000 and the reverse
  check_rails(t, {{"0001:00:00.0", "0101:00:00.0"}, {"0002:00:00.0", "0102:00:00.0"}, {"0003:00:00.0", "0103:00:00.0"},
                  {"0008:00:00.0", "0104:00:00.0"}, {"0009:00:00.0", "0105:00:00.0"}, {"000a:00:00.0", "0106:00:00.0"},
                  {"000b:00:00.0", "0107:00:00.0"}, {"000c:00:00.0", "0108:00:00.0"}});
  for (const Nic& n : t.nics()) EXPECT_EQ(n.kind, NicKind::kInfiniBand);
  EXPECT_EQ(cpu_list_string(t.gpus()[0].cpus), "48-95");
}

TEST(TopologyFixtures, AzureNdA100v4) {
  Topology t = load_ok("azure-ndv4.nccl.xml");
  // One switch per NUMA node, each with two GPUs and two NICs.
  std::vector<Dev> gpus = {{"0001:00:00.0", 1, "s2"}, {"0002:00:00.0", 1, "s2"}, {"0003:00:00.0", 0, "s1"},
                           {"0004:00:00.0", 0, "s1"}, {"000b:00:00.0", 3, "s4"}, {"000c:00:00.0", 3, "s4"},
                           {"000d:00:00.0", 2, "s3"}, {"000e:00:00.0", 2, "s3"}};
  std::vector<Dev> nics = {{"0101:00:00.0", 1, "s2"}, {"0102:00:00.0", 1, "s2"}, {"0103:00:00.0", 0, "s1"},
                           {"0104:00:00.0", 0, "s1"}, {"0105:00:00.0", 3, "s4"}, {"0106:00:00.0", 3, "s4"},
                           {"0107:00:00.0", 2, "s3"}, {"0108:00:00.0", 2, "s3"}};
  check_devices(t, gpus, nics);
  check_numa(t, {{0, "0-23"}, {1, "24-47"}, {2, "48-71"}, {3, "72-95"}});
  // Two GPUs and two NICs per switch: one-to-one in bus-id order, no NIC shared.
  check_rails(t, {{"0001:00:00.0", "0101:00:00.0"}, {"0002:00:00.0", "0102:00:00.0"}, {"0003:00:00.0", "0103:00:00.0"},
                  {"0004:00:00.0", "0104:00:00.0"}, {"000b:00:00.0", "0105:00:00.0"}, {"000c:00:00.0", "0106:00:00.0"},
                  {"000d:00:00.0", "0107:00:00.0"}, {"000e:00:00.0", "0108:00:00.0"}});
}

TEST(TopologyFixtures, AzureNdV100v2) {
  Topology t = load_ok("azure-ndv2.nccl.xml");
  // No switches: every device hangs from its CPU. One NIC, on NUMA 0.
  std::vector<Dev> gpus;
  for (int i = 1; i <= 8; ++i) gpus.push_back({fmt::format("{:04x}:00:00.0", i), i <= 4 ? 0 : 1, ""});
  check_devices(t, gpus, {{"0101:00:00.0", 0, ""}});
  check_numa(t, {{0, "0-19"}, {1, "20-39"}});
  std::map<std::string, std::string> rails;
  for (const Dev& g : gpus) rails[g.bus] = "0101:00:00.0";  // fewer NICs than GPUs: all share it
  check_rails(t, rails);
}

TEST(TopologyFixtures, AzureNcA100v4) {
  Topology t = load_ok("azure-ncv4.nccl.xml");
  std::vector<Dev> gpus = {{"0001:00:00.0", 0, ""}, {"0002:00:00.0", 1, ""}, {"0003:00:00.0", 2, ""}, {"0004:00:00.0", 3, ""}};
  ASSERT_EQ(t.num_gpus(), 4);
  for (int a = 0; a < 4; ++a) {
    EXPECT_EQ(t.gpus()[a].pci_bus_id, gpus[a].bus);
    EXPECT_EQ(t.gpus()[a].numa, a);
    EXPECT_EQ(t.gpus()[a].vendor_id, 0x10de);
    EXPECT_EQ(t.gpus()[a].device_id, 0x20b5);
    for (int b = 0; b < 4; ++b)  // the only <nvlink> of each GPU targets itself: no NVLink between GPUs
      EXPECT_EQ(t.gpu_path(a, b).cls, a == b ? PathClass::kX : PathClass::kSYS);
  }
  // One Ethernet NIC without PCI bus id: <nic><net name="eth0" speed="100000"> under NUMA 0.
  ASSERT_EQ(t.num_nics(), 1);
  const Nic& eth = t.nics()[0];
  EXPECT_EQ(eth.name, "eth0");
  EXPECT_EQ(eth.pci_bus_id, "");
  EXPECT_EQ(eth.label(), "eth0");
  EXPECT_EQ(eth.numa, 0);
  EXPECT_EQ(eth.speed_mbps, 100000);
  EXPECT_EQ(eth.kind, NicKind::kEthernet);
  for (int a = 0; a < 4; ++a) {
    EXPECT_EQ(t.nic_path(a, 0).cls, a == 0 ? PathClass::kNODE : PathClass::kSYS);
    EXPECT_EQ(t.rail(a), 0);
  }
  check_numa(t, {{0, "0-23"}, {1, "24-47"}, {2, "48-71"}, {3, "72-95"}});
}

// The DGX-2 file's NVLinkBandwidth matrix gives each GPU 6 links of 25000 MB/s, all to NVSwitches
// (12 switches, 6 per baseboard): every GPU pair is NV6, as nvidia-smi shows on that machine.
TEST(TopologyFixtures, NvidiaDgx2NvLinks) {
  Topology t = load_ok("nvidia-dgx2.hwloc.xml");
  ASSERT_EQ(t.num_gpus(), 16);
  for (int a = 0; a < 16; ++a)
    for (int b = 0; b < 16; ++b)
      EXPECT_EQ(path_name(t.gpu_path(a, b)), a == b ? "X" : "NV6") << a << " - " << b;
}

// Without the NVLink matrix, the PCI tree decides: the DGX-2's nested PLX switches give PIX/PXB.
TEST(TopologyFixtures, NvidiaDgx2Hwloc) {
  std::ifstream in(kDir + "nvidia-dgx2.hwloc.xml");
  std::string xml((std::istreambuf_iterator<char>(in)), {});
  const size_t from = xml.find("<distances2hetero"), to = xml.find("</distances2hetero>");
  ASSERT_TRUE(from != std::string::npos && to != std::string::npos);
  xml.erase(from, to + std::strlen("</distances2hetero>") - from);
  const std::string path = testing::TempDir() + "/dgx2-no-nvlink.xml";
  std::ofstream(path) << xml;
  Result<Topology> loaded = load_file(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  const Topology& t = *loaded;
  // Per package: two host bridges; under each a top switch with two second-level switches, each
  // with two GPUs. Second-level switch names are the GPUs' first bus byte pair.
  std::vector<Dev> gpus = {
      {"0000:34:00.0", 0, "32", "2c"}, {"0000:36:00.0", 0, "32", "2c"}, {"0000:39:00.0", 0, "37", "2c"},
      {"0000:3b:00.0", 0, "37", "2c"}, {"0000:57:00.0", 0, "55", "4f"}, {"0000:59:00.0", 0, "55", "4f"},
      {"0000:5c:00.0", 0, "5a", "4f"}, {"0000:5e:00.0", 0, "5a", "4f"}, {"0000:b7:00.0", 1, "b5", "af"},
      {"0000:b9:00.0", 1, "b5", "af"}, {"0000:bc:00.0", 1, "ba", "af"}, {"0000:be:00.0", 1, "ba", "af"},
      {"0000:e0:00.0", 1, "de", "d8"}, {"0000:e2:00.0", 1, "de", "d8"}, {"0000:e5:00.0", 1, "e3", "d8"},
      {"0000:e7:00.0", 1, "e3", "d8"}};
  check_devices(t, gpus, {});  // NVSwitches (class 0x0680) are neither GPUs nor NICs
  check_numa(t, {{0, "0-1"}, {1, "24-25"}});
  for (const Gpu& g : t.gpus()) {
    EXPECT_EQ(g.vendor_id, 0x10de);
    EXPECT_EQ(g.device_id, 0x1db8);
    EXPECT_EQ(g.name, "Tesla V100-SXM3-32GB-H");
  }
  for (int a = 0; a < t.num_gpus(); ++a) EXPECT_EQ(t.rail(a), -1);
  EXPECT_EQ(cpu_list_string(t.gpus()[15].cpus), "24-25");
}

// The hwloc XML we write for an hwloc-sourced model is loadable again and gives the same model.
TEST(TopologyFixtures, HwlocXmlDumpRoundTrip) {
  Topology t = load_ok("nvidia-dgx2.hwloc.xml");
  Result<std::string> xml = to_hwloc_xml(t);
  ASSERT_TRUE(xml.ok()) << xml.status().to_string();
  std::string path = testing::TempDir() + "/dgx2-dump.xml";
  ASSERT_TRUE(dump_file(t, path).ok());
  Result<Topology> again = load_file(path);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_TRUE(again->same_model(t));
}

// NCCL-sourced models have no hwloc tree: the XML dump says so instead of writing something wrong.
TEST(TopologyFixtures, NcclModelHasNoHwlocXml) {
  Topology t = load_ok("azure-ndv5.nccl.xml");
  Result<std::string> xml = to_hwloc_xml(t);
  ASSERT_FALSE(xml.ok());
  EXPECT_EQ(xml.status().code(), Code::kUnsupported);
  EXPECT_NE(xml.status().message().find("azure-ndv5.nccl.xml"), std::string::npos);
  EXPECT_FALSE(dump_file(t, testing::TempDir() + "/x.xml").ok());
}

// JSON: the document has the documented fields, and reading it back gives the same model.
TEST(TopologyFixtures, JsonRoundTripAndFields) {
  for (const char* name : {"azure-ndv5.nccl.xml", "azure-ndv4.nccl.xml", "azure-ndv2.nccl.xml", "azure-ncv4.nccl.xml",
                           "nvidia-dgx2.hwloc.xml"}) {
    SCOPED_TRACE(name);
    Topology t = load_ok(name);
    std::string text = to_json(t);
    Result<Topology> back = from_json(text);
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_TRUE(back->same_model(t));
    nlohmann::json doc = nlohmann::json::parse(text);
    ASSERT_EQ(doc["gpus"].size(), static_cast<size_t>(t.num_gpus()));
    ASSERT_EQ(doc["nics"].size(), static_cast<size_t>(t.num_nics()));
    for (const auto& g : doc["gpus"]) {
      for (const char* key : {"pci_bus_id", "numa", "nearest_nic", "nic_path"}) EXPECT_TRUE(g.contains(key)) << key;
      if (t.num_nics() == 0) {
        EXPECT_TRUE(g["nearest_nic"].is_null());
      } else {
        EXPECT_TRUE(parse_path(g["nic_path"].get<std::string>()).ok());
      }
    }
    for (const auto& n : doc["nics"])
      for (const char* key : {"name", "pci_bus_id", "numa", "speed_mbps"}) EXPECT_TRUE(n.contains(key)) << key;
  }
  Topology nc = load_ok("azure-ncv4.nccl.xml");
  nlohmann::json doc = nlohmann::json::parse(to_json(nc));
  EXPECT_EQ(doc["gpus"][0]["nearest_nic"], "eth0");  // no bus id: the name
  EXPECT_EQ(doc["gpus"][0]["nic_path"], "NODE");
  EXPECT_EQ(doc["nics"][0]["speed_mbps"], 100000);
  EXPECT_TRUE(doc["nics"][0]["pci_bus_id"].is_null());
}

}  // namespace
}  // namespace locmoe::topo
