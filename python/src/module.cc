// The Python module `locmoe._locmoe`: the C API (include/locmoe/locmoe.h) with tensors passed
// through DLPack (nb::ndarray), so numpy arrays work on the CPU and PyTorch / JAX / CuPy tensors
// on the GPU without copies. Outputs are caller-allocated arrays (the `locmoe` package wraps them
// with numpy allocation); every array is checked here (rank, shape, dtype, device, contiguity)
// before its pointer reaches the library. A failing call raises locmoe.Error.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "locmoe/core/config.h"
#include "locmoe/locmoe.h"

namespace nb = nanobind;

namespace {

struct LocmoeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(locmoe_status_t s) {
  if (s != LOCMOE_OK) throw LocmoeError(std::string(locmoe_last_error()));
}
[[noreturn]] void bad(const std::string& what) { throw nb::value_error(what.c_str()); }

using Array = nb::ndarray<nb::c_contig>;

constexpr int kDlCpu = 1, kDlCuda = 2, kDlCudaManaged = 13;

bool is_dtype(const Array& a, nb::dlpack::dtype_code code, int bits) {
  return a.dtype().code == static_cast<uint8_t>(code) && a.dtype().bits == bits && a.dtype().lanes == 1;
}

// Checks that `a` is [rows, cols] (rows < 0: any) of the given element type on the given memory.
void check_array(const Array& a, const char* name, int64_t rows, int64_t cols, locmoe_memory_t mem,
                 const char* type_name, bool (*type_ok)(const Array&)) {
  if (a.ndim() != 2) bad(std::string(name) + " must be 2-D, got " + std::to_string(a.ndim()) + "-D");
  if (rows >= 0 && static_cast<int64_t>(a.shape(0)) != rows)
    bad(std::string(name) + " has " + std::to_string(a.shape(0)) + " rows, expected " + std::to_string(rows));
  if (cols >= 0 && static_cast<int64_t>(a.shape(1)) != cols)
    bad(std::string(name) + " has " + std::to_string(a.shape(1)) + " columns, expected " + std::to_string(cols));
  if (!type_ok(a)) bad(std::string(name) + " must have dtype " + type_name);
  const int dev = a.device_type();
  if (mem == LOCMOE_MEMORY_HOST && dev != kDlCpu)
    bad(std::string(name) + " must be in host memory (the dispatcher was made for device 'cpu')");
  if (mem == LOCMOE_MEMORY_DEVICE && dev != kDlCuda && dev != kDlCudaManaged)
    bad(std::string(name) + " must be in CUDA memory (the dispatcher was made for device 'cuda')");
}

bool f32(const Array& a) { return is_dtype(a, nb::dlpack::dtype_code::Float, 32); }
bool i32(const Array& a) { return is_dtype(a, nb::dlpack::dtype_code::Int, 32); }
bool u8(const Array& a) {
  return is_dtype(a, nb::dlpack::dtype_code::UInt, 8) || is_dtype(a, nb::dlpack::dtype_code::Bool, 8);
}
// bf16 rows: a DLPack bfloat16 tensor (PyTorch, JAX) or uint16 holding the bits (numpy has no bf16).
bool bf16(const Array& a) {
  return is_dtype(a, nb::dlpack::dtype_code::Bfloat, 16) || is_dtype(a, nb::dlpack::dtype_code::UInt, 16);
}
bool f64(const Array& a) { return is_dtype(a, nb::dlpack::dtype_code::Float, 64); }

locmoe_bootstrap_t parse_bootstrap(const std::string& s) {
  if (s == "auto") return LOCMOE_BOOTSTRAP_AUTO;
  if (s == "mpi") return LOCMOE_BOOTSTRAP_MPI;
  if (s == "self") return LOCMOE_BOOTSTRAP_SELF;
  bad("bootstrap must be 'auto', 'mpi' or 'self', got '" + s + "'");
}
locmoe_a2a_algo_t parse_algo(const std::string& s) {
  if (s == "auto") return LOCMOE_A2A_AUTO;
  if (s == "flat") return LOCMOE_A2A_FLAT;
  if (s == "hier" || s == "hierarchical") return LOCMOE_A2A_HIERARCHICAL;
  bad("a2a_algo must be 'auto', 'flat' or 'hier', got '" + s + "'");
}

class Group {
 public:
  Group(const std::string& bootstrap, const std::string& a2a_algo, const std::string& transport, double timeout_s) {
    locmoe_group_config_t c = LOCMOE_GROUP_CONFIG_INIT;
    c.bootstrap = parse_bootstrap(bootstrap);
    c.a2a_algo = parse_algo(a2a_algo);
    c.transport = transport.empty() ? nullptr : transport.c_str();
    c.timeout_s = timeout_s;
    check(locmoe_group_create(&c, &g_));
  }
  ~Group() { locmoe_group_destroy(g_); }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;
  locmoe_group_t get() const { return g_; }
  int rank() const { int32_t v; check(locmoe_group_rank(g_, &v)); return v; }
  int size() const { int32_t v; check(locmoe_group_size(g_, &v)); return v; }
  int num_nodes() const { int32_t v; check(locmoe_group_num_nodes(g_, &v)); return v; }
  int node_of(int r) const { int32_t v; check(locmoe_group_node_of(g_, r, &v)); return v; }
  void allreduce_sum(nb::ndarray<double, nb::c_contig, nb::device::cpu> a) {
    check(locmoe_group_allreduce_sum(g_, a.data(), static_cast<int64_t>(a.size())));
  }

