// Naive reference routers for the tests, written from the spec (docs/ROUTING.md) with
// plain loops in double precision, sharing no code with router/src. Each returns, per token, its
// accepted experts in descending router score with their gate probability, and how many slots the
// unconstrained router would have filled that capacity dropped.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace refr {

struct Problem {
  int T = 0, H = 0, E = 0, ranks = 1, experts_per_rank = 1;
  std::vector<int> node_of_rank;
  std::vector<float> x, w;  // [T,H], [E,H]
};

// Tokens around the gate rows plus noise (so affinities are spread), deterministic from `seed`.
inline Problem make_problem(int T, int H, int nodes, int ranks_per_node, int experts_per_rank,
                            unsigned seed) {
  Problem pr;
  pr.T = T;
  pr.H = H;
  pr.ranks = nodes * ranks_per_node;
  pr.experts_per_rank = experts_per_rank;
  pr.E = pr.ranks * experts_per_rank;
  for (int r = 0; r < pr.ranks; ++r) pr.node_of_rank.push_back(r / ranks_per_node);
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  pr.w.resize(static_cast<size_t>(pr.E * H));
  for (auto& v : pr.w) v = nd(gen);
  pr.x.resize(static_cast<size_t>(T * H));
  std::uniform_int_distribution<int> pick(0, pr.E - 1);
  for (int t = 0; t < T; ++t) {
    const int c = pick(gen);
    // Scaled by 1/sqrt(H) so logits stay O(1): saturated float probabilities would tie where the
    // double reference does not.
    for (int h = 0; h < H; ++h)
      pr.x[static_cast<size_t>(t * H + h)] = (0.7f * pr.w[static_cast<size_t>(c * H + h)] + nd(gen)) / std::sqrt(float(H));
  }
  return pr;
}

struct Params {
  std::string name;
  int k = 2;
  double cf = 1.25, tau = 0.9, lambda = 0.1, beta = 0.9;
  int l = 0;  // 0: min(2k, E)
  long floor = 1;
  int max_nodes = 0;
  bool renormalize = true;
  double mass = 0;            // candidate_mass q (0: off)
  bool position_order = false;  // ecr_order = position
  std::string drop = "slot";    // top-k baselines: slot | position | probs
  bool before_drop = false;     // weights p / (sum of the token's top-k p), fixed before the drop
  long min_capacity = 0;        // C = max(C, min_capacity) for every capped router
  // deepseek-v3
  bool sigmoid = true;
  int groups = 0, topk_groups = 0;  // 0: one group per node; max(1, ceil(k/2))
  bool top2_sum = true;
  double scaling = 1.0, bias_rate = 0.001;
};

struct Slot {
  int expert;
  double score;
  double p;
};
struct Result {
  std::vector<std::vector<Slot>> kept;  // per token, descending score (ties: lower expert)
  std::vector<int> dropped;             // per token
  std::vector<double> denom;            // per token: weight = p / denom (1: raw p)
  long capacity = 0, c_lb = 0;
  double kept_mass = 0, topk_mass = 0;
};

struct Scores {
  std::vector<double> p, a, z;  // [T,E]
};

inline Scores scores(const Problem& pr) {
  Scores s;
  s.p.assign(static_cast<size_t>(pr.T * pr.E), 0);
  s.a = s.p;
  s.z = s.p;
  std::vector<double> wn(static_cast<size_t>(pr.E), 0);
  for (int e = 0; e < pr.E; ++e) {
    for (int h = 0; h < pr.H; ++h) wn[e] += double(pr.w[e * pr.H + h]) * pr.w[e * pr.H + h];
    wn[e] = std::sqrt(wn[e]);
  }
  for (int t = 0; t < pr.T; ++t) {
    double xn = 0;
    for (int h = 0; h < pr.H; ++h) xn += double(pr.x[t * pr.H + h]) * pr.x[t * pr.H + h];
    xn = std::sqrt(xn);
    std::vector<double> z(static_cast<size_t>(pr.E));
    double mx = -1e300;
    for (int e = 0; e < pr.E; ++e) {
      for (int h = 0; h < pr.H; ++h) z[e] += double(pr.x[t * pr.H + h]) * pr.w[e * pr.H + h];
      mx = std::max(mx, z[e]);
    }
    double sum = 0;
    for (int e = 0; e < pr.E; ++e) sum += std::exp(z[e] - mx);
    for (int e = 0; e < pr.E; ++e) {
      s.z[t * pr.E + e] = z[e];
      s.p[t * pr.E + e] = std::exp(z[e] - mx) / sum;
      s.a[t * pr.E + e] = z[e] / (xn * wn[e]);
    }
  }
  return s;
}

