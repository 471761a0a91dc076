#include "locmoe/router/router.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <thread>

#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "locmoe/core/threads.h"
#include "locmoe/router/finalize.h"
#include "logits.h"
#include "opt_solver.h"

namespace locmoe {

// A nominated (token, expert) pair; gathered between ranks as raw bytes.
struct Candidate {
  int64_t gid;     // global token id
  int32_t expert;
  int32_t slot;    // position in the token's nomination order (0 = its best expert)
  float score;     // the router's score: p, or s = a + lambda [same node] for locmoe+/locmoe
  float prob;      // p[t, e]
  float affinity;  // a[t, e]
  int32_t unused;
};
static_assert(sizeof(Candidate) == 32, "Candidate is exchanged as raw bytes");

namespace {

enum class Kind { kLocmoePlus, kGshard, kSwitch, kExpertChoice, kNodeLimited, kLocmoe, kHash, kDropless, kLocmoeOpt, kDeepseek };

Kind kind_of(std::string_view name) {
  for (size_t i = 0; i < std::size(kRouterNames); ++i)
    if (kRouterNames[i] == name) return static_cast<Kind>(i);
  return Kind::kLocmoePlus;  // unreachable after validate()
}

// Candidate orders of the global selection. Every one is total, so sorting is deterministic.
enum class Order { kScore, kSlotThenToken, kTokenThenSlot, kProb };

bool is_topk_baseline(Kind k) {
  return k == Kind::kGshard || k == Kind::kSwitch || k == Kind::kNodeLimited || k == Kind::kLocmoe || k == Kind::kHash ||
         k == Kind::kDeepseek;
}

// Rows of features per work item of the scores pass (16 of the logit kernel's 6-row tiles): the
// item's norms, logits, probabilities and affinities are computed one after the other while its
// 1.5 MiB of features (H = 4096) are still in cache. Items are only a unit of work: a row's bits
// do not depend on the item it falls in (logits.h).
constexpr int64_t kBlockRows = 96;

// 0: LOCMOE_NUM_THREADS, else this rank's share of the node's cores (core/threads.h).
int resolve_threads(int32_t configured) { return host_threads(configured); }

// Whether a row with sum of squares `ss` is rejected (NaN/Inf element, or zero norm).
bool row_is_bad(double ss) { return !std::isfinite(ss) || !(ss > 0.0); }

// The error for row i of `m`, reported as "<what> row i" plus `label` (i + label_base), e.g. its
// global token id.
Status bad_row(MatrixView m, int64_t i, double ss, std::string_view what, std::string_view label, int64_t label_base) {
  if (!std::isfinite(ss)) {
    const float* row = m.data + i * m.cols;
    for (int64_t j = 0; j < m.cols; ++j)
      LOCMOE_CHECK_ARG(std::isfinite(row[j]), "{} row {} ({} {}) column {} is {}", what, i, label, i + label_base, j,
                       row[j]);
  }
  return error(Code::kInvalidArgument, "{} row {} ({} {}) has zero norm (affinity needs |x| > 0)", what, i, label,
               i + label_base);
}

// Row norms of `m` (double), rejecting NaN/Inf and zero rows (the first such row is named).
Status row_norms(MatrixView m, std::string_view what, std::string_view label, int64_t label_base,
                 std::vector<double>& norms) {
  norms.assign(static_cast<size_t>(m.rows), 0.0);
  for (int64_t i = 0; i < m.rows; ++i) {
    const double ss = logits::row_sum_sq(m.data + i * m.cols, m.cols);
    if (row_is_bad(ss)) return bad_row(m, i, ss, what, label, label_base);
    norms[static_cast<size_t>(i)] = std::sqrt(ss);
  }
  return ok_status();
}

// Gate probabilities and affinities of one rank's tokens, [T, E] row-major.
struct Scores {
  std::vector<float> p;
  std::vector<float> a;
};

// Lends a buffer kept in the Router to one call (its capacity survives the call, not its contents).
class Lend {
 public:
  Lend(std::vector<float>& home, std::vector<float>& use) : home_(home), use_(use) { use_.swap(home_); }
  ~Lend() { use_.swap(home_); }
  Lend(const Lend&) = delete;
  Lend& operator=(const Lend&) = delete;

 private:
  std::vector<float>& home_;
  std::vector<float>& use_;
};

// A row that row_is_bad(): its index and sum of squares (row = T: none).
struct BadRow {
  int64_t row;
  double ss;
};

// Norms, logits (logits.h), probabilities and affinities of the rows of x, one kBlockRows item
// after the other on `threads` threads (items round-robin). Returns the first row that
// row_is_bad() (then the scores are incomplete).
BadRow compute_scores(MatrixView x, const logits::Gate& g, const std::vector<double>& wnorm, int threads, Scores& s,
                      bool sigmoid = false) {
  const int64_t T = x.rows, H = x.cols, E = g.E, Ep = g.Ep;
  s.p.resize(static_cast<size_t>(T * E));
  s.a.resize(static_cast<size_t>(T * E));
  if (T == 0) return {T, 0.0};
  const int64_t blocks = (T + kBlockRows - 1) / kBlockRows;
  const int n = static_cast<int>(std::min<int64_t>(std::max(threads, 1), blocks));
  std::vector<int64_t> first_bad(static_cast<size_t>(n), T);  // per thread
  std::vector<double> bad_ss(static_cast<size_t>(n), 0.0);
  auto worker = [&](int id) {
    std::vector<float> z(static_cast<size_t>(kBlockRows * Ep));
    double xnorm[kBlockRows];
    for (int64_t b = id; b < blocks; b += n) {
      const int64_t lo = b * kBlockRows, hi = std::min(lo + kBlockRows, T);
      logits::compute(x.data + lo * H, hi - lo, g, z.data(), xnorm);
      for (int64_t t = lo; t < hi; ++t) {
        const double ss = xnorm[t - lo];
        if (row_is_bad(ss)) {
          first_bad[static_cast<size_t>(id)] = t;  // items ascend within a thread: its first is its lowest
          bad_ss[static_cast<size_t>(id)] = ss;
          return;
        }
        xnorm[t - lo] = std::sqrt(ss);
      }
      for (int64_t t = lo; t < hi; ++t) {
        const float* zr = z.data() + (t - lo) * Ep;
        float* pr = s.p.data() + t * E;
        float* ar = s.a.data() + t * E;
        const float m = *std::max_element(zr, zr + E);
        double sum = 0.0;
        for (int64_t e = 0; e < E; ++e) {
          pr[e] = std::exp(zr[e] - m);
          sum += pr[e];
        }
        for (int64_t e = 0; e < E; ++e) {
          pr[e] = sigmoid ? static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(zr[e]))))
                          : static_cast<float>(pr[e] / sum);
          ar[e] = static_cast<float>(zr[e] / (xnorm[t - lo] * wnorm[static_cast<size_t>(e)]));
        }
      }
    }
  };
  if (n <= 1) {
    worker(0);
  } else {
    std::vector<std::thread> pool;
    for (int i = 0; i < n; ++i) pool.emplace_back(worker, i);
    for (auto& th : pool) th.join();
  }
  // A thread stops at its first bad row and checked every row of its items below it, so the
  // minimum over the threads is the first bad row of the matrix.
  const auto it = std::min_element(first_bad.begin(), first_bad.end());
  return {*it, bad_ss[static_cast<size_t>(it - first_bad.begin())]};
}