 private:
  locmoe_group_t g_ = nullptr;
};

class Plan {
 public:
  Plan(Group& g, Array expert, Array weight, int experts_per_rank, nb::object slot_dropped) {
    check_array(expert, "expert", -1, -1, LOCMOE_MEMORY_HOST, "int32", i32);
    const int64_t T = static_cast<int64_t>(expert.shape(0)), k = static_cast<int64_t>(expert.shape(1));
    check_array(weight, "weight", T, k, LOCMOE_MEMORY_HOST, "float32", f32);
    const uint8_t* dropped = nullptr;
    Array d;
    if (!slot_dropped.is_none()) {
      d = nb::cast<Array>(slot_dropped);
      check_array(d, "slot_dropped", T, k, LOCMOE_MEMORY_HOST, "uint8 or bool", u8);
      dropped = static_cast<const uint8_t*>(d.data());
    }
    check(locmoe_plan_create(g.get(), static_cast<int32_t>(T), static_cast<int32_t>(k), experts_per_rank,
                             static_cast<const int32_t*>(expert.data()), static_cast<const float*>(weight.data()),
                             dropped, &p_));
    info_ = LOCMOE_PLAN_INFO_INIT;
    check(locmoe_plan_info(p_, &info_));
  }
  // Takes ownership of a plan the library made (locmoe_route).
  explicit Plan(locmoe_plan_t p) : p_(p) {
    info_ = LOCMOE_PLAN_INFO_INIT;
    check(locmoe_plan_info(p_, &info_));
  }
  ~Plan() { locmoe_plan_destroy(p_); }
  // The plan's slots as new numpy arrays: expert int32 [T, k], weight float32 [T, k].
  nb::tuple slots() const {
    const size_t T = static_cast<size_t>(info_.num_tokens), k = static_cast<size_t>(info_.k);
    auto* e = new int32_t[std::max<size_t>(1, T * k)];
    auto* w = new float[std::max<size_t>(1, T * k)];
    nb::capsule ce(e, [](void* q) noexcept { delete[] static_cast<int32_t*>(q); });
    nb::capsule cw(w, [](void* q) noexcept { delete[] static_cast<float*>(q); });
    check(locmoe_plan_slots(p_, e, w));
    return nb::make_tuple(nb::ndarray<nb::numpy, int32_t, nb::ndim<2>>(e, {T, k}, ce),
                          nb::ndarray<nb::numpy, float, nb::ndim<2>>(w, {T, k}, cw));
  }
  // d loss / d logits [T, E] from d loss / d weight [T, k] (host arrays).
  void weight_backward(nb::ndarray<float, nb::c_contig, nb::device::cpu> logits,
                       nb::ndarray<float, nb::c_contig, nb::device::cpu> d_weight, bool renormalize,
                       nb::ndarray<float, nb::c_contig, nb::device::cpu> d_logits) const {
    const size_t T = static_cast<size_t>(info_.num_tokens);
    if (logits.size() != T * info_.num_experts || d_logits.size() != T * info_.num_experts)
      bad("logits and d_logits must have num_tokens * num_experts elements");
    if (d_weight.size() != T * static_cast<size_t>(info_.k)) bad("d_weight must have num_tokens * k elements");
    check(locmoe_plan_weight_backward(p_, logits.data(), d_weight.data(), renormalize ? 1 : 0, d_logits.data()));
  }
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  locmoe_plan_t get() const { return p_; }
  const locmoe_plan_info_t& info() const { return info_; }

