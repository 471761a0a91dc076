/* locmoe C API: expert-parallel dispatch and combine of Mixture-of-Experts tokens.
 *
 * Conventions (every function below follows them):
 *  - Every function returns a locmoe_status_t (LOCMOE_OK = 0, the other values are those of
 *    locmoe::Code). On an error, locmoe_last_error() returns a message naming the bad value; it
 *    is thread-local and stays valid until the next failing call on the same thread. No C++
 *    exception crosses this API (an unexpected one becomes LOCMOE_ERR_INTERNAL).
 *  - Objects are opaque handles created by locmoe_*_create and released by locmoe_*_destroy
 *    (which accept NULL). Out-parameters are written only on success.
 *  - Config structs start with `struct_size`: initialize them with their _INIT macro (which sets
 *    it to sizeof the struct this header declares) and change the fields you need. A library built
 *    from a newer header accepts the older, shorter struct and uses defaults for the missing fields.
 *  - Collective: functions marked so must be called by every rank of the group in the same order
 *    (a rank with no tokens too); a rank that never arrives makes the others fail with
 *    LOCMOE_ERR_TIMEOUT after LOCMOE_TIMEOUT_S seconds instead of hanging. A rank that refuses
 *    its own arguments (or a binding's refusal, locmoe_refuse_next_call) to locmoe_group_create,
 *    locmoe_group_allreduce_sum, locmoe_plan_create, locmoe_route(_ex), locmoe_dispatcher_create
 *    or locmoe_dispatch still takes its turn: the other ranks fail at once with
 *    LOCMOE_ERR_MISMATCH naming that rank and its reason, and the group stays usable.
 *    locmoe_combine and the backwards: see locmoe_dispatch. A rank calling a different
 *    collective of the group than its peers is LOCMOE_ERR_MISMATCH on every rank, naming it and
 *    both calls.
 *  - Rows: a [rows, hidden] block of tokens is contiguous, row-major, of the dispatcher's dtype
 *    (LOCMOE_DTYPE_F32: float; LOCMOE_DTYPE_BF16: bfloat16 as uint16_t bits). Buffers are owned
 *    by the caller and live in the dispatcher's memory kind (host memory for LOCMOE_MEMORY_HOST,
 *    CUDA device memory for LOCMOE_MEMORY_DEVICE, where `stream` is the cudaStream_t the work is
 *    enqueued on; NULL = the default stream; ignored on the host).
 */
#ifndef LOCMOE_LOCMOE_H_
#define LOCMOE_LOCMOE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status ------------------------------------------------------------------------------ */
typedef int32_t locmoe_status_t;
#define LOCMOE_OK 0
#define LOCMOE_ERR_INVALID_ARGUMENT 1 /* a caller-supplied value is wrong (shape, id, NULL) */
#define LOCMOE_ERR_OUT_OF_RANGE 2     /* an index or size outside what is allowed */
#define LOCMOE_ERR_NOT_FOUND 3
#define LOCMOE_ERR_PARSE 4
#define LOCMOE_ERR_UNSUPPORTED 5      /* valid request this build or machine cannot serve */
#define LOCMOE_ERR_MISMATCH 6         /* ranks disagree (hidden size, dtype, counts) */
#define LOCMOE_ERR_TIMEOUT 7          /* a peer did not arrive within LOCMOE_TIMEOUT_S */
#define LOCMOE_ERR_PEER_FAILURE 8
#define LOCMOE_ERR_SYSTEM 9           /* an OS / MPI / CUDA call failed */
#define LOCMOE_ERR_INTERNAL 10        /* a locmoe bug */

/* Message of the last failing call on this thread ("" when none). Owned by the library. */
const char* locmoe_last_error(void);
/* Local, for bindings that check arguments the C API cannot see (an array's dtype, strides,
 * memory): this thread's next collective call (the functions listed under Collective in the
 * conventions, locmoe_combine and the backwards included) refuses with `message` (UTF-8, cut at
 * 480 bytes for the peers; NULL = "(no reason given)") instead of using its arguments: it takes
 * its turn exactly as it does when it refuses an argument of its own, so the other ranks learn of
 * it as they do then, and it returns LOCMOE_ERR_INVALID_ARGUMENT with `message`. The group,
 * dispatcher and handle arguments of that call must still be valid (a NULL one is refused as
 * usual and the refusal is dropped). */