// compute_scores() of one rank's features (global ids from gid0), failing on a bad row.
Status rank_scores(MatrixView x, const logits::Gate& g, const std::vector<double>& wnorm, int64_t gid0, int threads,
                   Scores& s, bool sigmoid = false) {
  const BadRow bad = compute_scores(x, g, wnorm, threads, s, sigmoid);
  return bad.row < x.rows ? bad_row(x, bad.row, bad.ss, "features", "global token", gid0) : ok_status();
}

// The first `n` of the allowed experts in (score desc, expert asc) order, written to `out`;
// returns how many were written.
int top_by_score(const float* score, int32_t E, int n, const std::vector<uint8_t>* allowed,
                 std::vector<int32_t>& scratch, int32_t* out) {
  scratch.clear();
  for (int32_t e = 0; e < E; ++e)
    if (!allowed || (*allowed)[static_cast<size_t>(e)]) scratch.push_back(e);
  n = std::min<int>(n, static_cast<int>(scratch.size()));
  std::partial_sort(scratch.begin(), scratch.begin() + n, scratch.end(), [&](int32_t x, int32_t y) {
    return score[x] != score[y] ? score[x] > score[y] : x < y;
  });
  std::copy_n(scratch.begin(), n, out);
  return n;
}

// Node limit (DeepSeek-V3): the `M` nodes with the largest sum of their `per_node` best scores
// (ties by node id) and a mask of the experts on them.
void node_limit_mask(const float* score, const ExpertPlacement& pl, int M, int per_node,
                     std::vector<uint8_t>& mask) {
  const int32_t E = pl.num_experts(), N = pl.num_nodes();
  std::vector<std::vector<float>> by_node(static_cast<size_t>(N));
  for (int32_t e = 0; e < E; ++e)
    by_node[static_cast<size_t>(pl.node_of_rank[static_cast<size_t>(e / pl.experts_per_rank)])].push_back(score[e]);
  std::vector<double> node_score(static_cast<size_t>(N), 0.0);
  for (int32_t n = 0; n < N; ++n) {
    auto& v = by_node[static_cast<size_t>(n)];
    const size_t c = std::min<size_t>(static_cast<size_t>(per_node), v.size());
    std::partial_sort(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(c), v.end(), std::greater<float>());
    for (size_t i = 0; i < c; ++i) node_score[static_cast<size_t>(n)] += v[i];
  }
  std::vector<int32_t> nodes(static_cast<size_t>(N));
  std::iota(nodes.begin(), nodes.end(), 0);
  std::stable_sort(nodes.begin(), nodes.end(), [&](int32_t x, int32_t y) {
    return node_score[static_cast<size_t>(x)] > node_score[static_cast<size_t>(y)];
  });
  std::vector<uint8_t> node_ok(static_cast<size_t>(N), 0);
  for (int i = 0; i < std::min(M, N); ++i) node_ok[static_cast<size_t>(nodes[static_cast<size_t>(i)])] = 1;
  mask.assign(static_cast<size_t>(E), 0);
  for (int32_t e = 0; e < E; ++e)
    mask[static_cast<size_t>(e)] = node_ok[static_cast<size_t>(pl.node_of_rank[static_cast<size_t>(e / pl.experts_per_rank)])];
}

// DeepSeek's group limit: groups of E / G contiguous experts, the M best by group score ("top2-sum":
// the sum of the group's two best scores; "max": its best), ties by group id; mask of their experts.
void group_limit_mask(const float* score, int32_t E, int32_t G, int32_t M, bool top2, std::vector<uint8_t>& mask) {
  const int32_t per = E / G;
  std::vector<double> gs(static_cast<size_t>(G));
  for (int32_t g = 0; g < G; ++g) {
    float b1 = -std::numeric_limits<float>::infinity(), b2 = b1;
    for (int32_t e = g * per; e < (g + 1) * per; ++e) {
      if (score[e] > b1) {
        b2 = b1;
        b1 = score[e];
      } else if (score[e] > b2) {
        b2 = score[e];
      }
    }
    gs[static_cast<size_t>(g)] = top2 && per > 1 ? static_cast<double>(b1) + b2 : b1;
  }
  std::vector<int32_t> order(static_cast<size_t>(G));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return gs[static_cast<size_t>(a)] > gs[static_cast<size_t>(b)]; });
  mask.assign(static_cast<size_t>(E), 0);
  for (int32_t i = 0; i < std::min(M, G); ++i)
    for (int32_t e = order[static_cast<size_t>(i)] * per; e < (order[static_cast<size_t>(i)] + 1) * per; ++e)
      mask[static_cast<size_t>(e)] = 1;
}

int32_t deepseek_groups(const RouterConfig& c, const ExpertPlacement& pl) {
  return c.groups > 0 ? c.groups : pl.num_nodes();
}
int32_t deepseek_topk_groups(const RouterConfig& c) {
  return c.topk_groups > 0 ? c.topk_groups : std::max(1, (c.k + 1) / 2);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int64_t capacity_factor_capacity(double cf, int64_t k, int64_t T, int64_t E) {
  return static_cast<int64_t>(std::ceil(cf * static_cast<double>(k) * static_cast<double>(T) /
                                        static_cast<double>(E) - 1e-9));
}

}  // namespace

namespace {
Status agree(Bootstrap* group, Status local);
}  // namespace

// Everything a rank contributes to the global selection.
struct LocalPhase {
  std::vector<Candidate> cands;
  std::vector<double> topk_mass;      // [T] sum of the token's k largest p
  std::vector<int32_t> unconstrained; // [T] slots the router fills without capacity
};

struct RouterImpl {
  // Shapes and values every rank can check alone. `rank`/`ranks` are the group's.
  static Status check_inputs(const RouterConfig& c, MatrixView x, MatrixView w,
                             const ExpertPlacement& pl, int rank, int ranks) {
    LOCMOE_CHECK_ARG(pl.experts_per_rank > 0 && pl.num_ranks() > 0,
                     "placement has {} experts per rank on {} ranks; both must be positive",
                     pl.experts_per_rank, pl.num_ranks());
    LOCMOE_CHECK_ARG(pl.num_ranks() == ranks, "placement has {} ranks but the EP group has {}",
                     pl.num_ranks(), ranks);
    LOCMOE_CHECK_RANGE(rank >= 0 && rank < pl.num_ranks(), "rank {} out of range [0, {})", rank,
                       pl.num_ranks());
    for (size_t r = 0; r < pl.node_of_rank.size(); ++r)
      LOCMOE_CHECK_RANGE(pl.node_of_rank[r] >= 0 && pl.node_of_rank[r] < pl.num_ranks(),
                         "node_of_rank[{}] = {} out of range", r, pl.node_of_rank[r]);
    const int64_t E = pl.num_experts();
    LOCMOE_CHECK_ARG(w.rows == E, "gate has {} rows but the placement has {} experts ({} ranks x {})",
                     w.rows, E, pl.num_ranks(), pl.experts_per_rank);
    LOCMOE_CHECK_ARG(w.cols > 0 && w.data != nullptr, "gate has {} columns (hidden size must be > 0)",
                     w.cols);
    LOCMOE_CHECK_ARG(x.rows >= 0 && x.cols == w.cols,
                     "features are [{}, {}] but the gate has hidden size {}", x.rows, x.cols, w.cols);
    LOCMOE_CHECK_ARG(x.rows == 0 || x.data != nullptr, "features of {} rows have no data", x.rows);
    const Kind kind = kind_of(c.name);
    if (kind != Kind::kSwitch)
      LOCMOE_CHECK_ARG(c.k <= E, "k = {} exceeds the number of experts E = {}", c.k, E);
    LOCMOE_CHECK_ARG(c.candidates <= E, "candidates l = {} exceeds the number of experts E = {}",
                     c.candidates, E);
    LOCMOE_CHECK_ARG(c.max_nodes <= pl.num_nodes(), "max_nodes M = {} exceeds the {} nodes",
                     c.max_nodes, pl.num_nodes());
    if (kind == Kind::kDeepseek) {
      const int32_t G = c.groups > 0 ? c.groups : pl.num_nodes();
      LOCMOE_CHECK_ARG(E % G == 0, "deepseek-v3: groups = {} must divide the E = {} experts", G, E);
      LOCMOE_CHECK_ARG(c.topk_groups <= G, "deepseek-v3: topk_groups = {} exceeds the {} groups", c.topk_groups, G);
      LOCMOE_CHECK_ARG(c.k <= (E / G) * std::max(1, c.topk_groups > 0 ? c.topk_groups : (c.k + 1) / 2),
                       "deepseek-v3: k = {} exceeds the experts of the {} groups a token may use", c.k,
                       c.topk_groups > 0 ? c.topk_groups : std::max(1, (c.k + 1) / 2));
    }
    return ok_status();
  }