 private:
  locmoe_plan_t p_ = nullptr;
  locmoe_plan_info_t info_{};
};

class Router {
 public:
  Router(const std::string& name, int k, double capacity_factor, double tau, double locality_margin,
         bool renormalize, int candidates, double beta, int64_t capacity_floor, int max_nodes) {
    locmoe_router_config_t c = LOCMOE_ROUTER_CONFIG_INIT;
    c.name = name.c_str();
    c.k = k;
    c.capacity_factor = capacity_factor;
    c.tau = tau;
    c.locality_margin = locality_margin;
    c.renormalize = renormalize ? 1 : 0;
    c.candidates = candidates;
    c.beta = beta;
    c.capacity_floor = capacity_floor;
    c.max_nodes = max_nodes;
    check(locmoe_router_create(&c, &r_));
    name_ = name;
    k_ = k;
    renormalize_ = renormalize;
  }
  locmoe_router_t get() const { return r_; }
  const std::string& name() const { return name_; }
  int k() const { return k_; }
  bool renormalize() const { return renormalize_; }
  ~Router() { locmoe_router_destroy(r_); }
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;
  Plan* route(Group& g, nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu> features,
              nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu> gate, int experts_per_rank) {
    if (features.shape(1) != gate.shape(1)) bad("features and gate must have the same hidden size");
    locmoe_plan_t p = nullptr;
    check(locmoe_route(r_, g.get(), features.data(), static_cast<int32_t>(features.shape(0)),
                       static_cast<int64_t>(features.shape(1)), gate.data(), experts_per_rank, &p));
    return new Plan(p);
  }

