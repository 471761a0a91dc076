// locmoe-route: routes token features with any router, in one process emulating the EP group's
// ranks, and prints the metrics (table or JSON), optionally side by side for several routers.
//
// Tokens are split evenly over the ranks in rank order (rank r owns rows r T / R ...), experts are
// contiguous (expert e on rank e / experts-per-rank), ranks fill nodes in order.
//
// Cluster shape: --nodes N --ranks-per-node R, or --nodes N --topo-file F where F is one node's
// topology (hwloc XML or NCCL topology XML, read by the topology layer) and R = its GPU count (one
// rank per GPU). Without either flag, LOCMOE_TOPO_FILE, when set, stands in for --topo-file (as it
// stands in for live discovery in the topology layer); else R = 8.
//
// Synthetic input (--synthetic T,H,SEED; docs/PERFORMANCE.md "## Router"): gate rows are random
// directions of norm --gate-scale (default 8: tokens are unit vectors, so the gate norm is the
// logit scale; 8 gives a token's own-cluster expert p of about 0.6-0.8 at E = 64, a confident
// trained router rather than a near-uniform softmax), or GrAP with --gate grap; cluster centre i = normalize(0.8 w_i + 0.6 u_i) with u_i
// a random unit vector, so centres correlate with the gate rows; a token picks centre i with
// Zipf probability ~ 1 / (rank_i + 1)^zipf (ranks a seeded permutation of the experts) and is
// normalize(centre + spread * g / sqrt(H)), g standard normal. --concentrate F multiplies spread
// by F after each step, so the features concentrate around their centres over --steps.
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "locmoe/core/check.h"
#include "locmoe/core/npy.h"
#include "locmoe/core/params.h"
#include "locmoe/router/metrics.h"
#include "locmoe/router/router.h"
#include "locmoe/topology/topology.h"

namespace {

using namespace locmoe;
using nlohmann::json;

struct Synthetic {
  int64_t T = 0, H = 0;
  uint64_t seed = 0;
  double zipf = 1.0, spread = 1.0, concentrate = 1.0, gate_scale = 8.0;
};

void normalize(float* v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(v[i]) * v[i];
  const double inv = s > 0 ? 1.0 / std::sqrt(s) : 0.0;
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(v[i] * inv);
}

std::vector<float> random_gate(int64_t E, int64_t H, uint64_t seed, double scale) {
  std::mt19937_64 gen(seed ^ 0x6a7e);
  std::normal_distribution<float> nd;
  std::vector<float> w(static_cast<size_t>(E * H));
  for (auto& v : w) v = nd(gen);
  for (int64_t e = 0; e < E; ++e) normalize(w.data() + e * H, H);
  for (auto& v : w) v = static_cast<float>(v * scale);
  return w;
}

// One batch of the synthetic input (see the file comment); `step` varies the batch and the spread.
std::vector<float> synthetic_features(const Synthetic& s, const std::vector<float>& gate, int64_t E, int step) {
  const int64_t H = s.H;
  std::mt19937_64 cgen(s.seed);  // centres and popularity: fixed over steps
  std::normal_distribution<float> nd;
  std::vector<float> centre(static_cast<size_t>(E * H));
  std::vector<float> gn(gate);
  for (int64_t e = 0; e < E; ++e) normalize(gn.data() + e * H, H);
  for (int64_t e = 0; e < E; ++e) {
    std::vector<float> u(static_cast<size_t>(H));
    for (auto& v : u) v = nd(cgen);
    normalize(u.data(), H);
    for (int64_t h = 0; h < H; ++h)
      centre[static_cast<size_t>(e * H + h)] = 0.8f * gn[static_cast<size_t>(e * H + h)] + 0.6f * u[static_cast<size_t>(h)];
    normalize(centre.data() + e * H, H);
  }
  std::vector<int64_t> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), cgen);
  std::vector<double> weight(static_cast<size_t>(E));
  for (int64_t r = 0; r < E; ++r) weight[static_cast<size_t>(order[static_cast<size_t>(r)])] = 1.0 / std::pow(r + 1.0, s.zipf);
  std::discrete_distribution<int64_t> pick(weight.begin(), weight.end());
  std::mt19937_64 gen(s.seed * 1000003 + static_cast<uint64_t>(step) + 1);
  const float spread = static_cast<float>(s.spread * std::pow(s.concentrate, step) / std::sqrt(double(H)));
  std::vector<float> x(static_cast<size_t>(s.T * H));
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t c = pick(gen);
    float* row = x.data() + t * H;
    for (int64_t h = 0; h < H; ++h) row[h] = centre[static_cast<size_t>(c * H + h)] + spread * nd(gen);
    normalize(row, H);
  }
  return x;
}

