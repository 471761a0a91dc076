// The two-level TCP bootstrap (comm/src/bootstrap_tree.cc): forked ranks on emulated hosts
// (LOCMOE_HOSTID) whose ranks are not contiguous and whose sizes differ, one host with a single
// rank. Every collective's result against values each rank computes on its own, with every
// collective on the leaders' path (LOCMOE_BOOTSTRAP_TREE_BYTES=1) and with small and large ones
// interleaved; mismatches, rejections and aborts reach every rank at once; the threshold must
// agree across ranks.
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "tcp_launch.h"

namespace locmoe {
namespace {

// 6 ranks on 3 hosts: A = {0, 1, 5}, B = {2, 4}, C = {3}.
const char* const kHostOf[] = {"A", "A", "B", "C", "B", "A"};
constexpr int kRanks = 6;

// Sets the rank's host and the threshold, then joins the job.
Result<std::unique_ptr<Bootstrap>> join(int r, const std::string& tree_bytes) {
  LOCMOE_RETURN_IF_ERROR(params::set("LOCMOE_HOSTID", kHostOf[r]));
  LOCMOE_RETURN_IF_ERROR(params::set("LOCMOE_BOOTSTRAP_TREE_BYTES", tree_bytes));
  return make_bootstrap_from_env();
}

uint8_t byte_of(int rank, size_t i) { return static_cast<uint8_t>(rank * 31 + i * 7 + (i >> 8)); }

// One round of every collective at `elems` elements; the expected values are closed forms.
int every_collective(Bootstrap& b, int r, size_t elems) {
  const int n = b.size();
  std::vector<uint8_t> mine(elems), all(elems * n);
  for (size_t i = 0; i < elems; ++i) mine[i] = byte_of(r, i);
  if (Status s = b.allgather(mine.data(), all.data(), elems); !s.ok()) return code_of(s);
  for (int q = 0; q < n; ++q)
    for (size_t i = 0; i < elems; ++i) CHILD_CHECK(all[q * elems + i] == byte_of(q, i));

  std::vector<int64_t> sum(elems), mx(elems);
  std::vector<float> fsum(elems);
  std::vector<uint64_t> mn(elems);
  for (size_t i = 0; i < elems; ++i) {
    sum[i] = static_cast<int64_t>(i) * (r + 1);
    mx[i] = (static_cast<int64_t>(i) + r) % n;
    fsum[i] = 0.25f * static_cast<float>(r);  // exact in float32 whatever the order of the sum
    mn[i] = 100 + static_cast<uint64_t>((r + i) % n);
  }
  if (Status s = b.allreduce(sum.data(), sum.data(), elems, DataType::kInt64, ReduceOp::kSum); !s.ok())
    return code_of(s);
  if (Status s = b.allreduce(mx.data(), mx.data(), elems, DataType::kInt64, ReduceOp::kMax); !s.ok())
    return code_of(s);
  if (Status s = b.allreduce(fsum.data(), fsum.data(), elems, DataType::kFloat32, ReduceOp::kSum); !s.ok())
    return code_of(s);
  std::vector<uint64_t> mn_out(elems);  // send != recv
  if (Status s = b.allreduce(mn.data(), mn_out.data(), elems, DataType::kUint64, ReduceOp::kMin); !s.ok())
    return code_of(s);
  for (size_t i = 0; i < elems; ++i) {
    CHILD_CHECK(sum[i] == static_cast<int64_t>(i) * n * (n + 1) / 2);
    CHILD_CHECK(mx[i] == n - 1 || n == 1);
    CHILD_CHECK(fsum[i] == 0.25f * static_cast<float>(n * (n - 1) / 2));
    CHILD_CHECK(mn_out[i] == 100);
  }

  for (int root = 0; root < n; ++root) {  // every root: on a leader, on a member, alone on its host
    std::vector<uint8_t> buf(elems, 0);
    if (r == root)
      for (size_t i = 0; i < elems; ++i) buf[i] = byte_of(root, i);
    if (Status s = b.broadcast(buf.data(), elems, root); !s.ok()) return code_of(s);
    for (size_t i = 0; i < elems; ++i) CHILD_CHECK(buf[i] == byte_of(root, i));
  }
  if (Status s = b.barrier(); !s.ok()) return code_of(s);
  return 0;
}

TEST(TcpTreeBootstrap, EveryCollectiveThroughTheLeadersAgreesWithIndependentValues) {
  auto codes = launch(kRanks, {0, 1, 2, 3, 4, 5}, 30, [](int r) -> int {
    auto b = join(r, "1");
    if (!b.ok()) return code_of(b.status());
    CHILD_CHECK(std::string((*b)->name()) == "tcp-tree" && (*b)->rank() == r && (*b)->size() == kRanks);
    for (size_t elems : {size_t{1}, size_t{3}, size_t{1000}, size_t{70000}})
      if (int c = every_collective(**b, r, elems)) return c;
    return 0;
  });
  EXPECT_EQ(codes, std::vector<int>(kRanks, 0));
}

// Threshold 4096 bytes: the small calls take the star, the large ones the leaders, interleaved;
// every rank must choose the same way for each call or the sequence numbers would part.
TEST(TcpTreeBootstrap, SmallAndLargeCollectivesInterleaved) {
  auto codes = launch(kRanks, {0, 1, 2, 3, 4, 5}, 30, [](int r) -> int {
    auto b = join(r, "4096");
    if (!b.ok()) return code_of(b.status());
    CHILD_CHECK(std::string((*b)->name()) == "tcp-tree");
    for (size_t elems : {size_t{2}, size_t{5000}, size_t{3}, size_t{20000}, size_t{1}, size_t{600}})
      if (int c = every_collective(**b, r, elems)) return c;
    return 0;
  });
  EXPECT_EQ(codes, std::vector<int>(kRanks, 0));
}

// One host only, or one rank per host: the star itself (nothing to gain from leaders).
TEST(TcpTreeBootstrap, OneHostOrOneRankPerHostKeepsTheStar) {
  for (const bool one_host : {true, false}) {
    auto codes = launch(3, {0, 1, 2}, 30, [one_host](int r) -> int {
      if (Status s = params::set("LOCMOE_HOSTID", one_host ? "same" : "h" + std::to_string(r)); !s.ok())
        return code_of(s);
      if (Status s = params::set("LOCMOE_BOOTSTRAP_TREE_BYTES", "1"); !s.ok()) return code_of(s);
      auto b = make_bootstrap_from_env();
      if (!b.ok()) return code_of(b.status());
      CHILD_CHECK(std::string((*b)->name()) == "tcp");
      return every_collective(**b, r, 100);
    });
    EXPECT_EQ(codes, std::vector<int>(3, 0)) << (one_host ? "one host" : "one rank per host");
  }
}

// A rank in another large collective (another size): every rank fails at once naming it and both
// operations, as on the star.
TEST(TcpTreeBootstrap, RankInAnotherCollectiveIsNamedOnEveryRank) {
  for (int odd : {4, 3, 0}) {
    auto codes = launch(kRanks, {0, 1, 2, 3, 4, 5}, 20, [odd](int r) -> int {
      auto b = join(r, "1");
      if (!b.ok()) return code_of(b.status());
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<int64_t> v(r == odd ? 2000 : 1000, 1);
      Status s = (*b)->allreduce(v.data(), v.data(), v.size(), DataType::kInt64, ReduceOp::kSum);
      CHILD_CHECK(seconds_since(t0) < 5);
      CHILD_CHECK(s.code() == Code::kMismatch);
      const int named = odd == 0 ? 1 : odd;  // the first rank that differs from rank 0
      CHILD_CHECK(s.message().find(fmt::format("rank {} called allreduce (sum) of {} int64", named,
                                               odd == 0 ? 1000 : 2000)) != std::string::npos);
      CHILD_CHECK(!(*b)->barrier().ok());  // out of step: refused at once
      return 0;
    });
    EXPECT_EQ(codes, std::vector<int>(kRanks, 0)) << "odd rank " << odd;
  }
}

// A rank that rejects its input while the others are in a large collective: they learn its
// reason at once and the bootstrap stays usable on the leaders' path too.
TEST(TcpTreeBootstrap, RejectionReachesEveryRankAndTheBootstrapStaysUsable) {
  for (int bad : {5, 3, 0}) {
    auto codes = launch(kRanks, {0, 1, 2, 3, 4, 5}, 20, [bad](int r) -> int {
      auto b = join(r, "1");
      if (!b.ok()) return code_of(b.status());
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<uint8_t> mine(4000, 1), all(4000 * kRanks);
      Status s = r == bad ? (*b)->reject(error(Code::kOutOfRange, "expert id 13 out of range [0, 8)"))
                          : (*b)->allgather(mine.data(), all.data(), mine.size());
      CHILD_CHECK(seconds_since(t0) < 5);
      CHILD_CHECK(s.message().find("expert id 13 out of range") != std::string::npos);
      if (r != bad) CHILD_CHECK(s.message().find(fmt::format("rank {} rejected its input", bad)) != std::string::npos);
      return every_collective(**b, r, 3000);
    });
    EXPECT_EQ(codes, std::vector<int>(kRanks, 0)) << "rejecting rank " << bad;
  }
}

// abort() by one rank while the others wait in a large collective: they fail at once with its
// message (the leaders' path is not left waiting for the deadline).
TEST(TcpTreeBootstrap, AbortReachesEveryRankAtOnce) {
  for (int quitter : {4, 3, 0}) {
    auto codes = launch(kRanks, {0, 1, 2, 3, 4, 5}, 20, [quitter](int r) -> int {
      auto b = join(r, "1");
      if (!b.ok()) return code_of(b.status());
      if (r == quitter) {
        (*b)->abort("RuntimeError: loss is NaN");
        CHILD_CHECK((*b)->barrier().code() == Code::kPeerFailure);
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        return 0;
      }
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<double> v(5000, 1.0);
      Status s = (*b)->allreduce(v.data(), v.data(), v.size(), DataType::kFloat64, ReduceOp::kSum);
      CHILD_CHECK(seconds_since(t0) < 5);
      CHILD_CHECK(s.code() == Code::kPeerFailure);
      CHILD_CHECK(s.message().find("RuntimeError: loss is NaN") != std::string::npos);
      return 0;
    });
    EXPECT_EQ(codes, std::vector<int>(kRanks, 0)) << "aborting rank " << quitter;
  }
}

// A rank that dies after joining: the survivors' next large collective fails, naming it, within
// the deadline (not a hang in a leaders' phase).
TEST(TcpTreeBootstrap, PeerThatDiesFailsEveryRank) {
  for (int dead : {4, 3}) {
    auto codes = launch(kRanks, {0, 1, 2, 3, 4, 5}, 10, [dead](int r) -> int {
      auto b = join(r, "1");
      if (!b.ok()) return code_of(b.status());
      if (r == dead) _exit(42);
      std::vector<int64_t> v(5000, 1);
      Status s = (*b)->allreduce(v.data(), v.data(), v.size(), DataType::kInt64, ReduceOp::kSum);
      CHILD_CHECK(!s.ok());
      if (r == 0) CHILD_CHECK(s.message().find(fmt::format("rank {} closed the connection", dead)) != std::string::npos);
      return code_of(s);
    });
    for (int r = 0; r < kRanks; ++r)
      if (r == dead) {
        EXPECT_EQ(codes[r], 42);
      } else {
        EXPECT_TRUE(codes[r] == int(Code::kPeerFailure) || codes[r] == int(Code::kTimeout)) << r << ": " << codes[r];
      }
  }
}

// The threshold decides which path each call takes, so ranks that disagree on it would part:
// refused when the group is made, on every rank, naming the rank.
TEST(TcpTreeBootstrap, ThresholdThatDiffersAcrossRanksIsRefused) {
  auto codes = launch(kRanks, {0, 1, 2, 3, 4, 5}, 20, [](int r) -> int {
    auto b = join(r, r == 2 ? "8192" : "1");
    CHILD_CHECK(!b.ok() && b.status().code() == Code::kMismatch);
    CHILD_CHECK(b.status().message().find("LOCMOE_BOOTSTRAP_TREE_BYTES") != std::string::npos &&
                b.status().message().find("rank 2 has 8192, rank 0 has 1") != std::string::npos);
    return 0;
  });
  EXPECT_EQ(codes, std::vector<int>(kRanks, 0));
}

}  // namespace
}  // namespace locmoe
