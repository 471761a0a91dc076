// The progress engine (engine.h): runs any Schedule against the deadline.
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "engine.h"
#include "locmoe/core/check.h"

namespace locmoe::comm_detail {
namespace {

char* base(const ProgressEngine::Buffers& b, PlanBuffer which) {
  switch (which) {
    case PlanBuffer::kSend: return const_cast<char*>(b.send);
    case PlanBuffer::kRecv: return b.recv;
    case PlanBuffer::kStaging: return b.staging;
  }
  return nullptr;
}

// CPUs this process may run on (its affinity mask), at least 1.
int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return std::max(1u, std::thread::hardware_concurrency());
  return std::max(1, CPU_COUNT(&set));
}

}  // namespace

std::string ProgressEngine::describe(const Schedule& s, int i) const {
  const PlanStep& st = s.steps[i];
  std::string out = stage_name(st.stage);
  if (st.node >= 0) out += fmt::format(" {} node {}", st.stage == PlanStage::kInterNode ? "with" : "for", st.node);
  if (st.chunk > 0) out += fmt::format(" (chunk {})", st.chunk);
  return out;
}

Status ProgressEngine::start_step(const Schedule& s, int i, const Buffers& b, uint64_t seq, void* stream,
                                  std::string_view op, const Links& links) {
  const PlanStep& st = s.steps[i];
  for (uint32_t c = st.copies_begin; c < st.copies_end; ++c) {
    const PlanCopy& cp = s.copies[c];
    std::memmove(base(b, cp.dst) + cp.dst_offset, base(b, cp.src) + cp.src_offset, cp.bytes);
  }
  pending_[i] = st.transfers_end - st.transfers_begin;
  for (uint32_t t = st.transfers_begin; t < st.transfers_end; ++t) {
    const PlanTransfer& x = s.transfers[t];
    Transport& tr = links.to(x.peer);
    Request& r = reqs_[t];
    char* buf = base(b, x.buf) + x.offset;
    Status ps = x.is_send ? tr.post_send(r, x.peer, with_seq(x.tag, seq), buf, x.bytes, stream)
                          : tr.post_recv(r, x.peer, with_seq(x.tag, seq), buf, x.bytes, stream);
    // A transport refuses a post to a peer it already knows failed: say which peer and host.
    if (!ps.ok())
      return ps.with_context(fmt::format("{}: posting a {} {} ({})", op, x.is_send ? "send to" : "receive from",
                                         peer_name(x.peer, links.cluster), describe(s, i)));
    if (r.done) --pending_[i];  // completed at once (UCX eager sends)
  }
  if (pending_[i] == 0) return finish_step(s, i, b, seq, stream, op, links);
  active_.push_back(i);
  return ok_status();
}

Status ProgressEngine::finish_step(const Schedule& s, int i, const Buffers& b, uint64_t seq, void* stream,
                                   std::string_view op, const Links& links) {
  for (int d = s.steps[i].first_dependent; d >= 0; d = s.steps[d].next_sibling)
    LOCMOE_RETURN_IF_ERROR(start_step(s, d, b, seq, stream, op, links));
  return ok_status();
}

void ProgressEngine::cancel_pending(const Schedule& s) {
  for (size_t t = 0; t < s.transfers.size(); ++t) {
    Request& r = reqs_[t];
    if (!r.done && r.transport) r.transport->cancel(r);
  }
}

