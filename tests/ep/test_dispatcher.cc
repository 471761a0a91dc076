// Dispatcher tests, run under mpirun with 1, 2, 4 and 8 ranks (emulated nodes via LOCMOE_HOSTID).
// Every rank regenerates every rank's tokens and plan from the seed, so the reference below is
// computed from the plans alone (no layout, no exchange): out[t] = sum_j w[t,j] * f_e(x[t]).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include "ep_test_util.h"
#include "locmoe/ep/dispatcher.h"

namespace locmoe {
namespace {

using test::Group;

// Expert e is y = a_e * x + b_e elementwise (exact in binary: multiples of 1/8 and 1/4).
float expert_a(int e) { return 1.0f + 0.125f * static_cast<float>(e % 8); }
float expert_b(int e) { return 0.25f * static_cast<float>(e % 4); }

struct Case {
  int L = 2, k = 2, H = 8, align = 1;
  double p_drop = 0.25;
  uint32_t seed = 1;
  bool unit_weights = false;
  bool identity_experts = false;
  TokenDType dtype = TokenDType::kF32;
  bool dw_with_dispatch_backward = false;  // DispatcherConfig::weight_grads_with_dispatch_backward
  std::function<int(int rank)> tokens = [](int r) { return 5 + 3 * r; };
  std::function<void(RoutingPlan&)> edit;  // changes a plan before finalize
};

struct RankData {
  RoutingPlan plan;
  std::vector<float> x;  // [T,H]
  std::vector<float> g;  // [T,H] upstream gradient of out
};

RankData make_rank_data(const Case& c, const ClusterMap& cm, int r) {
  RankData d;
  const int T = c.tokens(r);
  d.plan = test::random_plan(r, cm, c.L, T, c.k, c.p_drop, c.seed);
  if (c.unit_weights)
    for (size_t s = 0; s < d.plan.expert.size(); ++s) d.plan.weight[s] = d.plan.expert[s] >= 0 ? 1.0f : 0.0f;
  if (c.edit) c.edit(d.plan);
  std::mt19937 rng(c.seed * 31u + static_cast<uint32_t>(r));
  std::uniform_int_distribution<int> ui(-8, 8);
  d.x.resize(static_cast<size_t>(T) * c.H);
  d.g.resize(static_cast<size_t>(T) * c.H);
  for (auto& v : d.x) v = 0.5f * static_cast<float>(ui(rng));  // exact in bf16
  for (auto& v : d.g) v = 0.25f * static_cast<float>(ui(rng));
  return d;
}

float f_expert(const Case& c, int e, float x) { return c.identity_experts ? x : expert_a(e) * x + expert_b(e); }

std::vector<unsigned char> to_dtype(const std::vector<float>& v, TokenDType dt) {
  std::vector<unsigned char> out(v.size() * kernels::dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == TokenDType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {  // test values are exact in bf16: truncation is the conversion
      uint32_t u;
      std::memcpy(&u, &v[i], 4);
      const uint16_t b = static_cast<uint16_t>(u >> 16);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}
std::vector<float> from_dtype(const std::vector<unsigned char>& v, TokenDType dt, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (dt == TokenDType::kF32) {
      std::memcpy(&out[i], v.data() + 4 * i, 4);
    } else {
      uint16_t b;
      std::memcpy(&b, v.data() + 2 * i, 2);
      const uint32_t u = static_cast<uint32_t>(b) << 16;
      std::memcpy(&out[i], &u, 4);
    }
  }
  return out;
}

using Rows = std::vector<std::vector<float>>;

// Everything one run of forward + backward produced on this rank.
struct RunResult {
  Status status;
  DispatchStats stats;
  std::vector<int64_t> expert_count, expert_offset;
  std::vector<float> expert_in, out, grad_w, grad_x, grad_expert_out;
};

RunResult run(const Case& c, Group& g, const RankData& mine) {
  RunResult res;
  const int T = mine.plan.num_tokens;
  DispatcherConfig cfg;
  cfg.experts_per_rank = c.L;
  cfg.hidden = c.H;
  cfg.dtype = c.dtype;
  cfg.max_tokens = std::max(T, 1);
  cfg.top_k = c.k;
  cfg.align = c.align;
  cfg.weight_grads_with_dispatch_backward = c.dw_with_dispatch_backward;
  int max_t = 0;
  for (int r = 0; r < g.size; ++r) max_t = std::max(max_t, c.tokens(r));
  cfg.max_recv_rows = static_cast<int64_t>(max_t) * g.size;
  auto d = Dispatcher::create(*g.bootstrap, *g.comm, cfg);
  if (!d.ok()) { res.status = d.status(); return res; }
  auto h = (*d)->make_handle();
  if (!h.ok()) { res.status = h.status(); return res; }
  RoutingPlan plan = mine.plan;
  res.status = finalize_plan(plan, g.bootstrap.get());
  if (!res.status.ok()) return res;
  const size_t H = static_cast<size_t>(c.H), esz = kernels::dtype_size(c.dtype);
  const int64_t cap = (*d)->max_expert_rows();
  std::vector<unsigned char> x = to_dtype(mine.x, c.dtype), ein(cap * H * esz);
  std::fill(ein.begin(), ein.end(), 0xAB);  // padding must be overwritten with zeros
  res.status = (*d)->dispatch(x.data(), plan, **h, ein.data(), cap);
  if (!res.status.ok()) return res;
  DispatchHandle& hd = **h;
  const int64_t rows = hd.expert_rows();
  res.stats = hd.stats();
  res.expert_count.assign(hd.expert_count().begin(), hd.expert_count().end());
  res.expert_offset.assign(hd.expert_offset().begin(), hd.expert_offset().end());
  res.expert_in = from_dtype(ein, c.dtype, rows * H);
  // Experts: y = f_e(x) on real rows; padding rows of y get garbage (combine must ignore them).
  std::vector<float> y(rows * H, 1e30f), gin(rows * H, 1e30f);
  for (int l = 0; l < c.L; ++l) {
    const int e = g.rank * c.L + l;
    for (int64_t r = res.expert_offset[l]; r < res.expert_offset[l] + res.expert_count[l]; ++r)
      for (size_t h2 = 0; h2 < H; ++h2) y[r * H + h2] = f_expert(c, e, res.expert_in[r * H + h2]);
  }
  std::vector<unsigned char> yb = to_dtype(y, c.dtype), out(T * H * esz), gout = to_dtype(mine.g, c.dtype);
  if (c.dtype == TokenDType::kBF16) yb = to_dtype(from_dtype(yb, c.dtype, y.size()), c.dtype);
  res.status = (*d)->combine(yb.data(), hd, out.data());
  if (!res.status.ok()) return res;
  res.out = from_dtype(out, c.dtype, T * H);
  // Backward: d out -> d y and d w; d y -> d expert_in (chain rule of f_e) -> d x.
  std::vector<unsigned char> gy(rows * H * esz);
  res.grad_w.assign(static_cast<size_t>(T) * c.k, -1.0f);
  float* gw_cb = c.dw_with_dispatch_backward ? nullptr : res.grad_w.data();  // else dispatch_backward's
  res.status = (*d)->combine_backward(gout.data(), hd, yb.data(), gy.data(), gw_cb);
  if (!res.status.ok()) return res;
  res.grad_expert_out = from_dtype(gy, c.dtype, rows * H);
  for (int l = 0; l < c.L; ++l) {
    const float a = c.identity_experts ? 1.0f : expert_a(g.rank * c.L + l);
    for (int64_t r = res.expert_offset[l]; r < res.expert_offset[l] + res.expert_count[l]; ++r)
      for (size_t h2 = 0; h2 < H; ++h2) gin[r * H + h2] = a * res.grad_expert_out[r * H + h2];
  }
  std::vector<unsigned char> gin_b = to_dtype(gin, c.dtype), gx(T * H * esz);
  res.status = (*d)->dispatch_backward(gin_b.data(), hd, gx.data(), nullptr,
                                       c.dw_with_dispatch_backward ? res.grad_w.data() : nullptr);
  if (!res.status.ok()) return res;
  res.grad_x = from_dtype(gx, c.dtype, T * H);
  return res;
}

// Checks one rank's results against the plan-only reference.
void check_against_reference(const Case& c, Group& g, const RunResult& res, double tol) {
  ASSERT_TRUE(res.status.ok()) << res.status.to_string();
  const ClusterMap& cm = g.comm->cluster();
  const size_t H = static_cast<size_t>(c.H);
  std::vector<RankData> all;
  for (int r = 0; r < g.size; ++r) all.push_back(make_rank_data(c, cm, r));
  const RankData& me = all[g.rank];
  const int T = me.plan.num_tokens;
  // Expert inputs: as multisets per local expert, rows of every (source, token, slot) routed here.
  std::vector<Rows> want_in(c.L), want_gy(c.L);
  int64_t accepted = 0, dropped = 0, dropped_tokens = 0;
  for (int s = 0; s < g.size; ++s) {
    const RoutingPlan& p = all[s].plan;
    for (int t = 0; t < p.num_tokens; ++t)
      for (int j = 0; j < c.k; ++j) {
        const int e = p.expert[t * c.k + j];
        if (e < 0 || e / c.L != g.rank) continue;
        const float* xr = &all[s].x[t * H];
        want_in[e % c.L].emplace_back(xr, xr + H);
        std::vector<float> gy(H);
        for (size_t h = 0; h < H; ++h) gy[h] = p.weight[t * c.k + j] * all[s].g[t * H + h];
        want_gy[e % c.L].push_back(gy);
      }
  }
  for (int t = 0; t < T; ++t) {
    bool any = false;
    for (int j = 0; j < c.k; ++j) {
      accepted += me.plan.expert[t * c.k + j] >= 0;
      any |= me.plan.expert[t * c.k + j] >= 0;
      dropped += me.plan.slot_dropped[t * c.k + j];
    }
    dropped_tokens += !any;
  }
  EXPECT_EQ(res.stats.tokens, T);
  EXPECT_EQ(res.stats.accepted_slots, accepted);
  EXPECT_EQ(res.stats.dropped_slots, dropped);
  EXPECT_EQ(res.stats.dropped_tokens, dropped_tokens);
  int64_t want_slots = 0;
  for (int l = 0; l < c.L; ++l) {
    const int64_t n = static_cast<int64_t>(want_in[l].size());
    want_slots += n;
    ASSERT_EQ(res.expert_count[l], n) << "local expert " << l;
    ASSERT_EQ(res.expert_offset[l] % c.align, 0);
    ASSERT_EQ(res.expert_offset[l + 1] - res.expert_offset[l], (n + c.align - 1) / c.align * c.align);
    Rows got_in, got_gy;
    for (int64_t r = res.expert_offset[l]; r < res.expert_offset[l] + n; ++r) {
      got_in.emplace_back(&res.expert_in[r * H], &res.expert_in[r * H] + H);
      got_gy.emplace_back(&res.grad_expert_out[r * H], &res.grad_expert_out[r * H] + H);
    }
    for (int64_t r = res.expert_offset[l] + n; r < res.expert_offset[l + 1]; ++r)
      for (size_t h = 0; h < H; ++h) {
        ASSERT_EQ(res.expert_in[r * H + h], 0.0f) << "padding row " << r;
        ASSERT_EQ(res.grad_expert_out[r * H + h], 0.0f) << "padding row " << r;
      }
    std::sort(got_in.begin(), got_in.end());
    std::sort(want_in[l].begin(), want_in[l].end());
    EXPECT_EQ(got_in, want_in[l]) << "rows of local expert " << l;
    if (c.dtype == TokenDType::kF32) {
      std::sort(got_gy.begin(), got_gy.end());
      std::sort(want_gy[l].begin(), want_gy[l].end());
      EXPECT_EQ(got_gy, want_gy[l]) << "grad_expert_out rows of local expert " << l;
    }
  }
  EXPECT_EQ(res.stats.slots_received, want_slots);
  // Outputs and gradients per token.
  for (int t = 0; t < T; ++t) {
    for (size_t h = 0; h < H; ++h) {
      double out = 0, gx = 0;
      for (int j = 0; j < c.k; ++j) {
        const int e = me.plan.expert[t * c.k + j];
        if (e < 0) continue;
        const double w = me.plan.weight[t * c.k + j];
        out += w * f_expert(c, e, me.x[t * H + h]);
        gx += (c.identity_experts ? 1.0 : expert_a(e)) * w * me.g[t * H + h];
      }
      ASSERT_NEAR(res.out[t * H + h], out, tol * (1 + std::abs(out))) << "token " << t << " h " << h;
      ASSERT_NEAR(res.grad_x[t * H + h], gx, tol * (1 + std::abs(gx))) << "token " << t << " h " << h;
    }
    for (int j = 0; j < c.k; ++j) {
      const int e = me.plan.expert[t * c.k + j];
      double dw = 0;
      if (e >= 0)
        for (size_t h = 0; h < H; ++h) dw += me.g[t * H + h] * f_expert(c, e, me.x[t * H + h]);
      ASSERT_NEAR(res.grad_w[t * c.k + j], dw, tol * (1 + std::abs(dw))) << "token " << t << " slot " << j;
    }
  }
}

class DispatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_ = test::make_group();
    ASSERT_NE(g_.comm, nullptr) << "group setup failed";
  }
  void check(const Case& c, double tol = 1e-5) {
    const RankData mine = make_rank_data(c, g_.comm->cluster(), g_.rank);
    const RunResult res = run(c, g_, mine);
    check_against_reference(c, g_, res, tol);
  }
  Group g_;
};

TEST_F(DispatcherTest, IdentityExpertsUnitWeightsReturnInputTimesSlots) {
  Case c;
  c.unit_weights = true;
  c.identity_experts = true;
  c.p_drop = 0.0;
  const RankData mine = make_rank_data(c, g_.comm->cluster(), g_.rank);
  const RunResult res = run(c, g_, mine);
  ASSERT_TRUE(res.status.ok()) << res.status.to_string();
  // Every token has k accepted unit-weight slots, so out = k * x exactly.
  for (size_t i = 0; i < mine.x.size(); ++i) ASSERT_EQ(res.out[i], c.k * mine.x[i]) << i;
  check_against_reference(c, g_, res, 0.0);
}

TEST_F(DispatcherTest, RealWeightsAndBackwardMatchReference) { check(Case{}); }

TEST_F(DispatcherTest, TopOneManyExpertsAlignedSegments) {
  Case c;
  c.k = 1; c.L = 3; c.align = 4; c.H = 5;
  check(c);
}

TEST_F(DispatcherTest, TopFourWithDrops) {
  Case c;
  c.k = 4; c.L = 2; c.p_drop = 0.5; c.align = 8; c.seed = 7;
  check(c);
}

TEST_F(DispatcherTest, Bf16RowsIdentityExperts) {
  Case c;
  c.dtype = TokenDType::kBF16;
  c.unit_weights = true;
  c.identity_experts = true;
  c.H = 16;
  check(c, 0.0);  // small integers: exact in bf16 and in fp32 sums
}

TEST_F(DispatcherTest, ZeroTokensEverywhere) {
  Case c;
  c.tokens = [](int) { return 0; };
  check(c);
}

TEST_F(DispatcherTest, OneRankWithoutTokens) {
  Case c;
  c.tokens = [](int r) { return r == 0 ? 0 : 6; };
  check(c);
}

TEST_F(DispatcherTest, EveryTokenToOneExpert) {
  Case c;
  c.k = 2;
  c.edit = [&c](RoutingPlan& p) {
    for (int t = 0; t < p.num_tokens; ++t) {
      p.expert[t * 2] = p.num_experts - 1;  // the last rank's last expert takes every token
      p.weight[t * 2] = 0.75f;
      p.expert[t * 2 + 1] = -1;
      p.weight[t * 2 + 1] = 0.0f;
      p.slot_dropped[t * 2 + 1] = 1;
    }
  };
  check(c);
}

TEST_F(DispatcherTest, AllTokensDropped) {
  Case c;
  c.edit = [](RoutingPlan& p) {
    std::fill(p.expert.begin(), p.expert.end(), -1);
    std::fill(p.weight.begin(), p.weight.end(), 0.0f);
    std::fill(p.slot_dropped.begin(), p.slot_dropped.end(), 1);
  };
  const RankData mine = make_rank_data(c, g_.comm->cluster(), g_.rank);
  const RunResult res = run(c, g_, mine);
  ASSERT_TRUE(res.status.ok()) << res.status.to_string();
  EXPECT_EQ(res.stats.dropped_tokens, mine.plan.num_tokens);
  EXPECT_EQ(res.stats.dropped_slots, static_cast<int64_t>(mine.plan.expert.size()));
  for (float v : res.out) ASSERT_EQ(v, 0.0f);
  for (float v : res.grad_x) ASSERT_EQ(v, 0.0f);
  for (float v : res.grad_w) ASSERT_EQ(v, 0.0f);
  check_against_reference(c, g_, res, 0.0);
}

TEST_F(DispatcherTest, DeterministicRunToRun) {
  Case c;
  c.k = 3; c.L = 2; c.H = 33;
  const RankData mine = make_rank_data(c, g_.comm->cluster(), g_.rank);
  const RunResult a = run(c, g_, mine), b = run(c, g_, mine);
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * 4));
  EXPECT_EQ(0, std::memcmp(a.grad_x.data(), b.grad_x.data(), a.grad_x.size() * 4));
  EXPECT_EQ(0, std::memcmp(a.grad_w.data(), b.grad_w.data(), a.grad_w.size() * 4));
}

