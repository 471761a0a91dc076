// Started by torchrun (`torchrun --no-python`, tests/torch/CMakeLists.txt): a C++ program makes its
// TCP groups from the environment alone, the rendezvous going through torchrun's store (its
// MASTER_PORT is the store's, not free). Two groups in a row (each its own key in the store), each
// checked by an allgather and an allreduce against values computed here. With the argument
// "two-hosts", ranks [0, size/2) and [size/2, size) emulate two hosts and every collective takes
// the leaders' path (LOCMOE_BOOTSTRAP_TREE_BYTES=1). Exit 0 when every check holds.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/params.h"

namespace {

int fail(int rank, const std::string& what) {
  std::fprintf(stderr, "rank %d: %s\n", rank, what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace locmoe;
  const char* r = std::getenv("RANK");
  const char* n = std::getenv("WORLD_SIZE");
  if (!r || !n) return fail(-1, "not started by torchrun (RANK, WORLD_SIZE unset)");
  const int rank = std::atoi(r), size = std::atoi(n);
  const bool two_hosts = argc > 1 && std::strcmp(argv[1], "two-hosts") == 0;
  if (two_hosts) {
    if (!params::set("LOCMOE_HOSTID", rank < size / 2 ? "probe-a" : "probe-b").ok() ||
        !params::set("LOCMOE_BOOTSTRAP_TREE_BYTES", "1").ok())
      return fail(rank, "params::set failed");
  }
  for (int group = 0; group < 2; ++group) {
    auto b = make_bootstrap_from_env();
    if (!b.ok()) return fail(rank, b.status().to_string());
    Bootstrap& boot = **b;
    const std::string want = two_hosts ? "tcp-tree" : "tcp";
    if (boot.rank() != rank || boot.size() != size || boot.name() != want)
      return fail(rank, "group " + std::to_string(group) + " is " + boot.name() + ", rank " +
                            std::to_string(boot.rank()) + " of " + std::to_string(boot.size()));
    std::vector<int32_t> all(static_cast<size_t>(size));
    const int32_t mine = 1000 * group + rank;
    if (Status s = boot.allgather(&mine, all.data(), sizeof mine); !s.ok()) return fail(rank, s.to_string());
    for (int q = 0; q < size; ++q)
      if (all[static_cast<size_t>(q)] != 1000 * group + q) return fail(rank, "allgather: wrong value from rank " + std::to_string(q));
    std::vector<int64_t> v(1000, rank + 1);
    if (Status s = boot.allreduce(v.data(), v.data(), v.size(), DataType::kInt64, ReduceOp::kSum); !s.ok())
      return fail(rank, s.to_string());
    for (const int64_t x : v)
      if (x != int64_t{size} * (size + 1) / 2) return fail(rank, "allreduce: wrong sum");
  }
  std::printf("rank %d of %d: two groups through torchrun's store, every check holds\n", rank, size);
  return 0;
}