 private:
  locmoe_router_t r_ = nullptr;
  std::string name_;
  int k_ = 0;
  bool renormalize_ = true;
};

// Router statistics, the group's expert counts and the auxiliary losses (used by locmoe.torch).
nb::dict router_last_stats(const Router& r) {
  locmoe_route_stats_t s = LOCMOE_ROUTE_STATS_INIT;
  check(locmoe_router_last_stats(r.get(), &s));
  nb::dict d;
  d["step"] = s.step;
  d["global_tokens"] = s.global_tokens;
  d["num_experts"] = s.num_experts;
  d["capacity"] = s.capacity;
  d["capacity_factor_capacity"] = s.capacity_factor_capacity;
  d["capacity_lower_bound"] = s.capacity_lower_bound;
  d["capacity_smoothed"] = s.capacity_smoothed;
  d["tau_reached"] = s.tau_reached != 0;
  d["topk_mass"] = s.topk_mass;
  d["kept_mass"] = s.kept_mass;
  d["kept_slots"] = s.kept_slots;
  return d;
}

std::vector<int64_t> plan_global_expert_counts(const Plan& p) {
  std::vector<int64_t> c(static_cast<size_t>(p.info().num_experts));
  check(locmoe_plan_global_expert_counts(p.get(), c.data()));
  return c;
}

double plan_aux_loss(const Plan& p, const std::string& kind,
                     nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu> logits,
                     nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu> d_logits) {
  locmoe_aux_loss_t k = 0;
  if (kind == "load_balance") k = LOCMOE_AUX_LOAD_BALANCE;
  else if (kind == "z") k = LOCMOE_AUX_Z_LOSS;
  else if (kind == "locality") k = LOCMOE_AUX_LOCALITY;
  else bad("kind must be 'load_balance', 'z' or 'locality', got '" + kind + "'");
  const size_t T = static_cast<size_t>(p.info().num_tokens), E = static_cast<size_t>(p.info().num_experts);
  if (logits.shape(0) != T || logits.shape(1) != E)
    bad("logits must be [" + std::to_string(T) + ", " + std::to_string(E) + "] (the plan's tokens x experts)");
  if (d_logits.shape(0) != T || d_logits.shape(1) != E)
    bad("d_logits must be [" + std::to_string(T) + ", " + std::to_string(E) + "] (the plan's tokens x experts)");
  double loss = 0;
  check(locmoe_plan_aux_loss(p.get(), k, logits.data(), &loss, d_logits.data()));
  return loss;
}

class Dispatcher;

class Handle {
 public:
  explicit Handle(locmoe_dispatcher_t d) { check(locmoe_handle_create(d, &h_)); }
  ~Handle() { locmoe_handle_destroy(h_); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  locmoe_handle_t get() const { return h_; }
  locmoe_handle_info_t info() const {
    locmoe_handle_info_t i = LOCMOE_HANDLE_INFO_INIT;
    check(locmoe_handle_info(h_, &i));
    return i;
  }
  std::vector<int64_t> counts() const {
    std::vector<int64_t> c(static_cast<size_t>(info().num_local_experts));
    check(locmoe_handle_expert_counts(h_, c.data(), nullptr));
    return c;
  }
  std::vector<int64_t> offsets() const {
    std::vector<int64_t> o(static_cast<size_t>(info().num_local_experts) + 1);
    check(locmoe_handle_expert_counts(h_, nullptr, o.data()));
    return o;
  }

 private:
  locmoe_handle_t h_ = nullptr;
};

class Dispatcher {
 public:
  Dispatcher(Group& g, int experts_per_rank, int64_t hidden, int max_tokens, int top_k, const std::string& dtype,
             int align, int64_t max_recv_rows, const std::string& device)
      : group_(&g) {
    cfg_ = LOCMOE_DISPATCHER_CONFIG_INIT;
    cfg_.experts_per_rank = experts_per_rank;
    cfg_.hidden = hidden;
    cfg_.max_tokens = max_tokens;
    cfg_.top_k = top_k;
    cfg_.align = align;
    cfg_.max_recv_rows = max_recv_rows;
    if (dtype == "float32") cfg_.dtype = LOCMOE_DTYPE_F32;
    else if (dtype == "bfloat16") cfg_.dtype = LOCMOE_DTYPE_BF16;
    else bad("dtype must be 'float32' or 'bfloat16', got '" + dtype + "'");
    if (device == "cpu") cfg_.memory = LOCMOE_MEMORY_HOST;
    else if (device == "cuda") cfg_.memory = LOCMOE_MEMORY_DEVICE;
    else bad("device must be 'cpu' or 'cuda', got '" + device + "'");
    check(locmoe_dispatcher_create(g.get(), &cfg_, &d_));
    check(locmoe_dispatcher_max_expert_rows(d_, &max_rows_));
  }
  ~Dispatcher() { locmoe_dispatcher_destroy(d_); }
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  int64_t max_expert_rows() const { return max_rows_; }
  int64_t hidden() const { return cfg_.hidden; }
  int top_k() const { return cfg_.top_k; }
  int experts_per_rank() const { return cfg_.experts_per_rank; }
  std::string dtype() const { return cfg_.dtype == LOCMOE_DTYPE_BF16 ? "bfloat16" : "float32"; }
  std::string device() const { return cfg_.memory == LOCMOE_MEMORY_DEVICE ? "cuda" : "cpu"; }
  Handle* make_handle() { return new Handle(d_); }

