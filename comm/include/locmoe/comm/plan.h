// Exchange plans: an all-to-all-v negotiated once (Communicator::prepare) and executed any number
// of times (Communicator::execute) with no metadata round, in plain data.
//
// A plan says, for one rank of one communicator: what it sends and receives (counts and
// displacements per rank, in bytes), the whole count matrix of the exchange (the hierarchical
// schedule needs the counts between other ranks), and the schedule that moves the bytes: steps
// of transport operations and local copies, each step started when the step it waits for is
// done. Everything in it is plain data owned by the plan; it holds no pointer to any buffer.
// Buffers are named by role (the caller's send and receive buffers, the communicator's staging
// area) and offsets, so one plan serves any buffers of the right size.
//
// Build rule (the one place: comm/src/plan.cc); `perf/whatif` and ExchangeStats read the same
// schedule. Plans are cheap to copy but carry O(ranks^2) counts.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "locmoe/comm/transport.h"  // MemoryKind
#include "locmoe/core/status.h"
#include "locmoe/topology/cluster_map.h"

namespace locmoe {

enum class A2AAlgo : int32_t { kAuto = 0, kFlat = 1, kHierarchical = 2 };

// What the last exchange moved, from this rank's point of view (payload bytes only; a message
// is one logical transfer to one peer, however many LOCMOE_CHUNK_BYTES chunks carry it; empty
// transfers are not sent and not counted; the copy to itself is not a message).
struct ExchangeStats {
  uint64_t bytes_sent = 0;            // bytes this rank put on any transport (forwarding included)
  uint64_t bytes_received = 0;        // payload bytes that landed in `recv` from other ranks
  uint64_t internode_bytes_sent = 0;  // bytes this rank put on inter-node links
  uint64_t internode_msgs_sent = 0;   // messages this rank sent to another node
  uint64_t intranode_bytes_sent = 0;  // bytes to other ranks of its node (forwarding included)
  uint64_t msgs_sent = 0;             // all data messages this rank sent
  // Added: the count metadata of a negotiation (prepare, alltoallv, exchange_counts: 2 x ranks + 2
  // uint64 per rank), along the same paths as the data (direct for flat; rail-aggregated for
  // hierarchical). Zero for Communicator::execute, which moves data only.
  uint64_t meta_msgs_sent = 0;
  uint64_t meta_internode_msgs_sent = 0;
  uint64_t chunks_sent = 0;           // transport sends of data (>= msgs_sent when chunked)
};

// What a rank brings to Communicator::prepare. Arrays are host memory, caller-owned, size()
// entries each, read during the call only.
struct ExchangeSpec {
  const uint64_t* send_counts = nullptr;  // required: bytes to each rank
  const uint64_t* send_displs = nullptr;  // offsets in the send buffer; null = packed in rank order
  // Bytes expected from each rank; null = whatever the peers announce (nothing to disagree on).
  // Given, any disagreement is Code::kMismatch on every rank.
  const uint64_t* recv_counts = nullptr;
  const uint64_t* recv_displs = nullptr;  // offsets in the receive buffer; null = packed in rank order
  // Size of the receive buffer execute() will get; a placement past it is Code::kOutOfRange on
  // every rank. kAnyCapacity: the caller sizes it from ExchangePlan::recv_bytes.
  static constexpr uint64_t kAnyCapacity = UINT64_MAX;
  uint64_t recv_capacity = kAnyCapacity;
  // Where execute()'s buffers live. kDevice needs the NCCL transport (flat schedule; the
  // transport routes inside and across nodes itself).
  MemoryKind mem = MemoryKind::kHost;
};

// ---- the schedule, as data ----------------------------------------------------------------------
enum class PlanBuffer : uint8_t {
  kSend = 0,     // the caller's send buffer (read only)
  kRecv = 1,     // the caller's receive buffer
  kStaging = 2,  // the communicator's staging area, Schedule::staging_bytes bytes
};

// Which part of the algorithm a step belongs to (messages, statistics, the cost model).
enum class PlanStage : uint8_t {
  kDirect = 0,     // flat exchange, or direct between ranks of one node (and the copy to itself)
  kGather = 1,     // hierarchical stage 1: inside the node onto the rail rank of a remote node
  kInterNode = 2,  // hierarchical stage 2: rail rank to rail rank of the remote node
  kForward = 3,    // hierarchical stage 3: the receiving rail rank to the rest of its rail group
  kMetadata = 4,   // count metadata (prepare's own schedule)
};
const char* stage_name(PlanStage stage);

// One transport operation: a send or receive of `bytes` at buffer + offset with `peer`.
struct PlanTransfer {
  int32_t peer = -1;
  bool is_send = false;
  bool first_chunk = true;    // the first (or only) chunk of a logical message (ExchangeStats)
  PlanBuffer buf = PlanBuffer::kSend;
  uint32_t tag = 0;           // without the exchange's sequence bits (the communicator adds them)
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

// A local copy (memmove semantics) of `bytes` from src + src_offset to dst + dst_offset.
struct PlanCopy {
  PlanBuffer src = PlanBuffer::kSend, dst = PlanBuffer::kRecv;
  uint64_t src_offset = 0, dst_offset = 0, bytes = 0;
};

// A step: when it starts (at once, or when step `after` is done) its copies are made, then its
// transfers posted; it is done when every transfer is. Index ranges are [begin, end) into the
// schedule's arrays.
struct PlanStep {
  PlanStage stage = PlanStage::kDirect;
  int32_t node = -1;         // the remote node this step concerns, -1 none
  uint32_t chunk = 0;        // pipelined chunk index (gather, inter-node), else 0
  int32_t after = -1;        // the step this one waits for, -1 = none
  int32_t first_dependent = -1, next_sibling = -1;  // steps with after == this one, as a list
  uint32_t copies_begin = 0, copies_end = 0;
  uint32_t transfers_begin = 0, transfers_end = 0;
};

struct Schedule {
  std::vector<PlanStep> steps;  // a step's `after` precedes it
  std::vector<PlanCopy> copies;
  std::vector<PlanTransfer> transfers;
  uint64_t staging_bytes = 0;
  void clear();
};

// ---- the plan ----------------------------------------------------------------------------------
struct ExchangePlan {
  uint64_t comm_id = 0;  // the communicator that made it (execute refuses another's); 0 = none
  int rank = -1, ranks = 0;
  A2AAlgo algo = A2AAlgo::kFlat;
  MemoryKind mem = MemoryKind::kHost;
  uint64_t chunk_bytes = 0;
  // This rank's side, in bytes, [ranks] each. recv_counts are what the peers announced.
  std::vector<uint64_t> send_counts, send_displs, recv_counts, recv_displs;
  uint64_t send_bytes = 0;  // the send buffer execute() reads: max over r of send_displs + send_counts
  uint64_t recv_bytes = 0;  // the receive buffer execute() writes: max of recv_displs + recv_counts
  uint64_t recv_capacity = ExchangeSpec::kAnyCapacity;  // as given to prepare (checked there)
  // matrix[s * ranks + d]: bytes rank s sends to rank d, every rank's.
  std::vector<uint64_t> matrix;
  Schedule schedule;
  ExchangeStats stats;  // what one execute() of this plan moves (from the schedule)

