#include "locmoe/router/gate_grad.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "locmoe/core/check.h"

namespace locmoe {
namespace {

Status check_logits(MatrixView z, std::span<float> d, int64_t tokens, int64_t experts) {
  LOCMOE_CHECK_ARG(z.rows == tokens && z.cols == experts, "logits are [{}, {}], expected [{}, {}]", z.rows,
                   z.cols, tokens, experts);
  LOCMOE_CHECK_ARG(static_cast<int64_t>(d.size()) == tokens * experts,
                   "gradient buffer has {} elements, expected T x E = {}", d.size(), tokens * experts);
  LOCMOE_CHECK_ARG(tokens == 0 || z.data != nullptr, "logits have no data");
  return ok_status();
}

// Softmax of one row in double; returns logsumexp.
double softmax(const float* z, int64_t E, std::vector<double>& p) {
  p.resize(static_cast<size_t>(E));
  const double m = *std::max_element(z, z + E);
  double s = 0;
  for (int64_t e = 0; e < E; ++e) s += p[static_cast<size_t>(e)] = std::exp(z[e] - m);
  for (auto& v : p) v /= s;
  return m + std::log(s);
}

}  // namespace

Status combine_weight_backward(const RoutingPlan& plan, MatrixView z, std::span<const float> dw,
                               bool renormalize, std::span<float> dz) {
  const int64_t T = plan.num_tokens, E = plan.num_experts, k = plan.k;
  LOCMOE_RETURN_IF_ERROR(check_logits(z, dz, T, E));
  LOCMOE_CHECK_ARG(static_cast<int64_t>(dw.size()) == T * k, "d_weight has {} elements, expected T x k = {}",
                   dw.size(), T * k);
  // A router's plan says how its weights were formed (switch: raw p whatever the flag).
  LOCMOE_CHECK_ARG(plan.weight_rule != RoutingPlan::kWeightNominated,
                   "combine_weight_backward: weights normalized before the drop (normalize_before_drop) "
                   "depend on dropped experts the plan does not hold; no backward for them");
  LOCMOE_CHECK_ARG(plan.weight_rule != RoutingPlan::kWeightOther,
                   "combine_weight_backward: the plan's weights are not softmax probabilities "
                   "(deepseek-v3: sigmoid scores and a scaling factor); no backward for them here");
  if (plan.weight_rule == RoutingPlan::kWeightRaw) renormalize = false;
  if (plan.weight_rule == RoutingPlan::kWeightAccepted) renormalize = true;
  std::vector<double> p, g(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    softmax(z.data + t * E, E, p);
    std::fill(g.begin(), g.end(), 0.0);
    float* out = dz.data() + t * E;
    std::fill(out, out + E, 0.0f);
    if (renormalize) {
      double mass = 0, dot = 0;
      for (int64_t j = 0; j < k; ++j)
        if (const int32_t e = plan.expert[static_cast<size_t>(t * k + j)]; e >= 0) mass += p[static_cast<size_t>(e)];
      if (mass <= 0) continue;
      for (int64_t j = 0; j < k; ++j)
        if (const int32_t e = plan.expert[static_cast<size_t>(t * k + j)]; e >= 0)
          dot += dw[static_cast<size_t>(t * k + j)] * p[static_cast<size_t>(e)] / mass;
      for (int64_t j = 0; j < k; ++j)
        if (const int32_t e = plan.expert[static_cast<size_t>(t * k + j)]; e >= 0) {
          const double w = p[static_cast<size_t>(e)] / mass;
          out[e] = static_cast<float>(w * (dw[static_cast<size_t>(t * k + j)] - dot));
        }
    } else {
      for (int64_t j = 0; j < k; ++j)
        if (const int32_t e = plan.expert[static_cast<size_t>(t * k + j)]; e >= 0)
          g[static_cast<size_t>(e)] += dw[static_cast<size_t>(t * k + j)];
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += g[static_cast<size_t>(e)] * p[static_cast<size_t>(e)];
      for (int64_t e = 0; e < E; ++e)
        out[e] = static_cast<float>(p[static_cast<size_t>(e)] * (g[static_cast<size_t>(e)] - dot));
    }
  }
  return ok_status();
}

Result<double> load_balance_loss(const RoutingPlan& plan, MatrixView z, std::span<float> dz) {
  const int64_t T = plan.num_tokens, E = plan.num_experts, k = plan.k;
  LOCMOE_RETURN_IF_ERROR(check_logits(z, dz, T, E));
  LOCMOE_CHECK_ARG(static_cast<int64_t>(plan.expert_count.size()) == E, "plan is not finalized (no expert counts)");
  if (T == 0) return 0.0;
  std::vector<double> f(static_cast<size_t>(E)), p;
  for (int64_t e = 0; e < E; ++e) f[static_cast<size_t>(e)] = plan.expert_count[static_cast<size_t>(e)] / double(T * k);
  double loss = 0;
  for (int64_t t = 0; t < T; ++t) {
    softmax(z.data + t * E, E, p);
    // L = E/T sum_t sum_e f_e p_te: per-token gradient g_e = E f_e / T through the softmax.
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) {
      loss += E * f[static_cast<size_t>(e)] * p[static_cast<size_t>(e)] / T;
      dot += f[static_cast<size_t>(e)] * p[static_cast<size_t>(e)];
    }
    for (int64_t e = 0; e < E; ++e)
      dz[static_cast<size_t>(t * E + e)] =
          static_cast<float>(E / double(T) * p[static_cast<size_t>(e)] * (f[static_cast<size_t>(e)] - dot));
  }
  return loss;
}

