// The C API (include/locmoe/locmoe.h) over the C++ layers. Every entry point turns a Status into
// its code plus the thread-local last-error string, and catches every exception.
#include "locmoe/locmoe.h"

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "locmoe/ep/dispatcher.h"
#include "locmoe/router/finalize.h"
#include "locmoe/router/gate_grad.h"
#include "locmoe/router/router.h"
#include "locmoe/topology/cluster.h"
#include "locmoe/topology/placement.h"
#include "memory.h"

struct locmoe_group_s {
  std::unique_ptr<locmoe::Bootstrap> bootstrap;
  locmoe::ClusterMap cluster;
  std::unique_ptr<locmoe::Communicator> comm;
};
struct locmoe_plan_s {
  locmoe::RoutingPlan plan;
};
struct locmoe_router_s {
  std::unique_ptr<locmoe::Router> router;
  bool routed = false;  // a locmoe_route succeeded (last_stats is meaningful)
};
struct locmoe_dispatcher_s {
  locmoe_group_t group = nullptr;
  std::unique_ptr<locmoe::Dispatcher> d;
};
struct locmoe_handle_s {
  locmoe_dispatcher_t owner = nullptr;
  std::unique_ptr<locmoe::DispatchHandle> h;
};

namespace {

using locmoe::Code;
using locmoe::Status;

thread_local std::string g_last_error;

// The refusal locmoe_refuse_next_call left for this thread's next collective call. Each collective
// entry point takes it first and treats it as a refusal of its own arguments, so a binding's
// checks (dtype, strides, ...) reach the peers through the same path as the C API's own.
thread_local bool g_refusal_set = false;
thread_local std::string g_refusal;

Status take_refusal() {
  if (!g_refusal_set) return locmoe::ok_status();
  g_refusal_set = false;
  return locmoe::error(Code::kInvalidArgument, "{}", std::move(g_refusal));
}

// Live groups (locmoe_abort_all tells every one of them), and whether any group of this process
// saw a peer fail or aborted (then exit skips MPI_Finalize, which would wait for the peers).
std::mutex g_groups_mu;
std::set<locmoe_group_t> g_groups;
bool g_group_failed = false;

void note_failure(const Status& s) {
  if (s.code() == Code::kTimeout || s.code() == Code::kPeerFailure) {
    std::lock_guard<std::mutex> lock(g_groups_mu);
    g_group_failed = true;
  }
}

locmoe_status_t fail(const Status& s) {
  note_failure(s);
  g_last_error = s.to_string();
  return static_cast<locmoe_status_t>(s.code());
}

// Runs `f` (returning Status), mapping errors and exceptions to a code plus the message.
template <typename F>
locmoe_status_t guarded(const char* fn, F&& f) noexcept {
  try {
    Status s = f();
    if (s.ok()) return LOCMOE_OK;
    s.with_context(fn);
    return fail(s);
  } catch (const std::bad_alloc&) {
    return fail(locmoe::error(Code::kSystemError, "{}: out of memory", fn));
  } catch (const std::exception& e) {
    return fail(locmoe::error(Code::kInternal, "{}: unexpected exception: {}", fn, e.what()));
  } catch (...) {
    return fail(locmoe::error(Code::kInternal, "{}: unexpected exception", fn));
  }
}

// Copies a caller's size-prefixed struct over the defaults: fields past its struct_size keep
// their default (an older, shorter struct); a struct_size below the first version's fields or
// larger than ours (a newer header) is rejected.
template <typename T>
Status read_config(const T* in, T& out, size_t min_size, const char* what) {
  if (in == nullptr) return locmoe::ok_status();
  LOCMOE_CHECK_ARG(in->struct_size >= min_size && in->struct_size <= sizeof(T),
                   "{}.struct_size {} must be in [{}, {}] (initialize it with the _INIT macro)", what,
                   in->struct_size, min_size, sizeof(T));
  std::memcpy(&out, in, in->struct_size);
  return locmoe::ok_status();
}

// Writes an info struct back within the caller's struct_size.
template <typename T>
Status write_info(const T& value, T* out, const char* what) {
  LOCMOE_CHECK_ARG(out != nullptr, "{} is NULL", what);
  LOCMOE_CHECK_ARG(out->struct_size >= sizeof(uint32_t) && out->struct_size <= sizeof(T),
                   "{}.struct_size {} must be in [4, {}] (initialize it with the _INIT macro)", what,
                   out->struct_size, sizeof(T));
  const uint32_t n = out->struct_size;
  std::memcpy(static_cast<void*>(out), &value, n);
  out->struct_size = n;
  return locmoe::ok_status();
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v) != nullptr) return true;
  int init = 0;
  MPI_Initialized(&init);
  return init != 0;
}

// After a peer died or stopped, MPI_Finalize can wait for it forever (Open MPI's finalize joins
// every process of the job): a survivor then leaves without it, so its exit takes no longer than
// the deadline it already waited.
void finalize_mpi_at_exit() {
  int fin = 0;
  MPI_Finalized(&fin);
  bool peer_failed = false;
  {
    std::lock_guard<std::mutex> lock(g_groups_mu);
    peer_failed = g_group_failed;
  }
  if (!fin && !peer_failed) MPI_Finalize();
}