  static Result<LocalPhase> local_phase(const RouterConfig& c, MatrixView x, const logits::Gate& w,
                                        const std::vector<double>& wnorm, const ExpertPlacement& pl,
                                        int src_rank, int64_t gid0, int64_t T_global,
                                        const std::vector<double>& bias) {
    const Kind kind = kind_of(c.name);
    Scores sc;
    LOCMOE_RETURN_IF_ERROR(rank_scores(x, w, wnorm, gid0, resolve_threads(c.num_threads), sc,
                                       kind == Kind::kDeepseek && c.score_function == "sigmoid"));
    const int32_t E = pl.num_experts();
    const int32_t k = kind == Kind::kSwitch ? 1 : c.k;
    const int64_t T = x.rows;
    const int32_t my_node = pl.node_of_rank[static_cast<size_t>(src_rank)];
    LocalPhase out;
    out.topk_mass.resize(static_cast<size_t>(T));
    out.unconstrained.assign(static_cast<size_t>(T), 0);
    const int threads = resolve_threads(c.num_threads);
    // Work items (tokens, or experts for expert choice) are split into contiguous chunks, one
    // candidate list per chunk, concatenated in chunk order: the result does not depend on the
    // thread count (and the global selection sorts by a total order anyway).
    const int64_t items = kind == Kind::kExpertChoice ? E : T;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(items, 4 * threads));
    std::vector<std::vector<Candidate>> parts(static_cast<size_t>(chunks));
    auto run_chunks = [&](auto&& body) {
      auto worker = [&](int64_t first) {
        for (int64_t ch = first; ch < chunks; ch += threads)
          body(items * ch / chunks, items * (ch + 1) / chunks, parts[static_cast<size_t>(ch)]);
      };
      if (threads <= 1 || chunks <= 1) {
        worker(0);
        return;
      }
      std::vector<std::thread> pool;
      for (int i = 0; i < std::min<int64_t>(threads, chunks); ++i) pool.emplace_back(worker, i);
      for (auto& th : pool) th.join();
    };
    auto make = [&](int64_t t, int32_t e, int32_t slot, float score) {
      return Candidate{gid0 + t, e, slot, score, sc.p[static_cast<size_t>(t * E + e)],
                       sc.a[static_cast<size_t>(t * E + e)], 0};
    };

