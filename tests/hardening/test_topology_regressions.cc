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

}  // namespace
}  // namespace locmoe