TEST_F(DispatcherTest, MismatchedHiddenSizesFailClearly) {
  if (g_.size < 2) GTEST_SKIP() << "needs 2 ranks";
  DispatcherConfig cfg;
  cfg.experts_per_rank = 2;
  cfg.hidden = g_.rank == g_.size - 1 ? 65 : 64;
  cfg.max_tokens = 4;
  cfg.top_k = 2;
  auto d = Dispatcher::create(*g_.bootstrap, *g_.comm, cfg);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kMismatch);
  EXPECT_NE(d.status().message().find("hidden size"), std::string::npos) << d.status().message();
  EXPECT_NE(d.status().message().find(std::to_string(g_.size - 1)), std::string::npos) << d.status().message();
}

TEST_F(DispatcherTest, QuerySizesMatchWhatTheDispatcherAllocates) {
  DispatcherConfig cfg;
  cfg.experts_per_rank = 3;
  cfg.hidden = 24;
  cfg.max_tokens = 10;
  cfg.top_k = 2;
  cfg.align = 8;
  cfg.dtype = TokenDType::kBF16;
  auto q = Dispatcher::query_sizes(cfg, g_.size);
  ASSERT_TRUE(q.ok()) << q.status().to_string();
  // Worst case by hand: every rank sends all 10 tokens here, each token to min(k, L) = 2 experts.
  EXPECT_EQ(q->max_expert_rows, int64_t{10} * g_.size * 2 + 3 * 7);
  auto d = Dispatcher::create(*g_.bootstrap, *g_.comm, cfg);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ((*d)->max_expert_rows(), q->max_expert_rows);
  EXPECT_EQ((*d)->workspace_bytes(), q->workspace_bytes);
  EXPECT_FALSE(Dispatcher::query_sizes(cfg, 0).ok());
}

