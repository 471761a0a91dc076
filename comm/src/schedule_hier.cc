// The hierarchical schedule and the hierarchical metadata schedule, as data.
//
// Rails. Each node's ranks are ordered by rail NIC into lanes (ClusterMap::lanes: by NIC, then
// GPU, then local rank; equal to local ranks when no rank has a NIC). For node m (L_m ranks) and
// a remote node N (L_N ranks), rail l (l < min(L_m, L_N)) joins the rank on lane l of m with the
// rank on lane l of N: ranks on the same NIC position, so the inter-node bytes stay on one rail of
// a rail-optimized fabric even when ranks are not in PCI order. Rail l carries the data for the
// ranks of N whose lane j has j mod L_m == l (with equal nodes: exactly lane l).
//  stage 1  inside m, every rank sends its blocks for rail l's destinations to the rank on lane l
//           (the gather onto the rank that owns that rail);
//  stage 2  the rank on lane l of m sends the gathered block [src in m][dst in group] to the rank
//           on lane l of N: one inter-node message per remote node per rank, never more;
//  stage 3  the rank on lane l of N forwards to each other rank of its group its part [src in m]
//           (only with uneven nodes: with equal nodes the rail rank is the destination).
// Data between ranks of one node goes directly. Stages overlap: the gathered block for N is cut
// into chunk-byte chunks at fixed offsets, each source sends its part cut at the same offsets, and
// chunk k leaves for N (stage 2, a step waiting for gather step k) as soon as its pieces are in,
// while later chunks are still being gathered; stage 3 from N starts as soon as N's block arrived.
// With equal nodes the rail rank is the destination and N's block lands in place in its receive
// buffer when the sources' blocks lie back to back there. Uneven nodes: ranks of lane j >= L_m of
// N are reached through rail j mod L_m and stage 3, and ranks of m on lanes >= L_N send no
// inter-node message to N (their data rides the gather). Layouts list sources and destinations in
// rank order (ClusterMap::nodes), the same on both sides.
// Metadata (small) uses a single rail per node pair, lane (m + N) mod min(L_m, L_N).
#include <algorithm>

#include "engine.h"
#include "locmoe/core/check.h"

namespace locmoe::comm_detail {
namespace {

struct Hier {
  const ClusterMap& c;
  const ExchangePlan& p;
  int me, my_node, my_lane, my_size;