Status ensure_mpi() {
  int init = 0;
  MPI_Initialized(&init);
  if (init) return locmoe::ok_status();
  int provided = 0;
  LOCMOE_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) == MPI_SUCCESS,
               Code::kSystemError, "MPI_Init_thread failed");
  std::atexit(finalize_mpi_at_exit);
  return locmoe::ok_status();
}

Status create_group(const locmoe_group_config_t* config, locmoe_group_t* out) {
  // A binding's refusal takes this rank's turn in the first collective, as a bad timeout does.
  Status refusal = take_refusal();
  LOCMOE_CHECK_ARG(out != nullptr, "out is NULL");
  locmoe_group_config_t c = LOCMOE_GROUP_CONFIG_INIT;
  LOCMOE_RETURN_IF_ERROR(read_config(config, c, sizeof(uint32_t) + sizeof(int32_t), "config"));
  LOCMOE_CHECK_ARG(c.bootstrap >= LOCMOE_BOOTSTRAP_AUTO && c.bootstrap <= LOCMOE_BOOTSTRAP_SELF,
                   "config.bootstrap {} must be AUTO (0), MPI (1) or SELF (2)", c.bootstrap);
  LOCMOE_CHECK_ARG(c.a2a_algo >= LOCMOE_A2A_AUTO && c.a2a_algo <= LOCMOE_A2A_HIERARCHICAL,
                   "config.a2a_algo {} must be 0, 1 or 2", c.a2a_algo);
  // A bad timeout on one rank is refused on every rank: the bootstrap is made with the default
  // deadline, and that rank rejects its first collective (its peers' cluster map exchange).
  Status timeout_ok = locmoe::resolve_timeout(c.timeout_s).status();
  const double boot_timeout = timeout_ok.ok() ? c.timeout_s : 0.0;
  auto g = std::make_unique<locmoe_group_s>();
  if (c.bootstrap == LOCMOE_BOOTSTRAP_SELF) {
    g->bootstrap = std::make_unique<locmoe::SelfBootstrap>();
  } else {
    // MPI initialized here (when needed) is finalized at exit; MPI_COMM_WORLD for MPI, else
    // LOCMOE_BOOTSTRAP's choice (a TCP rendezvous under torchrun, or this process alone).
    LOCMOE_ASSIGN_OR_RETURN(const std::string env_choice,
                            locmoe::params::get_string(locmoe::params::Id::bootstrap));
    const bool mpi = c.bootstrap == LOCMOE_BOOTSTRAP_MPI || env_choice == "mpi" ||
                     (env_choice == "auto" && launched_by_mpi());
    if (mpi) {
      LOCMOE_RETURN_IF_ERROR(ensure_mpi());
      LOCMOE_ASSIGN_OR_RETURN(g->bootstrap, locmoe::make_mpi_bootstrap(MPI_COMM_WORLD, boot_timeout));
    } else {
      LOCMOE_ASSIGN_OR_RETURN(g->bootstrap, locmoe::make_bootstrap_from_env(boot_timeout));
    }
  }
  if (!refusal.ok()) return g->bootstrap->reject(refusal);
  if (!timeout_ok.ok()) return g->bootstrap->reject(timeout_ok.with_context("config.timeout_s"));
  // Each rank's place on its node (GPU, rail NIC, CPUs; LOCMOE_BIND) from its node's topology.
  locmoe::topo::PlaceOverride place;
  place.cuda_bus_id = locmoe::ep_detail::current_cuda_bus_id();
  LOCMOE_ASSIGN_OR_RETURN(g->cluster, locmoe::topo::build_cluster_map(*g->bootstrap, place));
  locmoe::CommConfig cc;
  if (c.transport != nullptr) cc.transport = c.transport;
  cc.algo = static_cast<locmoe::A2AAlgo>(c.a2a_algo);
  cc.timeout_s = c.timeout_s;
  LOCMOE_ASSIGN_OR_RETURN(g->comm, locmoe::Communicator::create(*g->bootstrap, g->cluster, cc));
  *out = g.release();
  std::lock_guard<std::mutex> lock(g_groups_mu);
  g_groups.insert(*out);
  return locmoe::ok_status();
}

Status check_group(locmoe_group_t g) {
  LOCMOE_CHECK_ARG(g != nullptr, "group is NULL");
  return locmoe::ok_status();
}

Status check_plan_args(int32_t T, int32_t k, int32_t L, const int32_t* expert, const float* weight,
                       locmoe_plan_t* out) {
  LOCMOE_CHECK_ARG(out != nullptr, "out is NULL");
  LOCMOE_CHECK_ARG(T >= 0 && k > 0 && L > 0, "num_tokens {} must be >= 0, k {} and experts_per_rank {} > 0",
                   T, k, L);
  LOCMOE_CHECK_ARG(T == 0 || (expert != nullptr && weight != nullptr), "expert or weight is NULL with {} tokens",
                   T);
  return locmoe::ok_status();
}

