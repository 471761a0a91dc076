#include <cmath>
#include <random>

#include "locmoe/core/check.h"
#include "locmoe/perf/whatif.h"
#include "locmoe/router/router.h"

namespace locmoe::whatif {

Result<std::vector<RoutingPlan>> synthetic_plans(const SyntheticRouting& s, const ClusterModel& c) {
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
  return router.route_all_ranks(MatrixView{x.data(), T, H}, MatrixView{gate.data(), E, H}, placement);
}

}  // namespace locmoe::whatif