void locmoe_refuse_next_call(const char* message);
/* Short name of a status ("ok", "invalid argument", ...). Static string. */
const char* locmoe_status_name(locmoe_status_t status);
/* Library version, "MAJOR.MINOR.PATCH". Static string. */
const char* locmoe_library_version(void);

/* ---- Enumerations -------------------------------------------------------------------------- */
typedef int32_t locmoe_dtype_t;
#define LOCMOE_DTYPE_F32 0  /* float */
#define LOCMOE_DTYPE_BF16 1 /* bfloat16 stored as uint16_t (the upper half of a float) */

typedef int32_t locmoe_memory_t;
#define LOCMOE_MEMORY_HOST 0
#define LOCMOE_MEMORY_DEVICE 1

typedef int32_t locmoe_bootstrap_t;
#define LOCMOE_BOOTSTRAP_AUTO 0 /* LOCMOE_BOOTSTRAP (mpi | tcp | self | auto); "auto": MPI when
                                   launched by mpirun or when MPI is initialized, else a TCP
                                   rendezvous when torchrun's RANK / WORLD_SIZE are set, else
                                   this process alone */
#define LOCMOE_BOOTSTRAP_MPI 1  /* MPI_COMM_WORLD; MPI is initialized here when the caller did not */
#define LOCMOE_BOOTSTRAP_SELF 2 /* this process alone */

typedef int32_t locmoe_a2a_algo_t;
#define LOCMOE_A2A_AUTO 0
#define LOCMOE_A2A_FLAT 1
#define LOCMOE_A2A_HIERARCHICAL 2

/* ---- Group: the ranks of one expert-parallel group ------------------------------------------ */
typedef struct locmoe_group_s* locmoe_group_t;

typedef struct locmoe_group_config_t {
  uint32_t struct_size;         /* sizeof(locmoe_group_config_t) (set by the _INIT macro) */
  locmoe_bootstrap_t bootstrap; /* how ranks find each other */
  locmoe_a2a_algo_t a2a_algo;   /* all-to-all algorithm (AUTO: LOCMOE_A2A_ALGO) */
  const char* transport;        /* "mpi" | "ucx" | "nccl"; NULL = LOCMOE_TRANSPORT. Borrowed. */
  double timeout_s;             /* deadline of every wait on a peer, seconds; 0 = LOCMOE_TIMEOUT_S;
                                   negative or NaN refused. Must be the same on every rank */
} locmoe_group_config_t;
#define LOCMOE_GROUP_CONFIG_INIT \
  { (uint32_t)sizeof(locmoe_group_config_t), LOCMOE_BOOTSTRAP_AUTO, LOCMOE_A2A_AUTO, NULL, 0.0 }

/* Collective. Builds the bootstrap, the cluster map (LOCMOE_HOSTID emulates nodes) and the
 * communicator. `config` may be NULL (defaults). The timeout, transports, all-to-all algorithm
 * and LOCMOE_CHUNK_BYTES must agree across ranks: LOCMOE_ERR_MISMATCH on every rank otherwise,
 * naming rank 0's and the differing rank's values. *out: a new group; destroy it before MPI is
 * finalized (MPI initialized by this call is finalized at process exit, except after a peer
 * failed or timed out: then MPI_Finalize, which would wait for that peer, is skipped). */
locmoe_status_t locmoe_group_create(const locmoe_group_config_t* config, locmoe_group_t* out);
/* Collective when the group is healthy (its ranks close together); after an error, local. */
void locmoe_group_destroy(locmoe_group_t group);
/* Not collective, never waits: tells every other rank of the group that this rank gives up
 * (e.g. an exception is ending its program). A peer waiting in, or later calling, a collective
 * of the group fails at once with LOCMOE_ERR_PEER_FAILURE and a message naming this rank and
 * `message` (UTF-8, cut at 480 bytes; NULL allowed). Afterwards the group is unusable on every
 * rank that learned of it, this one included (destroy it). */