Status create_plan(locmoe_group_t g, int32_t T, int32_t k, int32_t L, const int32_t* expert,
                   const float* weight, const uint8_t* dropped, locmoe_plan_t* out) {
  Status refusal = take_refusal();
  LOCMOE_RETURN_IF_ERROR(check_group(g));
  // A rank with bad arguments takes its turn in the collective (finalize_plan's allreduce) as a
  // rejecting rank, so its peers fail at once naming it.
  if (refusal.ok()) refusal = check_plan_args(T, k, L, expert, weight, out);
  if (!refusal.ok()) return g->bootstrap->reject(refusal);
  auto p = std::make_unique<locmoe_plan_s>();
  locmoe::RoutingPlan& plan = p->plan;
  const int R = g->cluster.size();
  const size_t n = static_cast<size_t>(T) * static_cast<size_t>(k);
  plan.num_tokens = T;
  plan.k = k;
  plan.num_ranks = R;
  plan.num_nodes = g->cluster.num_nodes();
  plan.experts_per_rank = L;
  plan.num_experts = L * R;
  plan.rank = g->cluster.my_rank;
  for (int r = 0; r < R; ++r) plan.node_of_rank.push_back(g->cluster.node_of(r));
  plan.expert.assign(expert, expert + n);
  plan.weight.assign(weight, weight + n);
  plan.slot_dropped.assign(n, 0);
  if (dropped != nullptr) plan.slot_dropped.assign(dropped, dropped + n);
  // Unused slots carry weight 0 (the plan contract), whatever the caller left there.
  for (size_t s = 0; s < n; ++s)
    if (plan.expert[s] == -1) plan.weight[s] = 0.0f;
  LOCMOE_RETURN_IF_ERROR(locmoe::finalize_plan(plan, g->bootstrap.get()));
  *out = p.release();
  return locmoe::ok_status();
}

locmoe::Result<locmoe::DispatcherConfig> dispatcher_config(const locmoe_dispatcher_config_t* config) {
  locmoe_dispatcher_config_t c = LOCMOE_DISPATCHER_CONFIG_INIT;
  // The first version ended with `memory` (48 bytes with its tail padding).
  static_assert(offsetof(locmoe_dispatcher_config_t, weight_grads_with_dispatch_backward) == 48);
  LOCMOE_RETURN_IF_ERROR(read_config(config, c, 48, "config"));
  LOCMOE_CHECK_ARG(c.weight_grads_with_dispatch_backward == 0 || c.weight_grads_with_dispatch_backward == 1,
                   "config.weight_grads_with_dispatch_backward {} must be 0 or 1",
                   c.weight_grads_with_dispatch_backward);
  locmoe::DispatcherConfig dc;
  dc.experts_per_rank = c.experts_per_rank;
  dc.hidden = c.hidden;
  dc.dtype = static_cast<locmoe::TokenDType>(c.dtype);
  dc.max_tokens = c.max_tokens;
  dc.top_k = c.top_k;
  dc.align = c.align;
  dc.max_recv_rows = c.max_recv_rows;
  dc.memory = static_cast<locmoe::MemoryKind>(c.memory);
  dc.weight_grads_with_dispatch_backward = c.weight_grads_with_dispatch_backward != 0;
  return dc;
}

Status check_dispatcher(locmoe_dispatcher_t d) {
  LOCMOE_CHECK_ARG(d != nullptr && d->d != nullptr, "dispatcher is NULL");
  return locmoe::ok_status();
}
Status check_pair(locmoe_dispatcher_t d, locmoe_handle_t h) {
  LOCMOE_RETURN_IF_ERROR(check_dispatcher(d));
  LOCMOE_CHECK_ARG(h != nullptr && h->h != nullptr, "handle is NULL");
  LOCMOE_CHECK_ARG(h->owner == d, "the handle belongs to another dispatcher");
  return locmoe::ok_status();
}

// A dispatch that this rank refused before its first exchange (its own arguments: plan, handle,
// buffers, or its binding's refusal) takes its turn in the metadata round its peers wait in, as a
// rejecting rank: they fail at once naming it and its reason, and the group stays usable.
// combine and both backwards have no metadata round (they execute the dispatch's plans): the
// Dispatcher itself takes part in their exchanges with a bad argument or a binding's refusal
// (Dispatcher::refuse_next) and refuses the next dispatch on every rank. A handle that is NULL or
// another dispatcher's gives this rank no exchange to take part in: it aborts the group's
// communicator (Communicator::abort), so the peers' pending exchange fails at once naming this
// rank and the reason; the communicator is unusable afterwards on every rank.
template <typename F>
Status dispatcher_call(locmoe_dispatcher_t d, locmoe_handle_t h, bool negotiates, F&& f) {
  Status refusal = take_refusal();
  LOCMOE_RETURN_IF_ERROR(check_dispatcher(d));
  locmoe::Communicator& comm = *d->group->comm;
  const uint64_t before = comm.exchanges();
  Status s = check_pair(d, h);
  if (!s.ok() && !negotiates) {
    comm.abort(s.message());
    std::lock_guard<std::mutex> lock(g_groups_mu);
    g_group_failed = true;  // as locmoe_group_abort: the peers leave without MPI_Finalize
    return s;
  }
  if (s.ok() && !refusal.ok()) {
    if (negotiates) s = refusal;
    else d->d->refuse_next(refusal);
  }
  if (s.ok()) s = f();
  if (s.ok() || !negotiates || comm.exchanges() != before) return s;
  return comm.reject(s);
}

}  // namespace

