// route_exchange: what one routing step exchanges between ranks, measured under mpirun.
//
//   mpirun -np R build/perf/router/route_exchange [--router locmoe-opt] [--tokens-per-rank 256]
//       [--hidden 64] [--experts-per-rank 2] [--ranks-per-node 8] [--cross-node-cost 0.05]
//
// Every rank builds the same seeded batch (tokens around random gate rows, as the router tests),
// routes its own rows through the MPI bootstrap, wrapped so that every collective of the call is
// counted (the input checks and token counts included). Rank 0 prints one JSON line: collectives per
// step, bytes each rank sends (its payload) and receives, and for locmoe-opt the selection's own
// rounds and payload (RouteStats::exchange_rounds/bytes), iterations and whether it converged.
#include <mpi.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/router/router.h"

namespace {

using namespace locmoe;

class Counting final : public Bootstrap {
 public:
  explicit Counting(Bootstrap& inner) : in_(inner) {}
  int rank() const override { return in_.rank(); }
  int size() const override { return in_.size(); }
  const char* name() const override { return "counting"; }
  Status allgather(const void* s, void* r, size_t bytes) override {
    ++calls;
    sent += bytes;
    received += bytes * static_cast<size_t>(size());
    return in_.allgather(s, r, bytes);
  }
  Status allreduce(const void* s, void* r, size_t count, DataType t, ReduceOp op) override {
    ++calls;
    sent += count * data_type_size(t);
    received += count * data_type_size(t);
    return in_.allreduce(s, r, count, t, op);
  }
  Status broadcast(void* b, size_t bytes, int root) override {
    ++calls;
    sent += rank() == root ? bytes : 0;
    received += bytes;
    return in_.broadcast(b, bytes, root);
  }
  Status barrier() override {
    ++calls;
    return in_.barrier();
  }
  size_t calls = 0, sent = 0, received = 0;

 private:
  Bootstrap& in_;
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  CLI::App app{"route_exchange: collectives, bytes and rounds of one routing step per rank"};
  std::string router = "locmoe-opt";
  int tokens_per_rank = 256, hidden = 64, epr = 2, rpn = 8, steps = 3;
  double mu = 0.05, tau = 0.9;
  bool tau_capacity = false;
  app.add_option("--router", router)->capture_default_str();
  app.add_option("--tokens-per-rank", tokens_per_rank)->capture_default_str();
  app.add_option("--hidden", hidden)->capture_default_str();
  app.add_option("--experts-per-rank", epr)->capture_default_str();
  app.add_option("--ranks-per-node", rpn)->capture_default_str();
  app.add_option("--cross-node-cost", mu)->capture_default_str();
  app.add_flag("--opt-tau-capacity", tau_capacity, "locmoe-opt: capacity from LocMoE+'s lower bound with --tau");
  app.add_option("--tau", tau)->capture_default_str();
  app.add_option("--steps", steps, "steps routed; the last one is reported")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    MPI_Finalize();
    return rc;
  }
  auto boot = make_mpi_bootstrap(MPI_COMM_WORLD);
  if (!boot.ok()) {
    fmt::print(stderr, "route_exchange: {}\n", boot.status().to_string());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  Bootstrap& b = **boot;
  const int R = b.size(), rank = b.rank();
  const int nodes = R % rpn == 0 && R > rpn ? R / rpn : (R >= 4 ? 2 : 1);
  const int per_node = R / nodes;
  auto pl = uniform_placement(nodes, per_node, epr, rank);
  if (!pl.ok() || nodes * per_node != R) {
    fmt::print(stderr, "route_exchange: {} ranks do not fill {} nodes\n", R, nodes);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  const int E = pl->num_experts();
  const int64_t T = static_cast<int64_t>(tokens_per_rank) * R;
  std::mt19937 gen(7);
  std::normal_distribution<float> nd;
  std::vector<float> w(static_cast<size_t>(E) * hidden), x(static_cast<size_t>(T) * hidden);
  for (auto& v : w) v = nd(gen);
  std::uniform_int_distribution<int> pick(0, E - 1);
  for (int64_t t = 0; t < T; ++t) {
    const int c = pick(gen);
    for (int h = 0; h < hidden; ++h)
      x[static_cast<size_t>(t * hidden + h)] = (0.7f * w[static_cast<size_t>(c * hidden + h)] + nd(gen)) / 8.0f;
  }
  RouterConfig c;
  c.name = router;
  c.cross_node_cost = mu;
  c.opt_tau_capacity = tau_capacity;
  c.tau = tau;
  auto r = Router::create(c);
  if (!r.ok()) {
    fmt::print(stderr, "route_exchange: {}\n", r.status().to_string());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  Counting counting(b);
  const int64_t lo = static_cast<int64_t>(tokens_per_rank) * rank;
  for (int s = 0; s < steps; ++s) {
    counting.calls = counting.sent = counting.received = 0;
    auto plan = r->route({x.data() + lo * hidden, tokens_per_rank, hidden}, {w.data(), E, hidden}, *pl, &counting);
    if (!plan.ok()) {
      fmt::print(stderr, "route_exchange: {}\n", plan.status().to_string());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  const RouteStats& st = r->last_stats();
  if (rank == 0)
    fmt::print("{{\"router\": \"{}\", \"ranks\": {}, \"nodes\": {}, \"experts\": {}, \"tokens\": {}, "
               "\"collectives\": {}, \"bytes_sent\": {}, \"bytes_received\": {}, \"selection_rounds\": {}, "
               "\"selection_bytes\": {}, \"iterations\": {}, \"converged\": {}, \"capacity\": {}, "
               "\"capacity_lower_bound\": {}}}\n",
               router, R, nodes, E, T, counting.calls, counting.sent, counting.received, st.exchange_rounds,
               st.exchange_bytes, st.opt_iterations, st.opt_converged ? "true" : "false", st.capacity,
               st.capacity_lower_bound);
  boot->reset();
  MPI_Finalize();
  return 0;
}