Status ProgressEngine::run(const Schedule& s, const Buffers& b, uint64_t seq, void* stream,
                           Clock::time_point until, double timeout_s, std::string_view op, const Links& links,
                           AbortNotices& notices) {
  if (reqs_.size() < s.transfers.size()) reqs_.resize(s.transfers.size());
  if (pending_.size() < s.steps.size()) pending_.resize(s.steps.size());
  std::fill_n(reqs_.begin(), s.transfers.size(), Request{});
  active_.clear();
  auto fail = [&](Status st) {
    cancel_pending(s);
    return st;
  };
  for (int i = 0; i < static_cast<int>(s.steps.size()); ++i) {
    if (s.steps[i].after >= 0) continue;
    Status st = start_step(s, i, b, seq, stream, op, links);
    if (!st.ok()) return fail(st);
  }
  // At the deadline a stuck rank tells every other rank whom it waits for, then keeps listening
  // for a grace period: the peer it waits on may be alive but itself stuck behind the dead one,
  // and following the "waits for" chain through the notices names the real culprit.
  const auto grace = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(std::min(0.25 * timeout_s, 5.0)));
  // More ranks on this node than CPUs to run them: a spinning rank holds a CPU that the peer it
  // waits for needs, so yield from the first idle spin. MPI_Test yields by itself in that case
  // (Open MPI's yield_when_idle), ucp_worker_progress never does: without this the UCX transport
  // was 2-10x slower than MPI_Alltoallv with 4 ranks on 2 cores (measured, docs/PERFORMANCE.md).
  static const int cpus = usable_cpus();
  const unsigned yield_after = links.cluster->my_local_size() > cpus ? 0 : 1024;
  for (unsigned spins = 0; !active_.empty(); ++spins) {
    for (size_t a = 0; a < active_.size();) {
      const int i = active_[a];
      const PlanStep& st = s.steps[i];
      for (uint32_t t = st.transfers_begin; t < st.transfers_end; ++t) {
        Request& r = reqs_[t];
        if (r.done) continue;
        Status ts = r.transport->test(r);
        if (!ts.ok()) {
          r.done = true;  // released by test()
          ts.with_context(fmt::format("{} ({}) with {}", op, describe(s, i), peer_name(r.peer, links.cluster)));
          notices.send(ts, r.peer);
          return fail(ts);
        }
        if (r.done) --pending_[i];
      }
      if (pending_[i] > 0) {
        ++a;
        continue;
      }
      active_[a] = active_.back();  // done: drop it, then start what waited for it
      active_.pop_back();
      Status fs = finish_step(s, i, b, seq, stream, op, links);
      if (!fs.ok()) return fail(fs);
    }
    if (active_.empty()) break;
    if (spins % 16 == 0) {
      Status ns = notices.poll(op);
      if (!ns.ok()) return fail(ns);
    }
    const auto now = Clock::now();
    if (now > until) {
      // The request to blame: the first one pending with a peer that has sent no notice (an
      // alive rank that is stuck sends one at its own deadline, so a silent peer is the dead or
      // frozen one), else the first one pending.
      int stuck = -1, stuck_step = -1;
      for (int i : active_) {
        const PlanStep& st = s.steps[i];
        for (uint32_t t = st.transfers_begin; t < st.transfers_end; ++t) {
          const Request& r = reqs_[t];
          if (r.done) continue;
          if (stuck < 0 || (notices.heard_from(reqs_[stuck].peer) && !notices.heard_from(r.peer))) {
            stuck = static_cast<int>(t);
            stuck_step = i;
          }
        }
      }
      if (stuck < 0) return fail(error(Code::kInternal, "{}: steps pending without a pending request", op));
      const Request& sr = reqs_[stuck];
      const std::string what = describe(s, stuck_step);
      if (!notices.sent())
        notices.send(error(Code::kTimeout, "rank {} waits for {} in {} ({})", links.cluster->my_rank,
                           peer_name(sr.peer, links.cluster), op, what),
                     sr.peer);
      if (now > until + grace) {
        int culprit = sr.peer;
        const std::string chain = notices.chain(links.cluster->my_rank, sr.peer, &culprit);
        return fail(error(Code::kTimeout,
                          "{} on rank {} timed out after LOCMOE_TIMEOUT_S={} s: {} stopped answering or died "
                          "({}; this rank was at: {} {} in {})",
                          op, links.cluster->my_rank, timeout_s, peer_name(culprit, links.cluster), chain,
                          sr.is_send ? "send to" : "receive from", peer_name(sr.peer, links.cluster), what));
      }
    }
    // Spin first (with a core per rank small exchanges finish in microseconds: yielding at 64
    // spins cost 100 us vs 4 us at 1024 for 2 ranks, measured), then yield so oversubscribed
    // ranks let their peers run, then nap.
    if (spins >= yield_after) std::this_thread::yield();
    if (spins > 4096) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  return ok_status();
}

}  // namespace locmoe::comm_detail
