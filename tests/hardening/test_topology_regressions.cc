// Inputs found by fuzz_nccl_topo / fuzz_hwloc_xml / fuzz_topology_json (tests/fuzz), kept as tests.
#include <unistd.h>

#include <fstream>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "locmoe/topology/topology.h"

namespace locmoe {
namespace {

namespace topo = locmoe::topo;

// Writes `content` to a fresh temporary file and removes it at scope exit.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    char name[] = "/tmp/locmoe_regress_XXXXXX";
    int fd = mkstemp(name);
    EXPECT_GE(fd, 0);
    close(fd);
    path_ = name;
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~TempFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string corpus(const std::string& name) {
  std::ifstream in(std::string(LOCMOE_FUZZ_CORPUS) + "/" + name, std::ios::binary);
  EXPECT_TRUE(in.is_open()) << name;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// fuzz_nccl_topo crash-14d58bc1 (corpus/nccl_topo/regress_net_name_not_utf8.xml): a <net> name
// with bytes 0xff made to_json() throw nlohmann's type_error 316 out of the library (std::terminate).
TEST(TopologyRegression, NicNameThatIsNotUtf8DumpsToJsonWithReplacementCharacter) {
  const std::string bad_name = "eth\xff\xff\xff\xff" "0";
  const std::string text = corpus("nccl_topo/regress_net_name_not_utf8.xml");
  ASSERT_NE(text.find("name=\"" + bad_name + "\""), std::string::npos);
  TempFile file(text);
  auto t = topo::load_file(file.path());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  bool found = false;
  for (const topo::Nic& n : t->nics()) found |= n.name == bad_name;
  EXPECT_TRUE(found);

  std::string json;
  ASSERT_NO_THROW(json = topo::to_json(*t));
  auto doc = nlohmann::json::parse(json, nullptr, false);
  ASSERT_FALSE(doc.is_discarded());
  std::set<std::string> names;
  for (const auto& n : doc["nics"]) names.insert(n["name"].get<std::string>());
  EXPECT_TRUE(names.count("eth\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "0")) << json;
}


// fuzz_nccl_topo leak-7fe3f369 (minimized: corpus/hwloc_xml/regress_unknown_object_child_leak.xml):
// an unknown element (<if/>) inside an OSDev object made hwloc 2.9 fail the load and leak the
// objects it had imported. Our validation now refuses it, naming the element, before hwloc runs
// (under the sanitizer tier LSan would report the leak if hwloc saw the file).
TEST(TopologyRegression, UnknownElementInsideHwlocObjectIsRejectedBeforeHwloc) {
  TempFile file(corpus("hwloc_xml/regress_unknown_object_child_leak.xml"));
  auto t = topo::load_file(file.path());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), Code::kParseError);
  EXPECT_NE(t.status().message().find("<if>"), std::string::npos) << t.status().message();
  EXPECT_EQ(t.status().message().find("hwloc rejected"), std::string::npos) << t.status().message();
}

// fuzz_nccl_topo leak-7fe3f369 (corpus/hwloc_xml/regress_info_bad_attribute_leak.xml): an <info>
// whose value attribute was mangled into "val:e" made hwloc fail and leak in the same way.
TEST(TopologyRegression, InfoWithUnknownAttributeIsRejectedBeforeHwloc) {
  TempFile file(corpus("hwloc_xml/regress_info_bad_attribute_leak.xml"));
  auto t = topo::load_file(file.path());
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("<info> may only have name and value"), std::string::npos)
      << t.status().message();
}

// The other structural rules of hwloc's importer, each on an otherwise valid file: an element
// after the first child object, <page_type> outside a NUMA node, a normal object inside an I/O
// object. Each must be our parse error, not hwloc's.
TEST(TopologyRegression, HwlocStructureRulesAreCheckedBeforeHwloc) {
  auto wrap = [](const std::string& inner) {
    return "<topology version=\"2.0\">\n<object type=\"Machine\" cpuset=\"0x1\" complete_cpuset=\"0x1\" "
           "nodeset=\"0x1\" complete_nodeset=\"0x1\">\n" + inner + "</object>\n</topology>\n";
  };
  const std::string pu = "<object type=\"PU\" os_index=\"0\" cpuset=\"0x1\" complete_cpuset=\"0x1\"/>\n";
  const std::string numa = "<object type=\"NUMANode\" os_index=\"0\" cpuset=\"0x1\" complete_cpuset=\"0x1\" "
                           "nodeset=\"0x1\" complete_nodeset=\"0x1\"/>\n";
  // The valid base loads: the rules below are what breaks each variant.
  {
    TempFile ok(wrap(numa + pu));
    auto t = topo::load_file(ok.path());
    ASSERT_TRUE(t.ok()) << t.status().to_string();
  }
  const std::pair<std::string, std::string> cases[] = {
      {numa + pu + "<info name=\"a\" value=\"b\"/>\n", "after a child <object>"},
      {"<object type=\"Package\" cpuset=\"0x1\" complete_cpuset=\"0x1\"><page_type size=\"4096\" count=\"1\"/>" +
           numa + pu + "</object>\n",
       "<page_type> inside a Package"},
      {numa + pu + "<object type=\"Bridge\" bridge_type=\"0-1\" bridge_pci=\"0000:[00-01]\">" + pu + "</object>\n",
       "a PU object inside a Bridge"},
  };
  for (const auto& [inner, expected] : cases) {
    TempFile file(wrap(inner));
    auto t = topo::load_file(file.path());
    ASSERT_FALSE(t.ok()) << inner;
    EXPECT_NE(t.status().message().find(expected), std::string::npos) << t.status().message();
  }
}


// fuzz_nccl_topo crash-f5d8e393 (corpus/hwloc_xml/regress_id_obj_negative_roundtrip.xml): a Bridge
// with id="obj-04" was accepted; hwloc read it as gp_index 2^64-4 and exported that, and our own
// reader refused the export ("not a non-negative integer"): a file we wrote that we could not read.
// Now "obj" must be followed by an unsigned decimal, and gp_index may be any unsigned 64-bit value.
TEST(TopologyRegression, HwlocIdsAreUnsigned64AndExportsReadBack) {
  auto file_with = [](const std::string& attr) {
    return "<topology version=\"2.0\">\n<object type=\"Machine\" cpuset=\"0x1\" complete_cpuset=\"0x1\" "
           "nodeset=\"0x1\" complete_nodeset=\"0x1\">\n<object type=\"NUMANode\" os_index=\"0\" cpuset=\"0x1\" "
           "complete_cpuset=\"0x1\" nodeset=\"0x1\" complete_nodeset=\"0x1\"/>\n<object type=\"PU\" os_index=\"0\" "
           "cpuset=\"0x1\" complete_cpuset=\"0x1\" " + attr + "/>\n</object>\n</topology>\n";
  };
  {
    TempFile bad(file_with("id=\"obj-04\""));
    auto t = topo::load_file(bad.path());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.status().message().find("id=\"obj-04\""), std::string::npos) << t.status().message();
  }
  for (const char* good : {"id=\"obj7\"", "gp_index=\"18446744073709551612\""}) {
    TempFile file(file_with(good));
    auto t = topo::load_file(file.path());
    ASSERT_TRUE(t.ok()) << good << ": " << t.status().to_string();
    auto xml = topo::to_hwloc_xml(*t);
    ASSERT_TRUE(xml.ok());
    TempFile exported(*xml);
    auto again = topo::load_file(exported.path());
    ASSERT_TRUE(again.ok()) << good << ": " << again.status().to_string();
    EXPECT_TRUE(again->same_model(*t));
  }
}


// fuzz_hwloc_xml leak-31c43ce1 (minimized: corpus/hwloc_xml/regress_unknown_encoding_leak.xml):
// <?xml encoding="K"?> reached libxml2 (inside hwloc), which failed on the unknown encoding and
// leaked its converter state. Only UTF-8 (and ASCII) hwloc XML is accepted now, before hwloc.
TEST(TopologyRegression, HwlocXmlWithUnknownEncodingIsRejectedBeforeHwloc) {
  TempFile file(corpus("hwloc_xml/regress_unknown_encoding_leak.xml"));
  auto t = topo::load_file(file.path());
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("encoding \"k\""), std::string::npos) << t.status().message();
  // The declaration hwloc itself writes is fine.
  TempFile good(corpus("hwloc_xml/synthetic_1pack_2core.xml"));
  auto ok = topo::load_file(good.path());
  EXPECT_TRUE(ok.ok()) << ok.status().to_string();
}

}  // namespace
}  // namespace locmoe
