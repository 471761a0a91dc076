// Bootstrap: the few collectives ranks need before (and beside) the data transports: exchanging
// descriptors for the cluster map and transport addresses, agreeing on sizes, and the router's
// small all-reduces (per-expert histograms). Implementations: SelfBootstrap (one process, here),
// MPI and TCP rendezvous (comm/). Every call is collective: all ranks call it in the same order
// with the same sizes; an implementation fails with Code::kTimeout naming the missing peer(s)
// when a peer does not arrive within LOCMOE_TIMEOUT_S, rather than hanging.
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

}  // namespace locmoe
