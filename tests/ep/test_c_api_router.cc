// The router's statistics, the group's expert counts and the gate's auxiliary losses through the
// C API, under mpirun: statistics against counts and masses recomputed from every rank's plan
// slots, loss values against their formulas computed here, loss gradients against central
// finite differences of the API's own loss.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "locmoe/locmoe.h"
#include "locmoe/locmoe.hpp"
#include "locmoe/router/router.h"

namespace {

struct Batch {
  int32_t L = 2, k = 2, H = 8, T = 24, E = 0;
  std::vector<float> gate, x;
  std::vector<double> logits;  // [T, E], double, computed here
};

Batch make_batch(const locmoe::api::Group& group) {
  Batch b;
  b.E = b.L * group.size();
  std::mt19937 rng(7);  // the gate: same on every rank
  std::normal_distribution<float> n01(0.0f, 1.0f);
  b.gate.resize(static_cast<size_t>(b.E) * b.H);
  for (auto& v : b.gate) v = n01(rng);
  std::mt19937 rx(300 + group.rank());
  b.x.resize(static_cast<size_t>(b.T) * b.H);
  for (auto& v : b.x) v = n01(rx);
  b.logits.assign(static_cast<size_t>(b.T) * b.E, 0.0);
  for (int t = 0; t < b.T; ++t)
    for (int e = 0; e < b.E; ++e)
      for (int c = 0; c < b.H; ++c) b.logits[t * b.E + e] += double(b.x[t * b.H + c]) * b.gate[e * b.H + c];
  return b;
}

std::vector<double> softmax_row(const double* z, int E) {
  const double m = *std::max_element(z, z + E);
  std::vector<double> p(E);
  double s = 0;
  for (int e = 0; e < E; ++e) s += p[e] = std::exp(z[e] - m);
  for (auto& v : p) v /= s;
  return p;
}

void allreduce(const locmoe::api::Group& g, std::vector<double>& v) {
  ASSERT_EQ(locmoe_group_allreduce_sum(g.get(), v.data(), static_cast<int64_t>(v.size())), LOCMOE_OK)
      << locmoe_last_error();
}

TEST(CApiRouter, StatsBeforeTheFirstRouteAreAnError) {
  locmoe_router_config_t rc = LOCMOE_ROUTER_CONFIG_INIT;
  locmoe_router_t router = nullptr;
  ASSERT_EQ(locmoe_router_create(&rc, &router), LOCMOE_OK) << locmoe_last_error();
  locmoe_route_stats_t s = LOCMOE_ROUTE_STATS_INIT;
  EXPECT_EQ(locmoe_router_last_stats(router, &s), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(locmoe_last_error()).find("has not routed"), std::string::npos) << locmoe_last_error();
  locmoe_router_destroy(router);
}

TEST(CApiRouter, OlderShorterConfigGetsDefaultsAndBadFieldsAreNamed) {
  locmoe_router_config_t rc = LOCMOE_ROUTER_CONFIG_INIT;
  rc.struct_size = offsetof(locmoe_router_config_t, candidates);  // a caller built before candidates
  locmoe_router_t router = nullptr;
  ASSERT_EQ(locmoe_router_create(&rc, &router), LOCMOE_OK) << locmoe_last_error();
  locmoe_router_destroy(router);
  // A second-version caller: the third version's fields past its struct_size are never read
  // (garbage there would be refused if they were).
  rc = LOCMOE_ROUTER_CONFIG_INIT;
  rc.struct_size = offsetof(locmoe_router_config_t, cross_node_cost);
  rc.min_capacity = -5;
  rc.drop_policy = "bogus";
  router = nullptr;
  ASSERT_EQ(locmoe_router_create(&rc, &router), LOCMOE_OK) << locmoe_last_error();
  locmoe_router_destroy(router);
  rc = LOCMOE_ROUTER_CONFIG_INIT;
  rc.beta = 1.5;
  router = nullptr;
  EXPECT_EQ(locmoe_router_create(&rc, &router), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(router, nullptr);
  EXPECT_NE(std::string(locmoe_last_error()).find("beta"), std::string::npos) << locmoe_last_error();
}

// Each field of the config's third version reaches the router: for a config where the field
// differs from its default, the C API's plan on this rank equals the C++ Router's
// (route_all_ranks over every rank's features, regenerated here as make_batch makes them), and
// the C++ plans of the whole group differ from those of the same config without the change (so
// the comparison can tell a field that was dropped on the way).
TEST(CApiRouter, ThirdVersionFieldsReachTheRouter) {
  locmoe::api::Group group;
  const int R = group.size(), me = group.rank();
  // Enough experts per rank (8) and tokens that every field has something to decide.
  struct {
    int32_t L = 8, k = 2, H = 16, T = 64, E = 0;
    std::vector<float> gate, x;
  } b;
  b.E = b.L * R;
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::mt19937 rg(11);
  for (int i = 0; i < b.E * b.H; ++i) b.gate.push_back(n01(rg));
  std::vector<float> all(static_cast<size_t>(R) * b.T * b.H);  // every rank's features
  for (int r = 0; r < R; ++r) {
    std::mt19937 rx(500 + r);
    for (int i = 0; i < b.T * b.H; ++i) all[static_cast<size_t>(r) * b.T * b.H + i] = n01(rx);
  }
  const ptrdiff_t per_rank = static_cast<ptrdiff_t>(b.T) * b.H;
  b.x.assign(all.begin() + me * per_rank, all.begin() + (me + 1) * per_rank);
  locmoe::ExpertPlacement place;
  place.experts_per_rank = b.L;
  place.rank = me;
  for (int r = 0; r < R; ++r) place.node_of_rank.push_back(group.node_of(r));
  const bool two_nodes = place.num_nodes() > 1;
  using C = locmoe_router_config_t;
  using P = locmoe::RouterConfig;
  struct Case {
    const char* what;
    const char* name;
    std::function<void(C&, P&)> set;
    bool needs_two_nodes = false;
  };
  const std::vector<Case> cases = {
      {"cross_node_cost", "locmoe-opt", [](C& c, P& p) { c.cross_node_cost = p.cross_node_cost = 0.6; }, true},
      {"same_node_cost", "locmoe-opt", [](C& c, P& p) { c.same_node_cost = p.same_node_cost = 0.3; }, true},
      {"opt_iterations", "locmoe-opt", [](C& c, P& p) { c.opt_iterations = p.opt_iterations = 1; }},
      {"opt_tau_capacity", "locmoe-opt",
       [](C& c, P& p) { c.opt_tau_capacity = 1, p.opt_tau_capacity = true, c.tau = p.tau = 0.3; }},
      {"min_capacity", "gshard", [](C& c, P& p) { c.min_capacity = p.min_capacity = 20; }},
      {"drop_policy", "gshard",
       [](C& c, P& p) { c.drop_policy = "probs", p.drop_policy = locmoe::DropPolicy::kProbs; }},
      {"normalize_before_drop", "gshard",
       [](C& c, P& p) { c.normalize_before_drop = 1, p.normalize_before_drop = true; }},
      {"ecr_order", "locmoe+",
       [](C& c, P& p) { c.ecr_order = "position", p.ecr_order = locmoe::EcrOrder::kPosition; }},
      {"candidate_mass", "locmoe+", [](C& c, P& p) { c.candidate_mass = p.candidate_mass = 0.3; }},
      {"score_function", "deepseek-v3", [](C& c, P& p) { c.score_function = "softmax", p.score_function = "softmax"; }},
      {"groups+topk_groups", "deepseek-v3",
       [](C& c, P& p) { c.groups = p.groups = 4, c.topk_groups = p.topk_groups = 1; }},
      {"group_score", "deepseek-v3",
       [](C& c, P& p) { c.groups = p.groups = 2, c.topk_groups = p.topk_groups = 1, c.group_score = "max",
                        p.group_score = "max"; }},
      {"routed_scaling_factor", "deepseek-v3",
       [](C& c, P& p) { c.routed_scaling_factor = p.routed_scaling_factor = 2.5; }},
  };
  for (const Case& cs : cases) {
    if (cs.needs_two_nodes && !two_nodes) continue;
    SCOPED_TRACE(cs.what);
    C c = LOCMOE_ROUTER_CONFIG_INIT;
    P p, base;
    c.name = cs.name;
    p.name = base.name = cs.name;
    c.k = p.k = base.k = b.k;
    c.capacity_factor = p.capacity_factor = base.capacity_factor = 0.5;  // drops, so drop rules matter
    if (std::string(cs.what) == "group_score") base.groups = 2, base.topk_groups = 1;
    cs.set(c, p);
    locmoe_router_t router = nullptr;
    ASSERT_EQ(locmoe_router_create(&c, &router), LOCMOE_OK) << locmoe_last_error();
    locmoe_plan_t plan = nullptr;
    ASSERT_EQ(locmoe_route_ex(router, group.get(), b.x.data(), b.T, b.H, b.gate.data(), b.E, b.H, b.L, &plan),
              LOCMOE_OK)
        << locmoe_last_error();
    std::vector<int32_t> expert(static_cast<size_t>(b.T) * b.k);
    std::vector<float> weight(expert.size());
    ASSERT_EQ(locmoe_plan_slots(plan, expert.data(), weight.data()), LOCMOE_OK);
    locmoe_plan_destroy(plan);
    locmoe_router_destroy(router);

    const locmoe::MatrixView feats{all.data(), static_cast<int64_t>(R) * b.T, b.H};
    const locmoe::MatrixView gate{b.gate.data(), b.E, b.H};
    auto routed = [&](const P& cfg) {
      auto r = locmoe::Router::create(cfg);
      EXPECT_TRUE(r.ok()) << r.status().to_string();
      auto plans = r->route_all_ranks(feats, gate, place);
      EXPECT_TRUE(plans.ok()) << plans.status().to_string();
      return std::move(*plans);
    };
    const std::vector<locmoe::RoutingPlan> want = routed(p), without = routed(base);
    ASSERT_EQ(want[me].expert, expert);
    ASSERT_EQ(want[me].weight.size(), weight.size());
    for (size_t i = 0; i < weight.size(); ++i) EXPECT_FLOAT_EQ(want[me].weight[i], weight[i]) << "slot " << i;
    bool differs = false;
    for (int r = 0; r < R; ++r) differs |= want[r].expert != without[r].expert || want[r].weight != without[r].weight;
    EXPECT_TRUE(differs) << "the field changes nothing on this input: the test cannot see it passed";
  }
  // Bad names are refused naming the field and the value.
  for (auto [field, set] : std::vector<std::pair<std::string, std::function<void(C&)>>>{
           {"drop_policy 'bogus'", [](C& c) { c.drop_policy = "bogus"; }},
           {"ecr_order 'bogus'", [](C& c) { c.ecr_order = "bogus"; }},
           {"score_function", [](C& c) { c.name = "deepseek-v3", c.score_function = "bogus"; }},
           {"min_capacity", [](C& c) { c.min_capacity = -1; }},
           {"cross_node_cost", [](C& c) { c.cross_node_cost = -0.5; }}}) {
    C c = LOCMOE_ROUTER_CONFIG_INIT;
    set(c);
    locmoe_router_t router = nullptr;
    EXPECT_EQ(locmoe_router_create(&c, &router), LOCMOE_ERR_INVALID_ARGUMENT) << field;
    EXPECT_EQ(router, nullptr);
    EXPECT_NE(std::string(locmoe_last_error()).find(field), std::string::npos) << locmoe_last_error();
  }
}

// For each router: the group's expert counts equal the sum over ranks of each rank's accepted
// slots; kept_slots is their total; kept_mass is the sum of softmax(z) over accepted slots; no
// expert exceeds the capacity the router reports; LocMoE+ reports C_lb <= capacity <= C_cf.
TEST(CApiRouter, StatsAndGroupCountsMatchThePlans) {
  locmoe::api::Group group;
  const Batch b = make_batch(group);
  for (const char* name : {"gshard", "locmoe+", "dropless"}) {
    SCOPED_TRACE(name);
    locmoe_router_config_t rc = LOCMOE_ROUTER_CONFIG_INIT;
    rc.name = name;
    rc.k = b.k;
    rc.capacity_factor = 1.0;
    locmoe_router_t router = nullptr;
    ASSERT_EQ(locmoe_router_create(&rc, &router), LOCMOE_OK) << locmoe_last_error();
    locmoe_plan_t plan = nullptr;
    ASSERT_EQ(locmoe_route(router, group.get(), b.x.data(), b.T, b.H, b.gate.data(), b.L, &plan), LOCMOE_OK)
        << locmoe_last_error();
    locmoe_plan_info_t pi = LOCMOE_PLAN_INFO_INIT;
    ASSERT_EQ(locmoe_plan_info(plan, &pi), LOCMOE_OK);
    std::vector<int32_t> expert(static_cast<size_t>(b.T) * pi.k);
    std::vector<float> weight(expert.size());
    ASSERT_EQ(locmoe_plan_slots(plan, expert.data(), weight.data()), LOCMOE_OK);
    std::vector<double> counts(b.E + 2, 0.0);  // [E] counts, then kept mass and kept slots
    for (int t = 0; t < b.T; ++t) {
      const std::vector<double> p = softmax_row(&b.logits[t * b.E], b.E);
      for (int j = 0; j < pi.k; ++j) {
        const int32_t e = expert[t * pi.k + j];
        if (e < 0) continue;
        counts[e] += 1;
        counts[b.E] += p[e];
        counts[b.E + 1] += 1;
      }
    }
    allreduce(group, counts);
    std::vector<int64_t> global(b.E, -1);
    ASSERT_EQ(locmoe_plan_global_expert_counts(plan, global.data()), LOCMOE_OK) << locmoe_last_error();
    locmoe_route_stats_t s = LOCMOE_ROUTE_STATS_INIT;
    ASSERT_EQ(locmoe_router_last_stats(router, &s), LOCMOE_OK) << locmoe_last_error();
    EXPECT_EQ(s.step, 0);
    EXPECT_EQ(s.global_tokens, int64_t(b.T) * group.size());
    EXPECT_EQ(s.num_experts, b.E);
    for (int e = 0; e < b.E; ++e) {
      EXPECT_EQ(global[e], static_cast<int64_t>(counts[e])) << "expert " << e;
      if (s.capacity > 0) {
        EXPECT_LE(global[e], s.capacity) << "expert " << e;
      }
    }
    EXPECT_EQ(s.kept_slots, static_cast<int64_t>(counts[b.E + 1]));
    EXPECT_NEAR(s.kept_mass, counts[b.E], 1e-4 * std::max(1.0, counts[b.E]));
    EXPECT_GE(s.topk_mass + 1e-6, s.kept_mass);
    const int64_t c_cf = static_cast<int64_t>(std::ceil(1.0 * b.k * b.T * group.size() / b.E));
    EXPECT_EQ(s.capacity_factor_capacity, std::string(name) == "dropless" ? 0 : c_cf);
    if (std::string(name) == "gshard") {
      EXPECT_EQ(s.capacity, c_cf);
    }
    if (std::string(name) == "dropless") {
      EXPECT_EQ(s.capacity, 0);
    }
    if (std::string(name) == "locmoe+") {
      EXPECT_GT(s.capacity_lower_bound, 0);
      EXPECT_LE(s.capacity, c_cf);
      EXPECT_GT(s.capacity_smoothed, 0.0);
    } else {
      EXPECT_EQ(s.capacity_lower_bound, 0);
    }
    // A second call is step 1.
    locmoe_plan_t plan2 = nullptr;
    ASSERT_EQ(locmoe_route(router, group.get(), b.x.data(), b.T, b.H, b.gate.data(), b.L, &plan2), LOCMOE_OK);
    ASSERT_EQ(locmoe_router_last_stats(router, &s), LOCMOE_OK);
    EXPECT_EQ(s.step, 1);
    locmoe_plan_destroy(plan2);
    locmoe_plan_destroy(plan);
    locmoe_router_destroy(router);
  }
}

// Each loss: its value against the formula of locmoe.h computed here in double, and its gradient
// against central differences of the API's own loss.
TEST(CApiRouter, AuxLossesMatchTheirFormulasAndFiniteDifferences) {
  locmoe::api::Group group;
  const Batch b = make_batch(group);
  locmoe_router_config_t rc = LOCMOE_ROUTER_CONFIG_INIT;
  rc.name = "gshard";
  rc.k = b.k;
  locmoe::api::Router router(rc);
  // The wrapper's checked form: a gate of the wrong extent throws (on every rank) before any read.
  try {
    (void)router.route(group, b.x.data(), b.T, b.H, b.gate.data(), b.E - 1, b.H, b.L);
    ADD_FAILURE() << "a gate with E - 1 rows was routed";
  } catch (const locmoe::api::Error& e) {
    EXPECT_NE(std::string(e.what()).find("gate"), std::string::npos) << e.what();
  }
  locmoe::api::Plan plan = router.route(group, b.x.data(), b.T, b.H, b.gate.data(), b.E, b.H, b.L);
  std::vector<int32_t> expert(static_cast<size_t>(b.T) * b.k);
  ASSERT_EQ(locmoe_plan_slots(plan.get(), expert.data(), nullptr), LOCMOE_OK);
  std::vector<float> z(b.logits.begin(), b.logits.end());
  const int my_node = group.node_of(group.rank());

  // Values from the definitions.
  double lb = 0, zl = 0, loc = 0;
  std::vector<double> f(b.E, 0.0), P(b.E, 0.0);
  for (int t = 0; t < b.T; ++t) {
    std::vector<double> zd(z.begin() + t * b.E, z.begin() + (t + 1) * b.E);
    const std::vector<double> p = softmax_row(zd.data(), b.E);
    const double m = *std::max_element(zd.begin(), zd.end());
    double s = 0, own = 0;
    for (int e = 0; e < b.E; ++e) {
      s += std::exp(zd[e] - m);
      P[e] += p[e] / b.T;
      if (group.node_of(e / b.L) == my_node) own += p[e];
    }
    zl += std::pow(m + std::log(s), 2) / b.T;
    loc += -std::log(own) / b.T;
    for (int j = 0; j < b.k; ++j)
      if (expert[t * b.k + j] >= 0) f[expert[t * b.k + j]] += 1.0 / (double(b.T) * b.k);
  }
  for (int e = 0; e < b.E; ++e) lb += b.E * f[e] * P[e];
  const double want[3] = {lb, zl, loc};

  for (locmoe_aux_loss_t kind : {LOCMOE_AUX_LOAD_BALANCE, LOCMOE_AUX_Z_LOSS, LOCMOE_AUX_LOCALITY}) {
    SCOPED_TRACE(kind);
    double loss = -1;
    std::vector<float> dz(z.size(), -7.0f), scratch(z.size());
    ASSERT_EQ(locmoe_plan_aux_loss(plan.get(), kind, z.data(), &loss, dz.data()), LOCMOE_OK) << locmoe_last_error();
    EXPECT_NEAR(loss, want[kind], 1e-5 * std::max(1.0, std::abs(want[kind])));
    const float h = 1e-2f;
    for (size_t i = 0; i < z.size(); i += 5) {
      std::vector<float> zp = z, zm = z;
      zp[i] += h;
      zm[i] -= h;
      double lp = 0, lm = 0;
      ASSERT_EQ(locmoe_plan_aux_loss(plan.get(), kind, zp.data(), &lp, scratch.data()), LOCMOE_OK);
      ASSERT_EQ(locmoe_plan_aux_loss(plan.get(), kind, zm.data(), &lm, scratch.data()), LOCMOE_OK);
      EXPECT_NEAR(dz[i], (lp - lm) / (2.0 * h), 2e-4 + 2e-3 * std::abs(dz[i])) << "logit " << i;
    }
  }
  double loss = 0;
  std::vector<float> dz(z.size());
  EXPECT_EQ(locmoe_plan_aux_loss(plan.get(), 9, z.data(), &loss, dz.data()), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(locmoe_last_error()).find("kind 9"), std::string::npos) << locmoe_last_error();
}

}  // namespace