TEST_F(DispatcherTest, BadPlanIsAnErrorNotACrash) {
  DispatcherConfig cfg;
  cfg.experts_per_rank = 2;
  cfg.hidden = 4;
  cfg.max_tokens = 4;
  cfg.top_k = 2;
  auto d = Dispatcher::create(*g_.bootstrap, *g_.comm, cfg);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  auto h = (*d)->make_handle();
  ASSERT_TRUE(h.ok());
  RoutingPlan p = test::random_plan(g_.rank, g_.comm->cluster(), 2, 5, 2, 0.0, 3);  // 5 > max_tokens
  std::vector<float> x(5 * 4), ein((*d)->max_expert_rows() * 4);
  Status s = (*d)->dispatch(x.data(), p, **h, ein.data(), (*d)->max_expert_rows());
  EXPECT_EQ(s.code(), Code::kOutOfRange) << s.to_string();
  std::vector<float> out(16);
  s = (*d)->combine(ein.data(), **h, out.data());  // the failed dispatch left the handle empty
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
}

// The dispatcher takes a plan's counts from finalize_plan: a plan never finalized, or whose slots
// were edited afterwards, is refused before anything moves (every rank edits its own, so every
// rank fails before the first exchange).
TEST_F(DispatcherTest, PlanNotFinalizedOrEditedAfterwardsIsRefused) {
  DispatcherConfig cfg;
  cfg.experts_per_rank = 2;
  cfg.hidden = 4;
  cfg.max_tokens = 6;
  cfg.top_k = 2;
  auto d = Dispatcher::create(*g_.bootstrap, *g_.comm, cfg);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  auto h = (*d)->make_handle();
  ASSERT_TRUE(h.ok());
  std::vector<float> x(6 * 4), ein((*d)->max_expert_rows() * 4);
  RoutingPlan p = test::random_plan(g_.rank, g_.comm->cluster(), 2, 6, 2, 0.0, 5);
  Status s = (*d)->dispatch(x.data(), p, **h, ein.data(), (*d)->max_expert_rows());
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("not finalized"), std::string::npos) << s.to_string();
  ASSERT_TRUE(finalize_plan(p, g_.bootstrap.get()).ok());
  // Token 0 loses its first slot's expert: one copy fewer than the plan counts when its other
  // slot goes to another rank, else the same copies carrying one slot fewer. Both are refused.
  p.expert[0] = -1;
  p.weight[0] = 0.0f;
  s = (*d)->dispatch(x.data(), p, **h, ein.data(), (*d)->max_expert_rows());
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("edited after finalize_plan"), std::string::npos) << s.to_string();
  EXPECT_FALSE((*h)->valid());
}

