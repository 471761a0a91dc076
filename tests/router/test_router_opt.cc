// locmoe-opt against an exact solver written here (a min-cost flow by successive shortest paths,
// sharing no code with router/src), its invariants, and determinism over thread counts (the
// multi-rank plans are compared with the single-process plan in test_router_mpi.cc).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/router/metrics.h"
#include "locmoe/router/router.h"
#include "router_reference.h"
#include "../../router/src/opt_solver.h"

namespace locmoe {
namespace {

// max sum x[t,e] v[t,e] s.t. sum_e x <= k, sum_t x <= C, x in {0,1}: source -> token (cap k) ->
// expert (cap 1, cost -v, only v > 0) -> sink (cap C). The network is acyclic, so successive
// shortest paths (Bellman-Ford on the residual graph) stay optimal for each flow value and the
// cost is convex in the flow: augmenting while the shortest path is negative gives the optimum.
struct ExactFlow {
  struct Edge {
    int to;
    int cap;
    double cost;
  };
  std::vector<Edge> edges;
  std::vector<std::vector<int>> out;
  void add(int a, int b, int cap, double cost) {
    out[a].push_back(static_cast<int>(edges.size()));
    edges.push_back({b, cap, cost});
    out[b].push_back(static_cast<int>(edges.size()));
    edges.push_back({a, 0, -cost});
  }
  // Returns the optimum and the chosen pairs (x[t*E+e]).
  double solve(int T, int E, int k, long C, const std::vector<double>& v, std::vector<uint8_t>& x) {
    const int n = T + E + 2, s = T + E, d = T + E + 1;
    out.assign(n, {});
    edges.clear();
    for (int t = 0; t < T; ++t) add(s, t, k, 0);
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < E; ++e)
        if (v[t * E + e] > 0) add(t, T + e, 1, -v[t * E + e]);
    for (int e = 0; e < E; ++e) add(T + e, d, static_cast<int>(C), 0);
    double total = 0;
    for (;;) {
      std::vector<double> dist(n, std::numeric_limits<double>::infinity());
      std::vector<int> via(n, -1);
      dist[s] = 0;
      for (int round = 0; round < n; ++round) {
        bool changed = false;
        for (int a = 0; a < n; ++a) {
          if (!std::isfinite(dist[a])) continue;
          for (int id : out[a]) {
            const Edge& ed = edges[id];
            if (ed.cap > 0 && dist[a] + ed.cost < dist[ed.to] - 1e-15) {
              dist[ed.to] = dist[a] + ed.cost;
              via[ed.to] = id;
              changed = true;
            }
          }
        }
        if (!changed) break;
      }
      if (!std::isfinite(dist[d]) || dist[d] >= 0) break;
      for (int b = d; b != s;) {
        const int id = via[b];
        edges[id].cap -= 1;
        edges[id ^ 1].cap += 1;
        b = edges[id ^ 1].to;
      }
      total -= dist[d];
    }
    x.assign(static_cast<size_t>(T * E), 0);
    for (int t = 0; t < T; ++t)
      for (int id : out[t])
        if (edges[id].to >= T && edges[id].to < T + E && edges[id].cap == 0 && (id % 2 == 0))
          x[t * E + edges[id].to - T] = 1;
    return total;
  }
};

struct Case {
  refr::Problem pr;
  ExpertPlacement pl;
};

Case make_case(int T, int H, int nodes, int rpn, int epr, unsigned seed) {
  Case c{refr::make_problem(T, H, nodes, rpn, epr, seed), *uniform_placement(nodes, rpn, epr)};
  return c;
}

// v[t,e] = p - cost(rank of t -> rank of e), in double from the reference scores.
std::vector<double> values(const refr::Problem& pr, const refr::Scores& sc, double mu, double nu) {
  std::vector<double> v(static_cast<size_t>(pr.T * pr.E));
  for (int t = 0; t < pr.T; ++t) {
    const int r = refr::rank_of_token(pr, t);
    for (int e = 0; e < pr.E; ++e) {
      const int d = e / pr.experts_per_rank;
      const double cost = d == r ? 0.0 : (pr.node_of_rank[d] == pr.node_of_rank[r] ? nu : mu);
      v[t * pr.E + e] = sc.p[t * pr.E + e] - cost;
    }
  }
  return v;
}

struct Checked {
  double objective = 0;  // from the plans and the reference scores
  long max_load = 0;
};

// Invariants of the plans (k, C, distinct experts, weights); returns the plans' objective.
Checked check_plans(const std::vector<RoutingPlan>& plans, const std::vector<double>& v, int E, int k, long C,
                    const std::string& what) {
  Checked out;
  std::vector<long> load(E, 0);
  int t = 0;
  for (const RoutingPlan& p : plans) {
    EXPECT_EQ(p.k, k) << what;
    for (int i = 0; i < p.num_tokens; ++i, ++t) {
      std::vector<int> seen;
      double wsum = 0;
      for (int j = 0; j < k; ++j) {
        const int e = p.expert[i * k + j];
        if (e < 0) {
          for (int j2 = j; j2 < k; ++j2) EXPECT_EQ(p.expert[i * k + j2], -1) << what << ": accepted slots first";
          break;
        }
        EXPECT_EQ(std::count(seen.begin(), seen.end(), e), 0) << what << " token " << t << " expert twice";
        seen.push_back(e);
        ++load[e];
        wsum += p.weight[i * k + j];
        out.objective += v[t * E + e];
      }
      if (!seen.empty()) {
        EXPECT_NEAR(wsum, 1.0, 1e-5) << what << " token " << t;
      }
    }
  }
  for (int e = 0; e < E; ++e) {
    EXPECT_LE(load[e], C) << what << " expert " << e;
    EXPECT_EQ(load[e], plans[0].global_expert_count[e]) << what;
    out.max_load = std::max(out.max_load, load[e]);
  }
  return out;
}

RouterConfig opt_config(int k, double cf, double mu, double nu = 0.0) {
  RouterConfig c;
  c.name = "locmoe-opt";
  c.k = k;
  c.capacity_factor = cf;
  c.cross_node_cost = mu;
  c.same_node_cost = nu;
  return c;
}

// The stated tolerance (docs/ROUTING.md): the objective is within 0.5% of the exact optimum
// (the optimum itself when the prices converge), measured in the router's float probabilities.
constexpr double kRelTol = 5e-3;

TEST(LocmoeOpt, ObjectiveWithinToleranceOfExactOptimum) {
  int exact_hits = 0, runs = 0;
  for (unsigned seed = 1; seed <= 6; ++seed) {
    Case cs = make_case(90 + 7 * static_cast<int>(seed), 16, 2, 2, 2, seed);
    const refr::Scores sc = refr::scores(cs.pr);
    for (const int k : {1, 2, 3}) {
      for (const double cf : {0.6, 1.0, 1.25}) {
        for (const double mu : {0.0, 0.03, 0.1, 0.3}) {
          const double nu = mu / 4;
          RouterConfig c = opt_config(k, cf, mu, nu);
          c.opt_iterations = 200;
          auto router = Router::create(c);
          ASSERT_TRUE(router.ok()) << router.status().to_string();
          auto plans = router->route_all_ranks({cs.pr.x.data(), cs.pr.T, cs.pr.H}, {cs.pr.w.data(), cs.pr.E, cs.pr.H}, cs.pl);
          ASSERT_TRUE(plans.ok()) << plans.status().to_string();
          const long C = refr::cf_capacity(cf, k, cs.pr.T, cs.pr.E);
          const std::vector<double> v = values(cs.pr, sc, mu, nu);
          std::vector<uint8_t> x;
          const double best = ExactFlow{}.solve(cs.pr.T, cs.pr.E, k, C, v, x);
          const std::string what = "seed " + std::to_string(seed) + " k " + std::to_string(k) + " cf " +
                                   std::to_string(cf) + " mu " + std::to_string(mu);
          EXPECT_EQ(router->last_stats().capacity, C) << what;
          const Checked got = check_plans(*plans, v, cs.pr.E, k, C, what);
          EXPECT_LE(got.objective, best + 1e-4) << what << ": above the exact optimum";
          EXPECT_GE(got.objective, best * (1 - kRelTol) - 1e-4) << what;
          EXPECT_NEAR(router->last_stats().objective, got.objective, 1e-3) << what;
          exact_hits += got.objective >= best - 1e-4;
          ++runs;
          if (router->last_stats().opt_converged) {
            EXPECT_NEAR(got.objective, best, 1e-4) << what << ": converged prices must give the optimum";
          }
        }
      }
    }
  }
  // Most small cases end exactly on the optimum (repair and refill close the rest of the gap).
  EXPECT_GE(exact_hits, runs * 3 / 4) << exact_hits << " of " << runs;
}

TEST(LocmoeOpt, LooseCapacityIsEachTokensBestPositiveExperts) {
  // With C >= T nothing binds: prices stay 0 and each token keeps its k best experts by v > 0.
  Case cs = make_case(150, 16, 2, 2, 2, 21);
  const refr::Scores sc = refr::scores(cs.pr);
  for (const double mu : {0.0, 0.2, 2.0}) {
    RouterConfig c = opt_config(2, 100.0, mu);
    auto router = Router::create(c);
    auto plans = router->route_all_ranks({cs.pr.x.data(), cs.pr.T, cs.pr.H}, {cs.pr.w.data(), cs.pr.E, cs.pr.H}, cs.pl);
    ASSERT_TRUE(plans.ok()) << plans.status().to_string();
    EXPECT_TRUE(router->last_stats().opt_converged);
    EXPECT_EQ(router->last_stats().opt_iterations, 1);
    const std::vector<double> v = values(cs.pr, sc, mu, 0.0);
    int t = 0;
    for (const RoutingPlan& p : *plans)
      for (int i = 0; i < p.num_tokens; ++i, ++t) {
        std::vector<double> row(v.begin() + t * cs.pr.E, v.begin() + (t + 1) * cs.pr.E);
        std::vector<int> want = refr::best(row, 2, std::vector<bool>(cs.pr.E, true));
        want.erase(std::remove_if(want.begin(), want.end(), [&](int e) { return row[e] <= 0; }), want.end());
        std::vector<int> got;
        for (int j = 0; j < 2; ++j)
          if (p.expert[i * 2 + j] >= 0) got.push_back(p.expert[i * 2 + j]);
        std::sort(want.begin(), want.end());
        std::sort(got.begin(), got.end());
        EXPECT_EQ(got, want) << "mu " << mu << " token " << t;
      }
    if (mu > 1.0) {
      const RouterMetrics m = compute_metrics(*plans, router->last_stats(), 16, 2);
      EXPECT_EQ(m.copies[kCrossNode], 0) << "a cross-node pair has v = p - mu < 0";
    }
  }
}

TEST(LocmoeOpt, LooseCapacityBestExpertsWithTiesAndPartialVectors) {
  // E = 40 (not a multiple of 16: the sorted prefix's vector lanes past E are padding), and the
  // same with pairs of identical gate rows, so every value ties with its pair's (the tie order,
  // lower expert first, must hold exactly).
  for (const bool ties : {false, true}) {
    Case cs = make_case(300, 16, 2, 4, 5, 23);
    if (ties)
      for (int e = 1; e < cs.pr.E; e += 2)
        std::copy_n(cs.pr.w.begin() + (e - 1) * cs.pr.H, cs.pr.H, cs.pr.w.begin() + e * cs.pr.H);
    const refr::Scores sc = refr::scores(cs.pr);
    for (const double mu : {0.0, 0.2}) {
      auto router = Router::create(opt_config(2, 100.0, mu));
      auto plans = router->route_all_ranks({cs.pr.x.data(), cs.pr.T, cs.pr.H}, {cs.pr.w.data(), cs.pr.E, cs.pr.H}, cs.pl);
      ASSERT_TRUE(plans.ok()) << plans.status().to_string();
      const std::vector<double> v = values(cs.pr, sc, mu, 0.0);
      int t = 0;
      for (const RoutingPlan& p : *plans)
        for (int i = 0; i < p.num_tokens; ++i, ++t) {
          std::vector<double> row(v.begin() + t * cs.pr.E, v.begin() + (t + 1) * cs.pr.E);
          std::vector<int> want = refr::best(row, 2, std::vector<bool>(cs.pr.E, true));
          want.erase(std::remove_if(want.begin(), want.end(), [&](int e) { return row[e] <= 0; }), want.end());
          std::vector<int> got;
          for (int j = 0; j < 2; ++j)
            if (p.expert[i * 2 + j] >= 0) got.push_back(p.expert[i * 2 + j]);
          std::sort(want.begin(), want.end());
          std::sort(got.begin(), got.end());
          EXPECT_EQ(got, want) << "ties " << ties << " mu " << mu << " token " << t;
        }
    }
  }
}

TEST(LocmoeOpt, CrossNodeCostTradesMassForLocality) {
  // Larger mu: never more cross-node copies, never more kept gate mass (the optimum's frontier).
  Case cs = make_case(400, 24, 2, 2, 2, 31);
  long last_cross = std::numeric_limits<long>::max();
  double last_mass = 2.0;
  for (const double mu : {0.0, 0.02, 0.05, 0.1, 0.3, 1.5}) {
    RouterConfig c = opt_config(2, 1.0, mu);
    c.opt_iterations = 200;
    auto router = Router::create(c);
    auto plans = router->route_all_ranks({cs.pr.x.data(), cs.pr.T, cs.pr.H}, {cs.pr.w.data(), cs.pr.E, cs.pr.H}, cs.pl);
    ASSERT_TRUE(plans.ok());
    const RouterMetrics m = compute_metrics(*plans, router->last_stats(), 24, 2);
    EXPECT_LE(m.copies[kCrossNode], last_cross * 1.01 + 1) << "mu " << mu;
    EXPECT_LE(m.kept_gate_mass, last_mass + 2e-3) << "mu " << mu;
    last_cross = m.copies[kCrossNode];
    last_mass = m.kept_gate_mass;
  }
  EXPECT_EQ(last_cross, 0);
}

TEST(LocmoeOpt, DeterministicAcrossThreadCounts) {
  Case cs = make_case(1100, 32, 2, 2, 4, 5);
  std::vector<RoutingPlan> first;
  RouteStats first_stats;
  for (const int threads : {1, 2, 5}) {
    RouterConfig c = opt_config(2, 1.0, 0.05);
    c.num_threads = threads;
    auto router = Router::create(c);
    auto plans = router->route_all_ranks({cs.pr.x.data(), cs.pr.T, cs.pr.H}, {cs.pr.w.data(), cs.pr.E, cs.pr.H}, cs.pl);
    ASSERT_TRUE(plans.ok());
    if (first.empty()) {
      first = *plans;
      first_stats = router->last_stats();
      continue;
    }
    for (size_t r = 0; r < first.size(); ++r) {
      EXPECT_EQ((*plans)[r].expert, first[r].expert) << threads << " threads";
      EXPECT_EQ((*plans)[r].weight, first[r].weight) << threads << " threads";
      EXPECT_EQ((*plans)[r].slot_dropped, first[r].slot_dropped) << threads << " threads";
    }
    EXPECT_EQ(router->last_stats().objective, first_stats.objective);
    EXPECT_EQ(router->last_stats().exchange_rounds, first_stats.exchange_rounds);
  }
}

TEST(LocmoeOpt, ExchangeDoesNotGrowWithTokens) {
  // Bytes per round are E int64 (prices) or 256 per unresolved expert (selection): the payload
  // of a step is bounded by rounds x 256 E x 8 whatever T.
  for (const int T : {200, 2000}) {
    Case cs = make_case(T, 16, 2, 2, 2, 8);
    auto router = Router::create(opt_config(2, 1.0, 0.05));
    auto plans = router->route_all_ranks({cs.pr.x.data(), cs.pr.T, cs.pr.H}, {cs.pr.w.data(), cs.pr.E, cs.pr.H}, cs.pl);
    ASSERT_TRUE(plans.ok());
    const RouteStats& st = router->last_stats();
    EXPECT_GE(st.exchange_rounds, st.opt_iterations + 1);
    EXPECT_LE(st.exchange_bytes, st.exchange_rounds * 256 * cs.pr.E * 8) << "T " << T;
  }
}

// LocMoE+'s lower bound for locmoe-opt, computed here by brute force over every C: the tokens'
// top-k experts by p, each expert keeping its C most probable, keep >= tau of the top-k mass.
struct TauRef {
  long c_lb = 0;
  bool reached = true;
  double margin = 1.0;  // relative distance of M(C_lb) and M(C_lb - 1) from the target
};
TauRef tau_reference(const std::vector<double>& p, int T, int E, int k, double tau, long ceiling) {
  std::vector<std::vector<double>> per(static_cast<size_t>(E));
  double total = 0;
  for (int t = 0; t < T; ++t) {
    std::vector<double> row(p.begin() + t * E, p.begin() + (t + 1) * E);
    for (int e : refr::best(row, k, std::vector<bool>(E, true))) {
      per[e].push_back(row[e]);
      total += row[e];
    }
  }
  for (auto& v : per) std::sort(v.rbegin(), v.rend());
  auto mass = [&](long C) {
    double m = 0;
    for (const auto& v : per)
      for (size_t i = 0; i < v.size() && static_cast<long>(i) < C; ++i) m += v[i];
    return m;
  };
  TauRef r;
  const double target = tau * total;
  for (long C = 1; C <= ceiling; ++C)
    if (mass(C) >= target) {
      r.c_lb = C;
      r.margin = std::min(mass(C) - target, C > 1 ? target - mass(C - 1) : 1.0) / total;
      return r;
    }
  r.c_lb = ceiling;
  r.reached = false;
  r.margin = (target - mass(ceiling)) / total;
  return r;
}

TEST(LocmoeOpt, TauCapacityIsLocmoePlusLowerBound) {
  int checked = 0;
  for (unsigned seed = 1; seed <= 4; ++seed) {
    Case cs = make_case(300 + 150 * static_cast<int>(seed), 16, 2, 2, 2, 60 + seed);
    const refr::Scores sc = refr::scores(cs.pr);
    for (const int k : {1, 2}) {
      for (const double tau : {0.3, 0.7, 0.9, 1.0}) {
        RouterConfig c = opt_config(k, 1.25, 0.05);
        c.opt_tau_capacity = true;
        c.tau = tau;
        auto router = Router::create(c);
        ASSERT_TRUE(router.ok());
        auto plans = router->route_all_ranks({cs.pr.x.data(), cs.pr.T, cs.pr.H}, {cs.pr.w.data(), cs.pr.E, cs.pr.H}, cs.pl);
        ASSERT_TRUE(plans.ok()) << plans.status().to_string();
        const long C_cf = refr::cf_capacity(1.25, k, cs.pr.T, cs.pr.E);
        const TauRef ref = tau_reference(sc.p, cs.pr.T, cs.pr.E, k, tau, C_cf);
        const std::string what = "seed " + std::to_string(seed) + " k " + std::to_string(k) + " tau " + std::to_string(tau);
        if (ref.margin < 1e-6) continue;  // float vs double probabilities could decide it either way
        const RouteStats& st = router->last_stats();
        EXPECT_EQ(st.capacity_lower_bound, ref.c_lb) << what;
        EXPECT_EQ(st.tau_reached, ref.reached) << what;
        EXPECT_EQ(st.capacity, ref.c_lb) << what << ": the first step uses C_lb";
        EXPECT_EQ(st.capacity_factor_capacity, C_cf) << what;
        check_plans(*plans, values(cs.pr, sc, 0.05, 0.0), cs.pr.E, k, ref.c_lb, what);
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 28);
}

TEST(LocmoeOpt, TauCapacityIsSmoothedLikeLocmoePlus) {
  // C_t = beta C_{t-1} + (1 - beta) C_lb, used as ceil(C_t) between capacity_floor and C_cf.
  RouterConfig c = opt_config(2, 1.25, 0.05);
  c.opt_tau_capacity = true;
  c.tau = 0.8;
  c.beta = 0.7;
  c.capacity_floor = 5;
  auto router = Router::create(c);
  double smoothed = 0;
  for (int step = 0; step < 3; ++step) {
    Case cs = make_case(500 - 150 * step, 16, 2, 2, 2, 70 + static_cast<unsigned>(step));
    auto plans = router->route_all_ranks({cs.pr.x.data(), cs.pr.T, cs.pr.H}, {cs.pr.w.data(), cs.pr.E, cs.pr.H}, cs.pl);
    ASSERT_TRUE(plans.ok());
    const RouteStats& st = router->last_stats();
    const long C_cf = refr::cf_capacity(1.25, 2, cs.pr.T, cs.pr.E);
    const TauRef ref = tau_reference(refr::scores(cs.pr).p, cs.pr.T, cs.pr.E, 2, 0.8, C_cf);
    EXPECT_EQ(st.capacity_lower_bound, ref.c_lb) << "step " << step;
    smoothed = step == 0 ? static_cast<double>(ref.c_lb) : 0.7 * smoothed + 0.3 * static_cast<double>(ref.c_lb);
    EXPECT_NEAR(st.capacity_smoothed, smoothed, 1e-9) << "step " << step;
    const long want = std::min(std::max(static_cast<long>(std::ceil(smoothed - 1e-9)), 5L), C_cf);
    EXPECT_EQ(st.capacity, want) << "step " << step;
  }
}

TEST(LocmoeOpt, TauBoundExactInsideOneHistogramBin) {
  // Probabilities crowded into one level-1 bin (and tied) so the bounds of the first histogram
  // cannot decide and the radix descent must: the result against brute force over C in the
  // bound's own 2^-32 fixed point.
  const int T = 640, E = 4;
  std::vector<float> p(static_cast<size_t>(T * E), 0.0f);
  for (int t = 0; t < T; ++t) {
    const int e = (t * 7) % E;
    const float hi = 0.5f + static_cast<float>((t * 37) % 23) * 1.6e-4f;  // 23 values in [0.5, 0.504), tied
    p[static_cast<size_t>(t * E + e)] = hi;
    for (int j = 1; j < E; ++j) p[static_cast<size_t>(t * E + (e + j) % E)] = (1.0f - hi) / 3.0f;
  }
  int descents = 0;
  for (const double tau : {0.1, 0.37, 0.5, 0.73, 0.99, 1.0}) {
    opt::Reducer red(nullptr);
    auto got = opt::tau_capacity(p.data(), T, E, 1, tau, 200, red);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    std::vector<std::vector<int64_t>> per(E);
    int64_t total = 0;
    for (int t = 0; t < T; ++t) {
      int best = 0;
      for (int e = 1; e < E; ++e)
        if (p[static_cast<size_t>(t * E + e)] > p[static_cast<size_t>(t * E + best)]) best = e;
      const auto q = static_cast<int64_t>(std::floor(static_cast<double>(p[static_cast<size_t>(t * E + best)]) * 4294967296.0));
      per[best].push_back(q);
      total += q;
    }
    for (auto& v : per) std::sort(v.rbegin(), v.rend());
    const auto target = static_cast<int64_t>(std::ceil(tau * static_cast<double>(total)));
    long want = 200;
    bool reached = false;
    for (long C = 1; C <= 200 && !reached; ++C) {
      int64_t m = 0;
      for (const auto& v : per)
        for (size_t i = 0; i < v.size() && static_cast<long>(i) < C; ++i) m += v[i];
      if (m >= target) {
        want = C;
        reached = true;
      }
    }
    EXPECT_EQ(got->topk_fixed, total) << tau;
    EXPECT_EQ(got->capacity, want) << tau;
    EXPECT_EQ(got->reached, reached) << tau;
    descents += got->descents;
  }
  EXPECT_GT(descents, 0) << "the case must need the radix descent somewhere";
}

TEST(LocmoeOpt, MinCapacityAndBadConfig) {
  Case cs = make_case(40, 8, 1, 2, 2, 3);
  RouterConfig c = opt_config(2, 0.1, 0.0);  // C_cf = ceil(0.1 * 2 * 40 / 4) = 2
  c.min_capacity = 8;
  auto router = Router::create(c);
  auto plans = router->route_all_ranks({cs.pr.x.data(), 40, 8}, {cs.pr.w.data(), 4, 8}, cs.pl);
  ASSERT_TRUE(plans.ok());
  EXPECT_EQ(router->last_stats().capacity_factor_capacity, 2);
  EXPECT_EQ(router->last_stats().capacity, 8);
  for (const int64_t n : (*plans)[0].global_expert_count) EXPECT_LE(n, 8);
  c = opt_config(2, 1.0, -0.1);
  EXPECT_NE(Router::create(c).status().message().find("cross_node_cost = -0.1"), std::string::npos);
  c = opt_config(2, 1.0, 0.1, std::numeric_limits<double>::quiet_NaN());
  EXPECT_NE(Router::create(c).status().message().find("same_node_cost = nan"), std::string::npos);
  c = opt_config(2, 1.0, 0.1);
  c.opt_iterations = 0;
  EXPECT_NE(Router::create(c).status().message().find("opt_iterations = 0"), std::string::npos);
  c = opt_config(2, 1.0, 0.1);
  c.min_capacity = -1;
  EXPECT_NE(Router::create(c).status().message().find("min_capacity = -1"), std::string::npos);
}

}  // namespace
}  // namespace locmoe
