// Cost model (perf/whatif): hand-computed stage loads, invariants on random traffic, topology
// facts of a known machine, and the synthetic routing rules' defining properties.
#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <span>

#include "locmoe/comm/plan.h"
#include "locmoe/perf/whatif.h"

namespace w = locmoe::whatif;

namespace {

w::ClusterModel model(int nodes, int g, int nics, double intra_bw, double inter_bw) {
  w::ClusterModel c;
  c.nodes = nodes, c.ranks_per_node = g, c.nics_per_node = nics;
  c.intra = {intra_bw, 0};
  c.inter = {inter_bw, 0};
  return c;
}

}  // namespace

TEST(Whatif, UniformTwoNodesByHand) {
  // 2 nodes x 4 ranks, one NIC per node, b bytes between every pair.
  const double b = 1000, bi = 1e6, be = 1e4;
  const w::ClusterModel c = model(2, 4, 1, bi, be);
  const auto t = w::uniform_traffic(8, uint64_t(b));
  auto flat = w::predict(t, c, w::Algo::kFlat);
  ASSERT_TRUE(flat.ok()) << flat.status().to_string();
  // Flat: the NIC of node 0 carries 4 ranks x 4 remote ranks x b; a rank's intra port 3b.
  EXPECT_DOUBLE_EQ(flat->seconds, 16 * b / be);
  EXPECT_DOUBLE_EQ(flat->intra_seconds, 3 * b / bi);
  EXPECT_EQ(flat->internode_bytes, uint64_t(32 * b));
  EXPECT_EQ(flat->internode_msgs, 32u);
  // Hierarchical, rail l = local rank l on both nodes, carrying the data for remote local rank l.
  // Gather: each rank sends b to each of the 3 other local ranks (for their remote namesakes) and b
  // directly to each: 6b out, and 6b in. Rails: each of 4 rails carries 4 sources x b = 4b, all
  // through the node's one NIC: 16b, in 8 messages (4 rails x 2 directions).
  auto hier = w::predict(t, c, w::Algo::kHierarchical);
  ASSERT_TRUE(hier.ok());
  ASSERT_EQ(hier->stages.size(), 2u);
  EXPECT_DOUBLE_EQ(hier->stages[0].seconds, 6 * b / bi);
  EXPECT_DOUBLE_EQ(hier->stages[1].seconds, 16 * b / be);
  // One chunk per rail message (4b < the default chunk): no overlap, the stages add up.
  EXPECT_DOUBLE_EQ(hier->seconds, 6 * b / bi + 16 * b / be);
  // Chunks of b: 4 per rail message; the pipeline hides all but a quarter of the faster stage.
  w::ClusterModel chunked = c;
  chunked.chunk_bytes = uint64_t(b);
  auto piped = w::predict(t, chunked, w::Algo::kHierarchical);
  ASSERT_TRUE(piped.ok());
  EXPECT_DOUBLE_EQ(piped->seconds, 16 * b / be + 6 * b / bi / 4);
  chunked.chunk_bytes = 0;
  EXPECT_FALSE(w::predict(t, chunked, w::Algo::kHierarchical).ok());
  EXPECT_EQ(hier->internode_bytes, uint64_t(32 * b));
  EXPECT_EQ(hier->internode_msgs, 8u);
  // Lower bound: 16b through each node's NIC.
  EXPECT_DOUBLE_EQ(hier->lower_bound_s, 16 * b / be);
}