Result<std::vector<float>> load_matrix(const std::string& path, bool bf16, int64_t& rows, int64_t& cols) {
  LOCMOE_ASSIGN_OR_RETURN(NpyArray a, read_npy(path, NpyReadOptions{.u2_is_bfloat16 = bf16}));
  if (a.shape.size() != 2)
    return error(Code::kInvalidArgument, "{}: expected a 2-D array, got {} dimensions", path, a.shape.size());
  rows = a.shape[0];
  cols = a.shape[1];
  return npy_to_float32(a, path);
}

json stats_json(const RouteStats& st) {
  return {{"step", st.step},
          {"capacity", st.capacity},
          {"capacity_factor_capacity", st.capacity_factor_capacity},
          {"capacity_lower_bound", st.capacity_lower_bound},
          {"capacity_smoothed", st.capacity_smoothed},
          {"tau_reached", st.tau_reached},
          {"kept_gate_mass", st.topk_mass > 0 ? st.kept_mass / st.topk_mass : 0.0},
          {"objective", st.objective},
          {"opt_iterations", st.opt_iterations},
          {"opt_converged", st.opt_converged},
          {"opt_repaired", st.opt_repaired},
          {"opt_refilled", st.opt_refilled},
          {"exchange_rounds", st.exchange_rounds},
          {"exchange_bytes", st.exchange_bytes}};
}

json metrics_json(const RouterMetrics& m) {
  auto num = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  return {{"tokens", m.tokens},
          {"experts", m.experts},
          {"slots_per_token", m.slots_per_token},
          {"max_tokens_per_expert", m.max_tokens_per_expert},
          {"mean_tokens_per_expert", m.mean_tokens_per_expert},
          {"cv_tokens_per_expert", m.cv_tokens_per_expert},
          {"dropped_slots", m.dropped_slots},
          {"dropped_tokens", m.dropped_tokens},
          {"copies_same_rank", m.copies[kSameRank]},
          {"copies_same_node", m.copies[kSameNode]},
          {"copies_cross_node", m.copies[kCrossNode]},
          {"bytes_same_rank", m.bytes[kSameRank]},
          {"bytes_same_node", m.bytes[kSameNode]},
          {"bytes_cross_node", m.bytes[kCrossNode]},
          {"kept_gate_mass", m.kept_gate_mass},
          {"mean_kept_affinity", m.mean_kept_affinity},
          {"capacity", m.capacity},
          {"capacity_factor_capacity", m.capacity_factor_capacity},
          {"capacity_lower_bound", m.capacity_lower_bound},
          {"capacity_smoothed", m.capacity_smoothed},
          {"max_angle_deg", m.max_angle_deg},
          {"p95_angle_deg", m.p95_angle_deg},
          {"c_min_locmoe", num(m.c_min)}};
}

