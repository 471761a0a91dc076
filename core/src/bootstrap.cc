#include "locmoe/core/bootstrap.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "locmoe/core/check.h"
#include "locmoe/core/params.h"

namespace locmoe {

size_t data_type_size(DataType type) noexcept {
  switch (type) {
    case DataType::kInt32:
    case DataType::kFloat32: return 4;
    case DataType::kInt64:
    case DataType::kUint64:
    case DataType::kFloat64: return 8;
  }
  return 0;
}

Status SelfBootstrap::allgather(const void* send, void* recv, size_t bytes) {
  if (bytes && send != recv) std::memcpy(recv, send, bytes);
  return ok_status();
}

Status SelfBootstrap::allreduce(const void* send, void* recv, size_t count, DataType type, ReduceOp) {
  if (count && send != recv) std::memcpy(recv, send, count * data_type_size(type));
  return ok_status();
}

Status SelfBootstrap::broadcast(void*, size_t, int root) {
  LOCMOE_CHECK_RANGE(root == 0, "broadcast root {} out of range [0, 1)", root);
  return ok_status();
}

Status check_same_on_all_ranks(Bootstrap& bootstrap, uint64_t value, std::string_view what) {
  std::vector<uint64_t> all(static_cast<size_t>(bootstrap.size()));
  LOCMOE_RETURN_IF_ERROR(bootstrap.allgather(&value, all.data(), sizeof(value)));
  for (size_t r = 1; r < all.size(); ++r) {
    LOCMOE_CHECK(all[r] == all[0], Code::kMismatch,
                 "{} differs across ranks: rank 0 has {}, rank {} has {}", what, all[0], r, all[r]);
  }
  return ok_status();
}

Result<double> resolve_timeout(double requested) {
  LOCMOE_CHECK_ARG(std::isfinite(requested) && requested >= 0,
                   "timeout_s = {} must be a positive number of seconds (0 = LOCMOE_TIMEOUT_S)", requested);
  if (requested > 0) return requested;
  LOCMOE_ASSIGN_OR_RETURN(double t, params::get_float(params::Id::timeout_s));
  LOCMOE_CHECK_ARG(std::isfinite(t) && t > 0, "LOCMOE_TIMEOUT_S={} must be a positive number of seconds", t);
  return t;
}

Status agree_on_input(Bootstrap& bootstrap, const Status& local) {
  if (!local.ok()) return bootstrap.reject(local);
  return bootstrap.barrier();
}

}  // namespace locmoe