// Finite differences of loss = sum_t <G[t], out[t]> with respect to x and the combine weights.
TEST_F(DispatcherTest, BackwardMatchesFiniteDifferences) {
  Case c;
  c.tokens = [](int) { return 3; };
  c.H = 4;
  c.p_drop = 0.0;  // every rank varies the same slots, so each collective run matches up
  const ClusterMap& cm = g_.comm->cluster();
  RankData base = make_rank_data(c, cm, g_.rank);
  auto loss = [&](const RankData& d) {
    RunResult r = run(c, g_, d);
    EXPECT_TRUE(r.status.ok()) << r.status.to_string();
    double local = 0, total = 0;
    for (size_t i = 0; i < r.out.size(); ++i) local += static_cast<double>(r.out[i]) * d.g[i];
    MPI_Allreduce(&local, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return total;
  };
  const RunResult an = run(c, g_, base);
  ASSERT_TRUE(an.status.ok());
  const float eps = 0.03125f;  // < min weight 0.1; the layer is linear in x and in w: differences are exact up to rounding
  // Every rank perturbs, one element at a time, its own token 1 (all ranks take part in each run).
  for (int idx = 0; idx < c.H + c.k; ++idx) {
    RankData plus = base, minus = base;
    double analytic = 0;
    if (idx < c.H) {
      plus.x[1 * c.H + idx] += eps;
      minus.x[1 * c.H + idx] -= eps;
      analytic = an.grad_x[1 * c.H + idx];
    } else {
      const int j = idx - c.H;
      plus.plan.weight[1 * c.k + j] += eps;
      minus.plan.weight[1 * c.k + j] -= eps;
      analytic = an.grad_w[1 * c.k + j];
    }
    // Sum of every rank's analytic derivative = derivative of the total loss under the joint step.
    double sum_analytic = 0;
    MPI_Allreduce(&analytic, &sum_analytic, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    const double fd = (loss(plus) - loss(minus)) / (2.0 * eps);
    EXPECT_NEAR(fd, sum_analytic, 1e-3 * (1 + std::abs(fd))) << "element " << idx;
  }
}

}  // namespace
}  // namespace locmoe

