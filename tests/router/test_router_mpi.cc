// Multi-rank routing (mpirun -np 2 and 4): every rank routes only its own tokens through the MPI
// bootstrap; its plan must equal the plan that route_all_ranks() computes for it from the
// concatenated tokens in one process, for every router, over several LocMoE+ steps. Inputs come
// from a seed, so every rank can build the whole batch.
#include <mpi.h>

#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/router/metrics.h"
#include "locmoe/router/router.h"
#include "router_reference.h"

namespace locmoe {
namespace {

std::unique_ptr<Bootstrap> world() {
  auto b = make_mpi_bootstrap(MPI_COMM_WORLD);
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  return std::move(*b);
}

TEST(RouterMpi, EveryRankMatchesTheSingleProcessPlan) {
  auto group = world();
  const int R = group->size(), rank = group->rank();
  const int nodes = R >= 4 ? 2 : 1;
  for (const auto& name : kRouterNames) {
    RouterConfig c;
    c.name = std::string(name);
    c.capacity_factor = 1.0;
    auto mine = Router::create(c);
    auto single = Router::create(c);
    for (unsigned step = 0; step < 3; ++step) {
      const auto pr = refr::make_problem(517 + 13 * static_cast<int>(step), 48, nodes, R / nodes, 4, 40 + step);
      auto pl = *uniform_placement(nodes, R / nodes, 4, rank);
      const int64_t lo = static_cast<int64_t>(pr.T) * rank / R, hi = static_cast<int64_t>(pr.T) * (rank + 1) / R;
      auto plan = mine->route({pr.x.data() + lo * pr.H, hi - lo, pr.H}, {pr.w.data(), pr.E, pr.H}, pl, group.get());
      ASSERT_TRUE(plan.ok()) << name << ": " << plan.status().to_string();
      auto all = single->route_all_ranks({pr.x.data(), pr.T, pr.H}, {pr.w.data(), pr.E, pr.H}, pl);
      ASSERT_TRUE(all.ok()) << all.status().to_string();
      const RoutingPlan& want = (*all)[static_cast<size_t>(rank)];
      EXPECT_EQ(plan->global_token_offset, lo);
      EXPECT_EQ(plan->expert, want.expert) << name << " step " << step;
      EXPECT_EQ(plan->weight, want.weight) << name << " step " << step;
      EXPECT_EQ(plan->slot_dropped, want.slot_dropped) << name << " step " << step;
      EXPECT_EQ(plan->global_expert_count, want.global_expert_count) << name << " step " << step;
      EXPECT_EQ(plan->capacity, want.capacity) << name;
      EXPECT_EQ(plan->capacity_lower_bound, want.capacity_lower_bound) << name;
      EXPECT_EQ(mine->last_stats().capacity_smoothed, single->last_stats().capacity_smoothed);
      auto m = compute_metrics(*plan, mine->last_stats(), pr.H, 2, group.get());
      ASSERT_TRUE(m.ok());
      const RouterMetrics ms = compute_metrics(*all, single->last_stats(), pr.H, 2);
      for (int l = 0; l < kNumLinkClasses; ++l) EXPECT_EQ(m->copies[l], ms.copies[l]) << name;
      EXPECT_EQ(m->dropped_slots, ms.dropped_slots) << name;
      EXPECT_EQ(m->max_tokens_per_expert, ms.max_tokens_per_expert) << name;
    }
  }
}

TEST(RouterMpi, LocmoeOptTauCapacityMatchesTheSingleProcessPlan) {
  // The capacity bound comes from allreduced histograms; every rank must get the single process's
  // bound, smoothed state and plan over several steps (and on 4 ranks, two nodes with costs).
  auto group = world();
  const int R = group->size(), rank = group->rank();
  const int nodes = R >= 4 ? 2 : 1;
  for (const double tau : {0.6, 0.85, 1.0}) {
    RouterConfig c;
    c.name = "locmoe-opt";
    c.opt_tau_capacity = true;
    c.tau = tau;
    auto mine = Router::create(c);
    auto single = Router::create(c);
    for (unsigned step = 0; step < 3; ++step) {
      const auto pr = refr::make_problem(611 + 29 * static_cast<int>(step), 40, nodes, R / nodes, 4, 90 + step);
      auto pl = *uniform_placement(nodes, R / nodes, 4, rank);
      const int64_t lo = static_cast<int64_t>(pr.T) * rank / R, hi = static_cast<int64_t>(pr.T) * (rank + 1) / R;
      auto plan = mine->route({pr.x.data() + lo * pr.H, hi - lo, pr.H}, {pr.w.data(), pr.E, pr.H}, pl, group.get());
      ASSERT_TRUE(plan.ok()) << plan.status().to_string();
      auto all = single->route_all_ranks({pr.x.data(), pr.T, pr.H}, {pr.w.data(), pr.E, pr.H}, pl);
      ASSERT_TRUE(all.ok()) << all.status().to_string();
      const RoutingPlan& want = (*all)[static_cast<size_t>(rank)];
      const std::string what = "tau " + std::to_string(tau) + " step " + std::to_string(step);
      EXPECT_EQ(plan->expert, want.expert) << what;
      EXPECT_EQ(plan->weight, want.weight) << what;
      EXPECT_EQ(plan->capacity, want.capacity) << what;
      EXPECT_EQ(plan->capacity_lower_bound, want.capacity_lower_bound) << what;
      EXPECT_GT(plan->capacity_lower_bound, 0) << what;
      EXPECT_EQ(mine->last_stats().capacity_smoothed, single->last_stats().capacity_smoothed) << what;
      EXPECT_EQ(mine->last_stats().tau_reached, single->last_stats().tau_reached) << what;
      EXPECT_EQ(mine->last_stats().exchange_rounds, single->last_stats().exchange_rounds) << what;
    }
  }
}

TEST(RouterMpi, UnevenAndEmptyRanksGiveTheSameAssignment) {
  // Without a locality margin the assignment does not depend on which rank holds a token, so any
  // split (here rank 1 holds nothing) must give the tokens the same experts as one process.
  auto group = world();
  const int R = group->size(), rank = group->rank();
  const auto pr = refr::make_problem(300, 32, 1, R, 2, 77);
  std::vector<int64_t> bounds = {0, 250};
  for (int r = 1; r < R; ++r) bounds.push_back(r == 1 ? 250 : 250 + (50 * (r - 1)) / (R - 1));
  bounds.back() = 300;
  if (R == 2) bounds = {0, 300, 300};
  auto pl = *uniform_placement(1, R, 2, rank);
  auto one = *uniform_placement(1, 1, 2 * R, 0);
  for (const char* name : {"locmoe+", "gshard", "expert-choice", "locmoe-opt"}) {
    RouterConfig c;
    c.name = name;
    c.locality_margin = 0;
    auto a = Router::create(c);
    auto b = Router::create(c);
    const int64_t lo = bounds[static_cast<size_t>(rank)], hi = bounds[static_cast<size_t>(rank) + 1];
    auto plan = a->route({pr.x.data() + lo * pr.H, hi - lo, pr.H}, {pr.w.data(), pr.E, pr.H}, pl, group.get());
    ASSERT_TRUE(plan.ok()) << plan.status().to_string();
    auto whole = b->route({pr.x.data(), pr.T, pr.H}, {pr.w.data(), pr.E, pr.H}, one, nullptr);
    ASSERT_TRUE(whole.ok());
    const int k = plan->k;
    std::vector<int32_t> want(whole->expert.begin() + lo * k, whole->expert.begin() + hi * k);
    EXPECT_EQ(plan->expert, want) << name << " rank " << rank;
    EXPECT_EQ(plan->global_expert_count, whole->global_expert_count) << name;
  }
}

TEST(RouterMpi, BadInputOnOneRankFailsEveryRank) {
  auto group = world();
  const int R = group->size(), rank = group->rank();
  auto pr = refr::make_problem(64, 16, 1, R, 2, 5);
  const int64_t lo = 64 * rank / R, hi = 64 * (rank + 1) / R;
  if (rank == R - 1) pr.x[static_cast<size_t>((lo + 1) * 16 + 3)] = std::numeric_limits<float>::quiet_NaN();
  auto pl = *uniform_placement(1, R, 2, rank);
  auto r = Router::create(RouterConfig{});
  auto plan = r->route({pr.x.data() + lo * 16, hi - lo, 16}, {pr.w.data(), pr.E, 16}, pl, group.get());
  ASSERT_FALSE(plan.ok());
  // Every rank learns the reason too, not only that a rank rejected.
  EXPECT_NE(plan.status().message().find("is nan"), std::string::npos) << plan.status().to_string();
  if (rank != R - 1) {
    EXPECT_NE(plan.status().message().find(fmt::format("rank {} rejected its input", R - 1)), std::string::npos)
        << plan.status().to_string();
  }
}

}  // namespace
}  // namespace locmoe
