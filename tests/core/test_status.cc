#include <gtest/gtest.h>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/check.h"

namespace locmoe {
namespace {

Status checked_divide(int a, int b, int* out) {
  LOCMOE_CHECK_ARG(b != 0, "divisor {} must be non-zero", b);
  *out = a / b;
  return ok_status();
}

Result<int> half(int v) {
  LOCMOE_CHECK_ARG(v % 2 == 0, "value {} is odd", v);
  return v / 2;
}

Result<int> quarter(int v) {
  LOCMOE_ASSIGN_OR_RETURN(int h, half(v));
  LOCMOE_ASSIGN_OR_RETURN(int q, half(h));
  return q;
}

TEST(Status, CheckNamesTheBadValueAndLeavesOutputUntouched) {
  int out = 42;
  Status st = checked_divide(4, 0, &out);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_EQ(st.message(), "divisor 0 must be non-zero");
  EXPECT_EQ(st.to_string(), "invalid argument: divisor 0 must be non-zero");
  EXPECT_EQ(out, 42);
  ASSERT_TRUE(checked_divide(9, 3, &out).ok());
  EXPECT_EQ(out, 3);
}

TEST(Status, AssignOrReturnPropagatesTheFirstError) {
  Result<int> ok = quarter(12);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 3);
  Result<int> bad = quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "value 3 is odd");
}

TEST(Status, ContextIsPrefixedOnlyOnErrors) {
  Status st = error(Code::kTimeout, "peer {} silent", 3);
  st.with_context("alltoallv");
  EXPECT_EQ(st.message(), "alltoallv: peer 3 silent");
  Status okst;
  okst.with_context("ignored");
  EXPECT_TRUE(okst.ok());
  EXPECT_EQ(okst.message(), "");
}

TEST(SelfBootstrap, CollectivesOfOneProcessCopyAndCheck) {
  SelfBootstrap bs;
  int64_t in[3] = {1, 2, 3}, out[3] = {0, 0, 0};
  ASSERT_TRUE(bs.allreduce(in, out, 3, DataType::kInt64, ReduceOp::kSum).ok());
  EXPECT_EQ(out[2], 3);
  ASSERT_TRUE(check_same_on_all_ranks(bs, 7, "hidden size").ok());
  EXPECT_EQ(bs.broadcast(out, sizeof(out), 1).code(), Code::kOutOfRange);
}

}  // namespace
}  // namespace locmoe