locmoe_status_t locmoe_group_abort(locmoe_group_t group, const char* message);
/* locmoe_group_abort on every live group of this process (for an exception or signal hook). */
void locmoe_abort_all(const char* message);
/* This rank, the number of ranks, the number of nodes, and the node of rank `rank`. */
locmoe_status_t locmoe_group_rank(locmoe_group_t group, int32_t* rank);
locmoe_status_t locmoe_group_size(locmoe_group_t group, int32_t* size);
locmoe_status_t locmoe_group_num_nodes(locmoe_group_t group, int32_t* num_nodes);
locmoe_status_t locmoe_group_node_of(locmoe_group_t group, int32_t rank, int32_t* node);
/* Collective: sum of `count` doubles over the group, in place (`values`: host memory [count]). */
locmoe_status_t locmoe_group_allreduce_sum(locmoe_group_t group, double* values, int64_t count);

/* ---- Plan: where each local token goes ----------------------------------------------------- */
typedef struct locmoe_plan_s* locmoe_plan_t;

/* Collective (sums the expert counts over the group). A plan for this rank's `num_tokens` tokens
 * with `k` slots each, experts placed `experts_per_rank` per rank (expert e on rank
 * e / experts_per_rank). expert: int32 [num_tokens*k], the global expert of slot j of token t at
 * t*k+j, -1 = no expert; weight: float [num_tokens*k], combine weights (finite, >= 0; ignored for
 * -1 slots); slot_dropped: uint8 [num_tokens*k] or NULL, 1 marks a slot that capacity dropped
 * (counted in the statistics). All three host memory, copied (the caller keeps ownership). */
locmoe_status_t locmoe_plan_create(locmoe_group_t group, int32_t num_tokens, int32_t k,
                                   int32_t experts_per_rank, const int32_t* expert,
                                   const float* weight, const uint8_t* slot_dropped,
                                   locmoe_plan_t* out);
void locmoe_plan_destroy(locmoe_plan_t plan);

typedef struct locmoe_plan_info_t {
  uint32_t struct_size; /* sizeof(locmoe_plan_info_t) */
  int32_t num_tokens;
  int32_t k;
  int32_t num_experts;
  int64_t dropped_slots;  /* slots marked dropped */
  int64_t dropped_tokens; /* tokens with no accepted slot */
  int64_t copies[3];      /* token copies sent to: [0] this rank, [1] its node, [2] other nodes */
} locmoe_plan_info_t;
#define LOCMOE_PLAN_INFO_INIT { (uint32_t)sizeof(locmoe_plan_info_t), 0, 0, 0, 0, 0, { 0, 0, 0 } }
locmoe_status_t locmoe_plan_info(locmoe_plan_t plan, locmoe_plan_info_t* info);
/* Copies the plan's slots out: expert int32 [T*k], weight float [T*k] (either may be NULL). */
locmoe_status_t locmoe_plan_slots(locmoe_plan_t plan, int32_t* expert, float* weight);

/* ---- Router: LocMoE+ or a baseline turns features into a plan ------------------------------- */
typedef struct locmoe_router_s* locmoe_router_t;

