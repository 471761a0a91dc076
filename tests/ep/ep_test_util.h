// Shared helpers of the EP tests: an oracle communicator over MPI_Alltoallv, the group setup, and
// random routing plans. The oracle lets the Dispatcher's tests fail only for the Dispatcher's own
// faults; the comm layer's Communicator is exercised by its own tests and by moe_layer.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/check.h"
#include "locmoe/router/finalize.h"
#include "locmoe/topology/cluster.h"

namespace locmoe::test {

class MpiOracleComm final : public Communicator {
 public:
  MpiOracleComm(MPI_Comm comm, ClusterMap cluster) : comm_(comm), cluster_(std::move(cluster)) {}
  int rank() const override { return cluster_.my_rank; }
  int size() const override { return cluster_.size(); }
  const ClusterMap& cluster() const override { return cluster_; }
  A2AAlgo algo() const override { return A2AAlgo::kFlat; }
  std::string transport_name() const override { return "mpi-oracle"; }
  Status exchange_counts(const uint64_t* send_counts, uint64_t* recv_counts) override {
    if (MPI_Alltoall(send_counts, 1, MPI_UINT64_T, recv_counts, 1, MPI_UINT64_T, comm_) != MPI_SUCCESS)
      return error(Code::kSystemError, "MPI_Alltoall failed");
    return ok_status();
  }
  Status alltoallv(const void* send, const uint64_t* sc, const uint64_t* sd, void* recv, const uint64_t* rc,
                   const uint64_t* rd, uint64_t cap, MemoryKind mem, void*) override {
    if (mem != MemoryKind::kHost) return error(Code::kUnsupported, "oracle communicator is host only");
    const int R = size();
    std::vector<int> isc(R), isd(R), irc(R), ird(R);
    stats_ = {};
    for (int r = 0; r < R; ++r) {
      if (sc[r] > INT_MAX || sd[r] > INT_MAX || rc[r] > INT_MAX || rd[r] > INT_MAX || rd[r] + rc[r] > cap)
        return error(Code::kOutOfRange, "oracle alltoallv: count/displacement too large");
      isc[r] = static_cast<int>(sc[r]); isd[r] = static_cast<int>(sd[r]);
      irc[r] = static_cast<int>(rc[r]); ird[r] = static_cast<int>(rd[r]);
      if (r == rank()) continue;
      stats_.bytes_sent += sc[r];
      stats_.bytes_received += rc[r];
      stats_.msgs_sent += sc[r] > 0;
      if (cluster_.node_of(r) != cluster_.my_node()) {
        stats_.internode_bytes_sent += sc[r];
        stats_.internode_msgs_sent += sc[r] > 0;
      } else {
        stats_.intranode_bytes_sent += sc[r];
      }
    }
    if (MPI_Alltoallv(send, isc.data(), isd.data(), MPI_BYTE, recv, irc.data(), ird.data(), MPI_BYTE, comm_) !=
        MPI_SUCCESS)
      return error(Code::kSystemError, "MPI_Alltoallv failed");
    return ok_status();
  }
  // Plans as the comm layer builds them (build_plan over MPI_Allgather'ed rows, flat); execute
  // is MPI_Alltoallv of the plan's counts.
  Status prepare(const ExchangeSpec& spec, ExchangePlan& plan) override {
    const int R = size();
    std::vector<uint64_t> row(plan_row_len(R)), rows(row.size() * R);
    LOCMOE_RETURN_IF_ERROR(plan_row(spec, R, row));
    if (MPI_Allgather(row.data(), static_cast<int>(row.size()), MPI_UINT64_T, rows.data(),
                      static_cast<int>(row.size()), MPI_UINT64_T, comm_) != MPI_SUCCESS)
      return error(Code::kSystemError, "MPI_Allgather failed");
    LOCMOE_RETURN_IF_ERROR(check_rows(rows, R));
    LOCMOE_RETURN_IF_ERROR(build_plan(cluster_, A2AAlgo::kFlat, 1u << 30, spec, rows, plan));
    plan.comm_id = kId;
    return ok_status();
  }
  Status execute(const ExchangePlan& plan, const void* send, void* recv, void*) override {
    if (plan.comm_id != kId) return error(Code::kInvalidArgument, "oracle execute: plan of another communicator");
    if (plan.mem != MemoryKind::kHost) return error(Code::kUnsupported, "oracle communicator is host only");
    return alltoallv(send, plan.send_counts.data(), plan.send_displs.data(), recv, plan.recv_counts.data(),
                     plan.recv_displs.data(), plan.recv_bytes, MemoryKind::kHost, nullptr);
  }
  Status transpose(const ExchangePlan& plan, ExchangePlan& out) const override {
    return transpose_plan(cluster_, plan, out);
  }
  Status scale(const ExchangePlan& plan, uint64_t factor, ExchangePlan& out) const override {
    return scale_plan(cluster_, plan, factor, out);
  }
  const ExchangeStats& last_stats() const override { return stats_; }

