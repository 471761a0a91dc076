#include "opt_solver.h"

#include <algorithm>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <thread>

#include "locmoe/core/check.h"
#include "logits.h"

namespace locmoe::opt {

Status Reducer::sum(std::span<int64_t> values) {
  ++rounds_;
  bytes_ += static_cast<int64_t>(values.size() * sizeof(int64_t));
  if (group_ == nullptr || group_->size() <= 1 || values.empty()) return ok_status();
  return group_->allreduce(values.data(), values.data(), values.size(), DataType::kInt64, ReduceOp::kSum)
      .with_context("locmoe-opt: summing per-expert counts over the EP group");
}

namespace {

// Sorted prefix of a token's experts by v (the rest have v <= the prefix's last value), so a
// token's choice at prices >= 0 usually stops after a few entries.
constexpr int32_t kPrefix = 16;

// Rprop steps for the prices (gate-probability units).
constexpr double kFirstStep = 0.02, kGrow = 1.5, kShrink = 0.5, kMaxStep = 1.0;

// Larger key = better: the float's order as an unsigned integer, then the lower global id.
uint64_t pair_key(float value, int64_t gid) {
  uint32_t b = std::bit_cast<uint32_t>(value);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<uint64_t>(b) << 32) | (0xFFFFFFFFull - static_cast<uint64_t>(gid));
}

// The L best of the E values v by (v desc, index asc), in that order, into ord/srt: each index's
// rank in that order is the count of indices before it (exact integer counts).
void prefix_by_rank(const float* v, int32_t E, int32_t L, int32_t* ord, float* srt) {
  for (int32_t e = 0; e < E; ++e) {
    int32_t r = 0;
    for (int32_t f = 0; f < E; ++f) r += static_cast<int32_t>((v[f] > v[e]) | ((v[f] == v[e]) & (f < e)));
    if (r < L) {
      ord[r] = e;
      srt[r] = v[e];
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// prefix_by_rank for E <= 64 without a branch per comparison: every expert's count of strictly
// larger values at once (one broadcast and E / 16 masked adds per value), then a scatter by rank.
// Distinct values make those counts the ranks; a tie (two equal counts) goes to prefix_by_rank.
template <int NV>
__attribute__((target("avx512f"))) void prefix_by_rank_avx512(const float* v, int32_t E, int32_t L, int32_t* ord,
                                                              float* srt) {
  alignas(64) float pad[16 * NV];
  alignas(64) int32_t rank[16 * NV];
  std::fill(pad, pad + 16 * NV, -std::numeric_limits<float>::infinity());  // lanes >= E only receive counts
  std::copy(v, v + E, pad);
  __m512 val[NV];
  __m512i cnt[NV];
#pragma GCC unroll 4
  for (int i = 0; i < NV; ++i) {
    val[i] = _mm512_load_ps(pad + 16 * i);
    cnt[i] = _mm512_setzero_si512();
  }
  const __m512i one = _mm512_set1_epi32(1);
  for (int32_t f = 0; f < E; ++f) {
    const __m512 b = _mm512_set1_ps(v[f]);
#pragma GCC unroll 4
    for (int i = 0; i < NV; ++i)
      cnt[i] = _mm512_mask_add_epi32(cnt[i], _mm512_cmp_ps_mask(b, val[i], _CMP_GT_OQ), cnt[i], one);
  }
#pragma GCC unroll 4
  for (int i = 0; i < NV; ++i) _mm512_store_si512(reinterpret_cast<__m512i*>(rank + 16 * i), cnt[i]);
  uint64_t seen = 0, tie = 0;
  int32_t at[16 * NV];
  for (int32_t e = 0; e < E; ++e) {
    const uint64_t bit = uint64_t{1} << rank[e];
    tie |= seen & bit;
    seen |= bit;
    at[rank[e]] = e;
  }
  if (tie != 0) return prefix_by_rank(v, E, L, ord, srt);
  for (int32_t i = 0; i < L; ++i) {
    ord[i] = at[i];
    srt[i] = v[at[i]];
  }
}

void prefix_by_rank_simd(const float* v, int32_t E, int32_t L, int32_t* ord, float* srt) {
  switch ((E + 15) / 16) {
    case 1: return prefix_by_rank_avx512<1>(v, E, L, ord, srt);
    case 2: return prefix_by_rank_avx512<2>(v, E, L, ord, srt);
    case 3: return prefix_by_rank_avx512<3>(v, E, L, ord, srt);
    default: return prefix_by_rank_avx512<4>(v, E, L, ord, srt);
  }
}
#endif

template <typename Body>
void parallel_chunks(int64_t n, int threads, Body&& body) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(n, 4 * static_cast<int64_t>(threads)));
  auto worker = [&](int64_t first) {
    for (int64_t c = first; c < chunks; c += threads) body(n * c / chunks, n * (c + 1) / chunks, c);
  };
  if (threads <= 1 || chunks <= 1) {
    for (int64_t c = 0; c < chunks; ++c) body(n * c / chunks, n * (c + 1) / chunks, c);
    return;
  }
  std::vector<std::thread> pool;
  for (int i = 0; i < std::min<int64_t>(threads, chunks); ++i) pool.emplace_back(worker, i);
  for (auto& th : pool) th.join();
}

// A token's best experts by (reduced value desc, expert asc), at most k, values > 0.
struct TopK {
  int32_t n = 0;
  double r[64];
  int32_t e[64];
  void clear() { n = 0; }
  // True when (rv, ev) would enter the list.
  bool admits(double rv, int32_t ev, int32_t k) const {
    return n < k || rv > r[n - 1] || (rv == r[n - 1] && ev < e[n - 1]);
  }
  void insert(double rv, int32_t ev, int32_t k) {
    int32_t i = n < k ? n++ : n - 1;
    while (i > 0 && (rv > r[i - 1] || (rv == r[i - 1] && ev < e[i - 1]))) {
      r[i] = r[i - 1];
      e[i] = e[i - 1];
      --i;
    }
    r[i] = rv;
    e[i] = ev;
  }
};

// Distributed selection: items (group g[i], key[i]) spread over the ranks; global_count[g] of
// them exist over the group; keeps, per group, the quota[g] items with the largest keys (all of
// them when there are no more). Radix rounds, 8 bits of the key each: one allreduce of 256
// counts per unresolved group; keys are unique (they end with the global token id).
Result<std::vector<uint8_t>> select_top_of(int32_t E, Reducer& red, const std::vector<int32_t>& g,
                                        const std::vector<uint64_t>& key, const std::vector<int64_t>& global_count,
                                        const std::vector<int64_t>& quota) {
  enum : uint8_t { kUndecided = 0, kAccept = 1, kReject = 2 };
  std::vector<uint8_t> state(g.size(), kUndecided);
  std::vector<int64_t> need(quota);
  std::vector<int32_t> open;  // unresolved groups, the same list on every rank
  for (int32_t e = 0; e < E; ++e)
    if (global_count[static_cast<size_t>(e)] > quota[static_cast<size_t>(e)]) open.push_back(e);
  for (size_t i = 0; i < g.size(); ++i)
    if (global_count[static_cast<size_t>(g[i])] <= quota[static_cast<size_t>(g[i])]) state[i] = kAccept;
  std::vector<int32_t> slot(static_cast<size_t>(E), -1);
  std::vector<uint8_t> action;
  for (int shift = 56; shift >= 0 && !open.empty(); shift -= 8) {
    std::fill(slot.begin(), slot.end(), -1);
    for (size_t j = 0; j < open.size(); ++j) slot[static_cast<size_t>(open[j])] = static_cast<int32_t>(j);
    std::vector<int64_t> hist(open.size() * 256, 0);
    for (size_t i = 0; i < g.size(); ++i) {
      if (state[i] != kUndecided) continue;
      const int32_t s = slot[static_cast<size_t>(g[i])];
      if (s >= 0) ++hist[static_cast<size_t>(s) * 256 + ((key[i] >> shift) & 255)];
    }
    LOCMOE_RETURN_IF_ERROR(red.sum(hist));
    action.assign(open.size() * 256, kReject);
    std::vector<int32_t> still;
    for (size_t j = 0; j < open.size(); ++j) {
      int64_t& n = need[static_cast<size_t>(open[j])];
      bool undecided = false;
      for (int b = 255; b >= 0 && n > 0; --b) {
        const int64_t c = hist[j * 256 + static_cast<size_t>(b)];
        if (c == 0) continue;
        if (c <= n) {
          action[j * 256 + static_cast<size_t>(b)] = kAccept;
          n -= c;
        } else {
          action[j * 256 + static_cast<size_t>(b)] = kUndecided;
          undecided = true;
          break;
        }
      }
      if (undecided) still.push_back(open[j]);
    }
    for (size_t i = 0; i < g.size(); ++i) {
      if (state[i] != kUndecided) continue;
      const int32_t s = slot[static_cast<size_t>(g[i])];
      if (s >= 0) state[i] = action[static_cast<size_t>(s) * 256 + ((key[i] >> shift) & 255)];
    }
    open = std::move(still);
  }
  LOCMOE_CHECK(open.empty(), Code::kInternal, "locmoe-opt: selection left {} experts unresolved (duplicate keys)",
               open.size());
  std::vector<uint8_t> keep(g.size());
  for (size_t i = 0; i < g.size(); ++i) keep[i] = state[i] == kAccept;
  return keep;
}

class Solver {
 public:
  Solver(const Problem& pb, Reducer& red) : pb_(pb), red_(red), E_(pb.experts), k_(pb.k) {
    L_ = std::min(E_, kPrefix);
  }

  float value(int64_t t, int32_t e) const {
    return pb_.p[t * E_ + e] - pb_.cost[static_cast<int64_t>(pb_.cost_row[t]) * E_ + e];
  }

  void build_prefix() {
    const int64_t T = pb_.tokens;
    order_.resize(static_cast<size_t>(T * L_));
    sorted_.resize(static_cast<size_t>(T * L_));
    parallel_chunks(T, pb_.threads, [&](int64_t t0, int64_t t1, int64_t) {
      std::vector<int32_t> idx(static_cast<size_t>(E_));
      std::vector<float> v(static_cast<size_t>(E_));
      for (int64_t t = t0; t < t1; ++t) {
        for (int32_t e = 0; e < E_; ++e) v[static_cast<size_t>(e)] = value(t, e);
        int32_t* ord = order_.data() + t * L_;
        float* srt = sorted_.data() + t * L_;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        if (E_ <= 64 && logits::has_avx512()) {
          // nth_element and sort spent ~1 us per token of 64 experts in mispredicted branches.
          prefix_by_rank_simd(v.data(), E_, L_, ord, srt);
          continue;
        }
#endif
        std::iota(idx.begin(), idx.end(), 0);
        auto before = [&](int32_t a, int32_t b) {
          return v[static_cast<size_t>(a)] != v[static_cast<size_t>(b)] ? v[static_cast<size_t>(a)] > v[static_cast<size_t>(b)]
                                                                          : a < b;
        };
        if (L_ < E_) std::nth_element(idx.begin(), idx.begin() + (L_ - 1), idx.end(), before);
        std::sort(idx.begin(), idx.begin() + L_, before);
        for (int32_t i = 0; i < L_; ++i) {
          ord[i] = idx[static_cast<size_t>(i)];
          srt[i] = v[static_cast<size_t>(idx[static_cast<size_t>(i)])];
        }
      }
    });
  }

  // Token t's k best experts at prices `lam` (reduced value v - lam > 0).
  void choose(int64_t t, const std::vector<double>& lam, TopK& top) const {
    top.clear();
    const int32_t* ord = order_.data() + t * L_;
    const float* vs = sorted_.data() + t * L_;
    bool stopped = false;
    for (int32_t i = 0; i < L_; ++i) {
      const float vv = vs[i];
      // Every later expert has v <= vv and, prices being >= 0, a reduced value <= vv.
      if (vv <= 0.0f || (top.n == k_ && static_cast<double>(vv) < top.r[k_ - 1])) {
        stopped = true;
        break;
      }
      const int32_t e = ord[i];
      const double r = static_cast<double>(vv) - lam[static_cast<size_t>(e)];
      if (r > 0.0 && top.admits(r, e, k_)) top.insert(r, e, k_);
    }
    if (stopped || L_ == E_) return;
    top.clear();  // the prefix did not settle the choice: every expert
    for (int32_t e = 0; e < E_; ++e) {
      const double r = static_cast<double>(value(t, e)) - lam[static_cast<size_t>(e)];
      if (r > 0.0 && top.admits(r, e, k_)) top.insert(r, e, k_);
    }
  }

  // Every token's choice at `lam` into expert_ (and its count into unconstrained when asked);
  // returns the local per-expert loads.
  std::vector<int64_t> choose_all(const std::vector<double>& lam, std::vector<int32_t>* counts) {
    const int64_t T = pb_.tokens;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(T, 4 * static_cast<int64_t>(pb_.threads)));
    std::vector<std::vector<int64_t>> part(static_cast<size_t>(chunks), std::vector<int64_t>(static_cast<size_t>(E_), 0));
    parallel_chunks(T, pb_.threads, [&](int64_t t0, int64_t t1, int64_t c) {
      TopK top;
      auto& load = part[static_cast<size_t>(c)];
      for (int64_t t = t0; t < t1; ++t) {
        choose(t, lam, top);
        int32_t* out = expert_.data() + t * k_;
        for (int32_t j = 0; j < k_; ++j) out[j] = j < top.n ? top.e[j] : -1;
        for (int32_t j = 0; j < top.n; ++j) ++load[static_cast<size_t>(top.e[j])];
        if (counts) (*counts)[static_cast<size_t>(t)] = top.n;
      }
    });
    std::vector<int64_t> load(static_cast<size_t>(E_), 0);
    for (const auto& l : part)
      for (int32_t e = 0; e < E_; ++e) load[static_cast<size_t>(e)] += l[static_cast<size_t>(e)];
    return load;
  }

  Result<std::vector<uint8_t>> select_top(const std::vector<int32_t>& g, const std::vector<uint64_t>& key,
                                          const std::vector<int64_t>& global_count,
                                          const std::vector<int64_t>& quota) {
    return select_top_of(E_, red_, g, key, global_count, quota);
  }

  Result<Solution> run() {
    const int64_t T = pb_.tokens, C = pb_.capacity;
    Solution sol;
    expert_.assign(static_cast<size_t>(T * k_), -1);
    sol.unconstrained.assign(static_cast<size_t>(T), 0);
    build_prefix();
    std::vector<double> lam(static_cast<size_t>(E_), 0.0), step(static_cast<size_t>(E_), kFirstStep);
    std::vector<int32_t> last(static_cast<size_t>(E_), 0);
    std::vector<int64_t> load;
    const int32_t iters = std::max(1, pb_.iterations);
    for (int32_t it = 0; it < iters; ++it) {
      load = choose_all(lam, it == 0 ? &sol.unconstrained : nullptr);
      LOCMOE_RETURN_IF_ERROR(red_.sum(load));
      sol.iterations = it + 1;
      bool optimal = true;
      for (int32_t e = 0; e < E_; ++e) {
        const int64_t l = load[static_cast<size_t>(e)];
        if (l > C || (lam[static_cast<size_t>(e)] > 0.0 && l != C)) optimal = false;
      }
      if (optimal) {
        sol.converged = true;
        break;
      }
      if (it + 1 == iters) break;
      for (int32_t e = 0; e < E_; ++e) {
        const size_t i = static_cast<size_t>(e);
        const int64_t ex = load[i] - C;
        const int32_t s = ex > 0 ? 1 : (ex < 0 && lam[i] > 0.0 ? -1 : 0);
        if (s != 0) {
          if (s == last[i]) step[i] = std::min(step[i] * kGrow, kMaxStep);
          else if (s == -last[i]) step[i] *= kShrink;
          lam[i] = std::max(0.0, lam[i] + s * step[i]);
        }
        last[i] = s;
      }
    }

    // Repair: experts above C keep their C holders of largest reduced value.
    {
      std::vector<int32_t> g;
      std::vector<uint64_t> key;
      std::vector<int64_t> where;  // slot index of each item
      for (int64_t t = 0; t < T; ++t)
        for (int32_t j = 0; j < k_; ++j) {
          const int32_t e = expert_[static_cast<size_t>(t * k_ + j)];
          if (e < 0 || load[static_cast<size_t>(e)] <= C) continue;
          g.push_back(e);
          key.push_back(pair_key(static_cast<float>(static_cast<double>(value(t, e)) - lam[static_cast<size_t>(e)]),
                                 pb_.gid0 + t));
          where.push_back(t * k_ + j);
        }
      bool over = false;
      for (int32_t e = 0; e < E_; ++e) over = over || load[static_cast<size_t>(e)] > C;
      if (over) {
        LOCMOE_ASSIGN_OR_RETURN(std::vector<uint8_t> keep,
                                select_top(g, key, load, std::vector<int64_t>(static_cast<size_t>(E_), C)));
        for (size_t i = 0; i < g.size(); ++i)
          if (!keep[i]) expert_[static_cast<size_t>(where[i])] = -1;
        for (int32_t e = 0; e < E_; ++e) {
          if (load[static_cast<size_t>(e)] > C) sol.repaired += load[static_cast<size_t>(e)] - C;
          load[static_cast<size_t>(e)] = std::min(load[static_cast<size_t>(e)], C);
        }
        compact_slots();
      }
    }

    // Refill: free slots take the best positive-value expert with spare capacity.
    for (int32_t round = 0; round <= k_; ++round) {
      std::vector<int32_t> g;
      std::vector<uint64_t> key;
      std::vector<int64_t> who;
      std::vector<int64_t> offers(static_cast<size_t>(E_), 0);
      for (int64_t t = 0; t < T; ++t) {
        const int32_t* s = expert_.data() + t * k_;
        int32_t n = 0;
        while (n < k_ && s[n] >= 0) ++n;
        if (n == k_) continue;
        int32_t best = -1;
        float bv = 0.0f;
        for (int32_t e = 0; e < E_; ++e) {
          if (load[static_cast<size_t>(e)] >= C || std::find(s, s + n, e) != s + n) continue;
          const float v = value(t, e);
          if (v > bv) {  // strictly: ties keep the lower expert id
            bv = v;
            best = e;
          }
        }
        if (best < 0) continue;
        g.push_back(best);
        key.push_back(pair_key(bv, pb_.gid0 + t));
        who.push_back(t);
        ++offers[static_cast<size_t>(best)];
      }
      LOCMOE_RETURN_IF_ERROR(red_.sum(offers));
      int64_t total = 0;
      for (const int64_t o : offers) total += o;
      if (total == 0) break;
      std::vector<int64_t> spare(static_cast<size_t>(E_));
      for (int32_t e = 0; e < E_; ++e) spare[static_cast<size_t>(e)] = C - load[static_cast<size_t>(e)];
      LOCMOE_ASSIGN_OR_RETURN(std::vector<uint8_t> keep, select_top(g, key, offers, spare));
      for (size_t i = 0; i < g.size(); ++i) {
        if (!keep[i]) continue;
        int32_t* s = expert_.data() + who[i] * k_;
        int32_t n = 0;
        while (s[n] >= 0) ++n;
        s[n] = g[i];
      }
      for (int32_t e = 0; e < E_; ++e) {
        const int64_t add = std::min(offers[static_cast<size_t>(e)], spare[static_cast<size_t>(e)]);
        load[static_cast<size_t>(e)] += add;
        sol.refilled += add;
      }
    }
    sol.expert = std::move(expert_);
    sol.price = std::move(lam);
    return sol;
  }

 private:
  void compact_slots() {  // accepted experts first in each token's slots
    for (int64_t t = 0; t < pb_.tokens; ++t) {
      int32_t* s = expert_.data() + t * k_;
      std::stable_partition(s, s + k_, [](int32_t e) { return e >= 0; });
    }
  }

  const Problem& pb_;
  Reducer& red_;
  int32_t E_, k_, L_;
  std::vector<int32_t> order_;
  std::vector<float> sorted_;
  std::vector<int32_t> expert_;
};

}  // namespace

