// Gate backward and auxiliary losses: each analytic gradient against central finite differences
// of the loss written here in double precision (independent of router/src/gate_grad.cc).
#include <cmath>
#include <functional>
#include <vector>

#include <gtest/gtest.h>

#include "locmoe/router/gate_grad.h"
#include "locmoe/router/router.h"
#include "router_reference.h"

namespace locmoe {
namespace {

struct Case {
  refr::Problem pr;
  RoutingPlan plan;
  std::vector<float> z;  // [T, E] logits
};

Case make_case(int rank_to_check = 1) {
  Case c;
  c.pr = refr::make_problem(40, 12, 2, 2, 2, 21);
  auto pl = *uniform_placement(2, 2, 2);
  RouterConfig cfg;
  cfg.capacity_factor = 0.8;  // some drops, so accepted sets vary
  auto router = Router::create(cfg);
  auto plans = router->route_all_ranks({c.pr.x.data(), c.pr.T, c.pr.H}, {c.pr.w.data(), c.pr.E, c.pr.H}, pl);
  EXPECT_TRUE(plans.ok());
  c.plan = (*plans)[static_cast<size_t>(rank_to_check)];
  const int T = c.plan.num_tokens, E = c.pr.E, H = c.pr.H;
  const int64_t g0 = c.plan.global_token_offset;
  c.z.resize(static_cast<size_t>(T * E));
  for (int t = 0; t < T; ++t)
    for (int e = 0; e < E; ++e) {
      double s = 0;
      for (int h = 0; h < H; ++h) s += double(c.pr.x[(g0 + t) * H + h]) * c.pr.w[e * H + h];
      c.z[t * E + e] = static_cast<float>(s);
    }
  return c;
}

std::vector<double> softmax(const std::vector<double>& z, int t, int E) {
  std::vector<double> p(E);
  double m = -1e300, s = 0;
  for (int e = 0; e < E; ++e) m = std::max(m, z[t * E + e]);
  for (int e = 0; e < E; ++e) s += p[e] = std::exp(z[t * E + e] - m);
  for (auto& v : p) v /= s;
  return p;
}

// Central differences of f at x (double), compared with the analytic gradient g.
void expect_gradient(const std::function<double(const std::vector<double>&)>& f, const std::vector<float>& x,
                     const std::vector<float>& g, double tol, const char* what) {
  std::vector<double> xd(x.begin(), x.end());
  for (size_t i = 0; i < x.size(); ++i) {
    const double h = 1e-5;
    auto a = xd, b = xd;
    a[i] += h;
    b[i] -= h;
    const double num = (f(a) - f(b)) / (2 * h);
    ASSERT_NEAR(g[i], num, tol + tol * std::abs(num)) << what << " element " << i;
  }
}

TEST(GateGrad, CombineWeightBackward) {
  Case c = make_case();
  const int T = c.plan.num_tokens, E = c.pr.E, k = c.plan.k;
  std::vector<float> dw(static_cast<size_t>(T * k));
  for (size_t i = 0; i < dw.size(); ++i) dw[i] = static_cast<float>(std::sin(0.7 * i + 1.0));
  c.plan.weight_rule = RoutingPlan::kWeightUnknown;  // as a plan from caller arrays: the flag decides
  for (const bool renorm : {true, false}) {
    std::vector<float> dz(static_cast<size_t>(T * E));
    ASSERT_TRUE(combine_weight_backward(c.plan, {c.z.data(), T, E}, dw, renorm, dz).ok());
    auto f = [&](const std::vector<double>& z) {  // sum over slots of dw * weight(z)
      double L = 0;
      for (int t = 0; t < T; ++t) {
        const auto p = softmax(z, t, E);
        double mass = 0;
        for (int j = 0; j < k; ++j)
          if (c.plan.expert[t * k + j] >= 0) mass += p[c.plan.expert[t * k + j]];
        for (int j = 0; j < k; ++j) {
          const int e = c.plan.expert[t * k + j];
          if (e >= 0) L += dw[t * k + j] * (renorm ? p[e] / mass : p[e]);
        }
      }
      return L;
    };
    expect_gradient(f, c.z, dz, 1e-5, renorm ? "renormalized weights" : "raw weights");
    // A router's plan carries its rule, which wins over the flag (switch: raw p).
    RoutingPlan ruled = c.plan;
    ruled.weight_rule = renorm ? RoutingPlan::kWeightAccepted : RoutingPlan::kWeightRaw;
    std::vector<float> dz2(dz.size());
    ASSERT_TRUE(combine_weight_backward(ruled, {c.z.data(), T, E}, dw, !renorm, dz2).ok());
    EXPECT_EQ(dz2, dz);
  }
  RoutingPlan nominated = c.plan;
  nominated.weight_rule = RoutingPlan::kWeightNominated;
  std::vector<float> dz(static_cast<size_t>(T * E));
  const Status st = combine_weight_backward(nominated, {c.z.data(), T, E}, dw, true, dz);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("normalize_before_drop"), std::string::npos) << st.to_string();
}

TEST(GateGrad, AuxiliaryLosses) {
  Case c = make_case();
  const int T = c.plan.num_tokens, E = c.pr.E, k = c.plan.k;
  std::vector<float> dz(static_cast<size_t>(T * E));
  // Load balance with f from the plan's slots, counted here.
  std::vector<double> f(E, 0);
  for (int i = 0; i < T * k; ++i)
    if (c.plan.expert[i] >= 0) f[c.plan.expert[i]] += 1.0 / (T * k);
  auto lb = [&](const std::vector<double>& z) {
    double L = 0;
    for (int t = 0; t < T; ++t) {
      const auto p = softmax(z, t, E);
      for (int e = 0; e < E; ++e) L += E * f[e] * p[e] / T;
    }
    return L;
  };
  auto l1 = load_balance_loss(c.plan, {c.z.data(), T, E}, dz);
  ASSERT_TRUE(l1.ok()) << l1.status().to_string();
  EXPECT_NEAR(*l1, lb(std::vector<double>(c.z.begin(), c.z.end())), 1e-9);
  expect_gradient(lb, c.z, dz, 1e-6, "load balance");

  auto zl = [&](const std::vector<double>& z) {
    double L = 0;
    for (int t = 0; t < T; ++t) {
      double s = 0;
      for (int e = 0; e < E; ++e) s += std::exp(z[t * E + e]);
      L += std::log(s) * std::log(s) / T;
    }
    return L;
  };
  auto l2 = z_loss({c.z.data(), T, E}, dz);
  ASSERT_TRUE(l2.ok());
  EXPECT_NEAR(*l2, zl(std::vector<double>(c.z.begin(), c.z.end())), 1e-9);
  expect_gradient(zl, c.z, dz, 1e-6, "z-loss");

  // Locality: KL(q || p) with q = p on this rank's node, renormalized (rank 1 is on node 0 of 2).
  auto loc = [&](const std::vector<double>& z) {
    double L = 0;
    for (int t = 0; t < T; ++t) {
      const auto p = softmax(z, t, E);
      double own = 0;
      for (int e = 0; e < E; ++e) own += e < E / 2 ? p[e] : 0;
      for (int e = 0; e < E / 2; ++e) L += (p[e] / own) * std::log((p[e] / own) / p[e]) / T;
    }
    return L;
  };
  auto l3 = locality_loss(c.plan, {c.z.data(), T, E}, dz);
  ASSERT_TRUE(l3.ok());
  EXPECT_NEAR(*l3, loc(std::vector<double>(c.z.begin(), c.z.end())), 1e-9);
  expect_gradient(loc, c.z, dz, 1e-6, "locality");
}

TEST(GateGrad, OrthogonalityPenaltyAndQr) {
  Case c = make_case();
  const int E = c.pr.E, H = c.pr.H;
  std::vector<float> dW(static_cast<size_t>(E * H));
  auto orth = [&](const std::vector<double>& w) {
    std::vector<double> n(w);
    for (int i = 0; i < E; ++i) {
      double s = 0;
      for (int h = 0; h < H; ++h) s += w[i * H + h] * w[i * H + h];
      for (int h = 0; h < H; ++h) n[i * H + h] /= std::sqrt(s);
    }
    double L = 0;
    for (int i = 0; i < E; ++i)
      for (int j = 0; j < E; ++j) {
        double g = 0;
        for (int h = 0; h < H; ++h) g += n[i * H + h] * n[j * H + h];
        L += (g - (i == j)) * (g - (i == j));
      }
    return L;
  };
  auto l = orthogonality_loss({c.pr.w.data(), E, H}, dW);
  ASSERT_TRUE(l.ok());
  EXPECT_NEAR(*l, orth(std::vector<double>(c.pr.w.begin(), c.pr.w.end())), 1e-6);
  expect_gradient(orth, c.pr.w, dW, 1e-5, "orthogonality");

  std::vector<float> w = c.pr.w;
  ASSERT_TRUE(orthogonalize_gate(w, E, H).ok());
  for (int i = 0; i < E; ++i) {
    double n0 = 0, n1 = 0, first = 0;
    for (int h = 0; h < H; ++h) {
      n0 += double(c.pr.w[i * H + h]) * c.pr.w[i * H + h];
      n1 += double(w[i * H + h]) * w[i * H + h];
    }
    EXPECT_NEAR(std::sqrt(n1), std::sqrt(n0), 1e-4) << "row " << i << " keeps its norm";
    for (int j = 0; j < i; ++j) {
      double d = 0;
      for (int h = 0; h < H; ++h) d += double(w[i * H + h]) * w[j * H + h];
      EXPECT_NEAR(d, 0.0, 1e-4) << "rows " << i << ", " << j;
    }
    if (i == 0)
      for (int h = 0; h < H; ++h) first += std::abs(w[h] - c.pr.w[h]);
    EXPECT_LT(first, 1e-5);  // the first row keeps its direction
  }
  EXPECT_NEAR(*orthogonality_loss({w.data(), E, H}, dW), 0.0, 1e-8);
  std::vector<float> dep = {1, 2, 3, 2, 4, 6};  // second row = 2 x first
  EXPECT_FALSE(orthogonalize_gate(dep, 2, 3).ok());
  std::vector<float> wide(3 * 2, 1.0f);
  EXPECT_FALSE(orthogonalize_gate(wide, 3, 2).ok());
}

}  // namespace
}  // namespace locmoe
