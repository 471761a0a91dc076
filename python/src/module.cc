// The Python module `locmoe._locmoe`: the C API (include/locmoe/locmoe.h) with tensors passed
// through DLPack (nb::ndarray), so numpy arrays work on the CPU and PyTorch / JAX / CuPy tensors
// on the GPU without copies. Outputs are caller-allocated arrays (the `locmoe` package wraps them
// with numpy allocation). Every array is checked here (rank, shape against the other arguments,
// dtype, strides, memory, writability of outputs, overlap) before its pointer reaches the library,
// and never converted: a refusal raises ValueError naming the argument, what it got and what was
// expected. A failing library call raises locmoe.Error. A refusal of a collective call's arguments
// still takes this rank's turn in the call (locmoe_refuse_next_call): the other ranks learn of it
// as of the C API's own checks (include/locmoe/locmoe.h: at once, naming this rank and the reason,
// for Plan, route, Dispatcher, dispatch and allreduce_sum; combine and the backwards send NaN and
// the next dispatch fails on every rank naming it).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
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

// ---- Array arguments: checked, never converted ---------------------------------------------------
// nanobind converts an argument whose dtype or layout does not match a binding's constraints into
// a temporary copy: harmless for an input, silent data loss for an output (the library would write
// into the copy and the caller's buffer would stay as it was). So every array parameter is taken as
// a plain object and imported here without conversion (outputs writable, inputs as read-only views,
// so a read-only numpy array is a valid input), then its dtype, shape, strides and memory are
// checked; each refusal names the argument, what it got and what was expected.
using InArray = nb::ndarray<nb::ro>;
using OutArray = nb::ndarray<>;
using DType = nb::dlpack::dtype;
using Code = nb::dlpack::dtype_code;

constexpr int kDlCpu = 1, kDlCuda = 2, kDlCudaHost = 3, kDlCudaManaged = 13;

bool is(DType t, Code code, int bits) { return t.code == static_cast<uint8_t>(code) && t.bits == bits && t.lanes == 1; }
bool f32(DType t) { return is(t, Code::Float, 32); }
bool f64(DType t) { return is(t, Code::Float, 64); }
bool i32(DType t) { return is(t, Code::Int, 32); }
bool i32_or_i64(DType t) { return is(t, Code::Int, 32) || is(t, Code::Int, 64); }
bool u8(DType t) { return is(t, Code::UInt, 8) || is(t, Code::Bool, 8); }
// bf16 rows: a DLPack bfloat16 tensor (PyTorch, JAX) or uint16 holding the bits (numpy has no bf16).
bool bf16(DType t) { return is(t, Code::Bfloat, 16) || is(t, Code::UInt, 16); }

std::string dtype_name(DType t) {
  const char* kind = "?";
  switch (static_cast<Code>(t.code)) {
    case Code::Int: kind = "int"; break;
    case Code::UInt: kind = "uint"; break;
    case Code::Float: kind = "float"; break;
    case Code::Bfloat: kind = "bfloat"; break;
    case Code::Complex: kind = "complex"; break;
    case Code::Bool: return "bool";
    default: kind = "dtype-code-"; break;
  }
  std::string s = std::string(kind) + std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

std::string memory_name(int device_type) {
  switch (device_type) {
    case kDlCpu: return "host memory";
    case kDlCuda: return "CUDA memory";
    case kDlCudaHost: return "CUDA pinned host memory";
    case kDlCudaManaged: return "CUDA managed memory";
    default: return "DLPack device type " + std::to_string(device_type);
  }
}
std::string wanted_memory(locmoe_memory_t mem, bool of_dispatcher) {
  if (!of_dispatcher) return "host memory";
  return mem == LOCMOE_MEMORY_DEVICE ? "CUDA memory (the dispatcher was made for device 'cuda')"
                                     : "host memory (the dispatcher was made for device 'cpu')";
}

template <class A>
bool c_contiguous(const A& a) {
  if (a.size() <= 1) return true;  // no second element to place: any strides (numpy gives 0 for [0, k])
  int64_t want = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != want) return false;
    want *= static_cast<int64_t>(a.shape(i));
  }
  return true;
}

// "float64 [4, 8] (strides [1, 4]) in host memory"; strides (in elements) only when not row-major.
template <class A>
std::string describe(const A& a) {
  std::string s = dtype_name(a.dtype()) + " [";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  s += "]";
  if (!c_contiguous(a)) {
    s += " (strides [";
    for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.stride(i));
    s += "], not contiguous)";
  }
  return s + " in " + memory_name(a.device_type());
}

