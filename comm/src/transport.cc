#include <thread>
#include <vector>

#include "locmoe/comm/transport.h"
#include "locmoe/core/check.h"
#include "locmoe/core/config.h"

namespace locmoe {

std::string peer_name(int rank, const ClusterMap* cluster) {
  if (cluster && rank >= 0 && rank < cluster->size())
    return fmt::format("rank {} (host {})", rank, cluster->ranks[rank].desc.host_id);
  return fmt::format("rank {}", rank);
}

Status wait_all(std::span<Request> reqs, Clock::time_point deadline, std::string_view op,
                const ClusterMap* cluster) {
  auto cancel_rest = [&] {
    for (Request& r : reqs)
      if (!r.done && r.transport) r.transport->cancel(r);
  };
  size_t pending = 0;
  for (const Request& r : reqs) pending += r.done ? 0 : 1;
  for (unsigned spins = 0; pending > 0; ++spins) {
    for (Request& r : reqs) {
      if (r.done) continue;
      Status s = r.transport->test(r);
      if (!s.ok()) {
        r.done = true;  // released by test()
        cancel_rest();
        return s.with_context(fmt::format("{} with {}", op, peer_name(r.peer, cluster)));
      }
      if (r.done) --pending;
    }
    if (pending == 0) break;
    if (Clock::now() > deadline) {
      std::string who;
      int shown = 0;
      for (const Request& r : reqs) {
        if (r.done) continue;
        if (shown++ < 8) {
          who += fmt::format("{}{} {} ({} bytes)", who.empty() ? "" : ", ",
                             r.is_send ? "send to" : "receive from", peer_name(r.peer, cluster), r.bytes);
        }
      }
      if (shown > 8) who += fmt::format(", and {} more", shown - 8);
      cancel_rest();
      return error(Code::kTimeout, "{} timed out: no progress from the peer before the deadline; pending: {}",
                   op, who);
    }
    // Spin first (a rank per core completes small exchanges in microseconds), then yield so
    // oversubscribed ranks (8 on 2 cores) let their peers run, then nap.
    if (spins > 1024) std::this_thread::yield();
    if (spins > 4096) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  return ok_status();
}

bool transport_available(std::string_view name) {
  if (name == "mpi") return true;
  if (name == "ucx") return LOCMOE_HAVE_UCX;
  if (name == "nccl") return LOCMOE_HAVE_NCCL;
  return false;
}

Result<std::unique_ptr<Transport>> make_transport(std::string_view name, Bootstrap& bootstrap,
                                                  const ClusterMap* cluster) {
  if (name == "mpi") return make_mpi_transport(bootstrap);
  if (name == "ucx") return make_ucx_transport(bootstrap, cluster);
  if (name == "nccl") return make_nccl_transport(bootstrap);
  return error(Code::kInvalidArgument, "unknown transport '{}': expected mpi, ucx or nccl", name);
}

#if !LOCMOE_HAVE_UCX
std::string ucx_net_device(const RankDescriptor&) { return ""; }
Result<std::unique_ptr<Transport>> make_ucx_transport(Bootstrap&, const ClusterMap*) {
  return error(Code::kUnsupported, "this build has no UCX transport (UCX was not found at configure time)");
}
#endif
#if !LOCMOE_HAVE_NCCL
Result<std::unique_ptr<Transport>> make_nccl_transport(Bootstrap&) {
  return error(Code::kUnsupported, "this build has no NCCL transport (configure with CUDA and NCCL)");
}
#endif

}  // namespace locmoe
