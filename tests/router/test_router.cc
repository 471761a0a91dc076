// Routers against the naive references of router_reference.h, invariants, determinism and bad
// inputs (one process; the multi-rank consistency test is test_router_mpi.cc).
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/router/metrics.h"
#include "locmoe/router/router.h"
#include "router_reference.h"

namespace locmoe {
namespace {

struct Input {
  refr::Problem pr;
  ExpertPlacement pl;
  MatrixView x, w;
};

Input make_input(int T, int H, int nodes, int rpn, int epr, unsigned seed) {
  Input s;
  s.pr = refr::make_problem(T, H, nodes, rpn, epr, seed);
  s.pl = *uniform_placement(nodes, rpn, epr);
  s.x = MatrixView{s.pr.x.data(), T, H};
  s.w = MatrixView{s.pr.w.data(), s.pr.E, H};
  return s;
}

RouterConfig config_of(const refr::Params& q) {
  RouterConfig c;
  c.name = q.name;
  c.k = q.k;
  c.capacity_factor = q.cf;
  c.tau = q.tau;
  c.locality_margin = q.lambda;
  c.beta = q.beta;
  c.candidates = q.l;
  c.capacity_floor = q.floor;
  c.max_nodes = q.max_nodes;
  c.renormalize = q.renormalize;
  c.candidate_mass = q.mass;
  c.ecr_order = q.position_order ? EcrOrder::kPosition : EcrOrder::kAffinity;
  c.drop_policy = *parse_drop_policy(q.drop);
  c.normalize_before_drop = q.before_drop;
  c.min_capacity = q.min_capacity;
  return c;
}

// The plans of every rank, token by token, against the reference.
void expect_matches(const std::vector<RoutingPlan>& plans, const refr::Result& ref, const refr::Params& q,
                    const std::string& what) {
  int t = 0;
  for (const RoutingPlan& p : plans) {
    EXPECT_EQ(p.capacity, ref.capacity) << what;
    EXPECT_EQ(p.capacity_lower_bound, ref.c_lb) << what;
    for (int i = 0; i < p.num_tokens; ++i, ++t) {
      const auto& kept = ref.kept[t];
      double sum = 0;
      for (const auto& s : kept) sum += s.p;
      for (int j = 0; j < p.k; ++j) {
        const size_t s = static_cast<size_t>(i * p.k + j);
        if (j < static_cast<int>(kept.size())) {
          ASSERT_EQ(p.expert[s], kept[j].expert) << what << " token " << t << " slot " << j;
          const double denom = ref.denom.empty() ? (q.renormalize ? sum : 1.0) : ref.denom[t];
          const double want = kept[j].p / denom;
          EXPECT_NEAR(p.weight[s], want, 2e-5) << what << " token " << t << " slot " << j;
          EXPECT_EQ(p.slot_dropped[s], 0) << what << " token " << t << " slot " << j;
        } else {
          ASSERT_EQ(p.expert[s], -1) << what << " token " << t << " slot " << j;
          EXPECT_EQ(p.weight[s], 0.0f);
          const bool dropped = j < static_cast<int>(kept.size()) + ref.dropped[t];
          EXPECT_EQ(p.slot_dropped[s], dropped ? 1 : 0) << what << " token " << t << " slot " << j;
        }
      }
    }
  }
  EXPECT_EQ(t, static_cast<int>(ref.kept.size()));
}

class RouterVsReference : public ::testing::TestWithParam<std::string> {};

TEST_P(RouterVsReference, MatchesNaiveReference) {
  // 2 nodes x 2 ranks x 4 experts, T not a multiple of the ranks nor of the GEMM block.
  Input s = make_input(203, 24, 2, 2, 4, 7);
  for (const int k : {1, 2, 3}) {
    for (const double cf : {0.5, 1.25}) {
      refr::Params q;
      q.name = GetParam();
      q.k = k;
      q.cf = cf;
      auto router = Router::create(config_of(q));
      ASSERT_TRUE(router.ok()) << router.status().to_string();
      auto plans = router->route_all_ranks(s.x, s.w, s.pl);
      ASSERT_TRUE(plans.ok()) << plans.status().to_string();
      const refr::Result ref = refr::route(s.pr, q);
      const std::string what = q.name + " k=" + std::to_string(k) + " cf=" + std::to_string(cf);
      expect_matches(*plans, ref, q, what);
      const RouteStats& st = router->last_stats();
      EXPECT_NEAR(st.topk_mass, ref.topk_mass, 1e-4) << what;
      EXPECT_NEAR(st.kept_mass, ref.kept_mass, 1e-4) << what;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, RouterVsReference,
                         ::testing::Values("locmoe+", "gshard", "switch", "expert-choice", "node-limited",
                                           "locmoe", "hash", "dropless"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '+') c = 'P'; else if (c == '-') c = '_';
                           return n;
                         });

// The trainers' conventions (docs/ROUTING.md "## Conventions"): drop policies, weights normalized
// before the drop, min_capacity, for every top-k baseline, against the reference's own loops.
TEST(Conventions, DropPoliciesNormalizationAndMinCapacityMatchReference) {
  Input s = make_input(203, 24, 2, 2, 4, 17);
  for (const char* name : {"gshard", "switch", "node-limited", "locmoe", "hash"}) {
    for (const char* drop : {"slot", "position", "probs"}) {
      for (const bool before : {false, true}) {
        for (const long min_cap : {0L, 40L}) {
          refr::Params q;
          q.name = name;
          q.k = 2;
          q.cf = 0.5;  // C = 26: drops in every policy
          q.drop = drop;
          q.before_drop = before;
          q.min_capacity = min_cap;
          auto router = Router::create(config_of(q));
          ASSERT_TRUE(router.ok()) << router.status().to_string();
          auto plans = router->route_all_ranks(s.x, s.w, s.pl);
          ASSERT_TRUE(plans.ok()) << plans.status().to_string();
          const refr::Result ref = refr::route(s.pr, q);
          const std::string what = std::string(name) + " drop=" + drop + (before ? " before-drop" : "") +
                                   " min_capacity=" + std::to_string(min_cap);
          expect_matches(*plans, ref, q, what);
          EXPECT_NEAR(router->last_stats().kept_mass, ref.kept_mass, 1e-4) << what;
        }
      }
    }
  }
}

TEST(Conventions, SwitchCombinesWithTheRawProbability) {
  Input s = make_input(100, 16, 1, 2, 4, 3);
  RouterConfig c;
  c.name = "switch";
  auto router = Router::create(c);
  auto plans = router->route_all_ranks(s.x, s.w, s.pl);
  ASSERT_TRUE(plans.ok());
  const refr::Scores sc = refr::scores(s.pr);
  int t = 0;
  for (const auto& p : *plans)
    for (int i = 0; i < p.num_tokens; ++i, ++t) {
      if (p.expert[i] < 0) continue;
      EXPECT_NEAR(p.weight[i], sc.p[t * s.pr.E + p.expert[i]], 1e-5) << "token " << t;
      EXPECT_LT(p.weight[i], 0.999f) << "a weight of 1 gives the gate no gradient through the combine";
    }
  EXPECT_FALSE(parse_drop_policy("random").ok());
  EXPECT_NE(parse_drop_policy("random").status().message().find("'random'"), std::string::npos);
}

// DeepSeek-V3 routing against the reference's loops over 3 steps (the bias carries over):
// sigmoid or softmax scores, group scores top2-sum (V3) or max (V2's device-limited rule, groups =
// ranks), the scaling factor; a large update rate so the bias changes selections.
TEST(Conventions, DeepseekV3MatchesReference) {
  struct Variant {
    bool sigmoid, top2;
    int groups, topk_groups;
    double scaling;
    const char* drop;
  };
  for (const Variant v : {Variant{true, true, 0, 1, 2.5, "slot"}, Variant{true, true, 4, 2, 1.0, "probs"},
                          Variant{false, false, 4, 2, 1.0, "position"}, Variant{true, false, 2, 2, 1.5, "slot"}}) {
    refr::Params q;
    q.name = "deepseek-v3";
    q.k = 2;
    q.cf = 0.8;
    q.sigmoid = v.sigmoid;
    q.top2_sum = v.top2;
    q.groups = v.groups;
    q.topk_groups = v.topk_groups;
    q.scaling = v.scaling;
    q.bias_rate = 0.02;
    q.drop = v.drop;
    RouterConfig c = config_of(q);
    c.score_function = v.sigmoid ? "sigmoid" : "softmax";
    c.group_score = v.top2 ? "top2-sum" : "max";
    c.groups = v.groups;
    c.topk_groups = v.topk_groups;
    c.routed_scaling_factor = v.scaling;
    c.bias_update_rate = q.bias_rate;
    auto router = Router::create(c);
    ASSERT_TRUE(router.ok()) << router.status().to_string();
    refr::PlusState state;
    for (unsigned step = 0; step < 3; ++step) {
      Input b = make_input(203, 24, 2, 2, 4, 60 + step);
      auto plans = router->route_all_ranks(b.x, b.w, b.pl);
      ASSERT_TRUE(plans.ok()) << plans.status().to_string();
      const refr::Result ref = refr::route(b.pr, q, &state);
      const std::string what = std::string("deepseek-v3 ") + (v.sigmoid ? "sigmoid" : "softmax") +
                               (v.top2 ? " top2-sum" : " max") + " groups " + std::to_string(v.groups) + " step " +
                               std::to_string(step);
      expect_matches(*plans, ref, q, what);
      EXPECT_NEAR(router->last_stats().kept_mass, ref.kept_mass, 1e-4) << what;
      ASSERT_EQ(router->expert_bias().size(), state.bias.size());
      for (size_t e = 0; e < state.bias.size(); ++e) EXPECT_NEAR(router->expert_bias()[e], state.bias[e], 1e-12) << what;
      EXPECT_EQ((*plans)[0].weight_rule, RoutingPlan::kWeightOther);
    }
    double spread = 0;
    for (const double bv : router->expert_bias()) spread = std::max(spread, std::abs(bv));
    EXPECT_GT(spread, 0.0) << "the bias moved";
  }
  RouterConfig bad;
  bad.name = "deepseek-v3";
  bad.score_function = "tanh";
  EXPECT_NE(Router::create(bad).status().message().find("score_function 'tanh'"), std::string::npos);
  bad = RouterConfig{};
  bad.name = "deepseek-v3";
  bad.groups = 3;
  Input s = make_input(20, 8, 2, 2, 4, 1);
  auto r = Router::create(bad);
  ASSERT_TRUE(r.ok());
  EXPECT_NE(r->route_all_ranks(s.x, s.w, s.pl).status().message().find("groups = 3 must divide the E = 16"),
            std::string::npos);
}

TEST(LocmoePlus, ParametersAndSmoothingMatchReference) {
  Input s = make_input(160, 16, 2, 2, 4, 11);
  struct Variant {
    double tau, lambda, beta;
    int l;
    long floor;
    bool renorm;
    int max_nodes = 0;
    double mass = 0;
    bool position = false;
  };
  for (const Variant v : {Variant{0.9, 0.1, 0.9, 0, 1, true}, Variant{0.75, 0.0, 0.5, 3, 1, false},
                          Variant{0.5, 0.4, 0.0, 8, 6, true}, Variant{1.0, 0.2, 0.9, 16, 1, true},
                          Variant{0.8, 0.05, 0.9, 6, 1, true, 1}, Variant{0.7, 0.05, 0.9, 6, 1, true, 0, 0.5},
                          Variant{0.7, 0.05, 0.9, 0, 1, true, 0, 0, true}}) {
    refr::Params q;
    q.name = "locmoe+";
    q.tau = v.tau;
    q.lambda = v.lambda;
    q.beta = v.beta;
    q.l = v.l;
    q.floor = v.floor;
    q.renormalize = v.renorm;
    q.max_nodes = v.max_nodes;
    q.mass = v.mass;
    q.position_order = v.position;
    auto router = Router::create(config_of(q));
    ASSERT_TRUE(router.ok()) << router.status().to_string();
    refr::PlusState state;
    // Three steps on different batches: the smoothed capacity follows beta.
    for (unsigned step = 0; step < 3; ++step) {
      Input b = make_input(160, 16, 2, 2, 4, 100 + step);
      auto plans = router->route_all_ranks(b.x, b.w, b.pl);
      ASSERT_TRUE(plans.ok()) << plans.status().to_string();
      const refr::Result ref = refr::route(b.pr, q, &state);
      expect_matches(*plans, ref, q, "locmoe+ tau=" + std::to_string(v.tau) + " step " + std::to_string(step));
      EXPECT_NEAR(router->last_stats().capacity_smoothed, state.smoothed, 1e-9);
    }
  }
}

TEST(LocmoePlus, TiesBrokenByExpertThenToken) {
  // Identical tokens and identical gate rows: every score ties; the plan must follow
  // (expert id, token id) order exactly.
  const int T = 12, H = 8, E = 4;
  std::vector<float> x(T * H, 1.0f), w(E * H, 1.0f);
  auto pl = *uniform_placement(1, 2, 2);
  RouterConfig c;
  c.k = 1;
  c.capacity_factor = 1.0;  // C = 3 per expert
  c.tau = 1.0;
  c.candidates = E;  // every expert is a candidate of every token
  auto router = Router::create(c);
  auto plans = router->route_all_ranks({x.data(), T, H}, {w.data(), E, H}, pl);
  ASSERT_TRUE(plans.ok()) << plans.status().to_string();
  // Pairs in (expert, token) order: expert 0 takes tokens 0-2, expert 1 tokens 3-5, ...
  int t = 0;
  for (const auto& p : *plans)
    for (int i = 0; i < p.num_tokens; ++i, ++t) EXPECT_EQ(p.expert[i], t / 3) << "token " << t;
}

TEST(Router, InvariantsOnLargerInput) {
  Input s = make_input(1500, 32, 2, 4, 4, 3);
  for (const auto& name : kRouterNames) {
    RouterConfig c;
    c.name = std::string(name);
    c.capacity_factor = 1.0;
    auto router = Router::create(c);
    auto plans = router->route_all_ranks(s.x, s.w, s.pl);
    ASSERT_TRUE(plans.ok()) << name << ": " << plans.status().to_string();
    const int64_t cap = router->last_stats().capacity;
    int64_t accepted = 0, tokens = 0, no_expert = 0;
    for (const auto& p : *plans) {
      tokens += p.num_tokens;
      for (int i = 0; i < p.num_tokens; ++i) {
        double sum = 0;
        int n = 0;
        for (int j = 0; j < p.k; ++j) {
          const int e = p.expert[i * p.k + j];
          if (e < 0) continue;
          ASSERT_EQ(j, n) << name << ": accepted slots must come first";
          EXPECT_GE(p.weight[i * p.k + j], 0.0f);
          sum += p.weight[i * p.k + j];
          ++n;
        }
        accepted += n;
        no_expert += n == 0;
        if (n > 0 && std::string(name) != "switch") {  // switch: raw p (Conventions test)
          EXPECT_NEAR(sum, 1.0, 1e-5) << name << " token " << i;
        }
      }
    }
    EXPECT_EQ(tokens, 1500);
    int64_t total = 0, dropped_tokens = 0;
    for (const auto& p : *plans) dropped_tokens += p.dropped_tokens;
    for (const int64_t n : (*plans)[0].global_expert_count) {
      total += n;
      if (cap > 0) {
        EXPECT_LE(n, cap) << name;
      }
    }
    EXPECT_EQ(total, accepted) << name;
    EXPECT_EQ(dropped_tokens, no_expert) << name;
    const RouterMetrics m = compute_metrics(*plans, router->last_stats(), 32, 2);
    EXPECT_EQ(m.dropped_tokens, no_expert);
    EXPECT_LE(m.kept_gate_mass, std::string(name) == "expert-choice" ? 10.0 : 1.0 + 1e-9) << name;
    EXPECT_EQ(m.copies[0] + m.copies[1] + m.copies[2] > 0, true);
  }
}

TEST(Router, DeterministicAcrossThreadCounts) {
  Input s = make_input(700, 96, 2, 2, 4, 5);
  std::vector<RoutingPlan> first;
  for (const int threads : {1, 2, 5}) {
    RouterConfig c;
    c.num_threads = threads;
    auto router = Router::create(c);
    auto plans = router->route_all_ranks(s.x, s.w, s.pl);
    ASSERT_TRUE(plans.ok());
    if (first.empty()) {
      first = *plans;
      continue;
    }
    for (size_t r = 0; r < first.size(); ++r) {
      EXPECT_EQ((*plans)[r].expert, first[r].expert) << threads << " threads";
      EXPECT_EQ((*plans)[r].weight, first[r].weight) << threads << " threads";  // bitwise
      EXPECT_EQ((*plans)[r].slot_dropped, first[r].slot_dropped);
    }
  }
}

TEST(Router, RouteOnOneRankEqualsRouteAllRanks) {
  Input s = make_input(300, 16, 1, 1, 8, 9);
  auto a = Router::create(RouterConfig{});
  auto b = Router::create(RouterConfig{});
  auto one = a->route(s.x, s.w, s.pl, nullptr);
  auto all = b->route_all_ranks(s.x, s.w, s.pl);
  ASSERT_TRUE(one.ok() && all.ok());
  EXPECT_EQ(one->expert, (*all)[0].expert);
  EXPECT_EQ(one->weight, (*all)[0].weight);
  EXPECT_EQ(one->global_expert_count, (*all)[0].global_expert_count);
}

TEST(Router, EmptyBatchIsAValidEmptyPlan) {
  Input s = make_input(1, 8, 1, 1, 4, 1);
  auto router = Router::create(RouterConfig{});
  auto plan = router->route({nullptr, 0, 8}, s.w, s.pl, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(plan->num_tokens, 0);
  EXPECT_TRUE(plan->expert.empty());
  EXPECT_EQ(plan->dropped_tokens, 0);
  EXPECT_EQ(plan->global_expert_count, std::vector<int64_t>(4, 0));
}

TEST(Router, GrapGate) {
  auto g = grap_gate(4, 8);
  ASSERT_TRUE(g.ok());
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 8; ++j) EXPECT_EQ((*g)[i * 8 + j], j / 2 == i ? 0.5f : 0.0f);
  EXPECT_FALSE(grap_gate(3, 8).ok());
  // With the GrAP gate, the affinity is sqrt(H/E) * block mean / |x|: a token living in block 2
  // only has affinity 1 with expert 2, and LocMoE+ (lambda 0) routes it there.
  std::vector<float> x(8, 0.0f);
  x[4] = x[5] = 3.0f;
  auto pl = *uniform_placement(1, 1, 4);
  RouterConfig c;
  c.k = 1;
  c.locality_margin = 0;
  auto router = Router::create(c);
  auto plan = router->route({x.data(), 1, 8}, {g->data(), 4, 8}, pl, nullptr);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->expert[0], 2);
  EXPECT_NEAR(router->last_stats().kept_affinity_sum, 1.0, 1e-6);
}

void expect_error(const Status& st, const std::string& word) {
  ASSERT_FALSE(st.ok()) << "accepted; expected an error naming " << word;
  EXPECT_NE(st.message().find(word), std::string::npos) << st.to_string();
}

TEST(Router, BadInputsAreNamedErrors) {
  Input s = make_input(10, 8, 1, 1, 4, 1);
  auto route_with = [&](RouterConfig c, MatrixView x, MatrixView w, const ExpertPlacement& pl) -> Status {
    auto r = Router::create(c);
    if (!r.ok()) return r.status();
    return r->route(x, w, pl, nullptr).status();
  };
  RouterConfig c;
  c.k = 5;
  expect_error(route_with(c, s.x, s.w, s.pl), "k = 5 exceeds the number of experts E = 4");
  c.k = 0;
  expect_error(route_with(c, s.x, s.w, s.pl), "k = 0");
  c = RouterConfig{};
  c.capacity_factor = 0;
  expect_error(route_with(c, s.x, s.w, s.pl), "capacity_factor = 0");
  c = RouterConfig{};
  c.capacity_floor = 0;
  expect_error(route_with(c, s.x, s.w, s.pl), "capacity_floor = 0");
  c = RouterConfig{};
  c.name = "topk";
  expect_error(route_with(c, s.x, s.w, s.pl), "'topk'");
  c = RouterConfig{};
  c.tau = 1.5;
  expect_error(route_with(c, s.x, s.w, s.pl), "tau = 1.5");
  c = RouterConfig{};
  c.candidates = 1;
  expect_error(route_with(c, s.x, s.w, s.pl), "candidates l = 1");
  c = RouterConfig{};
  c.beta = 1.0;
  expect_error(route_with(c, s.x, s.w, s.pl), "beta = 1");

  std::vector<float> x = s.pr.x;
  x[3 * 8 + 5] = std::numeric_limits<float>::quiet_NaN();
  expect_error(route_with({}, {x.data(), 10, 8}, s.w, s.pl), "features row 3");
  x[3 * 8 + 5] = std::numeric_limits<float>::infinity();
  expect_error(route_with({}, {x.data(), 10, 8}, s.w, s.pl), "is inf");
  x = s.pr.x;
  for (int h = 0; h < 8; ++h) x[6 * 8 + h] = 0;
  expect_error(route_with({}, {x.data(), 10, 8}, s.w, s.pl), "features row 6 (global token 6) has zero norm");
  std::vector<float> w = s.pr.w;
  w[2 * 8] = -std::numeric_limits<float>::infinity();
  expect_error(route_with({}, s.x, {w.data(), 4, 8}, s.pl), "gate row 2");
  w = s.pr.w;
  for (int h = 0; h < 8; ++h) w[1 * 8 + h] = 0;
  expect_error(route_with({}, s.x, {w.data(), 4, 8}, s.pl), "gate row 1 (expert 1) has zero norm");
  expect_error(route_with({}, {s.pr.x.data(), 10, 8}, {s.pr.w.data(), 4, 4}, s.pl), "hidden size 4");
  expect_error(route_with({}, s.x, {s.pr.w.data(), 3, 8}, s.pl), "gate has 3 rows");
  auto big = *uniform_placement(2, 2, 2);
  expect_error(route_with({}, s.x, s.w, big), "placement has 4 ranks but the EP group has 1");
}

}  // namespace
}  // namespace locmoe

namespace locmoe {
namespace {

TEST(Placement, FromClusterMapAndUniformAgree) {
  auto cluster = uniform_cluster_map(3, 2, 4);
  ASSERT_TRUE(cluster.ok());
  auto a = placement_from_cluster(*cluster, 5);
  auto b = uniform_placement(3, 2, 5, 4);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->node_of_rank, (std::vector<int32_t>{0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(a->node_of_rank, b->node_of_rank);
  EXPECT_EQ(a->rank, 4);
  EXPECT_EQ(a->num_experts(), 30);
  EXPECT_EQ(a->num_nodes(), 3);
  EXPECT_FALSE(placement_from_cluster(*cluster, 0).ok());
  EXPECT_FALSE(uniform_placement(2, 2, 1, 4).ok());  // rank 4 of 4
}

}  // namespace
}  // namespace locmoe
