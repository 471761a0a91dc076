// Header-only C++ layer over the C API (locmoe.h): RAII owners of the opaque handles, and
// locmoe::api::Error (a std::runtime_error carrying the status code) thrown on a failing call.
// The exceptions are thrown here, in the caller's code, never across the C API. Parameters,
// shapes, dtypes and collectiveness are those documented in locmoe.h.
//
//   locmoe::api::Group group;                                  // MPI or one process
//   locmoe::api::Plan plan(group, T, k, L, expert, weight);     // collective
//   locmoe::api::Dispatcher d(group, cfg);                      // collective
//   locmoe::api::Handle h(d);
//   d.dispatch(x, plan, h, expert_in, d.max_expert_rows());
//   ... experts ...;  d.combine(expert_out, h, out);
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "locmoe/locmoe.h"

namespace locmoe::api {

class Error : public std::runtime_error {
 public:
  Error(locmoe_status_t code, const std::string& message) : std::runtime_error(message), code_(code) {}
  locmoe_status_t code() const noexcept { return code_; }

 private:
  locmoe_status_t code_;
};

// Throws Error with the thread's last error message when `status` is not LOCMOE_OK.
inline void check(locmoe_status_t status) {
  if (status != LOCMOE_OK) throw Error(status, locmoe_last_error());
}

namespace detail {
template <typename T, void (*Destroy)(T)>
struct Deleter {
  void operator()(std::remove_pointer_t<T>* p) const noexcept { Destroy(p); }
};
template <typename T, void (*Destroy)(T)>
using Owner = std::unique_ptr<std::remove_pointer_t<T>, Deleter<T, Destroy>>;
}  // namespace detail

class Group {
 public:
  // Collective. config: see locmoe_group_config_t (default: LOCMOE_GROUP_CONFIG_INIT).
  explicit Group(const locmoe_group_config_t& config = LOCMOE_GROUP_CONFIG_INIT) {
    locmoe_group_t g = nullptr;
    check(locmoe_group_create(&config, &g));
    g_.reset(g);
  }
  locmoe_group_t get() const noexcept { return g_.get(); }
  int32_t rank() const { int32_t v = 0; check(locmoe_group_rank(get(), &v)); return v; }
  int32_t size() const { int32_t v = 0; check(locmoe_group_size(get(), &v)); return v; }
  int32_t num_nodes() const { int32_t v = 0; check(locmoe_group_num_nodes(get(), &v)); return v; }
  int32_t node_of(int32_t rank) const { int32_t v = 0; check(locmoe_group_node_of(get(), rank, &v)); return v; }
  // Collective: in-place sum of values[count] over the group.
  void allreduce_sum(double* values, int64_t count) { check(locmoe_group_allreduce_sum(get(), values, count)); }

 private:
  detail::Owner<locmoe_group_t, locmoe_group_destroy> g_;
};

class Plan {
 public:
  // Collective. Arrays of num_tokens*k entries, host memory, copied (see locmoe_plan_create).
  Plan(const Group& group, int32_t num_tokens, int32_t k, int32_t experts_per_rank, const int32_t* expert,
       const float* weight, const uint8_t* slot_dropped = nullptr) {
    locmoe_plan_t p = nullptr;
    check(locmoe_plan_create(group.get(), num_tokens, k, experts_per_rank, expert, weight, slot_dropped, &p));
    p_.reset(p);
  }
  // Takes ownership of a plan made by the library (Router::route).
  explicit Plan(locmoe_plan_t owned) { p_.reset(owned); }
  locmoe_plan_t get() const noexcept { return p_.get(); }
  locmoe_plan_info_t info() const {
    locmoe_plan_info_t i = LOCMOE_PLAN_INFO_INIT;
    check(locmoe_plan_info(get(), &i));
    return i;
  }