// ---- Device memory -----------------------------------------------------------------------------
#include "locmoe/core/config.h"
#include "locmoe/kernels/config.h"
#if LOCMOE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace locmoe {
namespace {

TEST_F(DispatcherTest, DeviceMemoryWithoutGpuIsUnsupported) {
  if (kernels::cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: DeviceMatchesHost covers it";
  DispatcherConfig cfg;
  cfg.experts_per_rank = 2;
  cfg.hidden = 8;
  cfg.max_tokens = 4;
  cfg.top_k = 2;
  cfg.memory = MemoryKind::kDevice;
  auto d = Dispatcher::create(*g_.bootstrap, *g_.comm, cfg);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kUnsupported) << d.status().to_string();
}

// The comm layer's Communicator counts its rounds (the MPI_Alltoallv oracle does not, and cannot
// take a rejection): the tests below need it (EP_TEST_COMM=communicator).
bool counts_rounds(const Group& g) { return g.comm->transport_name() != "mpi-oracle"; }

// One training step (dispatch, combine, combine_backward, dispatch_backward) negotiates once:
// 1 metadata round (the dispatch's prepare) and 5 data exchanges (dispatch's rows with their
// slot metadata, combine's rows back, combine_backward's gradient rows and weight gradients,
// dispatch_backward's rows back), 4 when the weight gradients travel behind dispatch_backward's
// rows (weight_grads_with_dispatch_backward), with results still matching the plan-only
// reference. bf16 with an odd H puts the slot metadata behind rows of 10 bytes (unaligned).
TEST_F(DispatcherTest, TrainingStepNegotiatesOnce) {
  if (!counts_rounds(g_)) GTEST_SKIP() << "needs the comm layer's Communicator (EP_TEST_COMM=communicator)";
  Case f32;
  f32.k = 3; f32.L = 2; f32.align = 4; f32.seed = 11;
  Case bf16;
  bf16.dtype = TokenDType::kBF16; bf16.unit_weights = true; bf16.identity_experts = true; bf16.H = 5;
  Case f32_dw = f32, bf16_dw = bf16;
  f32_dw.dw_with_dispatch_backward = bf16_dw.dw_with_dispatch_backward = true;
  for (const Case& c : {f32, bf16, f32_dw, bf16_dw}) {
    SCOPED_TRACE(c.dw_with_dispatch_backward ? "weight gradients with dispatch_backward" : "default");
    const RankData mine = make_rank_data(c, g_.comm->cluster(), g_.rank);
    const Communicator::Counters before = g_.comm->counters();
    const RunResult res = run(c, g_, mine);  // Dispatcher::create and finalize_plan use the bootstrap
    const Communicator::Counters after = g_.comm->counters();
    ASSERT_TRUE(res.status.ok()) << res.status.to_string();
    EXPECT_EQ(after.metadata_rounds - before.metadata_rounds, 1u);
    EXPECT_EQ(after.data_exchanges - before.data_exchanges, c.dw_with_dispatch_backward ? 4u : 5u);
    check_against_reference(c, g_, res, c.dtype == TokenDType::kBF16 ? 0.0 : 1e-5);
  }
}

// A too-small expert_in on one rank is known before any row moves (N received rows need at most
// N * k + L * (align - 1) expert rows): every rank fails in the dispatch's metadata round, naming
// that rank, instead of it alone finding out after the exchange (its peers would then wait in
// the next call until the deadline). The group works right afterwards.
TEST_F(DispatcherTest, TooSmallExpertInOnOneRankFailsEveryRank) {
  if (!counts_rounds(g_)) GTEST_SKIP() << "needs the comm layer's Communicator (EP_TEST_COMM=communicator)";
  if (g_.size < 2) GTEST_SKIP() << "needs 2 ranks";
  const int bad = g_.size - 1;
  DispatcherConfig cfg;
  cfg.experts_per_rank = 2; cfg.hidden = 4; cfg.max_tokens = 6; cfg.top_k = 1;
  auto d = Dispatcher::create(*g_.bootstrap, *g_.comm, cfg);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  auto h = (*d)->make_handle();
  ASSERT_TRUE(h.ok());
  // Every token of every rank goes to expert 0 of rank `bad`: it receives 6 * R rows.
  RoutingPlan p = test::random_plan(g_.rank, g_.comm->cluster(), 2, 6, 1, 0.0, 3);
  for (auto& e : p.expert) e = bad * 2;
  for (auto& w : p.weight) w = 1.0f;
  ASSERT_TRUE(finalize_plan(p, g_.bootstrap.get()).ok());
  const int64_t cap = (*d)->max_expert_rows(), need = int64_t{6} * g_.size;
  std::vector<float> x(6 * 4, 1.0f), ein(cap * 4);
  const int64_t rows = g_.rank == bad ? need - 1 : cap;
  const auto t0 = std::chrono::steady_clock::now();
  Status s = (*d)->dispatch(x.data(), p, **h, ein.data(), rows);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(s.code(), Code::kOutOfRange) << s.to_string();
  EXPECT_NE(s.message().find("rank " + std::to_string(bad) + "'s receive buffer holds " + std::to_string(need - 1)),
            std::string::npos)
      << s.to_string();
  EXPECT_LT(secs, 5.0) << "every rank must fail in the metadata round, not wait for a deadline";
  EXPECT_FALSE((*h)->valid());
  s = (*d)->dispatch(x.data(), p, **h, ein.data(), cap);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ((*h)->expert_rows(), g_.rank == bad ? need : 0);
  std::vector<float> out(6 * 4);
  s = (*d)->combine(ein.data(), **h, out.data());
  ASSERT_TRUE(s.ok()) << s.to_string();
  for (float v : out) EXPECT_FLOAT_EQ(v, 1.0f);  // expert_in unchanged (identity), one slot of weight 1
}

// combine has no metadata round to refuse a bad argument in: a rank whose expert rows are null
// fails at once but still takes part in the exchange, sending NaN rows, so a peer's output rows
// that depend on it are NaN (not silently wrong) and the others exact; its next dispatch is
// refused on every rank naming it. The group works right afterwards.
TEST_F(DispatcherTest, NullExpertRowsOnOneRankAreNaNForPeersAndRefuseTheNextDispatch) {
  if (!counts_rounds(g_)) GTEST_SKIP() << "needs the comm layer's Communicator (EP_TEST_COMM=communicator)";
  if (g_.size < 2) GTEST_SKIP() << "needs 2 ranks";
  const int R = g_.size, bad = 0, L = 2, H = 4, T = 6;  // rank 0 receives its own tokens 0 and 1
  DispatcherConfig cfg;
  cfg.experts_per_rank = L; cfg.hidden = H; cfg.max_tokens = T; cfg.top_k = 1;
  auto d = Dispatcher::create(*g_.bootstrap, *g_.comm, cfg);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  auto h = (*d)->make_handle();
  ASSERT_TRUE(h.ok());
  RoutingPlan p = test::random_plan(g_.rank, g_.comm->cluster(), L, T, 1, 0.0, 3);
  for (int t = 0; t < T; ++t) {
    p.expert[t] = (t + g_.rank) % (L * R);
    p.weight[t] = 1.0f;
  }
  ASSERT_TRUE(finalize_plan(p, g_.bootstrap.get()).ok());
  const int64_t cap = (*d)->max_expert_rows();
  std::vector<float> x(T * H), ein(cap * H), out(T * H);
  for (int i = 0; i < T * H; ++i) x[i] = static_cast<float>(i % 5) + static_cast<float>(g_.rank);
  ASSERT_TRUE((*d)->dispatch(x.data(), p, **h, ein.data(), cap).ok());
  Status s = (*d)->combine(g_.rank == bad ? nullptr : ein.data(), **h, out.data());
  if (g_.rank == bad) {
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find("expert rows are null"), std::string::npos) << s.to_string();
  } else {
    ASSERT_TRUE(s.ok()) << s.to_string();
    for (int t = 0; t < T; ++t) {
      const bool via_bad = p.expert[t] / L == bad;
      for (int c = 0; c < H; ++c) {
        if (via_bad) EXPECT_TRUE(std::isnan(out[t * H + c])) << "token " << t;
        else EXPECT_EQ(out[t * H + c], x[t * H + c]) << "token " << t;  // identity expert, weight 1
      }
    }
  }
  s = (*d)->dispatch(x.data(), p, **h, ein.data(), cap);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("expert rows are null"), std::string::npos) << s.to_string();
  if (g_.rank != bad) {
    EXPECT_EQ(s.code(), Code::kMismatch) << s.to_string();
    EXPECT_NE(s.message().find("rank " + std::to_string(bad)), std::string::npos) << s.to_string();
  }
  ASSERT_TRUE((*d)->dispatch(x.data(), p, **h, ein.data(), cap).ok());
  ASSERT_TRUE((*d)->combine(ein.data(), **h, out.data()).ok());
  for (int i = 0; i < T * H; ++i) EXPECT_EQ(out[i], x[i]) << i;
  // The same for combine_backward's weight gradients (its second exchange): expert_out null on
  // rank `bad` makes the peers' d weight NaN for the slots it served, exact <gout[t], x[t]> elsewhere.
  std::vector<float> gy(cap * H), gw(T, -1.0f), gout(T * H);
  for (int i = 0; i < T * H; ++i) gout[i] = static_cast<float>(i % 3) - 1.0f;
  s = (*d)->combine_backward(gout.data(), **h, g_.rank == bad ? nullptr : ein.data(), gy.data(), gw.data());
  if (g_.rank == bad) {
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find("expert_out is null"), std::string::npos) << s.to_string();
  } else {
    ASSERT_TRUE(s.ok()) << s.to_string();
    for (int t = 0; t < T; ++t) {
      float dot = 0;
      for (int c = 0; c < H; ++c) dot += gout[t * H + c] * x[t * H + c];
      if (p.expert[t] / L == bad) EXPECT_TRUE(std::isnan(gw[t])) << "token " << t;
      else EXPECT_EQ(gw[t], dot) << "token " << t;  // small integers: exact
    }
  }
  s = (*d)->dispatch(x.data(), p, **h, ein.data(), cap);
  EXPECT_NE(s.message().find("expert_out is null"), std::string::npos) << s.to_string();
  if (g_.rank != bad) {
    EXPECT_EQ(s.code(), Code::kMismatch) << s.to_string();
  }
  ASSERT_TRUE((*d)->dispatch(x.data(), p, **h, ein.data(), cap).ok());
}