    if (kind == Kind::kExpertChoice) {
      // The group's top-C tokens of an expert are among the union of every rank's local top-C.
      const int64_t C = capacity_factor_capacity(c.capacity_factor, c.k, T_global, E);
      run_chunks([&](int64_t e0, int64_t e1, std::vector<Candidate>& cands) {
        std::vector<int64_t> idx(static_cast<size_t>(T));
        std::vector<int32_t> scratch, best(static_cast<size_t>(E));
        if (e0 == 0) {  // every token's top-k mass, by the first chunk
          for (int64_t t = 0; t < T; ++t) {
            const float* p = sc.p.data() + t * E;
            const int n = top_by_score(p, E, k, nullptr, scratch, best.data());
            double m = 0.0;
            for (int i = 0; i < n; ++i) m += p[best[static_cast<size_t>(i)]];
            out.topk_mass[static_cast<size_t>(t)] = m;
          }
        }
        for (int64_t e = e0; e < e1; ++e) {
          std::iota(idx.begin(), idx.end(), 0);
          const int64_t n = std::min(C, T);
          std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int64_t u, int64_t v) {
            const float pu = sc.p[static_cast<size_t>(u * E + e)], pv = sc.p[static_cast<size_t>(v * E + e)];
            return pu != pv ? pu > pv : u < v;
          });
          for (int64_t i = 0; i < n; ++i) {
            const int64_t t = idx[static_cast<size_t>(i)];
            cands.push_back(make(t, static_cast<int32_t>(e), 0, sc.p[static_cast<size_t>(t * E + e)]));
          }
        }
      });
    } else {
      const float lambda = static_cast<float>(c.locality_margin);
      const int32_t l = c.candidates > 0 ? c.candidates : std::min(2 * c.k, E);
      run_chunks([&](int64_t t0, int64_t t1, std::vector<Candidate>& cands) {
        std::vector<int32_t> scratch, best(static_cast<size_t>(E));
        std::vector<float> s(static_cast<size_t>(E));
        std::vector<uint8_t> mask;
        for (int64_t t = t0; t < t1; ++t) {
          const float* p = sc.p.data() + t * E;
          const float* a = sc.a.data() + t * E;
          int n = top_by_score(p, E, k, nullptr, scratch, best.data());
          double m = 0.0;
          for (int i = 0; i < n; ++i) m += p[best[static_cast<size_t>(i)]];
          out.topk_mass[static_cast<size_t>(t)] = m;
          const float* score = p;
          if (kind == Kind::kLocmoePlus || kind == Kind::kLocmoe) {
            for (int32_t e = 0; e < E; ++e)
              s[static_cast<size_t>(e)] =
                  a[e] + (pl.node_of_rank[static_cast<size_t>(e / pl.experts_per_rank)] == my_node ? lambda : 0.0f);
            score = s.data();
          }
          switch (kind) {
            case Kind::kGshard:
            case Kind::kSwitch:
            case Kind::kDropless:
              break;  // the top-k by p above
            case Kind::kLocmoe:
              n = top_by_score(score, E, k, nullptr, scratch, best.data());
              break;
            case Kind::kNodeLimited: {
              const int M = c.max_nodes > 0 ? c.max_nodes : std::max(1, (k + 1) / 2);
              node_limit_mask(score, pl, M, std::max(1, k / M), mask);
              n = top_by_score(score, E, k, &mask, scratch, best.data());
              break;
            }
            case Kind::kHash: {
              const int32_t h = static_cast<int32_t>(splitmix64(static_cast<uint64_t>(gid0 + t)) % static_cast<uint64_t>(E));
              for (int j = 0; j < k; ++j) best[static_cast<size_t>(j)] = (h + j) % E;
              n = k;
              break;
            }
            case Kind::kLocmoePlus: {
              const std::vector<uint8_t>* allowed = nullptr;
              if (c.max_nodes > 0) {
                node_limit_mask(score, pl, c.max_nodes, std::max(1, l / c.max_nodes), mask);
                allowed = &mask;
              }
              n = top_by_score(score, E, l, allowed, scratch, best.data());
              if (c.candidate_mass > 0.0) {  // shortest prefix holding candidate_mass of p
                double sum = 0.0;
                int keep = 0;
                while (keep < n && sum < c.candidate_mass) sum += p[best[static_cast<size_t>(keep++)]];
                n = std::max(keep, 1);
              }
              break;
            }
            case Kind::kDeepseek: {
              for (int32_t e = 0; e < E; ++e)
                s[static_cast<size_t>(e)] = p[e] + (bias.empty() ? 0.0f : static_cast<float>(bias[static_cast<size_t>(e)]));
              score = s.data();
              group_limit_mask(score, E, deepseek_groups(c, pl), deepseek_topk_groups(c), c.group_score == "top2-sum", mask);
              n = top_by_score(score, E, k, &mask, scratch, best.data());
              break;
            }
            case Kind::kExpertChoice:
            case Kind::kLocmoeOpt:  // routed by route_opt, never here
              break;
          }
          for (int j = 0; j < n; ++j) {
            const int32_t e = best[static_cast<size_t>(j)];
            cands.push_back(make(t, e, j, kind == Kind::kHash ? p[e] : score[e]));
          }
          out.unconstrained[static_cast<size_t>(t)] = kind == Kind::kLocmoePlus ? std::min(n, k) : n;
        }
      });
    }
    size_t total = 0;
    for (const auto& part : parts) total += part.size();
    out.cands.reserve(total);
    for (const auto& part : parts) out.cands.insert(out.cands.end(), part.begin(), part.end());
    return out;
  }

  // One pass of the greedy acceptance over `sorted` (spec step 3): a pair is accepted while its
  // token has fewer than `token_limit` and its expert fewer than `capacity` (0: unlimited)
  // accepted pairs. Returns the accepted gate mass.
  static double greedy(const std::vector<Candidate>& sorted, int64_t capacity, int32_t token_limit,
                       int64_t E, int64_t T_global, std::vector<uint8_t>* accepted) {
    std::vector<int32_t> per_token(static_cast<size_t>(T_global), 0);
    std::vector<int64_t> per_expert(static_cast<size_t>(E), 0);
    if (accepted) accepted->assign(sorted.size(), 0);
    double mass = 0.0;
    for (size_t i = 0; i < sorted.size(); ++i) {
      const Candidate& c = sorted[i];
      int32_t& nt = per_token[static_cast<size_t>(c.gid)];
      int64_t& ne = per_expert[static_cast<size_t>(c.expert)];
      if (nt >= token_limit || (capacity > 0 && ne >= capacity)) continue;
      ++nt;
      ++ne;
      mass += c.prob;
      if (accepted) (*accepted)[i] = 1;
    }
    return mass;
  }

  // The global selection: sorts `all`, decides the capacity (LocMoE+: its lower bound and the
  // smoothed state in `router`), marks accepted pairs and fills the step's statistics.
  static RouteStats select(Router& router, std::vector<Candidate>& all,
                           const std::vector<double>& topk_mass, int64_t T_global, int64_t E,
                           int64_t H, std::vector<uint8_t>& accepted) {
    const RouterConfig& c = router.config_;
    const Kind kind = kind_of(c.name);
    const int32_t k = kind == Kind::kSwitch ? 1 : c.k;
    Order order = Order::kSlotThenToken;
    if (kind == Kind::kExpertChoice || (kind == Kind::kLocmoePlus && c.ecr_order == EcrOrder::kAffinity))
      order = Order::kScore;
    if (kind == Kind::kDropless || (kind == Kind::kLocmoePlus && c.ecr_order == EcrOrder::kPosition))
      order = Order::kTokenThenSlot;
    if (is_topk_baseline(kind) && c.drop_policy == DropPolicy::kPosition) order = Order::kTokenThenSlot;
    if (is_topk_baseline(kind) && c.drop_policy == DropPolicy::kProbs) order = Order::kProb;
    std::sort(all.begin(), all.end(), [order](const Candidate& x, const Candidate& y) {
      switch (order) {
        case Order::kScore:
          if (x.score != y.score) return x.score > y.score;
          if (x.expert != y.expert) return x.expert < y.expert;
          return x.gid < y.gid;
        case Order::kSlotThenToken:
          return x.slot != y.slot ? x.slot < y.slot : x.gid < y.gid;
        case Order::kTokenThenSlot:
          return x.gid != y.gid ? x.gid < y.gid : x.slot < y.slot;
        case Order::kProb:  // per expert, the most probable first: each keeps its top-C by p
          if (x.prob != y.prob) return x.prob > y.prob;
          if (x.expert != y.expert) return x.expert < y.expert;
          return x.gid < y.gid;
      }
      return false;
    });

    RouteStats st;
    st.step = router.steps_;
    st.global_tokens = T_global;
    st.hidden = H;
    st.num_experts = E;
    for (const double m : topk_mass) st.topk_mass += m;
    const int32_t token_limit = kind == Kind::kExpertChoice ? static_cast<int32_t>(E) : k;
    if (T_global > 0 && kind != Kind::kDropless) {
      st.capacity_factor_capacity = capacity_factor_capacity(c.capacity_factor, k, T_global, E);
      st.capacity = st.capacity_factor_capacity;
    }
    if (kind == Kind::kLocmoePlus && T_global > 0) {
      // C_lb: the smallest capacity in [1, C_cf] keeping tau of the top-k mass (bisection).
      const double target = c.tau * st.topk_mass;
      int64_t lo = 1, hi = st.capacity_factor_capacity;
      st.tau_reached = greedy(all, hi, k, E, T_global, nullptr) >= target;
      if (st.tau_reached) {
        while (lo < hi) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (greedy(all, mid, k, E, T_global, nullptr) >= target) hi = mid; else lo = mid + 1;
        }
      }
      st.capacity_lower_bound = hi;
      router.smoothed_capacity_ =
          router.steps_ == 0 ? static_cast<double>(hi)
                             : c.beta * router.smoothed_capacity_ + (1.0 - c.beta) * static_cast<double>(hi);
      st.capacity_smoothed = router.smoothed_capacity_;
      const int64_t smoothed = static_cast<int64_t>(std::ceil(router.smoothed_capacity_ - 1e-9));
      st.capacity = std::min(std::max(smoothed, c.capacity_floor), st.capacity_factor_capacity);
    }
    if (st.capacity > 0) st.capacity = std::max(st.capacity, c.min_capacity);
    st.kept_mass = greedy(all, st.capacity, token_limit, E, T_global, &accepted);
    if (kind == Kind::kDeepseek && T_global > 0) {
      // Auxiliary-loss-free balancing: the bias follows the loads of this step's selection.
      std::vector<int64_t> load(static_cast<size_t>(E), 0);
      for (const Candidate& cd : all) ++load[static_cast<size_t>(cd.expert)];
      const double mean = static_cast<double>(all.size()) / static_cast<double>(E);
      router.bias_.resize(static_cast<size_t>(E), 0.0);
      for (int64_t e = 0; e < E; ++e) {
        const double l = static_cast<double>(load[static_cast<size_t>(e)]);
        router.bias_[static_cast<size_t>(e)] += c.bias_update_rate * (l < mean ? 1.0 : l > mean ? -1.0 : 0.0);
      }
    }

    std::vector<std::vector<double>> angles(static_cast<size_t>(E));
    for (size_t i = 0; i < all.size(); ++i) {
      if (!accepted[i]) continue;
      st.kept_affinity_sum += all[i].affinity;
      ++st.kept_slots;
      angles[static_cast<size_t>(all[i].expert)].push_back(
          std::acos(std::clamp(static_cast<double>(all[i].affinity), -1.0, 1.0)));
    }
    st.max_angle.assign(static_cast<size_t>(E), std::numeric_limits<double>::quiet_NaN());
    st.p95_angle = st.max_angle;
    st.c_min = st.max_angle;
    for (int64_t e = 0; e < E; ++e) {
      auto& v = angles[static_cast<size_t>(e)];
      if (v.empty()) continue;
      std::sort(v.begin(), v.end());
      const double mx = v.back();
      st.max_angle[static_cast<size_t>(e)] = mx;
      st.p95_angle[static_cast<size_t>(e)] =
          v[static_cast<size_t>(std::max<int64_t>(0, static_cast<int64_t>(std::ceil(0.95 * static_cast<double>(v.size()))) - 1))];
      const double d = std::cos(mx);
      st.c_min[static_cast<size_t>(e)] =
          1.0 / (static_cast<double>(E) * std::erfc(std::sqrt(static_cast<double>(H) * d * d / (2.0 - d * d))));
    }
    if (T_global > 0) ++router.steps_;
    router.stats_ = st;
    return st;
  }

  // The plan of the tokens [gid0, gid0 + T) from the accepted pairs.
  static Result<RoutingPlan> build_plan(const RouterConfig& c, const std::vector<Candidate>& all,
                                        const std::vector<uint8_t>& accepted, const RouteStats& st,
                                        const ExpertPlacement& pl, int rank, int64_t gid0, int64_t T,
                                        const std::vector<int32_t>& unconstrained) {
    const Kind kind = kind_of(c.name);
    const int32_t E = pl.num_experts();
    const int32_t k = kind == Kind::kSwitch ? 1 : kind == Kind::kExpertChoice ? E : c.k;
    RoutingPlan plan;
    plan.num_tokens = static_cast<int32_t>(T);
    plan.k = k;
    plan.num_experts = E;
    plan.num_ranks = pl.num_ranks();
    plan.num_nodes = pl.num_nodes();
    plan.experts_per_rank = pl.experts_per_rank;
    plan.rank = rank;
    plan.global_token_offset = gid0;
    plan.node_of_rank = pl.node_of_rank;
    plan.expert.assign(static_cast<size_t>(T * k), -1);
    plan.weight.assign(static_cast<size_t>(T * k), 0.0f);
    plan.slot_dropped.assign(static_cast<size_t>(T * k), 0);
    plan.capacity = st.capacity;
    plan.capacity_lower_bound = st.capacity_lower_bound;
    plan.weight_rule = kind == Kind::kDeepseek ? RoutingPlan::kWeightOther
                       : !c.renormalize || kind == Kind::kSwitch ? RoutingPlan::kWeightRaw
                       : c.normalize_before_drop && kind != Kind::kExpertChoice ? RoutingPlan::kWeightNominated
                                                                                : RoutingPlan::kWeightAccepted;
    std::vector<int32_t> filled(static_cast<size_t>(T), 0);
    std::vector<const Candidate*> slots(static_cast<size_t>(T * k), nullptr);
    // normalize_before_drop: the sum of p over each token's first k nominations.
    std::vector<double> nominated(static_cast<size_t>(T), 0.0);
    const bool before_drop = c.renormalize && c.normalize_before_drop && kind != Kind::kExpertChoice;
    for (size_t i = 0; i < all.size(); ++i) {
      const Candidate& cd = all[i];
      if (before_drop && cd.gid >= gid0 && cd.gid < gid0 + T && cd.slot < k)
        nominated[static_cast<size_t>(cd.gid - gid0)] += cd.prob;
      if (!accepted[i] || cd.gid < gid0 || cd.gid >= gid0 + T) continue;
      const int64_t t = cd.gid - gid0;
      slots[static_cast<size_t>(t * k + filled[static_cast<size_t>(t)]++)] = &cd;
    }
    for (int64_t t = 0; t < T; ++t) {
      const int32_t n = filled[static_cast<size_t>(t)];
      auto first = slots.begin() + t * k;
      std::sort(first, first + n, [](const Candidate* x, const Candidate* y) {
        return x->score != y->score ? x->score > y->score : x->expert < y->expert;
      });
      double sum = 0.0;
      for (int32_t j = 0; j < n; ++j) sum += first[j]->prob;
      if (before_drop) sum = nominated[static_cast<size_t>(t)];
      const bool raw = !c.renormalize || kind == Kind::kSwitch;
      const double scale = kind == Kind::kDeepseek ? c.routed_scaling_factor : 1.0;
      for (int32_t j = 0; j < n; ++j) {
        plan.expert[static_cast<size_t>(t * k + j)] = first[j]->expert;
        plan.weight[static_cast<size_t>(t * k + j)] =
            raw ? static_cast<float>(first[j]->prob * scale) : static_cast<float>(first[j]->prob / sum * scale);
      }
      const int32_t want = kind == Kind::kExpertChoice ? 0 : unconstrained[static_cast<size_t>(t)];
      for (int32_t j = n; j < std::min(want, k); ++j) plan.slot_dropped[static_cast<size_t>(t * k + j)] = 1;
    }
    return plan;
  }

  // locmoe-opt on the tokens of `segments` (rank, first row, end row of `x`; global ids from gid0,
  // consecutive over the segments): one plan per segment. `group` = the EP group when this process
  // holds one rank's tokens, nullptr when it holds every rank's (route_all_ranks).
  struct Segment {
    int32_t rank;
    int64_t lo, hi;
  };
  static Result<std::vector<RoutingPlan>> route_opt(Router& router, MatrixView x, MatrixView w,
                                                    const std::vector<double>& wnorm, const ExpertPlacement& pl,
                                                    const std::vector<Segment>& segments, int64_t gid0,
                                                    int64_t T_global, Bootstrap* group) {
    const RouterConfig& c = router.config_;
    const int32_t E = pl.num_experts(), k = c.k, R = pl.num_ranks();
    const int64_t T = x.rows;
    const int threads = resolve_threads(c.num_threads);
    // Scores of every segment at once (a row's bits do not depend on the rows around it); a bad
    // row is named within its segment, as the rank holding it would name it.
    Scores sc;
    logits::Gate g;
    const Lend lend_p(router.buf_p_, sc.p), lend_a(router.buf_a_, sc.a), lend_wt(router.buf_wt_, g.wt);
    logits::prepare(w.data, w.rows, w.cols, g);
    const BadRow bad = compute_scores(x, g, wnorm, threads, sc);
    Status local = ok_status();
    for (const Segment& sg : segments)
      if (bad.row >= sg.lo && bad.row < sg.hi)
        local = bad_row({x.data + sg.lo * x.cols, sg.hi - sg.lo, x.cols}, bad.row - sg.lo, bad.ss, "features",
                        "global token", gid0 + sg.lo);
    LOCMOE_RETURN_IF_ERROR(agree(group, local));
    LOCMOE_CHECK_ARG(T_global < (int64_t{1} << 32), "locmoe-opt: {} tokens in the EP group; at most 2^32 - 1",
                     T_global);
    // Link cost of expert e from source rank r, [R, E].
    std::vector<float> cost(static_cast<size_t>(R) * E);
    for (int32_t r = 0; r < R; ++r)
      for (int32_t e = 0; e < E; ++e) {
        const int32_t d = e / pl.experts_per_rank;
        cost[static_cast<size_t>(r) * E + e] =
            d == r ? 0.0f
                   : static_cast<float>(pl.node_of_rank[static_cast<size_t>(d)] == pl.node_of_rank[static_cast<size_t>(r)]
                                            ? c.same_node_cost
                                            : c.cross_node_cost);
      }
    std::vector<int32_t> cost_row(static_cast<size_t>(T));
    for (const Segment& sg : segments)
      std::fill(cost_row.begin() + sg.lo, cost_row.begin() + sg.hi, sg.rank);

    RouteStats st;
    st.step = router.steps_;
    st.global_tokens = T_global;
    st.hidden = w.cols;
    st.num_experts = E;
    st.max_angle.assign(static_cast<size_t>(E), std::numeric_limits<double>::quiet_NaN());
    st.p95_angle = st.max_angle;
    st.c_min = st.max_angle;
    opt::Reducer reducer(group);
    opt::Solution sol;
    sol.expert.assign(static_cast<size_t>(T * k), -1);
    sol.unconstrained.assign(static_cast<size_t>(T), 0);
    if (T_global > 0) {
      st.capacity_factor_capacity = capacity_factor_capacity(c.capacity_factor, k, T_global, E);
      st.capacity = st.capacity_factor_capacity;
      if (c.opt_tau_capacity) {
        // LocMoE+'s rule (lower bound, smoothing, floor, C_cf ceiling) with the bound computed from
        // allreduced per-expert histograms (opt::tau_capacity), not from a gathered greedy.
        LOCMOE_ASSIGN_OR_RETURN(opt::TauBound tb,
                                opt::tau_capacity(sc.p.data(), T, E, k, c.tau, st.capacity_factor_capacity, reducer));
        st.tau_reached = tb.reached;
        st.capacity_lower_bound = tb.capacity;
        router.smoothed_capacity_ =
            router.steps_ == 0 ? static_cast<double>(tb.capacity)
                               : c.beta * router.smoothed_capacity_ + (1.0 - c.beta) * static_cast<double>(tb.capacity);
        st.capacity_smoothed = router.smoothed_capacity_;
        const int64_t smoothed = static_cast<int64_t>(std::ceil(router.smoothed_capacity_ - 1e-9));
        st.capacity = std::min(std::max(smoothed, c.capacity_floor), st.capacity_factor_capacity);
      }
      st.capacity = std::max<int64_t>({st.capacity, c.min_capacity, 1});
      opt::Problem pb;
      pb.tokens = T;
      pb.gid0 = gid0;
      pb.experts = E;
      pb.k = k;
      pb.capacity = st.capacity;
      pb.p = sc.p.data();
      pb.cost = cost.data();
      pb.cost_row = cost_row.data();
      pb.iterations = c.opt_iterations;
      pb.threads = threads;
      LOCMOE_ASSIGN_OR_RETURN(sol, opt::solve(pb, reducer));
    }
    // Masses as fixed-point integers, so their sums do not depend on how tokens split over ranks.
    constexpr double kFixed = 4294967296.0;  // 2^32 per unit of probability
    std::vector<int64_t> sums(5, 0);  // top-k mass, kept mass, kept affinity, objective, kept slots
    std::vector<float> top(static_cast<size_t>(k));
    for (int64_t t = 0; t < T; ++t) {
      const float* pr = sc.p.data() + t * E;
      // The k largest values by insertion (a copy and nth_element per token cost 4 ms at
      // T = 16384, E = 64); the multiset, hence the sum, is the same.
      int32_t n = 0;
      for (int32_t e = 0; e < E; ++e) {
        const float v = pr[e];
        if (n == k && !(v > top[static_cast<size_t>(k - 1)])) continue;
        int32_t i = n < k ? n++ : k - 1;
        for (; i > 0 && top[static_cast<size_t>(i - 1)] < v; --i) top[static_cast<size_t>(i)] = top[static_cast<size_t>(i - 1)];
        top[static_cast<size_t>(i)] = v;
      }
      for (int32_t j = 0; j < k; ++j) sums[0] += std::llround(static_cast<double>(top[static_cast<size_t>(j)]) * kFixed);
      for (int32_t j = 0; j < k; ++j) {
        const int32_t e = sol.expert[static_cast<size_t>(t * k + j)];
        if (e < 0) continue;
        const float p = pr[e], v = p - cost[static_cast<size_t>(cost_row[static_cast<size_t>(t)]) * E + e];
        sums[1] += std::llround(static_cast<double>(p) * kFixed);
        sums[2] += std::llround(static_cast<double>(sc.a[static_cast<size_t>(t * E + e)]) * kFixed);
        sums[3] += std::llround(static_cast<double>(v) * kFixed);
        ++sums[4];
      }
    }
    LOCMOE_RETURN_IF_ERROR(reducer.sum(sums));
    st.topk_mass = static_cast<double>(sums[0]) / kFixed;
    st.kept_mass = static_cast<double>(sums[1]) / kFixed;
    st.kept_affinity_sum = static_cast<double>(sums[2]) / kFixed;
    st.objective = static_cast<double>(sums[3]) / kFixed;
    st.kept_slots = sums[4];
    st.opt_iterations = sol.iterations;
    st.opt_converged = sol.converged;
    st.opt_repaired = sol.repaired;
    st.opt_refilled = sol.refilled;
    st.exchange_rounds = reducer.rounds();
    st.exchange_bytes = reducer.bytes();

    std::vector<RoutingPlan> plans;
    for (const Segment& sg : segments) {
      RoutingPlan plan;
      plan.num_tokens = static_cast<int32_t>(sg.hi - sg.lo);
      plan.k = k;
      plan.num_experts = E;
      plan.num_ranks = R;
      plan.num_nodes = pl.num_nodes();
      plan.experts_per_rank = pl.experts_per_rank;
      plan.rank = sg.rank;
      plan.global_token_offset = gid0 + sg.lo;
      plan.node_of_rank = pl.node_of_rank;
      plan.expert.assign(static_cast<size_t>(plan.num_tokens) * k, -1);
      plan.weight.assign(plan.expert.size(), 0.0f);
      plan.slot_dropped.assign(plan.expert.size(), 0);
      plan.capacity = st.capacity;
      plan.capacity_lower_bound = st.capacity_lower_bound;
      plan.weight_rule = c.renormalize ? RoutingPlan::kWeightAccepted : RoutingPlan::kWeightRaw;
      for (int64_t t = sg.lo; t < sg.hi; ++t) {
        const float* pr = sc.p.data() + t * E;
        int32_t chosen[64];
        int32_t n = 0;
        for (int32_t j = 0; j < k; ++j)
          if (sol.expert[static_cast<size_t>(t * k + j)] >= 0) chosen[n++] = sol.expert[static_cast<size_t>(t * k + j)];
        std::sort(chosen, chosen + n, [&](int32_t a, int32_t b) { return pr[a] != pr[b] ? pr[a] > pr[b] : a < b; });
        double sum = 0.0;
        for (int32_t j = 0; j < n; ++j) sum += pr[chosen[j]];
        const size_t base = static_cast<size_t>((t - sg.lo) * k);
        for (int32_t j = 0; j < n; ++j) {
          plan.expert[base + j] = chosen[j];
          plan.weight[base + j] = c.renormalize ? static_cast<float>(pr[chosen[j]] / sum) : pr[chosen[j]];
        }
        for (int32_t j = n; j < std::min(sol.unconstrained[static_cast<size_t>(t)], k); ++j) plan.slot_dropped[base + j] = 1;
      }
      plans.push_back(std::move(plan));
    }
    if (T_global > 0) ++router.steps_;
    router.stats_ = st;
    return plans;
  }
};

