// The routing plan: the router's output, reused by dispatch, combine and both backwards.
//
// A plan covers the tokens of ONE rank (its local tokens, rows [0, num_tokens) of that rank's
// features), routed against the experts of the whole EP group. Experts are placed contiguously:
// expert e lives on rank e / experts_per_rank and on node node_of_rank[that rank].
//
// Two views of the same data:
//   * RoutingPlan (host, owning, std::vector) is what routers return.
//   * PlanView (plain pointers and integers, no STL) is what kernels take; it is valid on the host
//     and, when the arrays are copied to the device, on the device (see plan_view()).
//
// Slots: each token has k slots. expert[t*k + j] is the j-th accepted expert of token t or -1
// (slot unused or dropped); weight[t*k + j] its combine weight (0 for -1 slots). Accepted slots
// come first, in descending router score; slot_dropped[t*k + j] = 1 marks a slot that the
// unconstrained router would have filled but capacity (or another rule) dropped.
//
// Copies: dispatch sends ONE copy of a token to each distinct destination *rank* among its
// accepted experts (the expert list travels alongside), so byte predictions count (token, rank)
// pairs, not (token, expert) pairs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "locmoe/core/hd.h"

namespace locmoe {

// Where a copy goes relative to its source rank.
enum LinkClass : int32_t { kSameRank = 0, kSameNode = 1, kCrossNode = 2, kNumLinkClasses = 3 };

// Device-visible, non-owning view. All pointers refer to arrays of the owning RoutingPlan (or
// their device copies); sizes are given by the integer fields.
struct PlanView {
  int32_t num_tokens;        // T: local tokens of this rank
  int32_t k;                 // slots per token
  int32_t num_experts;       // E: experts of the whole EP group
  int32_t num_ranks;         // R: ranks of the EP group
  int32_t num_nodes;         // N
  int32_t experts_per_rank;  // E / R
  int32_t rank;              // this rank
  const int32_t* node_of_rank;  // [R]
  const int32_t* expert;        // [T*k], -1 = none
  const float* weight;          // [T*k]
  const uint8_t* slot_dropped;  // [T*k]
};

LOCMOE_HD int32_t rank_of_expert(const PlanView& p, int32_t expert) {
  return expert / p.experts_per_rank;
}
LOCMOE_HD int32_t node_of_expert(const PlanView& p, int32_t expert) {
  return p.node_of_rank[rank_of_expert(p, expert)];
}
LOCMOE_HD LinkClass link_class(const PlanView& p, int32_t dest_rank) {
  if (dest_rank == p.rank) return kSameRank;
  return p.node_of_rank[dest_rank] == p.node_of_rank[p.rank] ? kSameNode : kCrossNode;
}
// True when slot j of token t is the first slot of that token going to its destination rank,
// i.e. the slot that owns the token's single copy to that rank.
LOCMOE_HD bool first_slot_for_rank(const PlanView& p, int32_t t, int32_t j) {
  const int32_t e = p.expert[t * p.k + j];
  if (e < 0) return false;
  const int32_t r = rank_of_expert(p, e);
  for (int32_t i = 0; i < j; ++i) {
    const int32_t ei = p.expert[t * p.k + i];
    if (ei >= 0 && rank_of_expert(p, ei) == r) return false;
  }
  return true;
}

// Owning host plan. Counts and offsets are derived from expert[] by finalize_plan() (router/).
struct RoutingPlan {
  int32_t num_tokens = 0;
  int32_t k = 0;
  int32_t num_experts = 0;
  int32_t num_ranks = 1;
  int32_t num_nodes = 1;
  int32_t experts_per_rank = 0;
  int32_t rank = 0;
  int64_t global_token_offset = 0;  // global id of local token 0 (ties, hashing)

  std::vector<int32_t> node_of_rank;  // [R]
  std::vector<int32_t> expert;        // [T*k]
  std::vector<float> weight;          // [T*k]
  std::vector<uint8_t> slot_dropped;  // [T*k]

  // Derived (finalize_plan):
  std::vector<int32_t> expert_count;   // [E] accepted (token, expert) slots of local tokens
  std::vector<int64_t> expert_offset;  // [E+1] exclusive prefix sum of expert_count
  std::vector<int32_t> rank_count;     // [R] token copies from this rank to each rank
  std::vector<int64_t> rank_offset;    // [R+1] exclusive prefix sum of rank_count
  std::vector<int32_t> node_count;     // [N] token copies from this rank to each node's ranks
  std::vector<int64_t> global_expert_count;  // [E] accepted slots over the whole EP group
  int64_t copies[kNumLinkClasses] = {0, 0, 0};  // token copies per link class
  int64_t dropped_slots = 0;   // slots with slot_dropped = 1
  int64_t dropped_tokens = 0;  // tokens with no accepted slot

  // Capacity (routers that use one; 0 = none): the per-expert capacity used for this batch and
  // LocMoE+'s lower-bound estimate for it (spec step 5).
  int64_t capacity = 0;
  int64_t capacity_lower_bound = 0;

  // How the router formed the weights (gate_grad's combine_weight_backward follows it): unknown
  // (a plan built from caller arrays), raw p, p renormalized over the accepted experts, or p over
  // the sum of the token's first k nominations before the drop (RouterConfig::normalize_before_drop).
  // kWeightOther: not a function of softmax(z) (deepseek-v3: sigmoid scores, scaling factor).
  enum WeightRule : int32_t {
    kWeightUnknown = 0, kWeightRaw = 1, kWeightAccepted = 2, kWeightNominated = 3, kWeightOther = 4
  };
  int32_t weight_rule = kWeightUnknown;

  PlanView view() const {
    return PlanView{num_tokens, k, num_experts, num_ranks, num_nodes, experts_per_rank, rank,
                    node_of_rank.data(), expert.data(), weight.data(), slot_dropped.data()};
  }
  // Bytes this rank sends per link class for rows of `hidden` elements of `dtype_bytes` each.
  int64_t predicted_bytes(LinkClass link, int64_t hidden, int64_t dtype_bytes) const {
    return copies[link] * hidden * dtype_bytes;
  }
};

}  // namespace locmoe