typedef struct locmoe_router_config_t {
  uint32_t struct_size;   /* sizeof(locmoe_router_config_t) */
  const char* name;       /* "locmoe+" | "gshard" | "switch" | "expert-choice" | "node-limited" |
                             "locmoe" | "hash" | "dropless" | "locmoe-opt" (its costs at their
                             defaults, router.h); NULL = "locmoe+". Borrowed. */
  int32_t k;              /* experts per token (> 0) */
  double capacity_factor; /* C_cf = ceil(capacity_factor * k * T / E), T over the group (> 0) */
  double tau;             /* LocMoE+: gate mass the capacity lower bound keeps, (0, 1] */
  double locality_margin; /* score bonus of experts on the token's own node (>= 0) */
  int32_t renormalize;    /* 1: combine weights renormalized over the accepted experts; 0: raw p */
  /* Added after the first release: a caller's older, shorter struct gets these defaults. */
  int32_t candidates;     /* LocMoE+: candidates per token, k <= l <= E; 0 = min(2k, E) */
  double beta;            /* LocMoE+: smoothing of C_lb across calls, [0, 1) (default 0.9) */
  int64_t capacity_floor; /* LocMoE+: smallest capacity it may use, >= 1 (default 1) */
  int32_t max_nodes;      /* node-limited / locmoe+: nodes a token may use; 0 = the router's default */
  /* Added in the third version: the routing conventions of today's trainers and locmoe-opt's
   * costs (the C++ RouterConfig, router/include/locmoe/router/router.h, says what each does; a
   * shorter struct gets the defaults below). Strings are borrowed, NULL = the default. */
  double cross_node_cost;       /* locmoe-opt: cost of a pair whose expert is on another node, >= 0 (0.05) */
  double same_node_cost;        /* locmoe-opt: ... on another rank of the token's node, >= 0 (0) */
  int32_t opt_iterations;       /* locmoe-opt: price iterations at most, >= 1 (40) */
  int32_t normalize_before_drop; /* 1: renormalize over the first k nominations, before drops (0) */
  int64_t min_capacity;         /* every router with a capacity: C = max(C, min_capacity); 0 = off (0) */
  const char* drop_policy;      /* top-k baselines: "slot" (GShard) | "position" | "probs" (Megatron) */
  const char* ecr_order;        /* LocMoE+: "affinity" | "position" */
  double candidate_mass;        /* LocMoE+: q, candidates by score sum; 0 = off, else (0, 1] (0) */
  const char* score_function;   /* deepseek-v3: "sigmoid" (V3) | "softmax" (V2) */
  int32_t groups;               /* deepseek-v3: expert groups; 0 = one per node (0) */
  int32_t topk_groups;          /* deepseek-v3: groups a token may use; 0 = max(1, ceil(k / 2)) (0) */
  const char* group_score;      /* deepseek-v3: "top2-sum" (V3) | "max" (V2) */
  double routed_scaling_factor; /* deepseek-v3: combine weights times this, > 0 (1) */
  double bias_update_rate;      /* deepseek-v3: expert bias step per route call, >= 0 (0.001) */
  /* Added in the fourth version (a shorter struct gets 0). */
  int32_t opt_tau_capacity;     /* locmoe-opt: 1 = capacity by LocMoE+'s rule (tau, beta, capacity_floor,
                                   C_cf the ceiling) from its allreduced lower bound; 0 = C_cf (0) */
} locmoe_router_config_t;
#define LOCMOE_ROUTER_CONFIG_INIT                                                                \
  { (uint32_t)sizeof(locmoe_router_config_t), NULL, 2, 1.25, 0.9, 0.1, 1, 0, 0.9, 1, 0, 0.05, 0.0, \
    40, 0, 0, NULL, NULL, 0.0, NULL, 0, 0, NULL, 1.0, 0.001, 0 }

/* A router (keeps LocMoE+'s smoothed capacity across calls: one per MoE layer). */
locmoe_status_t locmoe_router_create(const locmoe_router_config_t* config, locmoe_router_t* out);
void locmoe_router_destroy(locmoe_router_t router);
/* Collective. Routes this rank's tokens: features float [num_tokens, hidden] (host, this rank's
 * tokens, global ids following lower ranks'); gate float [E, hidden] (host, the same on every
 * rank), E = experts_per_rank * group size. *out: a new plan (as from locmoe_plan_create).
 * locmoe_route cannot check the gate's extent (it reads E x hidden floats): prefer
 * locmoe_route_ex, which is told the gate's shape [gate_rows, gate_hidden] and refuses
 * gate_rows != E or gate_hidden != hidden (LOCMOE_ERR_INVALID_ARGUMENT, before any read). */
locmoe_status_t locmoe_route(locmoe_router_t router, locmoe_group_t group, const float* features,
                             int32_t num_tokens, int64_t hidden, const float* gate,
                             int32_t experts_per_rank, locmoe_plan_t* out);
locmoe_status_t locmoe_route_ex(locmoe_router_t router, locmoe_group_t group,
                                const float* features, int32_t num_tokens, int64_t hidden,
                                const float* gate, int64_t gate_rows, int64_t gate_hidden,
                                int32_t experts_per_rank, locmoe_plan_t* out);
/* What the router's last successful locmoe_route decided for the whole group (the same on every
 * rank). Capacities are slots per expert; masses are sums of gate probabilities over the group. */