inline int rank_of_token(const Problem& pr, int t) {
  int r = 0;
  while (r + 1 < pr.ranks && static_cast<long>(pr.T) * (r + 1) / pr.ranks <= t) ++r;
  return r;
}
inline int node_of_expert(const Problem& pr, int e) { return pr.node_of_rank[e / pr.experts_per_rank]; }

// Indices of the n best allowed entries of row (ties: lower index), by repeated selection.
inline std::vector<int> best(const std::vector<double>& row, int n, const std::vector<bool>& allowed) {
  std::vector<int> out;
  std::vector<bool> used(row.size(), false);
  for (int i = 0; i < n; ++i) {
    int b = -1;
    for (int e = 0; e < static_cast<int>(row.size()); ++e)
      if (allowed[e] && !used[e] && (b < 0 || row[e] > row[b])) b = e;
    if (b < 0) break;
    used[b] = true;
    out.push_back(b);
  }
  return out;
}

// Experts on the M nodes with the largest sum of their `per` best scores (ties: lower node).
inline std::vector<bool> node_mask(const Problem& pr, const std::vector<double>& score, int M, int per) {
  int N = 0;
  for (int n : pr.node_of_rank) N = std::max(N, n + 1);
  std::vector<double> nscore(N, 0);
  for (int n = 0; n < N; ++n) {
    std::vector<double> mine;
    for (int e = 0; e < pr.E; ++e)
      if (pr.node_of_rank[e / pr.experts_per_rank] == n) mine.push_back(score[e]);
    std::sort(mine.rbegin(), mine.rend());
    for (int i = 0; i < per && i < static_cast<int>(mine.size()); ++i) nscore[n] += mine[i];
  }
  std::vector<int> nodes = best(nscore, M, std::vector<bool>(N, true));
  std::vector<bool> allowed(pr.E, false);
  for (int e = 0; e < pr.E; ++e)
    allowed[e] = std::find(nodes.begin(), nodes.end(), pr.node_of_rank[e / pr.experts_per_rank]) != nodes.end();
  return allowed;
}

inline long cf_capacity(double cf, int k, int T, int E) { return static_cast<long>(std::ceil(cf * k * T / E - 1e-9)); }

inline void sort_kept(Result& r) {
  for (auto& v : r.kept)
    std::sort(v.begin(), v.end(), [](const Slot& a, const Slot& b) {
      return a.score != b.score ? a.score > b.score : a.expert < b.expert;
    });
}

