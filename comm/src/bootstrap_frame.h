// What every bootstrap collective says about itself before any payload moves (MPI and TCP
// bootstraps): the operation, its parameters and the collective's sequence number on this rank.
// Every rank checks every other rank's header on arrival, so a peer in a different collective, or
// in the same one at another step or with another size, is an error on every rank naming that rank
// and both operations, never a payload paired with the wrong call (MPI_ERR_TRUNCATE, silently
// mixed data). A rank whose own input is bad joins with a kReject header (Bootstrap::reject): its
// peers learn its reason at once and the bootstrap stays in step and usable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"

namespace locmoe::bootstrap_detail {

enum Op : uint32_t { kAllgather = 1, kAllreduce, kBroadcast, kBarrier, kReject };

struct Header {
  uint32_t op = 0;
  uint32_t arg = 0;   // allreduce: type << 8 | reduce op; broadcast: root
  uint64_t seq = 0;   // 1 for a bootstrap's first collective
  uint64_t bytes = 0; // allgather / broadcast: bytes; allreduce: element count
  bool operator==(const Header&) const = default;
};
static_assert(sizeof(Header) == 24);

// Longest reason a rejecting or aborting rank sends (longer messages are cut).
constexpr size_t kReasonBytes = 480;

inline const char* type_name(uint32_t t) {
  switch (static_cast<DataType>(t)) {
    case DataType::kInt32: return "int32";
    case DataType::kInt64: return "int64";
    case DataType::kUint64: return "uint64";
    case DataType::kFloat32: return "float32";
    case DataType::kFloat64: return "float64";
  }
  return "?";
}
inline const char* reduce_name(uint32_t op) {
  switch (static_cast<ReduceOp>(op)) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

inline std::string describe(const Header& h) {
  std::string what;
  switch (h.op) {
    case kAllgather: what = fmt::format("allgather of {} bytes", h.bytes); break;
    case kAllreduce:
      what = fmt::format("allreduce ({}) of {} {}", reduce_name(h.arg & 0xff), h.bytes, type_name(h.arg >> 8));
      break;
    case kBroadcast: what = fmt::format("broadcast of {} bytes from rank {}", h.bytes, h.arg); break;
    case kBarrier: what = "barrier"; break;
    case kReject: what = "a rejection of its input"; break;
    default: what = fmt::format("unknown operation {}", h.op); break;
  }
  return fmt::format("{} (its bootstrap collective #{})", what, h.seq);
}

// First rank whose header is a rejection, or -1.
inline int first_reject(const std::vector<Header>& all) {
  for (size_t r = 0; r < all.size(); ++r)
    if (all[r].op == kReject) return static_cast<int>(r);
  return -1;
}

// The verdict on every rank's header when none rejects: the same on every rank (the first rank
// that differs from rank 0, both named with their operation), plus what this rank called.
inline Status check_headers(const std::vector<Header>& all, int me, const char* bootstrap) {
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    return error(Code::kMismatch,
                 "{} bootstrap: ranks are in different collectives: rank {} called {}, rank 0 called {} (this is "
                 "rank {}); every rank must call the same collectives in the same order",
                 bootstrap, r, describe(all[r]), describe(all[0]), me);
  }
  return ok_status();
}

// What a peer of a rejecting rank returns.
inline Status rejected(int rank, const Header& mine, std::string_view reason) {
  return error(Code::kMismatch, "rank {} rejected its input to the collective this rank called ({}): {}", rank,
               describe(mine), reason);
}

}  // namespace locmoe::bootstrap_detail
