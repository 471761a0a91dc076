// moe_layer: a complete Mixture-of-Experts layer on host memory, forward and backward,
// checked against a single-process reference of the same layer with the same weights.
//
//   router:   locmoe::Router (--router: LocMoE+ or a baseline, as locmoe-route), gate G [E,H],
//             logits z = x G^T; its plan's weights are the (renormalized) gate probabilities, and
//             capacity drops are reported
//   dispatch: locmoe::Dispatcher (the comm layer's Communicator underneath)
//   experts:  expert e: y = W2_e relu(W1_e x), W1_e [F,H], W2_e [H,F]; weights from --seed, the
//             same on every rank; rank r holds experts [r L, (r+1) L)
//   combine:  out[t] = sum_j p[t,e_j] y_{e_j}(x[t])
//   backward: loss = sum(out * G_out) with a fixed random G_out: grad of x (experts and router
//             paths), of the gate G and of W1, W2, through combine_backward, the experts'
//             backward, dispatch_backward and the router's combine_weight_backward.
//
// The reference: every rank gathers every rank's tokens, routes them in one process
// (Router::route_all_ranks; its plan for this rank must equal the distributed one) and runs the
// same layer densely for its own tokens (no dispatch); the weight gradients of the reference are
// summed over ranks (Bootstrap::allreduce) and compared with the distributed ones on the rank owning each
// expert. Exits 1 when an error exceeds --tolerance or the plans differ.
//
// Ranks meet through make_bootstrap_from_env(): under mpirun over MPI, under a launcher that sets
// RANK and WORLD_SIZE (scripts/emu-cluster.sh launch, torchrun) over TCP; MPI is initialized (and
// finalized here) only in the first case.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/check.h"
#include "locmoe/core/log.h"
#include "locmoe/ep/dispatcher.h"
#include "locmoe/router/finalize.h"
#include "locmoe/router/gate_grad.h"
#include "locmoe/router/router.h"
#include "locmoe/topology/cluster.h"