TEST(Whatif, RailOptimizedSpineByHand) {
  // 2 nodes x 4 ranks, 4 NICs per node (rails), b bytes between every pair, each rail's spine link
  // at sp. Flat: a rank sends 4b to the other node, 3b of it to other rails; rail l's spine link
  // carries the cross-rail bytes of its 2 ranks, 6b each way. Hierarchical: rail l to rail l only.
  const double b = 1000, bi = 1e9, be = 1e4, sp = 1e4;
  w::ClusterModel c = model(2, 4, 4, bi, be);
  const auto t = w::uniform_traffic(8, uint64_t(b));
  auto open = w::predict(t, c, w::Algo::kFlat);  // spine.bw 0: non-blocking, the NIC decides
  ASSERT_TRUE(open.ok());
  EXPECT_DOUBLE_EQ(open->seconds, 4 * b / be);
  EXPECT_EQ(open->spine_bytes, uint64_t(8 * 3 * b));
  EXPECT_EQ(open->stages[0].max_spine_bytes, uint64_t(6 * b));
  c.spine = {sp, 0};
  auto flat = w::predict(t, c, w::Algo::kFlat);
  ASSERT_TRUE(flat.ok());
  EXPECT_DOUBLE_EQ(flat->seconds, 6 * b / sp);
  EXPECT_DOUBLE_EQ(flat->inter_seconds, 6 * b / sp);
  auto hier = w::predict(t, c, w::Algo::kHierarchical);
  ASSERT_TRUE(hier.ok());
  EXPECT_EQ(hier->spine_bytes, 0u);
  // Gather 6b per rank port (as on one NIC), then rail l carries 4b each way on its own NIC.
  EXPECT_DOUBLE_EQ(hier->seconds, 6 * b / bi + 4 * b / be);
  // The bound ignores the spine (an exchange can stay on its rails): 16b over 4 NICs.
  EXPECT_DOUBLE_EQ(flat->lower_bound_s, 4 * b / be);
  c.spine = {-1, 0};
  EXPECT_FALSE(w::predict(t, c, w::Algo::kFlat).ok());
}

TEST(Whatif, InvariantsOnRandomTraffic) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const int nodes = 1 + int(rng() % 4), g = 1 + int(rng() % 4), nics = 1 + int(rng() % g);
    w::ClusterModel c = model(nodes, g, nics, 1e9 * (1 + rng() % 10), 1e8 * (1 + rng() % 10));
    c.intra.latency_s = 1e-6, c.inter.latency_s = 5e-6;
    c.spine.bw = (rng() % 2) ? 0 : 1e7 * (1 + rng() % 10);
    const int R = nodes * g;
    w::TrafficMatrix t{R, std::vector<uint64_t>(size_t(R) * R)};
    uint64_t cross = 0, cross_pairs = 0, cross_rails = 0;
    for (int s = 0; s < R; ++s)
      for (int d = 0; d < R; ++d) {
        const uint64_t v = (rng() % 3 == 0) ? 0 : rng() % 100000;
        t.bytes[size_t(s) * R + d] = v;
        if (s / g != d / g) cross += v, cross_pairs += v != 0;
        if (s / g != d / g && (s % g) % nics != (d % g) % nics) cross_rails += v;
      }
    for (w::Algo a : {w::Algo::kFlat, w::Algo::kHierarchical}) {
      auto p = w::predict(t, c, a);
      ASSERT_TRUE(p.ok());
      EXPECT_LE(p->lower_bound_s, p->seconds * (1 + 1e-12)) << w::algo_name(a) << " trial " << trial;
      EXPECT_EQ(p->internode_bytes, cross) << w::algo_name(a);
      if (a == w::Algo::kFlat) {
        EXPECT_EQ(p->internode_msgs, cross_pairs);
        EXPECT_EQ(p->spine_bytes, cross_rails);
      } else {
        EXPECT_LE(p->internode_msgs, uint64_t(nodes) * (nodes - 1) * g);  // one per remote node per rank
        EXPECT_EQ(p->spine_bytes, 0u);  // rail l to rail l
      }
      // Combine moves every byte back: the same bytes between nodes.
      auto back = w::predict(t.transposed(), c, a);
      ASSERT_TRUE(back.ok());
      EXPECT_EQ(back->internode_bytes, cross);
    }
  }
}

