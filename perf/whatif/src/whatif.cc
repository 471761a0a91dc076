#include "locmoe/perf/whatif.h"

#include <algorithm>
#include <cmath>

#include "locmoe/comm/plan.h"
#include "locmoe/core/check.h"
#include "locmoe/topology/cluster_map.h"
#include "locmoe/topology/topology.h"

namespace locmoe::whatif {

TrafficMatrix TrafficMatrix::transposed() const {
  TrafficMatrix t{ranks, std::vector<uint64_t>(bytes.size())};
  for (int s = 0; s < ranks; ++s)
    for (int d = 0; d < ranks; ++d) t.bytes[static_cast<size_t>(d) * ranks + s] = at(s, d);
  return t;
}

TrafficMatrix uniform_traffic(int ranks, uint64_t per_pair) {
  TrafficMatrix t{ranks, std::vector<uint64_t>(static_cast<size_t>(ranks) * ranks, per_pair)};
  for (int r = 0; r < ranks; ++r) t.bytes[static_cast<size_t>(r) * ranks + r] = 0;
  return t;
}

Result<TrafficMatrix> traffic_from_plans(const std::vector<RoutingPlan>& plans, int64_t hidden,
                                         int64_t dtype_bytes) {
  const int R = static_cast<int>(plans.size());
  LOCMOE_CHECK_ARG(R > 0, "traffic_from_plans: no plans");
  LOCMOE_CHECK_ARG(hidden > 0 && dtype_bytes > 0, "traffic_from_plans: hidden {} and dtype bytes {} must be > 0",
                   hidden, dtype_bytes);
  TrafficMatrix t{R, std::vector<uint64_t>(static_cast<size_t>(R) * R, 0)};
  for (int r = 0; r < R; ++r) {
    const RoutingPlan& p = plans[r];
    LOCMOE_CHECK_ARG(p.rank == r, "traffic_from_plans: plan {} is rank {}'s; expected rank {}", r, p.rank, r);
    LOCMOE_CHECK_ARG(p.num_ranks == R && static_cast<int>(p.rank_count.size()) == R,
                     "traffic_from_plans: plan of rank {} has {} ranks and {} rank counts; expected {} (finalized?)",
                     r, p.num_ranks, p.rank_count.size(), R);
    for (int d = 0; d < R; ++d)
      if (d != r) t.bytes[static_cast<size_t>(r) * R + d] = uint64_t(p.rank_count[d]) * hidden * dtype_bytes;
  }
  return t;
}

const char* algo_name(Algo algo) { return algo == Algo::kFlat ? "flat" : "hier"; }

namespace {

// Loads of one stage on every resource.
struct Loads {
  const ClusterModel& c;
  std::vector<uint64_t> intra_tx, intra_rx, nic_tx, nic_rx, spine_up, spine_down;
  StageTime st;
  explicit Loads(const ClusterModel& cm, std::string name)
      : c(cm), intra_tx(cm.size()), intra_rx(cm.size()), nic_tx(size_t(cm.nodes) * cm.nics_per_node),
        nic_rx(size_t(cm.nodes) * cm.nics_per_node), spine_up(cm.nics_per_node), spine_down(cm.nics_per_node) {
    st.name = std::move(name);
  }
  int node(int r) const { return r / c.ranks_per_node; }
  int rail(int r) const {
    const int l = r % c.ranks_per_node;
    return c.rail_of_local.empty() ? l % c.nics_per_node : c.rail_of_local[l];
  }
  int nic(int r) const { return node(r) * c.nics_per_node + rail(r); }
  // b bytes from s to d; `new_msg`: the first (or only) chunk of a message (messages counted).
  void add(int s, int d, uint64_t b, bool new_msg = true) {
    if (b == 0 || s == d) return;
    if (node(s) == node(d)) {
      intra_tx[s] += b;
      intra_rx[d] += b;
      st.intra_bytes += b;
    } else {
      nic_tx[nic(s)] += b;
      nic_rx[nic(d)] += b;
      st.inter_bytes += b;
      st.inter_msgs += new_msg ? 1 : 0;
      if (rail(s) != rail(d)) {
        spine_up[rail(s)] += b;
        spine_down[rail(d)] += b;
        st.spine_bytes += b;
      }
    }
  }
  // Closes the stage: its time and its per-class shares.
  StageTime finish(double* intra_s, double* inter_s) {
    auto mx = [](const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
      uint64_t m = 0;
      for (uint64_t x : a) m = std::max(m, x);
      for (uint64_t x : b) m = std::max(m, x);
      return m;
    };
    st.max_intra_bytes = mx(intra_tx, intra_rx);
    st.max_inter_bytes = mx(nic_tx, nic_rx);
    st.max_spine_bytes = mx(spine_up, spine_down);
    const double ts = c.spine.bw > 0 ? st.max_spine_bytes / c.spine.bw : 0;
    const double ti = st.max_intra_bytes / c.intra.bw, te = std::max(st.max_inter_bytes / c.inter.bw, ts);
    double lat = 0;
    if (st.intra_bytes) lat = std::max(lat, c.intra.latency_s);
    if (st.inter_bytes) lat = std::max(lat, c.inter.latency_s);
    st.seconds = (st.intra_bytes || st.inter_bytes) ? std::max(ti, te) + lat : 0;
    *intra_s += ti;
    *inter_s += te;
    return st;
  }
};

// The cluster map comm would build for this model: ranks node by node, and each node's lanes
// (the hierarchical exchange's rails) in rail-NIC order, then local rank (ClusterMap::lanes).
ClusterMap cluster_map_of(const ClusterModel& c) {
  ClusterMap m;
  const int G = c.ranks_per_node;
  auto nic = [&](int l) { return c.rail_of_local.empty() ? l % c.nics_per_node : c.rail_of_local[l]; };
  std::vector<int> order(G);
  for (int l = 0; l < G; ++l) order[l] = l;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return nic(a) < nic(b); });
  std::vector<int> lane_of_local(G);
  for (int j = 0; j < G; ++j) lane_of_local[order[j]] = j;
  m.nodes.resize(c.nodes);
  m.lanes.resize(c.nodes);
  for (int n = 0; n < c.nodes; ++n)
    for (int l = 0; l < G; ++l) {
      const int r = n * G + l;
      RankInfo info;
      info.rank = r;
      info.node = n;
      info.local_rank = l;
      info.lane = lane_of_local[l];
      info.desc.host_id = "node" + std::to_string(n);
      m.ranks.push_back(info);
      m.nodes[n].push_back(r);
    }
  for (int n = 0; n < c.nodes; ++n)
    for (int j = 0; j < G; ++j) m.lanes[n].push_back(n * G + order[j]);
  return m;
}

