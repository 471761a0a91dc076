// Ranks that disagree, through the C API under mpirun (2 ranks, and 4 ranks as 2 nodes): one
// rank's bad input to a collective call, a rank in a different collective, a rank that tears its
// group down or aborts while its peers wait, and parameters that differ across ranks. Every case
// must end on every rank at once (far below the group's deadline) with an error naming the odd
// rank and its reason; after a rejected input the group must still work (checked against values
// every rank computes by itself).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "locmoe/locmoe.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kDeadline = 30;  // the groups' timeout_s; "at once" is checked as < kFast
constexpr double kFast = 8;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
std::string last() { return locmoe_last_error(); }
bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

locmoe_group_t make_group(double timeout_s = kDeadline) {
  locmoe_group_config_t c = LOCMOE_GROUP_CONFIG_INIT;
  c.timeout_s = timeout_s;
  locmoe_group_t g = nullptr;
  EXPECT_EQ(locmoe_group_create(&c, &g), LOCMOE_OK) << last();
  return g;
}
int rank_of(locmoe_group_t g) {
  int32_t r = -1;
  locmoe_group_rank(g, &r);
  return r;
}
int size_of(locmoe_group_t g) {
  int32_t n = 0;
  locmoe_group_size(g, &n);
  return n;
}

// Rank r's plan: T tokens, expert (t + r) mod E in slot 0, -1 in slot 1.
struct PlanArgs {
  int32_t T = 5, k = 2, L = 2;
  std::vector<int32_t> expert;
  std::vector<float> weight;
  PlanArgs(int r, int R) {
    for (int t = 0; t < T; ++t) {
      expert.push_back((t + r) % (L * R));
      expert.push_back(-1);
      weight.push_back(1.0f);
      weight.push_back(0.0f);
    }
  }
};

// The group works: a plan on every rank, whose group counts match the sum each rank computes
// from every rank's plan.
void expect_group_works(locmoe_group_t g) {
  const int me = rank_of(g), R = size_of(g);
  PlanArgs a(me, R);
  locmoe_plan_t plan = nullptr;
  ASSERT_EQ(locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan), LOCMOE_OK)
      << last();
  std::vector<int64_t> got(a.L * R), want(a.L * R, 0);
  ASSERT_EQ(locmoe_plan_global_expert_counts(plan, got.data()), LOCMOE_OK) << last();
  for (int r = 0; r < R; ++r) {
    PlanArgs o(r, R);
    for (int32_t e : o.expert)
      if (e >= 0) ++want[e];
  }
  EXPECT_EQ(got, want);
  locmoe_plan_destroy(plan);
}

TEST(Disagree, BadPlanOnOneRankFailsEveryRankAtOnceAndTheGroupStaysUsable) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g), bad = R - 1;
  PlanArgs a(me, R);
  if (me == bad) a.expert[2] = 13 + a.L * R;  // token 1 slot 0: out of range
  const auto t0 = Clock::now();
  locmoe_plan_t plan = nullptr;
  const locmoe_status_t st = locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan);
  const std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_EQ(plan, nullptr);
  const std::string bad_id = "expert id " + std::to_string(13 + a.L * R);
  if (R > 1 || me == bad) {
    EXPECT_NE(st, LOCMOE_OK);
    EXPECT_TRUE(has(msg, bad_id)) << msg;
  }
  if (me != bad) {
    EXPECT_EQ(st, LOCMOE_ERR_MISMATCH) << msg;
    EXPECT_TRUE(has(msg, "rank " + std::to_string(bad) + " rejected its input")) << msg;
  }
  expect_group_works(g);
  locmoe_group_destroy(g);
}

TEST(Disagree, NullArgumentOnOneRankFailsEveryRankAtOnce) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g);
  PlanArgs a(me, R);
  const auto t0 = Clock::now();
  locmoe_plan_t plan = nullptr;
  const locmoe_status_t st =
      locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), me == 0 ? nullptr : a.weight.data(), nullptr, &plan);
  const std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_NE(st, LOCMOE_OK);
  EXPECT_TRUE(has(msg, "expert or weight is NULL")) << msg;
  if (me != 0) {
    EXPECT_TRUE(has(msg, "rank 0 rejected its input")) << msg;
  }
  expect_group_works(g);
  locmoe_group_destroy(g);
}