typedef struct locmoe_route_stats_t {
  uint32_t struct_size;             /* sizeof(locmoe_route_stats_t) */
  int64_t step;                     /* 0 for the router's first call */
  int64_t global_tokens;            /* T of the whole group */
  int64_t num_experts;              /* E */
  int64_t capacity;                 /* capacity used (0 = none: dropless) */
  int64_t capacity_factor_capacity; /* C_cf = ceil(capacity_factor * k * T / E); 0: dropless */
  int64_t capacity_lower_bound;     /* LocMoE+: C_lb of this call (0 for other routers) */
  double capacity_smoothed;         /* LocMoE+: beta-smoothed C_lb (0 for other routers) */
  int32_t tau_reached;              /* LocMoE+: 0 when even C_cf keeps less than tau of the mass */
  double topk_mass;                 /* sum over tokens of their unconstrained top-k probabilities */
  double kept_mass;                 /* sum of p over the accepted slots */
  int64_t kept_slots;               /* accepted (token, expert) slots */
} locmoe_route_stats_t;
#define LOCMOE_ROUTE_STATS_INIT \
  { (uint32_t)sizeof(locmoe_route_stats_t), 0, 0, 0, 0, 0, 0, 0.0, 0, 0.0, 0.0, 0 }
/* Local. LOCMOE_ERR_INVALID_ARGUMENT before the router's first successful locmoe_route. */
locmoe_status_t locmoe_router_last_stats(locmoe_router_t router, locmoe_route_stats_t* stats);
/* Local. counts: int64 [E] (host): accepted slots of each expert over the whole group (every
 * rank's tokens; the plan carries the group's sums). */
locmoe_status_t locmoe_plan_global_expert_counts(locmoe_plan_t plan, int64_t* counts);

/* Auxiliary losses of the gate (router/include/locmoe/router/gate_grad.h), each averaged over the
 * plan's T local tokens; logits: float [T, E] (host, z = features gate^T of this rank's tokens);
 * writes *loss and d loss / d z into d_logits float [T, E] (host). Local.
 *  LOAD_BALANCE: E * sum_e f_e P_e, f_e = accepted slots of expert e among this plan's tokens /
 *                (T k) (a constant), P_e = mean_t softmax(z_t)_e (Switch Transformer).
 *  Z_LOSS:       mean_t (logsumexp z_t)^2 (ST-MoE).
 *  LOCALITY:     mean_t -log P_t(experts on this rank's node) = KL(q_t || p_t) (LocMoE). */
typedef int32_t locmoe_aux_loss_t;
#define LOCMOE_AUX_LOAD_BALANCE 0
#define LOCMOE_AUX_Z_LOSS 1
#define LOCMOE_AUX_LOCALITY 2
locmoe_status_t locmoe_plan_aux_loss(locmoe_plan_t plan, locmoe_aux_loss_t kind, const float* logits,
                                     double* loss, float* d_logits);

/* Backward of the combine weights into the logits z = features gate^T: logits float [T, E] (host),
 * d_weight float [T*k] (host, e.g. grad_weights of locmoe_combine_backward), renormalize as the
 * router's; writes d_logits float [T, E] (host). The trainer then forms dx = dz gate and
 * dgate = dz^T x with its own GEMMs. */
locmoe_status_t locmoe_plan_weight_backward(locmoe_plan_t plan, const float* logits,
                                            const float* d_weight, int32_t renormalize,
                                            float* d_logits);

/* ---- Dispatcher ------------------------------------------------------------------------------ */
typedef struct locmoe_dispatcher_s* locmoe_dispatcher_t;
typedef struct locmoe_handle_s* locmoe_handle_t;

typedef struct locmoe_dispatcher_config_t {
  uint32_t struct_size;     /* sizeof(locmoe_dispatcher_config_t) */
  int32_t experts_per_rank; /* L (> 0, same on every rank) */
  int64_t hidden;           /* H: elements per token row (> 0, same on every rank) */
  locmoe_dtype_t dtype;     /* row element type (same on every rank) */
  int32_t max_tokens;       /* largest T a plan of this rank may have */
  int32_t top_k;            /* k: slots per token of every plan (> 0, same on every rank) */
  int32_t align;            /* pad each expert's rows to a multiple of this (>= 1) */
  int64_t max_recv_rows;    /* most rows this rank receives per dispatch; 0 = size * max_tokens */
  locmoe_memory_t memory;   /* where token buffers live */
  /* Second version (a shorter struct leaves it 0). Non-zero: the combine weights' gradients travel
   * behind locmoe_dispatch_backward_weights' rows instead of in an exchange of their own, so a
   * training step is 4 data exchanges instead of 5. locmoe_combine_backward then takes
   * grad_weights = NULL, and the locmoe_dispatch_backward_weights that follows it on the same
   * handle writes them. Same on every rank (checked). 0 or 1; 64 bits wide so that it starts
   * past the first version's tail padding (offset 48): a first-version caller's struct_size
   * covers those padding bytes, which it need not have zeroed. */
  int64_t weight_grads_with_dispatch_backward;
} locmoe_dispatcher_config_t;
#define LOCMOE_DISPATCHER_CONFIG_INIT                                                         \
  { (uint32_t)sizeof(locmoe_dispatcher_config_t), 0, 0, LOCMOE_DTYPE_F32, 0, 0, 1, 0,         \
    LOCMOE_MEMORY_HOST, 0 }

