// Routers: LocMoE+ (docs/ROUTING.md, from the LocMoE/LocMoE+ papers) and the
// baselines, behind one interface that returns a RoutingPlan (plan.h).
//
// Every router runs the same three phases:
//   1. local: logits z = x W^T (the router's own kernel), gate probabilities p = softmax(z), affinity
//      a = z / (|x| |w|); each token (or, for expert choice, each expert) nominates candidate
//      (token, expert) pairs;
//   2. global: the candidates of every rank are gathered through the Bootstrap (an allgather: the
//      cost grows with T x candidates, not with H) and every rank runs the same selection on the
//      same list, so every rank derives the same accepted pairs as a single process routing the
//      concatenated tokens would;
//   3. the accepted pairs of this rank's tokens become its plan (finalize_plan fills the counts).
//
// Determinism: the same inputs give the same plan on any number of threads and any split of the
// tokens over ranks. OpenBLAS's threaded sgemm changes the bits with the thread count, so the
// router computes the logits with its own kernel (router/src/logits.h), in which an element's bits
// are a fixed fma chain over h of its own row and expert alone, on its own threads. Every ordering
// breaks ties by (expert id, global token id).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"
#include "locmoe/router/plan.h"
#include "locmoe/topology/cluster.h"

namespace locmoe {

// Order in which LocMoE+'s expert choice (spec step 3) visits candidate pairs.
enum class EcrOrder : int32_t {
  kAffinity = 0,  // descending score s = a + lambda [same node] (default; spec step 3)
  kPosition = 1,  // global token order, each token's candidates in its own score order (paper eq. 6)
};

// Which slots the top-k baselines (gshard, switch, node-limited, locmoe, hash) drop when an expert
// is over capacity.
enum class DropPolicy : int32_t {
  kSlot = 0,      // GShard/DeepSpeed: slot 1 of every token (global order) before any slot 2 (default)
  kPosition = 1,  // token-major: tokens in global order, each token's slots in order
  kProbs = 2,     // Megatron-core "probs": each expert keeps its C most probable tokens (ties: lower id)
};

// Router names accepted by RouterConfig::name.
inline constexpr std::string_view kRouterNames[] = {
    "locmoe+", "gshard", "switch", "expert-choice", "node-limited", "locmoe", "hash", "dropless", "locmoe-opt", "deepseek-v3"};

struct RouterConfig {
  // locmoe+ | gshard | switch | expert-choice | node-limited | locmoe | hash | dropless | locmoe-opt |
  // deepseek-v3.
  std::string name = "locmoe+";
  // Maximum experts per token (switch always uses 1; expert-choice's plans have E slots per token
  // because an expert may pick any token, k only sets the capacity).
  int32_t k = 2;
  // C_cf = ceil(capacity_factor * k * T / E), T = tokens of the whole EP group: the capacity of
  // gshard, switch, expert-choice, node-limited, locmoe and hash, and LocMoE+'s ceiling. > 0.
  double capacity_factor = 1.25;
  // LocMoE+ (spec step 5): fraction of the unconstrained top-k gate mass the capacity lower bound
  // must keep, in (0, 1].
  double tau = 0.9;
  // lambda (spec step 2): score bonus of experts on the token's own node; >= 0. Also used by the
  // `locmoe` baseline.
  double locality_margin = 0.1;
  // l (spec step 2): candidates per token, k <= l <= E; 0 = min(2k, E).
  int32_t candidates = 0;
  // Smoothing of the capacity lower bound across steps, C_t = beta C_{t-1} + (1-beta) C_lb; [0, 1).
  double beta = 0.9;
  // C_floor: the smallest capacity LocMoE+ may use; >= 1.
  int64_t capacity_floor = 1;
  // q (spec "candidates by score sum"): 0 = off; in (0, 1]: a token's candidates are the shortest
  // prefix in score order whose gate probabilities sum to >= q (at least 1, at most l).
  double candidate_mass = 0.0;
  EcrOrder ecr_order = EcrOrder::kAffinity;
  // Combine weight = p[t,e] divided by the sum of p over the token's accepted slots (true), or the
  // raw p (false). Applies to every router but switch, which combines with the raw p (Switch
  // Transformer: y = p_i(x) E_i(x), so the gate gets a gradient through the combine).
  bool renormalize = true;
  // With renormalize: divide by the sum of p over the experts the token chose before capacity
  // dropped any (its first k nominations), as Megatron-core and Mesh-TF's GShard do, instead of
  // over the accepted ones. A dropped slot then loses its share of the weight.
  bool normalize_before_drop = false;
  // The top-k baselines' drop order (DropPolicy).
  DropPolicy drop_policy = DropPolicy::kSlot;
  // M: nodes a token may use. node-limited: 0 = max(1, ceil(k / 2)) (DeepSeek-V3's ratio of
  // 8 experts on 4 nodes); locmoe+: 0 = off, else candidates come from at most M nodes.
  int32_t max_nodes = 0;
  // locmoe-opt (docs/ROUTING.md "## locmoe-opt"): it maximizes the kept gate mass minus these costs,
  // in gate-probability units, per (token, expert) pair whose expert is on another node
  // (cross_node_cost, mu) or on another rank of the token's node (same_node_cost); both >= 0.
  double cross_node_cost = 0.05;
  double same_node_cost = 0.0;
  // locmoe-opt: at most this many price iterations (each one allreduce of E int64 loads); fewer
  // when the prices meet the optimality conditions first. >= 1.
  int32_t opt_iterations = 40;
  // locmoe-opt: capacity by LocMoE+'s rule with `tau`, `beta`, `capacity_floor` and C_cf as the
  // ceiling (true), or C_cf (false). Its lower bound is the smallest C at which the tokens' top-k
  // experts by p, each expert keeping its C most probable, keep tau of the top-k mass, computed
  // from allreduced per-expert histograms (docs/ROUTING.md "## locmoe-opt").
  bool opt_tau_capacity = false;
  // deepseek-v3 (DeepSeek-V3's gate; docs/ROUTING.md "## DeepSeek routing"): scores s = sigmoid(z)
  // ("sigmoid") or softmax(z) ("softmax", DeepSeek-V2). Experts form `groups` groups of E / groups
  // contiguous experts (0 = one group per node; E / R per group = DeepSeek-V2's device limit); a
  // token picks its `topk_groups` best groups (0 = max(1, ceil(k / 2))) by group score: "top2-sum"
  // (V3: the sum of the group's two best s + b) or "max" (V2: its best expert's s + b), then its k
  // best experts by s + b inside them. b is the expert bias of auxiliary-loss-free balancing, used
  // for selection only: after each step b_e += bias_update_rate * sign(mean load - load_e), loads of
  // the selection over the group. Combine weight = s (over the sum of the kept s with renormalize)
  // times routed_scaling_factor.
  std::string score_function = "sigmoid";
  int32_t groups = 0;
  int32_t topk_groups = 0;
  std::string group_score = "top2-sum";
  double routed_scaling_factor = 1.0;
  double bias_update_rate = 0.001;
  // Every router with a capacity: C = max(C, min_capacity) (DeepSpeed's min_capacity, whose default
  // there is 8); 0 = off. >= 0.
  int64_t min_capacity = 0;
  // Host threads for the logits (0 = LOCMOE_NUM_THREADS, whose 0 means this rank's share of the
  // node's cores, locmoe/core/threads.h). Results do not depend on it.
  int32_t num_threads = 0;
};

// Checks every field (ranges above, a known name). Errors name the field and its value.
Status validate(const RouterConfig& config);
Result<EcrOrder> parse_ecr_order(std::string_view text);  // "affinity" | "position"
Result<DropPolicy> parse_drop_policy(std::string_view text);  // "slot" | "position" | "probs"

// Where the experts live: expert e on rank e / experts_per_rank, rank r on node node_of_rank[r].
struct ExpertPlacement {
  int32_t experts_per_rank = 0;
  int32_t rank = 0;                   // this rank
  std::vector<int32_t> node_of_rank;  // [R], nodes numbered 0..N-1

