// locmoe-whatif: predicted dispatch and combine time of an MoE layer's all-to-all on a cluster
// that is not here, per stage (intra-node, inter-node), flat and hierarchical, with a lower bound
// beside it. The cluster comes from a topology file per node (NCCL or hwloc XML, read by the
// topology layer's topo::load_file: GPUs, NICs and, where the file has it, the NIC speed), a node count, and per-class link figures (flags, defaults below);
// the traffic from a routing rule and its input (synthetic, see whatif.h) or uniform bytes.
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "locmoe/core/params.h"
#include "locmoe/perf/whatif.h"

namespace w = locmoe::whatif;

namespace {

nlohmann::json to_json(const w::Prediction& p) {
  nlohmann::json stages = nlohmann::json::array();
  for (const w::StageTime& s : p.stages)
    stages.push_back({{"name", s.name}, {"seconds", s.seconds}, {"max_intra_bytes", s.max_intra_bytes},
                      {"max_inter_bytes", s.max_inter_bytes}, {"max_spine_bytes", s.max_spine_bytes},
                      {"intra_bytes", s.intra_bytes}, {"inter_bytes", s.inter_bytes}, {"inter_msgs", s.inter_msgs},
                      {"spine_bytes", s.spine_bytes}});
  return {{"algo", w::algo_name(p.algo)}, {"seconds", p.seconds}, {"intra_seconds", p.intra_seconds},
          {"inter_seconds", p.inter_seconds}, {"lower_bound_seconds", p.lower_bound_s},
          {"internode_bytes", p.internode_bytes}, {"internode_msgs", p.internode_msgs},
          {"intranode_bytes", p.intranode_bytes}, {"spine_bytes", p.spine_bytes}, {"stages", stages}};
}

int fail(const locmoe::Status& s) {
  std::fprintf(stderr, "locmoe-whatif: %s\n", s.to_string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"locmoe-whatif: predicted MoE dispatch/combine time per stage on a described cluster"};
  std::string topo;
  w::ClusterModel c;
  c.nodes = 2, c.ranks_per_node = 8, c.nics_per_node = 8;
  // Defaults: an H100 node (NVLink 4: 450 GB/s per direction per GPU; ConnectX-7: 400 Gb/s per
  // NIC, one per GPU) with typical start-up times of a copy engine / RDMA write.
  c.intra = {450e9, 3e-6};
  c.inter = {50e9, 10e-6};
  int gpus = 0, nics = 0;
  std::vector<std::string> rules{"locmoe+", "gshard", "node-limited", "dropless"};
  w::SyntheticRouting sr;
  sr.router.k = 8;
  int64_t hidden = 7168, dtype_bytes = 2;
  uint64_t uniform = 0;
  bool json = false;
  app.add_option("--topo", topo, "Topology file of one node (NCCL or hwloc XML): GPUs -> ranks per node, NICs -> NICs per node, "
                                 "<net speed> -> inter bandwidth (where the file states it)");
  app.add_option("--nodes", c.nodes, "Number of nodes")->default_val(2);
  app.add_option("--ranks-per-node", gpus, "Ranks (GPUs) per node; overrides the file (default 8)");
  app.add_option("--nics-per-node", nics, "NICs per node (rails); overrides the file (default 8)");
  app.add_option("--intra-bw", c.intra.bw, "Intra-node bandwidth per rank and direction, bytes/s (default 450e9: NVLink 4)");
  app.add_option("--intra-latency", c.intra.latency_s, "Intra-node start-up time, s (default 3e-6)");
  app.add_option("--inter-bw", c.inter.bw, "Inter-node bandwidth per NIC and direction, bytes/s (default 50e9: 400 Gb/s; "
                                           "a <net speed> in --topo wins unless this flag is given)");
  app.add_option("--inter-latency", c.inter.latency_s, "Inter-node start-up time, s (default 10e-6)");
  app.add_option("--spine-bw", c.spine.bw, "Rail-optimized fabric: bandwidth of each rail's link to the spine, per "
                                           "direction, bytes/s; traffic between different rails crosses it "
                                           "(default 0: non-blocking)");
  app.add_option("--chunk-bytes", c.chunk_bytes, "Pipeline chunk of the hierarchical exchange, bytes (default: "
                                                 "LOCMOE_CHUNK_BYTES, as comm uses it)");
  app.add_option("--router", rules, "Routers to compare (router/: locmoe+ gshard node-limited dropless ...), on a synthetic input (whatif.h)");
  app.add_option("--tokens", sr.tokens_per_rank, "Tokens per rank")->default_val(4096);
  app.add_option("--hidden", hidden, "Hidden size (elements per token row)")->default_val(7168);
  app.add_option("--dtype-bytes", dtype_bytes, "Bytes per element (2: bf16)")->default_val(2);
  app.add_option("--experts", sr.experts, "Experts of the EP group")->default_val(256);
  app.add_option("-k,--top-k", sr.router.k, "Experts per token")->default_val(8);
  app.add_option("--capacity-factor", sr.router.capacity_factor, "Capacity factor of gshard and locmoe")->default_val(1.25);
  app.add_option("--cross-node-cost", sr.router.cross_node_cost, "locmoe-opt: mu")->default_val(0.05);
  app.add_flag("--opt-tau-capacity", sr.router.opt_tau_capacity, "locmoe-opt: capacity from LocMoE+'s lower bound with --tau");
  app.add_option("--tau", sr.router.tau, "LocMoE+ (and locmoe-opt with --opt-tau-capacity): tau")->default_val(0.9);
  app.add_option("--route-hidden", sr.route_hidden, "Feature width the routers run on (bytes use --hidden)")->default_val(64);
  app.add_option("--affinity", sr.affinity, "Signal of a token towards its expert's gate row (synthetic input)")->default_val(0.5);
  app.add_option("--seed", sr.seed, "Seed of the synthetic input")->default_val(1);
  app.add_option("--uniform-bytes", uniform, "Instead of routing: this many bytes from every rank to every other "
                                             "(locmoe-perf a2a's pattern)");
  app.add_flag("--json", json, "Print one JSON document");
  if (auto chunk = locmoe::params::get_int(locmoe::params::Id::chunk_bytes); chunk.ok() && *chunk > 0)
    c.chunk_bytes = static_cast<uint64_t>(*chunk);
  CLI11_PARSE(app, argc, argv);

  nlohmann::json doc;
  if (!topo.empty()) {
    auto f = w::read_topology_facts(topo);
    if (!f.ok()) return fail(f.status());
    if (f->gpus > 0) c.ranks_per_node = f->gpus;
    if (f->nics > 0) c.nics_per_node = f->nics;
    c.rail_of_local = f->rails;
    if (f->nic_bw > 0 && app.count("--inter-bw") == 0) c.inter.bw = f->nic_bw;
    doc["topology"] = {{"file", topo}, {"gpus", f->gpus}, {"nics", f->nics}, {"rails", f->rails}, {"nic_bw_from_file", f->nic_bw}};
  }
  if (gpus > 0) c.ranks_per_node = gpus;
  if (nics > 0) c.nics_per_node = nics;
  if (gpus > 0 || nics > 0) c.rail_of_local.clear();  // a shape given by hand: rails by local rank
  doc["cluster"] = {{"nodes", c.nodes}, {"ranks_per_node", c.ranks_per_node}, {"nics_per_node", c.nics_per_node},
                    {"intra_bw", c.intra.bw}, {"intra_latency_s", c.intra.latency_s}, {"inter_bw", c.inter.bw},
                    {"inter_latency_s", c.inter.latency_s}, {"spine_bw", c.spine.bw}, {"chunk_bytes", c.chunk_bytes}};

  struct Case {
    std::string name;
    w::TrafficMatrix dispatch;
    w::RouterExchange exchange;
  };
  std::vector<Case> cases;
  if (uniform > 0) {
    cases.push_back({"uniform", w::uniform_traffic(c.size(), uniform), {}});
  } else {
    for (const std::string& rule : rules) {
      sr.router.name = rule;
      locmoe::RouteStats st;
      auto plans = w::synthetic_plans(sr, c, &st);
      if (!plans.ok()) return fail(plans.status());
      auto t = w::traffic_from_plans(*plans, hidden, dtype_bytes);
      if (!t.ok()) return fail(t.status());
      cases.push_back({rule, std::move(*t), w::router_exchange(sr.router, st, c)});
    }
  }
  if (!json)
    std::printf("%d nodes x %d ranks, %d NICs/node; intra %.3g B/s + %.3g s, inter %.3g B/s per NIC + %.3g s, "
                "spine %.3g B/s per rail (0: non-blocking)\n"
                "%-13s %-8s %-5s %12s %12s %12s %12s %14s\n",
                c.nodes, c.ranks_per_node, c.nics_per_node, c.intra.bw, c.intra.latency_s, c.inter.bw,
                c.inter.latency_s, c.spine.bw, "traffic", "phase", "algo", "time_ms", "intra_ms", "inter_ms", "bound_ms",
                "internode_MB");
  nlohmann::json results = nlohmann::json::array();
  for (const Case& cs : cases) {
    for (int phase = 0; phase < 2; ++phase) {
      const w::TrafficMatrix t = phase == 0 ? cs.dispatch : cs.dispatch.transposed();
      for (w::Algo a : {w::Algo::kFlat, w::Algo::kHierarchical}) {
        auto p = w::predict(t, c, a);
        if (!p.ok()) return fail(p.status());
        nlohmann::json j = to_json(*p);
        j["traffic"] = cs.name;
        j["phase"] = phase == 0 ? "dispatch" : "combine";
        results.push_back(j);
        if (!json)
          std::printf("%-13s %-8s %-5s %12.3f %12.3f %12.3f %12.3f %14.2f\n", cs.name.c_str(),
                      phase == 0 ? "dispatch" : "combine", w::algo_name(a), p->seconds * 1e3, p->intra_seconds * 1e3,
                      p->inter_seconds * 1e3, p->lower_bound_s * 1e3, p->internode_bytes / 1e6);
      }
    }
  }
  nlohmann::json exchanges = nlohmann::json::array();
  for (const Case& cs : cases) {
    if (cs.exchange.collectives == 0) continue;
    exchanges.push_back({{"traffic", cs.name}, {"collectives", cs.exchange.collectives},
                         {"bytes_sent", cs.exchange.bytes_sent}, {"bytes_received", cs.exchange.bytes_received},
                         {"time_ms", cs.exchange.seconds * 1e3}});
    if (!json)
      std::printf("router exchange %-13s %5lld collectives, %12lld B sent, %12lld B received per rank, %9.3f ms (model)\n",
                  cs.name.c_str(), static_cast<long long>(cs.exchange.collectives),
                  static_cast<long long>(cs.exchange.bytes_sent), static_cast<long long>(cs.exchange.bytes_received),
                  cs.exchange.seconds * 1e3);
  }
  if (json) {
    doc["router_exchange"] = exchanges;
    doc["results"] = results;
    std::printf("%s\n", doc.dump(2).c_str());
  }
  return 0;
}