double lower_bound(const TrafficMatrix& t, const ClusterModel& c) {
  const int R = c.size(), G = c.ranks_per_node;
  std::vector<uint64_t> node_out(c.nodes), node_in(c.nodes), rank_out(R), rank_in(R);
  for (int s = 0; s < R; ++s)
    for (int d = 0; d < R; ++d) {
      const uint64_t b = t.at(s, d);
      if (s == d || !b) continue;
      if (s / G != d / G) {
        node_out[s / G] += b;
        node_in[d / G] += b;
      } else {
        rank_out[s] += b;
        rank_in[d] += b;
      }
    }
  const uint64_t inter = std::max(*std::max_element(node_out.begin(), node_out.end()),
                                  *std::max_element(node_in.begin(), node_in.end()));
  const uint64_t intra = std::max(*std::max_element(rank_out.begin(), rank_out.end()),
                                  *std::max_element(rank_in.begin(), rank_in.end()));
  const double te = inter ? inter / (c.inter.bw * c.nics_per_node) + c.inter.latency_s : 0;
  const double ti = intra ? intra / c.intra.bw + c.intra.latency_s : 0;
  return std::max(te, ti);
}

}  // namespace

Result<Prediction> predict(const TrafficMatrix& t, const ClusterModel& c, Algo algo) {
  LOCMOE_CHECK_ARG(c.nodes >= 1 && c.ranks_per_node >= 1 && c.nics_per_node >= 1,
                   "whatif: nodes {}, ranks per node {}, NICs per node {} must be >= 1", c.nodes,
                   c.ranks_per_node, c.nics_per_node);
  LOCMOE_CHECK_ARG(c.intra.bw > 0 && c.inter.bw > 0, "whatif: link bandwidths intra {} and inter {} B/s must be > 0",
                   c.intra.bw, c.inter.bw);
  LOCMOE_CHECK_ARG(c.rail_of_local.empty() || static_cast<int>(c.rail_of_local.size()) == c.ranks_per_node,
                   "whatif: rail_of_local has {} entries for {} ranks per node", c.rail_of_local.size(), c.ranks_per_node);
  for (int nic : c.rail_of_local)
    LOCMOE_CHECK_ARG(nic >= 0 && nic < c.nics_per_node, "whatif: rail NIC {} outside [0, {})", nic, c.nics_per_node);
  LOCMOE_CHECK_ARG(c.spine.bw >= 0, "whatif: spine bandwidth {} B/s must be >= 0 (0: non-blocking)", c.spine.bw);
  LOCMOE_CHECK_ARG(c.chunk_bytes > 0, "whatif: chunk of {} bytes must be > 0", c.chunk_bytes);
  LOCMOE_CHECK_ARG(c.intra.latency_s >= 0 && c.inter.latency_s >= 0, "whatif: latencies {} and {} s must be >= 0",
                   c.intra.latency_s, c.inter.latency_s);
  LOCMOE_CHECK_ARG(t.ranks == c.size() && t.bytes.size() == size_t(t.ranks) * t.ranks,
                   "whatif: traffic of {} ranks ({} entries) for a cluster of {} x {} = {} ranks", t.ranks,
                   t.bytes.size(), c.nodes, c.ranks_per_node, c.size());
  const int R = c.size();
  Prediction p;
  p.algo = algo;
  // The stages are charged from the schedules comm itself executes (comm/plan.h: build_plan, the
  // same rule Communicator::prepare applies), one plan per rank, so the model cannot drift from
  // the algorithm: flat is one stage (kDirect); hierarchical charges its intra-node steps (direct,
  // gather and the uneven-node forward) to "intra gather" and its rail messages to "inter rails".
  std::vector<Loads> stages;
  stages.emplace_back(c, algo == Algo::kFlat ? "flat" : "intra gather");
  if (algo == Algo::kHierarchical) stages.emplace_back(c, "inter rails");
  const ClusterMap map = cluster_map_of(c);
  const size_t len = plan_row_len(R);
  std::vector<uint64_t> rows(len * R);
  for (int r = 0; r < R; ++r) {
    ExchangeSpec spec;
    spec.send_counts = &t.bytes[static_cast<size_t>(r) * R];
    LOCMOE_RETURN_IF_ERROR(plan_row(spec, R, std::span<uint64_t>(rows).subspan(len * r, len)));
  }
  LOCMOE_RETURN_IF_ERROR(check_rows(rows, R));
  const A2AAlgo a = algo == Algo::kFlat ? A2AAlgo::kFlat : A2AAlgo::kHierarchical;
  ExchangePlan plan;
  std::vector<uint64_t> rail_msg(R);  // this rank's inter-node message bytes to each peer
  uint64_t largest_rail_msg = 0;
  for (int r = 0; r < R; ++r) {
    ClusterMap mine = map;
    mine.my_rank = r;
    ExchangeSpec spec;
    spec.send_counts = &t.bytes[static_cast<size_t>(r) * R];
    LOCMOE_RETURN_IF_ERROR(build_plan(mine, a, c.chunk_bytes, spec, rows, plan));
    std::fill(rail_msg.begin(), rail_msg.end(), 0);
    for (const PlanStep& step : plan.schedule.steps) {
      const bool rails = step.stage == PlanStage::kInterNode;
      Loads& l = stages[algo == Algo::kHierarchical && rails ? 1 : 0];
      for (uint32_t i = step.transfers_begin; i < step.transfers_end; ++i) {
        const PlanTransfer& x = plan.schedule.transfers[i];
        if (!x.is_send) continue;
        l.add(r, x.peer, x.bytes, x.first_chunk);
        if (rails) rail_msg[x.peer] += x.bytes;
      }
    }
    largest_rail_msg = std::max(largest_rail_msg, *std::max_element(rail_msg.begin(), rail_msg.end()));
  }
  for (Loads& l : stages) {
    p.stages.push_back(l.finish(&p.intra_seconds, &p.inter_seconds));
    p.internode_bytes += p.stages.back().inter_bytes;
    p.internode_msgs += p.stages.back().inter_msgs;
    p.intranode_bytes += p.stages.back().intra_bytes;
    p.spine_bytes += p.stages.back().spine_bytes;
  }
  if (algo == Algo::kFlat) {
    p.seconds = p.stages[0].seconds;
  } else {
    // comm cuts each rail message into chunk_bytes chunks that leave as they are gathered.
    const double chunks = std::max<double>(1, std::ceil(double(largest_rail_msg) / double(c.chunk_bytes)));
    const double t1 = p.stages[0].seconds, t2 = p.stages[1].seconds;
    p.seconds = std::max(t1, t2) + std::min(t1, t2) / chunks;
  }
  p.lower_bound_s = lower_bound(t, c);
  return p;
}