  int32_t num_ranks() const { return static_cast<int32_t>(node_of_rank.size()); }
  int32_t num_experts() const { return experts_per_rank * num_ranks(); }
  int32_t num_nodes() const;
};
Result<ExpertPlacement> placement_from_cluster(const ClusterMap& cluster, int32_t experts_per_rank);
// `nodes` x `ranks_per_node` ranks filling nodes in rank order.
Result<ExpertPlacement> uniform_placement(int32_t nodes, int32_t ranks_per_node,
                                          int32_t experts_per_rank, int32_t rank = 0);

// A row-major float32 matrix owned by the caller: rows x cols, element (i, j) at data[i*cols + j].
struct MatrixView {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// The GrAP gate (spec "Paper-faithful switches"): w_i[j] = E/H for i H/E <= j < (i+1) H/E, else 0;
// returns [E, H] row-major. Needs H % E == 0.
Result<std::vector<float>> grap_gate(int64_t num_experts, int64_t hidden);

// What one routing step decided for the whole EP group (identical on every rank).
struct RouteStats {
  int64_t step = 0;            // 0 for the router's first batch
  int64_t global_tokens = 0;   // T of the whole group
  int64_t hidden = 0;
  int64_t num_experts = 0;
  int64_t capacity = 0;                  // capacity used (0 = none: dropless)
  int64_t capacity_factor_capacity = 0;  // C_cf
  int64_t capacity_lower_bound = 0;      // LocMoE+ (and locmoe-opt with opt_tau_capacity): C_lb of this batch, else 0
  double capacity_smoothed = 0.0;        // the same routers: beta-smoothed C_lb
  bool tau_reached = true;  // LocMoE+: false when even C_cf keeps less than tau of the top-k mass
  double topk_mass = 0.0;   // sum over tokens of their unconstrained top-k gate probabilities
  double kept_mass = 0.0;   // sum of p over accepted slots
  double kept_affinity_sum = 0.0;  // sum of a over accepted slots
  int64_t kept_slots = 0;
  // LocMoE's geometric quantity, per expert over its accepted tokens (spec step 5): the largest and
  // the 95th-percentile angle in radians between w_e and the tokens (NaN: no token), and the
  // closed-form minimum capacity C_min = 1 / (E erfc(sqrt(H d^2 / (2 - d^2)))), d = cos(max angle).
  std::vector<double> max_angle;  // [E]
  std::vector<double> p95_angle;  // [E]
  std::vector<double> c_min;      // [E]
  // locmoe-opt: price iterations run; whether the prices met the optimality conditions (the
  // selection before repair is then the LP optimum); pairs the repair removed and the refill added;
  // sum over kept pairs of p - link cost (the objective).
  int64_t opt_iterations = 0;
  bool opt_converged = false;
  int64_t opt_repaired = 0;
  int64_t opt_refilled = 0;
  double objective = 0.0;
  // locmoe-opt: the step's selection collectives (after the input checks and token counts): how
  // many, and the payload each rank contributes to them in bytes (allreduces of int64 counts).
  int64_t exchange_rounds = 0;
  int64_t exchange_bytes = 0;
};

// A router instance. LocMoE+ keeps its smoothed capacity across route() calls (one instance per MoE
// layer); the others are stateless. Not thread-safe: one call at a time.
class Router {
 public:
  // Validates `config`.
  static Result<Router> create(const RouterConfig& config);