// The model and the communicator's statistics read one schedule (comm/plan.h): over every rank's
// plan, the bytes and messages ExchangeStats gives an execute() are what predict() charges, for
// both algorithms, with rails permuted against local ranks and chunked messages.
TEST(Whatif, ChargesWhatTheCommunicatorsStatsCount) {
  std::mt19937 rng(13);
  for (int trial = 0; trial < 12; ++trial) {
    const int nodes = 1 + int(rng() % 3), g = 2 + int(rng() % 3);
    w::ClusterModel c = model(nodes, g, g, 1e9, 1e8);
    c.rail_of_local.resize(g);
    for (int l = 0; l < g; ++l) c.rail_of_local[l] = g - 1 - l;  // NICs in reverse of local ranks
    c.chunk_bytes = 4096;
    const int R = nodes * g;
    w::TrafficMatrix t{R, std::vector<uint64_t>(size_t(R) * R)};
    for (auto& v : t.bytes) v = (rng() % 4 == 0) ? 0 : rng() % 20000;
    // The map comm builds for these ranks: lanes by rail NIC.
    locmoe::ClusterMap m;
    m.nodes.resize(nodes);
    m.lanes.resize(nodes);
    for (int r = 0; r < R; ++r) {
      locmoe::RankInfo info;
      info.rank = r, info.node = r / g, info.local_rank = r % g, info.lane = c.rail_of_local[r % g];
      m.ranks.push_back(info);
      m.nodes[r / g].push_back(r);
    }
    for (int n = 0; n < nodes; ++n)
      for (int j = 0; j < g; ++j) m.lanes[n].push_back(n * g + (g - 1 - j));
    const size_t len = locmoe::plan_row_len(R);
    std::vector<uint64_t> rows(len * R);
    for (int r = 0; r < R; ++r) {
      locmoe::ExchangeSpec spec;
      spec.send_counts = &t.bytes[size_t(r) * R];
      ASSERT_TRUE(locmoe::plan_row(spec, R, std::span<uint64_t>(rows).subspan(len * r, len)).ok());
    }
    for (w::Algo a : {w::Algo::kFlat, w::Algo::kHierarchical}) {
      uint64_t inter = 0, msgs = 0, intra = 0;
      for (int r = 0; r < R; ++r) {
        m.my_rank = r;
        locmoe::ExchangeSpec spec;
        spec.send_counts = &t.bytes[size_t(r) * R];
        locmoe::ExchangePlan plan;
        ASSERT_TRUE(locmoe::build_plan(m, a == w::Algo::kFlat ? locmoe::A2AAlgo::kFlat : locmoe::A2AAlgo::kHierarchical,
                                       c.chunk_bytes, spec, rows, plan).ok());
        inter += plan.stats.internode_bytes_sent;
        msgs += plan.stats.internode_msgs_sent;
        intra += plan.stats.intranode_bytes_sent;
      }
      auto p = w::predict(t, c, a);
      ASSERT_TRUE(p.ok()) << p.status().to_string();
      EXPECT_EQ(p->internode_bytes, inter) << w::algo_name(a) << " trial " << trial;
      EXPECT_EQ(p->internode_msgs, msgs) << w::algo_name(a) << " trial " << trial;
      EXPECT_EQ(p->intranode_bytes, intra) << w::algo_name(a) << " trial " << trial;
      if (a == w::Algo::kHierarchical) {
        EXPECT_EQ(p->spine_bytes, 0u) << "rail l pairs NIC l with NIC l";
      }
    }
  }
}

