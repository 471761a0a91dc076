#include "locmoe/router/finalize.h"

#include <cmath>

#include "locmoe/core/check.h"

namespace locmoe {

namespace {

// Checks the plan and fills its local counts.
Status finalize_local(RoutingPlan& p) {
  const int64_t T = p.num_tokens, k = p.k, E = p.num_experts, R = p.num_ranks, N = p.num_nodes;
  LOCMOE_CHECK_ARG(T >= 0 && k >= 0, "plan shape T={} k={} must be non-negative", T, k);
  LOCMOE_CHECK_ARG(R > 0 && N > 0 && N <= R, "plan has {} ranks on {} nodes", R, N);
  LOCMOE_CHECK_ARG(p.experts_per_rank > 0 && E == p.experts_per_rank * R,
                   "plan has {} experts, expected experts_per_rank {} x ranks {}", E,
                   p.experts_per_rank, R);
  LOCMOE_CHECK_RANGE(p.rank >= 0 && p.rank < R, "plan rank {} out of range [0, {})", p.rank, R);
  LOCMOE_CHECK_ARG(static_cast<int64_t>(p.node_of_rank.size()) == R,
                   "node_of_rank has {} entries, expected {}", p.node_of_rank.size(), R);
  for (int64_t r = 0; r < R; ++r)
    LOCMOE_CHECK_RANGE(p.node_of_rank[r] >= 0 && p.node_of_rank[r] < N,
                       "node_of_rank[{}] = {} out of range [0, {})", r, p.node_of_rank[r], N);
  const size_t slots = static_cast<size_t>(T * k);
  LOCMOE_CHECK_ARG(p.expert.size() == slots && p.weight.size() == slots && p.slot_dropped.size() == slots,
                   "plan slot arrays have sizes {}/{}/{}, expected T*k = {}", p.expert.size(),
                   p.weight.size(), p.slot_dropped.size(), slots);

  p.expert_count.assign(E, 0);
  p.rank_count.assign(R, 0);
  p.node_count.assign(N, 0);
  for (int64_t& c : p.copies) c = 0;
  p.dropped_slots = 0;
  p.dropped_tokens = 0;
  const PlanView v = p.view();
  for (int64_t t = 0; t < T; ++t) {
    bool any = false;
    for (int64_t j = 0; j < k; ++j) {
      const size_t s = static_cast<size_t>(t * k + j);
      const int32_t e = p.expert[s];
      p.dropped_slots += p.slot_dropped[s] != 0;
      if (e == -1) continue;
      LOCMOE_CHECK_RANGE(e >= 0 && e < E, "token {} slot {}: expert id {} out of range [0, {})", t, j, e, E);
      LOCMOE_CHECK_ARG(std::isfinite(p.weight[s]) && p.weight[s] >= 0.0f,
                       "token {} slot {}: weight {} must be finite and non-negative", t, j, p.weight[s]);
      any = true;
      ++p.expert_count[e];
      if (!first_slot_for_rank(v, static_cast<int32_t>(t), static_cast<int32_t>(j))) continue;
      const int32_t r = rank_of_expert(v, e);
      ++p.rank_count[r];
      ++p.node_count[p.node_of_rank[r]];
      ++p.copies[link_class(v, r)];
    }
    p.dropped_tokens += !any && k > 0;
  }
  p.expert_offset.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) p.expert_offset[e + 1] = p.expert_offset[e] + p.expert_count[e];
  p.rank_offset.assign(R + 1, 0);
  for (int64_t r = 0; r < R; ++r) p.rank_offset[r + 1] = p.rank_offset[r] + p.rank_count[r];

  p.global_expert_count.assign(p.expert_count.begin(), p.expert_count.end());
  return ok_status();
}

}  // namespace

Status finalize_plan(RoutingPlan& p, Bootstrap* group) {
  Status local = finalize_local(p);
  if (group != nullptr && group->size() > 1) {
    // A rank whose plan is bad joins its peers' allreduce as a rejecting rank: they fail at once
    // naming it and its reason, instead of waiting for it until the deadline.
    if (!local.ok()) return group->reject(local);
    LOCMOE_RETURN_IF_ERROR(group->allreduce(p.global_expert_count.data(), p.global_expert_count.data(),
                                            p.global_expert_count.size(), DataType::kInt64,
                                            ReduceOp::kSum)
                               .with_context("summing expert counts over the EP group"));
  }
  return local;
}

}  // namespace locmoe