namespace {

// A probability as an unsigned 2^-32 fixed-point integer (truncated; 1.0 -> 2^32 - 1).
uint32_t fixed_q(float p) {
  const double q = std::floor(static_cast<double>(p) * 4294967296.0);
  return q >= 4294967295.0 ? 0xFFFFFFFFu : (q <= 0.0 ? 0u : static_cast<uint32_t>(q));
}

// The per-expert multisets of the top-k choices' fixed-point probabilities, spread over the ranks,
// and the top-C mass of each at any C: level-1 counts and masses (top 8 bits of q) agreed once,
// then, for a C they do not settle, a radix descent over the lower 24 bits (3 rounds of 256 counts
// per expert above C) and one sum of the local mass above the boundaries.
class TopMass {
 public:
  TopMass(std::vector<int32_t> e, std::vector<uint32_t> q, int32_t E, Reducer& red)
      : e_(std::move(e)), q_(std::move(q)), E_(E), red_(red) {}

  Status agree_level1() {
    std::vector<int64_t> h(static_cast<size_t>(E_) * 512 + 1, 0);
    for (size_t i = 0; i < e_.size(); ++i) {
      const size_t b = static_cast<size_t>(e_[i]) * 256 + (q_[i] >> 24);
      ++h[b];
      h[static_cast<size_t>(E_) * 256 + b] += q_[i];
      h.back() += q_[i];
    }
    LOCMOE_RETURN_IF_ERROR(red_.sum(h));
    count_.assign(h.begin(), h.begin() + E_ * 256);
    mass_.assign(h.begin() + E_ * 256, h.end() - 1);
    total_ = h.back();
    n_.assign(static_cast<size_t>(E_), 0);
    full_.assign(static_cast<size_t>(E_), 0);
    for (int32_t x = 0; x < E_; ++x)
      for (int b = 0; b < 256; ++b) {
        n_[static_cast<size_t>(x)] += count_[static_cast<size_t>(x) * 256 + b];
        full_[static_cast<size_t>(x)] += mass_[static_cast<size_t>(x) * 256 + b];
      }
    return ok_status();
  }
  int64_t total() const { return total_; }