bool requires_grad(nb::handle h) {
  return nb::hasattr(h, "requires_grad") && nb::hasattr(h, "detach") && nb::cast<bool>(h.attr("requires_grad"));
}

std::string not_an_array(nb::handle h) {
  if (requires_grad(h)) return "a tensor that requires grad cannot be exported through DLPack (pass .detach())";
  return "expected an array (numpy, or a DLPack tensor: torch, JAX, CuPy), got " +
         std::string(nb::type_name(h.type()).c_str());
}

InArray input_array(nb::handle h, const char* name) {
  InArray a;
  if (!nb::try_cast(h, a, /*convert=*/false)) bad(std::string(name) + ": " + not_an_array(h));
  return a;
}
OutArray output_array(nb::handle h, const char* name) {
  // Writing into a tensor autograd tracks would bypass it (torch refuses in-place ops on such leaves).
  if (requires_grad(h))
    bad(std::string(name) + " requires grad: an output is written in place behind autograd's back; pass a "
        "tensor that does not require grad");
  OutArray a;
  if (nb::try_cast(h, a, /*convert=*/false)) return a;
  InArray ro;
  if (nb::try_cast(h, ro, /*convert=*/false))
    bad(std::string(name) + " is read-only; an output must be writable (got " + describe(ro) + ")");
  bad(std::string(name) + ": " + not_an_array(h));
}

// What an array argument must be: dtype, [rows, cols] (rows < 0: any; at_least: rows is a
// minimum; cols < 0: any), row-major contiguous, in `mem`.
struct Want {
  int64_t rows = -1;
  int64_t cols = -1;
  bool at_least = false;
  const char* dtype = "float32";
  bool (*dtype_ok)(DType) = f32;
  locmoe_memory_t mem = LOCMOE_MEMORY_HOST;
  bool of_dispatcher = false;  // mem is the dispatcher's (said in the message)
  bool check_shape = true;     // false: rows and cols are only said in the message
};

// Why `a` is not what `w` wants ("" when it is): the argument, what it got and what was expected.
template <class A>
std::string array_problem(const A& a, const char* name, const Want& w) {
  auto fail = [&](const std::string& why) {
    std::string shape = std::string("[") + (w.at_least ? ">= " : "") +
                        (w.rows < 0 ? std::string("any") : std::to_string(w.rows)) + ", " +
                        (w.cols < 0 ? std::string("any") : std::to_string(w.cols)) + "]";
    return std::string(name) + " " + why + ": expected " + w.dtype + " " + shape + " contiguous (row-major) in " +
           wanted_memory(w.mem, w.of_dispatcher) + ", got " + describe(a);
  };
  if (a.ndim() != 2) return fail("is " + std::to_string(a.ndim()) + "-D");
  if (!w.dtype_ok(a.dtype())) return fail("has dtype " + dtype_name(a.dtype()));
  const int64_t rows = static_cast<int64_t>(a.shape(0)), cols = static_cast<int64_t>(a.shape(1));
  if (w.check_shape && w.rows >= 0 && (w.at_least ? rows < w.rows : rows != w.rows))
    return fail("has " + std::to_string(rows) + " rows");
  if (w.check_shape && w.cols >= 0 && cols != w.cols) return fail("has " + std::to_string(cols) + " columns");
  if (!c_contiguous(a)) return fail("is not contiguous");
  const int dev = a.device_type();
  const bool mem_ok = w.mem == LOCMOE_MEMORY_DEVICE ? (dev == kDlCuda || dev == kDlCudaManaged) : dev == kDlCpu;
  if (!mem_ok) return fail("is in " + memory_name(dev));
  return {};
}
template <class A>
void check_array(const A& a, const char* name, const Want& w) {
  if (std::string why = array_problem(a, name, w); !why.empty()) bad(why);
}

// Outputs must not share memory with any other argument of the call (the library reads its inputs
// while it writes its outputs; an overlap would give garbage, not an error).
struct Span {
  const char* name;
  uintptr_t lo, hi;
};
template <class A>
Span span(const A& a, const char* name) {
  const auto lo = reinterpret_cast<uintptr_t>(a.data());
  return {name, lo, lo + a.nbytes()};
}
void check_no_overlap(std::initializer_list<Span> outputs, std::initializer_list<Span> others) {
  for (const Span& o : outputs) {
    if (o.lo == o.hi) continue;
    for (const Span& x : others)
      if (x.lo != x.hi && x.name != o.name && o.lo < x.hi && x.lo < o.hi)
        bad(std::string(o.name) + " overlaps " + x.name + " in memory; an output needs a buffer of its own");
  }
}