namespace {

// Every rank learns whether any rank's input was rejected; the rejecting rank returns its own
// error, the others one naming it and its reason, so no rank is left waiting in a later collective.
Status agree(Bootstrap* group, Status local) {
  if (!group) return local;
  if (!local.ok()) return group->reject(local);
  return agree_on_input(*group, local).with_context("router input check");
}

// Concatenation in rank order of every rank's `mine` (variable lengths).
template <typename T>
Result<std::vector<T>> gather_v(Bootstrap* group, const std::vector<T>& mine) {
  if (!group) return mine;
  const int64_t n = static_cast<int64_t>(mine.size());
  std::vector<int64_t> counts(static_cast<size_t>(group->size()));
  LOCMOE_RETURN_IF_ERROR(group->allgather(&n, counts.data(), sizeof(n)));
  const int64_t mx = *std::max_element(counts.begin(), counts.end());
  std::vector<T> send(static_cast<size_t>(mx)), recv(static_cast<size_t>(mx) * counts.size());
  std::copy(mine.begin(), mine.end(), send.begin());
  LOCMOE_RETURN_IF_ERROR(group->allgather(send.data(), recv.data(), static_cast<size_t>(mx) * sizeof(T)));
  std::vector<T> out;
  for (size_t r = 0; r < counts.size(); ++r)
    out.insert(out.end(), recv.begin() + static_cast<std::ptrdiff_t>(r * mx),
               recv.begin() + static_cast<std::ptrdiff_t>(r * mx + counts[r]));
  return out;
}

}  // namespace

