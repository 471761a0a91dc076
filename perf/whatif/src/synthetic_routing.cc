#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "locmoe/core/check.h"
#include "locmoe/perf/whatif.h"
#include "locmoe/router/finalize.h"

namespace locmoe::whatif {
namespace {

// Indices of the `k` largest of v[0..n) in descending value (ties: lower index first).
void top_k(const float* v, const std::vector<int32_t>& among, int k, std::vector<int32_t>& out) {
  out = among;
  const size_t kk = std::min<size_t>(k, out.size());
  std::partial_sort(out.begin(), out.begin() + kk, out.end(), [&](int32_t a, int32_t b) {
    return v[a] != v[b] ? v[a] > v[b] : a < b;
  });
  out.resize(kk);
}

}  // namespace

Result<std::vector<RoutingPlan>> synthetic_plans(const SyntheticRouting& s, const ClusterModel& c) {
  const int R = c.size(), G = c.ranks_per_node, N = c.nodes, T = s.tokens_per_rank, E = s.experts, K = s.k;
  LOCMOE_CHECK_ARG(T > 0 && K > 0 && E > 0, "synthetic routing: tokens {}, k {}, experts {} must be > 0", T, K, E);
  LOCMOE_CHECK_ARG(E % R == 0, "synthetic routing: {} experts do not divide over {} ranks", E, R);
  LOCMOE_CHECK_ARG(K <= E, "synthetic routing: k {} > experts {}", K, E);
  const std::string& rule = s.rule;
  LOCMOE_CHECK_ARG(rule == "dropless" || rule == "gshard" || rule == "node-limited" || rule == "locmoe",
                   "synthetic routing: unknown rule '{}' (dropless, gshard, node-limited, locmoe)", rule);
  const int limit = std::min(s.node_limit, N);
  LOCMOE_CHECK_ARG(rule != "node-limited" || (limit >= 1 && K % limit == 0),
                   "synthetic routing: node limit {} must be >= 1 and divide k {}", s.node_limit, K);
  const int epr = E / R;
  const int64_t capacity = static_cast<int64_t>(std::ceil(s.capacity_factor * K * T / double(E)));
  std::vector<int32_t> all(E);
  std::iota(all.begin(), all.end(), 0);
  std::vector<RoutingPlan> plans(R);
  std::vector<float> score(size_t(T) * E);
  std::vector<int32_t> chosen, cand;
  for (int r = 0; r < R; ++r) {
    RoutingPlan& p = plans[r];
    p.num_tokens = T, p.k = K, p.num_experts = E, p.num_ranks = R, p.num_nodes = N, p.experts_per_rank = epr;
    p.rank = r;
    p.global_token_offset = int64_t(r) * T;
    p.node_of_rank.resize(R);
    for (int q = 0; q < R; ++q) p.node_of_rank[q] = q / G;
    p.expert.assign(size_t(T) * K, -1);
    p.weight.assign(size_t(T) * K, 0.f);
    p.slot_dropped.assign(size_t(T) * K, 0);
    const int my_node = r / G;
    for (int t = 0; t < T; ++t) {
      std::mt19937_64 rng(s.seed * 0x9E3779B97F4A7C15ull + uint64_t(p.global_token_offset + t));
      std::normal_distribution<float> d(0.f, float(s.score_std));
      for (int e = 0; e < E; ++e) score[size_t(t) * E + e] = d(rng);
      if (rule == "locmoe")
        for (int e = 0; e < E; ++e)
          if ((e / epr) / G == my_node) score[size_t(t) * E + e] += float(s.locality);
    }
    // (token, expert) pairs accepted by the rule, per expert counted against the capacity.
    std::vector<int64_t> load(E, 0);
    std::vector<int32_t> filled(T, 0);
    auto accept = [&](int t, int32_t e) { p.expert[size_t(t) * K + filled[t]++] = e; };
    if (rule == "dropless" || rule == "gshard" || rule == "node-limited") {
      std::vector<std::vector<int32_t>> picks(T);
      for (int t = 0; t < T; ++t) {
        const float* v = &score[size_t(t) * E];
        if (rule == "node-limited") {
          std::vector<std::pair<float, int>> node_score(N);
          for (int n = 0; n < N; ++n) {
            std::vector<int32_t> mine;  // experts of node n
            for (int e = n * G * epr; e < (n + 1) * G * epr; ++e) mine.push_back(e);
            top_k(v, mine, K / limit, cand);
            float sum = 0;
            for (int32_t e : cand) sum += v[e];
            node_score[n] = {-sum, n};
          }
          std::sort(node_score.begin(), node_score.end());
          std::vector<int32_t> allowed;
          for (int i = 0; i < limit; ++i)
            for (int e = node_score[i].second * G * epr; e < (node_score[i].second + 1) * G * epr; ++e) allowed.push_back(e);
          top_k(v, allowed, K, picks[t]);
        } else {
          top_k(v, all, K, picks[t]);
        }
      }
      // Position order: all first slots, then all second slots...; only gshard has a capacity.
      for (int j = 0; j < K; ++j)
        for (int t = 0; t < T; ++t) {
          const int32_t e = picks[t][j];
          if (rule == "gshard" && load[e] >= capacity) continue;
          ++load[e];
          accept(t, e);
        }
    } else {  // locmoe: candidates top-2k per token, expert choice in descending score
      std::vector<std::pair<float, int64_t>> pairs;
      pairs.reserve(size_t(T) * 2 * K);
      for (int t = 0; t < T; ++t) {
        top_k(&score[size_t(t) * E], all, std::min(2 * K, E), cand);
        for (int32_t e : cand) pairs.push_back({-score[size_t(t) * E + e], int64_t(t) * E + e});
      }
      std::sort(pairs.begin(), pairs.end());
      for (const auto& [neg, te] : pairs) {
        const int t = int(te / E);
        const int32_t e = int32_t(te % E);
        if (filled[t] >= K || load[e] >= capacity) continue;
        ++load[e];
        accept(t, e);
      }
    }
    // Slots past the accepted ones are those the unconstrained top-k would have filled: dropped.
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < filled[t]; ++j) p.weight[size_t(t) * K + j] = 1.f / float(filled[t]);
      for (int j = filled[t]; j < K; ++j) p.slot_dropped[size_t(t) * K + j] = 1;
    }
    LOCMOE_RETURN_IF_ERROR(finalize_plan(p, nullptr));
  }
  return plans;
}

}  // namespace locmoe::whatif