// The gate's shape is checked against E before anything reads it, on the rank that passed it,
// and its peers learn of it at once.
TEST(Disagree, GateWithTheWrongRowsIsRefusedBeforeAnyRead) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g), bad = R > 1 ? 1 : 0;
  const int32_t L = 2, T = 6, H = 4, E = L * R;
  locmoe_router_config_t rc = LOCMOE_ROUTER_CONFIG_INIT;
  rc.name = "gshard";
  rc.k = 2;
  locmoe_router_t router = nullptr;
  ASSERT_EQ(locmoe_router_create(&rc, &router), LOCMOE_OK) << last();
  std::vector<float> x(T * H), gate(static_cast<size_t>(E) * H);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.7f * static_cast<float>(i + me));
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = std::cos(0.3f * static_cast<float>(i));
  // The bad rank's gate has E - 1 rows: its last row does not exist (a read there would be past
  // the array; ASan would catch it).
  std::vector<float> short_gate(gate.begin(), gate.end() - H);
  const bool is_bad = me == bad;
  const auto t0 = Clock::now();
  locmoe_plan_t plan = nullptr;
  locmoe_status_t st = locmoe_route_ex(router, g, x.data(), T, H, is_bad ? short_gate.data() : gate.data(),
                                       is_bad ? E - 1 : E, H, L, &plan);
  const std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_EQ(plan, nullptr);
  if (is_bad) {
    EXPECT_EQ(st, LOCMOE_ERR_INVALID_ARGUMENT) << msg;
    EXPECT_TRUE(has(msg, "gate has " + std::to_string(E - 1) + " rows")) << msg;
  } else {
    EXPECT_EQ(st, LOCMOE_ERR_MISMATCH) << msg;
    EXPECT_TRUE(has(msg, "rank " + std::to_string(bad) + " rejected its input")) << msg;
    EXPECT_TRUE(has(msg, "gate has " + std::to_string(E - 1) + " rows")) << msg;
  }
  // A gate whose hidden size differs from the features' is refused the same way.
  st = locmoe_route_ex(router, g, x.data(), T, H, gate.data(), E, H + 1, L, &plan);
  EXPECT_EQ(st, LOCMOE_ERR_INVALID_ARGUMENT) << last();
  // The right shapes still route, and the group works afterwards.
  ASSERT_EQ(locmoe_route_ex(router, g, x.data(), T, H, gate.data(), E, H, L, &plan), LOCMOE_OK) << last();
  locmoe_plan_info_t pi = LOCMOE_PLAN_INFO_INIT;
  ASSERT_EQ(locmoe_plan_info(plan, &pi), LOCMOE_OK);
  EXPECT_EQ(pi.num_experts, E);
  locmoe_plan_destroy(plan);
  locmoe_router_destroy(router);
  expect_group_works(g);
  locmoe_group_destroy(g);
}