namespace {

using locmoe::Status;
using Clock = std::chrono::steady_clock;

struct Options {
  int tokens = 256;       // per rank
  int hidden = 64;
  int ffn = 128;
  int experts_per_rank = 2;
  int k = 2;
  int steps = 3;
  int align = 1;
  double capacity_factor = 1.25;
  uint32_t seed = 1;
  std::string router = "locmoe+";
  double tolerance = 1e-3;
  bool json = false;
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Row-major helpers (naive loops: the example's shapes are small; the point is the data flow).
// out[n,m] (+)= a[n,kk] * b[m,kk]^T
void matmul_nt(const float* a, const float* b, float* out, int n, int m, int kk, bool accumulate = false) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) {
      float s = accumulate ? out[i * m + j] : 0.0f;
      for (int q = 0; q < kk; ++q) s += a[i * kk + q] * b[j * kk + q];
      out[i * m + j] = s;
    }
}
// out[n,m] (+)= a[n,kk] * b[kk,m]
void matmul_nn(const float* a, const float* b, float* out, int n, int m, int kk, bool accumulate = false) {
  if (!accumulate) std::fill(out, out + static_cast<size_t>(n) * m, 0.0f);
  for (int i = 0; i < n; ++i)
    for (int q = 0; q < kk; ++q) {
      const float av = a[i * kk + q];
      for (int j = 0; j < m; ++j) out[i * m + j] += av * b[q * m + j];
    }
}
// out[kk,m] += a[n,kk]^T * b[n,m]
void matmul_tn_acc(const float* a, const float* b, float* out, int n, int kk, int m) {
  for (int i = 0; i < n; ++i)
    for (int q = 0; q < kk; ++q) {
      const float av = a[i * kk + q];
      for (int j = 0; j < m; ++j) out[q * m + j] += av * b[i * m + j];
    }
}

struct Weights {
  int E, H, F;
  std::vector<float> gate;  // [E,H]
  std::vector<float> w1;    // [E,F,H]
  std::vector<float> w2;    // [E,H,F]
  const float* W1(int e) const { return w1.data() + static_cast<size_t>(e) * F * H; }
  const float* W2(int e) const { return w2.data() + static_cast<size_t>(e) * H * F; }
};

Weights make_weights(int E, int H, int F, uint32_t seed) {
  Weights w{E, H, F, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  w.gate.resize(static_cast<size_t>(E) * H);
  w.w1.resize(static_cast<size_t>(E) * F * H);
  w.w2.resize(static_cast<size_t>(E) * H * F);
  for (auto& v : w.gate) v = 0.5f * n01(rng);
  for (auto& v : w.w1) v = n01(rng) / std::sqrt(static_cast<float>(H));
  for (auto& v : w.w2) v = n01(rng) / std::sqrt(static_cast<float>(F));
  return w;
}

// Logits z = x G^T [T,E] (the trainer's copy, for the router's backward).
std::vector<float> logits_of(const std::vector<float>& x, const Weights& w, int T) {
  std::vector<float> z(static_cast<size_t>(T) * w.E);
  matmul_nt(x.data(), w.gate.data(), z.data(), T, w.E, w.H);
  return z;
}

// Router path of the backward: dz from d weight (the router's combine_weight_backward), then
// dx += dz G and dG += dz^T x.
Status router_backward(const locmoe::RoutingPlan& plan, const std::vector<float>& x, const Weights& w, bool renorm,
                       const std::vector<float>& grad_w, std::vector<float>& grad_x, std::vector<float>& grad_gate) {
  const int T = plan.num_tokens, E = w.E, H = w.H;
  const std::vector<float> z = logits_of(x, w, T);
  std::vector<float> dz(static_cast<size_t>(T) * E);
  LOCMOE_RETURN_IF_ERROR(locmoe::combine_weight_backward(plan, locmoe::MatrixView{z.data(), T, E}, grad_w, renorm, dz));
  matmul_nn(dz.data(), w.gate.data(), grad_x.data(), T, H, E, /*accumulate=*/true);
  matmul_tn_acc(dz.data(), x.data(), grad_gate.data(), T, E, H);
  return locmoe::ok_status();
}

// One expert over `n` rows: forward keeps pre-activations for the backward.
void expert_forward(const Weights& w, int e, const float* in, int n, float* pre, float* out) {
  matmul_nt(in, w.W1(e), pre, n, w.F, w.H);  // pre = in W1^T  [n,F]
  std::vector<float> h(static_cast<size_t>(n) * w.F);
  for (size_t i = 0; i < h.size(); ++i) h[i] = std::max(pre[i], 0.0f);
  matmul_nt(h.data(), w.W2(e), out, n, w.H, w.F);  // out = h W2^T [n,H]
}
// Backward of one expert: accumulates dW1 [F,H], dW2 [H,F]; writes d in [n,H].
void expert_backward(const Weights& w, int e, const float* in, const float* pre, const float* gout, int n,
                     float* dw1, float* dw2, float* din) {
  const int H = w.H, F = w.F;
  std::vector<float> h(static_cast<size_t>(n) * F), dh(static_cast<size_t>(n) * F);
  for (size_t i = 0; i < h.size(); ++i) h[i] = std::max(pre[i], 0.0f);
  matmul_tn_acc(gout, h.data(), dw2, n, H, F);           // dW2 += gout^T h
  matmul_nn(gout, w.W2(e), dh.data(), n, F, H);          // dh = gout W2
  for (size_t i = 0; i < dh.size(); ++i) dh[i] = pre[i] > 0 ? dh[i] : 0.0f;
  matmul_tn_acc(dh.data(), in, dw1, n, F, H);            // dW1 += dh^T in
  matmul_nn(dh.data(), w.W1(e), din, n, H, F);           // din = dh W1
}

struct Grads {
  std::vector<float> x, gate, w1, w2;  // w1/w2 over ALL experts (reference) or local ones
};

// The dense reference for this rank's tokens, from the single-process plan.
Status reference_layer(const Weights& w, const locmoe::RoutingPlan& plan, bool renorm, const std::vector<float>& x,
                       const std::vector<float>& g_out, std::vector<float>& out, Grads& gr) {
  const int H = w.H, F = w.F, T = plan.num_tokens, k = plan.k;
  out.assign(static_cast<size_t>(T) * H, 0.0f);
  gr.x.assign(static_cast<size_t>(T) * H, 0.0f);
  gr.gate.assign(w.gate.size(), 0.0f);
  gr.w1.assign(w.w1.size(), 0.0f);
  gr.w2.assign(w.w2.size(), 0.0f);
  std::vector<float> grad_w(static_cast<size_t>(T) * k, 0.0f), pre(F), y(H), gy(H), din(H);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j) {
      const int e = plan.expert[static_cast<size_t>(t) * k + j];
      if (e < 0) continue;
      const float wt = plan.weight[static_cast<size_t>(t) * k + j];
      const float* xt = &x[static_cast<size_t>(t) * H];
      const float* gt = &g_out[static_cast<size_t>(t) * H];
      expert_forward(w, e, xt, 1, pre.data(), y.data());
      float dw = 0;
      for (int h = 0; h < H; ++h) {
        out[static_cast<size_t>(t) * H + h] += wt * y[h];
        dw += gt[h] * y[h];
        gy[h] = wt * gt[h];
      }
      grad_w[static_cast<size_t>(t) * k + j] = dw;
      expert_backward(w, e, xt, pre.data(), gy.data(), 1, gr.w1.data() + static_cast<size_t>(e) * F * H,
                      gr.w2.data() + static_cast<size_t>(e) * H * F, din.data());
      for (int h = 0; h < H; ++h) gr.x[static_cast<size_t>(t) * H + h] += din[h];
    }
  return router_backward(plan, x, w, renorm, grad_w, gr.x, gr.gate);
}

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(std::abs(a[i] - b[i])));
  return m;
}