  const RouterConfig& config() const { return config_; }

  // Routes this rank's tokens. features: [T, H] float32, this rank's tokens, which have the global
  // ids following those of lower ranks; gate: [E, H] float32, the same on every rank; placement:
  // E = placement.num_experts(), this rank = placement.rank == group->rank(). group: the EP group
  // (nullptr or size 1 = this process alone). Collective: every rank of the group calls it with
  // the same gate and config. An input error on any rank is returned on every rank.
  Result<RoutingPlan> route(MatrixView features, MatrixView gate, const ExpertPlacement& placement,
                            Bootstrap* group);

  // Routes the tokens of every rank in one process (tools, tests): rank r owns rows
  // [r T / R, (r+1) T / R) of `features`. Returns one plan per rank, equal to what route() returns
  // on each rank of a real group (global_expert_count included). placement.rank is ignored.
  Result<std::vector<RoutingPlan>> route_all_ranks(MatrixView features, MatrixView gate,
                                                   const ExpertPlacement& placement);

  // Diagnostics of the last successful call.
  const RouteStats& last_stats() const { return stats_; }
  // Forgets the smoothed capacity and deepseek-v3's expert bias (the next call is a first step again).
  void reset();
  // deepseek-v3: the expert bias the next route() selects with ([E]; empty before the first call).
  const std::vector<double>& expert_bias() const { return bias_; }

 private:
  explicit Router(const RouterConfig& config) : config_(config) {}
  RouterConfig config_;
  int64_t steps_ = 0;
  double smoothed_capacity_ = 0.0;
  std::vector<double> bias_;
  RouteStats stats_;
  // Buffers lent to each call and kept between calls (the batch's probabilities and affinities,
  // 2 T E floats, and the transposed gate): allocated per call, their page faults cost ~8 ms of
  // system time per call at T = 16384, E = 64. No call reads what an earlier one left there.
  std::vector<float> buf_p_, buf_a_, buf_wt_;

  friend struct RouterImpl;
};

}  // namespace locmoe
