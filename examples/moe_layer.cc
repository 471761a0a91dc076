// moe_layer: a complete Mixture-of-Experts layer over MPI on host memory, forward and backward,
// checked against a single-process reference of the same layer with the same weights.
//
//   router:   logits z = x G^T, p = softmax(z), top-k experts per token, combine weight = p[t,e];
//             optional per-source capacity (capacity_factor * k * T / E slots per expert, in token
//             order; later slots are dropped and reported)
//   dispatch: locmoe::Dispatcher (the comm layer's Communicator underneath)
//   experts:  expert e: y = W2_e relu(W1_e x), W1_e [F,H], W2_e [H,F]; weights from --seed, the
//             same on every rank; rank r holds experts [r L, (r+1) L)
//   combine:  out[t] = sum_j p[t,e_j] y_{e_j}(x[t])
//   backward: loss = sum(out * G_out) with a fixed random G_out: grad of x (experts and router
//             paths), of the gate G and of W1, W2, through combine_backward, the experts'
//             backward and dispatch_backward.
//
// The reference: every rank runs the same layer densely for its own tokens (no dispatch); the
// weight gradients of the reference are summed over ranks (MPI_Allreduce) and compared with the
// distributed ones on the rank owning each expert. Exits 1 when an error exceeds --tolerance.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/log.h"
#include "locmoe/ep/dispatcher.h"
#include "locmoe/router/finalize.h"
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
  double capacity_factor = 1.25;  // 0 = no capacity (dropless)
  uint32_t seed = 1;
  std::string router = "topk";
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

// Router output: probabilities (kept for the backward) and the plan's slot arrays.
struct Routed {
  std::vector<float> prob;      // [T,E]
  std::vector<int32_t> expert;  // [T,k]
  std::vector<float> weight;    // [T,k]
  std::vector<uint8_t> dropped; // [T,k]
};