Result<double> z_loss(MatrixView z, std::span<float> dz) {
  const int64_t T = z.rows, E = z.cols;
  LOCMOE_RETURN_IF_ERROR(check_logits(z, dz, T, E));
  std::vector<double> p;
  double loss = 0;
  for (int64_t t = 0; t < T; ++t) {
    const double lse = softmax(z.data + t * E, E, p);
    loss += lse * lse / T;
    for (int64_t e = 0; e < E; ++e)
      dz[static_cast<size_t>(t * E + e)] = static_cast<float>(2.0 * lse * p[static_cast<size_t>(e)] / T);
  }
  return loss;
}

Result<double> locality_loss(const RoutingPlan& plan, MatrixView z, std::span<float> dz) {
  const int64_t T = plan.num_tokens, E = plan.num_experts;
  LOCMOE_RETURN_IF_ERROR(check_logits(z, dz, T, E));
  const PlanView v = plan.view();
  const int32_t my_node = plan.node_of_rank[static_cast<size_t>(plan.rank)];
  std::vector<double> p;
  double loss = 0;
  for (int64_t t = 0; t < T; ++t) {
    softmax(z.data + t * E, E, p);
    double own = 0;
    for (int32_t e = 0; e < E; ++e) own += node_of_expert(v, e) == my_node ? p[static_cast<size_t>(e)] : 0.0;
    loss -= std::log(own) / T;
    for (int32_t e = 0; e < E; ++e) {
      const double q = node_of_expert(v, e) == my_node ? p[static_cast<size_t>(e)] / own : 0.0;
      dz[static_cast<size_t>(t * E + e)] = static_cast<float>((p[static_cast<size_t>(e)] - q) / T);
    }
  }
  return loss;
}

