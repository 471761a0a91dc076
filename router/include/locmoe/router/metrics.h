// Metrics of a routing step, computed from the plans (counts, copies) and the router's RouteStats
// (gate mass, affinity, capacity): what `locmoe-route` prints and docs/PERFORMANCE.md tabulates.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"
#include "locmoe/router/plan.h"
#include "locmoe/router/router.h"

namespace locmoe {

struct RouterMetrics {
  int64_t tokens = 0;        // T of the whole EP group
  int64_t experts = 0;
  int64_t slots_per_token = 0;
  // Accepted (token, expert) slots per expert over the group.
  int64_t max_tokens_per_expert = 0;
  double mean_tokens_per_expert = 0.0;
  double cv_tokens_per_expert = 0.0;  // population standard deviation / mean (0 when mean is 0)
  int64_t dropped_slots = 0;          // slots the unconstrained router fills that were dropped
  int64_t dropped_tokens = 0;         // tokens with no accepted expert
  int64_t copies[kNumLinkClasses] = {0, 0, 0};  // token copies staying on rank / on node / crossing
  int64_t bytes[kNumLinkClasses] = {0, 0, 0};   // copies x hidden x dtype bytes
  double kept_gate_mass = 0.0;        // sum of kept slots' p / sum of every token's top-k p
  double mean_kept_affinity = 0.0;    // mean cosine of the kept slots
  int64_t capacity = 0;               // capacity used (0: none)
  int64_t capacity_factor_capacity = 0;
  int64_t capacity_lower_bound = 0;   // LocMoE+'s C_lb (0 for other routers)
  double capacity_smoothed = 0.0;
  double max_angle_deg = 0.0;         // largest angle over all experts (degrees)
  double p95_angle_deg = 0.0;         // largest per-expert 95th-percentile angle (degrees)
  double c_min = 0.0;                 // LocMoE C_min with d = cos(max_angle_deg) (may be inf)
};

// From the plans of every rank of the group (route_all_ranks) and the step's stats.
// hidden / dtype_bytes size the predicted bytes.
RouterMetrics compute_metrics(std::span<const RoutingPlan> plans, const RouteStats& stats,
                              int64_t hidden, int64_t dtype_bytes);
// From this rank's plan; sums the per-rank parts over `group` (collective; nullptr = alone).
Result<RouterMetrics> compute_metrics(const RoutingPlan& mine, const RouteStats& stats, int64_t hidden,
                                      int64_t dtype_bytes, Bootstrap* group);

}  // namespace locmoe