// Dispatch and combine: a rank that refuses its own arguments to dispatch takes its turn in the
// metadata round as a rejecting rank; the others fail at once naming it, and the group still
// dispatches and combines right afterwards (identity experts: out[t] = sum of t's accepted weights * x[t]).
TEST(Disagree, BadDispatchOrCombineArgumentOnOneRankFailsEveryRankAtOnce) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g), bad = R - 1;
  const int32_t H = 3;
  PlanArgs a(me, R);
  locmoe_plan_t plan = nullptr;
  ASSERT_EQ(locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan), LOCMOE_OK)
      << last();
  locmoe_dispatcher_config_t dc = LOCMOE_DISPATCHER_CONFIG_INIT;
  dc.experts_per_rank = a.L;
  dc.hidden = H;
  dc.max_tokens = a.T;
  dc.top_k = a.k;
  locmoe_dispatcher_t d = nullptr;
  locmoe_handle_t h = nullptr;
  ASSERT_EQ(locmoe_dispatcher_create(g, &dc, &d), LOCMOE_OK) << last();
  ASSERT_EQ(locmoe_handle_create(d, &h), LOCMOE_OK) << last();
  int64_t rows = 0;
  ASSERT_EQ(locmoe_dispatcher_max_expert_rows(d, &rows), LOCMOE_OK);
  std::vector<float> x(a.T * H), ein(rows * H), out(a.T * H);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 3.0f + static_cast<float>(me);

  auto t0 = Clock::now();
  locmoe_status_t st = locmoe_dispatch(d, me == bad ? nullptr : x.data(), plan, h, ein.data(), rows, nullptr);
  std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_NE(st, LOCMOE_OK);
  EXPECT_TRUE(has(msg, "x is null")) << msg;
  if (me != bad) {
    EXPECT_EQ(st, LOCMOE_ERR_MISMATCH) << msg;
    EXPECT_TRUE(has(msg, "rank " + std::to_string(bad))) << msg;
    EXPECT_TRUE(has(msg, "rejected its input")) << msg;
  }
  // The group still works: a full round trip on every rank.
  ASSERT_EQ(locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr), LOCMOE_OK) << last();
  // combine has no metadata round to refuse in (it executes the dispatch's plan): rank 0 fails
  // at once but still takes part in the exchange, so its peers' results (which do not depend on
  // rank 0's output buffer) are complete and right, and the next dispatch fails on every rank at
  // once naming rank 0 and its reason.
  t0 = Clock::now();
  st = locmoe_combine(d, ein.data(), h, me == 0 ? nullptr : out.data(), nullptr);
  msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  if (me == 0) {
    EXPECT_EQ(st, LOCMOE_ERR_INVALID_ARGUMENT) << msg;
    EXPECT_TRUE(has(msg, "output is null")) << msg;
  } else {
    ASSERT_EQ(st, LOCMOE_OK) << msg;
    for (int t = 0; t < a.T; ++t)
      for (int c = 0; c < H; ++c) EXPECT_FLOAT_EQ(out[t * H + c], x[t * H + c]) << t;  // one slot, weight 1
  }
  t0 = Clock::now();
  st = locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr);
  msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_NE(st, LOCMOE_OK);
  EXPECT_TRUE(has(msg, "output is null")) << msg;
  if (me != 0) {
    EXPECT_EQ(st, LOCMOE_ERR_MISMATCH) << msg;
    EXPECT_TRUE(has(msg, "rank 0")) << msg;
  }
  // And the group still works.
  std::fill(out.begin(), out.end(), -1.0f);
  ASSERT_EQ(locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr), LOCMOE_OK) << last();
  ASSERT_EQ(locmoe_combine(d, ein.data(), h, out.data(), nullptr), LOCMOE_OK) << last();
  for (int t = 0; t < a.T; ++t)
    for (int c = 0; c < H; ++c) EXPECT_FLOAT_EQ(out[t * H + c], x[t * H + c]) << t;  // one slot, weight 1
  locmoe_handle_destroy(h);
  locmoe_dispatcher_destroy(d);
  locmoe_plan_destroy(plan);
  locmoe_group_destroy(g);
}

