// TCP rendezvous bootstrap without MPI: the test forks N processes that find each other through
// torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and make_bootstrap_from_env.
// Scenarios: every collective against values each rank computes independently; a Communicator
// (UCX when built, 2 emulated nodes) over that bootstrap against (seed, src, dst, index) data; a
// rank that never starts (timeout naming it), one that dies after connecting (peer failure naming
// it), one that calls a different collective size (mismatch).
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <cstdlib>
#include <functional>

#include <gtest/gtest.h>

#include "a2a_common.h"
#include "tcp_launch.h"
#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/params.h"

namespace locmoe {
namespace {

TEST(TcpBootstrap, CollectivesAgreeWithIndependentlyComputedValues) {
  const int n = 4;
  auto codes = launch(n, {0, 1, 2, 3}, 30, [n](int r) -> int {
    auto b = make_bootstrap_from_env();
    if (!b.ok()) return code_of(b.status());
    Bootstrap& boot = **b;
    CHILD_CHECK(std::string(boot.name()) == "tcp" && boot.rank() == r && boot.size() == n);
    // allgather of 3 bytes per rank
    uint8_t mine[3] = {uint8_t(r), uint8_t(r * 7), uint8_t(255 - r)};
    std::vector<uint8_t> all(3 * n);
    if (Status s = boot.allgather(mine, all.data(), 3); !s.ok()) return code_of(s);
    for (int q = 0; q < n; ++q) CHILD_CHECK(all[3 * q] == q && all[3 * q + 1] == uint8_t(q * 7) && all[3 * q + 2] == 255 - q);
    // allreduce sum / max
    int64_t v[2] = {r + 1, -r};
    if (Status s = boot.allreduce(v, v, 2, DataType::kInt64, ReduceOp::kSum); !s.ok()) return code_of(s);
    CHILD_CHECK(v[0] == n * (n + 1) / 2 && v[1] == -(n * (n - 1) / 2));
    double d = 0.5 * r;
    if (Status s = boot.allreduce(&d, &d, 1, DataType::kFloat64, ReduceOp::kMax); !s.ok()) return code_of(s);
    CHILD_CHECK(d == 0.5 * (n - 1));
    // broadcast from a non-zero root
    uint64_t word = r == 2 ? 0xC0FFEEull : 0;
    if (Status s = boot.broadcast(&word, sizeof word, 2); !s.ok()) return code_of(s);
    CHILD_CHECK(word == 0xC0FFEEull);
    if (Status s = boot.barrier(); !s.ok()) return code_of(s);
    return 0;
  });
  EXPECT_EQ(codes, std::vector<int>(n, 0));
}

TEST(TcpBootstrap, CommunicatorRunsWithoutMpi) {
  if (!transport_available("ucx")) GTEST_SKIP() << "UCX transport not built";
  const int n = 4;
  auto codes = launch(n, {0, 1, 2, 3}, 30, [n](int r) -> int {
    using namespace testing_a2a;
    auto b = make_bootstrap_from_env();
    if (!b.ok()) return code_of(b.status());
    if (Status s = params::set("LOCMOE_HOSTID", r < 2 ? "tcpA" : "tcpB"); !s.ok()) return code_of(s);
    auto host = local_host_id();
    auto cm = exchange_cluster_map(**b, RankDescriptor{*host, "", ""});
    if (!cm.ok()) return code_of(cm.status());
    CHILD_CHECK(cm->num_nodes() == 2);
    CommConfig cfg;
    cfg.transport = "ucx";
    auto comm = Communicator::create(**b, *cm, cfg);
    if (!comm.ok()) return code_of(comm.status());
    CHILD_CHECK((*comm)->algo() == A2AAlgo::kHierarchical);
    std::vector<uint64_t> sc(n), sd(n), rc(n), rd(n);
    uint64_t off = 0;
    for (int d = 0; d < n; ++d) sd[d] = off, off += sc[d] = count_of(Pattern::kRandom, 3, n, r, d);
    std::vector<uint8_t> send(off);
    for (int d = 0; d < n; ++d)
      for (uint64_t i = 0; i < sc[d]; ++i) send[sd[d] + i] = byte_at(3, r, d, i);
    if (Status s = (*comm)->exchange_counts(sc.data(), rc.data()); !s.ok()) return code_of(s);
    off = 0;
    for (int s = 0; s < n; ++s) {
      CHILD_CHECK(rc[s] == count_of(Pattern::kRandom, 3, n, s, r));
      rd[s] = off, off += rc[s];
    }
    std::vector<uint8_t> recv(off);
    Status s = (*comm)->alltoallv(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data(), recv.size());
    if (!s.ok()) return code_of(s);
    for (int q = 0; q < n; ++q)
      for (uint64_t i = 0; i < rc[q]; ++i) CHILD_CHECK(recv[rd[q] + i] == byte_at(3, q, r, i));
    return 0;
  });
  EXPECT_EQ(codes, std::vector<int>(n, 0));
}

TEST(TcpBootstrap, RankThatNeverStartsIsNamedAfterTheDeadline) {
  // World of 3, rank 2 is never started.
  auto codes = launch(3, {0, 1}, 2, [](int) -> int {
    auto b = make_bootstrap_from_env();
    if (!b.ok()) {
      const std::string& m = b.status().message();
      // Rank 0 sees the absence; rank 1 learns rank 0's verdict at once (not at its own deadline).
      const int c = code_of(b.status());
      CHILD_CHECK(m.find("ranks 2 did not connect") != std::string::npos);
      return c;
    }
    uint64_t x = 1;
    return code_of((*b)->allreduce(&x, &x, 1, DataType::kUint64, ReduceOp::kSum));
  });
  ASSERT_EQ(codes.size(), 2u);
  EXPECT_EQ(codes[0], int(Code::kTimeout));     // rank 0: nobody came as rank 2
  // rank 1, already joined, gets rank 0's verdict as a peer failure naming rank 2.
  EXPECT_EQ(codes[1], int(Code::kPeerFailure));
}

TEST(TcpBootstrap, PeerThatDiesIsNamed) {
  auto codes = launch(3, {0, 1, 2}, 20, [](int r) -> int {
    auto b = make_bootstrap_from_env();
    if (!b.ok()) return code_of(b.status());
    if (r == 1) _exit(42);  // dies right after connecting
    uint64_t x = 1;
    Status s = (*b)->allreduce(&x, &x, 1, DataType::kUint64, ReduceOp::kSum);
    if (r == 0 && !s.ok()) CHILD_CHECK(s.message().find("rank 1 closed the connection") != std::string::npos);
    return code_of(s);
  });
  EXPECT_EQ(codes, (std::vector<int>{int(Code::kPeerFailure), 42, int(Code::kPeerFailure)}));
}

TEST(TcpBootstrap, DifferentCollectiveSizesAreAMismatch) {
  auto codes = launch(2, {0, 1}, 20, [](int r) -> int {
    auto b = make_bootstrap_from_env();
    if (!b.ok()) return code_of(b.status());
    std::vector<uint8_t> in(r == 0 ? 4 : 8), out(2 * in.size());
    Status s = (*b)->allgather(in.data(), out.data(), in.size());
    if (!s.ok()) CHILD_CHECK(s.message().find("rank 1 called allgather of 8 bytes") != std::string::npos);
    return code_of(s);
  });
  // Both ranks, not only rank 0 (which reads the headers): the verdict reaches every rank.
  EXPECT_EQ(codes, (std::vector<int>{int(Code::kMismatch), int(Code::kMismatch)}));
}

// A rank in another collective (here the barrier of a communicator's teardown while the others
// sum): every rank fails at once, naming it and both operations, whichever rank is the odd one.
TEST(TcpBootstrap, RankInAnotherCollectiveIsNamedOnEveryRank) {
  for (int odd : {2, 0}) {
    auto codes = launch(4, {0, 1, 2, 3}, 20, [odd](int r) -> int {
      auto b = make_bootstrap_from_env();
      if (!b.ok()) return code_of(b.status());
      const auto t0 = std::chrono::steady_clock::now();
      int64_t x = 1;
      Status s = r == odd ? (*b)->barrier() : (*b)->allreduce(&x, &x, 1, DataType::kInt64, ReduceOp::kSum);
      CHILD_CHECK(seconds_since(t0) < 5);
      CHILD_CHECK(!s.ok());
      const std::string& m = s.message();
      CHILD_CHECK(m.find("barrier") != std::string::npos && m.find("allreduce (sum) of 1 int64") != std::string::npos);
      CHILD_CHECK(m.find(fmt::format("rank {} called", odd == 0 ? 1 : odd)) != std::string::npos);
      // Out of step: the bootstrap refuses further calls at once.
      CHILD_CHECK(!(*b)->barrier().ok());
      return code_of(s);
    });
    EXPECT_EQ(codes, std::vector<int>(4, int(Code::kMismatch))) << "odd rank " << odd;
  }
}

// A rank that rejects its own input takes its turn: the others learn its reason at once, and the
// bootstrap stays usable (the next collective gives the right sum on every rank).
TEST(TcpBootstrap, RejectedInputReachesEveryRankAndTheBootstrapStaysUsable) {
  for (int bad : {3, 0}) {
    auto codes = launch(4, {0, 1, 2, 3}, 20, [bad](int r) -> int {
      auto b = make_bootstrap_from_env();
      if (!b.ok()) return code_of(b.status());
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<uint32_t> mine(2, r), all(8);
      Status s = r == bad ? (*b)->reject(error(Code::kOutOfRange, "token 1 slot 0: expert id 13 out of range [0, 8)"))
                          : (*b)->allgather(mine.data(), all.data(), 8);
      CHILD_CHECK(seconds_since(t0) < 5);
      CHILD_CHECK(s.message().find("expert id 13 out of range") != std::string::npos);
      if (r != bad) {
        CHILD_CHECK(s.code() == Code::kMismatch);
        CHILD_CHECK(s.message().find(fmt::format("rank {} rejected its input", bad)) != std::string::npos);
        CHILD_CHECK(s.message().find("allgather of 8 bytes") != std::string::npos);
      } else {
        CHILD_CHECK(s.code() == Code::kOutOfRange);
      }
      int64_t x = r + 1;
      if (Status t = (*b)->allreduce(&x, &x, 1, DataType::kInt64, ReduceOp::kSum); !t.ok()) return code_of(t);
      CHILD_CHECK(x == 10);
      return 0;
    });
    EXPECT_EQ(codes, std::vector<int>(4, 0)) << "rejecting rank " << bad;
  }
}

// abort(): peers waiting in a collective fail at once with the aborting rank's message.
TEST(TcpBootstrap, AbortReachesEveryRankAtOnce) {
  for (int quitter : {2, 0}) {
    auto codes = launch(4, {0, 1, 2, 3}, 20, [quitter](int r) -> int {
      auto b = make_bootstrap_from_env();
      if (!b.ok()) return code_of(b.status());
      if (r == quitter) {
        (*b)->abort("RuntimeError: loss is NaN");
        CHILD_CHECK((*b)->barrier().code() == Code::kPeerFailure);  // its own calls fail at once
        std::this_thread::sleep_for(std::chrono::milliseconds(500));  // still alive: a notice, not a death
        return 0;
      }
      const auto t0 = std::chrono::steady_clock::now();
      uint64_t x = 1;
      Status s = (*b)->allreduce(&x, &x, 1, DataType::kUint64, ReduceOp::kSum);
      CHILD_CHECK(seconds_since(t0) < 5);
      CHILD_CHECK(s.message().find(fmt::format("rank {} aborted the group: RuntimeError: loss is NaN", quitter)) !=
                  std::string::npos);
      return code_of(s);
    });
    std::vector<int> want(4, int(Code::kPeerFailure));
    want[quitter] = 0;
    EXPECT_EQ(codes, want) << "aborting rank " << quitter;
  }
}

TEST(TcpBootstrap, EnvironmentErrorsNameTheVariable) {
  ASSERT_TRUE(params::set("LOCMOE_BOOTSTRAP", "tcp").ok());
  unsetenv("MASTER_ADDR");
  unsetenv("RANK");
  auto b = make_bootstrap_from_env();
  params::reset();
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("MASTER_ADDR"), std::string::npos) << b.status().to_string();
  auto self = make_bootstrap_from_env();  // auto, no launcher variables: self
  ASSERT_TRUE(self.ok());
  EXPECT_EQ(std::string((*self)->name()), "self");
}

}  // namespace
}  // namespace locmoe