Routed route_topk(const std::vector<float>& x, const Weights& w, int T, int k, double capacity_factor) {
  const int E = w.E, H = w.H;
  Routed r;
  r.prob.resize(static_cast<size_t>(T) * E);
  matmul_nt(x.data(), w.gate.data(), r.prob.data(), T, E, H);
  for (int t = 0; t < T; ++t) {
    float* p = &r.prob[static_cast<size_t>(t) * E];
    const float mx = *std::max_element(p, p + E);
    float s = 0;
    for (int e = 0; e < E; ++e) s += (p[e] = std::exp(p[e] - mx));
    for (int e = 0; e < E; ++e) p[e] /= s;
  }
  const int64_t cap = capacity_factor > 0
                          ? static_cast<int64_t>(std::ceil(capacity_factor * k * T / static_cast<double>(E)))
                          : INT64_MAX;
  std::vector<int64_t> load(E, 0);
  r.expert.assign(static_cast<size_t>(T) * k, -1);
  r.weight.assign(static_cast<size_t>(T) * k, 0.0f);
  r.dropped.assign(static_cast<size_t>(T) * k, 0);
  std::vector<int> order(E);
  for (int t = 0; t < T; ++t) {
    const float* p = &r.prob[static_cast<size_t>(t) * E];
    for (int e = 0; e < E; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    int n = 0;
    for (int j = 0; j < k; ++j) {
      const int e = order[j];
      if (load[e] >= cap) continue;  // over capacity: dropped
      ++load[e];
      r.expert[static_cast<size_t>(t) * k + n] = e;
      r.weight[static_cast<size_t>(t) * k + n] = p[e];
      ++n;
    }
    for (int j = n; j < k; ++j) r.dropped[static_cast<size_t>(t) * k + j] = 1;
  }
  return r;
}

// d loss / d logits from d loss / d weight (weights are softmax probabilities of the chosen
// experts): dz = p * (dp - <dp, p>), dp[t,e] = grad_w of the slot choosing e (0 elsewhere).
void router_backward(const Routed& r, const std::vector<float>& grad_w, const std::vector<float>& x,
                     const Weights& w, int T, int k, std::vector<float>& grad_x, std::vector<float>& grad_gate) {
  const int E = w.E, H = w.H;
  std::vector<float> dz(static_cast<size_t>(T) * E, 0.0f), dp(E);
  for (int t = 0; t < T; ++t) {
    std::fill(dp.begin(), dp.end(), 0.0f);
    for (int j = 0; j < k; ++j) {
      const int e = r.expert[static_cast<size_t>(t) * k + j];
      if (e >= 0) dp[e] += grad_w[static_cast<size_t>(t) * k + j];
    }
    const float* p = &r.prob[static_cast<size_t>(t) * E];
    float dot = 0;
    for (int e = 0; e < E; ++e) dot += dp[e] * p[e];
    for (int e = 0; e < E; ++e) dz[static_cast<size_t>(t) * E + e] = p[e] * (dp[e] - dot);
  }
  matmul_nn(dz.data(), w.gate.data(), grad_x.data(), T, H, E, /*accumulate=*/true);  // dx += dz G
  matmul_tn_acc(dz.data(), x.data(), grad_gate.data(), T, E, H);                        // dG += dz^T x
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

// The dense reference for this rank's tokens.
void reference_layer(const Weights& w, const std::vector<float>& x, const std::vector<float>& g_out, int T, int k,
                     double capacity_factor, std::vector<float>& out, Grads& gr) {
  const int H = w.H, F = w.F;
  const Routed r = route_topk(x, w, T, k, capacity_factor);
  out.assign(static_cast<size_t>(T) * H, 0.0f);
  gr.x.assign(static_cast<size_t>(T) * H, 0.0f);
  gr.gate.assign(w.gate.size(), 0.0f);
  gr.w1.assign(w.w1.size(), 0.0f);
  gr.w2.assign(w.w2.size(), 0.0f);
  std::vector<float> grad_w(static_cast<size_t>(T) * k, 0.0f), pre(F), y(H), gy(H), din(H);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j) {
      const int e = r.expert[static_cast<size_t>(t) * k + j];
      if (e < 0) continue;
      const float wt = r.weight[static_cast<size_t>(t) * k + j];
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
  router_backward(r, grad_w, x, w, T, k, gr.x, gr.gate);
}

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(std::abs(a[i] - b[i])));
  return m;
}

int run(const Options& o, int rank, int size);

int fail(const Status& s, int rank) {
  std::fprintf(stderr, "moe_layer rank %d: %s\n", rank, s.to_string().c_str());
  MPI_Abort(MPI_COMM_WORLD, 2);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  locmoe::set_log_rank(rank);

  Options o;
  CLI::App app{"A complete MoE layer (router -> dispatch -> expert FFN -> combine, forward and backward) "
               "over MPI, checked against a single-process reference"};
  app.add_option("--tokens", o.tokens, "tokens per rank")->check(CLI::Range(0, 1 << 20));
  app.add_option("--hidden", o.hidden, "hidden size H")->check(CLI::Range(1, 1 << 16));
  app.add_option("--ffn", o.ffn, "expert FFN width F")->check(CLI::Range(1, 1 << 16));
  app.add_option("--experts-per-rank", o.experts_per_rank, "local experts L")->check(CLI::Range(1, 1024));
  app.add_option("--k", o.k, "experts per token")->check(CLI::Range(1, 64));
  app.add_option("--steps", o.steps, "forward+backward steps")->check(CLI::Range(1, 1000));
  app.add_option("--align", o.align, "pad each expert's rows to a multiple of this")->check(CLI::Range(1, 1024));
  app.add_option("--capacity-factor", o.capacity_factor, "per-expert capacity factor (0 = dropless)")
      ->check(CLI::Range(0.0, 1000.0));
  app.add_option("--seed", o.seed, "seed of weights and tokens");
  app.add_option("--router", o.router, "router (this example's own: topk)")->check(CLI::IsMember({"topk"}));
  app.add_option("--tolerance", o.tolerance, "largest accepted max abs error vs the reference");
  app.add_flag("--json", o.json, "rank 0 prints one JSON document instead of the table");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = rank == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 1);
    MPI_Finalize();
    return code;
  }
  // Everything MPI-backed lives inside run(), so it is gone before MPI_Finalize.
  const int code = run(o, rank, size);
  MPI_Finalize();
  return code;
}