// This rank's refusal of a collective call's arguments ("" when `checks` refuses nothing). The
// peers wait in the collective: a refused call still takes its turn, as a refusal passed to the
// C API (locmoe_refuse_next_call) before the call itself, so the peers learn of it exactly as of
// the C API's own argument checks (at once, naming this rank and the reason, where the call has a
// metadata round); then raise_refusal raises the ValueError here.
template <class F>
std::string refusal_of(F&& checks) {
  try {
    checks();
  } catch (const nb::builtin_exception& e) {
    if (e.type() != nb::exception_type::value_error) throw;
    return e.what();
  }
  return {};
}
template <class Call>
void refuse(const std::string& why, Call&& call) {
  locmoe_refuse_next_call(why.c_str());
  (void)call();  // fails with `why`: the C API's message, the peers' verdict
  bad(why);
}

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
  void allreduce_sum(nb::object values) {
    OutArray a;
    const std::string why = refusal_of([&] {
      a = output_array(values, "values");
      if (!f64(a.dtype()) || !c_contiguous(a) || a.device_type() != kDlCpu)
        bad("values: expected a float64 contiguous array (any shape) in host memory, got " + describe(a));
    });
    if (!why.empty()) refuse(why, [&] { return locmoe_group_allreduce_sum(g_, nullptr, 0); });
    check(locmoe_group_allreduce_sum(g_, static_cast<double*>(a.data()), static_cast<int64_t>(a.size())));
  }

 private:
  locmoe_group_t g_ = nullptr;
};

