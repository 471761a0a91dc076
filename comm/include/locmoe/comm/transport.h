// Transport: point-to-point byte movement between ranks, the one interface every backend fills in
// (comm/src/mpi, comm/src/ucx, comm/src/nccl). The all-to-all algorithms (flat, hierarchical) are
// written against this interface only and never #ifdef on a backend; a TransportSet combines an
// intra-node and an inter-node transport behind the same calls.
//
// Model: post non-blocking sends and receives of byte ranges, then test them (which also drives
// the backend's progress) until done or until a deadline the caller owns. A message is matched by
// (source rank, tag): a receive takes exactly one message from `peer` with that tag. A message
// longer than the posted receive is an error (Code::kMismatch), never a write past `bytes`.
// Nothing here blocks without a deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"
#include "locmoe/topology/cluster_map.h"

namespace locmoe {

// Where a buffer lives.
enum class MemoryKind : int32_t { kHost = 0, kDevice = 1 };

using Clock = std::chrono::steady_clock;

class Transport;

// One posted operation. Owned by the caller, filled by post_*; valid until test() reported it done
// (or failed) or cancel() released it. `bytes_done` is the received length for a receive.
struct Request {
  Transport* transport = nullptr;
  int peer = -1;
  bool is_send = false;
  uint64_t tag = 0;
  uint64_t bytes = 0;       // posted length (receive: capacity)
  uint64_t bytes_done = 0;  // receive: bytes that arrived (<= bytes); send: bytes
  void* handle = nullptr;   // backend state (MPI request index, UCX request, NCCL group slot)
  bool done = false;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // "mpi", "ucx", "nccl".
  virtual const char* name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Whether this transport can carry messages to `peer` (rank in [0, size())).
  virtual bool can_reach(int peer) const = 0;
  // Whether buffers of that kind may be passed to post_*.
  virtual bool supports(MemoryKind mem) const = 0;

  // Posts a send of `bytes` bytes at `buf` to `peer` with `tag` (< 2^30, fits MPI_TAG_UB). `buf` must stay valid
  // and unchanged until the request is done. `stream` (cudaStream_t) is used by device transports
  // only. On error nothing is posted.
  virtual Status post_send(Request& req, int peer, uint64_t tag, const void* buf, uint64_t bytes,
                           void* stream = nullptr) = 0;
  // Posts a receive of at most `bytes` bytes into `buf` from `peer` with `tag`.
  virtual Status post_recv(Request& req, int peer, uint64_t tag, void* buf, uint64_t bytes,
                           void* stream = nullptr) = 0;
  // Non-blocking: drives progress and sets req.done (and req.bytes_done). An error (peer failure,
  // a message longer than the receive) names the peer; the request is released either way.
  virtual Status test(Request& req) = 0;
  // Drives progress once without testing a particular request.
  virtual void progress() = 0;
  // Releases a request that will never be waited for again (after another request failed).
  // Best effort: MPI cannot cancel a send, UCX cancels receives and drops sends on close.
  virtual void cancel(Request& req) = 0;
  // Marks that the job cannot continue (a peer failed or a deadline passed) so finalize() does
  // not wait for peers; recorded by the communicator.
  virtual void mark_failed() = 0;
  // Releases everything. Collective in the healthy case (UCX flushes its endpoints), local and
  // forced after mark_failed(). Called once; the destructor calls it when the owner did not.
  virtual Status finalize() = 0;
};

// Waits until every request in `reqs` is done or `deadline` passes; polls the transports and
// yields the CPU between polls (ranks may share cores). On a failure or the deadline every
// remaining request is cancelled and the error names the peer rank(s), their host when
// `host_of` is given, and `op`.
Status wait_all(std::span<Request> reqs, Clock::time_point deadline, std::string_view op,
                const ClusterMap* cluster = nullptr);

// "rank 3 (host nodeB)" when the cluster map is known, else "rank 3".
std::string peer_name(int rank, const ClusterMap* cluster);

// Backends. Each is collective over `bootstrap` (addresses or communicator ids go through it)
// and fails with Code::kUnsupported when this build lacks it.
//
// MPI: MPI must be initialized with MPI_COMM_WORLD holding exactly the bootstrap's ranks (in any
// order); the transport duplicates the world communicator with MPI_ERRORS_RETURN.
Result<std::unique_ptr<Transport>> make_mpi_transport(Bootstrap& bootstrap);
// UCX (host memory): one ucp context and worker, one endpoint per peer created from worker
// addresses allgathered through `bootstrap`, peer-failure error handling (see ARCHITECTURE.md).
// With `cluster`, this rank's rail NIC becomes UCX's NET_DEVICES (ucx_net_device).
Result<std::unique_ptr<Transport>> make_ucx_transport(Bootstrap& bootstrap, const ClusterMap* cluster = nullptr);
// What the UCX transport sets as NET_DEVICES for a rank: "" when the user set UCX_NET_DEVICES,
// the rank has no NIC name, or the NIC is no device of this machine (/sys/class/infiniband or
// /sys/class/net); else "mlx5_0:1" for InfiniBand, the interface name for Ethernet. "" without UCX.
std::string ucx_net_device(const RankDescriptor& me);
// NCCL (device memory): a communicator from a unique id broadcast by rank 0 through `bootstrap`;
// sends and receives posted between two tests are issued as one ncclGroup on the caller's stream.
Result<std::unique_ptr<Transport>> make_nccl_transport(Bootstrap& bootstrap);
// By name ("mpi" | "ucx" | "nccl"); `cluster` as for make_ucx_transport.
Result<std::unique_ptr<Transport>> make_transport(std::string_view name, Bootstrap& bootstrap,
                                                  const ClusterMap* cluster = nullptr);

// Which backends this build has.
bool transport_available(std::string_view name);

}  // namespace locmoe