// A binding's refusal of arguments the C API cannot see (locmoe_refuse_next_call) takes the same
// path as the C API's own refusals: the refusing rank gets its message back, every other rank
// fails at once naming it and the message, and the group stays usable.
TEST(Disagree, BindingRefusalOnOneRankFailsEveryRankAtOnce) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g), bad = R - 1;
  const bool is_bad = me == bad;
  auto expect_refused = [&](const char* what, locmoe_status_t st, std::chrono::duration<double> took) {
    const std::string msg = last();
    EXPECT_LT(took.count(), kFast) << what << ": " << msg;
    EXPECT_TRUE(has(msg, std::string(what) + " has dtype float64")) << msg;
    if (is_bad) {
      EXPECT_EQ(st, LOCMOE_ERR_INVALID_ARGUMENT) << msg;
    } else {
      EXPECT_EQ(st, LOCMOE_ERR_MISMATCH) << msg;
      EXPECT_TRUE(has(msg, "rank " + std::to_string(bad))) << msg;
      EXPECT_TRUE(has(msg, "rejected its input")) << msg;
    }
  };
  locmoe_group_config_t gc = LOCMOE_GROUP_CONFIG_INIT;
  gc.timeout_s = kDeadline;
  locmoe_group_t g2 = nullptr;
  auto t0 = Clock::now();
  if (is_bad) locmoe_refuse_next_call("config has dtype float64");
  locmoe_status_t st = locmoe_group_create(&gc, &g2);
  expect_refused("config", st, Clock::now() - t0);
  EXPECT_EQ(g2, nullptr);
  PlanArgs a(me, R);
  locmoe_plan_t plan = nullptr;
  t0 = Clock::now();
  if (is_bad) locmoe_refuse_next_call("weight has dtype float64");
  st = locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan);
  expect_refused("weight", st, Clock::now() - t0);
  EXPECT_EQ(plan, nullptr);
  double v[2] = {1, 2};
  t0 = Clock::now();
  if (is_bad) locmoe_refuse_next_call("values has dtype float64");
  st = locmoe_group_allreduce_sum(g, v, 2);
  expect_refused("values", st, Clock::now() - t0);
  ASSERT_EQ(locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan), LOCMOE_OK)
      << last();
  locmoe_dispatcher_config_t dc = LOCMOE_DISPATCHER_CONFIG_INIT;
  dc.experts_per_rank = a.L;
  dc.hidden = 3;
  dc.max_tokens = a.T;
  dc.top_k = a.k;
  locmoe_dispatcher_t d = nullptr;
  t0 = Clock::now();
  if (is_bad) locmoe_refuse_next_call("config has dtype float64");
  st = locmoe_dispatcher_create(g, &dc, &d);
  expect_refused("config", st, Clock::now() - t0);
  EXPECT_EQ(d, nullptr);
  ASSERT_EQ(locmoe_dispatcher_create(g, &dc, &d), LOCMOE_OK) << last();
  locmoe_handle_t h = nullptr;
  ASSERT_EQ(locmoe_handle_create(d, &h), LOCMOE_OK) << last();
  int64_t rows = 0;
  ASSERT_EQ(locmoe_dispatcher_max_expert_rows(d, &rows), LOCMOE_OK);
  std::vector<float> x(a.T * 3), ein(rows * 3), out(a.T * 3, -1.0f);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 5) + static_cast<float>(me);
  t0 = Clock::now();
  if (is_bad) locmoe_refuse_next_call("x has dtype float64");
  st = locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr);
  expect_refused("x", st, Clock::now() - t0);
  // The group still works, and the refusal was taken by that one call only.
  ASSERT_EQ(locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr), LOCMOE_OK) << last();
  ASSERT_EQ(locmoe_combine(d, ein.data(), h, out.data(), nullptr), LOCMOE_OK) << last();
  for (size_t i = 0; i < x.size(); ++i) EXPECT_FLOAT_EQ(out[i], x[i]) << i;  // one slot, weight 1
  // combine: the refusing rank takes part (NaN where the peers need its rows) and its next
  // dispatch fails on every rank naming it, as for a NULL buffer of its own.
  t0 = Clock::now();
  if (is_bad) locmoe_refuse_next_call("out has dtype float64");
  st = locmoe_combine(d, ein.data(), h, out.data(), nullptr);
  EXPECT_LT(since(t0), kFast) << last();
  EXPECT_EQ(st, is_bad ? LOCMOE_ERR_INVALID_ARGUMENT : LOCMOE_OK) << last();
  t0 = Clock::now();
  st = locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr);
  expect_refused("out", st, Clock::now() - t0);
  ASSERT_EQ(locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr), LOCMOE_OK) << last();
  locmoe_handle_destroy(h);
  locmoe_dispatcher_destroy(d);
  locmoe_plan_destroy(plan);
  locmoe_group_destroy(g);
}