class Plan {
 public:
  Plan(Group& g, nb::object expert_obj, nb::object weight_obj, int experts_per_rank, nb::object slot_dropped) {
    InArray expert, weight, d;
    int64_t T = 0, k = 0;
    const uint8_t* dropped = nullptr;
    const int32_t* ids = nullptr;
    std::vector<int32_t> narrowed;
    const std::string why = refusal_of([&] {
      expert = input_array(expert_obj, "expert");
      Want we;
      we.dtype = "int32 or int64";
      we.dtype_ok = i32_or_i64;
      check_array(expert, "expert", we);
      T = static_cast<int64_t>(expert.shape(0));
      k = static_cast<int64_t>(expert.shape(1));
      if (T > std::numeric_limits<int32_t>::max() || k > std::numeric_limits<int32_t>::max())
        bad("expert is [" + std::to_string(T) + ", " + std::to_string(k) + "]: at most 2^31 - 1 tokens and slots");
      weight = input_array(weight_obj, "weight");
      check_array(weight, "weight", Want{T, k});
      if (!slot_dropped.is_none()) {
        d = input_array(slot_dropped, "slot_dropped");
        Want wd{T, k};
        wd.dtype = "uint8 or bool";
        wd.dtype_ok = u8;
        check_array(d, "slot_dropped", wd);
        dropped = static_cast<const uint8_t*>(d.data());
      }
      // int64 ids (what torch.topk returns) are narrowed here, each checked first: a value outside
      // int32 would otherwise wrap into a valid-looking id.
      ids = static_cast<const int32_t*>(expert.data());
      if (!i32(expert.dtype())) {
        const auto* wide = static_cast<const int64_t*>(expert.data());
        const int64_t E = static_cast<int64_t>(experts_per_rank) * g.size();
        narrowed.resize(static_cast<size_t>(T * k));
        for (int64_t i = 0; i < T * k; ++i) {
          if (wide[i] < -1 || wide[i] >= std::max<int64_t>(E, 0))
            bad("expert[" + std::to_string(i / k) + ", " + std::to_string(i % k) + "] = " + std::to_string(wide[i]) +
                " is out of range [-1, " + std::to_string(E) + ") (E = experts_per_rank x group size)");
          narrowed[static_cast<size_t>(i)] = static_cast<int32_t>(wide[i]);
        }
        ids = narrowed.data();
      }
    });
    if (!why.empty()) {
      refuse(why, [&] { return locmoe_plan_create(g.get(), 0, 1, 1, nullptr, nullptr, nullptr, &p_); });
    }
    check(locmoe_plan_create(g.get(), static_cast<int32_t>(T), static_cast<int32_t>(k), experts_per_rank, ids,
                             static_cast<const float*>(weight.data()), dropped, &p_));
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
  void weight_backward(nb::object logits_obj, nb::object d_weight_obj, bool renormalize,
                       nb::object d_logits_obj) const {
    const int64_t T = info_.num_tokens, E = info_.num_experts, k = info_.k;
    const InArray logits = input_array(logits_obj, "logits");
    const InArray d_weight = input_array(d_weight_obj, "d_weight");
    const OutArray d_logits = output_array(d_logits_obj, "d_logits");
    check_array(logits, "logits", Want{T, E});
    check_array(d_weight, "d_weight", Want{T, k});
    check_array(d_logits, "d_logits", Want{T, E});
    check_no_overlap({span(d_logits, "d_logits")}, {span(logits, "logits"), span(d_weight, "d_weight")});
    check(locmoe_plan_weight_backward(p_, static_cast<const float*>(logits.data()),
                                      static_cast<const float*>(d_weight.data()), renormalize ? 1 : 0,
                                      static_cast<float*>(d_logits.data())));
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
  explicit Router(const locmoe_router_config_t& c) {
    check(locmoe_router_create(&c, &r_));
    name_ = c.name != nullptr ? c.name : "locmoe+";
    k_ = c.k;
    renormalize_ = c.renormalize != 0;
  }
  locmoe_router_t get() const { return r_; }
  const std::string& name() const { return name_; }
  int k() const { return k_; }
  bool renormalize() const { return renormalize_; }
  ~Router() { locmoe_router_destroy(r_); }
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;
  Plan* route(Group& g, nb::object features_obj, nb::object gate_obj, int experts_per_rank) {
    // What only this rank can see (not an array, rank, dtype, layout, memory, more rows than int32)
    // is refused here and passed to the C API as this rank's refusal. The shapes the C API is told (experts_per_rank, the
    // gate's rows against E and its hidden size against the features') go to locmoe_route_ex even
    // when wrong: it refuses them in this rank's turn of the routing collective, so the peers fail
    // at once naming this rank and the reason instead of waiting for it until the timeout.
    InArray features, gate;
    int64_t T = 0, H = 0;
    const int64_t E = static_cast<int64_t>(experts_per_rank) * g.size();
    const std::string why = refusal_of([&] {
      features = input_array(features_obj, "features");
      check_array(features, "features", Want{});
      T = static_cast<int64_t>(features.shape(0));
      H = static_cast<int64_t>(features.shape(1));
      if (T > std::numeric_limits<int32_t>::max()) bad("features has " + std::to_string(T) + " rows: at most 2^31 - 1");
      gate = input_array(gate_obj, "gate");
      Want want_gate{experts_per_rank > 0 ? E : -1, H};
      want_gate.check_shape = false;
      check_array(gate, "gate", want_gate);
    });
    if (!why.empty()) {
      locmoe_plan_t none = nullptr;
      refuse(why, [&] { return locmoe_route_ex(r_, g.get(), nullptr, 0, 1, nullptr, 0, 0, experts_per_rank, &none); });
    }
    // This rank's own refusal of a shape, in the words of every other array refusal of the module;
    // raised (ValueError) once the C API has told the peers.
    std::string shape_problem;
    if (experts_per_rank <= 0) {
      shape_problem = "experts_per_rank must be > 0, got " + std::to_string(experts_per_rank);
    } else {
      shape_problem = array_problem(gate, "gate", Want{E, H});
    }
    locmoe_plan_t p = nullptr;
    const locmoe_status_t s =
        locmoe_route_ex(r_, g.get(), static_cast<const float*>(features.data()), static_cast<int32_t>(T), H,
                        static_cast<const float*>(gate.data()), static_cast<int64_t>(gate.shape(0)),
                        static_cast<int64_t>(gate.shape(1)), experts_per_rank, &p);
    if (!shape_problem.empty()) {
      locmoe_plan_destroy(p);  // NULL unless the C API accepted what this module refuses
      bad(shape_problem);
    }
    check(s);
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

double plan_aux_loss(const Plan& p, const std::string& kind, nb::object logits_obj, nb::object d_logits_obj) {
  locmoe_aux_loss_t k = 0;
  if (kind == "load_balance") k = LOCMOE_AUX_LOAD_BALANCE;
  else if (kind == "z") k = LOCMOE_AUX_Z_LOSS;
  else if (kind == "locality") k = LOCMOE_AUX_LOCALITY;
  else bad("kind must be 'load_balance', 'z' or 'locality', got '" + kind + "'");
  const Want w{p.info().num_tokens, p.info().num_experts};  // the plan's tokens x experts
  const InArray logits = input_array(logits_obj, "logits");
  const OutArray d_logits = output_array(d_logits_obj, "d_logits");
  check_array(logits, "logits", w);
  check_array(d_logits, "d_logits", w);
  check_no_overlap({span(d_logits, "d_logits")}, {span(logits, "logits")});
  double loss = 0;
  check(locmoe_plan_aux_loss(p.get(), k, static_cast<const float*>(logits.data()), &loss,
                             static_cast<float*>(d_logits.data())));
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
  // Dispatches made on this handle so far: each one replaces the layouts the earlier one left for
  // combine and the backwards (locmoe.torch compares it at backward to refuse a reused handle).
  uint64_t generation() const { return generation_; }
  void next_generation() { ++generation_; }
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
  uint64_t generation_ = 0;
};

class Dispatcher {
 public:
  Dispatcher(Group& g, int experts_per_rank, int64_t hidden, int max_tokens, int top_k, const std::string& dtype,
             int align, int64_t max_recv_rows, const std::string& device, bool weight_grads_with_dispatch_backward)
      : group_(&g) {
    cfg_ = LOCMOE_DISPATCHER_CONFIG_INIT;
    cfg_.experts_per_rank = experts_per_rank;
    cfg_.hidden = hidden;
    cfg_.max_tokens = max_tokens;
    cfg_.top_k = top_k;
    cfg_.align = align;
    cfg_.max_recv_rows = max_recv_rows;
    cfg_.weight_grads_with_dispatch_backward = weight_grads_with_dispatch_backward ? 1 : 0;
    const std::string why = refusal_of([&] {
      if (dtype == "float32") cfg_.dtype = LOCMOE_DTYPE_F32;
      else if (dtype == "bfloat16") cfg_.dtype = LOCMOE_DTYPE_BF16;
      else bad("dtype must be 'float32' or 'bfloat16', got '" + dtype + "'");
      if (device == "cpu") cfg_.memory = LOCMOE_MEMORY_HOST;
      else if (device == "cuda") cfg_.memory = LOCMOE_MEMORY_DEVICE;
      else bad("device must be 'cpu' or 'cuda', got '" + device + "'");
    });
    if (!why.empty()) refuse(why, [&] { return locmoe_dispatcher_create(g.get(), &cfg_, &d_); });
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
  bool weight_grads_with_dispatch_backward() const { return cfg_.weight_grads_with_dispatch_backward != 0; }
  nb::tuple exchange_counters() const {
    uint64_t rounds = 0, exchanges = 0;
    check(locmoe_dispatcher_exchange_counters(d_, &rounds, &exchanges));
    return nb::make_tuple(rounds, exchanges);
  }
  Handle* make_handle() { return new Handle(d_); }

  int64_t dispatch(nb::object x_obj, Plan& plan, Handle& h, nb::object expert_in_obj, uintptr_t stream) {
    InArray x;
    OutArray expert_in;
    const std::string why = refusal_of([&] {
      x = input_array(x_obj, "x");
      expert_in = output_array(expert_in_obj, "expert_in");
      check_array(x, "x", rows(plan.info().num_tokens));
      check_array(expert_in, "expert_in", rows(-1));
      check_no_overlap({span(expert_in, "expert_in")}, {span(x, "x")});
    });
    void* st = reinterpret_cast<void*>(stream);
    if (!why.empty()) refuse(why, [&] { return locmoe_dispatch(d_, nullptr, plan.get(), h.get(), nullptr, 0, st); });
    h.next_generation();
    check(locmoe_dispatch(d_, x.data(), plan.get(), h.get(), expert_in.data(),
                          static_cast<int64_t>(expert_in.shape(0)), reinterpret_cast<void*>(stream)));
    return h.info().expert_rows;
  }
  void combine(nb::object expert_out_obj, Handle& h, nb::object out_obj, uintptr_t stream) {
    const locmoe_handle_info_t i = h.info();
    InArray expert_out;
    OutArray out;
    const std::string why = refusal_of([&] {
      expert_out = input_array(expert_out_obj, "expert_out");
      out = output_array(out_obj, "out");
      check_array(expert_out, "expert_out", rows(i.expert_rows, true));
      check_array(out, "out", rows(i.num_tokens));
      check_no_overlap({span(out, "out")}, {span(expert_out, "expert_out")});
    });
    void* st = reinterpret_cast<void*>(stream);
    if (!why.empty()) refuse(why, [&] { return locmoe_combine(d_, nullptr, h.get(), nullptr, st); });
    check(locmoe_combine(d_, expert_out.data(), h.get(), out.data(), reinterpret_cast<void*>(stream)));
  }
  void dispatch_backward(nb::object grad_expert_in_obj, Handle& h, nb::object grad_x_obj, nb::object grad_weights,
                         uintptr_t stream) {
    const locmoe_handle_info_t i = h.info();
    InArray grad_expert_in;
    OutArray grad_x;
    float* gw = nullptr;
    OutArray gwa;
    const std::string why = refusal_of([&] {
      grad_expert_in = input_array(grad_expert_in_obj, "grad_expert_in");
      grad_x = output_array(grad_x_obj, "grad_x");
      check_array(grad_expert_in, "grad_expert_in", rows(i.expert_rows, true));
      check_array(grad_x, "grad_x", rows(i.num_tokens));
      Span gws{"", 0, 0};
      if (!grad_weights.is_none()) {
        gwa = output_array(grad_weights, "grad_weights");
        check_array(gwa, "grad_weights", weight_grads(i));
        gw = static_cast<float*>(gwa.data());
        gws = span(gwa, "grad_weights");
      }
      check_no_overlap({span(grad_x, "grad_x"), gws},
                       {span(grad_expert_in, "grad_expert_in"), span(grad_x, "grad_x"), gws});
    });
    void* st = reinterpret_cast<void*>(stream);
    if (!why.empty()) refuse(why, [&] { return locmoe_dispatch_backward(d_, nullptr, h.get(), nullptr, st); });
    if (gw == nullptr)
      check(locmoe_dispatch_backward(d_, grad_expert_in.data(), h.get(), grad_x.data(), st));
    else
      check(locmoe_dispatch_backward_weights(d_, grad_expert_in.data(), h.get(), grad_x.data(), gw, st));
  }
  void combine_backward(nb::object grad_out_obj, Handle& h, nb::object expert_out_obj, nb::object grad_expert_out,
                        nb::object grad_weights, uintptr_t stream) {
    const locmoe_handle_info_t i = h.info();
    InArray grad_out, expert_out;
    void* gy = nullptr;
    float* gw = nullptr;
    OutArray gya, gwa;
    const std::string why = refusal_of([&] {
      grad_out = input_array(grad_out_obj, "grad_out");
      expert_out = input_array(expert_out_obj, "expert_out");
      check_array(grad_out, "grad_out", rows(i.num_tokens));
      check_array(expert_out, "expert_out", rows(i.expert_rows, true));
      Span none{"", 0, 0};
      Span gys = none, gws = none;
      if (!grad_expert_out.is_none()) {
        gya = output_array(grad_expert_out, "grad_expert_out");
        check_array(gya, "grad_expert_out", rows(i.expert_rows, true));
        gy = gya.data();
        gys = span(gya, "grad_expert_out");
      }
      if (!grad_weights.is_none()) {
        gwa = output_array(grad_weights, "grad_weights");
        check_array(gwa, "grad_weights", weight_grads(i));
        gw = static_cast<float*>(gwa.data());
        gws = span(gwa, "grad_weights");
      }
      const Span ins[] = {span(grad_out, "grad_out"), span(expert_out, "expert_out")};
      check_no_overlap({gys, gws}, {ins[0], ins[1], gys, gws});
    });
    void* st = reinterpret_cast<void*>(stream);
    if (!why.empty())
      refuse(why, [&] { return locmoe_combine_backward(d_, nullptr, h.get(), nullptr, nullptr, nullptr, st); });
    check(locmoe_combine_backward(d_, grad_out.data(), h.get(), expert_out.data(), gy, gw,
                                  reinterpret_cast<void*>(stream)));
  }

 private:
  // Token rows of this dispatcher: [n, hidden] (n < 0: any; at_least: n is a minimum) of its dtype
  // in its memory.
  Want rows(int64_t n, bool at_least = false) const {
    Want w{n, cfg_.hidden, at_least};
    const bool b = cfg_.dtype == LOCMOE_DTYPE_BF16;
    w.dtype = b ? "bfloat16 (or uint16 bits)" : "float32";
    w.dtype_ok = b ? bf16 : f32;
    w.mem = cfg_.memory;
    w.of_dispatcher = true;
    return w;
  }

  // The combine weights' gradients: float32 [T, k] in the dispatcher's memory.
  Want weight_grads(const locmoe_handle_info_t& i) const {
    Want w{i.num_tokens, i.k};
    w.mem = cfg_.memory;
    w.of_dispatcher = true;
    return w;
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
  m.def("_refuse_next_call", [](const std::string& message) { locmoe_refuse_next_call(message.c_str()); },
        nb::arg("message"),
        "Local: this thread's next collective call refuses with `message` in its turn (locmoe_refuse_next_call); "
        "used by locmoe.torch for the arguments it checks itself, so the peers learn of them at once.");
  m.def("_abort_all", [](const std::string& message) { locmoe_abort_all(message.c_str()); }, nb::arg("message"),
        "Not collective: tells the other ranks of every live group that this rank gives up (locmoe_abort_all); "
        "used by the unhandled-exception hook of `import locmoe`.");

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
      .def("abort", [](Group& g, const std::string& message) { check(locmoe_group_abort(g.get(), message.c_str())); },
           nb::arg("message"),
           "Not collective: the other ranks' pending or next collective fails at once naming this rank and "
           "`message`; the group is unusable afterwards.")
      .def("allreduce_sum", &Group::allreduce_sum, nb::arg("values"),
           "Collective in-place sum of a contiguous float64 numpy array over the group.");

  nb::class_<Plan>(m, "Plan", "This rank's routing plan (collective constructor).")
      .def(nb::init<Group&, nb::object, nb::object, int, nb::object>(), nb::arg("group"), nb::arg("expert"),
           nb::arg("weight"), nb::arg("experts_per_rank"), nb::arg("slot_dropped") = nb::none(),
           nb::keep_alive<1, 2>(),
           "Collective. expert: int32 or int64 [T, k] global expert ids in [-1, E) (-1 = none; int64 is "
           "what torch.topk returns); weight: float32 [T, k]; slot_dropped: optional uint8/bool [T, k]. "
           "Contiguous host arrays, read only (read-only arrays are fine), copied.")
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
      .def(
          "__init__",
          [](Router* self, const std::string& name, int k, double capacity_factor, double tau, double locality_margin,
             bool renormalize, int candidates, double beta, int64_t capacity_floor, int max_nodes,
             double cross_node_cost, double same_node_cost, int opt_iterations, bool normalize_before_drop,
             int64_t min_capacity, const std::string& drop_policy, const std::string& ecr_order,
             double candidate_mass, const std::string& score_function, int groups, int topk_groups,
             const std::string& group_score, double routed_scaling_factor, double bias_update_rate,
             bool opt_tau_capacity) {
            locmoe_router_config_t c = LOCMOE_ROUTER_CONFIG_INIT;
            c.name = name.c_str();  // the strings are copied by locmoe_router_create
            c.k = k;
            c.capacity_factor = capacity_factor;
            c.tau = tau;
            c.locality_margin = locality_margin;
            c.renormalize = renormalize ? 1 : 0;
            c.candidates = candidates;
            c.beta = beta;
            c.capacity_floor = capacity_floor;
            c.max_nodes = max_nodes;
            c.cross_node_cost = cross_node_cost;
            c.same_node_cost = same_node_cost;
            c.opt_iterations = opt_iterations;
            c.normalize_before_drop = normalize_before_drop ? 1 : 0;
            c.min_capacity = min_capacity;
            c.drop_policy = drop_policy.c_str();
            c.ecr_order = ecr_order.c_str();
            c.candidate_mass = candidate_mass;
            c.score_function = score_function.c_str();
            c.groups = groups;
            c.topk_groups = topk_groups;
            c.group_score = group_score.c_str();
            c.routed_scaling_factor = routed_scaling_factor;
            c.bias_update_rate = bias_update_rate;
            c.opt_tau_capacity = opt_tau_capacity ? 1 : 0;
            new (self) Router(c);
          },
          nb::arg("name") = "locmoe+", nb::arg("k") = 2, nb::arg("capacity_factor") = 1.25, nb::arg("tau") = 0.9,
          nb::arg("locality_margin") = 0.1, nb::arg("renormalize") = true, nb::arg("candidates") = 0,
          nb::arg("beta") = 0.9, nb::arg("capacity_floor") = 1, nb::arg("max_nodes") = 0,
          nb::arg("cross_node_cost") = 0.05, nb::arg("same_node_cost") = 0.0, nb::arg("opt_iterations") = 40,
          nb::arg("normalize_before_drop") = false, nb::arg("min_capacity") = 0, nb::arg("drop_policy") = "slot",
          nb::arg("ecr_order") = "affinity", nb::arg("candidate_mass") = 0.0, nb::arg("score_function") = "sigmoid",
          nb::arg("groups") = 0, nb::arg("topk_groups") = 0, nb::arg("group_score") = "top2-sum",
          nb::arg("routed_scaling_factor") = 1.0, nb::arg("bias_update_rate") = 0.001,
          nb::arg("opt_tau_capacity") = false,
          "Parameters as locmoe_router_config_t (include/locmoe/locmoe.h; what each does: RouterConfig in "
          "router/include/locmoe/router/router.h); a bad value raises Error naming it.")
      .def_prop_ro("name", &Router::name)
      .def_prop_ro("k", &Router::k)
      .def_prop_ro("renormalize", &Router::renormalize)
      .def("last_stats", &router_last_stats,
           "Local. What the last route() decided for the whole group, as a dict (locmoe_route_stats_t).")
      .def("route", &Router::route, nb::arg("group"), nb::arg("features"), nb::arg("gate"),
           nb::arg("experts_per_rank"), nb::rv_policy::take_ownership, nb::keep_alive<0, 2>(),
           "Collective. features float32 [T, H] (this rank's tokens), gate float32 [E, H] (same on "
           "every rank) -> this rank's Plan. A wrong shape (gate rows != E = experts_per_rank x group "
           "size, gate columns != H, experts_per_rank <= 0) or a wrong dtype, layout or memory raises "
           "ValueError here and locmoe.Error at once on every other rank, naming this rank and the reason; "
           "the group stays usable.");

  // dynamic_attr: locmoe.torch keeps the link between a dispatch and its combine on the handle.
  nb::class_<Handle>(m, "Handle", nb::dynamic_attr(), "Layouts of one dispatch, reused by combine and the backwards.")
      .def_prop_ro("generation", &Handle::generation,
                   "Dispatches made on this handle so far; a later dispatch replaces the layouts an earlier "
                   "one left for combine and the backwards (one handle per dispatch in flight).")
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
      .def(nb::init<Group&, int, int64_t, int, int, const std::string&, int, int64_t, const std::string&, bool>(),
           nb::arg("group"), nb::arg("experts_per_rank"), nb::arg("hidden"), nb::arg("max_tokens"),
           nb::arg("top_k"), nb::arg("dtype") = "float32", nb::arg("align") = 1, nb::arg("max_recv_rows") = 0,
           nb::arg("device") = "cpu", nb::arg("weight_grads_with_dispatch_backward") = false,
           nb::keep_alive<1, 2>(),
           "weight_grads_with_dispatch_backward: the combine weights' gradients travel back with "
           "dispatch_backward's rows (a training step is 4 data exchanges instead of 5): "
           "combine_backward then returns none and the dispatch_backward after it on the handle does.")
      .def_prop_ro("max_expert_rows", &Dispatcher::max_expert_rows)
      .def_prop_ro("hidden", &Dispatcher::hidden)
      .def_prop_ro("top_k", &Dispatcher::top_k)
      .def_prop_ro("experts_per_rank", &Dispatcher::experts_per_rank)
      .def_prop_ro("dtype", &Dispatcher::dtype)
      .def_prop_ro("device", &Dispatcher::device)
      .def_prop_ro("weight_grads_with_dispatch_backward", &Dispatcher::weight_grads_with_dispatch_backward)
      .def("exchange_counters", &Dispatcher::exchange_counters,
           "Local. (metadata_rounds, data_exchanges) of the group on this rank so far: take differences "
           "around the calls to count (a training step: 1 round; 4 exchanges with "
           "weight_grads_with_dispatch_backward, else 5).")
      .def("make_handle", &Dispatcher::make_handle, nb::rv_policy::take_ownership, nb::keep_alive<0, 1>())
      .def("dispatch_into", &Dispatcher::dispatch, nb::arg("x"), nb::arg("plan"), nb::arg("handle"),
           nb::arg("expert_in"), nb::arg("stream") = 0,
           "Collective. x [T, H] -> expert_in [rows, H] (expert-major; rows >= the worst case of what this rank "
           "receives, max_expert_rows always suffices, else every rank fails); returns expert_rows.")
      .def("combine_into", &Dispatcher::combine, nb::arg("expert_out"), nb::arg("handle"), nb::arg("out"),
           nb::arg("stream") = 0, "Collective. expert_out [>= expert_rows, H] -> out [T, H].")
      .def("dispatch_backward_into", &Dispatcher::dispatch_backward, nb::arg("grad_expert_in"),
           nb::arg("handle"), nb::arg("grad_x"), nb::arg("grad_weights") = nb::none(), nb::arg("stream") = 0,
           "Collective. grad_expert_in [>= expert_rows, H] -> grad_x [T, H] (sum, no weights); with "
           "weight_grads_with_dispatch_backward also grad_weights float32 [T, k] (combine_backward's).")
      .def("combine_backward_into", &Dispatcher::combine_backward, nb::arg("grad_out"), nb::arg("handle"),
           nb::arg("expert_out"), nb::arg("grad_expert_out") = nb::none(), nb::arg("grad_weights") = nb::none(),
           nb::arg("stream") = 0,
           "Collective. grad_out [T, H] -> grad_expert_out [>= expert_rows, H] and grad_weights float32 [T, k].");
}
