// Cost model of an all-to-all-v (dispatch or combine) on a cluster: from the bytes every rank
// sends to every rank and the figures of the two link classes, the time of each stage of the flat
// and the hierarchical exchange, and a lower bound that no algorithm beats. The stages' transfers
// are not re-derived here: predict() builds every rank's ExchangePlan with comm's own rule
// (locmoe/comm/plan.h: build_plan, what Communicator::prepare runs, the same schedule
// ExchangeStats counts) and charges each send of its schedule to the resources below.
//
// Resources (each full duplex, a send and a receive direction of `bw` bytes/s each):
//   * intra: every rank's path to the other ranks of its node (NVLink port; shared memory when
//     emulated), intra.bw per rank and direction;
//   * inter: the node's NICs, `nics_per_node` of them; rank of local rank l uses NIC l % nics
//     (rails); inter.bw per NIC and direction. An emulated host has one shaped veth: nics = 1.
//   * spine (rail-optimized fabrics, nics > 1): NIC l of every node hangs off rail l's switch, and
//     the rails meet only at the spine, one link per rail (spine.bw per direction). A byte between
//     nodes from a rank on rail a to a rank on rail b != a goes rail a -> spine -> rail b and
//     loads both rails' spine links; a byte between the same rails never leaves its rail switch.
//     spine.bw = 0 (the default): non-blocking, not a constraint. Real fabrics are often
//     oversubscribed at the spine (spine.bw < nodes x inter.bw), and there the flat exchange,
//     whose traffic is mostly cross-rail, pays for it while the hierarchical one (rail l to rail
//     l only) does not.
// A stage moves its transfers concurrently; its time is its most loaded resource's bytes over
// that resource's bandwidth, plus the latency of the slowest class it uses. The hierarchical
// exchange (nodes of equal size) has two stages: the gather inside the node onto the rail of each
// destination local rank, then rail l to rail l between nodes. comm pipelines them in chunks of
// `chunk_bytes` (a chunk of a rail's message leaves as soon as it is gathered), so with K chunks
// in the largest rail message the exchange takes max(T1, T2) + min(T1, T2) / K: the slower stage,
// plus the faster stage's share of one chunk to fill the pipeline.
//
// Lower bound (algorithm-independent): every byte between nodes must leave its source node and
// enter its destination node through that node's NICs, at best spread evenly over them; every
// byte between two ranks of one node must leave and enter those ranks' intra ports. The bound is
// the largest of these loads over its bandwidth plus one latency of the class it comes from. (No
// spine term: an exchange can keep every byte on its rail.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "locmoe/core/status.h"
#include "locmoe/router/plan.h"
#include "locmoe/router/router.h"

