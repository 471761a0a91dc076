// Multi-rank all-to-all-v tests (run under mpirun with 2, 4 and 8 ranks).
// Scenarios, for each transport available here (MPI, UCX) x algorithm (flat, hierarchical):
//  - emulated nodes: 1, 2, 4 nodes, uneven nodes (3 nodes of unequal size), and ranks interleaved
//    over nodes (rank r on node r % K), set through LOCMOE_HOSTID and the cluster-map exchange;
//  - count patterns: random with zeros, one rank sending nothing, very uneven (one pair of
//    20 MiB), ~1 MiB per pair, all zero; small chunks (exercise chunking) and default chunks;
//  - receive layouts: packed in source order, and reversed with gaps (exercise repacking).
// Oracle: MPI_Alltoallv of the same data on MPI_COMM_WORLD, plus every byte recomputed from
// (seed, src, dst, index); flat and hierarchical results are compared byte for byte.
// Errors: counts that disagree (kMismatch on every rank, naming both ranks and counts), a
// receive buffer too small (kOutOfRange on every rank, nothing written).
#include <mpi.h>

#include <cstring>
#include <numeric>

#include <gtest/gtest.h>

#include "a2a_common.h"
#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/params.h"
#include "locmoe/topology/placement.h"

namespace locmoe {
namespace {

using namespace testing_a2a;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Node layouts for n ranks: node index of each rank.
std::vector<std::pair<std::string, std::vector<int>>> layouts(int n) {
  std::vector<std::pair<std::string, std::vector<int>>> out;
  auto blocked = [n](int k) {
    std::vector<int> v(n);
    for (int r = 0; r < n; ++r) v[r] = r * k / n;
    return v;
  };
  out.push_back({"1 node", blocked(1)});
  if (n >= 2) out.push_back({"2 nodes", blocked(2)});
  if (n >= 4) out.push_back({"4 nodes", blocked(4)});
  if (n >= 4) {
    std::vector<int> v(n, 0);  // uneven: half, then all but one, then one rank alone
    for (int r = 0; r < n; ++r) v[r] = r < n / 2 ? 0 : (r < n - 1 ? 1 : 2);
    out.push_back({"3 uneven nodes", v});
  }
  if (n >= 4) {
    std::vector<int> v(n);
    for (int r = 0; r < n; ++r) v[r] = r % 2;
    out.push_back({"2 interleaved nodes", v});
  }
  return out;
}

// For checks that do not depend on the layout (algorithm choice, error reports): one node and
// the layout with the most paths (interleaved nodes), which keeps 8 ranks on 2 cores quick.
std::vector<std::pair<std::string, std::vector<int>>> edge_layouts(int n) {
  auto all = layouts(n);
  if (all.size() > 2) all.erase(all.begin() + 1, all.end() - 1);
  return all;
}

struct Fixture {
  std::unique_ptr<Bootstrap> boot;
  ClusterMap cluster;
};

Fixture make_fixture(const std::vector<int>& node_of) {
  Fixture f;
  auto b = make_mpi_bootstrap(MPI_COMM_WORLD);
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  f.boot = std::move(b).value();
  EXPECT_TRUE(params::set("LOCMOE_HOSTID", "emu" + std::to_string(node_of[world_rank()])).ok());
  auto host = local_host_id();
  EXPECT_TRUE(host.ok());
  auto cm = exchange_cluster_map(*f.boot, RankDescriptor{*host, "", ""});
  EXPECT_TRUE(cm.ok()) << cm.status().to_string();
  f.cluster = std::move(cm).value();
  params::reset();
  return f;
}

struct Buffers {
  std::vector<uint64_t> sc, sd, rc, rd;
  std::vector<uint8_t> send, expect;
  uint64_t recv_bytes = 0;
};

// reversed: receive blocks placed in reverse source order with 3-byte gaps. unit: every count
// multiplied by it (rows of `unit` bytes).
Buffers make_buffers(Pattern p, uint64_t seed, int n, int me, bool reversed, uint64_t unit = 1) {
  Buffers b;
  b.sc.resize(n), b.sd.resize(n), b.rc.resize(n), b.rd.resize(n);
  uint64_t off = 0;
  for (int d = 0; d < n; ++d) b.sd[d] = off, off += b.sc[d] = unit * count_of(p, seed, n, me, d);
  b.send.resize(off);
  for (int d = 0; d < n; ++d)
    for (uint64_t i = 0; i < b.sc[d]; ++i) b.send[b.sd[d] + i] = byte_at(seed, me, d, i);
  off = 0;
  for (int k = 0; k < n; ++k) {
    const int s = reversed ? n - 1 - k : k;
    b.rc[s] = unit * count_of(p, seed, n, s, me);
    b.rd[s] = off;
    off += b.rc[s] + (reversed ? 3 : 0);
  }
  b.recv_bytes = off;
  b.expect.assign(off, 0xA5);
  for (int s = 0; s < n; ++s)
    for (uint64_t i = 0; i < b.rc[s]; ++i) b.expect[b.rd[s] + i] = byte_at(seed, s, me, i);
  return b;
}

ExchangeSpec spec_of(const Buffers& b, uint64_t capacity) {
  ExchangeSpec spec;
  spec.send_counts = b.sc.data();
  spec.send_displs = b.sd.data();
  spec.recv_counts = b.rc.data();
  spec.recv_displs = b.rd.data();
  spec.recv_capacity = capacity;
  return spec;
}

// MPI_Alltoallv of the same buffers (counts fit in int here).
std::vector<uint8_t> oracle(const Buffers& b, int n) {
  std::vector<int> sc(n), sd(n), rc(n), rd(n);
  for (int r = 0; r < n; ++r) sc[r] = int(b.sc[r]), sd[r] = int(b.sd[r]), rc[r] = int(b.rc[r]), rd[r] = int(b.rd[r]);
  std::vector<uint8_t> out(b.recv_bytes, 0xA5);
  MPI_Alltoallv(b.send.data(), sc.data(), sd.data(), MPI_BYTE, out.data(), rc.data(), rd.data(), MPI_BYTE,
                MPI_COMM_WORLD);
  return out;
}

class A2ATest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!transport_available(GetParam())) GTEST_SKIP() << GetParam() << " transport not built";
  }
  // A communicator over this test's transport with `algo` (and `chunk`, 0 = the parameter).
  std::unique_ptr<Communicator> make_comm(Fixture& f, A2AAlgo algo, uint64_t chunk = 0) {
    CommConfig cfg;
    cfg.transport = GetParam();
    cfg.algo = algo;
    cfg.chunk_bytes = chunk;
    cfg.timeout_s = 60;
    auto comm = Communicator::create(*f.boot, f.cluster, cfg);
    EXPECT_TRUE(comm.ok()) << comm.status().to_string();
    return comm.ok() ? std::move(comm).value() : nullptr;
  }
};