/* Collective. Checks that every rank passed the same hidden, dtype, experts_per_rank, top_k and
 * memory (LOCMOE_ERR_MISMATCH naming the rank that differs) and allocates the workspace once.
 * `group` must outlive the dispatcher. */
locmoe_status_t locmoe_dispatcher_create(locmoe_group_t group,
                                         const locmoe_dispatcher_config_t* config,
                                         locmoe_dispatcher_t* out);
void locmoe_dispatcher_destroy(locmoe_dispatcher_t dispatcher);
/* The query before any allocation: for `config` on a group of `num_ranks` ranks, the rows an
 * expert-major buffer needs (*max_expert_rows), the bytes the dispatcher allocates for its
 * workspace (*workspace_bytes) and for each handle (*handle_bytes). Local; outputs may be NULL. */
locmoe_status_t locmoe_dispatcher_query(const locmoe_dispatcher_config_t* config, int32_t num_ranks,
                                        int64_t* max_expert_rows, uint64_t* workspace_bytes,
                                        uint64_t* handle_bytes);
/* Exchanges of the dispatcher's group on this rank since the group was made: metadata rounds (one
 * every-rank count exchange each: a dispatch's, a rejection's) and data exchanges (each movement
 * of rows). A caller takes differences around the calls it measures (a training step with
 * weight_grads_with_dispatch_backward: 1 round, 4 exchanges). Local; either output may be NULL. */
locmoe_status_t locmoe_dispatcher_exchange_counters(locmoe_dispatcher_t dispatcher, uint64_t* metadata_rounds,
                                                    uint64_t* data_exchanges);
/* Rows an expert-major buffer (expert_in, expert_out, their gradients) needs in the worst case. */
locmoe_status_t locmoe_dispatcher_max_expert_rows(locmoe_dispatcher_t dispatcher, int64_t* rows);

/* A handle records one dispatch's layouts for combine and the backwards. Allocated once (sized
 * by the dispatcher's limits) and refilled by every locmoe_dispatch that takes it. */
locmoe_status_t locmoe_handle_create(locmoe_dispatcher_t dispatcher, locmoe_handle_t* out);
void locmoe_handle_destroy(locmoe_handle_t handle);

typedef struct locmoe_handle_info_t {
  uint32_t struct_size;    /* sizeof(locmoe_handle_info_t) */
  int32_t num_tokens;      /* T of the dispatched plan */
  int32_t k;
  int32_t num_local_experts;
  int64_t expert_rows;     /* M: rows of expert_in / expert_out, padding included */
  int64_t recv_rows;       /* N: rows received (one per (source token, this rank)) */
  int64_t accepted_slots;  /* (token, slot) pairs of this rank's plan sent to an expert */
  int64_t dropped_slots;   /* slots the plan marks dropped */
  int64_t dropped_tokens;  /* tokens with no accepted slot (their output rows are 0) */
  int64_t slots_received;  /* (row, slot) pairs placed in expert_in on this rank */
  uint64_t bytes_sent;     /* payload bytes of the token exchange */
  uint64_t internode_bytes_sent; /* of those, bytes put on inter-node links */
} locmoe_handle_info_t;
#define LOCMOE_HANDLE_INFO_INIT \
  { (uint32_t)sizeof(locmoe_handle_info_t), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }
/* Fails with LOCMOE_ERR_INVALID_ARGUMENT before a successful dispatch on the handle. */
locmoe_status_t locmoe_handle_info(locmoe_handle_t handle, locmoe_handle_info_t* info);
/* counts: int64 [L] data rows of each local expert; offsets: int64 [L+1] start of each expert's
 * padded segment (offsets[L] = expert_rows). Host memory; either may be NULL. */
