// Plans: the metadata row a rank announces, the check every rank makes of all rows, and the plan
// built from them (counts, displacements, matrix; the schedule comes from schedule_flat.cc /
// schedule_hier.cc through build_schedule).
#include <algorithm>

#include "engine.h"
#include "locmoe/comm/plan.h"
#include "locmoe/core/check.h"

namespace locmoe {

const char* stage_name(PlanStage stage) {
  switch (stage) {
    case PlanStage::kDirect: return "direct";
    case PlanStage::kGather: return "stage 1: gather";
    case PlanStage::kInterNode: return "stage 2: inter-node";
    case PlanStage::kForward: return "stage 3: forward";
    case PlanStage::kMetadata: return "metadata";
  }
  return "?";
}

void Schedule::clear() {
  steps.clear();
  copies.clear();
  transfers.clear();
  staging_bytes = 0;
}

Status plan_row(const ExchangeSpec& spec, int n, std::span<uint64_t> row) {
  LOCMOE_CHECK_ARG(spec.send_counts != nullptr, "an exchange needs send_counts");
  LOCMOE_CHECK_ARG(row.size() == plan_row_len(n), "metadata row of {} entries for {} ranks", row.size(), n);
  LOCMOE_CHECK_ARG(spec.recv_displs == nullptr || spec.recv_counts != nullptr,
                   "recv_displs without recv_counts: give both, or neither (packed in source order)");
  uint64_t needed = 0, off = 0;
  for (int r = 0; r < n; ++r) {
    row[r] = spec.send_counts[r];
    // Packed receive placement: source order, as announced by the peers (known after the round:
    // the needed extent is then the sum, checked by build_plan against the capacity).
    if (spec.recv_counts == nullptr) {
      row[n + r] = UINT64_MAX;
      continue;
    }
    const uint64_t c = spec.recv_counts[r];
    row[n + r] = c;
    const uint64_t displ = spec.recv_displs ? spec.recv_displs[r] : off;
    LOCMOE_CHECK_RANGE(displ <= UINT64_MAX - c, "recv_displs[{}]={} + recv_counts[{}]={} overflows", r, displ, r, c);
    if (c > 0) needed = std::max(needed, displ + c);
    off = displ + c;
  }
  row[2 * n] = spec.recv_counts ? needed : 0;
  row[2 * n + 1] = spec.recv_capacity;
  row[2 * n + 2] = 0;  // not rejected
  return ok_status();
}

Status check_rows(std::span<const uint64_t> m, int n) {
  const size_t len = plan_row_len(n);
  LOCMOE_CHECK_ARG(m.size() == len * n, "{} metadata entries for {} ranks", m.size(), n);
  for (int s = 0; s < n; ++s)
    for (int d = 0; d < n; ++d) {
      const uint64_t sends = m[s * len + d], expects = m[d * len + n + s];
      if (expects == UINT64_MAX) continue;  // d takes what s announces
      LOCMOE_CHECK(sends == expects, Code::kMismatch,
                   "count mismatch: rank {} sends {} bytes to rank {}, which expects {} bytes from rank {} "
                   "(its recv_counts[{}])",
                   s, sends, d, expects, s, s);
    }
  for (int d = 0; d < n; ++d) {
    uint64_t needed = m[d * len + 2 * n];
    const uint64_t capacity = m[d * len + 2 * n + 1];
    if (m[d * len + n] == UINT64_MAX || n == 0) {  // packed from what the peers announce
      needed = 0;
      for (int s = 0; s < n; ++s) {
        const uint64_t c = m[s * len + d];
        LOCMOE_CHECK_RANGE(needed <= UINT64_MAX - c, "rank {} receives more than 2^64 bytes", d);
        needed += c;
      }
    }
    LOCMOE_CHECK_RANGE(needed <= capacity,
                       "rank {}'s receive buffer holds {} bytes but its recv_counts and recv_displs place data up "
                       "to byte {}; nothing was written",
                       d, capacity, needed);
  }
  return ok_status();
}

namespace {
// Extent of a placement: max over r with counts[r] > 0 of displs[r] + counts[r].
uint64_t extent(const std::vector<uint64_t>& counts, const std::vector<uint64_t>& displs) {
  uint64_t e = 0;
  for (size_t r = 0; r < counts.size(); ++r)
    if (counts[r] > 0) e = std::max(e, displs[r] + counts[r]);
  return e;
}
}  // namespace

Status build_plan(const ClusterMap& cluster, A2AAlgo algo, uint64_t chunk_bytes, const ExchangeSpec& spec,
                  std::span<const uint64_t> rows, ExchangePlan& plan) {
  const int n = cluster.size(), me = cluster.my_rank;
  const size_t len = plan_row_len(n);
  LOCMOE_CHECK_ARG(rows.size() == len * n, "{} metadata entries for {} ranks", rows.size(), n);
  LOCMOE_CHECK_ARG(algo == A2AAlgo::kFlat || algo == A2AAlgo::kHierarchical, "plan needs a resolved algorithm");
  LOCMOE_CHECK_ARG(chunk_bytes > 0, "chunk of 0 bytes");
  plan.rank = me;
  plan.ranks = n;
  plan.algo = spec.mem == MemoryKind::kDevice ? A2AAlgo::kFlat : algo;
  plan.mem = spec.mem;
  plan.chunk_bytes = chunk_bytes;
  plan.recv_capacity = spec.recv_capacity;
  plan.matrix.resize(static_cast<size_t>(n) * n);
  for (int s = 0; s < n; ++s)
    for (int d = 0; d < n; ++d) plan.matrix[static_cast<size_t>(s) * n + d] = rows[s * len + d];
  plan.send_counts.resize(n), plan.send_displs.resize(n), plan.recv_counts.resize(n), plan.recv_displs.resize(n);
  uint64_t soff = 0, roff = 0;
  for (int r = 0; r < n; ++r) {
    plan.send_counts[r] = plan.count(me, r);
    plan.send_displs[r] = spec.send_displs ? spec.send_displs[r] : soff;
    LOCMOE_CHECK_RANGE(plan.send_displs[r] <= UINT64_MAX - plan.send_counts[r], "send_displs[{}]={} overflows", r,
                       plan.send_displs[r]);
    soff = plan.send_displs[r] + plan.send_counts[r];
    plan.recv_counts[r] = plan.count(r, me);
    plan.recv_displs[r] = spec.recv_displs ? spec.recv_displs[r] : roff;
    roff = plan.recv_displs[r] + plan.recv_counts[r];
  }
  plan.send_bytes = extent(plan.send_counts, plan.send_displs);
  plan.recv_bytes = extent(plan.recv_counts, plan.recv_displs);
  return build_schedule(cluster, plan);
}

Status transpose_plan(const ClusterMap& cluster, const ExchangePlan& plan, ExchangePlan& out) {
  LOCMOE_CHECK_ARG(plan.ranks == cluster.size() && plan.rank == cluster.my_rank,
                   "plan of rank {} of {} on rank {} of {}", plan.rank, plan.ranks, cluster.my_rank, cluster.size());
  LOCMOE_CHECK_ARG(&plan != &out, "transpose: out must be another plan than the input");
  const int n = plan.ranks;
  out.comm_id = plan.comm_id;
  out.rank = plan.rank;
  out.ranks = n;
  out.algo = plan.algo;
  out.mem = plan.mem;
  out.chunk_bytes = plan.chunk_bytes;
  out.send_counts = plan.recv_counts;
  out.send_displs = plan.recv_displs;
  out.recv_counts = plan.send_counts;
  out.recv_displs = plan.send_displs;
  out.send_bytes = plan.recv_bytes;
  out.recv_bytes = plan.send_bytes;
  out.recv_capacity = ExchangeSpec::kAnyCapacity;
  out.matrix.resize(plan.matrix.size());
  for (int s = 0; s < n; ++s)
    for (int d = 0; d < n; ++d) out.matrix[static_cast<size_t>(d) * n + s] = plan.count(s, d);
  return build_schedule(cluster, out);
}

Status scale_plan(const ClusterMap& cluster, const ExchangePlan& plan, uint64_t factor, ExchangePlan& out) {
  LOCMOE_CHECK_ARG(plan.ranks == cluster.size() && plan.rank == cluster.my_rank,
                   "plan of rank {} of {} on rank {} of {}", plan.rank, plan.ranks, cluster.my_rank, cluster.size());
  LOCMOE_CHECK_ARG(factor > 0, "scale: factor must be > 0");
  const uint64_t limit = UINT64_MAX / factor;
  auto scaled = [&](const std::vector<uint64_t>& in, std::vector<uint64_t>& o, const char* what) -> Status {
    o.resize(in.size());
    for (size_t i = 0; i < in.size(); ++i) {
      LOCMOE_CHECK_RANGE(in[i] <= limit, "scale: {}[{}]={} x {} overflows", what, i, in[i], factor);
      o[i] = in[i] * factor;
    }
    return ok_status();
  };
  ExchangePlan* dst = &out;
  ExchangePlan tmp;
  if (&plan == &out) dst = &tmp;  // in place: compute aside, then move
  LOCMOE_RETURN_IF_ERROR(scaled(plan.send_counts, dst->send_counts, "send_counts"));
  LOCMOE_RETURN_IF_ERROR(scaled(plan.send_displs, dst->send_displs, "send_displs"));
  LOCMOE_RETURN_IF_ERROR(scaled(plan.recv_counts, dst->recv_counts, "recv_counts"));
  LOCMOE_RETURN_IF_ERROR(scaled(plan.recv_displs, dst->recv_displs, "recv_displs"));
  LOCMOE_RETURN_IF_ERROR(scaled(plan.matrix, dst->matrix, "matrix"));
  LOCMOE_CHECK_RANGE(plan.send_bytes <= limit && plan.recv_bytes <= limit, "scale: buffer sizes x {} overflow", factor);
  dst->comm_id = plan.comm_id;
  dst->rank = plan.rank;
  dst->ranks = plan.ranks;
  dst->algo = plan.algo;
  dst->mem = plan.mem;
  dst->chunk_bytes = plan.chunk_bytes;
  dst->send_bytes = plan.send_bytes * factor;
  dst->recv_bytes = plan.recv_bytes * factor;
  dst->recv_capacity = plan.recv_capacity == ExchangeSpec::kAnyCapacity || plan.recv_capacity > limit
                           ? ExchangeSpec::kAnyCapacity
                           : plan.recv_capacity * factor;
  LOCMOE_RETURN_IF_ERROR(build_schedule(cluster, *dst));
  if (dst != &out) out = std::move(tmp);
  return ok_status();
}

Status build_schedule(const ClusterMap& cluster, ExchangePlan& plan) {
  LOCMOE_CHECK_ARG(plan.ranks == cluster.size() && plan.rank == cluster.my_rank && plan.chunk_bytes > 0,
                   "plan of rank {} of {} (chunk {}) on rank {} of {}", plan.rank, plan.ranks, plan.chunk_bytes,
                   cluster.my_rank, cluster.size());
  plan.schedule.clear();
  comm_detail::ScheduleWriter w(plan.schedule, plan.chunk_bytes);
  // Device buffers run flat: the NCCL transport routes inside and across nodes itself.
  Status s = plan.algo == A2AAlgo::kHierarchical && plan.mem == MemoryKind::kHost
                 ? comm_detail::build_hier_schedule(cluster, plan, w)
                 : comm_detail::build_flat_schedule(cluster, plan, w);
  if (!s.ok()) {
    plan.schedule.clear();
    return s;
  }
  plan.stats = comm_detail::schedule_stats(plan.schedule, cluster, false);
  return ok_status();
}

}  // namespace locmoe