  int64_t dispatch(Array x, Plan& plan, Handle& h, Array expert_in, uintptr_t stream) {
    rows(x, "x", plan.info().num_tokens);
    rows(expert_in, "expert_in", -1);
    check(locmoe_dispatch(d_, x.data(), plan.get(), h.get(), expert_in.data(),
                          static_cast<int64_t>(expert_in.shape(0)), reinterpret_cast<void*>(stream)));
    return h.info().expert_rows;
  }
  void combine(Array expert_out, Handle& h, Array out, uintptr_t stream) {
    const locmoe_handle_info_t i = h.info();
    rows_at_least(expert_out, "expert_out", i.expert_rows);
    rows(out, "out", i.num_tokens);
    check(locmoe_combine(d_, expert_out.data(), h.get(), out.data(), reinterpret_cast<void*>(stream)));
  }
  void dispatch_backward(Array grad_expert_in, Handle& h, Array grad_x, uintptr_t stream) {
    const locmoe_handle_info_t i = h.info();
    rows_at_least(grad_expert_in, "grad_expert_in", i.expert_rows);
    rows(grad_x, "grad_x", i.num_tokens);
    check(locmoe_dispatch_backward(d_, grad_expert_in.data(), h.get(), grad_x.data(),
                                   reinterpret_cast<void*>(stream)));
  }
  void combine_backward(Array grad_out, Handle& h, Array expert_out, nb::object grad_expert_out,
                        nb::object grad_weights, uintptr_t stream) {
    const locmoe_handle_info_t i = h.info();
    rows(grad_out, "grad_out", i.num_tokens);
    rows_at_least(expert_out, "expert_out", i.expert_rows);
    void* gy = nullptr;
    float* gw = nullptr;
    Array gya, gwa;
    if (!grad_expert_out.is_none()) {
      gya = nb::cast<Array>(grad_expert_out);
      rows_at_least(gya, "grad_expert_out", i.expert_rows);
      gy = gya.data();
    }
    if (!grad_weights.is_none()) {
      gwa = nb::cast<Array>(grad_weights);
      check_array(gwa, "grad_weights", i.num_tokens, i.k, cfg_.memory, "float32", f32);
      gw = static_cast<float*>(gwa.data());
    }
    check(locmoe_combine_backward(d_, grad_out.data(), h.get(), expert_out.data(), gy, gw,
                                  reinterpret_cast<void*>(stream)));
  }

 private:
  void rows(const Array& a, const char* name, int64_t n) const {
    check_array(a, name, n, cfg_.hidden, cfg_.memory, cfg_.dtype == LOCMOE_DTYPE_BF16 ? "bfloat16 (or uint16 bits)" : "float32",
                cfg_.dtype == LOCMOE_DTYPE_BF16 ? bf16 : f32);
  }
  void rows_at_least(const Array& a, const char* name, int64_t n) const {
    rows(a, name, -1);
    if (static_cast<int64_t>(a.shape(0)) < n)
      bad(std::string(name) + " has " + std::to_string(a.shape(0)) + " rows, needs at least " + std::to_string(n));
  }