extern "C" {

const char* locmoe_last_error(void) { return g_last_error.c_str(); }

void locmoe_refuse_next_call(const char* message) {
  try {
    g_refusal = message != nullptr && *message != '\0' ? message : "(no reason given)";
    g_refusal_set = true;
  } catch (...) {  // out of memory: the next call runs with its own arguments
  }
}

const char* locmoe_status_name(locmoe_status_t status) {
  if (status < 0 || status > LOCMOE_ERR_INTERNAL) return "unknown status";
  return locmoe::code_name(static_cast<Code>(status));
}

locmoe_status_t locmoe_group_create(const locmoe_group_config_t* config, locmoe_group_t* out) {
  return guarded("locmoe_group_create", [&] { return create_group(config, out); });
}
void locmoe_group_destroy(locmoe_group_t group) {
  {
    std::lock_guard<std::mutex> lock(g_groups_mu);
    g_groups.erase(group);
  }
  delete group;
}

locmoe_status_t locmoe_group_abort(locmoe_group_t g, const char* message) {
  return guarded("locmoe_group_abort", [&] {
    LOCMOE_RETURN_IF_ERROR(check_group(g));
    const std::string text = message != nullptr ? message : "(no message)";
    g->bootstrap->abort(text);
    if (g->comm) g->comm->abort(text);
    std::lock_guard<std::mutex> lock(g_groups_mu);
    g_group_failed = true;
    return locmoe::ok_status();
  });
}
void locmoe_abort_all(const char* message) {
  try {
    std::lock_guard<std::mutex> lock(g_groups_mu);
    const std::string text = message != nullptr ? message : "(no message)";
    for (locmoe_group_t g : g_groups) {
      g->bootstrap->abort(text);
      if (g->comm) g->comm->abort(text);
      g_group_failed = true;
    }
  } catch (...) {
  }
}

locmoe_status_t locmoe_group_rank(locmoe_group_t g, int32_t* rank) {
  return guarded("locmoe_group_rank", [&] {
    LOCMOE_RETURN_IF_ERROR(check_group(g));
    LOCMOE_CHECK_ARG(rank != nullptr, "rank is NULL");
    *rank = g->cluster.my_rank;
    return locmoe::ok_status();
  });
}
locmoe_status_t locmoe_group_size(locmoe_group_t g, int32_t* size) {
  return guarded("locmoe_group_size", [&] {
    LOCMOE_RETURN_IF_ERROR(check_group(g));
    LOCMOE_CHECK_ARG(size != nullptr, "size is NULL");
    *size = g->cluster.size();
    return locmoe::ok_status();
  });
}
locmoe_status_t locmoe_group_num_nodes(locmoe_group_t g, int32_t* num_nodes) {
  return guarded("locmoe_group_num_nodes", [&] {
    LOCMOE_RETURN_IF_ERROR(check_group(g));
    LOCMOE_CHECK_ARG(num_nodes != nullptr, "num_nodes is NULL");
    *num_nodes = g->cluster.num_nodes();
    return locmoe::ok_status();
  });
}
locmoe_status_t locmoe_group_node_of(locmoe_group_t g, int32_t rank, int32_t* node) {
  return guarded("locmoe_group_node_of", [&] {
    LOCMOE_RETURN_IF_ERROR(check_group(g));
    LOCMOE_CHECK_ARG(node != nullptr, "node is NULL");
    LOCMOE_CHECK_RANGE(rank >= 0 && rank < g->cluster.size(), "rank {} out of range [0, {})", rank,
                       g->cluster.size());
    *node = g->cluster.node_of(rank);
    return locmoe::ok_status();
  });
}
locmoe_status_t locmoe_group_allreduce_sum(locmoe_group_t g, double* values, int64_t count) {
  return guarded("locmoe_group_allreduce_sum", [&] {
    Status refusal = take_refusal();
    LOCMOE_RETURN_IF_ERROR(check_group(g));
    if (refusal.ok() && !(count >= 0 && (count == 0 || values != nullptr)))
      refusal = locmoe::error(Code::kInvalidArgument, "values NULL or count {} < 0", count);
    if (!refusal.ok()) return g->bootstrap->reject(refusal);
    return g->bootstrap->allreduce(values, values, static_cast<size_t>(count), locmoe::DataType::kFloat64,
                                   locmoe::ReduceOp::kSum);
  });
}

locmoe_status_t locmoe_plan_create(locmoe_group_t group, int32_t num_tokens, int32_t k, int32_t experts_per_rank,
                                   const int32_t* expert, const float* weight, const uint8_t* slot_dropped,
                                   locmoe_plan_t* out) {
  return guarded("locmoe_plan_create", [&] {
    return create_plan(group, num_tokens, k, experts_per_rank, expert, weight, slot_dropped, out);
  });
}
void locmoe_plan_destroy(locmoe_plan_t plan) { delete plan; }

locmoe_status_t locmoe_plan_info(locmoe_plan_t plan, locmoe_plan_info_t* info) {
  return guarded("locmoe_plan_info", [&] {
    LOCMOE_CHECK_ARG(plan != nullptr, "plan is NULL");
    const locmoe::RoutingPlan& p = plan->plan;
    locmoe_plan_info_t v = LOCMOE_PLAN_INFO_INIT;
    v.num_tokens = p.num_tokens;
    v.k = p.k;
    v.num_experts = p.num_experts;
    v.dropped_slots = p.dropped_slots;
    v.dropped_tokens = p.dropped_tokens;
    for (int i = 0; i < 3; ++i) v.copies[i] = p.copies[i];
    return write_info(v, info, "info");
  });
}
locmoe_status_t locmoe_plan_slots(locmoe_plan_t plan, int32_t* expert, float* weight) {
  return guarded("locmoe_plan_slots", [&] {
    LOCMOE_CHECK_ARG(plan != nullptr, "plan is NULL");
    const locmoe::RoutingPlan& p = plan->plan;
    if (expert) std::copy(p.expert.begin(), p.expert.end(), expert);
    if (weight) std::copy(p.weight.begin(), p.weight.end(), weight);
    return locmoe::ok_status();
  });
}

locmoe_status_t locmoe_router_create(const locmoe_router_config_t* config, locmoe_router_t* out) {
  return guarded("locmoe_router_create", [&] {
    LOCMOE_CHECK_ARG(out != nullptr, "out is NULL");
    locmoe_router_config_t c = LOCMOE_ROUTER_CONFIG_INIT;
    LOCMOE_RETURN_IF_ERROR(read_config(config, c, offsetof(locmoe_router_config_t, candidates), "config"));
    locmoe::RouterConfig rc;
    if (c.name != nullptr) rc.name = c.name;
    rc.k = c.k;
    rc.capacity_factor = c.capacity_factor;
    rc.tau = c.tau;
    rc.locality_margin = c.locality_margin;
    rc.renormalize = c.renormalize != 0;
    rc.candidates = c.candidates;
    rc.beta = c.beta;
    rc.capacity_floor = c.capacity_floor;
    rc.max_nodes = c.max_nodes;
    rc.cross_node_cost = c.cross_node_cost;
    rc.same_node_cost = c.same_node_cost;
    rc.opt_iterations = c.opt_iterations;
    rc.normalize_before_drop = c.normalize_before_drop != 0;
    rc.min_capacity = c.min_capacity;
    if (c.drop_policy != nullptr) {
      LOCMOE_ASSIGN_OR_RETURN(rc.drop_policy, locmoe::parse_drop_policy(c.drop_policy));
    }
    if (c.ecr_order != nullptr) {
      LOCMOE_ASSIGN_OR_RETURN(rc.ecr_order, locmoe::parse_ecr_order(c.ecr_order));
    }
    rc.candidate_mass = c.candidate_mass;
    if (c.score_function != nullptr) rc.score_function = c.score_function;
    rc.groups = c.groups;
    rc.topk_groups = c.topk_groups;
    if (c.group_score != nullptr) rc.group_score = c.group_score;
    rc.routed_scaling_factor = c.routed_scaling_factor;
    rc.bias_update_rate = c.bias_update_rate;
    rc.opt_tau_capacity = c.opt_tau_capacity != 0;
    LOCMOE_ASSIGN_OR_RETURN(locmoe::Router r, locmoe::Router::create(rc));
    auto h = std::make_unique<locmoe_router_s>();
    h->router = std::make_unique<locmoe::Router>(std::move(r));
    *out = h.release();
    return locmoe::ok_status();
  });
}
void locmoe_router_destroy(locmoe_router_t router) { delete router; }

}  // extern "C"