int run(const Options& o, locmoe::Bootstrap& boot);

// MPI is finalized only when the bootstrap initialized it (launched by mpirun).
void finalize_mpi() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

// Ends every rank: MPI_Abort under MPI; over TCP this rank exits and its peers' next collective
// fails naming it (the bootstrap's deadline), so nothing hangs either way.
int fail(const Status& s, int rank) {
  std::fprintf(stderr, "moe_layer rank %d: %s\n", rank, s.to_string().c_str());
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Abort(MPI_COMM_WORLD, 2);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  auto boot = locmoe::make_bootstrap_from_env();
  if (!boot.ok()) {
    std::fprintf(stderr, "moe_layer: %s\n", boot.status().to_string().c_str());
    finalize_mpi();
    return 2;
  }
  const int rank = (*boot)->rank();
  locmoe::set_log_rank(rank);

  Options o;
  CLI::App app{"A complete MoE layer (router -> dispatch -> expert FFN -> combine, forward and backward) "
               "over MPI or TCP (make_bootstrap_from_env), checked against a single-process reference"};
  app.add_option("--tokens", o.tokens, "tokens per rank")->check(CLI::Range(0, 1 << 20));
  app.add_option("--hidden", o.hidden, "hidden size H")->check(CLI::Range(1, 1 << 16));
  app.add_option("--ffn", o.ffn, "expert FFN width F")->check(CLI::Range(1, 1 << 16));
  app.add_option("--experts-per-rank", o.experts_per_rank, "local experts L")->check(CLI::Range(1, 1024));
  app.add_option("--k", o.k, "experts per token")->check(CLI::Range(1, 64));
  app.add_option("--steps", o.steps, "forward+backward steps")->check(CLI::Range(1, 1000));
  app.add_option("--align", o.align, "pad each expert's rows to a multiple of this")->check(CLI::Range(1, 1024));
  app.add_option("--capacity-factor", o.capacity_factor, "capacity factor (C_cf = ceil(cf k T / E))")
      ->check(CLI::Range(0.001, 1000.0));
  app.add_option("--seed", o.seed, "seed of weights and tokens");
  app.add_option("--router", o.router, "locmoe+|gshard|switch|expert-choice|node-limited|locmoe|hash|dropless")
      ->check(CLI::IsMember(std::vector<std::string>(std::begin(locmoe::kRouterNames), std::end(locmoe::kRouterNames))));
  app.add_option("--tolerance", o.tolerance, "largest accepted max abs error vs the reference");
  app.add_flag("--json", o.json, "rank 0 prints one JSON document instead of the table");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = rank == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 1);
    boot->reset();
    finalize_mpi();
    return code;
  }
  // Everything MPI-backed lives inside run() or the bootstrap, so it is gone before MPI_Finalize.
  const int code = run(o, **boot);
  boot->reset();
  finalize_mpi();
  return code;
}

