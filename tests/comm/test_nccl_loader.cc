// Run-time loading of NCCL (comm/src/nccl/nccl_api.h): nothing links libnccl at load time, the
// candidates come in the documented order, and a library that is missing or is not NCCL is an
// error naming it. Runs without a GPU (loading NCCL needs none).
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nccl_api.h"

namespace locmoe::nccl {
namespace {

std::string maps() {
  std::ifstream f("/proc/self/maps");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> names(const std::vector<Candidate>& list) {
  std::vector<std::string> out;
  for (const Candidate& c : list) out.push_back(c.name);
  return out;
}

// First: nothing of NCCL is in the process before the transport asks for it (the binary links
// locmoe_comm, which has the NCCL transport).
TEST(NcclLoader, NotLoadedAtStart) { EXPECT_EQ(maps().find("libnccl"), std::string::npos) << maps(); }

TEST(NcclLoader, OverrideIsTheOnlyCandidate) {
  const auto list = candidates("/opt/x/libnccl.so.2", {"/usr/lib/python3/dist-packages/numpy/a.so"});
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "/opt/x/libnccl.so.2");
  EXPECT_FALSE(list[0].noload);
}

TEST(NcclLoader, AlreadyLoadedThenWheelThenSystem) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("locmoe-nccl-loader-" + std::to_string(getpid()));
  const fs::path sp = root / "venv/lib/python3.11/site-packages";
  fs::create_directories(sp / "nvidia/nccl/lib");
  fs::create_directories(root / "other/site-packages");  // a package folder with no NCCL wheel
  std::ofstream(sp / "nvidia/nccl/lib/libnccl.so.2") << "";
  const std::string wheel = (sp / "nvidia/nccl/lib/libnccl.so.2").string();
  const auto list = candidates("", {"/usr/lib/libc.so.6", (root / "other/site-packages/a/b.so").string(),
                                    (sp / "locmoe/_locmoe.so").string(), (sp / "numpy/core/c.so").string()});
  fs::remove_all(root);
  const auto n = names(list);
  ASSERT_GE(n.size(), 3u);
  EXPECT_EQ(n[0], "libnccl.so.2");
  EXPECT_TRUE(list[0].noload);  // only one already in the process
  EXPECT_EQ(n[1], wheel);       // once, though two loaded libraries point at it
  EXPECT_EQ(n[2], "libnccl.so.2");
  EXPECT_FALSE(list[2].noload);
  for (size_t i = 3; i < n.size(); ++i) EXPECT_NE(n[i], wheel);
  for (size_t i = 1; i < list.size(); ++i) EXPECT_FALSE(list[i].noload);
}

TEST(NcclLoader, MissingOrForeignLibraryIsNamed) {
  Result<Api> r = open_first({{"/nonexistent/libnccl.so.2", "test"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnsupported);
  EXPECT_NE(r.status().message().find("/nonexistent/libnccl.so.2"), std::string::npos) << r.status().message();
  r = open_first({{"libm.so.6", "test"}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("lacks ncclGetUniqueId"), std::string::npos) << r.status().message();
  // Asking only for an already loaded library that is not: no candidate is left, and none is loaded.
  r = open_first({{"libnccl.so.2", "test", true}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(maps().find("libnccl"), std::string::npos);
}

TEST(NcclLoader, LoadsTheSystemNcclLocally) {
  auto api = nccl::api();
  ASSERT_TRUE(api.ok()) << api.status().to_string();
  const std::string mapped = std::filesystem::canonical((*api)->path).string();
  EXPECT_NE(maps().find(mapped), std::string::npos) << mapped;
  EXPECT_EQ(std::string((*api)->GetErrorString(ncclInvalidArgument)).rfind("invalid argument", 0), 0u);
  // RTLD_LOCAL: NCCL's symbols are not in the global scope, so nothing binds to them by accident.
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "ncclGetUniqueId"), nullptr);
  // Now it is loaded, rule 2 finds it.
  Result<Api> again = open_first({{"libnccl.so.2", "test", true}});
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(again->path, (*api)->path);
  EXPECT_EQ(again->GetUniqueId, (*api)->GetUniqueId);
}

}  // namespace
}  // namespace locmoe::nccl
