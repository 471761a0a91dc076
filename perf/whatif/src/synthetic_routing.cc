#include <cmath>
#include <algorithm>
#include <random>

#include "locmoe/core/check.h"
#include "locmoe/perf/whatif.h"
#include "locmoe/router/router.h"

namespace locmoe::whatif {

Result<std::vector<RoutingPlan>> synthetic_plans(const SyntheticRouting& s, const ClusterModel& c, RouteStats* stats) {
  const int R = c.size();
  LOCMOE_CHECK_ARG(s.tokens_per_rank > 0 && s.route_hidden > 0, "synthetic routing: tokens {} and route hidden {} must be > 0",
                   s.tokens_per_rank, s.route_hidden);
  LOCMOE_CHECK_ARG(s.experts > 0 && s.experts % R == 0, "synthetic routing: {} experts do not divide over {} ranks",
                   s.experts, R);
  const int64_t H = s.route_hidden, E = s.experts, T = int64_t(s.tokens_per_rank) * R;
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  std::vector<float> gate(size_t(E * H)), x(size_t(T * H));
  for (float& g : gate) g = n01(rng);
  std::uniform_int_distribution<int64_t> pick(0, E - 1);
  const float noise = 1.f / std::sqrt(float(H));
  for (int64_t t = 0; t < T; ++t) {
    const float* g = &gate[size_t(pick(rng) * H)];
    float norm = 0;
    for (int64_t j = 0; j < H; ++j) norm += g[j] * g[j];
    const float scale = float(s.affinity) / std::sqrt(norm);
    for (int64_t j = 0; j < H; ++j) x[size_t(t * H + j)] = scale * g[j] + noise * n01(rng);
  }
  LOCMOE_ASSIGN_OR_RETURN(Router router, Router::create(s.router));
  LOCMOE_ASSIGN_OR_RETURN(ExpertPlacement placement,
                          uniform_placement(c.nodes, c.ranks_per_node, int32_t(E / R)));
  auto plans = router.route_all_ranks(MatrixView{x.data(), T, H}, MatrixView{gate.data(), E, H}, placement);
  if (stats != nullptr && plans.ok()) *stats = router.last_stats();
  return plans;
}

RouterExchange router_exchange(const RouterConfig& rc, const RouteStats& st, const ClusterModel& c) {
  RouterExchange x;
  const int64_t R = c.size();
  const double hops = R > 1 ? std::ceil(std::log2(static_cast<double>(R))) : 0.0;
  const double lat = hops * c.inter.latency_s, bw = c.inter.bw > 0 ? c.inter.bw : 1e300;
  // What both routers run besides their selection (route_exchange's counts at 2..32 ranks): 8
  // collectives (error agreements, shape checks, token counts, finalize_plan's allreduce of the E
  // expert counts), 48 + 8 E bytes sent, 48 (R - 1) bytes more received.
  const int64_t E = st.num_experts;
  x.collectives = 8;
  x.bytes_sent = 48 + 8 * E;
  x.bytes_received = x.bytes_sent + 48 * (R - 1);
  double allreduced = 8.0 * static_cast<double>(E), gathered_bytes = 0;
  if (rc.name == "locmoe-opt") {
    x.collectives += st.exchange_rounds;
    x.bytes_sent += st.exchange_bytes;
    x.bytes_received += st.exchange_bytes;
    allreduced += static_cast<double>(st.exchange_bytes);
  } else if (rc.name == "locmoe+") {
    // Two allgathers (candidates, 32 bytes each, l per token; top-k masses, 8 per token) and their
    // two 8-byte count allgathers; even token counts assumed (the allgather pads to the largest).
    const int64_t l = rc.candidates > 0 ? rc.candidates : std::min<int64_t>(2 * rc.k, E);
    const int64_t gathered = st.global_tokens * (32 * l + 8);
    x.collectives += 4;
    x.bytes_sent += gathered / R + 16;
    x.bytes_received += gathered + 16 * R;
    gathered_bytes = static_cast<double>(gathered);
  } else {
    return RouterExchange{};
  }
  x.seconds = static_cast<double>(x.collectives) * lat + 2.0 * allreduced / bw + gathered_bytes / bw;
  return x;
}

}  // namespace locmoe::whatif