// A handle of another dispatcher in combine gives its rank no plan to take part with: it aborts
// the communicator, so its peers' pending exchange fails at once naming it (a peer exchanging
// nothing with it fails in its next exchange), instead of at the deadline. The communicator is
// unusable afterwards: the test makes its own.
TEST_F(DispatcherTest, ForeignHandleInCombineFailsPeersAtOnce) {
  if (g_.size < 2) GTEST_SKIP() << "needs 2 ranks";
  const int R = g_.size, bad = R - 1, L = 2, H = 4, T = 6;
  CommConfig cc;
  cc.timeout_s = 30;
  auto comm = Communicator::create(*g_.bootstrap, g_.comm->cluster(), cc);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  DispatcherConfig cfg;
  cfg.experts_per_rank = L; cfg.hidden = H; cfg.max_tokens = T; cfg.top_k = 1;
  auto d = Dispatcher::create(*g_.bootstrap, **comm, cfg);
  cfg.max_tokens = T + 1;  // a handle of d2 has other capacities: d cannot use it
  auto d2 = Dispatcher::create(*g_.bootstrap, **comm, cfg);
  ASSERT_TRUE(d.ok() && d2.ok());
  auto h = (*d)->make_handle();
  auto h2 = (*d2)->make_handle();
  ASSERT_TRUE(h.ok() && h2.ok());
  RoutingPlan p = test::random_plan(g_.rank, g_.comm->cluster(), L, T, 1, 0.0, 3);
  for (int t = 0; t < T; ++t) {
    p.expert[t] = (t + g_.rank) % (L * R);
    p.weight[t] = 1.0f;
  }
  ASSERT_TRUE(finalize_plan(p, g_.bootstrap.get()).ok());
  const int64_t cap = (*d)->max_expert_rows();
  std::vector<float> x(T * H, 1.0f), ein(cap * H), ein2(cap * H), out(T * H);
  ASSERT_TRUE((*d)->dispatch(x.data(), p, **h, ein.data(), cap).ok());
  ASSERT_TRUE((*d2)->dispatch(x.data(), p, **h2, ein2.data(), cap).ok());
  ASSERT_TRUE(g_.bootstrap->barrier().ok());  // every rank is past the dispatches
  const auto t0 = std::chrono::steady_clock::now();
  Status s = (*d)->combine(ein.data(), g_.rank == bad ? **h2 : **h, out.data());
  Status next = (*d)->dispatch(x.data(), p, **h, ein.data(), cap);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 8.0) << s.to_string() << " / " << next.to_string();
  EXPECT_EQ(next.code(), Code::kPeerFailure) << next.to_string();
  if (g_.rank == bad) {
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find("the handle was made by another dispatcher"), std::string::npos) << s.to_string();
  } else {
    const Status& seen = s.ok() ? next : s;  // ok: this rank exchanged nothing with rank `bad`
    EXPECT_TRUE(s.ok() || s.code() == Code::kPeerFailure) << s.to_string();
    EXPECT_NE(seen.message().find("rank " + std::to_string(bad)), std::string::npos) << seen.to_string();
    EXPECT_NE(seen.message().find("another dispatcher"), std::string::npos) << seen.to_string();
  }
}