Status validate(const RouterConfig& c) {
  LOCMOE_CHECK_ARG(std::find(std::begin(kRouterNames), std::end(kRouterNames), c.name) != std::end(kRouterNames),
                   "unknown router '{}' (locmoe+, gshard, switch, expert-choice, node-limited, locmoe, hash, dropless, "
                   "locmoe-opt, deepseek-v3)",
                   c.name);
  LOCMOE_CHECK_ARG(c.k >= 1, "k = {} must be at least 1", c.k);
  LOCMOE_CHECK_ARG(std::isfinite(c.capacity_factor) && c.capacity_factor > 0.0,
                   "capacity_factor = {} must be positive (0 gives capacity 0)", c.capacity_factor);
  LOCMOE_CHECK_ARG(c.tau > 0.0 && c.tau <= 1.0, "tau = {} must be in (0, 1]", c.tau);
  LOCMOE_CHECK_ARG(std::isfinite(c.locality_margin) && c.locality_margin >= 0.0,
                   "locality_margin = {} must be finite and >= 0", c.locality_margin);
  LOCMOE_CHECK_ARG(c.candidates == 0 || c.candidates >= c.k, "candidates l = {} must be 0 (2k) or >= k = {}",
                   c.candidates, c.k);
  LOCMOE_CHECK_ARG(c.beta >= 0.0 && c.beta < 1.0, "beta = {} must be in [0, 1)", c.beta);
  LOCMOE_CHECK_ARG(c.capacity_floor >= 1, "capacity_floor = {} must be >= 1 (capacity 0 keeps nothing)",
                   c.capacity_floor);
  LOCMOE_CHECK_ARG(c.candidate_mass >= 0.0 && c.candidate_mass <= 1.0,
                   "candidate_mass = {} must be 0 (off) or in (0, 1]", c.candidate_mass);
  LOCMOE_CHECK_ARG(c.max_nodes >= 0, "max_nodes = {} must be >= 0", c.max_nodes);
  LOCMOE_CHECK_ARG(c.num_threads >= 0, "num_threads = {} must be >= 0", c.num_threads);
  LOCMOE_CHECK_ARG(std::isfinite(c.cross_node_cost) && c.cross_node_cost >= 0.0,
                   "cross_node_cost = {} must be finite and >= 0", c.cross_node_cost);
  LOCMOE_CHECK_ARG(std::isfinite(c.same_node_cost) && c.same_node_cost >= 0.0,
                   "same_node_cost = {} must be finite and >= 0", c.same_node_cost);
  LOCMOE_CHECK_ARG(c.opt_iterations >= 1, "opt_iterations = {} must be >= 1", c.opt_iterations);
  LOCMOE_CHECK_ARG(static_cast<int32_t>(c.drop_policy) >= 0 && static_cast<int32_t>(c.drop_policy) <= 2,
                   "drop_policy = {} must be slot (0), position (1) or probs (2)", static_cast<int32_t>(c.drop_policy));
  LOCMOE_CHECK_ARG(c.score_function == "sigmoid" || c.score_function == "softmax",
                   "score_function '{}' must be 'sigmoid' or 'softmax'", c.score_function);
  LOCMOE_CHECK_ARG(c.group_score == "top2-sum" || c.group_score == "max", "group_score '{}' must be 'top2-sum' or 'max'",
                   c.group_score);
  LOCMOE_CHECK_ARG(c.groups >= 0, "groups = {} must be >= 0 (0 = one per node)", c.groups);
  LOCMOE_CHECK_ARG(c.topk_groups >= 0, "topk_groups = {} must be >= 0", c.topk_groups);
  LOCMOE_CHECK_ARG(std::isfinite(c.routed_scaling_factor) && c.routed_scaling_factor > 0.0,
                   "routed_scaling_factor = {} must be finite and > 0", c.routed_scaling_factor);
  LOCMOE_CHECK_ARG(std::isfinite(c.bias_update_rate) && c.bias_update_rate >= 0.0,
                   "bias_update_rate = {} must be finite and >= 0", c.bias_update_rate);
  LOCMOE_CHECK_ARG(c.min_capacity >= 0, "min_capacity = {} must be >= 0 (0 = off)", c.min_capacity);
  LOCMOE_CHECK_ARG(kind_of(c.name) != Kind::kLocmoeOpt || c.k <= 64, "locmoe-opt: k = {} must be <= 64", c.k);
  return ok_status();
}

