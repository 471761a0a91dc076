#include "locmoe/router/metrics.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "locmoe/core/check.h"

namespace locmoe {
namespace {

// Per-rank quantities that add up over ranks, in one array so one all-reduce sums them.
enum Sum { kDroppedSlots, kDroppedTokens, kCopy0, kCopy1, kCopy2, kNumSums };

void add_local(const RoutingPlan& p, int64_t* sums) {
  sums[kDroppedSlots] += p.dropped_slots;
  sums[kDroppedTokens] += p.dropped_tokens;
  for (int c = 0; c < kNumLinkClasses; ++c) sums[kCopy0 + c] += p.copies[c];
}

RouterMetrics finish(const int64_t* sums, std::span<const int64_t> per_expert, int64_t slots,
                     const RouteStats& st, int64_t hidden, int64_t dtype_bytes) {
  RouterMetrics m;
  m.tokens = st.global_tokens;
  m.experts = static_cast<int64_t>(per_expert.size());
  m.slots_per_token = slots;
  double sum = 0.0, sq = 0.0;
  for (const int64_t c : per_expert) {
    m.max_tokens_per_expert = std::max(m.max_tokens_per_expert, c);
    sum += static_cast<double>(c);
  }
  if (m.experts > 0) {
    m.mean_tokens_per_expert = sum / static_cast<double>(m.experts);
    for (const int64_t c : per_expert) sq += std::pow(static_cast<double>(c) - m.mean_tokens_per_expert, 2);
    const double sd = std::sqrt(sq / static_cast<double>(m.experts));
    m.cv_tokens_per_expert = m.mean_tokens_per_expert > 0 ? sd / m.mean_tokens_per_expert : 0.0;
  }
  m.dropped_slots = sums[kDroppedSlots];
  m.dropped_tokens = sums[kDroppedTokens];
  for (int c = 0; c < kNumLinkClasses; ++c) {
    m.copies[c] = sums[kCopy0 + c];
    m.bytes[c] = m.copies[c] * hidden * dtype_bytes;
  }
  m.kept_gate_mass = st.topk_mass > 0 ? st.kept_mass / st.topk_mass : 0.0;
  m.mean_kept_affinity = st.kept_slots > 0 ? st.kept_affinity_sum / static_cast<double>(st.kept_slots) : 0.0;
  m.capacity = st.capacity;
  m.capacity_factor_capacity = st.capacity_factor_capacity;
  m.capacity_lower_bound = st.capacity_lower_bound;
  m.capacity_smoothed = st.capacity_smoothed;
  constexpr double kDeg = 180.0 / std::numbers::pi;
  for (size_t e = 0; e < st.max_angle.size(); ++e) {
    if (std::isnan(st.max_angle[e])) continue;
    m.max_angle_deg = std::max(m.max_angle_deg, st.max_angle[e] * kDeg);
    m.p95_angle_deg = std::max(m.p95_angle_deg, st.p95_angle[e] * kDeg);
  }
  // LocMoE's bound for the widest angle of the group (per-expert values are in RouteStats).
  if (m.max_angle_deg > 0) {
    const double d = std::cos(m.max_angle_deg / kDeg);
    m.c_min = 1.0 / (static_cast<double>(m.experts) *
                     std::erfc(std::sqrt(static_cast<double>(st.hidden) * d * d / (2.0 - d * d))));
  }
  return m;
}

}  // namespace

RouterMetrics compute_metrics(std::span<const RoutingPlan> plans, const RouteStats& stats, int64_t hidden,
                              int64_t dtype_bytes) {
  int64_t sums[kNumSums] = {};
  std::vector<int64_t> per_expert(static_cast<size_t>(stats.num_experts), 0);
  int64_t slots = 0;
  for (const RoutingPlan& p : plans) {
    add_local(p, sums);
    for (size_t e = 0; e < p.expert_count.size() && e < per_expert.size(); ++e) per_expert[e] += p.expert_count[e];
    slots = p.k;
  }
  return finish(sums, per_expert, slots, stats, hidden, dtype_bytes);
}

Result<RouterMetrics> compute_metrics(const RoutingPlan& mine, const RouteStats& stats, int64_t hidden,
                                      int64_t dtype_bytes, Bootstrap* group) {
  int64_t sums[kNumSums] = {};
  add_local(mine, sums);
  if (group != nullptr && group->size() > 1)
    LOCMOE_RETURN_IF_ERROR(group->allreduce(sums, sums, kNumSums, DataType::kInt64, ReduceOp::kSum)
                               .with_context("summing router metrics"));
  LOCMOE_CHECK_ARG(static_cast<int64_t>(mine.global_expert_count.size()) == stats.num_experts,
                   "plan has {} global expert counts but the stats {} experts",
                   mine.global_expert_count.size(), stats.num_experts);
  return finish(sums, mine.global_expert_count, mine.k, stats, hidden, dtype_bytes);
}

}  // namespace locmoe
