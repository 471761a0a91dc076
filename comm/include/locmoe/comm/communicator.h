// Communicator: the all-to-all-v every token byte goes through.
//
// Built from a bootstrap and a cluster map; owns the transports (MPI, UCX, NCCL behind
// comm/transport.h) and picks the algorithm: flat (every rank to every rank) or hierarchical
// (gather per remote node onto the rail rank, one inter-node message per remote node between
// the ranks of the two nodes on the same rail lane, ClusterMap::lanes: paired by NIC, scatter
// inside the destination node). Both give byte-identical
// results. Every wait has the deadline LOCMOE_TIMEOUT_S (or CommConfig::timeout_s); a peer that
// dies or stops answering gives Code::kTimeout / kPeerFailure naming the peer rank, its host and
// the operation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "locmoe/core/bootstrap.h"
#include "locmoe/comm/plan.h"
#include "locmoe/comm/transport.h"  // MemoryKind
#include "locmoe/core/status.h"
#include "locmoe/topology/cluster_map.h"

namespace locmoe {

struct CommConfig {
  std::string transport;        // "mpi" | "ucx" | "nccl"; empty = LOCMOE_TRANSPORT
  std::string intra_transport;  // transport inside a node; empty = LOCMOE_INTRA_TRANSPORT / same
  A2AAlgo algo = A2AAlgo::kAuto;  // kAuto = LOCMOE_A2A_ALGO, then flat on one node, hier across
  uint64_t chunk_bytes = 0;       // 0 = LOCMOE_CHUNK_BYTES
  double timeout_s = 0;           // 0 = LOCMOE_TIMEOUT_S
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
  // Equivalent to prepare (with these arrays) followed by execute: one metadata round per call.
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

  // Collective, in place of the exchange_counts / alltoallv this rank cannot take part in because
  // its own input is bad (a caller that skipped it would leave its peers waiting until the
  // deadline): the peers' pending exchange fails at once with kMismatch naming this rank and
  // `why`'s message, and this call returns `why`. The exchange completes on every rank, so the
  // communicator stays usable.
  virtual Status reject(const Status& why) { return why; }
  // Exchanges this rank has entered (exchange_counts, alltoallv, reject): a caller learns whether a
  // failed call of its own got as far as its first exchange.
  virtual uint64_t exchanges() const { return 0; }
  // Since the communicator was made, on this rank: metadata rounds (each exchange_counts,
  // prepare, reject and the negotiation inside alltoallv: one every-rank count exchange) and data
  // exchanges (each execute and the data phase of alltoallv). What `locmoe-perf ep` reports per
  // training step; a caller takes differences around the calls it measures.
  struct Counters {
    uint64_t metadata_rounds = 0;
    uint64_t data_exchanges = 0;
  };
  virtual Counters counters() const { return {}; }

  // Not collective, never waits: tells every peer that this rank gives up (locmoe_group_abort).
  // A peer's pending or next exchange fails at once with kPeerFailure naming this rank and
  // `message`; afterwards the communicator refuses further calls on this rank and on every rank
  // that learned of it.
  virtual void abort(std::string_view message) { (void)message; }

  // ---- plans: negotiate once, move bytes many times (locmoe/comm/plan.h) ----------------------
  // Negotiates an exchange: one metadata round (the same as alltoallv's, along the algorithm's
  // paths) moves every rank's counts, then every rank checks the whole matrix and builds its plan
  // (comm/plan.h: build_plan). Collective over all ranks; synchronizes them (nobody returns
  // before every rank's counts arrived). Errors, the same on every rank and before any data
  // moves: kMismatch (rank a sends n bytes to rank b, which expects m; both named), kOutOfRange
  // (a rank's recv_capacity is below its placement), kTimeout / kPeerFailure as alltoallv. `plan`
  // is caller-owned and written only on success; its storage is reused (prepare into the same
  // plan allocates nothing once it held a plan of that shape). The plan stays valid for the
  // communicator's lifetime and is bound to it (comm_id).
  virtual Status prepare(const ExchangeSpec& spec, ExchangePlan& plan) = 0;
  // Moves the data of `plan`: send_counts[r] bytes at send + send_displs[r] to rank r, landing at
  // recv + its recv_displs[this rank]; no metadata round (the counts were checked by prepare).
  // Collective: every rank executes the same plan (or its transpose/scale, executed by all in
  // the same order); returns when this rank's part is done (its receive buffer is complete and
  // its send buffer is free again), which does not wait for ranks it exchanges nothing with.
  // `send` must hold plan.send_bytes bytes and `recv` plan.recv_bytes, both of plan.mem memory;
  // kDevice runs on `stream` (cudaStream_t, nullptr = default stream) and returns after the
  // stream completed the exchange. Buffers are caller-owned and used only during the call.
  // Errors: kInvalidArgument for a plan of another communicator or a null buffer with bytes to
  // move; kTimeout / kPeerFailure name the peer, its host and the stage, after which the
  // communicator refuses further calls. Allocates nothing from the second execute of a plan
  // shape on (the staging area and request slots are kept).
  virtual Status execute(const ExchangePlan& plan, const void* send, void* recv, void* stream = nullptr) = 0;
  // The opposite direction of `plan` (comm/plan.h: transpose_plan), e.g. combine after dispatch.
  // Local: no communication; every rank transposes its own plan.
  virtual Status transpose(const ExchangePlan& plan, ExchangePlan& out) const = 0;
  // `plan` in units of `factor` bytes (comm/plan.h: scale_plan). Local: no communication.
  virtual Status scale(const ExchangePlan& plan, uint64_t factor, ExchangePlan& out) const = 0;

  // Statistics of the last exchange_counts / alltoallv / prepare / execute on this rank.
  virtual const ExchangeStats& last_stats() const = 0;
};

}  // namespace locmoe