TEST_P(A2ATest, MatchesOracleForEveryLayoutPatternAndAlgorithm) {
  const int n = world_size(), me = world_rank();
  uint64_t seed = 11;
  for (const auto& [lname, node_of] : layouts(n)) {
    Fixture f = make_fixture(node_of);
    for (A2AAlgo algo : {A2AAlgo::kFlat, A2AAlgo::kHierarchical}) {
      for (uint64_t chunk : {uint64_t{0}, uint64_t{4096}}) {
        // Small chunks on the layout with the most paths only (keeps 8 ranks on 2 cores quick).
        if (chunk != 0 && lname != layouts(n).back().first && n > 2) continue;
        auto comm = make_comm(f, algo, chunk);
        ASSERT_TRUE(comm);
        ASSERT_EQ(comm->algo(), algo);
        for (Pattern p : {Pattern::kRandom, Pattern::kOneSilent, Pattern::kUneven, Pattern::kLarge, Pattern::kAllZero}) {
          if (chunk != 0 && (p == Pattern::kUneven || p == Pattern::kLarge)) continue;  // 4 KiB chunks of MiBs: slow
          // ~1 MiB per pair (n^2 MiB per exchange, plus the oracle's): on the layout with the most
          // paths only beyond 2 ranks; the 20 MiB uneven pattern covers large messages everywhere.
          if (p == Pattern::kLarge && n > 2 && lname != layouts(n).back().first) continue;
          for (bool reversed : {false, true}) {
            if (reversed && (p == Pattern::kLarge || p == Pattern::kUneven)) continue;  // layout covered by others
            ++seed;
            SCOPED_TRACE(fmt::format("{} ranks, {}, transport {}, algo {}, chunk {}, pattern {}, {} layout", n, lname,
                                     GetParam(), algo == A2AAlgo::kFlat ? "flat" : "hier", chunk, pattern_name(p),
                                     reversed ? "reversed" : "packed"));
            Buffers b = make_buffers(p, seed, n, me, reversed);
            std::vector<uint64_t> got_counts(n);
            Status s = comm->exchange_counts(b.sc.data(), got_counts.data());
            ASSERT_TRUE(s.ok()) << s.to_string();
            ASSERT_EQ(got_counts, b.rc);
            std::vector<uint8_t> recv(b.recv_bytes, 0xA5);
            s = comm->alltoallv(b.send.data(), b.sc.data(), b.sd.data(), recv.data(), b.rc.data(), b.rd.data(),
                                   recv.size());
            ASSERT_TRUE(s.ok()) << s.to_string();
            const std::vector<uint8_t> want = oracle(b, n);
            ASSERT_TRUE(recv == b.expect) << "data differs from (seed, src, dst, index)";
            ASSERT_TRUE(recv == want) << "data differs from MPI_Alltoallv";
            // Accounting invariants: what was received equals what the others announced.
            const ExchangeStats st = comm->last_stats();
            ASSERT_EQ(st.bytes_received, std::accumulate(b.rc.begin(), b.rc.end(), uint64_t{0}) - b.rc[me]);
            ASSERT_EQ(st.bytes_sent, st.internode_bytes_sent + st.intranode_bytes_sent);
            // The planned path: negotiated once, executed twice, the same bytes and data traffic,
            // and no metadata.
            ExchangePlan plan;
            s = comm->prepare(spec_of(b, recv.size()), plan);
            ASSERT_TRUE(s.ok()) << s.to_string();
            ASSERT_EQ(plan.recv_counts, b.rc);
            uint64_t extent = 0;
            for (int r = 0; r < n; ++r)
              if (b.rc[r] > 0) extent = std::max(extent, b.rd[r] + b.rc[r]);
            ASSERT_EQ(plan.recv_bytes, extent);
            for (int rep = 0; rep < 2; ++rep) {
              std::vector<uint8_t> planned(b.recv_bytes, 0xA5);
              s = comm->execute(plan, b.send.data(), planned.data());
              ASSERT_TRUE(s.ok()) << s.to_string();
              ASSERT_TRUE(planned == want) << "planned execute " << rep << " differs from MPI_Alltoallv";
              const ExchangeStats& ps = comm->last_stats();
              ASSERT_EQ(ps.meta_msgs_sent, 0u);
              ASSERT_EQ(ps.bytes_received, st.bytes_received);
              ASSERT_EQ(ps.bytes_sent, st.bytes_sent);
              ASSERT_EQ(ps.internode_msgs_sent, st.internode_msgs_sent);
              ASSERT_EQ(ps.chunks_sent, st.chunks_sent);
            }
          }
        }
      }
    }
  }
}

