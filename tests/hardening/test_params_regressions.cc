// Inputs found by fuzz_params (tests/fuzz/fuzz_params.cc), kept as tests.
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "locmoe/core/params.h"

namespace locmoe {
namespace {

namespace p = params;

class ParamsRegression : public ::testing::Test {
 protected:
  void SetUp() override { p::reset(); }
  void TearDown() override { p::reset(); }
};

// fuzz_params crash-44baaed6 (tests/fuzz/corpus/params/regress_int_embedded_nul): "0968193"
// followed by NUL bytes and more text was accepted as an integer, because strtoll stops at the
// first NUL; the environment cannot carry that value, so the API and the environment disagreed.
TEST_F(ParamsRegression, IntegerValueWithEmbeddedNulIsRejected) {
  const std::string value("0968193\0\0\0\0\0\0\0004", 15);
  Status st = p::set("LOCMOE_CHUNK_BYTES", value);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("LOCMOE_CHUNK_BYTES"), std::string::npos) << st.message();
  EXPECT_STREQ(p::source(p::Id::chunk_bytes), "default");
}

// The same hole for the other types: every value is text without NUL bytes.
TEST_F(ParamsRegression, EveryTypeRejectsEmbeddedNul) {
  for (const char* name : {"LOCMOE_TIMEOUT_S", "LOCMOE_DEBUG", "LOCMOE_TOPO_FILE"}) {
    const std::string good = std::string(name) == "LOCMOE_DEBUG" ? "INFO" : "7";
    EXPECT_TRUE(p::set(name, good).ok()) << name;
    EXPECT_FALSE(p::set(name, good + std::string("\0x", 2)).ok()) << name;
    EXPECT_FALSE(p::set(name, std::string("\0", 1) + good).ok()) << name;
  }
}

}  // namespace
}  // namespace locmoe