TEST(Whatif, RouterExchangeMatchesRouteExchangeCounts) {
  // Figures route_exchange measured under mpirun (docs/data/router/route-exchange.jsonl, 4 ranks on
  // 2 nodes, E = 64, 1024 tokens per rank): LocMoE+ 12 collectives, 139840 B sent, 557824 B
  // received per rank; locmoe-opt 8 + its counted rounds, sent - counted payload = 560 B,
  // received - sent = 144 B.
  w::ClusterModel c = model(2, 2, 1, 1e9, 1e8);
  c.inter.latency_s = 1e-5;
  w::SyntheticRouting sr;
  sr.tokens_per_rank = 1024;
  sr.experts = 64;
  sr.router.k = 2;
  sr.router.name = "locmoe+";
  locmoe::RouteStats st;
  ASSERT_TRUE(w::synthetic_plans(sr, c, &st).ok());
  w::RouterExchange x = w::router_exchange(sr.router, st, c);
  EXPECT_EQ(x.collectives, 12);
  EXPECT_EQ(x.bytes_sent, 139840);
  EXPECT_EQ(x.bytes_received, 557824);
  sr.router.name = "locmoe-opt";
  ASSERT_TRUE(w::synthetic_plans(sr, c, &st).ok());
  x = w::router_exchange(sr.router, st, c);
  EXPECT_GT(st.exchange_rounds, 0);
  EXPECT_EQ(x.collectives, 8 + st.exchange_rounds);
  EXPECT_EQ(x.bytes_sent - st.exchange_bytes, 560);
  EXPECT_EQ(x.bytes_received - x.bytes_sent, 144);
  // Latency-bound: ceil(log2 4) = 2 inter-node latencies per collective, plus the bytes.
  EXPECT_GT(x.seconds, static_cast<double>(x.collectives) * 2 * c.inter.latency_s);
  sr.router.name = "gshard";
  ASSERT_TRUE(w::synthetic_plans(sr, c, &st).ok());
  EXPECT_EQ(w::router_exchange(sr.router, st, c).collectives, 0) << "not modeled";
}

TEST(Whatif, RejectsMismatchAndBadFigures) {
  const auto t = w::uniform_traffic(6, 10);
  auto p = w::predict(t, model(2, 4, 1, 1e9, 1e8), w::Algo::kFlat);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), locmoe::Code::kInvalidArgument);
  EXPECT_NE(p.status().message().find("6 ranks"), std::string::npos) << p.status().message();
  auto z = w::predict(w::uniform_traffic(8, 10), model(2, 4, 1, 0, 1e8), w::Algo::kFlat);
  EXPECT_FALSE(z.ok());
}

TEST(Whatif, TopologyFactsOfNdH100v5) {
  // Azure ND H100 v5: 8 H100 GPUs and 8 ConnectX-7 InfiniBand NICs (one per GPU) per VM.
  auto f = w::read_topology_facts(std::string(LOCMOE_TEST_DATA) + "/topologies/azure-ndv5.nccl.xml");
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->gpus, 8);
  EXPECT_EQ(f->nics, 8);
  auto missing = w::read_topology_facts("/nonexistent/topo.xml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), locmoe::Code::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/topo.xml"), std::string::npos);
}

TEST(Whatif, TopologyFactsNicSpeedFromNetElement) {
  // Two GPUs and one NIC whose <net> port states 200000 Mb/s = 25e9 bytes/s.
  const std::string path = ::testing::TempDir() + "whatif_net_speed.nccl.xml";
  {
    std::ofstream out(path);
    out << R"(<system version="1">
  <cpu numaid="0" affinity="0000ffff" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="85">
    <pci busid="0000:01:00.0" class="0x060400" link_speed="16 GT/s" link_width="16">
      <pci busid="0000:02:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:03:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:04:00.0" class="0x020700" link_speed="16 GT/s" link_width="16">
        <nic><net name="mlx5_0" dev="0" speed="200000" port="1" gdr="1"/></nic>
      </pci>
    </pci>
  </cpu>
</system>
)";
  }
  auto f = w::read_topology_facts(path);
  std::remove(path.c_str());
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->gpus, 2);
  EXPECT_EQ(f->nics, 1);
  EXPECT_DOUBLE_EQ(f->nic_bw, 200000.0 * 1e6 / 8);
}