// A NULL handle, or one of another dispatcher, in combine or a backward: that rank has no plan to
// take part in the exchange with, so it aborts the communicator and its peers' pending exchange
// fails at once naming it (instead of at the deadline; a peer that exchanges nothing with it then
// fails in its next exchange). The communicator is unusable afterwards.
void bad_handle_in(int which, bool foreign) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g), bad = R - 1;
  if (R == 1) {
    locmoe_group_destroy(g);
    GTEST_SKIP() << "needs 2 ranks";
  }
  PlanArgs a(me, R);
  locmoe_plan_t plan = nullptr;
  ASSERT_EQ(locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan), LOCMOE_OK)
      << last();
  locmoe_dispatcher_config_t dc = LOCMOE_DISPATCHER_CONFIG_INIT;
  dc.experts_per_rank = a.L;
  dc.hidden = 3;
  dc.max_tokens = a.T;
  dc.top_k = a.k;
  locmoe_dispatcher_t d = nullptr, d2 = nullptr;
  locmoe_handle_t h = nullptr, h2 = nullptr;
  ASSERT_EQ(locmoe_dispatcher_create(g, &dc, &d), LOCMOE_OK) << last();
  ASSERT_EQ(locmoe_dispatcher_create(g, &dc, &d2), LOCMOE_OK) << last();
  ASSERT_EQ(locmoe_handle_create(d, &h), LOCMOE_OK) << last();
  ASSERT_EQ(locmoe_handle_create(d2, &h2), LOCMOE_OK) << last();
  int64_t rows = 0;
  ASSERT_EQ(locmoe_dispatcher_max_expert_rows(d, &rows), LOCMOE_OK);
  std::vector<float> x(a.T * 3, 1.0f), ein(rows * 3), out(a.T * 3), gw(a.T * a.k);
  ASSERT_EQ(locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr), LOCMOE_OK) << last();
  double v = 0;  // every rank is past the dispatch (the abort notice is asynchronous)
  ASSERT_EQ(locmoe_group_allreduce_sum(g, &v, 1), LOCMOE_OK) << last();
  locmoe_handle_t use = me != bad ? h : (foreign ? h2 : nullptr);
  const auto t0 = Clock::now();
  locmoe_status_t st = LOCMOE_OK;
  if (which == 0) st = locmoe_combine(d, ein.data(), use, out.data(), nullptr);
  if (which == 1) st = locmoe_dispatch_backward(d, ein.data(), use, out.data(), nullptr);
  if (which == 2) st = locmoe_combine_backward(d, x.data(), use, ein.data(), ein.data(), gw.data(), nullptr);
  std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  const std::string why = foreign ? "the handle belongs to another dispatcher" : "handle is NULL";
  // Unusable afterwards on every rank, at once; the plans and the bootstrap still work. A peer that
  // exchanges nothing with the bad rank in this call (its result does not depend on it) completes
  // it and learns of the abort in its next exchange.
  const auto t1 = Clock::now();
  const locmoe_status_t next = locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr);
  EXPECT_EQ(next, LOCMOE_ERR_PEER_FAILURE) << last();
  EXPECT_LT(since(t1), kFast) << last();
  if (me != bad && st == LOCMOE_OK) msg = last();
  EXPECT_TRUE(has(msg, why)) << msg;
  if (me == bad) {
    EXPECT_EQ(st, LOCMOE_ERR_INVALID_ARGUMENT) << msg;
  } else {
    EXPECT_TRUE(st == LOCMOE_OK || st == LOCMOE_ERR_PEER_FAILURE) << st << ": " << msg;
    EXPECT_TRUE(has(msg, "rank " + std::to_string(bad))) << msg;
  }
  expect_group_works(g);
  locmoe_handle_destroy(h);
  locmoe_handle_destroy(h2);
  locmoe_dispatcher_destroy(d);
  locmoe_dispatcher_destroy(d2);
  locmoe_plan_destroy(plan);
  locmoe_group_destroy(g);
}
TEST(Disagree, NullHandleInCombineFailsPeersAtOnce) { bad_handle_in(0, false); }
TEST(Disagree, ForeignHandleInDispatchBackwardFailsPeersAtOnce) { bad_handle_in(1, true); }
TEST(Disagree, NullHandleInCombineBackwardFailsPeersAtOnce) { bad_handle_in(2, false); }