  bool valid() const { return comm_id != 0; }
  uint64_t count(int src, int dst) const { return matrix[static_cast<size_t>(src) * ranks + dst]; }
};

// ---- building plans (pure, local: what prepare does after its metadata round) -----------------
// The metadata row rank r announces: [send_counts (n) | recv_counts (n) | bytes its receive
// placement needs | recv_capacity | rejected (1: the rank refused its own input,
// Communicator::reject)], n = ranks; recv_counts[s] = UINT64_MAX when the rank takes what s
// announces (ExchangeSpec::recv_counts null).
constexpr size_t plan_row_len(int ranks) { return 2 * static_cast<size_t>(ranks) + 3; }
// Fills `row` (plan_row_len entries) from this rank's spec. Errors: a displacement that overflows.
Status plan_row(const ExchangeSpec& spec, int ranks, std::span<uint64_t> row);
// Checks every rank's row, with the same verdict on every rank: Code::kMismatch for the first
// disagreeing (sender, receiver) pair, naming both ranks and counts; Code::kOutOfRange for the
// first rank whose receive buffer is too small, naming it and both sizes.
Status check_rows(std::span<const uint64_t> rows, int ranks);
// The plan of rank cluster.my_rank from every rank's checked rows and its own spec: counts,
// displacements, matrix and the schedule of `algo` (kFlat or kHierarchical; kHierarchical with
// kDevice memory runs flat), cut into `chunk_bytes` chunks. Reuses `plan`'s storage (no
// allocation when it already held a plan of this shape). Errors: a message needing more than
// 4096 chunks (raise LOCMOE_CHUNK_BYTES), more than 512 nodes.
Status build_plan(const ClusterMap& cluster, A2AAlgo algo, uint64_t chunk_bytes, const ExchangeSpec& spec,
                  std::span<const uint64_t> rows, ExchangePlan& plan);
// Rebuilds plan.schedule and plan.stats from plan's matrix, counts and displacements (after they
// were changed: transposed, scaled).
Status build_schedule(const ClusterMap& cluster, ExchangePlan& plan);
// The opposite direction of `plan`: every byte goes back where it came from (send and receive
// sides swapped, matrix transposed); recv_capacity becomes kAnyCapacity (the caller's send
// buffer of the forward exchange, plan.send_bytes). Local, no communication.
Status transpose_plan(const ClusterMap& cluster, const ExchangePlan& plan, ExchangePlan& out);
// `plan` with every count and displacement multiplied by `factor` (a plan negotiated in rows,
// executed on rows of `factor` bytes). Local. Errors: factor 0, or a product past 2^64.
Status scale_plan(const ClusterMap& cluster, const ExchangePlan& plan, uint64_t factor, ExchangePlan& out);

}  // namespace locmoe