locmoe_status_t locmoe_handle_expert_counts(locmoe_handle_t handle, int64_t* counts,
                                            int64_t* offsets);

/* Collective. x: [plan T, H] (read). expert_in: [expert_in_rows, H] (written: local expert 0's
 * rows, then expert 1's, ..., each segment's padding rows zeroed; the handle's expert_rows rows
 * afterwards). expert_in_rows must cover the worst case of the N rows this rank receives,
 * N * top_k + L * (align - 1) (max_expert_rows always suffices): it is checked, with
 * max_recv_rows, in the dispatch's one count exchange, so a rank short of it fails every rank
 * (LOCMOE_ERR_OUT_OF_RANGE naming it) before any row moves. Fills `handle`. Bad arguments of one
 * rank fail every rank at once (LOCMOE_ERR_MISMATCH naming it), and the group stays usable.
 * combine and the backwards negotiate nothing (they reuse the dispatch's counts): a NULL buffer
 * there (or a locmoe_refuse_next_call refusal) fails its rank at once, which still takes part in
 * the exchange (sending NaN where it lacks data: a peer's rows that depend on it are NaN, the
 * others exact) so its peers finish, and the next dispatch then fails on every rank at once
 * naming it; the group stays usable. A NULL handle or one of another dispatcher there gives its
 * rank nothing to take part with: it aborts the group's communicator, so the peers' pending
 * exchange fails at once with LOCMOE_ERR_PEER_FAILURE naming it (a peer that exchanges nothing
 * with it in that call fails in its next one instead); dispatch and combine are then
 * unusable on every rank (destroy the group). So does a handle that holds no dispatch (its peers,
 * if they dispatched on theirs, would otherwise wait for it until the deadline). */
locmoe_status_t locmoe_dispatch(locmoe_dispatcher_t dispatcher, const void* x, locmoe_plan_t plan,
                                locmoe_handle_t handle, void* expert_in, int64_t expert_in_rows,
                                void* stream);
/* Collective. expert_out: [expert_rows, H] (expert_in's layout; padding rows ignored).
 * out: [T, H] (written): out[t] = sum over token t's accepted slots of weight * expert row, in a
 * fixed order (deterministic), fp32 accumulation; 0 for tokens with no accepted slot. */
locmoe_status_t locmoe_combine(locmoe_dispatcher_t dispatcher, const void* expert_out,
                               locmoe_handle_t handle, void* out, void* stream);
/* Collective. grad_expert_in: [expert_rows, H]; grad_x: [T, H] (written): the sum over token t's
 * accepted slots of grad_expert_in rows (no weights). */
locmoe_status_t locmoe_dispatch_backward(locmoe_dispatcher_t dispatcher, const void* grad_expert_in,
                                         locmoe_handle_t handle, void* grad_x, void* stream);
/* Collective. locmoe_dispatch_backward that also writes grad_weights: float [T*k] or NULL, in the
 * dispatcher's memory kind, the combine weights' gradients that the locmoe_combine_backward before
 * it on this handle computed (as that call describes them). Needs a dispatcher created with
 * weight_grads_with_dispatch_backward and a locmoe_combine_backward on the handle since its
 * dispatch (else LOCMOE_ERR_INVALID_ARGUMENT; the exchange still runs, see locmoe_dispatch). */
locmoe_status_t locmoe_dispatch_backward_weights(locmoe_dispatcher_t dispatcher, const void* grad_expert_in,
                                                 locmoe_handle_t handle, void* grad_x, float* grad_weights,
                                                 void* stream);
/* Collective. grad_out: [T, H]; expert_out: the rows given to locmoe_combine ([expert_rows, H]).
 * grad_expert_out: [expert_rows, H] or NULL (written: weight * grad_out[t] at the row of (t, j),
 * padding rows 0). grad_weights: float [T*k] or NULL, in the dispatcher's memory kind (written:
 * <grad_out[t], expert_out[row of (t, j)]> for accepted slots, 0 elsewhere). */
locmoe_status_t locmoe_combine_backward(locmoe_dispatcher_t dispatcher, const void* grad_out,
                                        locmoe_handle_t handle, const void* expert_out,
                                        void* grad_expert_out, float* grad_weights, void* stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LOCMOE_LOCMOE_H_ */