// A handle of the right dispatcher that holds no dispatch (never dispatched on this rank) in
// combine: this rank has no plan to take part with, so it aborts the communicator and the peers
// fail at once naming it, instead of waiting for it until the deadline.
TEST_F(DispatcherTest, HandleWithoutDispatchInCombineFailsPeersAtOnce) {
  if (g_.size < 2) GTEST_SKIP() << "needs 2 ranks";
  const int R = g_.size, bad = R - 1, L = 2, H = 4, T = 6;
  CommConfig cc;
  cc.timeout_s = 30;
  auto comm = Communicator::create(*g_.bootstrap, g_.comm->cluster(), cc);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  DispatcherConfig cfg;
  cfg.experts_per_rank = L; cfg.hidden = H; cfg.max_tokens = T; cfg.top_k = 1;
  auto d = Dispatcher::create(*g_.bootstrap, **comm, cfg);
  ASSERT_TRUE(d.ok());
  auto h = (*d)->make_handle();
  auto fresh = (*d)->make_handle();
  ASSERT_TRUE(h.ok() && fresh.ok());
  RoutingPlan p = test::random_plan(g_.rank, g_.comm->cluster(), L, T, 1, 0.0, 3);
  for (int t = 0; t < T; ++t) {
    p.expert[t] = (t + g_.rank) % (L * R);
    p.weight[t] = 1.0f;
  }
  ASSERT_TRUE(finalize_plan(p, g_.bootstrap.get()).ok());
  const int64_t cap = (*d)->max_expert_rows();
  std::vector<float> x(T * H, 1.0f), ein(cap * H), out(T * H);
  ASSERT_TRUE((*d)->dispatch(x.data(), p, **h, ein.data(), cap).ok());
  ASSERT_TRUE(g_.bootstrap->barrier().ok());
  const auto t0 = std::chrono::steady_clock::now();
  Status s = (*d)->combine(ein.data(), g_.rank == bad ? **fresh : **h, out.data());
  Status next = (*d)->dispatch(x.data(), p, **h, ein.data(), cap);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 8.0) << s.to_string() << " / " << next.to_string();
  EXPECT_EQ(next.code(), Code::kPeerFailure) << next.to_string();
  if (g_.rank == bad) {
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find("the handle holds no dispatch"), std::string::npos) << s.to_string();
  } else {
    const Status& seen = s.ok() ? next : s;  // ok: this rank exchanged nothing with rank `bad`
    EXPECT_TRUE(s.ok() || s.code() == Code::kPeerFailure) << s.to_string();
    EXPECT_NE(seen.message().find("rank " + std::to_string(bad)), std::string::npos) << seen.to_string();
    EXPECT_NE(seen.message().find("holds no dispatch"), std::string::npos) << seen.to_string();
  }
}