void print_table(const std::vector<std::string>& names, const std::vector<RouterMetrics>& ms) {
  struct Row {
    const char* label;
    std::string (*fmt)(const RouterMetrics&);
  };
  static const Row rows[] = {
      {"max tokens/expert", [](const RouterMetrics& m) { return fmt::format("{}", m.max_tokens_per_expert); }},
      {"mean tokens/expert", [](const RouterMetrics& m) { return fmt::format("{:.1f}", m.mean_tokens_per_expert); }},
      {"CV tokens/expert", [](const RouterMetrics& m) { return fmt::format("{:.3f}", m.cv_tokens_per_expert); }},
      {"dropped slots", [](const RouterMetrics& m) { return fmt::format("{}", m.dropped_slots); }},
      {"tokens with no expert", [](const RouterMetrics& m) { return fmt::format("{}", m.dropped_tokens); }},
      {"copies same rank", [](const RouterMetrics& m) { return fmt::format("{}", m.copies[kSameRank]); }},
      {"copies same node", [](const RouterMetrics& m) { return fmt::format("{}", m.copies[kSameNode]); }},
      {"copies cross node", [](const RouterMetrics& m) { return fmt::format("{}", m.copies[kCrossNode]); }},
      {"MiB cross node", [](const RouterMetrics& m) { return fmt::format("{:.2f}", m.bytes[kCrossNode] / 1048576.0); }},
      {"kept gate mass", [](const RouterMetrics& m) { return fmt::format("{:.4f}", m.kept_gate_mass); }},
      {"mean kept affinity", [](const RouterMetrics& m) { return fmt::format("{:.4f}", m.mean_kept_affinity); }},
      {"capacity used", [](const RouterMetrics& m) { return fmt::format("{}", m.capacity); }},
      {"capacity C_cf", [](const RouterMetrics& m) { return fmt::format("{}", m.capacity_factor_capacity); }},
      {"lower bound C_lb", [](const RouterMetrics& m) { return fmt::format("{}", m.capacity_lower_bound); }},
      {"max angle (deg)", [](const RouterMetrics& m) { return fmt::format("{:.1f}", m.max_angle_deg); }},
      {"p95 angle (deg)", [](const RouterMetrics& m) { return fmt::format("{:.1f}", m.p95_angle_deg); }},
      {"LocMoE C_min", [](const RouterMetrics& m) { return fmt::format("{:.3g}", m.c_min); }},
  };
  fmt::print("| {:<22} |", "metric");
  for (const auto& n : names) fmt::print(" {:>13} |", n);
  fmt::print("\n|{:-<24}|", "");
  for (size_t i = 0; i < names.size(); ++i) fmt::print("{:-<15}|", "");
  fmt::print("\n");
  for (const Row& r : rows) {
    fmt::print("| {:<22} |", r.label);
    for (const auto& m : ms) fmt::print(" {:>13} |", r.fmt(m));
    fmt::print("\n");
  }
}

// Ranks per node of a node described by topology file `path`: one rank per GPU. A file the topology
// layer rejects, or one without a GPU, is an error naming the file.
Result<int> ranks_per_node_from_topology(const std::string& path) {
  Result<topo::Topology> t = topo::load_file(path);
  if (!t.ok()) {
    Status st = t.status();  // load_file's message names the file and the reason
    return st.with_context("--topo-file");
  }
  LOCMOE_CHECK_ARG(t->num_gpus() > 0,
                   "--topo-file: {} has no GPU; ranks per node = GPUs per node, so give --ranks-per-node",
                   t->source());
  return t->num_gpus();
}