// Flat and hierarchical results, byte for byte, and the inter-node message bound, 2+ nodes.
TEST_P(A2ATest, FlatAndHierarchicalAgreeAndHierSendsFewerInternodeMessages) {
  const int n = world_size(), me = world_rank();
  for (const auto& [lname, node_of] : layouts(n)) {
    Fixture f = make_fixture(node_of);
    if (f.cluster.num_nodes() < 2) continue;
    Buffers b = make_buffers(Pattern::kOneSilent, 99, n, me, true);
    std::vector<uint8_t> out[2];
    ExchangeStats stats[2];
    int i = 0;
    for (A2AAlgo algo : {A2AAlgo::kFlat, A2AAlgo::kHierarchical}) {
      auto comm = make_comm(f, algo);
      ASSERT_TRUE(comm);
      out[i].assign(b.recv_bytes, 0);
      Status s = comm->alltoallv(b.send.data(), b.sc.data(), b.sd.data(), out[i].data(), b.rc.data(),
                                    b.rd.data(), out[i].size());
      ASSERT_TRUE(s.ok()) << s.to_string();
      stats[i++] = comm->last_stats();
    }
    SCOPED_TRACE(lname);
    EXPECT_TRUE(out[0] == out[1]);
    // Independent count: flat sends one message to each remote rank it has data for.
    uint64_t remote_with_data = 0;
    for (int d = 0; d < n; ++d) remote_with_data += (node_of[d] != node_of[me] && b.sc[d] > 0) ? 1 : 0;
    EXPECT_EQ(stats[0].internode_msgs_sent, remote_with_data);
    EXPECT_LE(stats[1].internode_msgs_sent, uint64_t(f.cluster.num_nodes() - 1));
    // Total inter-node bytes are the same payload either way (summed over ranks).
    uint64_t tot[2] = {stats[0].internode_bytes_sent, stats[1].internode_bytes_sent};
    MPI_Allreduce(MPI_IN_PLACE, tot, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_EQ(tot[0], tot[1]);
  }
}

TEST_P(A2ATest, AlgorithmFollowsTopologyUnlessForced) {
  const int n = world_size();
  for (const auto& [lname, node_of] : edge_layouts(n)) {
    Fixture f = make_fixture(node_of);
    SCOPED_TRACE(lname);
    auto automatic = make_comm(f, A2AAlgo::kAuto);
    ASSERT_TRUE(automatic);
    EXPECT_EQ(automatic->algo(), f.cluster.num_nodes() > 1 ? A2AAlgo::kHierarchical : A2AAlgo::kFlat);
    automatic.reset();
    for (const char* forced : {"flat", "hier"}) {
      ASSERT_TRUE(params::set("LOCMOE_A2A_ALGO", forced).ok());
      auto comm = make_comm(f, A2AAlgo::kAuto);
      params::reset();
      ASSERT_TRUE(comm);
      EXPECT_EQ(comm->algo(), std::string(forced) == "flat" ? A2AAlgo::kFlat : A2AAlgo::kHierarchical);
    }
  }
}

// LOCMOE_INTRA_TRANSPORT-style combination: the other transport inside nodes, this one between.
TEST_P(A2ATest, SeparateIntraAndInterNodeTransportsGiveTheSameBytes) {
  const std::string other = GetParam() == "mpi" ? "ucx" : "mpi";
  if (!transport_available(other)) GTEST_SKIP() << other << " transport not built";
  const int n = world_size(), me = world_rank();
  for (const auto& [lname, node_of] : layouts(n)) {
    Fixture f = make_fixture(node_of);
    for (A2AAlgo algo : {A2AAlgo::kFlat, A2AAlgo::kHierarchical}) {
      CommConfig cfg;
      cfg.transport = GetParam();
      cfg.intra_transport = other;
      cfg.algo = algo;
      auto comm = Communicator::create(*f.boot, f.cluster, cfg);
      ASSERT_TRUE(comm.ok()) << comm.status().to_string();
      EXPECT_EQ((*comm)->transport_name(), other + "+" + GetParam());
      Buffers b = make_buffers(Pattern::kRandom, 21, n, me, true);
      std::vector<uint8_t> recv(b.recv_bytes, 0xA5);
      Status s = (*comm)->alltoallv(b.send.data(), b.sc.data(), b.sd.data(), recv.data(), b.rc.data(), b.rd.data(),
                                    recv.size());
      SCOPED_TRACE(lname);
      ASSERT_TRUE(s.ok()) << s.to_string();
      EXPECT_TRUE(recv == b.expect);
      EXPECT_TRUE(recv == oracle(b, n));
    }
  }
}

TEST_P(A2ATest, CountMismatchIsReportedOnEveryRankNamingBothRanks) {
  const int n = world_size(), me = world_rank();
  for (const auto& [lname, node_of] : edge_layouts(n)) {
    Fixture f = make_fixture(node_of);
    for (A2AAlgo algo : {A2AAlgo::kFlat, A2AAlgo::kHierarchical}) {
      auto comm = make_comm(f, algo);
      ASSERT_TRUE(comm);
      Buffers b = make_buffers(Pattern::kOneSilent, 5, n, me, false);
      // The last rank expects one byte more from rank 0 than rank 0 sends.
      const uint64_t sent = count_of(Pattern::kOneSilent, 5, n, 0, n - 1);  // what rank 0 sends
      if (me == n - 1) b.rc[0] += 1;
      std::vector<uint8_t> recv(b.recv_bytes + 16, 0x5A);
      Status s = comm->alltoallv(b.send.data(), b.sc.data(), b.sd.data(), recv.data(), b.rc.data(), b.rd.data(),
                                    recv.size());
      SCOPED_TRACE(lname);
      ASSERT_EQ(s.code(), Code::kMismatch) << s.to_string();
      EXPECT_NE(s.message().find(fmt::format("rank 0 sends {} bytes to rank {}", sent, n - 1)), std::string::npos)
          << s.message();
      EXPECT_NE(s.message().find(fmt::format("expects {} bytes", sent + 1)), std::string::npos) << s.message();
      EXPECT_TRUE(std::all_of(recv.begin(), recv.end(), [](uint8_t c) { return c == 0x5A; }));
      // prepare gives the same verdict, and leaves the plan unwritten.
      ExchangePlan plan;
      Status ps = comm->prepare(spec_of(b, recv.size()), plan);
      ASSERT_EQ(ps.code(), Code::kMismatch) << ps.to_string();
      EXPECT_EQ(ps.message(), s.message().substr(s.message().size() - ps.message().size()));
      EXPECT_FALSE(plan.valid());
      // The communicator stays usable after a rejected exchange.
      Buffers ok = make_buffers(Pattern::kRandom, 6, n, me, false);
      std::vector<uint8_t> r2(ok.recv_bytes);
      s = comm->alltoallv(ok.send.data(), ok.sc.data(), ok.sd.data(), r2.data(), ok.rc.data(), ok.rd.data(),
                             r2.size());
      ASSERT_TRUE(s.ok()) << s.to_string();
      EXPECT_TRUE(r2 == ok.expect);
    }
  }
}

TEST_P(A2ATest, TooSmallReceiveBufferFailsEverywhereWithoutWriting) {
  const int n = world_size(), me = world_rank();
  Fixture f = make_fixture(layouts(n).back().second);
  for (A2AAlgo algo : {A2AAlgo::kFlat, A2AAlgo::kHierarchical}) {
    auto comm = make_comm(f, algo);
    ASSERT_TRUE(comm);
    Buffers b = make_buffers(Pattern::kRandom, 8, n, me, false);
    const int victim = n / 2;
    // Rank `victim` says its buffer is one byte short (the real allocation has a guard zone).
    const uint64_t needed = b.recv_bytes;
    std::vector<uint8_t> recv(needed + 64, 0x77);
    const uint64_t capacity = me == victim ? needed - 1 : needed;
    Status s = comm->alltoallv(b.send.data(), b.sc.data(), b.sd.data(), recv.data(), b.rc.data(), b.rd.data(),
                                  capacity);
    ASSERT_EQ(s.code(), Code::kOutOfRange) << s.to_string();
    uint64_t victim_needed = me == victim ? needed : 0;
    MPI_Allreduce(MPI_IN_PLACE, &victim_needed, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_NE(s.message().find(fmt::format("rank {}'s receive buffer holds {} bytes", victim, victim_needed - 1)),
              std::string::npos)
        << s.message();
    EXPECT_TRUE(std::all_of(recv.begin(), recv.end(), [](uint8_t c) { return c == 0x77; }));
    ExchangePlan plan;
    Status ps = comm->prepare(spec_of(b, capacity), plan);
    ASSERT_EQ(ps.code(), Code::kOutOfRange) << ps.to_string();
    EXPECT_NE(ps.message().find(fmt::format("rank {}'s receive buffer holds {} bytes", victim, victim_needed - 1)),
              std::string::npos)
        << ps.message();
    EXPECT_FALSE(plan.valid());
  }
}

// A chunk size or an algorithm that differs across ranks would make receives that never match:
// Communicator::create refuses it on every rank, naming the range of values.
TEST_P(A2ATest, ChunkAlgorithmOrTimeoutDifferingAcrossRanksIsAnErrorOnEveryRank) {
  const int n = world_size(), me = world_rank();
  if (n < 2) GTEST_SKIP() << "needs 2 ranks";
  Fixture f = make_fixture(layouts(n).back().second);
  auto create = [&](A2AAlgo algo, uint64_t chunk) {
    CommConfig cfg;
    cfg.transport = GetParam();
    cfg.algo = algo;
    cfg.chunk_bytes = chunk;
    cfg.timeout_s = 60;
    return Communicator::create(*f.boot, f.cluster, cfg);
  };
  auto chunks = create(A2AAlgo::kHierarchical, me == n - 1 ? 8192 : 4096);
  ASSERT_FALSE(chunks.ok());
  EXPECT_EQ(chunks.status().code(), Code::kMismatch);
  EXPECT_NE(chunks.status().message().find(fmt::format("rank 0 has 4096 bytes, rank {} has 8192", n - 1)),
            std::string::npos)
      << chunks.status().message();
  auto algos = create(me == 0 ? A2AAlgo::kFlat : A2AAlgo::kHierarchical, 4096);
  ASSERT_FALSE(algos.ok());
  EXPECT_EQ(algos.status().code(), Code::kMismatch);
  EXPECT_NE(algos.status().message().find("algorithm"), std::string::npos) << algos.status().message();
  // The deadline too: ranks that give up at different times blame the wrong peer.
  CommConfig cfg;
  cfg.transport = GetParam();
  cfg.timeout_s = me == n - 1 ? 30 : 60;
  auto timeouts = Communicator::create(*f.boot, f.cluster, cfg);
  ASSERT_FALSE(timeouts.ok());
  EXPECT_EQ(timeouts.status().code(), Code::kMismatch);
  EXPECT_NE(timeouts.status().message().find(fmt::format("rank 0 has 60 s, rank {} has 30 s", n - 1)),
            std::string::npos)
      << timeouts.status().message();
  // A negative timeout is refused naming it, never replaced by LOCMOE_TIMEOUT_S.
  cfg.timeout_s = -1;
  auto negative = Communicator::create(*f.boot, f.cluster, cfg);
  ASSERT_FALSE(negative.ok());
  EXPECT_EQ(negative.status().code(), Code::kInvalidArgument);
  EXPECT_NE(negative.status().message().find("timeout_s = -1"), std::string::npos) << negative.status().message();
  // The transports too: a rank on another transport would wait for messages that never come.
  const std::string other = GetParam() == "mpi" ? "ucx" : "mpi";
  if (transport_available(other)) {
    cfg.timeout_s = 60;
    cfg.transport = me == n - 1 ? other : GetParam();
    auto transports = Communicator::create(*f.boot, f.cluster, cfg);
    ASSERT_FALSE(transports.ok());
    EXPECT_EQ(transports.status().code(), Code::kMismatch);
    EXPECT_NE(transports.status().message().find(fmt::format("the transports (LOCMOE_TRANSPORT / "
                                                             "LOCMOE_INTRA_TRANSPORT or CommConfig) differ between "
                                                             "rank 0 and rank {}", n - 1)),
              std::string::npos)
        << transports.status().message();
  }
  // Agreeing ranks still make a communicator afterwards.
  EXPECT_TRUE(create(A2AAlgo::kHierarchical, 4096).ok());
}

// The opposite direction without negotiation: transpose(plan) sends every received byte back
// where it came from (the forward send buffer, recomputed from (seed, src, dst, index)), and is
// MPI_Alltoallv with the roles of the arrays swapped.
TEST_P(A2ATest, TransposedPlanSendsEveryByteBack) {
  const int n = world_size(), me = world_rank();
  for (const auto& [lname, node_of] : layouts(n)) {
    Fixture f = make_fixture(node_of);
    for (A2AAlgo algo : {A2AAlgo::kFlat, A2AAlgo::kHierarchical}) {
      for (uint64_t chunk : {uint64_t{0}, uint64_t{1000}}) {
        auto comm = make_comm(f, algo, chunk);
        ASSERT_TRUE(comm);
        SCOPED_TRACE(fmt::format("{}, algo {}, chunk {}", lname, algo == A2AAlgo::kFlat ? "flat" : "hier", chunk));
        Buffers b = make_buffers(Pattern::kRandom, 40 + chunk, n, me, true);
        ExchangePlan plan, back;
        const Communicator::Counters c0 = comm->counters();
        Status s = comm->prepare(spec_of(b, b.recv_bytes), plan);
        ASSERT_TRUE(s.ok()) << s.to_string();
        EXPECT_EQ(comm->counters().metadata_rounds, c0.metadata_rounds + 1);
        EXPECT_EQ(comm->counters().data_exchanges, c0.data_exchanges);
        std::vector<uint8_t> recv(b.recv_bytes, 0xA5);
        s = comm->execute(plan, b.send.data(), recv.data());
        ASSERT_TRUE(s.ok()) << s.to_string();
        ASSERT_TRUE(recv == b.expect);
        s = comm->transpose(plan, back);
        ASSERT_TRUE(s.ok()) << s.to_string();
        ASSERT_EQ(back.send_counts, b.rc);
        ASSERT_EQ(back.recv_counts, b.sc);
        ASSERT_EQ(back.recv_bytes, b.send.size());
        std::vector<uint8_t> again(b.send.size(), 0x11);
        s = comm->execute(back, recv.data(), again.data());
        ASSERT_TRUE(s.ok()) << s.to_string();
        ASSERT_TRUE(again == b.send) << "transposed exchange did not return the send buffer";
        // MPI_Alltoallv of the swapped arrays.
        std::vector<int> sc(n), sd(n), rc(n), rd(n);
        for (int r = 0; r < n; ++r) sc[r] = int(b.rc[r]), sd[r] = int(b.rd[r]), rc[r] = int(b.sc[r]), rd[r] = int(b.sd[r]);
        std::vector<uint8_t> want(b.send.size(), 0x11);
        MPI_Alltoallv(recv.data(), sc.data(), sd.data(), MPI_BYTE, want.data(), rc.data(), rd.data(), MPI_BYTE,
                      MPI_COMM_WORLD);
        ASSERT_TRUE(again == want);
        EXPECT_EQ(comm->last_stats().meta_msgs_sent, 0u);
        // One negotiation, two data exchanges (transpose is local).
        EXPECT_EQ(comm->counters().metadata_rounds, c0.metadata_rounds + 1);
        EXPECT_EQ(comm->counters().data_exchanges, c0.data_exchanges + 2);
        // alltoallv negotiates and moves; exchange_counts only negotiates.
        std::vector<uint64_t> learned(n);
        ASSERT_TRUE(comm->exchange_counts(b.sc.data(), learned.data()).ok());
        EXPECT_EQ(learned, b.rc);
        ASSERT_TRUE(comm->alltoallv(b.send.data(), b.sc.data(), b.sd.data(), recv.data(), b.rc.data(), b.rd.data(),
                                    recv.size())
                        .ok());
        EXPECT_EQ(comm->counters().metadata_rounds, c0.metadata_rounds + 3);
        EXPECT_EQ(comm->counters().data_exchanges, c0.data_exchanges + 3);
      }
    }
  }
}

// Negotiated in rows, executed on rows of `unit` bytes (scale), and receive counts learned from
// the peers (no recv_counts given): the counts are what every rank computes from the pattern.
TEST_P(A2ATest, ScaledPlanAndLearnedCountsMatchTheOracle) {
  const int n = world_size(), me = world_rank();
  for (const auto& [lname, node_of] : edge_layouts(n)) {
    Fixture f = make_fixture(node_of);
    for (A2AAlgo algo : {A2AAlgo::kFlat, A2AAlgo::kHierarchical}) {
      auto comm = make_comm(f, algo, 4096);
      ASSERT_TRUE(comm);
      SCOPED_TRACE(fmt::format("{}, algo {}", lname, algo == A2AAlgo::kFlat ? "flat" : "hier"));
      const uint64_t unit = 24;
      Buffers rows = make_buffers(Pattern::kRandom, 77, n, me, false);
      Buffers bytes = make_buffers(Pattern::kRandom, 77, n, me, false, unit);
      ExchangeSpec spec;
      spec.send_counts = rows.sc.data();  // packed, receive counts from the peers
      ExchangePlan plan, scaled;
      Status s = comm->prepare(spec, plan);
      ASSERT_TRUE(s.ok()) << s.to_string();
      ASSERT_EQ(plan.recv_counts, rows.rc);
      ASSERT_EQ(plan.recv_displs, rows.rd);
      s = comm->scale(plan, unit, scaled);
      ASSERT_TRUE(s.ok()) << s.to_string();
      ASSERT_EQ(scaled.recv_counts, bytes.rc);
      std::vector<uint8_t> recv(bytes.recv_bytes, 0xA5);
      s = comm->execute(scaled, bytes.send.data(), recv.data());
      ASSERT_TRUE(s.ok()) << s.to_string();
      EXPECT_TRUE(recv == bytes.expect);
      EXPECT_TRUE(recv == oracle(bytes, n));
      EXPECT_EQ(comm->scale(plan, 0, scaled).code(), Code::kInvalidArgument);
    }
  }
}

// A plan belongs to the communicator that negotiated it.
TEST_P(A2ATest, ExecuteRefusesAnotherCommunicatorsPlan) {
  const int n = world_size(), me = world_rank();
  Fixture f = make_fixture(layouts(n).front().second);
  auto a = make_comm(f, A2AAlgo::kFlat);
  auto b2 = make_comm(f, A2AAlgo::kFlat);
  ASSERT_TRUE(a && b2);
  Buffers b = make_buffers(Pattern::kRandom, 3, n, me, false);
  ExchangePlan plan;
  ASSERT_TRUE(a->prepare(spec_of(b, b.recv_bytes), plan).ok());
  std::vector<uint8_t> recv(b.recv_bytes);
  Status s = b2->execute(plan, b.send.data(), recv.data());
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("not made by this communicator"), std::string::npos) << s.message();
  // Both still work.
  EXPECT_TRUE(a->execute(plan, b.send.data(), recv.data()).ok());
  EXPECT_TRUE(recv == b.expect);
}

// Issue 17: 8 ranks as 2 nodes of an ND v5 (LOCMOE_TOPO_FILE), node a placed out of PCI order
// (LOCMOE_GPU=3,1,0,2), node b in order. Local rank l of a drives GPU perm[l], local rank j of b
// GPU j, and the file gives each GPU its own rail NIC, so a's local rank l shares a NIC with b's
// local rank perm[l]: the hierarchical exchange must pair exactly those (not local rank l with
// local rank l), and still give MPI_Alltoallv's bytes.
TEST_P(A2ATest, HierarchicalPairsTheRanksOfTwoNodesByRailNic) {
  const int n = world_size(), me = world_rank();
  if (n != 8) GTEST_SKIP() << "needs 8 ranks";
  const int perm[4] = {3, 1, 0, 2};
  Fixture f;
  {
    auto b = make_mpi_bootstrap(MPI_COMM_WORLD);
    ASSERT_TRUE(b.ok());
    f.boot = std::move(b).value();
    ASSERT_TRUE(params::set("LOCMOE_HOSTID", me < 4 ? "lanes-a" : "lanes-b").ok());
    ASSERT_TRUE(params::set("LOCMOE_TOPO_FILE", std::string(LOCMOE_TEST_DATA) + "/topologies/azure-ndv5.nccl.xml").ok());
    ASSERT_TRUE(params::set("LOCMOE_GPU", me < 4 ? "3,1,0,2" : "0,1,2,3").ok());
    auto cm = topo::build_cluster_map(*f.boot);
    params::reset();
    ASSERT_TRUE(cm.ok()) << cm.status().to_string();
    f.cluster = std::move(cm).value();
  }
  ASSERT_EQ(f.cluster.num_nodes(), 2);
  // The expected partner from the placement alone, and the facts it rests on: distinct NICs on a
  // node, and the partner's NIC (bus id) is this rank's.
  auto partner = [&](int r) {
    if (r < 4) return 4 + perm[r];
    for (int l = 0; l < 4; ++l)
      if (4 + perm[l] == r) return l;
    return -1;
  };
  const RankDescriptor& mine = f.cluster.ranks[me].desc;
  ASSERT_FALSE(mine.nic.empty());
  EXPECT_EQ(f.cluster.ranks[partner(me)].desc.nic, mine.nic);
  for (int r = 0; r < n; ++r)
    if (r != me && f.cluster.node_of(r) == f.cluster.my_node()) {
      EXPECT_NE(f.cluster.ranks[r].desc.nic, mine.nic);
    }
  auto comm = make_comm(f, A2AAlgo::kHierarchical, 4096);
  ASSERT_TRUE(comm);
  Buffers b = make_buffers(Pattern::kRandom, 17, n, me, true);
  ExchangePlan plan;
  Status s = comm->prepare(spec_of(b, b.recv_bytes), plan);
  ASSERT_TRUE(s.ok()) << s.to_string();
  int inter = 0;
  for (const PlanStep& st : plan.schedule.steps) {
    if (st.stage != PlanStage::kInterNode) continue;
    for (uint32_t t = st.transfers_begin; t < st.transfers_end; ++t) {
      EXPECT_EQ(plan.schedule.transfers[t].peer, partner(me)) << "rank " << me << " (NIC " << mine.nic << ")";
      ++inter;
    }
  }
  EXPECT_GT(inter, 0);
  std::vector<uint8_t> recv(b.recv_bytes, 0xA5);
  s = comm->execute(plan, b.send.data(), recv.data());
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(recv == b.expect);
  EXPECT_TRUE(recv == oracle(b, n));
  std::vector<uint8_t> again(b.recv_bytes, 0xA5);
  s = comm->alltoallv(b.send.data(), b.sc.data(), b.sd.data(), again.data(), b.rc.data(), b.rd.data(), again.size());
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(again == recv);
  EXPECT_LE(comm->last_stats().internode_msgs_sent, 1u);
}

INSTANTIATE_TEST_SUITE_P(Transports, A2ATest, ::testing::Values("mpi", "ucx"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace locmoe