namespace {
// gate_rows < 0: the caller of locmoe_route vouches for [E, hidden] (nothing to check it against).
Status route(locmoe_router_t router, locmoe_group_t group, const float* features, int32_t num_tokens, int64_t hidden,
             const float* gate, int64_t gate_rows, int64_t gate_hidden, int32_t experts_per_rank, locmoe_plan_t* out) {
  Status refusal = take_refusal();
  LOCMOE_RETURN_IF_ERROR(check_group(group));
  // Everything this rank can refuse alone is refused in its turn of the routing collective, so its
  // peers fail at once naming it (Bootstrap::reject) instead of waiting for it.
  auto placement = [&]() -> locmoe::Result<locmoe::ExpertPlacement> {
    LOCMOE_RETURN_IF_ERROR(refusal);
    LOCMOE_CHECK_ARG(router != nullptr && router->router != nullptr, "router is NULL");
    LOCMOE_CHECK_ARG(out != nullptr && gate != nullptr, "out or gate is NULL");
    LOCMOE_CHECK_ARG(num_tokens >= 0 && hidden > 0 && (num_tokens == 0 || features != nullptr),
                     "features [{}, {}] must be non-null with num_tokens >= 0 and hidden > 0", num_tokens, hidden);
    return locmoe::placement_from_cluster(group->cluster, experts_per_rank);
  }();
  if (!placement.ok()) return group->bootstrap->reject(placement.status());
  const int64_t E = placement->num_experts();
  // The router checks the gate's shape against E and the features before it reads anything.
  const locmoe::MatrixView gate_view{gate, gate_rows < 0 ? E : gate_rows, gate_rows < 0 ? hidden : gate_hidden};
  LOCMOE_ASSIGN_OR_RETURN(locmoe::RoutingPlan plan,
                          router->router->route(locmoe::MatrixView{features, num_tokens, hidden}, gate_view,
                                                *placement, group->bootstrap.get()));
  router->routed = true;
  auto p = std::make_unique<locmoe_plan_s>();
  p->plan = std::move(plan);
  *out = p.release();
  return locmoe::ok_status();
}
}  // namespace