namespace locmoe::whatif {

struct LinkClassFigures {
  double bw = 0;         // bytes per second, per direction
  double latency_s = 0;  // one message's start-up time
};

struct ClusterModel {
  int nodes = 1;
  int ranks_per_node = 1;
  int nics_per_node = 1;
  LinkClassFigures intra;  // per rank
  LinkClassFigures inter;  // per NIC
  LinkClassFigures spine;  // per rail's link to the spine; bw 0 = non-blocking (header)
  uint64_t chunk_bytes = 4194304;  // comm's pipeline chunk (LOCMOE_CHUNK_BYTES); hierarchical only
  // The NIC (0..nics_per_node-1) of each local rank, as the runtime places ranks
  // (TopologyFacts::rails); empty = local rank mod nics_per_node.
  std::vector<int> rail_of_local;
  int size() const { return nodes * ranks_per_node; }
};

// bytes[src * R + dst]: payload bytes src sends to dst (R = ranks). The diagonal (to itself) is
// a local copy and costs nothing on any link.
struct TrafficMatrix {
  int ranks = 0;
  std::vector<uint64_t> bytes;
  uint64_t at(int src, int dst) const { return bytes[static_cast<size_t>(src) * ranks + dst]; }
  TrafficMatrix transposed() const;  // combine: every byte of dispatch goes back
};

// `per_pair` bytes from every rank to every other rank (locmoe-perf a2a's pattern).
TrafficMatrix uniform_traffic(int ranks, uint64_t per_pair);

// Dispatch traffic of one routing plan per rank (plans[r].rank == r, finalized): rank_count[d]
// token copies of `hidden` elements of `dtype_bytes` each go from r to d.
Result<TrafficMatrix> traffic_from_plans(const std::vector<RoutingPlan>& plans, int64_t hidden,
                                         int64_t dtype_bytes);

struct StageTime {
  std::string name;                // "flat", "intra gather", "inter rails"
  double seconds = 0;
  uint64_t max_intra_bytes = 0;    // most loaded rank port (send or receive) of the stage
  uint64_t max_inter_bytes = 0;    // most loaded NIC (send or receive) of the stage
  uint64_t max_spine_bytes = 0;    // most loaded spine link (to or from the spine) of the stage
  uint64_t intra_bytes = 0;        // all bytes the stage moves inside nodes
  uint64_t inter_bytes = 0;        // all bytes the stage moves between nodes
  uint64_t inter_msgs = 0;         // messages between nodes
  uint64_t spine_bytes = 0;        // bytes between nodes that cross rails (each goes through the spine once)
};

enum class Algo { kFlat, kHierarchical };
const char* algo_name(Algo algo);

struct Prediction {
  Algo algo = Algo::kFlat;
  std::vector<StageTime> stages;
  double seconds = 0;        // flat: its stage; hierarchical: the two stages pipelined (above)
  double intra_seconds = 0;  // the stages' intra-node share: sum over stages of intra load / bw
  double inter_seconds = 0;  // the stages' inter-node share (NICs or spine, the slower)
  double lower_bound_s = 0;  // see the header comment; the same for every algorithm
  uint64_t internode_bytes = 0;
  uint64_t internode_msgs = 0;
  uint64_t intranode_bytes = 0;
  uint64_t spine_bytes = 0;
};

// The rail of node m towards node n: the local rank (m + n) mod min(L_m, L_n), as comm's
// hierarchical exchange picks it (uniform nodes here).
int rail_local_rank(const ClusterModel& cluster, int m, int n);

// Fails when the matrix does not match the cluster or a figure is not positive.
Result<Prediction> predict(const TrafficMatrix& traffic, const ClusterModel& cluster, Algo algo);

// The node's shape read from a topology file through the topology layer (topo::load_file: NCCL
// XML or hwloc XML, its rules for what counts as a GPU and a NIC): GPUs give ranks_per_node, NICs
// nics_per_node, and the fastest NIC's speed (Nic::speed_mbps, an NCCL <net speed="Mb/s">), where
// the file states one, the NIC bandwidth. NICs and rails come from the runtime's placement
// rule (placement.h: local rank l drives GPU l, its rail NIC Topology::rail(l)): `rails` is each local rank's rail NIC, renumbered 0..nics-1
// in NIC order, and `nics` the number of NICs that carry rails (a management Ethernet NIC next to
// InfiniBand rails carries none). Fields the file does not state are left to the caller's
// defaults. Errors are load_file's (kNotFound for a missing file, kParseError...), naming the file.
struct TopologyFacts {
  int gpus = 0;
  int nics = 0;
  std::vector<int> rails;  // [gpus] when every GPU has a rail NIC, else empty
  double nic_bw = 0;  // bytes/s per NIC, 0 = not in the file
};
Result<TopologyFacts> read_topology_facts(const std::string& path);

}  // namespace locmoe::whatif

namespace locmoe::whatif {

// Routing for projections: one of router/'s routers (router.name: locmoe+, gshard,
// node-limited, dropless, ...) run by route_all_ranks on a synthetic input of `tokens_per_rank`
// tokens per rank: a Gaussian gate [E, route_hidden] and tokens drawn around the gate row of an
// expert picked uniformly at random (signal `affinity` times the unit row, plus N(0, 1/route_hidden)
// noise per element), seeded. Routing runs on route_hidden features (the bytes are then counted at
// the real hidden size): the plans depend on scores, not on the row width.
struct SyntheticRouting {
  RouterConfig router;  // name, k, capacity factor...: router/'s own configuration
  int32_t tokens_per_rank = 4096;
  int32_t experts = 256;
  int32_t route_hidden = 64;
  double affinity = 0.5;
  uint64_t seed = 1;
};

// One finalized plan per rank of `cluster` (ranks placed node by node); `stats` (optional) gets the
// step's RouteStats (the router's own exchange counters among them).
Result<std::vector<RoutingPlan>> synthetic_plans(const SyntheticRouting& routing, const ClusterModel& cluster,
                                                 RouteStats* stats = nullptr);

// The router's own collectives in one step, per rank (docs/ROUTING.md): locmoe-opt's counted
// allreduces (RouteStats::exchange_rounds / exchange_bytes, identical on every rank) or LocMoE+'s
// candidate allgather (every rank receives T (32 l + 8) bytes), plus the 8 collectives both run
// (input agreement, token counts, the E expert counts: 48 + 8 E bytes sent). Time model, optimistic: every
// collective spans the nodes, a latency-bound one costs ceil(log2 R) inter-node latencies, an
// allreduce of b bytes adds 2 b / inter bw (ring), an allgather its received bytes / inter bw.
// Other routers: collectives = 0 (not modeled).
struct RouterExchange {
  int64_t collectives = 0;
  int64_t bytes_sent = 0;      // payload one rank contributes
  int64_t bytes_received = 0;  // what one rank receives (allreduce: its payload back)
  double seconds = 0;
};
RouterExchange router_exchange(const RouterConfig& router, const RouteStats& stats, const ClusterModel& cluster);

}  // namespace locmoe::whatif