Result<DropPolicy> parse_drop_policy(std::string_view text) {
  if (text == "slot") return DropPolicy::kSlot;
  if (text == "position") return DropPolicy::kPosition;
  if (text == "probs") return DropPolicy::kProbs;
  return error(Code::kInvalidArgument, "drop_policy '{}' must be 'slot', 'position' or 'probs'", text);
}

Result<EcrOrder> parse_ecr_order(std::string_view text) {
  if (text == "affinity") return EcrOrder::kAffinity;
  if (text == "position") return EcrOrder::kPosition;
  return error(Code::kInvalidArgument, "ecr_order '{}' must be 'affinity' or 'position'", text);
}

int32_t ExpertPlacement::num_nodes() const {
  int32_t n = 0;
  for (const int32_t v : node_of_rank) n = std::max(n, v + 1);
  return n;
}

Result<ExpertPlacement> placement_from_cluster(const ClusterMap& cluster, int32_t experts_per_rank) {
  LOCMOE_CHECK_ARG(experts_per_rank > 0, "experts_per_rank = {} must be positive", experts_per_rank);
  LOCMOE_CHECK_ARG(cluster.size() > 0, "cluster map has no ranks");
  ExpertPlacement p;
  p.experts_per_rank = experts_per_rank;
  p.rank = cluster.my_rank;
  for (int r = 0; r < cluster.size(); ++r) p.node_of_rank.push_back(cluster.node_of(r));
  return p;
}

Result<ExpertPlacement> uniform_placement(int32_t nodes, int32_t ranks_per_node, int32_t experts_per_rank,
                                          int32_t rank) {
  LOCMOE_CHECK_ARG(nodes > 0 && ranks_per_node > 0 && experts_per_rank > 0,
                   "cluster shape {} nodes x {} ranks x {} experts must be positive", nodes,
                   ranks_per_node, experts_per_rank);
  LOCMOE_CHECK_RANGE(rank >= 0 && rank < nodes * ranks_per_node, "rank {} out of range [0, {})", rank,
                     nodes * ranks_per_node);
  ExpertPlacement p;
  p.experts_per_rank = experts_per_rank;
  p.rank = rank;
  for (int32_t r = 0; r < nodes * ranks_per_node; ++r) p.node_of_rank.push_back(r / ranks_per_node);
  return p;
}