namespace {

int run(const Options& o, int rank, int size) {
  const int E = o.experts_per_rank * size;
  if (o.k > E) {
    if (rank == 0) std::fprintf(stderr, "moe_layer: --k %d exceeds the %d experts\n", o.k, E);
    return 2;
  }

  auto boot = locmoe::make_mpi_bootstrap(MPI_COMM_WORLD);
  if (!boot.ok()) return fail(boot.status(), rank);
  locmoe::RankDescriptor mine;
  auto host = locmoe::local_host_id();
  if (!host.ok()) return fail(host.status(), rank);
  mine.host_id = *host;
  auto cluster = locmoe::exchange_cluster_map(**boot, mine);
  if (!cluster.ok()) return fail(cluster.status(), rank);
  auto comm = locmoe::Communicator::create(**boot, *cluster);
  if (!comm.ok()) return fail(comm.status(), rank);

  const int T = o.tokens, H = o.hidden, F = o.ffn, L = o.experts_per_rank, k = o.k;
  locmoe::DispatcherConfig dc;
  dc.experts_per_rank = L;
  dc.hidden = H;
  dc.max_tokens = T;
  dc.top_k = k;
  dc.align = o.align;
  auto disp = locmoe::Dispatcher::create(**boot, **comm, dc);
  if (!disp.ok()) return fail(disp.status(), rank);
  locmoe::Dispatcher& d = **disp;
  auto handle = d.make_handle();
  if (!handle.ok()) return fail(handle.status(), rank);
  locmoe::DispatchHandle& h = **handle;

  const Weights w = make_weights(E, H, F, o.seed);
  // Buffers sized once (the dispatcher's query); the steps below allocate only in the example's
  // own expert math.
  const int64_t max_rows = d.max_expert_rows();
  std::vector<float> expert_in(max_rows * H), pre(max_rows * F), expert_out(max_rows * H), grad_eout(max_rows * H),
      grad_ein(max_rows * H), out(static_cast<size_t>(T) * H), grad_x(static_cast<size_t>(T) * H),
      grad_w(static_cast<size_t>(T) * k);

  nlohmann::json steps = nlohmann::json::array();
  double worst_fwd = 0, worst_bwd = 0;
  int64_t total_tokens = 0, total_dropped = 0;
  uint64_t total_internode = 0;
  for (int step = 0; step < o.steps; ++step) {
    std::mt19937 rng(o.seed * 1000003u + static_cast<uint32_t>(step) * 7919u + static_cast<uint32_t>(rank));
    std::normal_distribution<float> n01(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(T) * H), g_out(static_cast<size_t>(T) * H);
    for (auto& v : x) v = n01(rng);
    for (auto& v : g_out) v = n01(rng);

    // --- route
    auto t0 = Clock::now();
    const Routed r = route_topk(x, w, T, k, o.capacity_factor);
    locmoe::RoutingPlan plan;
    plan.num_tokens = T;
    plan.k = k;
    plan.num_experts = E;
    plan.num_ranks = size;
    plan.num_nodes = cluster->num_nodes();
    plan.experts_per_rank = L;
    plan.rank = rank;
    plan.global_token_offset = static_cast<int64_t>(rank) * T;
    for (int q = 0; q < size; ++q) plan.node_of_rank.push_back(cluster->node_of(q));
    plan.expert = r.expert;
    plan.weight = r.weight;
    plan.slot_dropped = r.dropped;
    if (Status s = locmoe::finalize_plan(plan, boot->get()); !s.ok()) return fail(s, rank);
    const double t_route = seconds_since(t0);

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
    router_backward(r, grad_w, x, w, T, k, grad_x, grad_gate);
    const double t_backward = seconds_since(t0);

    // --- reference and comparison
    std::vector<float> ref_out;
    Grads ref;
    reference_layer(w, x, g_out, T, k, o.capacity_factor, ref_out, ref);
    // Gate gradients: sum over ranks on both sides; expert weights: the reference's sum over ranks.
    MPI_Allreduce(MPI_IN_PLACE, ref.gate.data(), static_cast<int>(ref.gate.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, grad_gate.data(), static_cast<int>(grad_gate.size()), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, ref.w1.data(), static_cast<int>(ref.w1.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, ref.w2.data(), static_cast<int>(ref.w2.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double fwd = max_abs_diff(out.data(), ref_out.data(), out.size());
    double bwd = max_abs_diff(grad_x.data(), ref.x.data(), grad_x.size());
    bwd = std::max(bwd, max_abs_diff(grad_gate.data(), ref.gate.data(), grad_gate.size()));
    bwd = std::max(bwd, max_abs_diff(dw1.data(), ref.w1.data() + static_cast<size_t>(rank) * L * F * H, dw1.size()));
    bwd = std::max(bwd, max_abs_diff(dw2.data(), ref.w2.data() + static_cast<size_t>(rank) * L * H * F, dw2.size()));
    double errs[2] = {fwd, bwd};
    MPI_Allreduce(MPI_IN_PLACE, errs, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    worst_fwd = std::max(worst_fwd, errs[0]);
    worst_bwd = std::max(worst_bwd, errs[1]);

    // --- figures: tokens per expert (gathered), drops, bytes, stage times (max over ranks)
    std::vector<int64_t> my_counts(cnt.begin(), cnt.end()), counts(static_cast<size_t>(E));
    MPI_Gather(my_counts.data(), L, MPI_INT64_T, counts.data(), L, MPI_INT64_T, 0, MPI_COMM_WORLD);
    const locmoe::DispatchStats& st = h.stats();
    int64_t sums[3] = {st.tokens, st.dropped_slots, static_cast<int64_t>(st.internode_bytes_sent)};
    MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    double times[5] = {t_route, t_dispatch, t_experts, t_combine, t_backward};
    MPI_Allreduce(MPI_IN_PLACE, times, 5, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    total_tokens += sums[0];
    total_dropped += sums[1];
    total_internode += static_cast<uint64_t>(sums[2]);
    if (rank == 0) {
      nlohmann::json js = {{"step", step}, {"tokens", sums[0]}, {"slots_dropped", sums[1]},
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
  const bool ok = worst_fwd <= o.tolerance && worst_bwd <= o.tolerance;
  if (rank == 0) {
    if (o.json) {
      nlohmann::json doc = {{"ranks", size}, {"nodes", cluster->num_nodes()}, {"router", o.router},
                            {"tokens", total_tokens}, {"slots_dropped", total_dropped},
                            {"internode_bytes", total_internode}, {"forward_max_abs_err", worst_fwd},
                            {"backward_max_abs_err", worst_bwd}, {"tolerance", o.tolerance}, {"ok", ok},
                            {"hidden", H}, {"ffn", F}, {"experts", E}, {"k", k},
                            {"communicator", {{"transport", (*comm)->transport_name()},
                                              {"algo", (*comm)->algo() == locmoe::A2AAlgo::kHierarchical ? "hier" : "flat"}}},
                            {"steps", steps}};
      std::printf("%s\n", doc.dump(2).c_str());
    } else {
      std::printf("moe_layer: %d ranks on %d nodes, router %s, transport %s: max abs error forward %.3e, "
                  "backward %.3e (tolerance %.1e): %s\n",
                  size, cluster->num_nodes(), o.router.c_str(), (*comm)->transport_name().c_str(), worst_fwd,
                  worst_bwd, o.tolerance, ok ? "OK" : "MISMATCH");
    }
  }
  return ok ? 0 : 1;
}

}  // namespace