extern "C" {

locmoe_status_t locmoe_route(locmoe_router_t router, locmoe_group_t group, const float* features, int32_t num_tokens,
                             int64_t hidden, const float* gate, int32_t experts_per_rank, locmoe_plan_t* out) {
  return guarded("locmoe_route", [&] {
    return route(router, group, features, num_tokens, hidden, gate, -1, -1, experts_per_rank, out);
  });
}
locmoe_status_t locmoe_route_ex(locmoe_router_t router, locmoe_group_t group, const float* features,
                                int32_t num_tokens, int64_t hidden, const float* gate, int64_t gate_rows,
                                int64_t gate_hidden, int32_t experts_per_rank, locmoe_plan_t* out) {
  return guarded("locmoe_route_ex", [&] {
    return route(router, group, features, num_tokens, hidden, gate, gate_rows, gate_hidden, experts_per_rank, out);
  });
}

locmoe_status_t locmoe_router_last_stats(locmoe_router_t router, locmoe_route_stats_t* stats) {
  return guarded("locmoe_router_last_stats", [&] {
    LOCMOE_CHECK_ARG(router != nullptr && router->router != nullptr, "router is NULL");
    LOCMOE_CHECK_ARG(router->routed, "the router has not routed yet (call locmoe_route first)");
    const locmoe::RouteStats& s = router->router->last_stats();
    locmoe_route_stats_t v = LOCMOE_ROUTE_STATS_INIT;
    v.step = s.step;
    v.global_tokens = s.global_tokens;
    v.num_experts = s.num_experts;
    v.capacity = s.capacity;
    v.capacity_factor_capacity = s.capacity_factor_capacity;
    v.capacity_lower_bound = s.capacity_lower_bound;
    v.capacity_smoothed = s.capacity_smoothed;
    v.tau_reached = s.tau_reached ? 1 : 0;
    v.topk_mass = s.topk_mass;
    v.kept_mass = s.kept_mass;
    v.kept_slots = s.kept_slots;
    return write_info(v, stats, "stats");
  });
}

locmoe_status_t locmoe_plan_global_expert_counts(locmoe_plan_t plan, int64_t* counts) {
  return guarded("locmoe_plan_global_expert_counts", [&] {
    LOCMOE_CHECK_ARG(plan != nullptr, "plan is NULL");
    LOCMOE_CHECK_ARG(counts != nullptr, "counts is NULL");
    const locmoe::RoutingPlan& p = plan->plan;
    LOCMOE_CHECK_ARG(p.global_expert_count.size() == static_cast<size_t>(p.num_experts),
                     "the plan has no group counts ({} for {} experts)", p.global_expert_count.size(),
                     p.num_experts);
    std::copy(p.global_expert_count.begin(), p.global_expert_count.end(), counts);
    return locmoe::ok_status();
  });
}

locmoe_status_t locmoe_plan_aux_loss(locmoe_plan_t plan, locmoe_aux_loss_t kind, const float* logits,
                                     double* loss, float* d_logits) {
  return guarded("locmoe_plan_aux_loss", [&] {
    LOCMOE_CHECK_ARG(plan != nullptr, "plan is NULL");
    LOCMOE_CHECK_ARG(loss != nullptr, "loss is NULL");
    const locmoe::RoutingPlan& p = plan->plan;
    const size_t n = static_cast<size_t>(p.num_tokens) * static_cast<size_t>(p.num_experts);
    LOCMOE_CHECK_ARG(p.num_tokens == 0 || (logits != nullptr && d_logits != nullptr),
                     "logits or d_logits is NULL");
    const locmoe::MatrixView z{logits, p.num_tokens, p.num_experts};
    const std::span<float> dz(d_logits, n);
    locmoe::Result<double> r = locmoe::error(Code::kInvalidArgument, "unset");
    switch (kind) {
      case LOCMOE_AUX_LOAD_BALANCE: r = locmoe::load_balance_loss(p, z, dz); break;
      case LOCMOE_AUX_Z_LOSS: r = locmoe::z_loss(z, dz); break;
      case LOCMOE_AUX_LOCALITY: r = locmoe::locality_loss(p, z, dz); break;
      default:
        return locmoe::error(Code::kInvalidArgument,
                             "kind {} must be LOCMOE_AUX_LOAD_BALANCE (0), LOCMOE_AUX_Z_LOSS (1) or "
                             "LOCMOE_AUX_LOCALITY (2)", kind);
    }
    if (!r.ok()) return r.status();
    *loss = *r;
    return locmoe::ok_status();
  });
}

locmoe_status_t locmoe_plan_weight_backward(locmoe_plan_t plan, const float* logits, const float* d_weight,
                                            int32_t renormalize, float* d_logits) {
  return guarded("locmoe_plan_weight_backward", [&] {
    LOCMOE_CHECK_ARG(plan != nullptr, "plan is NULL");
    const locmoe::RoutingPlan& p = plan->plan;
    const size_t T = static_cast<size_t>(p.num_tokens), E = static_cast<size_t>(p.num_experts);
    const size_t slots = T * static_cast<size_t>(p.k);
    LOCMOE_CHECK_ARG(T == 0 || (logits != nullptr && d_weight != nullptr && d_logits != nullptr),
                     "logits, d_weight or d_logits is NULL");
    return locmoe::combine_weight_backward(p, locmoe::MatrixView{logits, p.num_tokens, p.num_experts},
                                           std::span<const float>(d_weight, slots), renormalize != 0,
                                           std::span<float>(d_logits, T * E));
  });
}

locmoe_status_t locmoe_dispatcher_create(locmoe_group_t group, const locmoe_dispatcher_config_t* config,
                                         locmoe_dispatcher_t* out) {
  return guarded("locmoe_dispatcher_create", [&] {
    Status refusal = take_refusal();
    LOCMOE_RETURN_IF_ERROR(check_group(group));
    // What this rank can refuse alone (its binding's refusal, its config) takes its turn in the
    // first collective check its peers wait in, as a rejecting rank.
    locmoe::DispatcherConfig dc;
    if (refusal.ok() && (config == nullptr || out == nullptr))
      refusal = locmoe::error(Code::kInvalidArgument, "config or out is NULL");
    if (refusal.ok()) {
      locmoe::Result<locmoe::DispatcherConfig> r = dispatcher_config(config);
      if (r.ok()) dc = *r;
      if (r.ok()) refusal = locmoe::Dispatcher::query_sizes(dc, group->comm->size()).status();
      else refusal = r.status();
    }
    if (!refusal.ok()) return group->bootstrap->reject(refusal);
    auto d = std::make_unique<locmoe_dispatcher_s>();
    d->group = group;
    LOCMOE_ASSIGN_OR_RETURN(d->d, locmoe::Dispatcher::create(*group->bootstrap, *group->comm, dc));
    *out = d.release();
    return locmoe::ok_status();
  });
}
void locmoe_dispatcher_destroy(locmoe_dispatcher_t d) { delete d; }

locmoe_status_t locmoe_dispatcher_query(const locmoe_dispatcher_config_t* config, int32_t num_ranks,
                                        int64_t* max_expert_rows, uint64_t* workspace_bytes, uint64_t* handle_bytes) {
  return guarded("locmoe_dispatcher_query", [&] {
    LOCMOE_CHECK_ARG(config != nullptr, "config is NULL");
    LOCMOE_ASSIGN_OR_RETURN(const locmoe::DispatcherConfig dc, dispatcher_config(config));
    LOCMOE_ASSIGN_OR_RETURN(const locmoe::DispatcherSizes sz, locmoe::Dispatcher::query_sizes(dc, num_ranks));
    if (max_expert_rows) *max_expert_rows = sz.max_expert_rows;
    if (workspace_bytes) *workspace_bytes = sz.workspace_bytes;
    if (handle_bytes) *handle_bytes = sz.handle_bytes;
    return locmoe::ok_status();
  });
}

locmoe_status_t locmoe_dispatcher_max_expert_rows(locmoe_dispatcher_t d, int64_t* rows) {
  return guarded("locmoe_dispatcher_max_expert_rows", [&] {
    LOCMOE_RETURN_IF_ERROR(check_dispatcher(d));
    LOCMOE_CHECK_ARG(rows != nullptr, "rows is NULL");
    *rows = d->d->max_expert_rows();
    return locmoe::ok_status();
  });
}

locmoe_status_t locmoe_handle_create(locmoe_dispatcher_t d, locmoe_handle_t* out) {
  return guarded("locmoe_handle_create", [&] {
    LOCMOE_RETURN_IF_ERROR(check_dispatcher(d));
    LOCMOE_CHECK_ARG(out != nullptr, "out is NULL");
    auto h = std::make_unique<locmoe_handle_s>();
    h->owner = d;
    LOCMOE_ASSIGN_OR_RETURN(h->h, d->d->make_handle());
    *out = h.release();
    return locmoe::ok_status();
  });
}
void locmoe_handle_destroy(locmoe_handle_t h) { delete h; }

locmoe_status_t locmoe_handle_info(locmoe_handle_t h, locmoe_handle_info_t* info) {
  return guarded("locmoe_handle_info", [&] {
    LOCMOE_CHECK_ARG(h != nullptr && h->h != nullptr, "handle is NULL");
    LOCMOE_CHECK_ARG(h->h->valid(), "the handle holds no dispatch yet");
    const locmoe::DispatchHandle& d = *h->h;
    const locmoe::DispatchStats& s = d.stats();
    locmoe_handle_info_t v = LOCMOE_HANDLE_INFO_INIT;
    v.num_tokens = d.num_tokens();
    v.k = d.k();
    v.num_local_experts = static_cast<int32_t>(d.expert_count().size());
    v.expert_rows = d.expert_rows();
    v.recv_rows = d.num_recv_rows();
    v.accepted_slots = s.accepted_slots;
    v.dropped_slots = s.dropped_slots;
    v.dropped_tokens = s.dropped_tokens;
    v.slots_received = s.slots_received;
    v.bytes_sent = s.bytes_sent;
    v.internode_bytes_sent = s.internode_bytes_sent;
    return write_info(v, info, "info");
  });
}

locmoe_status_t locmoe_handle_expert_counts(locmoe_handle_t h, int64_t* counts, int64_t* offsets) {
  return guarded("locmoe_handle_expert_counts", [&] {
    LOCMOE_CHECK_ARG(h != nullptr && h->h != nullptr, "handle is NULL");
    LOCMOE_CHECK_ARG(h->h->valid(), "the handle holds no dispatch yet");
    if (counts) std::copy(h->h->expert_count().begin(), h->h->expert_count().end(), counts);
    if (offsets) std::copy(h->h->expert_offset().begin(), h->h->expert_offset().end(), offsets);
    return locmoe::ok_status();
  });
}

locmoe_status_t locmoe_dispatch(locmoe_dispatcher_t d, const void* x, locmoe_plan_t plan, locmoe_handle_t h,
                                void* expert_in, int64_t expert_in_rows, void* stream) {
  return guarded("locmoe_dispatch", [&] {
    return dispatcher_call(d, h, true, [&]() -> Status {
      LOCMOE_CHECK_ARG(plan != nullptr, "plan is NULL");
      return d->d->dispatch(x, plan->plan, *h->h, expert_in, expert_in_rows, stream);
    });
  });
}
locmoe_status_t locmoe_combine(locmoe_dispatcher_t d, const void* expert_out, locmoe_handle_t h, void* out,
                               void* stream) {
  return guarded("locmoe_combine", [&] {
    return dispatcher_call(d, h, false, [&] { return d->d->combine(expert_out, *h->h, out, stream); });
  });
}
locmoe_status_t locmoe_dispatch_backward(locmoe_dispatcher_t d, const void* grad_expert_in, locmoe_handle_t h,
                                         void* grad_x, void* stream) {
  return guarded("locmoe_dispatch_backward", [&] {
    return dispatcher_call(d, h, false, [&] { return d->d->dispatch_backward(grad_expert_in, *h->h, grad_x, stream); });
  });
}
locmoe_status_t locmoe_dispatch_backward_weights(locmoe_dispatcher_t d, const void* grad_expert_in,
                                                 locmoe_handle_t h, void* grad_x, float* grad_weights,
                                                 void* stream) {
  return guarded("locmoe_dispatch_backward_weights", [&] {
    return dispatcher_call(d, h, false, [&] {
      return d->d->dispatch_backward(grad_expert_in, *h->h, grad_x, stream, grad_weights);
    });
  });
}
locmoe_status_t locmoe_dispatcher_exchange_counters(locmoe_dispatcher_t d, uint64_t* metadata_rounds,
                                                    uint64_t* data_exchanges) {
  return guarded("locmoe_dispatcher_exchange_counters", [&] {
    LOCMOE_RETURN_IF_ERROR(check_dispatcher(d));
    const locmoe::Communicator::Counters c = d->group->comm->counters();
    if (metadata_rounds) *metadata_rounds = c.metadata_rounds;
    if (data_exchanges) *data_exchanges = c.data_exchanges;
    return locmoe::ok_status();
  });
}
locmoe_status_t locmoe_combine_backward(locmoe_dispatcher_t d, const void* grad_out, locmoe_handle_t h,
                                        const void* expert_out, void* grad_expert_out, float* grad_weights,
                                        void* stream) {
  return guarded("locmoe_combine_backward", [&] {
    return dispatcher_call(d, h, false, [&] {
      return d->d->combine_backward(grad_out, *h->h, expert_out, grad_expert_out, grad_weights, stream);
    });
  });
}

}  // extern "C"