 private:
  detail::Owner<locmoe_plan_t, locmoe_plan_destroy> p_;
};

class Router {
 public:
  explicit Router(const locmoe_router_config_t& config = LOCMOE_ROUTER_CONFIG_INIT) {
    locmoe_router_t r = nullptr;
    check(locmoe_router_create(&config, &r));
    r_.reset(r);
  }
  locmoe_router_t get() const noexcept { return r_.get(); }
  // Collective: this rank's tokens features[num_tokens, hidden], gate[gate_rows, gate_hidden]
  // (host), which must be [E, hidden], E = experts_per_rank * group size (locmoe_route_ex: a
  // wrong shape on one rank is an error on every rank, before any read of the gate).
  Plan route(const Group& group, const float* features, int32_t num_tokens, int64_t hidden, const float* gate,
             int64_t gate_rows, int64_t gate_hidden, int32_t experts_per_rank) {
    locmoe_plan_t p = nullptr;
    check(locmoe_route_ex(get(), group.get(), features, num_tokens, hidden, gate, gate_rows, gate_hidden,
                          experts_per_rank, &p));
    return Plan(p);
  }
  // The same with a gate the caller vouches is [E, hidden] (locmoe_route: its extent is not checked).
  Plan route(const Group& group, const float* features, int32_t num_tokens, int64_t hidden, const float* gate,
             int32_t experts_per_rank) {
    locmoe_plan_t p = nullptr;
    check(locmoe_route(get(), group.get(), features, num_tokens, hidden, gate, experts_per_rank, &p));
    return Plan(p);
  }

 private:
  detail::Owner<locmoe_router_t, locmoe_router_destroy> r_;
};

class Dispatcher;

class Handle {
 public:
  explicit Handle(const Dispatcher& d);
  locmoe_handle_t get() const noexcept { return h_.get(); }
  locmoe_handle_info_t info() const {
    locmoe_handle_info_t i = LOCMOE_HANDLE_INFO_INIT;
    check(locmoe_handle_info(get(), &i));
    return i;
  }
  // [L] data rows per local expert and [L+1] offsets of the padded segments.
  std::vector<int64_t> expert_counts() const {
    std::vector<int64_t> c(static_cast<size_t>(info().num_local_experts));
    check(locmoe_handle_expert_counts(get(), c.data(), nullptr));
    return c;
  }
  std::vector<int64_t> expert_offsets() const {
    std::vector<int64_t> o(static_cast<size_t>(info().num_local_experts) + 1);
    check(locmoe_handle_expert_counts(get(), nullptr, o.data()));
    return o;
  }

 private:
  detail::Owner<locmoe_handle_t, locmoe_handle_destroy> h_;
};

class Dispatcher {
 public:
  // Collective. `group` must outlive the dispatcher.
  Dispatcher(const Group& group, const locmoe_dispatcher_config_t& config) {
    locmoe_dispatcher_t d = nullptr;
    check(locmoe_dispatcher_create(group.get(), &config, &d));
    d_.reset(d);
  }
  locmoe_dispatcher_t get() const noexcept { return d_.get(); }
  int64_t max_expert_rows() const {
    int64_t r = 0;
    check(locmoe_dispatcher_max_expert_rows(get(), &r));
    return r;
  }
  // Collective operations; see locmoe.h for shapes and ownership.
  void dispatch(const void* x, const Plan& plan, Handle& h, void* expert_in, int64_t expert_in_rows,
                void* stream = nullptr) {
    check(locmoe_dispatch(get(), x, plan.get(), h.get(), expert_in, expert_in_rows, stream));
  }
  void combine(const void* expert_out, const Handle& h, void* out, void* stream = nullptr) {
    check(locmoe_combine(get(), expert_out, h.get(), out, stream));
  }
  void dispatch_backward(const void* grad_expert_in, const Handle& h, void* grad_x, void* stream = nullptr) {
    check(locmoe_dispatch_backward(get(), grad_expert_in, h.get(), grad_x, stream));
  }
  // With weight_grads_with_dispatch_backward: also returns combine_backward's weight gradients.
  void dispatch_backward(const void* grad_expert_in, const Handle& h, void* grad_x, float* grad_weights,
                         void* stream) {
    check(locmoe_dispatch_backward_weights(get(), grad_expert_in, h.get(), grad_x, grad_weights, stream));
  }
  // Metadata rounds and data exchanges of the group on this rank so far (locmoe.h).
  std::pair<uint64_t, uint64_t> exchange_counters() const {
    uint64_t rounds = 0, exchanges = 0;
    check(locmoe_dispatcher_exchange_counters(get(), &rounds, &exchanges));
    return {rounds, exchanges};
  }
  void combine_backward(const void* grad_out, const Handle& h, const void* expert_out, void* grad_expert_out,
                        float* grad_weights, void* stream = nullptr) {
    check(locmoe_combine_backward(get(), grad_out, h.get(), expert_out, grad_expert_out, grad_weights, stream));
  }

 private:
  detail::Owner<locmoe_dispatcher_t, locmoe_dispatcher_destroy> d_;
};

inline Handle::Handle(const Dispatcher& d) {
  locmoe_handle_t h = nullptr;
  check(locmoe_handle_create(d.get(), &h));
  h_.reset(h);
}

}  // namespace locmoe::api