  int lanes_of(int node) const { return c.local_size(node); }
  int on_lane(int node, int l) const { return c.rank_on_lane(node, l); }
  // Calls f(d) for the ranks of `dst_node` (rank order) whose data from `src_node` rides rail l.
  template <typename F>
  void for_group(int src_node, int dst_node, int l, F&& f) const {
    for (int d : c.nodes[dst_node])
      if (c.lane_of(d) % lanes_of(src_node) == l) f(d);
  }
  uint64_t bytes_to_group(int s, int src_node, int dst_node, int l) const {
    uint64_t b = 0;
    for_group(src_node, dst_node, l, [&](int d) { b += p.count(s, d); });
    return b;
  }
};

// Offset of the first non-empty block when the non-empty blocks of `ranks` (in order) lie back to
// back at `displ`; 0 when all are empty; -1 when they do not. f(r): block of rank r.
template <typename Ranks, typename CountFn>
int64_t back_to_back(const Ranks& ranks, const std::vector<uint64_t>& displ, CountFn count_of) {
  int64_t start = -1;
  uint64_t next = 0;
  bool broken = false;
  ranks([&](int r) {
    const uint64_t cnt = count_of(r);
    if (cnt == 0 || broken) return;
    if (start < 0) start = static_cast<int64_t>(next = displ[r]);
    if (displ[r] != next) broken = true;
    next += cnt;
  });
  if (broken) return -1;
  return start < 0 ? 0 : start;
}

}  // namespace

Status build_hier_schedule(const ClusterMap& c, const ExchangePlan& p, ScheduleWriter& w) {
  const int me = c.my_rank, my_node = c.my_node();
  LOCMOE_CHECK(c.num_nodes() <= kMaxKey, Code::kUnsupported, "more than {} nodes", kMaxKey);
  const Hier h{c, p, me, my_node, c.lane_of(me), c.my_local_size()};
  const auto& local = c.nodes[my_node];
  const uint64_t chunk = w.chunk();

  // Direct data inside the node, and the copy to itself.
  w.step(PlanStage::kDirect);
  const uint32_t direct = make_tag(kDirect, 0, 0);
  for (int r : local)
    if (r != me) LOCMOE_RETURN_IF_ERROR(w.message(false, r, direct, PlanBuffer::kRecv, p.recv_displs[r], p.count(r, me)));
  for (int r : local)
    if (r != me) LOCMOE_RETURN_IF_ERROR(w.message(true, r, direct, PlanBuffer::kSend, p.send_displs[r], p.count(me, r)));
  w.copy(PlanBuffer::kSend, p.send_displs[me], PlanBuffer::kRecv, p.recv_displs[me], p.count(me, me));

  for (int nn = 0; nn < c.num_nodes(); ++nn) {
    if (nn == my_node) continue;
    const int rails = std::min(h.my_size, h.lanes_of(nn));
    for (int l = 0; l < rails; ++l) {
      const int rail = h.on_lane(my_node, l);
      auto dsts = [&](auto&& f) { h.for_group(my_node, nn, l, f); };
      const uint64_t mine = h.bytes_to_group(me, my_node, nn, l);
      // The gathered block [src in my node][dst in the rail group] and my part of it.
      uint64_t total = 0, my_off = 0;
      for (int s : local) {
        if (s == me) my_off = total;
        total += h.bytes_to_group(s, my_node, nn, l);
      }
      if (total == 0) continue;
      LOCMOE_RETURN_IF_ERROR(w.check_chunks(total, "stage-2 message"));
      const uint64_t chunks = (total + chunk - 1) / chunk;
      // My blocks for this group: in place when back to back in the send buffer, else copied
      // into the staging area (by the step that sends them).
      const int64_t start = back_to_back(dsts, p.send_displs, [&](int d) { return p.count(me, d); });
      auto copy_mine = [&](PlanBuffer dst, uint64_t dst_off) {
        if (start >= 0) {
          w.copy(PlanBuffer::kSend, static_cast<uint64_t>(start), dst, dst_off, mine);
          return;
        }
        dsts([&](int d) {
          w.copy(PlanBuffer::kSend, p.send_displs[d], dst, dst_off, p.count(me, d));
          dst_off += p.count(me, d);
        });
      };
      if (rail != me) {
        // Stage 1: my part, cut at the gathered block's chunk offsets, to the rail rank.
        w.step(PlanStage::kGather, nn);
        PlanBuffer from = PlanBuffer::kSend;
        uint64_t base = static_cast<uint64_t>(start);
        if (start < 0 && mine > 0) {
          from = PlanBuffer::kStaging;
          base = w.stage(mine);
          copy_mine(from, base);
        }
        bool first = true;
        for (uint64_t o = my_off; o < my_off + mine;) {
          const uint64_t k = o / chunk, end = std::min(my_off + mine, (k + 1) * chunk);
          w.transfer(true, rail, make_tag(kStage1, nn, k), from, base + (o - my_off), end - o, first);
          first = false;
          o = end;
        }
        continue;
      }
      // I am rail l towards nn: gather chunk k (step), then send it to the rank on lane l of nn
      // (a step waiting for it).
      const uint64_t gathered = w.stage(total);
      const int peer = h.on_lane(nn, l);
      for (uint64_t k = 0; k < chunks; ++k) {
        const int g = w.step(PlanStage::kGather, nn, static_cast<uint32_t>(k));
        if (k == 0) copy_mine(PlanBuffer::kStaging, gathered + my_off);  // root steps start in order
        const uint64_t lo_k = k * chunk, hi_k = std::min(total, (k + 1) * chunk);
        uint64_t off = 0;
        for (int s : local) {
          const uint64_t b = h.bytes_to_group(s, my_node, nn, l);
          const uint64_t lo = std::max(off, lo_k), hi = std::min(off + b, hi_k);
          if (s != me && lo < hi) w.transfer(false, s, make_tag(kStage1, nn, k), PlanBuffer::kStaging, gathered + lo, hi - lo, true);
          off += b;
        }
        w.step(PlanStage::kInterNode, nn, static_cast<uint32_t>(k), g);
        w.transfer(true, peer, make_tag(kStage2, my_node, k), PlanBuffer::kStaging, gathered + lo_k, hi_k - lo_k, k == 0);
      }
    }

    // Stage 2 receive: as rail my_lane of nn's traffic to my node, I get the data of every rank
    // of nn for my rail group, then forward (stage 3) to each other rank of the group.
    const auto& srcs = c.nodes[nn];
    if (h.my_lane < std::min(h.my_size, h.lanes_of(nn))) {
      auto dsts = [&](auto&& f) { h.for_group(nn, my_node, h.my_lane, f); };
      uint64_t in_total = 0, ndst = 0;
      for (int s : srcs) in_total += h.bytes_to_group(s, nn, my_node, h.my_lane);
      dsts([&](int) { ++ndst; });
      if (in_total == 0) continue;  // nothing for my group (and every rank of it is served by me)
      const int from = h.on_lane(nn, h.my_lane);
      const uint32_t tag2 = make_tag(kStage2, nn, 0);
      // When I am the only destination (equal nodes) and the sources' blocks lie back to back in
      // my receive buffer, the message lands in place: no copy on the receiving side.
      const int64_t in_place =
          ndst == 1 ? back_to_back([&](auto&& f) { for (int s : srcs) f(s); }, p.recv_displs,
                                   [&](int s) { return p.count(s, me); })
                    : -1;
      if (in_place >= 0) {
        w.step(PlanStage::kInterNode, nn);
        LOCMOE_RETURN_IF_ERROR(w.message(false, from, tag2, PlanBuffer::kRecv, static_cast<uint64_t>(in_place), in_total));
        continue;
      }
      const uint64_t arrived = w.stage(in_total);
      const int r2 = w.step(PlanStage::kInterNode, nn);
      LOCMOE_RETURN_IF_ERROR(w.message(false, from, tag2, PlanBuffer::kStaging, arrived, in_total));
      // Stage 3 once it arrived. Layout [src][dst in group]; each destination's part of source
      // s's block starts after the parts of the destinations before it.
      w.step(PlanStage::kForward, nn, 0, r2);
      auto within = [&](int s, int d) {
        uint64_t o = 0;
        bool before = true;
        dsts([&](int d2) {
          if (d2 == d) before = false;
          if (before) o += p.count(s, d2);
        });
        return o;
      };
      uint64_t fwd_total = 0;
      dsts([&](int d) {
        if (d != me)
          for (int s : srcs) fwd_total += p.count(s, d);
      });
      const uint64_t fwd_base = fwd_total ? w.stage(fwd_total) : 0;
      // Copies first (into my receive buffer, or d's forwarding buffer [src]), then the sends.
      uint64_t at = fwd_base;
      dsts([&](int d) {
        uint64_t src_off = 0;
        for (int s : srcs) {
          const uint64_t cnt = p.count(s, d), from_off = arrived + src_off + within(s, d);
          if (d == me) {
            w.copy(PlanBuffer::kStaging, from_off, PlanBuffer::kRecv, p.recv_displs[s], cnt);
          } else {
            w.copy(PlanBuffer::kStaging, from_off, PlanBuffer::kStaging, at, cnt);
            at += cnt;
          }
          src_off += h.bytes_to_group(s, nn, my_node, h.my_lane);
        }
      });
      at = fwd_base;
      Status st = ok_status();
      dsts([&](int d) {
        if (d == me || !st.ok()) return;
        uint64_t b = 0;
        for (int s : srcs) b += p.count(s, d);
        st = w.message(true, d, make_tag(kStage3, nn, 0), PlanBuffer::kStaging, at, b);
        at += b;
      });
      LOCMOE_RETURN_IF_ERROR(st);
    }

    // Final receive of nn's data for me, forwarded by the rail of my group (uneven nodes only:
    // with equal nodes every rank is its own rail).
    const int my_rail_lane = h.my_lane % h.lanes_of(nn);
    if (my_rail_lane != h.my_lane) {
      uint64_t b = 0;
      for (int s : srcs) b += p.count(s, me);
      if (b == 0) continue;
      const int64_t start = back_to_back([&](auto&& f) { for (int s : srcs) f(s); }, p.recv_displs,
                                         [&](int s) { return p.count(s, me); });
      const int from = h.on_lane(my_node, my_rail_lane);
      const int q = w.step(PlanStage::kForward, nn);
      if (start >= 0) {
        LOCMOE_RETURN_IF_ERROR(
            w.message(false, from, make_tag(kStage3, nn, 0), PlanBuffer::kRecv, static_cast<uint64_t>(start), b));
        continue;
      }
      const uint64_t landing = w.stage(b);
      LOCMOE_RETURN_IF_ERROR(w.message(false, from, make_tag(kStage3, nn, 0), PlanBuffer::kStaging, landing, b));
      w.step(PlanStage::kForward, nn, 0, q);
      uint64_t o = 0;
      for (int s : srcs) {
        w.copy(PlanBuffer::kStaging, landing + o, PlanBuffer::kRecv, p.recv_displs[s], p.count(s, me));
        o += p.count(s, me);
      }
    }
  }
  return ok_status();
}

// (A) rows inside the node; (B) the node's block of rows between rail peers; (C) each received
// node block to the other ranks of the node; (D) the blocks unpacked into the matrix. Node blocks
// are contiguous in the matrix only when nodes hold consecutive ranks, so they travel packed.
Status build_hier_meta_schedule(const ClusterMap& c, uint64_t row_bytes, ScheduleWriter& w) {
  const int me = c.my_rank, my_node = c.my_node(), nodes = c.num_nodes();
  LOCMOE_CHECK(nodes <= kMaxKey, Code::kUnsupported, "more than {} nodes", kMaxKey);
  const auto& local = c.nodes[my_node];
  auto rail = [&](int m, int nn) {
    return c.rank_on_lane(m, (m + nn) % std::min(c.local_size(m), c.local_size(nn)));
  };
  const int a = w.step(PlanStage::kMetadata);
  for (int r : local)
    if (r != me) LOCMOE_RETURN_IF_ERROR(w.message(false, r, make_tag(kMetaA, 0, 0), PlanBuffer::kRecv, r * row_bytes, row_bytes));
  for (int r : local)
    if (r != me) LOCMOE_RETURN_IF_ERROR(w.message(true, r, make_tag(kMetaA, 0, 0), PlanBuffer::kSend, me * row_bytes, row_bytes));
  // Staging: my node's block, then one block per node.
  const uint64_t mine = w.stage(local.size() * row_bytes);
  std::vector<uint64_t> block(nodes, 0);
  for (int nn = 0; nn < nodes; ++nn)
    if (nn != my_node) block[nn] = w.stage(c.local_size(nn) * row_bytes);
  const int b = w.step(PlanStage::kMetadata, -1, 0, a);
  for (size_t i = 0; i < local.size(); ++i)
    w.copy(PlanBuffer::kRecv, local[i] * row_bytes, PlanBuffer::kStaging, mine + i * row_bytes, row_bytes);
  for (int nn = 0; nn < nodes; ++nn) {
    if (nn == my_node || rail(my_node, nn) != me) continue;
    LOCMOE_RETURN_IF_ERROR(w.message(false, rail(nn, my_node), make_tag(kMetaB, nn, 0), PlanBuffer::kStaging,
                                     block[nn], c.local_size(nn) * row_bytes));
  }
  for (int nn = 0; nn < nodes; ++nn) {
    if (nn == my_node || rail(my_node, nn) != me) continue;
    LOCMOE_RETURN_IF_ERROR(w.message(true, rail(nn, my_node), make_tag(kMetaB, my_node, 0), PlanBuffer::kStaging,
                                     mine, local.size() * row_bytes));
  }
  const int cc = w.step(PlanStage::kMetadata, -1, 0, b);
  for (int nn = 0; nn < nodes; ++nn) {
    if (nn == my_node || rail(my_node, nn) == me) continue;
    LOCMOE_RETURN_IF_ERROR(w.message(false, rail(my_node, nn), make_tag(kMetaC, nn, 0), PlanBuffer::kStaging,
                                     block[nn], c.local_size(nn) * row_bytes));
  }
  for (int nn = 0; nn < nodes; ++nn) {
    if (nn == my_node || rail(my_node, nn) != me) continue;
    for (int r : local)
      if (r != me)
        LOCMOE_RETURN_IF_ERROR(w.message(true, r, make_tag(kMetaC, nn, 0), PlanBuffer::kStaging, block[nn],
                                         c.local_size(nn) * row_bytes));
  }
  w.step(PlanStage::kMetadata, -1, 0, cc);
  for (int nn = 0; nn < nodes; ++nn) {
    if (nn == my_node) continue;
    for (int i = 0; i < c.local_size(nn); ++i)
      w.copy(PlanBuffer::kStaging, block[nn] + i * row_bytes, PlanBuffer::kRecv, c.nodes[nn][i] * row_bytes, row_bytes);
  }
  return ok_status();
}

}  // namespace locmoe::comm_detail