  // Whether the experts, each keeping its C largest values, keep >= target; counts the exact
  // descents in `descents`.
  Result<bool> reaches(int64_t C, int64_t target, int32_t& descents) {
    // Bounds from level 1: the boundary bin's r kept values lie in [b 2^24, (b + 1) 2^24).
    int64_t lo = 0, hi = 0;
    for (int32_t x = 0; x < E_; ++x) {
      if (n_[static_cast<size_t>(x)] <= C) {
        lo += full_[static_cast<size_t>(x)];
        hi += full_[static_cast<size_t>(x)];
        continue;
      }
      int64_t r = C;
      for (int b = 255; b >= 0 && r > 0; --b) {
        const int64_t c = count_[static_cast<size_t>(x) * 256 + b], m = mass_[static_cast<size_t>(x) * 256 + b];
        if (c <= r) {
          lo += m;
          hi += m;
          r -= c;
        } else {
          const int64_t edge = int64_t{b} << 24, top = ((int64_t{b} + 1) << 24) - 1;
          lo += std::max(r * edge, m - (c - r) * top);
          hi += std::min(r * top, m - (c - r) * edge);
          r = 0;
        }
      }
    }
    if (lo >= target) return true;
    if (hi < target) return false;
    ++descents;
    LOCMOE_ASSIGN_OR_RETURN(int64_t m, exact(C));
    return m >= target;
  }