 private:
  static constexpr uint64_t kId = 0x6f7261636c65;
  MPI_Comm comm_;
  ClusterMap cluster_;
  ExchangeStats stats_;
};

// Bootstrap + cluster map (LOCMOE_HOSTID emulates nodes) + a communicator over MPI_COMM_WORLD:
// the comm layer's Communicator when the environment has EP_TEST_COMM=communicator, else the
// MPI_Alltoallv oracle.
struct Group {
  std::unique_ptr<Bootstrap> bootstrap;
  std::unique_ptr<ClusterMap> cluster;  // referenced by the comm layer's Communicator: stays put
  std::unique_ptr<Communicator> comm;
  int rank = 0, size = 1;
};

inline Group make_group() {
  Group g;
  auto b = make_mpi_bootstrap(MPI_COMM_WORLD);
  if (!b.ok()) return g;
  g.bootstrap = std::move(b).value();
  RankDescriptor mine;
  mine.host_id = local_host_id().ok() ? local_host_id().value() : "host";
  auto cm = exchange_cluster_map(*g.bootstrap, mine);
  if (!cm.ok()) return g;
  g.rank = cm->my_rank;
  g.size = cm->size();
  const char* which = std::getenv("EP_TEST_COMM");
  if (which != nullptr && std::string(which) == "communicator") {
    g.cluster = std::make_unique<ClusterMap>(std::move(cm).value());
    auto c = Communicator::create(*g.bootstrap, *g.cluster);
    if (c.ok()) g.comm = std::move(c).value();
    return g;
  }
  g.comm = std::make_unique<MpiOracleComm>(MPI_COMM_WORLD, std::move(cm).value());
  return g;
}

// A plan of T tokens for `rank`: k distinct experts per token drawn from E = R*L, weights in
// (0.1, 1.1); each slot after the first is dropped with probability p_drop (expert -1,
// slot_dropped = 1). Accepted slots come first.
inline RoutingPlan random_plan(int rank, const ClusterMap& cm, int L, int T, int k, double p_drop,
                               uint32_t seed) {
  RoutingPlan p;
  const int R = cm.size();
  p.num_tokens = T; p.k = k; p.num_experts = R * L; p.num_ranks = R; p.num_nodes = cm.num_nodes();
  p.experts_per_rank = L; p.rank = rank;
  for (int r = 0; r < R; ++r) p.node_of_rank.push_back(cm.node_of(r));
  p.expert.assign(static_cast<size_t>(T) * k, -1);
  p.weight.assign(static_cast<size_t>(T) * k, 0.0f);
  p.slot_dropped.assign(static_cast<size_t>(T) * k, 0);
  std::mt19937 rng(seed * 7919u + static_cast<uint32_t>(rank));
  std::uniform_real_distribution<float> uw(0.1f, 1.1f), u01(0.0f, 1.0f);
  for (int t = 0; t < T; ++t) {
    std::vector<int> perm(R * L);
    for (int e = 0; e < R * L; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    int n = 0;
    const int usable = std::min(k, R * L);  // slots past E stay unused (not dropped)
    for (int j = 0; j < usable; ++j) {
      if (j > 0 && u01(rng) < p_drop) continue;
      p.expert[static_cast<size_t>(t) * k + n] = perm[j];
      p.weight[static_cast<size_t>(t) * k + n] = uw(rng);
      ++n;
    }
    for (int j = n; j < usable; ++j) p.slot_dropped[static_cast<size_t>(t) * k + j] = 1;
  }
  return p;
}

}  // namespace locmoe::test
