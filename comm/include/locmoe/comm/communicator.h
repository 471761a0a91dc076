// Communicator: the all-to-all-v every token byte goes through.
//
// Built from a bootstrap and a cluster map; owns the transports (MPI, UCX, NCCL behind
// comm/transport.h) and picks the algorithm: flat (every rank to every rank) or hierarchical
// (gather per remote node onto the rail rank, one inter-node message per remote node between
// peers of equal local rank, scatter inside the destination node). Both give byte-identical
// results. Every wait has the deadline LOCMOE_TIMEOUT_S (or CommConfig::timeout_s); a peer that
// dies or stops answering gives Code::kTimeout / kPeerFailure naming the peer rank, its host and
// the operation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "locmoe/core/bootstrap.h"
#include "locmoe/comm/transport.h"  // MemoryKind
#include "locmoe/core/status.h"
#include "locmoe/topology/cluster.h"

namespace locmoe {

enum class A2AAlgo : int32_t { kAuto = 0, kFlat = 1, kHierarchical = 2 };

struct CommConfig {
  std::string transport;        // "mpi" | "ucx" | "nccl"; empty = LOCMOE_TRANSPORT
  std::string intra_transport;  // transport inside a node; empty = LOCMOE_INTRA_TRANSPORT / same
  A2AAlgo algo = A2AAlgo::kAuto;  // kAuto = LOCMOE_A2A_ALGO, then flat on one node, hier across
  uint64_t chunk_bytes = 0;       // 0 = LOCMOE_CHUNK_BYTES
  double timeout_s = 0;           // 0 = LOCMOE_TIMEOUT_S
};

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
  // Added: the count metadata every alltoallv exchanges first (2 x ranks + 2 uint64 per rank),
  // along the same paths as the data (direct for flat; rail-aggregated for hierarchical).
  uint64_t meta_msgs_sent = 0;
  uint64_t meta_internode_msgs_sent = 0;
  uint64_t chunks_sent = 0;           // transport sends of data (>= msgs_sent when chunked)
};

class Communicator {
 public:
  // Collective over `bootstrap`'s ranks. `bootstrap` and `cluster` must outlive the communicator.
  static Result<std::unique_ptr<Communicator>> create(Bootstrap& bootstrap, const ClusterMap& cluster,
                                                      const CommConfig& config = {});
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const ClusterMap& cluster() const = 0;
  virtual A2AAlgo algo() const = 0;            // resolved algorithm (never kAuto)
  virtual std::string transport_name() const = 0;

  // recv_counts[r] = bytes rank r sends to this rank, from every rank's send_counts. Checked:
  // the exchange itself fails if any rank later sends a count other than announced.
  // Collective. send_counts and recv_counts: size() entries each, caller-owned, host memory.
  // Optional before alltoallv (which exchanges and checks the counts itself); use it to size the
  // receive buffer. Errors: kTimeout / kPeerFailure as alltoallv.
  virtual Status exchange_counts(const uint64_t* send_counts, uint64_t* recv_counts) = 0;

  // All-to-all-v in bytes: send_counts[r] bytes at send + send_displs[r] go to rank r, which
  // receives them at recv + recv_displs[this rank]. recv_counts must match what the peers send
  // (exchange_counts gives them); recv_capacity is the size of `recv`: any placement past it is
  // an error before anything is written. `mem` says where both buffers live; kDevice needs the
  // NCCL transport and runs on `stream` (a cudaStream_t; nullptr = default stream).
  // Collective; all four arrays have size() entries, host memory, caller-owned; the self block
  // (send_counts[rank()]) is copied locally. Errors, the same on every rank because every rank
  // checks the exchanged count matrix before any data moves: kMismatch (rank a sends n bytes to
  // rank b, which expects m; both ranks and counts named), kOutOfRange (a rank's recv_capacity is
  // below its recv_displs + recv_counts; nothing is written). kTimeout / kPeerFailure name the
  // peer rank, its host and the stage; after them the communicator refuses further calls.
  // Data moved: see last_stats().
  virtual Status alltoallv(const void* send, const uint64_t* send_counts, const uint64_t* send_displs,
                           void* recv, const uint64_t* recv_counts, const uint64_t* recv_displs,
                           uint64_t recv_capacity, MemoryKind mem = MemoryKind::kHost,
                           void* stream = nullptr) = 0;

  // Statistics of the last exchange_counts / alltoallv on this rank.
  virtual const ExchangeStats& last_stats() const = 0;
};

}  // namespace locmoe