int fail(const Status& st) {
  fmt::print(stderr, "locmoe-route: {}\n", st.to_string());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"locmoe-route: route token features with LocMoE+ or a baseline and print the metrics"};
  std::string features_path, gate_spec, synthetic_spec, router_name = "locmoe+", compare, out_experts,
      out_weights, save_prefix, ecr = "affinity", topo_file, drop_policy = "slot";
  int nodes = 2, ranks_per_node = 8, experts_per_rank = 1, steps = 1, dtype_bytes = 2;
  bool as_json = false, bf16 = false, no_renorm = false;
  Synthetic syn;
  RouterConfig c;
  app.add_option("--features", features_path, "token features [T, H] .npy (float32, float16, bfloat16 with --bf16)");
  app.add_option("--gate", gate_spec, "gate weights [E, H] .npy, or 'grap' for the GrAP gate");
  app.add_option("--synthetic", synthetic_spec, "T,H,SEED: generate the documented synthetic input instead of --features");
  app.add_option("--zipf", syn.zipf, "synthetic: Zipf exponent of cluster popularity")->capture_default_str();
  app.add_option("--spread", syn.spread, "synthetic: noise norm around a cluster centre")->capture_default_str();
  app.add_option("--concentrate", syn.concentrate, "synthetic: spread factor per step")->capture_default_str();
  app.add_option("--gate-scale", syn.gate_scale, "synthetic: norm of the gate rows (logit scale)")->capture_default_str();
  app.add_option("--save-synthetic", save_prefix, "write PREFIX_features.npy and PREFIX_gate.npy (first step)");
  app.add_flag("--bf16", bf16, "'<u2' .npy arrays hold bfloat16 bits");
  app.add_option("--nodes", nodes, "nodes of the emulated EP group")->capture_default_str();
  CLI::Option* rpn_opt = app.add_option("--ranks-per-node", ranks_per_node, "ranks per node")->capture_default_str();
  app.add_option("--topo-file", topo_file,
                 "one node's topology (hwloc or NCCL XML): ranks per node = its GPUs (default: LOCMOE_TOPO_FILE "
                 "when set and --ranks-per-node is not given)")
      ->excludes(rpn_opt);
  app.add_option("--experts-per-rank", experts_per_rank, "experts per rank")->capture_default_str();
  app.add_option("--router", router_name, "locmoe+|gshard|switch|expert-choice|node-limited|locmoe|hash|dropless|locmoe-opt|deepseek-v3")->capture_default_str();
  app.add_option("--compare", compare, "comma-separated routers to run side by side (overrides --router)");
  app.add_option("--k", c.k, "experts per token")->capture_default_str();
  app.add_option("--capacity-factor", c.capacity_factor, "capacity factor (C_cf = ceil(cf k T / E))")->capture_default_str();
  app.add_option("--tau", c.tau, "LocMoE+: fraction of top-k gate mass the capacity lower bound keeps")->capture_default_str();
  app.add_option("--locality-margin", c.locality_margin, "lambda: score bonus of same-node experts")->capture_default_str();
  app.add_option("--candidates", c.candidates, "l: LocMoE+ candidates per token (0 = 2k)")->capture_default_str();
  app.add_option("--beta", c.beta, "LocMoE+: smoothing of the capacity across steps")->capture_default_str();
  app.add_option("--capacity-floor", c.capacity_floor, "LocMoE+: minimum capacity")->capture_default_str();
  app.add_option("--candidate-mass", c.candidate_mass, "LocMoE+: q, candidates by gate-mass prefix (0 = off)")->capture_default_str();
  app.add_option("--ecr-order", ecr, "LocMoE+: affinity|position")->capture_default_str();
  app.add_option("--max-nodes", c.max_nodes, "M: node-limited nodes per token; LocMoE+ node limit (0 = off)")->capture_default_str();
  app.add_flag("--no-renormalize", no_renorm, "combine weights are raw gate probabilities");
  app.add_option("--cross-node-cost", c.cross_node_cost, "locmoe-opt: mu, cost of a cross-node pair (gate-probability units)")->capture_default_str();
  app.add_option("--same-node-cost", c.same_node_cost, "locmoe-opt: cost of a pair on another rank of the node")->capture_default_str();
  app.add_option("--opt-iterations", c.opt_iterations, "locmoe-opt: most price iterations")->capture_default_str();
  app.add_flag("--opt-tau-capacity", c.opt_tau_capacity, "locmoe-opt: capacity from LocMoE+'s lower bound with --tau (else the capacity factor)");
  app.add_option("--drop-policy", drop_policy, "top-k baselines: slot|position|probs")->capture_default_str();
  app.add_flag("--normalize-before-drop", c.normalize_before_drop,
               "weights p / sum of the token's first k choices, fixed before the drop");
  app.add_option("--score-function", c.score_function, "deepseek-v3: sigmoid|softmax")->capture_default_str();
  app.add_option("--groups", c.groups, "deepseek-v3: expert groups (0 = one per node)")->capture_default_str();
  app.add_option("--topk-groups", c.topk_groups, "deepseek-v3: groups a token may use (0 = ceil(k/2))")->capture_default_str();
  app.add_option("--group-score", c.group_score, "deepseek-v3: top2-sum|max")->capture_default_str();
  app.add_option("--routed-scaling-factor", c.routed_scaling_factor, "deepseek-v3: weight scale")->capture_default_str();
  app.add_option("--bias-update-rate", c.bias_update_rate, "deepseek-v3: expert bias step per batch")->capture_default_str();
  app.add_option("--min-capacity", c.min_capacity, "every router with a capacity: C = max(C, this) (0 = off)")->capture_default_str();
  app.add_option("--steps", steps, "batches routed in sequence (smoothed capacity)")->capture_default_str();
  app.add_option("--dtype-bytes", dtype_bytes, "bytes per hidden element for predicted bytes")->capture_default_str();
  app.add_option("--out-experts", out_experts, "write int32 [T, k] experts (-1: none) of the last step");
  app.add_option("--out-weights", out_weights, "write float32 [T, k] weights of the last step");
  app.add_flag("--json", as_json, "print one JSON document");
  CLI11_PARSE(app, argc, argv);

  if (Status st = params::validate_all(); !st.ok()) return fail(st);
  c.renormalize = !no_renorm;
  auto order = parse_ecr_order(ecr);
  if (!order.ok()) return fail(order.status());
  c.ecr_order = *order;
  auto drop = parse_drop_policy(drop_policy);
  if (!drop.ok()) return fail(drop.status());
  c.drop_policy = *drop;
  if (steps < 1) return fail(error(Code::kInvalidArgument, "--steps {} must be >= 1", steps));
  if (topo_file.empty() && rpn_opt->count() == 0) {
    auto env = params::get_string(params::Id::topo_file);
    if (!env.ok()) return fail(env.status());
    topo_file = *env;
  }
  if (!topo_file.empty()) {
    auto r = ranks_per_node_from_topology(topo_file);
    if (!r.ok()) return fail(r.status());
    ranks_per_node = *r;
  }
  auto placement = uniform_placement(nodes, ranks_per_node, experts_per_rank);
  if (!placement.ok()) return fail(placement.status());
  const int64_t E = placement->num_experts();

  // Inputs.
  std::vector<float> x, w;
  int64_t T = 0, H = 0;
  const bool synthetic = !synthetic_spec.empty();
  if (synthetic == !features_path.empty())
    return fail(error(Code::kInvalidArgument, "give exactly one of --features and --synthetic"));
  if (synthetic) {
    char sep1 = 0, sep2 = 0;
    std::istringstream in(synthetic_spec);
    if (!(in >> syn.T >> sep1 >> syn.H >> sep2 >> syn.seed) || sep1 != ',' || sep2 != ',' || syn.T < 0 || syn.H < 1)
      return fail(error(Code::kInvalidArgument, "--synthetic '{}' must be T,H,SEED", synthetic_spec));
    T = syn.T;
    H = syn.H;
  } else {
    auto xs = load_matrix(features_path, bf16, T, H);
    if (!xs.ok()) return fail(xs.status());
    x = std::move(*xs);
  }
  if (gate_spec == "grap") {
    auto g = grap_gate(E, H);
    if (!g.ok()) return fail(g.status());
    w = std::move(*g);
  } else if (!gate_spec.empty()) {
    int64_t ge = 0, gh = 0;
    auto g = load_matrix(gate_spec, bf16, ge, gh);
    if (!g.ok()) return fail(g.status());
    if (ge != E || gh != H)
      return fail(error(Code::kInvalidArgument,
                        "{} is [{}, {}] but the features have H = {} and the cluster {} experts ({} nodes x {} ranks x {})",
                        gate_spec, ge, gh, H, E, nodes, ranks_per_node, experts_per_rank));
    w = std::move(*g);
  } else if (synthetic) {
    w = random_gate(E, H, syn.seed, syn.gate_scale);
  } else {
    return fail(error(Code::kInvalidArgument, "--gate is required with --features"));
  }
  if (synthetic && !save_prefix.empty()) {
    const std::vector<float> x0 = synthetic_features(syn, w, E, 0);
    const std::vector<int64_t> xs = {T, H}, ws = {E, H};
    if (Status st = write_npy(save_prefix + "_features.npy", std::span<const float>(x0), xs); !st.ok()) return fail(st);
    if (Status st = write_npy(save_prefix + "_gate.npy", std::span<const float>(w), ws); !st.ok()) return fail(st);
  }

  std::vector<std::string> names;
  if (compare.empty()) {
    names.push_back(router_name);
  } else {
    std::stringstream ss(compare);
    for (std::string n; std::getline(ss, n, ',');)
      if (!n.empty()) names.push_back(n);
  }

  json doc = {{"input",
               {{"tokens", T}, {"hidden", H}, {"experts", E}, {"nodes", nodes}, {"ranks_per_node", ranks_per_node},
                {"experts_per_rank", experts_per_rank}, {"steps", steps},
                {"topology_file", topo_file.empty() ? json(nullptr) : json(topo_file)},
                {"source", synthetic ? "synthetic " + synthetic_spec : features_path},
                {"gate", gate_spec.empty() ? "synthetic" : gate_spec}}},
              {"routers", json::array()}};
  std::vector<std::vector<float>> batches;  // the synthetic batch of each step, shared by all routers
  if (synthetic)
    for (int s = 0; s < steps; ++s) batches.push_back(synthetic_features(syn, w, E, s));
  std::vector<RouterMetrics> all_metrics;
  for (size_t ri = 0; ri < names.size(); ++ri) {
    RouterConfig rc = c;
    rc.name = names[ri];
    auto router = Router::create(rc);
    if (!router.ok()) return fail(router.status());
    json steps_json = json::array();
    std::vector<RoutingPlan> plans;
    for (int s = 0; s < steps; ++s) {
      const std::vector<float>& xs = synthetic ? batches[static_cast<size_t>(s)] : x;
      auto r = router->route_all_ranks({xs.data(), T, H}, {w.data(), E, H}, *placement);
      if (!r.ok()) {
        Status st = r.status();
        return fail(st.with_context(rc.name));
      }
      plans = std::move(*r);
      steps_json.push_back(stats_json(router->last_stats()));
      if (!as_json && steps > 1 && rc.name == "locmoe+")
        fmt::print("{} step {}: C_lb {} smoothed {:.1f} capacity {} kept gate mass {:.4f}\n", rc.name, s,
                   router->last_stats().capacity_lower_bound, router->last_stats().capacity_smoothed,
                   router->last_stats().capacity, steps_json.back()["kept_gate_mass"].get<double>());
    }
    const RouterMetrics m = compute_metrics(plans, router->last_stats(), H, dtype_bytes);
    all_metrics.push_back(m);
    doc["routers"].push_back({{"name", rc.name}, {"steps", steps_json}, {"metrics", metrics_json(m)}});
    if (ri == 0 && (!out_experts.empty() || !out_weights.empty())) {
      std::vector<int32_t> ex;
      std::vector<float> wt;
      for (const auto& p : plans) {
        ex.insert(ex.end(), p.expert.begin(), p.expert.end());
        wt.insert(wt.end(), p.weight.begin(), p.weight.end());
      }
      const std::vector<int64_t> shape = {T, plans.empty() ? 0 : plans[0].k};
      if (!out_experts.empty())
        if (Status st = write_npy(out_experts, std::span<const int32_t>(ex), shape); !st.ok()) return fail(st);
      if (!out_weights.empty())
        if (Status st = write_npy(out_weights, std::span<const float>(wt), shape); !st.ok()) return fail(st);
    }
  }
  if (as_json) {
    fmt::print("{}\n", doc.dump(2));
  } else {
    fmt::print("T={} H={} E={} on {} nodes x {} ranks{}, k={}, capacity factor {}, {} step(s)\n", T, H, E, nodes,
               ranks_per_node, topo_file.empty() ? "" : fmt::format(" (GPUs of {})", topo_file), c.k,
               c.capacity_factor, steps);
    print_table(names, all_metrics);
  }
  return 0;
}