// A rank in another collective than its peers: every rank fails at once naming it and both
// calls; the group is unusable afterwards (its ranks are out of step), and closing it is quick.
TEST(Disagree, RankInAnotherCollectiveIsNamedOnEveryRank) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g), odd = R - 1;
  if (R == 1) GTEST_SKIP() << "needs 2 ranks";
  const auto t0 = Clock::now();
  locmoe_status_t st;
  if (me == odd) {
    double v[3] = {1, 2, 3};
    st = locmoe_group_allreduce_sum(g, v, 3);
  } else {
    PlanArgs a(me, R);
    locmoe_plan_t plan = nullptr;
    st = locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan);
  }
  const std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_EQ(st, LOCMOE_ERR_MISMATCH) << msg;
  EXPECT_TRUE(has(msg, "rank " + std::to_string(odd) + " called allreduce (sum) of 3 float64")) << msg;
  EXPECT_TRUE(has(msg, "rank 0 called allreduce (sum) of " + std::to_string(2 * R) + " int64")) << msg;
  const auto t1 = Clock::now();
  locmoe_group_destroy(g);
  EXPECT_LT(since(t1), kFast);
}

// The reported case: one rank closes its group (its script ended) while its peers wait in a
// collective. Its teardown cannot pair with their collective: they fail at once naming it.
TEST(Disagree, RankClosingItsGroupWhilePeersWaitIsNamed) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g), leaver = R - 1;
  if (R == 1) GTEST_SKIP() << "needs 2 ranks";
  const auto t0 = Clock::now();
  if (me == leaver) {
    locmoe_group_destroy(g);
    EXPECT_LT(since(t0), kFast);
    return;
  }
  PlanArgs a(me, R);
  locmoe_plan_t plan = nullptr;
  const locmoe_status_t st = locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan);
  const std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_EQ(st, LOCMOE_ERR_MISMATCH) << msg;
  EXPECT_EQ(plan, nullptr);
  EXPECT_TRUE(has(msg, "rank " + std::to_string(leaver) + " called barrier")) << msg;
  locmoe_group_destroy(g);
  EXPECT_LT(since(t0), kFast);
}

// locmoe_group_abort: the peers' pending collective fails at once with the aborting rank's
// message, on the bootstrap (plan creation) and on the communicator (dispatch). The notice is
// asynchronous: a peer still finishing the setup collectives that the quitter already left may
// learn of it there; whichever call fails first must name the quitter and its message.
void abort_while_peers_wait(bool in_dispatch) {
  locmoe_group_t g = make_group();
  const int me = rank_of(g), R = size_of(g), quitter = R > 1 ? 1 : 0;
  if (R == 1) {
    locmoe_group_destroy(g);
    GTEST_SKIP() << "needs 2 ranks";
  }
  PlanArgs a(me, R);
  locmoe_plan_t plan = nullptr;
  locmoe_dispatcher_t d = nullptr;
  locmoe_handle_t h = nullptr;
  locmoe_status_t st = LOCMOE_OK;
  if (in_dispatch) {
    st = locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &plan);
    locmoe_dispatcher_config_t dc = LOCMOE_DISPATCHER_CONFIG_INIT;
    dc.experts_per_rank = a.L;
    dc.hidden = 4;
    dc.max_tokens = a.T;
    dc.top_k = a.k;
    if (st == LOCMOE_OK) st = locmoe_dispatcher_create(g, &dc, &d);
    if (st == LOCMOE_OK) st = locmoe_handle_create(d, &h);
  }
  const auto t0 = Clock::now();
  if (me == quitter) {
    ASSERT_EQ(st, LOCMOE_OK) << last();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // most likely, the peers wait by now
    EXPECT_EQ(locmoe_group_abort(g, "ValueError: the data loader ran dry"), LOCMOE_OK) << last();
    // Its own later calls fail at once too.
    double v = 1;
    EXPECT_EQ(locmoe_group_allreduce_sum(g, &v, 1), LOCMOE_ERR_PEER_FAILURE);
  } else {
    if (st == LOCMOE_OK && in_dispatch) {
      std::vector<float> x(a.T * 4, 1.0f);
      int64_t rows = 0;
      locmoe_dispatcher_max_expert_rows(d, &rows);
      std::vector<float> ein(rows * 4);
      st = locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr);
    } else if (st == LOCMOE_OK) {
      locmoe_plan_t p2 = nullptr;
      st = locmoe_plan_create(g, a.T, a.k, a.L, a.expert.data(), a.weight.data(), nullptr, &p2);
    }
    const std::string msg = last();
    EXPECT_LT(since(t0), kFast) << msg;
    EXPECT_EQ(st, LOCMOE_ERR_PEER_FAILURE) << msg;
    EXPECT_TRUE(has(msg, "rank " + std::to_string(quitter))) << msg;
    EXPECT_TRUE(has(msg, "ValueError: the data loader ran dry")) << msg;
  }
  const auto t1 = Clock::now();
  locmoe_handle_destroy(h);
  locmoe_dispatcher_destroy(d);
  locmoe_plan_destroy(plan);
  locmoe_group_destroy(g);
  EXPECT_LT(since(t1), kFast);
}
TEST(Disagree, AbortReachesPeersWaitingInPlanCreation) { abort_while_peers_wait(false); }
TEST(Disagree, AbortReachesPeersWaitingInDispatch) { abort_while_peers_wait(true); }

