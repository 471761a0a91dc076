// comm internals shared by the schedule builders, the progress engine and the communicator:
// tags, routing of a peer to its transport, abort notices, and the engine that runs a Schedule.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "locmoe/comm/plan.h"
#include "locmoe/comm/transport.h"
#include "locmoe/core/status.h"
#include "locmoe/topology/cluster_map.h"

namespace locmoe::comm_detail {

// ---- tags (< 2^30): sequence (6 bits) | phase (3) | key (9: node index) | chunk (12) -------------
enum Phase : uint32_t { kMetaA = 0, kMetaB = 1, kMetaC = 2, kDirect = 3, kStage1 = 4, kStage2 = 5, kStage3 = 6, kAbort = 7 };
constexpr uint64_t kMaxChunks = 1u << 12;
constexpr int kMaxKey = 1 << 9;
// A schedule's tag; the engine adds the exchange's sequence bits.
constexpr uint32_t make_tag(Phase phase, int key, uint64_t chunk) {
  return (static_cast<uint32_t>(phase) << 21) | (static_cast<uint32_t>(key) << 12) | static_cast<uint32_t>(chunk);
}
constexpr uint64_t with_seq(uint32_t tag, uint64_t seq) { return ((seq & 63u) << 24) | tag; }

// The transport that carries messages to each peer: the intra-node one for ranks of this node
// when there is one, else the inter-node one.
struct Links {
  const ClusterMap* cluster = nullptr;
  Transport* inter = nullptr;
  Transport* intra = nullptr;
  Transport& to(int peer) const {
    return (intra && cluster->node_of(peer) == cluster->my_node()) ? *intra : *inter;
  }
};

// ---- schedule building (schedule_flat.cc, schedule_hier.cc) --------------------------------------
// Appends to a Schedule; every message is cut into chunk-byte transfers at fixed offsets.
class ScheduleWriter {
 public:
  ScheduleWriter(Schedule& s, uint64_t chunk) : s_(s), chunk_(chunk) {}
  // Opens a step; transfers and copies added until the next step() belong to it.
  int step(PlanStage stage, int node = -1, uint32_t chunk = 0, int after = -1);
  void copy(PlanBuffer src, uint64_t src_off, PlanBuffer dst, uint64_t dst_off, uint64_t bytes);
  // One logical message (ceil(bytes / chunk) transfers, chunk c tagged tag + c). Empty: nothing.
  Status message(bool is_send, int peer, uint32_t tag, PlanBuffer buf, uint64_t off, uint64_t bytes);
  // One transfer (a piece of a message cut elsewhere); `first` marks the message's first piece.
  void transfer(bool is_send, int peer, uint32_t tag, PlanBuffer buf, uint64_t off, uint64_t bytes, bool first);
  // Room in the staging area (64-byte aligned offsets).
  uint64_t stage(uint64_t bytes);
  uint64_t chunk() const { return chunk_; }
  Status check_chunks(uint64_t bytes, const char* what) const;

 private:
  Schedule& s_;
  uint64_t chunk_;
};

// Data schedules of rank cluster.my_rank for plan's matrix, counts and displacements.
Status build_flat_schedule(const ClusterMap& cluster, const ExchangePlan& plan, ScheduleWriter& w);
Status build_hier_schedule(const ClusterMap& cluster, const ExchangePlan& plan, ScheduleWriter& w);
// Metadata schedules: every rank's row of `row_bytes` at kRecv + rank * row_bytes (this rank's
// own row filled; kSend is the same buffer), along the flat or the hierarchical paths.
Status build_flat_meta_schedule(const ClusterMap& cluster, uint64_t row_bytes, ScheduleWriter& w);
Status build_hier_meta_schedule(const ClusterMap& cluster, uint64_t row_bytes, ScheduleWriter& w);
// What one run of `s` sends and receives (ExchangeStats); `meta` counts its sends as metadata.
ExchangeStats schedule_stats(const Schedule& s, const ClusterMap& cluster, bool meta);

// ---- abort notices and the culprit chain (abort.cc) ---------------------------------------------
// Each rank keeps one receive posted per peer for a notice (phase kAbort, sequence 0, so no data
// tag matches it). A rank that gives up, or is stuck at its deadline, sends every other rank one
// notice: its error and the peer it waits for. A peer-failure notice makes the others fail at
// once; "waits for" links let stuck ranks name the rank at the end of the chain.
class AbortNotices {
 public:
  // Posts the receives (host transports only; device-only transports carry no notices).
  Status start(const Links& links, int me, int n);
  // Tests the receives; a peer's failure notice becomes this rank's kPeerFailure naming it.
  Status poll(std::string_view op);
  // Tells every other rank why this one gives up or whom it waits for (once; never waited for).
  void send(const Status& why, int waiting_on);
  bool sent() const { return sent_; }
  bool heard_from(int peer) const { return !from_.empty() && from_[peer]; }
  // "rank 1 (host a) waits for rank 2 (host b)": from this rank along the notices' "waits for"
  // links, starting at `peer`, to the first rank that sent none; *culprit is that rank.
  std::string chain(int me, int peer, int* culprit) const;
  void cancel_all();

 private:
  struct Notice {
    int32_t code = 0;
    int32_t waiting_on = -1;
    char message[496] = {};
  };
  Links links_;
  int me_ = 0, n_ = 0;
  std::vector<Notice> in_;
  std::vector<bool> from_;
  std::vector<int> waits_on_;
  std::vector<Request> recv_, send_;
  Notice out_;
  bool sent_ = false;
};

// ---- the progress engine (progress.cc) ----------------------------------------------------------
// Runs any Schedule against a deadline: starts the steps that wait for nothing (in order), makes
// a started step's copies, posts its transfers, tests them until done, then starts the steps
// that waited for it. On a transport error, a peer's failure notice or the deadline (followed by
// the notice grace and the culprit chain) it cancels what is pending and returns the error
// naming the peer, its host, `op` and the step. Allocates nothing once its request slots have
// grown to the schedule's size.
class ProgressEngine {
 public:
  struct Buffers {
    const char* send = nullptr;
    char* recv = nullptr;
    char* staging = nullptr;
  };
  Status run(const Schedule& s, const Buffers& b, uint64_t seq, void* stream, Clock::time_point deadline,
             double timeout_s, std::string_view op, const Links& links, AbortNotices& notices);

 private:
  Status start_step(const Schedule& s, int i, const Buffers& b, uint64_t seq, void* stream, std::string_view op,
                    const Links& links);
  Status finish_step(const Schedule& s, int i, const Buffers& b, uint64_t seq, void* stream, std::string_view op,
                     const Links& links);
  void cancel_pending(const Schedule& s);
  std::string describe(const Schedule& s, int step) const;

  std::vector<Request> reqs_;        // one per transfer
  std::vector<uint32_t> pending_;    // per step: transfers not yet done
  std::vector<int32_t> active_;      // started steps with transfers pending
};

}  // namespace locmoe::comm_detail