Result<double> orthogonality_loss(MatrixView w, std::span<float> dw) {
  const int64_t E = w.rows, H = w.cols;
  LOCMOE_CHECK_ARG(static_cast<int64_t>(dw.size()) == E * H, "d_gate has {} elements, expected E x H = {}",
                   dw.size(), E * H);
  std::vector<double> n(static_cast<size_t>(E * H)), norm(static_cast<size_t>(E));
  for (int64_t i = 0; i < E; ++i) {
    double s = 0;
    for (int64_t h = 0; h < H; ++h) s += double(w.data[i * H + h]) * w.data[i * H + h];
    LOCMOE_CHECK_ARG(s > 0, "gate row {} has zero norm", i);
    norm[static_cast<size_t>(i)] = std::sqrt(s);
    for (int64_t h = 0; h < H; ++h) n[static_cast<size_t>(i * H + h)] = w.data[i * H + h] / norm[static_cast<size_t>(i)];
  }
  // L = sum_ij (G_ij - d_ij)^2, G = N N^T; dL/dN = 4 (G - I) N; then through the normalization.
  std::vector<double> r(static_cast<size_t>(E * E));
  double loss = 0;
  for (int64_t i = 0; i < E; ++i)
    for (int64_t j = 0; j < E; ++j) {
      double g = 0;
      for (int64_t h = 0; h < H; ++h) g += n[static_cast<size_t>(i * H + h)] * n[static_cast<size_t>(j * H + h)];
      r[static_cast<size_t>(i * E + j)] = g - (i == j ? 1.0 : 0.0);
      loss += r[static_cast<size_t>(i * E + j)] * r[static_cast<size_t>(i * E + j)];
    }
  std::vector<double> gn(static_cast<size_t>(H));
  for (int64_t i = 0; i < E; ++i) {
    std::fill(gn.begin(), gn.end(), 0.0);
    for (int64_t j = 0; j < E; ++j)
      for (int64_t h = 0; h < H; ++h) gn[static_cast<size_t>(h)] += 4.0 * r[static_cast<size_t>(i * E + j)] * n[static_cast<size_t>(j * H + h)];
    double dot = 0;
    for (int64_t h = 0; h < H; ++h) dot += gn[static_cast<size_t>(h)] * n[static_cast<size_t>(i * H + h)];
    for (int64_t h = 0; h < H; ++h)
      dw[static_cast<size_t>(i * H + h)] = static_cast<float>(
          (gn[static_cast<size_t>(h)] - n[static_cast<size_t>(i * H + h)] * dot) / norm[static_cast<size_t>(i)]);
  }
  return loss;
}

Status orthogonalize_gate(std::span<float> w, int64_t E, int64_t H) {
  LOCMOE_CHECK_ARG(static_cast<int64_t>(w.size()) == E * H, "gate has {} elements, expected E x H = {}", w.size(), E * H);
  LOCMOE_CHECK_ARG(E <= H, "cannot orthogonalize {} gate rows in hidden size {} (needs E <= H)", E, H);
  std::vector<double> q(static_cast<size_t>(E * H));
  for (int64_t i = 0; i < E; ++i) {
    double orig = 0;
    for (int64_t h = 0; h < H; ++h) {
      q[static_cast<size_t>(i * H + h)] = w[static_cast<size_t>(i * H + h)];
      orig += q[static_cast<size_t>(i * H + h)] * q[static_cast<size_t>(i * H + h)];
    }
    orig = std::sqrt(orig);
    for (int64_t j = 0; j < i; ++j) {  // modified Gram-Schmidt: subtract each earlier direction
      double d = 0;
      for (int64_t h = 0; h < H; ++h) d += q[static_cast<size_t>(i * H + h)] * q[static_cast<size_t>(j * H + h)];
      for (int64_t h = 0; h < H; ++h) q[static_cast<size_t>(i * H + h)] -= d * q[static_cast<size_t>(j * H + h)];
    }
    double s = 0;
    for (int64_t h = 0; h < H; ++h) s += q[static_cast<size_t>(i * H + h)] * q[static_cast<size_t>(i * H + h)];
    LOCMOE_CHECK_ARG(orig > 0 && std::sqrt(s) > 1e-6 * orig, "gate row {} is linearly dependent on rows 0..{}", i,
                     i - 1);
    for (int64_t h = 0; h < H; ++h) q[static_cast<size_t>(i * H + h)] /= std::sqrt(s);
    for (int64_t h = 0; h < H; ++h) w[static_cast<size_t>(i * H + h)] = static_cast<float>(q[static_cast<size_t>(i * H + h)] * orig);
  }
  return ok_status();
}

}  // namespace locmoe