// The device path (NCCL communicator, kernels on the GPU) against the host path on the same data.
TEST_F(DispatcherTest, DeviceMatchesHost) {
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
#if LOCMOE_HAVE_CUDA
  int ndev = kernels::cuda_device_count();
  ASSERT_EQ(cudaSetDevice(g_.comm->cluster().my_local_rank() % ndev), cudaSuccess);
  CommConfig cc;
  cc.transport = "nccl";
  auto cluster = std::make_unique<ClusterMap>(g_.comm->cluster());
  auto dev_comm = Communicator::create(*g_.bootstrap, *cluster, cc);
  ASSERT_TRUE(dev_comm.ok()) << dev_comm.status().to_string();
  Case c;
  c.k = 2; c.L = 2; c.H = 64; c.align = 8;
  const RankData mine = make_rank_data(c, g_.comm->cluster(), g_.rank);
  RoutingPlan plan = mine.plan;
  ASSERT_TRUE(finalize_plan(plan, g_.bootstrap.get()).ok());
  DispatcherConfig cfg;
  cfg.experts_per_rank = c.L; cfg.hidden = c.H; cfg.top_k = c.k; cfg.align = c.align;
  int max_t = 0;
  for (int r = 0; r < g_.size; ++r) max_t = std::max(max_t, c.tokens(r));
  cfg.max_tokens = max_t;
  auto host = Dispatcher::create(*g_.bootstrap, *g_.comm, cfg);
  cfg.memory = MemoryKind::kDevice;
  auto dev = Dispatcher::create(*g_.bootstrap, **dev_comm, cfg);
  ASSERT_TRUE(host.ok() && dev.ok()) << dev.status().to_string();
  auto hh = (*host)->make_handle();
  auto hd = (*dev)->make_handle();
  const int T = plan.num_tokens, H = c.H;
  const int64_t cap = (*host)->max_expert_rows();
  std::vector<float> ein(cap * H), out(T * H), gw(T * c.k), ein_d(cap * H), out_d(T * H), gw_d(T * c.k);
  ASSERT_TRUE((*host)->dispatch(mine.x.data(), plan, **hh, ein.data(), cap).ok());
  ASSERT_TRUE((*host)->combine(ein.data(), **hh, out.data()).ok());
  ASSERT_TRUE((*host)->combine_backward(mine.g.data(), **hh, ein.data(), nullptr, gw.data()).ok());
  float *x_d, *ein_dev, *out_dev, *g_d, *gw_dev;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&x_d), std::max<size_t>(1, mine.x.size()) * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&g_d), std::max<size_t>(1, mine.g.size()) * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&ein_dev), cap * H * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&out_dev), std::max(1, T * H) * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&gw_dev), std::max(1, T * c.k) * 4), cudaSuccess);
  cudaMemcpy(x_d, mine.x.data(), mine.x.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(g_d, mine.g.data(), mine.g.size() * 4, cudaMemcpyHostToDevice);
  Status s = (*dev)->dispatch(x_d, plan, **hd, ein_dev, cap);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_TRUE((*dev)->combine(ein_dev, **hd, out_dev).ok());
  ASSERT_TRUE((*dev)->combine_backward(g_d, **hd, ein_dev, nullptr, gw_dev).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const int64_t M = (*hd)->expert_rows();
  ASSERT_EQ(M, (*hh)->expert_rows());
  cudaMemcpy(ein_d.data(), ein_dev, M * H * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(out_d.data(), out_dev, out_d.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(gw_d.data(), gw_dev, gw_d.size() * 4, cudaMemcpyDeviceToHost);
  EXPECT_EQ(0, std::memcmp(ein.data(), ein_d.data(), M * H * 4)) << "data movement must be bit-exact";
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], out_d[i], 1e-5 * (1 + std::abs(out[i])));
  for (size_t i = 0; i < gw.size(); ++i) ASSERT_NEAR(gw[i], gw_d[i], 1e-4 * (1 + std::abs(gw[i])));
  for (float* p : {x_d, g_d, ein_dev, out_dev, gw_dev}) cudaFree(p);
#endif
}

}  // namespace
}  // namespace locmoe