 private:
  // Sum over experts of their C largest values (exact).
  Result<int64_t> exact(int64_t C) {
    struct Cut {
      int32_t e;
      uint64_t prefix;  // the boundary's bits above `shift` so far
      int64_t r;        // values still to take from the boundary bin
    };
    std::vector<Cut> open;
    int64_t known = 0;                                // mass settled from agreed figures
    std::vector<uint64_t> keep_from(static_cast<size_t>(E_), ~0ull);  // keep values >= this
    for (int32_t x = 0; x < E_; ++x) {
      if (n_[static_cast<size_t>(x)] <= C) {
        known += full_[static_cast<size_t>(x)];
        continue;
      }
      int64_t r = C;
      for (int b = 255; b >= 0; --b) {
        const int64_t c = count_[static_cast<size_t>(x) * 256 + b];
        if (c < r) {
          r -= c;
        } else if (c == r) {  // the bin is kept whole: keep everything from its lower edge
          keep_from[static_cast<size_t>(x)] = uint64_t{static_cast<uint32_t>(b)} << 24;
          break;
        } else {
          open.push_back({x, static_cast<uint64_t>(b), r});
          break;
        }
      }
    }
    for (int shift = 16; shift >= 0 && !open.empty(); shift -= 8) {
      std::vector<int32_t> slot(static_cast<size_t>(E_), -1);
      for (size_t j = 0; j < open.size(); ++j) slot[static_cast<size_t>(open[j].e)] = static_cast<int32_t>(j);
      std::vector<int64_t> h(open.size() * 256, 0);
      for (size_t i = 0; i < e_.size(); ++i) {
        const int32_t s = slot[static_cast<size_t>(e_[i])];
        if (s >= 0 && (q_[i] >> (shift + 8)) == open[static_cast<size_t>(s)].prefix)
          ++h[static_cast<size_t>(s) * 256 + ((q_[i] >> shift) & 255)];
      }
      LOCMOE_RETURN_IF_ERROR(red_.sum(h));
      std::vector<Cut> still;
      for (size_t j = 0; j < open.size(); ++j) {
        Cut cut = open[j];
        for (int b = 255; b >= 0; --b) {
          const int64_t c = h[j * 256 + static_cast<size_t>(b)];
          const uint64_t pre = (cut.prefix << 8) | static_cast<uint64_t>(b);
          if (c < cut.r) {
            cut.r -= c;
          } else if (c == cut.r || shift == 0) {
            // Kept whole, or (last level) the r values equal to the boundary: they count r times.
            keep_from[static_cast<size_t>(cut.e)] = shift == 0 ? pre + 1 : pre << shift;
            if (shift == 0) known += cut.r * static_cast<int64_t>(pre);
            break;
          } else {
            cut.prefix = pre;
            still.push_back(cut);
            break;
          }
        }
      }
      open = std::move(still);
    }
    std::vector<int64_t> local(1, 0);
    for (size_t i = 0; i < e_.size(); ++i) {
      const uint64_t from = keep_from[static_cast<size_t>(e_[i])];
      if (n_[static_cast<size_t>(e_[i])] > C && q_[i] >= from) local[0] += q_[i];
    }
    LOCMOE_RETURN_IF_ERROR(red_.sum(local));
    return known + local[0];
  }