inline uint64_t splitmix64(uint64_t x) {  // the published SplitMix64 finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// LocMoE+ state carried across steps.
struct PlusState {
  int steps = 0;
  double smoothed = 0;
  std::vector<double> bias;  // deepseek-v3's expert bias
};

inline Result route(const Problem& pr, const Params& q, PlusState* state = nullptr) {
  const Scores sc = scores(pr);
  const int T = pr.T, E = pr.E;
  const int k = q.name == "switch" ? 1 : q.k;
  Result res;
  res.kept.resize(T);
  res.dropped.assign(T, 0);
  for (int t = 0; t < T; ++t) {
    std::vector<double> prow(sc.p.begin() + t * E, sc.p.begin() + (t + 1) * E);
    for (int e : best(prow, k, std::vector<bool>(E, true))) res.topk_mass += prow[e];
  }
  auto s_row = [&](int t) {
    std::vector<double> s(E);
    const int n = pr.node_of_rank[rank_of_token(pr, t)];
    for (int e = 0; e < E; ++e) s[e] = sc.a[t * E + e] + (node_of_expert(pr, e) == n ? q.lambda : 0.0);
    return s;
  };
  auto p_row = [&](int t) { return std::vector<double>(sc.p.begin() + t * E, sc.p.begin() + (t + 1) * E); };

  if (q.name == "expert-choice") {
    res.capacity = cf_capacity(q.cf, q.k, T, E);
    for (int e = 0; e < E; ++e) {
      std::vector<int> toks(T);
      for (int t = 0; t < T; ++t) toks[t] = t;
      std::stable_sort(toks.begin(), toks.end(), [&](int a, int b) { return sc.p[a * E + e] > sc.p[b * E + e]; });
      for (long i = 0; i < std::min<long>(res.capacity, T); ++i) {
        const int t = toks[i];
        res.kept[t].push_back({e, sc.p[t * E + e], sc.p[t * E + e]});
        res.kept_mass += sc.p[t * E + e];
      }
    }
    sort_kept(res);
    return res;
  }

  if (q.name != "locmoe+") {
    // Top-k routers with position-order capacity: slot j of every token before slot j+1.
    std::vector<std::vector<Slot>> lists(T);
    for (int t = 0; t < T; ++t) {
      const auto p = p_row(t);
      std::vector<int> es;
      std::vector<double> score = p;
      if (q.name == "locmoe") score = s_row(t);
      if (q.name == "deepseek-v3") {
        // DeepSeek-V3: s = sigmoid(z) (or softmax), selection by s + b inside the best groups.
        if (state && state->bias.empty()) state->bias.assign(E, 0.0);
        std::vector<double> sc2(E), sel(E);
        for (int e = 0; e < E; ++e) {
          sc2[e] = q.sigmoid ? 1.0 / (1.0 + std::exp(-sc.z[t * E + e])) : p[e];
          sel[e] = sc2[e] + (state ? state->bias[e] : 0.0);
        }
        int N = 0;
        for (int n : pr.node_of_rank) N = std::max(N, n + 1);
        const int G = q.groups > 0 ? q.groups : N, per = E / G;
        const int M = q.topk_groups > 0 ? q.topk_groups : std::max(1, (k + 1) / 2);
        std::vector<double> gscore(G);
        for (int g = 0; g < G; ++g) {
          std::vector<double> mine(sel.begin() + g * per, sel.begin() + (g + 1) * per);
          std::sort(mine.rbegin(), mine.rend());
          gscore[g] = q.top2_sum && per > 1 ? mine[0] + mine[1] : mine[0];
        }
        std::vector<int> gs = best(gscore, M, std::vector<bool>(G, true));
        std::vector<bool> allowed(E, false);
        for (int e = 0; e < E; ++e) allowed[e] = std::find(gs.begin(), gs.end(), e / per) != gs.end();
        for (int e : best(sel, k, allowed)) lists[t].push_back({e, sel[e], sc2[e]});
        continue;
      }
      if (q.name == "hash") {
        const int h = static_cast<int>(splitmix64(static_cast<uint64_t>(t)) % static_cast<uint64_t>(E));
        for (int j = 0; j < k; ++j) es.push_back((h + j) % E);
      } else if (q.name == "node-limited") {
        const int M = q.max_nodes > 0 ? q.max_nodes : std::max(1, (k + 1) / 2);
        const std::vector<bool> allowed = node_mask(pr, p, M, std::max(1, k / M));
        es = best(p, k, allowed);
      } else {
        es = best(score, k, std::vector<bool>(E, true));
      }
      for (int e : es) lists[t].push_back({e, q.name == "hash" ? p[e] : score[e], p[e]});
    }
    const bool capped = q.name != "dropless";
    res.capacity = capped ? std::max(cf_capacity(q.cf, k, T, E), q.min_capacity) : 0;
    std::vector<long> count(E, 0);
    auto offer = [&](int t, int j) {
      const Slot sl = lists[t][j];
      if (capped && count[sl.expert] >= res.capacity) {
        ++res.dropped[t];
        return;
      }
      ++count[sl.expert];
      res.kept[t].push_back(sl);
      res.kept_mass += sl.p;
    };
    if (q.drop == "probs" && capped) {
      // Megatron-core: every expert keeps the C tokens of largest p among those that chose it.
      for (int e = 0; e < E; ++e) {
        std::vector<std::pair<int, int>> choosers;  // (token, slot)
        for (int t = 0; t < T; ++t)
          for (int j = 0; j < static_cast<int>(lists[t].size()); ++j)
            if (lists[t][j].expert == e) choosers.push_back({t, j});
        std::stable_sort(choosers.begin(), choosers.end(), [&](const auto& a, const auto& b) {
          return lists[a.first][a.second].p > lists[b.first][b.second].p;
        });
        for (const auto& [t, j] : choosers) offer(t, j);
      }
    } else if (q.drop == "position") {
      for (int t = 0; t < T; ++t)
        for (int j = 0; j < static_cast<int>(lists[t].size()); ++j) offer(t, j);
    } else {
      for (int j = 0; j < k; ++j)
        for (int t = 0; t < T; ++t)
          if (j < static_cast<int>(lists[t].size())) offer(t, j);
    }
    sort_kept(res);
    res.denom.assign(T, 1.0);
    for (int t = 0; t < T; ++t) {
      double kept = 0, all = 0;
      for (const Slot& sl : res.kept[t]) kept += sl.p;
      for (const Slot& sl : lists[t]) all += sl.p;
      if (q.renormalize && q.name != "switch") res.denom[t] = q.before_drop ? all : kept;
      if (q.name == "deepseek-v3") res.denom[t] /= q.scaling;
    }
    if (q.name == "deepseek-v3" && state) {  // the bias follows this step's selection loads
      std::vector<double> load(E, 0);
      double total = 0;
      for (int t = 0; t < T; ++t)
        for (const Slot& sl : lists[t]) load[sl.expert] += 1, total += 1;
      for (int e = 0; e < E; ++e) {
        const double mean = total / E;
        state->bias[e] += q.bias_rate * (load[e] < mean ? 1 : load[e] > mean ? -1 : 0);
      }
    }
    return res;
  }

  // LocMoE+: top-l candidates by s, global greedy in (s desc, expert, token) order.
  const int l = q.l > 0 ? q.l : std::min(2 * q.k, E);
  struct Pair {
    double s, p;
    int e, t, slot;
  };
  std::vector<Pair> pairs;
  for (int t = 0; t < T; ++t) {
    const auto s = s_row(t);
    std::vector<bool> allowed(E, true);
    if (q.max_nodes > 0) allowed = node_mask(pr, s, q.max_nodes, std::max(1, l / q.max_nodes));
    std::vector<int> cands = best(s, l, allowed);
    if (q.mass > 0) {
      double sum = 0;
      size_t keep = 0;
      while (keep < cands.size() && sum < q.mass) sum += sc.p[t * E + cands[keep++]];
      cands.resize(std::max<size_t>(keep, 1));
    }
    for (size_t j = 0; j < cands.size(); ++j)
      pairs.push_back({s[cands[j]], sc.p[t * E + cands[j]], cands[j], t, static_cast<int>(j)});
  }
  if (q.position_order) {
    std::sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) {
      return std::tie(a.t, a.slot) < std::tie(b.t, b.slot);
    });
  } else {
    std::sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) {
      return std::tie(b.s, a.e, a.t) < std::tie(a.s, b.e, b.t);
    });
  }
  auto run = [&](long C, Result* out) {
    std::vector<int> per_t(T, 0);
    std::vector<long> per_e(E, 0);
    double mass = 0;
    for (const Pair& pa : pairs) {
      if (per_t[pa.t] >= k || per_e[pa.e] >= C) continue;
      ++per_t[pa.t];
      ++per_e[pa.e];
      mass += pa.p;
      if (out) out->kept[pa.t].push_back({pa.e, pa.s, pa.p});
    }
    return mass;
  };
  const long ccf = cf_capacity(q.cf, k, T, E);
  long lo = 1, hi = ccf;
  if (run(ccf, nullptr) >= q.tau * res.topk_mass) {
    while (lo < hi) {
      const long mid = (lo + hi) / 2;
      if (run(mid, nullptr) >= q.tau * res.topk_mass) hi = mid; else lo = mid + 1;
    }
  }
  res.c_lb = hi;
  PlusState local;
  PlusState& st = state ? *state : local;
  st.smoothed = st.steps == 0 ? double(hi) : q.beta * st.smoothed + (1 - q.beta) * hi;
  ++st.steps;
  res.capacity = std::min(std::max(static_cast<long>(std::ceil(st.smoothed - 1e-9)), q.floor), ccf);
  res.kept_mass = run(res.capacity, &res);
  for (int t = 0; t < T; ++t) {
    int cands = 0;
    for (const Pair& pa : pairs) cands += pa.t == t;
    res.dropped[t] = std::min(cands, k) - static_cast<int>(res.kept[t].size());
    if (res.dropped[t] < 0) res.dropped[t] = 0;
  }
  sort_kept(res);
  return res;
}

}  // namespace refr