Result<TopologyFacts> read_topology_facts(const std::string& path) {
  LOCMOE_ASSIGN_OR_RETURN(topo::Topology t, topo::load_file(path));
  TopologyFacts f;
  f.gpus = t.num_gpus();
  f.nics = t.num_nics();
  // The runtime's placement rule for one rank per GPU (placement.h, step 4, no overrides: the
  // facts describe the file): local rank l drives GPU l, whose rail is Topology::rail(l).
  std::vector<int> used;
  for (int l = 0; l < f.gpus; ++l) {
    const int nic = t.rail(l);
    if (nic < 0) {
      used.clear();
      break;
    }
    used.push_back(nic);
  }
  if (!used.empty()) {
    std::vector<int> distinct = used;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    f.nics = static_cast<int>(distinct.size());
    for (int nic : used) f.rails.push_back(static_cast<int>(std::lower_bound(distinct.begin(), distinct.end(), nic) - distinct.begin()));
  }
  int64_t mbps = -1;
  for (const topo::Nic& n : t.nics()) mbps = std::max(mbps, n.speed_mbps);
  if (mbps > 0) f.nic_bw = static_cast<double>(mbps) * 1e6 / 8;  // Mb/s -> bytes/s
  return f;
}

}  // namespace locmoe::whatif