// Parameters that must agree are checked when the group is made, on every rank, naming the rank.
TEST(Disagree, TimeoutThatDiffersAcrossRanksIsRefusedAtCreation) {
  int32_t me = 0;
  {
    locmoe_group_t probe = make_group();
    me = rank_of(probe);
    if (size_of(probe) == 1) {
      locmoe_group_destroy(probe);
      GTEST_SKIP() << "needs 2 ranks";
    }
    locmoe_group_destroy(probe);
  }
  locmoe_group_config_t c = LOCMOE_GROUP_CONFIG_INIT;
  c.timeout_s = me == 1 ? 17.0 : 23.0;
  locmoe_group_t g = nullptr;
  const auto t0 = Clock::now();
  const locmoe_status_t st = locmoe_group_create(&c, &g);
  const std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_EQ(st, LOCMOE_ERR_MISMATCH) << msg;
  EXPECT_EQ(g, nullptr);
  EXPECT_TRUE(has(msg, "timeout")) << msg;
  EXPECT_TRUE(has(msg, "rank 0 has 23 s, rank 1 has 17 s")) << msg;
}

TEST(Disagree, NegativeTimeoutIsRefusedNamingIt) {
  // On every rank: refused before anything waits.
  locmoe_group_config_t c = LOCMOE_GROUP_CONFIG_INIT;
  c.timeout_s = -1;
  locmoe_group_t g = nullptr;
  EXPECT_EQ(locmoe_group_create(&c, &g), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(has(last(), "timeout_s = -1")) << last();
  EXPECT_EQ(g, nullptr);
  c.timeout_s = NAN;
  EXPECT_EQ(locmoe_group_create(&c, &g), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(has(last(), "timeout_s = nan")) << last();
}

TEST(Disagree, NegativeTimeoutOnOneRankFailsEveryRankAtOnce) {
  int32_t me = 0, R = 1;
  {
    locmoe_group_t probe = make_group();
    me = rank_of(probe);
    R = size_of(probe);
    locmoe_group_destroy(probe);
  }
  if (R == 1) GTEST_SKIP() << "needs 2 ranks";
  locmoe_group_config_t c = LOCMOE_GROUP_CONFIG_INIT;
  c.timeout_s = me == R - 1 ? -5.0 : kDeadline;
  locmoe_group_t g = nullptr;
  const auto t0 = Clock::now();
  const locmoe_status_t st = locmoe_group_create(&c, &g);
  const std::string msg = last();
  EXPECT_LT(since(t0), kFast) << msg;
  EXPECT_NE(st, LOCMOE_OK) << msg;
  EXPECT_TRUE(has(msg, "timeout_s = -5")) << msg;
  if (me != R - 1) {
    EXPECT_TRUE(has(msg, "rank " + std::to_string(R - 1) + " rejected its input")) << msg;
  }
}

}  // namespace