TEST(Whatif, RailsFromThePlacementRule) {
  // ND V100 v2: 8 GPUs, one InfiniBand NIC (tests/data/topologies/README.md): every rank's rail.
  auto v2 = w::read_topology_facts(std::string(LOCMOE_TEST_DATA) + "/topologies/azure-ndv2.nccl.xml");
  ASSERT_TRUE(v2.ok()) << v2.status().to_string();
  EXPECT_EQ(v2->nics, 1);
  EXPECT_EQ(v2->rails, std::vector<int>(8, 0));
  // Two GPUs each beside an InfiniBand NIC, and a management Ethernet NIC that carries no rail.
  const std::string path = ::testing::TempDir() + "whatif_rails.nccl.xml";
  {
    std::ofstream out(path);
    out << R"(<system version="1">
  <cpu numaid="0" affinity="0000ffff" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="85">
    <pci busid="0000:01:00.0" class="0x060400" link_speed="16 GT/s" link_width="16">
      <pci busid="0000:02:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:03:00.0" class="0x020700" link_speed="16 GT/s" link_width="16"/>
    </pci>
    <pci busid="0000:11:00.0" class="0x060400" link_speed="16 GT/s" link_width="16">
      <pci busid="0000:12:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:13:00.0" class="0x020700" link_speed="16 GT/s" link_width="16"/>
    </pci>
    <pci busid="0000:21:00.0" class="0x020000" link_speed="16 GT/s" link_width="16"/>
  </cpu>
</system>
)";
  }
  auto f = w::read_topology_facts(path);
  std::remove(path.c_str());
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->gpus, 2);
  EXPECT_EQ(f->nics, 2);
  EXPECT_EQ(f->rails, (std::vector<int>{0, 1}));
  // Rails shape the prediction: two ranks on one NIC take twice the NIC time of one each.
  w::ClusterModel spread = model(2, 2, 2, 1e12, 1e8), shared = spread;
  shared.rail_of_local = {0, 0};
  auto a = w::predict(w::uniform_traffic(4, 1 << 20), spread, w::Algo::kFlat);
  auto b = w::predict(w::uniform_traffic(4, 1 << 20), shared, w::Algo::kFlat);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_GT(b->seconds, 1.5 * a->seconds);
  shared.rail_of_local = {0, 2};
  EXPECT_FALSE(w::predict(w::uniform_traffic(4, 1), shared, w::Algo::kFlat).ok());
}

TEST(Whatif, TrafficFromRouterPlansCountsEveryCopy) {
  // Plans of a real router on the synthetic input; the matrix row of rank r, counted here from the
  // plan's slots (one copy per distinct destination rank of each token), times the row bytes.
  w::ClusterModel c = model(2, 2, 1, 1e9, 1e8);
  c.inter.latency_s = 1e-5;
  w::SyntheticRouting s;
  s.tokens_per_rank = 32, s.router.k = 2, s.experts = 8, s.route_hidden = 16;
  for (const char* router : {"gshard", "locmoe+", "dropless"}) {
    s.router.name = router;
    auto plans = w::synthetic_plans(s, c);
    ASSERT_TRUE(plans.ok()) << plans.status().to_string();
    ASSERT_EQ(plans->size(), 4u);
    auto t = w::traffic_from_plans(*plans, 100, 2);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    for (const locmoe::RoutingPlan& p : *plans) {
      std::vector<uint64_t> copies(4, 0);
      for (int tok = 0; tok < p.num_tokens; ++tok) {
        std::set<int> dests;
        for (int j = 0; j < p.k; ++j)
          if (p.expert[size_t(tok) * p.k + j] >= 0) dests.insert(p.expert[size_t(tok) * p.k + j] / 2);
        for (int d : dests) ++copies[d];
      }
      for (int d = 0; d < 4; ++d)
        EXPECT_EQ(t->at(p.rank, d), d == p.rank ? 0u : copies[d] * 200) << router << " " << p.rank << "->" << d;
    }
  }
  std::vector<locmoe::RoutingPlan> wrong(2);
  wrong[1].rank = 0;
  EXPECT_FALSE(w::traffic_from_plans(wrong, 100, 2).ok());
}
