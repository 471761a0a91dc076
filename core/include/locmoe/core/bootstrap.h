// Bootstrap: the few collectives ranks need before (and beside) the data transports: exchanging
// descriptors for the cluster map and transport addresses, agreeing on sizes, and the router's
// small all-reduces (per-expert histograms). Implementations: SelfBootstrap (one process, here),
// MPI and TCP rendezvous (comm/). Every call is collective: all ranks call it in the same order
// with the same sizes; an implementation fails with Code::kTimeout naming the missing peer(s)
// when a peer does not arrive within LOCMOE_TIMEOUT_S, rather than hanging. The MPI and TCP
// bootstraps tag every collective with its operation and sequence number and check them on
// arrival: a peer in another collective (or at another step) is Code::kMismatch on every rank,
// naming that rank and both operations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "locmoe/core/status.h"

namespace locmoe {

enum class DataType : int32_t { kInt32, kInt64, kUint64, kFloat32, kFloat64 };
enum class ReduceOp : int32_t { kSum, kMax, kMin };

size_t data_type_size(DataType type) noexcept;

class Bootstrap {
 public:
  virtual ~Bootstrap() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* name() const = 0;

  // recv (size() * bytes bytes) receives every rank's `bytes` bytes, rank r's at r * bytes.
  virtual Status allgather(const void* send, void* recv, size_t bytes) = 0;
  // Element-wise reduction of `count` elements over all ranks; send == recv is allowed.
  virtual Status allreduce(const void* send, void* recv, size_t count, DataType type,
                           ReduceOp op) = 0;
  virtual Status broadcast(void* buf, size_t bytes, int root) = 0;
  virtual Status barrier() = 0;

  // Collective, in place of the collective this rank cannot join because its own input is bad
  // (a caller that skipped the collective would leave its peers waiting until the deadline).
  // Pairs with whatever collective the peers are in: theirs fails at once with Code::kMismatch
  // "rank R rejected its input to the collective this rank called (...): <why's message>", and
  // this call returns `why`. Every rank stays in step: the bootstrap remains usable.
  virtual Status reject(const Status& why) { return why; }
  // Not collective, never waits: tells every peer that this rank gives up (an exception ends its
  // script; locmoe_group_abort). A peer's pending or later collective on this bootstrap fails at
  // once with Code::kPeerFailure naming this rank and `message`. Afterwards the bootstrap is
  // unusable on every rank that learned of it (this one's calls fail at once). Idempotent.
  virtual void abort(std::string_view message) { (void)message; }
};

// The group of one process.
class SelfBootstrap final : public Bootstrap {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* name() const override { return "self"; }
  Status allgather(const void* send, void* recv, size_t bytes) override;
  Status allreduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override;
  Status broadcast(void* buf, size_t bytes, int root) override;
  Status barrier() override { return ok_status(); }
};

// Checks that every rank passed the same `value` for `what` (a size, a count); the error names
// the first rank that differs from rank 0 and both values, so mismatched shapes across ranks fail
// cleanly instead of corrupting a later exchange.
Status check_same_on_all_ranks(Bootstrap& bootstrap, uint64_t value, std::string_view what);

// The deadline of every wait on a peer: `requested` seconds when > 0, LOCMOE_TIMEOUT_S when 0;
// a negative, NaN or infinite value is refused naming it (never a silent fallback).
Result<double> resolve_timeout(double requested);

// Collective: the end of a collective call's local input checks, for callers whose next step is
// not itself a bootstrap collective. `local` is this rank's verdict; a rank with an error joins as
// a rejecting rank (Bootstrap::reject) and gets it back, every other rank gets Code::kMismatch
// naming the first rejecting rank and its reason. One barrier when every rank's input is fine.
Status agree_on_input(Bootstrap& bootstrap, const Status& local);

}  // namespace locmoe