namespace {

int run(const Options& o, locmoe::Bootstrap& bootstrap) {
  const int rank = bootstrap.rank(), size = bootstrap.size();
  // Collectives of the check and the figures go through the bootstrap (MPI or TCP alike).
  auto sum = [&](auto* v, size_t n, locmoe::DataType t, locmoe::ReduceOp op = locmoe::ReduceOp::kSum) {
    if (Status s = bootstrap.allreduce(v, v, n, t, op); !s.ok()) fail(s, rank);
  };
  const int E = o.experts_per_rank * size;
  if (o.k > E) {
    if (rank == 0) std::fprintf(stderr, "moe_layer: --k %d exceeds the %d experts\n", o.k, E);
    return 2;
  }

  locmoe::RankDescriptor mine;
  auto host = locmoe::local_host_id();
  if (!host.ok()) return fail(host.status(), rank);
  mine.host_id = *host;
  auto cluster = locmoe::exchange_cluster_map(bootstrap, mine);
  if (!cluster.ok()) return fail(cluster.status(), rank);
  auto comm = locmoe::Communicator::create(bootstrap, *cluster);
  if (!comm.ok()) return fail(comm.status(), rank);

  const int T = o.tokens, H = o.hidden, F = o.ffn, L = o.experts_per_rank;
  locmoe::RouterConfig rc;
  rc.name = o.router;
  rc.k = o.k;
  rc.capacity_factor = o.capacity_factor;
  auto router = locmoe::Router::create(rc);
  auto ref_router = locmoe::Router::create(rc);  // the single-process reference's own instance
  if (!router.ok()) return fail(router.status(), rank);
  if (!ref_router.ok()) return fail(ref_router.status(), rank);
  auto placement = locmoe::placement_from_cluster(*cluster, L);
  if (!placement.ok()) return fail(placement.status(), rank);
  const Weights w = make_weights(E, H, F, o.seed);
  const locmoe::MatrixView gate{w.gate.data(), E, H};

  // The dispatcher is made at the first step, when the router's slots per token are known (an
  // expert-choice plan has E of them); its buffers are sized once by its query, and the steps
  // allocate nothing in it (only the example's own expert math allocates).
  std::unique_ptr<locmoe::Dispatcher> disp;
  std::unique_ptr<locmoe::DispatchHandle> handle;
  int k = 0;
  int64_t max_rows = 0;
  std::vector<float> expert_in, pre, expert_out, grad_eout, grad_ein, out(static_cast<size_t>(T) * H),
      grad_x(static_cast<size_t>(T) * H), grad_w;

  nlohmann::json steps = nlohmann::json::array();
  double worst_fwd = 0, worst_bwd = 0;
  int64_t total_tokens = 0, total_dropped = 0, plan_mismatches = 0;
  uint64_t total_internode = 0;
  for (int step = 0; step < o.steps; ++step) {
    // Every rank draws every rank's tokens (the same generator per rank), i.e. "gathers" them.
    std::vector<float> all_x(static_cast<size_t>(size) * T * H), g_out(static_cast<size_t>(T) * H);
    for (int q = 0; q < size; ++q) {
      std::mt19937 rng(o.seed * 1000003u + static_cast<uint32_t>(step) * 7919u + static_cast<uint32_t>(q));
      std::normal_distribution<float> n01(0.0f, 1.0f);
      for (size_t i = 0; i < static_cast<size_t>(T) * H; ++i) all_x[static_cast<size_t>(q) * T * H + i] = n01(rng);
      if (q == rank)
        for (auto& v : g_out) v = n01(rng);
    }
    const std::vector<float> x(all_x.begin() + static_cast<ptrdiff_t>(rank) * T * H,
                               all_x.begin() + static_cast<ptrdiff_t>(rank + 1) * T * H);

    // --- route
    auto t0 = Clock::now();
    auto routed = router->route(locmoe::MatrixView{x.data(), T, H}, gate, *placement, &bootstrap);
    if (!routed.ok()) return fail(routed.status(), rank);
    const locmoe::RoutingPlan& plan = *routed;
    const double t_route = seconds_since(t0);

    if (!disp) {
      k = plan.k;
      locmoe::DispatcherConfig dc;
      dc.experts_per_rank = L;
      dc.hidden = H;
      dc.max_tokens = T;
      dc.top_k = k;
      dc.align = o.align;
      auto dd = locmoe::Dispatcher::create(bootstrap, **comm, dc);
      if (!dd.ok()) return fail(dd.status(), rank);
      disp = std::move(dd).value();
      auto hh = disp->make_handle();
      if (!hh.ok()) return fail(hh.status(), rank);
      handle = std::move(hh).value();
      max_rows = disp->max_expert_rows();
      for (auto* v : {&expert_in, &expert_out, &grad_eout, &grad_ein}) v->resize(static_cast<size_t>(max_rows) * H);
      pre.resize(static_cast<size_t>(max_rows) * F);
      grad_w.resize(static_cast<size_t>(T) * k);
    }
    locmoe::Dispatcher& d = *disp;
    locmoe::DispatchHandle& h = *handle;

    // --- dispatch
    t0 = Clock::now();
    if (Status s = d.dispatch(x.data(), plan, h, expert_in.data(), max_rows); !s.ok()) return fail(s, rank);
    const double t_dispatch = seconds_since(t0);

    // --- experts (forward), padding rows stay zero
    t0 = Clock::now();
    const auto offs = h.expert_offset();
    const auto cnt = h.expert_count();
    std::fill(expert_out.begin(), expert_out.begin() + h.expert_rows() * H, 0.0f);
    for (int l = 0; l < L; ++l)
      expert_forward(w, rank * L + l, &expert_in[offs[l] * H], static_cast<int>(cnt[l]), &pre[offs[l] * F],
                     &expert_out[offs[l] * H]);
    const double t_experts = seconds_since(t0);

    // --- combine
    t0 = Clock::now();
    if (Status s = d.combine(expert_out.data(), h, out.data()); !s.ok()) return fail(s, rank);
    const double t_combine = seconds_since(t0);

    // --- backward: combine_backward -> experts' backward -> dispatch_backward -> router path
    t0 = Clock::now();
    if (Status s = d.combine_backward(g_out.data(), h, expert_out.data(), grad_eout.data(), grad_w.data()); !s.ok())
      return fail(s, rank);
    std::vector<float> dw1(static_cast<size_t>(L) * F * H, 0.0f), dw2(static_cast<size_t>(L) * H * F, 0.0f);
    std::fill(grad_ein.begin(), grad_ein.begin() + h.expert_rows() * H, 0.0f);
    for (int l = 0; l < L; ++l)
      expert_backward(w, rank * L + l, &expert_in[offs[l] * H], &pre[offs[l] * F], &grad_eout[offs[l] * H],
                      static_cast<int>(cnt[l]), dw1.data() + static_cast<size_t>(l) * F * H,
                      dw2.data() + static_cast<size_t>(l) * H * F, &grad_ein[offs[l] * H]);
    if (Status s = d.dispatch_backward(grad_ein.data(), h, grad_x.data()); !s.ok()) return fail(s, rank);
    std::vector<float> grad_gate(w.gate.size(), 0.0f);
    if (Status s = router_backward(plan, x, w, rc.renormalize, grad_w, grad_x, grad_gate); !s.ok()) return fail(s, rank);
    const double t_backward = seconds_since(t0);

    // --- reference: every rank's tokens routed in one process, this rank's tokens run densely
    auto ref_plans = ref_router->route_all_ranks(locmoe::MatrixView{all_x.data(), static_cast<int64_t>(size) * T, H},
                                                 gate, *placement);
    if (!ref_plans.ok()) return fail(ref_plans.status(), rank);
    const locmoe::RoutingPlan& ref_plan = (*ref_plans)[rank];
    int64_t mismatched = ref_plan.expert == plan.expert ? 0 : 1;
    for (size_t i = 0; i < plan.weight.size() && i < ref_plan.weight.size(); ++i)
      mismatched += std::abs(plan.weight[i] - ref_plan.weight[i]) > 1e-6f;
    std::vector<float> ref_out;
    Grads ref;
    if (Status s = reference_layer(w, ref_plan, rc.renormalize, x, g_out, ref_out, ref); !s.ok()) return fail(s, rank);
    sum(&mismatched, 1, locmoe::DataType::kInt64);
    plan_mismatches += mismatched;
    // Gate gradients: sum over ranks on both sides; expert weights: the reference's sum over ranks.
    sum(ref.gate.data(), ref.gate.size(), locmoe::DataType::kFloat32);
    sum(grad_gate.data(), grad_gate.size(), locmoe::DataType::kFloat32);
    sum(ref.w1.data(), ref.w1.size(), locmoe::DataType::kFloat32);
    sum(ref.w2.data(), ref.w2.size(), locmoe::DataType::kFloat32);
    double fwd = max_abs_diff(out.data(), ref_out.data(), out.size());
    double bwd = max_abs_diff(grad_x.data(), ref.x.data(), grad_x.size());
    bwd = std::max(bwd, max_abs_diff(grad_gate.data(), ref.gate.data(), grad_gate.size()));
    bwd = std::max(bwd, max_abs_diff(dw1.data(), ref.w1.data() + static_cast<size_t>(rank) * L * F * H, dw1.size()));
    bwd = std::max(bwd, max_abs_diff(dw2.data(), ref.w2.data() + static_cast<size_t>(rank) * L * H * F, dw2.size()));
    double errs[2] = {fwd, bwd};
    sum(errs, 2, locmoe::DataType::kFloat64, locmoe::ReduceOp::kMax);
    worst_fwd = std::max(worst_fwd, errs[0]);
    worst_bwd = std::max(worst_bwd, errs[1]);

    // --- figures: tokens per expert (gathered), drops, bytes, stage times (max over ranks)
    std::vector<int64_t> my_counts(cnt.begin(), cnt.end()), counts(static_cast<size_t>(E));
    if (Status s = bootstrap.allgather(my_counts.data(), counts.data(), sizeof(int64_t) * L); !s.ok()) fail(s, rank);
    const locmoe::DispatchStats& st = h.stats();
    int64_t sums[3] = {st.tokens, st.dropped_slots, static_cast<int64_t>(st.internode_bytes_sent)};
    sum(sums, 3, locmoe::DataType::kInt64);
    double times[5] = {t_route, t_dispatch, t_experts, t_combine, t_backward};
    sum(times, 5, locmoe::DataType::kFloat64, locmoe::ReduceOp::kMax);
    total_tokens += sums[0];
    total_dropped += sums[1];
    total_internode += static_cast<uint64_t>(sums[2]);
    if (rank == 0) {
      nlohmann::json js = {{"step", step}, {"tokens", sums[0]}, {"slots_dropped", sums[1]},
                           {"plan_mismatches", mismatched},
                           {"internode_bytes", sums[2]}, {"tokens_per_expert", counts},
                           {"forward_max_abs_err", errs[0]}, {"backward_max_abs_err", errs[1]},
                           {"seconds", {{"route", times[0]}, {"dispatch", times[1]}, {"experts", times[2]},
                                        {"combine", times[3]}, {"backward", times[4]}}}};
      steps.push_back(js);
      if (!o.json) {
        std::printf("step %d: %lld tokens, %lld slots dropped, %lld bytes across nodes (dispatch), "
                    "fwd err %.2e, bwd err %.2e\n",
                    step, static_cast<long long>(sums[0]), static_cast<long long>(sums[1]),
                    static_cast<long long>(sums[2]), errs[0], errs[1]);
        std::printf("  tokens per expert:");
        for (int64_t c : counts) std::printf(" %lld", static_cast<long long>(c));
        std::printf("\n  seconds (max over ranks): route %.4f  dispatch %.4f  experts %.4f  combine %.4f  "
                    "backward %.4f\n", times[0], times[1], times[2], times[3], times[4]);
      }
    }
  }
  const bool ok = worst_fwd <= o.tolerance && worst_bwd <= o.tolerance && plan_mismatches == 0;
  if (rank == 0) {
    if (o.json) {
      nlohmann::json doc = {{"ranks", size}, {"nodes", cluster->num_nodes()}, {"router", o.router},
                            {"tokens", total_tokens}, {"slots_dropped", total_dropped},
                            {"internode_bytes", total_internode}, {"forward_max_abs_err", worst_fwd},
                            {"backward_max_abs_err", worst_bwd}, {"tolerance", o.tolerance}, {"ok", ok},
                            {"plan_mismatches", plan_mismatches},
                            {"hidden", H}, {"ffn", F}, {"experts", E}, {"k", k},
                            {"communicator", {{"transport", (*comm)->transport_name()},
                                              {"algo", (*comm)->algo() == locmoe::A2AAlgo::kHierarchical ? "hier" : "flat"}}},
                            {"steps", steps}};
      std::printf("%s\n", doc.dump(2).c_str());
    } else {
      std::printf("moe_layer: %d ranks on %d nodes, router %s, transport %s: max abs error forward %.3e, "
                  "backward %.3e (tolerance %.1e), plans differing from the single-process router: %lld: %s\n",
                  size, cluster->num_nodes(), o.router.c_str(), (*comm)->transport_name().c_str(), worst_fwd,
                  worst_bwd, o.tolerance, static_cast<long long>(plan_mismatches), ok ? "OK" : "MISMATCH");
    }
  }
  return ok ? 0 : 1;
}

}  // namespace