  Group* group_;
  locmoe_dispatcher_config_t cfg_{};
  locmoe_dispatcher_t d_ = nullptr;
  int64_t max_rows_ = 0;
};

}  // namespace

NB_MODULE(_locmoe, m) {
  m.doc() = "locmoe: expert-parallel dispatch/combine of MoE tokens (C API through DLPack)";
  m.attr("__version__") = LOCMOE_VERSION;
  nb::exception<LocmoeError>(m, "Error");

  nb::class_<Group>(m, "Group", "The ranks of one expert-parallel group (collective constructor).")
      .def(nb::init<const std::string&, const std::string&, const std::string&, double>(),
           nb::arg("bootstrap") = "auto", nb::arg("a2a_algo") = "auto", nb::arg("transport") = "",
           nb::arg("timeout_s") = 0.0,
           "bootstrap: 'auto' (MPI under mpirun, else this process alone) | 'mpi' (initializes MPI "
           "when needed) | 'self'")
      .def_prop_ro("rank", &Group::rank)
      .def_prop_ro("size", &Group::size)
      .def_prop_ro("num_nodes", &Group::num_nodes)
      .def("node_of", &Group::node_of, nb::arg("rank"))
      .def("allreduce_sum", &Group::allreduce_sum, nb::arg("values"),
           "Collective in-place sum of a contiguous float64 numpy array over the group.");

  nb::class_<Plan>(m, "Plan", "This rank's routing plan (collective constructor).")
      .def(nb::init<Group&, Array, Array, int, nb::object>(), nb::arg("group"), nb::arg("expert"),
           nb::arg("weight"), nb::arg("experts_per_rank"), nb::arg("slot_dropped") = nb::none(),
           nb::keep_alive<1, 2>(),
           "expert: int32 [T, k] global expert ids (-1 = none); weight: float32 [T, k]; "
           "slot_dropped: optional uint8/bool [T, k]. Host arrays, copied.")
      .def_prop_ro("num_tokens", [](const Plan& p) { return p.info().num_tokens; })
      .def_prop_ro("k", [](const Plan& p) { return p.info().k; })
      .def_prop_ro("num_experts", [](const Plan& p) { return p.info().num_experts; })
      .def_prop_ro("dropped_slots", [](const Plan& p) { return p.info().dropped_slots; })
      .def_prop_ro("dropped_tokens", [](const Plan& p) { return p.info().dropped_tokens; })
      .def("slots", &Plan::slots, "(expert int32 [T, k], weight float32 [T, k]) as new numpy arrays")
      .def("weight_backward", &Plan::weight_backward, nb::arg("logits"), nb::arg("d_weight"),
           nb::arg("renormalize"), nb::arg("d_logits"),
           "d loss/d logits [T, E] (written into d_logits) from d loss/d weight [T, k]; logits = x gate^T")
      .def_prop_ro("copies", [](const Plan& p) {
        return std::vector<int64_t>{p.info().copies[0], p.info().copies[1], p.info().copies[2]};
      }, "token copies to [this rank, its node, other nodes]")
      .def("global_expert_counts", &plan_global_expert_counts,
           "Local. Accepted slots of each expert over the whole group [E] (plans of the router and "
           "locmoe.Plan both carry them).")
      .def("aux_loss", &plan_aux_loss, nb::arg("kind"), nb::arg("logits"), nb::arg("d_logits").noconvert(),
           "Local. kind 'load_balance' | 'z' | 'locality': returns the loss (mean over the plan's "
           "tokens) and writes d loss/d logits into d_logits; logits, d_logits float32 [T, E].");

  nb::class_<Router>(m, "Router", "LocMoE+ or a baseline router (one per MoE layer).")
      .def(nb::init<const std::string&, int, double, double, double, bool, int, double, int64_t, int>(),
           nb::arg("name") = "locmoe+", nb::arg("k") = 2, nb::arg("capacity_factor") = 1.25, nb::arg("tau") = 0.9,
           nb::arg("locality_margin") = 0.1, nb::arg("renormalize") = true, nb::arg("candidates") = 0,
           nb::arg("beta") = 0.9, nb::arg("capacity_floor") = 1, nb::arg("max_nodes") = 0,
           "Parameters as locmoe_router_config_t (include/locmoe/locmoe.h); a bad value raises Error "
           "naming it.")
      .def_prop_ro("name", &Router::name)
      .def_prop_ro("k", &Router::k)
      .def_prop_ro("renormalize", &Router::renormalize)
      .def("last_stats", &router_last_stats,
           "Local. What the last route() decided for the whole group, as a dict (locmoe_route_stats_t).")
      .def("route", &Router::route, nb::arg("group"), nb::arg("features"), nb::arg("gate"),
           nb::arg("experts_per_rank"), nb::rv_policy::take_ownership, nb::keep_alive<0, 2>(),
           "Collective. features float32 [T, H] (this rank's tokens), gate float32 [E, H] (same on "
           "every rank) -> this rank's Plan.");

  nb::class_<Handle>(m, "Handle", "Layouts of one dispatch, reused by combine and the backwards.")
      .def_prop_ro("num_tokens", [](const Handle& h) { return h.info().num_tokens; })
      .def_prop_ro("k", [](const Handle& h) { return h.info().k; })
      .def_prop_ro("expert_rows", [](const Handle& h) { return h.info().expert_rows; })
      .def_prop_ro("recv_rows", [](const Handle& h) { return h.info().recv_rows; })
      .def_prop_ro("accepted_slots", [](const Handle& h) { return h.info().accepted_slots; })
      .def_prop_ro("dropped_slots", [](const Handle& h) { return h.info().dropped_slots; })
      .def_prop_ro("dropped_tokens", [](const Handle& h) { return h.info().dropped_tokens; })
      .def_prop_ro("slots_received", [](const Handle& h) { return h.info().slots_received; })
      .def_prop_ro("bytes_sent", [](const Handle& h) { return h.info().bytes_sent; })
      .def_prop_ro("internode_bytes_sent", [](const Handle& h) { return h.info().internode_bytes_sent; })
      .def_prop_ro("expert_counts", &Handle::counts, "data rows of each local expert [L]")
      .def_prop_ro("expert_offsets", &Handle::offsets, "start row of each local expert's segment [L+1]");

  nb::class_<Dispatcher>(m, "Dispatcher", "Dispatch/combine over a group (collective constructor).")
      .def(nb::init<Group&, int, int64_t, int, int, const std::string&, int, int64_t, const std::string&>(),
           nb::arg("group"), nb::arg("experts_per_rank"), nb::arg("hidden"), nb::arg("max_tokens"),
           nb::arg("top_k"), nb::arg("dtype") = "float32", nb::arg("align") = 1, nb::arg("max_recv_rows") = 0,
           nb::arg("device") = "cpu", nb::keep_alive<1, 2>())
      .def_prop_ro("max_expert_rows", &Dispatcher::max_expert_rows)
      .def_prop_ro("hidden", &Dispatcher::hidden)
      .def_prop_ro("top_k", &Dispatcher::top_k)
      .def_prop_ro("experts_per_rank", &Dispatcher::experts_per_rank)
      .def_prop_ro("dtype", &Dispatcher::dtype)
      .def_prop_ro("device", &Dispatcher::device)
      .def("make_handle", &Dispatcher::make_handle, nb::rv_policy::take_ownership, nb::keep_alive<0, 1>())
      .def("dispatch_into", &Dispatcher::dispatch, nb::arg("x"), nb::arg("plan"), nb::arg("handle"),
           nb::arg("expert_in"), nb::arg("stream") = 0,
           "Collective. x [T, H] -> expert_in [>= expert_rows, H] (expert-major); returns expert_rows.")
      .def("combine_into", &Dispatcher::combine, nb::arg("expert_out"), nb::arg("handle"), nb::arg("out"),
           nb::arg("stream") = 0, "Collective. expert_out [>= expert_rows, H] -> out [T, H].")
      .def("dispatch_backward_into", &Dispatcher::dispatch_backward, nb::arg("grad_expert_in"),
           nb::arg("handle"), nb::arg("grad_x"), nb::arg("stream") = 0,
           "Collective. grad_expert_in [>= expert_rows, H] -> grad_x [T, H] (sum, no weights).")
      .def("combine_backward_into", &Dispatcher::combine_backward, nb::arg("grad_out"), nb::arg("handle"),
           nb::arg("expert_out"), nb::arg("grad_expert_out") = nb::none(), nb::arg("grad_weights") = nb::none(),
           nb::arg("stream") = 0,
           "Collective. grad_out [T, H] -> grad_expert_out [>= expert_rows, H] and grad_weights float32 [T, k].");
}
