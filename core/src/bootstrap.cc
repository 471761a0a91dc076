#include "locmoe/core/bootstrap.h"

#include <cstring>
#include <vector>

#include "locmoe/core/check.h"

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

}  // namespace locmoe
