// The router's statistics, the group's expert counts and the gate's auxiliary losses through the
// C API, under mpirun: statistics against counts and masses recomputed from every rank's plan
// slots, loss values against their formulas computed here, loss gradients against central
// finite differences of the API's own loss.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "locmoe/locmoe.h"
#include "locmoe/locmoe.hpp"

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
  rc = LOCMOE_ROUTER_CONFIG_INIT;
  rc.beta = 1.5;
  router = nullptr;
  EXPECT_EQ(locmoe_router_create(&rc, &router), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(router, nullptr);
  EXPECT_NE(std::string(locmoe_last_error()).find("beta"), std::string::npos) << locmoe_last_error();
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
  locmoe::api::Plan plan = router.route(group, b.x.data(), b.T, b.H, b.gate.data(), b.L);
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
