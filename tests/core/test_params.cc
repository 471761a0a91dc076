#include <cstdlib>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/core/params.h"

namespace locmoe {
namespace {

namespace p = params;

class Params : public ::testing::Test {
 protected:
  void SetUp() override {
    p::reset();
    unsetenv("LOCMOE_TIMEOUT_S");
    unsetenv("LOCMOE_A2A_ALGO");
  }
  void TearDown() override { SetUp(); }
};

TEST_F(Params, RegistryHasUniqueDocumentedLocmoeNames) {
  std::set<std::string> names;
  for (const p::Info& i : p::all()) {
    EXPECT_EQ(std::string(i.env).rfind("LOCMOE_", 0), 0u) << i.env;
    EXPECT_GT(std::string(i.description).size(), 10u) << i.env;
    EXPECT_TRUE(names.insert(i.env).second) << "duplicate " << i.env;
    EXPECT_TRUE(p::set(i.env, i.def).ok()) << "default of " << i.env << " does not parse";
  }
  EXPECT_EQ(names.size(), static_cast<size_t>(p::Id::kCount));
}

TEST_F(Params, PrecedenceIsApiThenEnvironmentThenDefault) {
  EXPECT_DOUBLE_EQ(*p::get_float(p::Id::timeout_s), std::strtod(p::info(p::Id::timeout_s).def, nullptr));
  EXPECT_STREQ(p::source(p::Id::timeout_s), "default");
  setenv("LOCMOE_TIMEOUT_S", "7.5", 1);
  EXPECT_DOUBLE_EQ(*p::get_float(p::Id::timeout_s), 7.5);
  EXPECT_STREQ(p::source(p::Id::timeout_s), "env");
  ASSERT_TRUE(p::set("LOCMOE_TIMEOUT_S", "3").ok());
  EXPECT_DOUBLE_EQ(*p::get_float(p::Id::timeout_s), 3.0);
  EXPECT_STREQ(p::source(p::Id::timeout_s), "api");
}

TEST_F(Params, BadValuesAreErrorsNamingVariableAndValue) {
  setenv("LOCMOE_TIMEOUT_S", "soon", 1);
  auto t = p::get_float(p::Id::timeout_s);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("LOCMOE_TIMEOUT_S='soon'"), std::string::npos) << t.status().message();
  EXPECT_FALSE(p::validate_all().ok());

  setenv("LOCMOE_A2A_ALGO", "ring", 1);
  auto a = p::get_string(p::Id::a2a_algo);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("'ring'"), std::string::npos);
  EXPECT_NE(a.status().message().find("auto|flat|hier"), std::string::npos);

  EXPECT_FALSE(p::set("LOCMOE_CHUNK_BYTES", "12x").ok());
  // Numbers outside the range params.def gives are refused with the range, the value kept.
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"LOCMOE_CHUNK_BYTES", "0"}, {"LOCMOE_CHUNK_BYTES", "-4096"}, {"LOCMOE_CHUNK_BYTES", "2147483648"},
           {"LOCMOE_TIMEOUT_S", "0"}, {"LOCMOE_TIMEOUT_S", "-1"}, {"LOCMOE_NUM_THREADS", "-1"},
           {"LOCMOE_NUM_THREADS", "4097"}}) {
    Status st = p::set(name, value);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << name << "=" << value;
    EXPECT_NE(st.message().find(name + "='" + value + "'"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("a value in ["), std::string::npos) << st.message();
  }
  // The bounds themselves are inside.
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"LOCMOE_CHUNK_BYTES", "1"}, {"LOCMOE_CHUNK_BYTES", "2147483647"}, {"LOCMOE_TIMEOUT_S", "0.001"},
           {"LOCMOE_NUM_THREADS", "0"}, {"LOCMOE_NUM_THREADS", "4096"}})
    EXPECT_TRUE(p::set(name, value).ok()) << name << "=" << value;
  p::reset();
  EXPECT_FALSE(p::set("LOCMOE_NO_SUCH_THING", "1").ok());
  EXPECT_EQ(*p::get_int(p::Id::chunk_bytes), std::strtoll(p::info(p::Id::chunk_bytes).def, nullptr, 10));
}

}  // namespace
}  // namespace locmoe