Result<std::vector<float>> grap_gate(int64_t E, int64_t H) {
  LOCMOE_CHECK_ARG(E > 0 && H > 0, "grap gate needs E = {} and H = {} positive", E, H);
  LOCMOE_CHECK_ARG(H % E == 0, "grap gate needs H % E == 0, got H = {} and E = {}", H, E);
  std::vector<float> w(static_cast<size_t>(E * H), 0.0f);
  const int64_t b = H / E;
  for (int64_t i = 0; i < E; ++i)
    for (int64_t j = i * b; j < (i + 1) * b; ++j)
      w[static_cast<size_t>(i * H + j)] = static_cast<float>(static_cast<double>(E) / static_cast<double>(H));
  return w;
}

Result<Router> Router::create(const RouterConfig& config) {
  LOCMOE_RETURN_IF_ERROR(validate(config));
  return Router(config);
}

void Router::reset() {
  steps_ = 0;
  smoothed_capacity_ = 0.0;
  bias_.clear();
}

Result<RoutingPlan> Router::route(MatrixView features, MatrixView gate, const ExpertPlacement& placement,
                                  Bootstrap* group) {
  Bootstrap* g = group != nullptr && group->size() > 1 ? group : nullptr;
  const int rank = g ? g->rank() : 0, ranks = g ? g->size() : 1;
  std::vector<double> wnorm;
  Status input = RouterImpl::check_inputs(config_, features, gate, placement, rank, ranks);
  if (input.ok()) input = row_norms(gate, "gate", "expert", 0, wnorm);
  if (input.ok() && placement.rank != rank)
    input = error(Code::kInvalidArgument, "placement.rank {} differs from the group rank {}", placement.rank, rank);
  LOCMOE_RETURN_IF_ERROR(agree(g, input));
  if (g) {
    LOCMOE_RETURN_IF_ERROR(check_same_on_all_ranks(*g, static_cast<uint64_t>(gate.cols), "router hidden size"));
    LOCMOE_RETURN_IF_ERROR(check_same_on_all_ranks(*g, static_cast<uint64_t>(gate.rows), "router experts"));
    LOCMOE_RETURN_IF_ERROR(check_same_on_all_ranks(*g, static_cast<uint64_t>(config_.k), "router k"));
  }
  std::vector<int64_t> counts = {features.rows};
  LOCMOE_ASSIGN_OR_RETURN(counts, gather_v(g, counts));
  int64_t gid0 = 0, T_global = 0;
  for (int r = 0; r < ranks; ++r) {
    if (r < rank) gid0 += counts[static_cast<size_t>(r)];
    T_global += counts[static_cast<size_t>(r)];
  }
  if (kind_of(config_.name) == Kind::kLocmoeOpt) {
    LOCMOE_ASSIGN_OR_RETURN(std::vector<RoutingPlan> plans,
                            RouterImpl::route_opt(*this, features, gate, wnorm, placement,
                                                  {{rank, 0, features.rows}}, gid0, T_global, g));
    LOCMOE_RETURN_IF_ERROR(finalize_plan(plans[0], g));
    return std::move(plans[0]);
  }
  logits::Gate lg;
  const Lend lend_wt(buf_wt_, lg.wt);
  logits::prepare(gate.data, gate.rows, gate.cols, lg);
  auto local = RouterImpl::local_phase(config_, features, lg, wnorm, placement, rank, gid0, T_global, bias_);
  LOCMOE_RETURN_IF_ERROR(agree(g, local.ok() ? ok_status() : local.status()));
  std::vector<Candidate> all;
  std::vector<double> mass;
  LOCMOE_ASSIGN_OR_RETURN(all, gather_v(g, local->cands));
  LOCMOE_ASSIGN_OR_RETURN(mass, gather_v(g, local->topk_mass));
  std::vector<uint8_t> accepted;
  const RouteStats st = RouterImpl::select(*this, all, mass, T_global, gate.rows, gate.cols, accepted);
  LOCMOE_ASSIGN_OR_RETURN(RoutingPlan plan, RouterImpl::build_plan(config_, all, accepted, st, placement, rank,
                                                                  gid0, features.rows, local->unconstrained));
  LOCMOE_RETURN_IF_ERROR(finalize_plan(plan, g));
  return plan;
}

Result<std::vector<RoutingPlan>> Router::route_all_ranks(MatrixView features, MatrixView gate,
                                                         const ExpertPlacement& placement) {
  const int R = placement.num_ranks();
  std::vector<double> wnorm;
  LOCMOE_RETURN_IF_ERROR(RouterImpl::check_inputs(config_, features, gate, placement, 0, R));
  LOCMOE_RETURN_IF_ERROR(row_norms(gate, "gate", "expert", 0, wnorm));
  const int64_t T = features.rows;
  if (kind_of(config_.name) == Kind::kLocmoeOpt) {
    std::vector<RouterImpl::Segment> segs;
    for (int r = 0; r < R; ++r) segs.push_back({r, T * r / R, T * (r + 1) / R});
    LOCMOE_ASSIGN_OR_RETURN(std::vector<RoutingPlan> plans,
                            RouterImpl::route_opt(*this, features, gate, wnorm, placement, segs, 0, T, nullptr));
    std::vector<int64_t> global(static_cast<size_t>(gate.rows), 0);
    for (auto& plan : plans) {
      LOCMOE_RETURN_IF_ERROR(finalize_plan(plan, nullptr));
      for (size_t e = 0; e < global.size(); ++e) global[e] += plan.expert_count[e];
    }
    for (auto& plan : plans) plan.global_expert_count = global;
    return plans;
  }
  std::vector<LocalPhase> locals;
  std::vector<Candidate> all;
  std::vector<double> mass;
  logits::Gate lg;
  const Lend lend_wt(buf_wt_, lg.wt);
  logits::prepare(gate.data, gate.rows, gate.cols, lg);
  for (int r = 0; r < R; ++r) {
    const int64_t lo = T * r / R, hi = T * (r + 1) / R;
    const MatrixView part{features.data + lo * features.cols, hi - lo, features.cols};
    LOCMOE_ASSIGN_OR_RETURN(LocalPhase lp, RouterImpl::local_phase(config_, part, lg, wnorm, placement, r, lo, T, bias_));
    all.insert(all.end(), lp.cands.begin(), lp.cands.end());
    mass.insert(mass.end(), lp.topk_mass.begin(), lp.topk_mass.end());
    locals.push_back(std::move(lp));
  }
  std::vector<uint8_t> accepted;
  const RouteStats st = RouterImpl::select(*this, all, mass, T, gate.rows, gate.cols, accepted);
  std::vector<RoutingPlan> plans;
  std::vector<int64_t> global(static_cast<size_t>(gate.rows), 0);
  for (int r = 0; r < R; ++r) {
    const int64_t lo = T * r / R, hi = T * (r + 1) / R;
    LOCMOE_ASSIGN_OR_RETURN(RoutingPlan plan, RouterImpl::build_plan(config_, all, accepted, st, placement, r, lo,
                                                                    hi - lo, locals[static_cast<size_t>(r)].unconstrained));
    LOCMOE_RETURN_IF_ERROR(finalize_plan(plan, nullptr));
    for (size_t e = 0; e < global.size(); ++e) global[e] += plan.expert_count[e];
    plans.push_back(std::move(plan));
  }
  for (auto& p : plans) p.global_expert_count = global;
  return plans;
}

}  // namespace locmoe
