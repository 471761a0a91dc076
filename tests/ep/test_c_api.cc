// The C API and its C++ layer under mpirun: a dispatch -> experts -> combine round trip checked
// against the plan alone, the error contract (codes, last-error text, struct_size checks), and a
// mismatched hidden size across ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "locmoe/locmoe.h"
#include "locmoe/locmoe.hpp"

extern "C" int locmoe_test_c_header_sizes(void);

namespace {

TEST(CApi, HeaderIsValidC) { EXPECT_EQ(locmoe_test_c_header_sizes(), 1); }

TEST(CApi, StatusNamesMatchCodes) {
  EXPECT_STREQ(locmoe_status_name(LOCMOE_OK), "ok");
  EXPECT_STRNE(locmoe_status_name(LOCMOE_ERR_MISMATCH), locmoe_status_name(LOCMOE_ERR_TIMEOUT));
  EXPECT_STREQ(locmoe_status_name(999), "unknown status");
}

TEST(CApi, NullArgumentsAreErrorsWithAMessage) {
  EXPECT_EQ(locmoe_group_rank(nullptr, nullptr), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(locmoe_last_error()).find("group is NULL"), std::string::npos) << locmoe_last_error();
  EXPECT_EQ(locmoe_dispatch(nullptr, nullptr, nullptr, nullptr, nullptr, 0, nullptr), LOCMOE_ERR_INVALID_ARGUMENT);
  locmoe_group_config_t bad = LOCMOE_GROUP_CONFIG_INIT;
  bad.struct_size = 1000;
  locmoe_group_t g = nullptr;
  EXPECT_EQ(locmoe_group_create(&bad, &g), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(g, nullptr);  // out-parameters untouched on error
  EXPECT_NE(std::string(locmoe_last_error()).find("struct_size"), std::string::npos) << locmoe_last_error();
  locmoe_group_destroy(nullptr);  // destroy accepts NULL
}

// Identity experts and the plan's weights: out[t] = (sum of t's accepted weights) * x[t].
TEST(CApi, RoundTripThroughTheCppLayer) {
  locmoe::api::Group group;
  const int R = group.size(), me = group.rank();
  const int32_t L = 2, k = 2, H = 6, T = 4 + me;
  std::mt19937 rng(11 + me);
  std::vector<int32_t> expert(T * k);
  std::vector<float> weight(T * k), x(T * H);
  for (int t = 0; t < T; ++t) {
    const int e0 = static_cast<int>(rng() % (R * L));
    expert[t * k] = e0;
    expert[t * k + 1] = t % 3 == 0 ? -1 : (e0 + 1 + static_cast<int>(rng() % (R * L - 1))) % (R * L);
    weight[t * k] = 0.5f + 0.25f * static_cast<float>(t % 2);
    weight[t * k + 1] = expert[t * k + 1] < 0 ? 0.0f : 0.25f;
  }
  for (auto& v : x) v = static_cast<float>(static_cast<int>(rng() % 17) - 8);
  locmoe::api::Plan plan(group, T, k, L, expert.data(), weight.data());
  EXPECT_EQ(plan.info().num_tokens, T);

  locmoe_dispatcher_config_t cfg = LOCMOE_DISPATCHER_CONFIG_INIT;
  cfg.experts_per_rank = L;
  cfg.hidden = H;
  cfg.max_tokens = 16;
  cfg.top_k = k;
  cfg.align = 4;
  int64_t queried_rows = 0;
  uint64_t ws = 0, hb = 0;
  ASSERT_EQ(locmoe_dispatcher_query(&cfg, R, &queried_rows, &ws, &hb), LOCMOE_OK) << locmoe_last_error();
  EXPECT_GT(ws, 0u);
  EXPECT_GT(hb, 0u);
  locmoe::api::Dispatcher d(group, cfg);
  locmoe::api::Handle h(d);
  EXPECT_THROW(h.info(), locmoe::api::Error);  // no dispatch yet
  const int64_t cap = d.max_expert_rows();
  EXPECT_EQ(cap, queried_rows);
  std::vector<float> ein(cap * H), out(T * H), gx(T * H), gw(T * k);
  d.dispatch(x.data(), plan, h, ein.data(), cap);
  const locmoe_handle_info_t info = h.info();
  EXPECT_EQ(info.num_tokens, T);
  EXPECT_EQ(info.num_local_experts, L);
  const std::vector<int64_t> offs = h.expert_offsets(), counts = h.expert_counts();
  ASSERT_EQ(offs.size(), static_cast<size_t>(L + 1));
  EXPECT_EQ(offs[L], info.expert_rows);
  EXPECT_EQ(offs[L] % cfg.align, 0);
  int64_t slots = 0;
  for (int64_t c : counts) slots += c;
  EXPECT_EQ(slots, info.slots_received);
  // Total accepted slots over the group = total received slots.
  double tot[2] = {static_cast<double>(info.accepted_slots), static_cast<double>(info.slots_received)};
  group.allreduce_sum(tot, 2);
  EXPECT_EQ(tot[0], tot[1]);

  d.combine(ein.data(), h, out.data());  // identity experts
  for (int t = 0; t < T; ++t) {
    float wsum = 0;
    for (int j = 0; j < k; ++j) wsum += expert[t * k + j] >= 0 ? weight[t * k + j] : 0.0f;
    for (int c = 0; c < H; ++c) ASSERT_FLOAT_EQ(out[t * H + c], wsum * x[t * H + c]) << t << "," << c;
  }
  // Backward with grad_out = x: d w[t,j] = <x[t], x[t]>, grad_x = (#slots) * (w * x) summed.
  std::vector<float> gein(cap * H);
  d.combine_backward(x.data(), h, ein.data(), gein.data(), gw.data());
  d.dispatch_backward(gein.data(), h, gx.data());
  for (int t = 0; t < T; ++t) {
    float n2 = 0, wsum = 0;
    for (int c = 0; c < H; ++c) n2 += x[t * H + c] * x[t * H + c];
    for (int j = 0; j < k; ++j) {
      const bool on = expert[t * k + j] >= 0;
      wsum += on ? weight[t * k + j] : 0.0f;
      ASSERT_FLOAT_EQ(gw[t * k + j], on ? n2 : 0.0f);
    }
    for (int c = 0; c < H; ++c) ASSERT_FLOAT_EQ(gx[t * H + c], wsum * x[t * H + c]);
  }
}

// weight_grads_with_dispatch_backward through the C API: the weight gradients that
// locmoe_dispatch_backward_weights returns equal what locmoe_combine_backward returns without it,
// and a training step costs one data exchange fewer (1 metadata round, 4 exchanges instead of 5).
TEST(CApi, WeightGradientsBehindDispatchBackward) {
  locmoe::api::Group group;
  const int R = group.size(), me = group.rank();
  const int32_t L = 2, k = 2, H = 5, T = 6 + me;
  std::mt19937 rng(23 + me);
  std::vector<int32_t> expert(T * k);
  std::vector<float> weight(T * k), x(T * H), gout(T * H);
  for (int t = 0; t < T; ++t) {
    const int e0 = static_cast<int>(rng() % (R * L));
    expert[t * k] = e0;
    expert[t * k + 1] = t % 4 == 1 ? -1 : (e0 + 1) % (R * L);
    weight[t * k] = 0.75f;
    weight[t * k + 1] = expert[t * k + 1] < 0 ? 0.0f : 0.25f;
  }
  for (auto& v : x) v = static_cast<float>(static_cast<int>(rng() % 13) - 6);
  for (auto& v : gout) v = static_cast<float>(static_cast<int>(rng() % 7) - 3);
  locmoe::api::Plan plan(group, T, k, L, expert.data(), weight.data());

  struct Step {
    std::vector<float> gx, gw;
    uint64_t rounds = 0, exchanges = 0;
  };
  auto step = [&](bool with_dw) {
    locmoe_dispatcher_config_t cfg = LOCMOE_DISPATCHER_CONFIG_INIT;
    cfg.experts_per_rank = L;
    cfg.hidden = H;
    cfg.max_tokens = 16;
    cfg.top_k = k;
    cfg.weight_grads_with_dispatch_backward = with_dw ? 1 : 0;
    locmoe::api::Dispatcher d(group, cfg);
    locmoe::api::Handle h(d);
    const int64_t cap = d.max_expert_rows();
    std::vector<float> ein(cap * H), out(T * H), gein(cap * H);
    Step s;
    s.gx.assign(T * H, -1.0f);
    s.gw.assign(T * k, -1.0f);
    const auto [r0, x0] = d.exchange_counters();
    d.dispatch(x.data(), plan, h, ein.data(), cap);
    for (float& v : ein) v = 2.0f * v + 1.0f;  // an expert that is not the identity
    d.combine(ein.data(), h, out.data());
    if (with_dw) {
      d.combine_backward(gout.data(), h, ein.data(), gein.data(), nullptr);
      d.dispatch_backward(gein.data(), h, s.gx.data(), s.gw.data(), nullptr);
    } else {
      d.combine_backward(gout.data(), h, ein.data(), gein.data(), s.gw.data());
      d.dispatch_backward(gein.data(), h, s.gx.data());
    }
    const auto [r1, x1] = d.exchange_counters();
    s.rounds = r1 - r0;
    s.exchanges = x1 - x0;
    return s;
  };
  const Step apart = step(false), behind = step(true);
  EXPECT_EQ(apart.rounds, 1u);
  EXPECT_EQ(apart.exchanges, 5u);
  EXPECT_EQ(behind.rounds, 1u);
  EXPECT_EQ(behind.exchanges, 4u);
  EXPECT_EQ(behind.gw, apart.gw);
  EXPECT_EQ(behind.gx, apart.gx);
  // Independently: d w[t,j] = <gout[t], 2 x[t] + 1> for accepted slots, 0 for unused ones.
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j) {
      float want = 0;
      if (expert[t * k + j] >= 0)
        for (int c = 0; c < H; ++c) want += gout[t * H + c] * (2.0f * x[t * H + c] + 1.0f);
      EXPECT_FLOAT_EQ(behind.gw[t * k + j], want) << t << "," << j;
    }
}

// The second version of locmoe_dispatcher_config_t: a first-version struct (48 bytes) never
// reads weight_grads_with_dispatch_backward; the full struct has it checked.
TEST(CApi, DispatcherConfigSecondVersion) {
  locmoe_dispatcher_config_t cfg = LOCMOE_DISPATCHER_CONFIG_INIT;
  cfg.experts_per_rank = 2;
  cfg.hidden = 4;
  cfg.max_tokens = 8;
  cfg.top_k = 2;
  cfg.weight_grads_with_dispatch_backward = 2;
  EXPECT_EQ(locmoe_dispatcher_query(&cfg, 2, nullptr, nullptr, nullptr), LOCMOE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(locmoe_last_error()).find("weight_grads_with_dispatch_backward 2 must be 0 or 1"),
            std::string::npos)
      << locmoe_last_error();
  cfg.struct_size = 48;
  EXPECT_EQ(locmoe_dispatcher_query(&cfg, 2, nullptr, nullptr, nullptr), LOCMOE_OK) << locmoe_last_error();
  cfg.struct_size = 44;
  EXPECT_EQ(locmoe_dispatcher_query(&cfg, 2, nullptr, nullptr, nullptr), LOCMOE_ERR_INVALID_ARGUMENT);
}

// LocMoE+ through the C API: renormalized weights sum to 1 over a token's accepted experts, so
// identity experts give back x for every token that kept an expert, and 0 for dropped tokens.
TEST(CApi, RouteThenIdentityExpertsReturnInput) {
  locmoe::api::Group group;
  const int R = group.size();
  const int32_t L = 2, k = 2, H = 8, T = 16, E = L * R;
  std::mt19937 rng(5);  // the gate: same on every rank
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> gate(static_cast<size_t>(E) * H), x(static_cast<size_t>(T) * H);
  for (auto& v : gate) v = n01(rng);
  std::mt19937 rx(100 + group.rank());
  for (auto& v : x) v = n01(rx);
  locmoe_router_config_t rc = LOCMOE_ROUTER_CONFIG_INIT;
  rc.k = k;
  locmoe_router_t router = nullptr;
  ASSERT_EQ(locmoe_router_create(&rc, &router), LOCMOE_OK) << locmoe_last_error();
  locmoe_plan_t plan = nullptr;
  ASSERT_EQ(locmoe_route(router, group.get(), x.data(), T, H, gate.data(), L, &plan), LOCMOE_OK)
      << locmoe_last_error();
  locmoe_plan_info_t pi = LOCMOE_PLAN_INFO_INIT;
  ASSERT_EQ(locmoe_plan_info(plan, &pi), LOCMOE_OK);
  EXPECT_EQ(pi.num_tokens, T);
  EXPECT_EQ(pi.num_experts, E);
  std::vector<int32_t> expert(static_cast<size_t>(T) * pi.k);
  std::vector<float> weight(expert.size());
  ASSERT_EQ(locmoe_plan_slots(plan, expert.data(), weight.data()), LOCMOE_OK);

  locmoe_dispatcher_config_t cfg = LOCMOE_DISPATCHER_CONFIG_INIT;
  cfg.experts_per_rank = L;
  cfg.hidden = H;
  cfg.max_tokens = T;
  cfg.top_k = pi.k;
  locmoe::api::Dispatcher d(group, cfg);
  locmoe::api::Handle h(d);
  const int64_t cap = d.max_expert_rows();
  std::vector<float> ein(cap * H), out(static_cast<size_t>(T) * H);
  ASSERT_EQ(locmoe_dispatch(d.get(), x.data(), plan, h.get(), ein.data(), cap, nullptr), LOCMOE_OK)
      << locmoe_last_error();
  d.combine(ein.data(), h, out.data());
  for (int t = 0; t < T; ++t) {
    bool kept = false;
    for (int j = 0; j < pi.k; ++j) kept |= expert[t * pi.k + j] >= 0;
    for (int c = 0; c < H; ++c)
      ASSERT_NEAR(out[t * H + c], kept ? x[t * H + c] : 0.0f, 1e-5f) << "token " << t;
  }
  locmoe_plan_destroy(plan);
  locmoe_router_destroy(router);
}

TEST(CApi, MismatchedHiddenSizeIsAClearError) {
  locmoe::api::Group group;
  if (group.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  locmoe_dispatcher_config_t cfg = LOCMOE_DISPATCHER_CONFIG_INIT;
  cfg.experts_per_rank = 1;
  cfg.hidden = group.rank() == 1 ? 128 : 64;
  cfg.max_tokens = 4;
  cfg.top_k = 1;
  locmoe_dispatcher_t d = nullptr;
  EXPECT_EQ(locmoe_dispatcher_create(group.get(), &cfg, &d), LOCMOE_ERR_MISMATCH);
  EXPECT_EQ(d, nullptr);
  const std::string msg = locmoe_last_error();
  EXPECT_NE(msg.find("hidden size"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank 1 has 128"), std::string::npos) << msg;
}

}  // namespace