  std::vector<int32_t> e_;
  std::vector<uint32_t> q_;
  int32_t E_;
  Reducer& red_;
  std::vector<int64_t> count_, mass_, n_, full_;
  int64_t total_ = 0;
};

}  // namespace

Result<TauBound> tau_capacity(const float* p, int64_t tokens, int32_t experts, int32_t k, double tau,
                              int64_t ceiling, Reducer& reducer) {
  LOCMOE_CHECK_ARG(k >= 1 && k <= experts, "locmoe-opt: k = {} must be in [1, E = {}]", k, experts);
  LOCMOE_CHECK_ARG(ceiling >= 1, "locmoe-opt: capacity ceiling {} must be >= 1", ceiling);
  LOCMOE_CHECK_ARG(tau > 0.0 && tau <= 1.0, "tau = {} must be in (0, 1]", tau);
  std::vector<int32_t> e;
  std::vector<uint32_t> q;
  e.reserve(static_cast<size_t>(tokens * k));
  q.reserve(static_cast<size_t>(tokens * k));
  std::vector<int32_t> idx(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = p + t * experts;
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int32_t a, int32_t b) { return row[a] != row[b] ? row[a] > row[b] : a < b; });
    for (int32_t j = 0; j < k; ++j) {
      e.push_back(idx[static_cast<size_t>(j)]);
      q.push_back(fixed_q(row[idx[static_cast<size_t>(j)]]));
    }
  }
  TopMass tm(std::move(e), std::move(q), experts, reducer);
  LOCMOE_RETURN_IF_ERROR(tm.agree_level1());
  TauBound out;
  out.topk_fixed = tm.total();
  out.target_fixed = static_cast<int64_t>(std::ceil(tau * static_cast<double>(tm.total())));
  LOCMOE_ASSIGN_OR_RETURN(out.reached, tm.reaches(ceiling, out.target_fixed, out.descents));
  int64_t lo = 1, hi = ceiling;
  while (out.reached && lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    LOCMOE_ASSIGN_OR_RETURN(bool ok, tm.reaches(mid, out.target_fixed, out.descents));
    if (ok) hi = mid;
    else lo = mid + 1;
  }
  out.capacity = hi;
  return out;
}

Result<Solution> solve(const Problem& problem, Reducer& reducer) {
  LOCMOE_CHECK_ARG(problem.k >= 1 && problem.k <= 64 && problem.k <= problem.experts,
                   "locmoe-opt: k = {} must be in [1, min(64, E = {})]", problem.k, problem.experts);
  LOCMOE_CHECK_ARG(problem.capacity >= 1, "locmoe-opt: capacity {} must be >= 1", problem.capacity);
  Solver s(problem, reducer);
  return s.run();
}

}  // namespace locmoe::opt
