// Communicator: flat and hierarchical all-to-all-v over one or two Transports.
//
// Every exchange has two phases.
//  1. Metadata: each rank's row [send_counts (n) | recv_counts (n) | bytes its placement needs |
//     recv_capacity] reaches every rank, along the algorithm's own paths (flat: directly; hier:
//     inside the node, then one message per remote node between rail peers, then inside the node
//     again). Every rank then checks the whole matrix the same way, so a count disagreement or a
//     too-small buffer makes every rank return the same error before any data moves.
//  2. Data, sized by the matrix, so every receive is posted with exactly the bytes that will come.
//
// Hierarchical data path, for node m (L_m ranks) and each remote node N (L_N ranks). Rail l of
// the node pair is local rank l on both nodes, l < min(L_m, L_N); it carries the data for the
// ranks of N whose local rank j has j mod L_m == l (with equal nodes: exactly local rank l).
//  stage 1  inside m, every rank sends its blocks for rail l's destinations to local rank l
//           (the gather onto the rank that owns that rail);
//  stage 2  local rank l of m sends the gathered block [src in m][dst in group] to local rank l of
//           N: one inter-node message per remote node per rank, never more;
//  stage 3  local rank l of N forwards to each other rank of its group its part [src in m]
//           (only with uneven nodes: with equal nodes the rail rank is the destination).
// Data between ranks of one node goes directly. Stages overlap: the gathered block for N is cut
// into LOCMOE_CHUNK_BYTES chunks at fixed offsets, each source sends its part cut at the same
// offsets, and chunk k leaves for N (stage 2) as soon as its pieces are in, while later chunks are
// still being gathered; stage 3 from N starts as soon as N's block arrived, while other nodes'
// stages are still in flight. With equal nodes the rail rank is the destination and N's block
// lands in place in its receive buffer when the sources' blocks lie back to back there.
// Uneven nodes: ranks j >= L_m of N are reached through rail j mod L_m and stage 3, and ranks of
// m with local rank >= L_N send no inter-node message to N (their data rides the gather).
// Metadata (small) uses a single rail per node pair, local rank (m + N) mod min(L_m, L_N).
//
// Tags (< 2^30): sequence (6 bits) | phase (3) | key (9: node index) | chunk (12).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "locmoe/comm/communicator.h"
#include "locmoe/comm/transport.h"
#include "locmoe/core/check.h"
#include "locmoe/core/log.h"
#include "locmoe/core/params.h"

namespace locmoe {
namespace {

enum Phase : uint64_t { kMetaA = 0, kMetaB = 1, kMetaC = 2, kDirect = 3, kStage1 = 4, kStage2 = 5, kStage3 = 6, kAbort = 7 };
constexpr uint64_t kMaxChunks = 1u << 12;
constexpr int kMaxKey = 1 << 9;

// Grow-only uninitialized byte buffer (a std::vector<char> would zero-fill on every growth).
class Buffer {
 public:
  void resize(size_t n) {
    if (n > cap_) {
      p_.reset(new char[n]);
      cap_ = n;
    }
    n_ = n;
  }
  char* data() { return p_.get(); }
  size_t size() const { return n_; }

 private:
  std::unique_ptr<char[]> p_;
  size_t cap_ = 0, n_ = 0;
};

// A set of requests and what to do when all are done (may post more groups).
struct Group {
  std::string what;
  std::vector<Request> reqs;
  std::function<Status()> then;
  bool finished = false;
};

class CommunicatorImpl final : public Communicator {
 public:
  CommunicatorImpl(Bootstrap& boot, const ClusterMap& cluster, std::unique_ptr<Transport> inter,
                   std::unique_ptr<Transport> intra, A2AAlgo algo, uint64_t chunk, double timeout_s)
      : boot_(boot), cluster_(cluster), inter_(std::move(inter)), intra_(std::move(intra)), algo_(algo),
        chunk_(chunk), timeout_s_(timeout_s), n_(cluster.size()), me_(cluster.my_rank) {}
  ~CommunicatorImpl() override {
    if (!failed_) {
      // Peers may still be flushing their last messages to us: close together.
      Status s = boot_.barrier();
      if (!s.ok()) failed_ = true;
    }
    for (Request& r : abort_recv_)
      if (!r.done && r.transport) r.transport->cancel(r);
    for (Transport* t : {intra_.get(), inter_.get()}) {
      if (!t) continue;
      if (failed_) t->mark_failed();
      (void)t->finalize();
    }
  }

  int rank() const override { return me_; }
  int size() const override { return n_; }
  const ClusterMap& cluster() const override { return cluster_; }
  A2AAlgo algo() const override { return algo_; }
  std::string transport_name() const override {
    if (intra_) return fmt::format("{}+{}", intra_->name(), inter_->name());
    return inter_->name();
  }
  const ExchangeStats& last_stats() const override { return stats_; }

  Status exchange_counts(const uint64_t* send_counts, uint64_t* recv_counts) override {
    LOCMOE_CHECK_ARG(send_counts && recv_counts, "exchange_counts needs send_counts and recv_counts arrays");
    std::vector<uint64_t> row(row_len(), 0);
    std::copy(send_counts, send_counts + n_, row.begin());
    stats_ = {};
    ++seq_;
    LOCMOE_CHECK(!failed_, Code::kPeerFailure, "communicator unusable after an earlier peer failure or timeout");
    auto matrix = exchange_rows(row, "exchange_counts");
    if (!matrix.ok()) return failed(matrix.status());
    for (int r = 0; r < n_; ++r) recv_counts[r] = (*matrix)[r * row_len() + me_];
    return ok_status();
  }

  Status alltoallv(const void* send, const uint64_t* send_counts, const uint64_t* send_displs, void* recv,
                   const uint64_t* recv_counts, const uint64_t* recv_displs, uint64_t recv_capacity,
                   MemoryKind mem, void* stream) override {
    LOCMOE_CHECK_ARG(send_counts && send_displs && recv_counts && recv_displs,
                     "alltoallv needs all four count/displacement arrays");
    LOCMOE_CHECK(inter_->supports(mem) && (!intra_ || intra_->supports(mem)), Code::kUnsupported,
                 "transport {} cannot move {} memory (device buffers need the nccl transport)", transport_name(),
                 mem == MemoryKind::kHost ? "host" : "device");
    stats_ = {};
    ++seq_;
    // The row this rank contributes; its placement check is local, its verdict global.
    std::vector<uint64_t> row(row_len(), 0);
    uint64_t needed = 0;
    for (int r = 0; r < n_; ++r) {
      row[r] = send_counts[r];
      row[n_ + r] = recv_counts[r];
      if (recv_counts[r] > 0) {
        LOCMOE_CHECK_RANGE(recv_displs[r] <= UINT64_MAX - recv_counts[r], "recv_displs[{}]={} overflows", r,
                           recv_displs[r]);
        needed = std::max(needed, recv_displs[r] + recv_counts[r]);
      }
    }
    row[2 * n_] = needed;
    row[2 * n_ + 1] = recv_capacity;
    LOCMOE_CHECK(!failed_, Code::kPeerFailure, "communicator unusable after an earlier peer failure or timeout");
    auto meta = exchange_rows(row, "alltoallv count metadata");
    if (!meta.ok()) return failed(meta.status());
    const std::vector<uint64_t>& m = *meta;
    LOCMOE_RETURN_IF_ERROR(check_matrix(m));
    if (n_ > 0) LOCMOE_CHECK_ARG(recv || needed == 0, "recv is null but {} bytes are to be received", needed);

    const auto* sbuf = static_cast<const char*>(send);
    auto* rbuf = static_cast<char*>(recv);
    Status s = (algo_ == A2AAlgo::kHierarchical && mem == MemoryKind::kHost)
                   ? hierarchical(m, sbuf, send_displs, rbuf, recv_displs)
                   : flat(m, sbuf, send_displs, rbuf, recv_displs, mem, stream);
    return failed(s);
  }

 private:
  size_t row_len() const { return 2 * static_cast<size_t>(n_) + 2; }
  Transport& to(int peer) {
    return (intra_ && cluster_.node_of(peer) == cluster_.my_node()) ? *intra_ : *inter_;
  }
  bool internode(int peer) const { return cluster_.node_of(peer) != cluster_.my_node(); }
  Clock::time_point deadline() const {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  }
  int rail_local(int m, int nn) const {
    return (m + nn) % std::min(cluster_.local_size(m), cluster_.local_size(nn));
  }
  int rail(int m, int nn) const { return cluster_.nodes[m][rail_local(m, nn)]; }
  uint64_t tag(Phase phase, int key, uint64_t chunk) const {
    return ((seq_ & 63u) << 24) | (static_cast<uint64_t>(phase) << 21) | (static_cast<uint64_t>(key) << 12) | chunk;
  }

  // Posts one logical message as ceil(bytes / chunk) transport operations.
  Status post(Group& g, bool is_send, int peer, Phase phase, int key, char* buf, uint64_t bytes,
              void* stream = nullptr) {
    if (bytes == 0) return ok_status();
    const uint64_t chunks = (bytes + chunk_ - 1) / chunk_;
    LOCMOE_CHECK_RANGE(chunks <= kMaxChunks, "message of {} bytes needs {} chunks of LOCMOE_CHUNK_BYTES={}; at most {}",
                       bytes, chunks, chunk_, kMaxChunks);
    LOCMOE_CHECK(key < kMaxKey, Code::kUnsupported, "more than {} nodes", kMaxKey);
    for (uint64_t c = 0; c < chunks; ++c) {
      const uint64_t off = c * chunk_;
      LOCMOE_RETURN_IF_ERROR(post_piece(g, is_send, peer, phase, key, c, buf + off, std::min(chunk_, bytes - off), stream));
    }
    return ok_status();
  }
  // One transport operation: chunk `c` of a logical message.
  Status post_piece(Group& g, bool is_send, int peer, Phase phase, int key, uint64_t c, char* buf, uint64_t len,
                    void* stream = nullptr) {
    Transport& t = to(peer);
    Request r;
    Status s = is_send ? t.post_send(r, peer, tag(phase, key, c), buf, len, stream)
                       : t.post_recv(r, peer, tag(phase, key, c), buf, len, stream);
    // A transport refuses a post to a peer it already knows failed: say which peer and host.
    if (!s.ok())
      return s.with_context(fmt::format("posting a {} {} ({})", is_send ? "send to" : "receive from",
                                        peer_name(peer, &cluster_), g.what));
    g.reqs.push_back(r);
    return ok_status();
  }
  // Accounting for one data message sent (as `chunks` transport sends; 0: cut at chunk_ from its
  // start, as post() does).
  void count_send(int peer, uint64_t bytes, bool meta = false, uint64_t chunks = 0) {
    if (bytes == 0 || peer == me_) return;
    if (meta) {
      ++stats_.meta_msgs_sent;
      if (internode(peer)) ++stats_.meta_internode_msgs_sent;
      return;
    }
    ++stats_.msgs_sent;
    stats_.chunks_sent += chunks ? chunks : (bytes + chunk_ - 1) / chunk_;
    stats_.bytes_sent += bytes;
    if (internode(peer)) {
      ++stats_.internode_msgs_sent;
      stats_.internode_bytes_sent += bytes;
    } else {
      stats_.intranode_bytes_sent += bytes;
    }
  }

  // Runs groups until all finished or the deadline passes; a group's `then` may add groups.
  Status run(std::deque<Group>& groups, Clock::time_point until, std::string_view op) {
    auto fail = [&](Status s) {
      for (Group& g : groups)
        for (Request& r : g.reqs)
          if (!r.done && r.transport) r.transport->cancel(r);
      return s;
    };
    // At the deadline a stuck rank tells every other rank whom it waits for, then keeps listening
    // for a grace period: the peer it waits on may be alive but itself stuck behind the dead one,
    // and following the "waits for" chain through the notices names the real culprit.
    const auto grace = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(std::min(0.25 * timeout_s_, 5.0)));
    // The request to blame at the deadline: the first one pending with a peer that has sent no
    // notice (an alive rank that is stuck sends one at its own deadline, so a silent peer is the
    // dead or frozen one; blaming the first pending request instead named a live peer that merely
    // waited on the same dead rank), else the first one pending.
    auto stuck_request = [&]() -> const Request* {
      const Request* first = nullptr;
      for (const Group& g : groups)
        for (const Request& r : g.reqs) {
          if (r.done) continue;
          if (notice_from_.empty() || !notice_from_[r.peer]) return &r;
          if (!first) first = &r;
        }
      return first;
    };
    auto group_of = [&](const Request* req) -> std::string {
      for (const Group& g : groups)
        for (const Request& r : g.reqs)
          if (&r == req) return g.what;
      return "";
    };
    for (unsigned spins = 0;; ++spins) {
      bool all_done = true;
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        if (groups[gi].finished) continue;
        bool done = true;
        for (Request& r : groups[gi].reqs) {
          if (r.done) continue;
          Status s = r.transport->test(r);
          if (!s.ok()) {
            r.done = true;
            s.with_context(fmt::format("{} ({}) with {}", op, groups[gi].what, peer_name(r.peer, &cluster_)));
            send_abort_notices(s, r.peer);
            return fail(s);
          }
          done = done && r.done;
        }
        if (!done) {
          all_done = false;
          continue;
        }
        groups[gi].finished = true;
        if (groups[gi].then) {
          // `then` may push to `groups` (a deque keeps references valid); take it out first.
          auto then = std::move(groups[gi].then);
          Status s = then();
          if (!s.ok()) return fail(s.with_context(fmt::format("{} ({})", op, groups[gi].what)));
          all_done = false;  // new groups may exist
        }
      }
      if (all_done) return ok_status();
      if (spins % 16 == 0) {
        Status notice = poll_abort_notices(op);
        if (!notice.ok()) return fail(notice);
      }
      const auto now = Clock::now();
      if (now > until) {
        const Request* stuck = stuck_request();
        const std::string what = group_of(stuck);
        if (!notice_sent_) {
          send_abort_notices(error(Code::kTimeout, "rank {} waits for {} in {} ({})", me_,
                                   peer_name(stuck->peer, &cluster_), op, what),
                             stuck->peer);
        }
        if (now > until + grace) {
          // Follow "waits for" through the notices to a rank that sent none.
          std::string chain = peer_name(me_, &cluster_);
          int culprit = stuck->peer;
          std::vector<bool> seen(n_, false);
          seen[me_] = true;
          while (!seen[culprit] && !notice_from_.empty() && notice_from_[culprit] && waits_on_[culprit] >= 0) {
            seen[culprit] = true;
            chain += " waits for " + peer_name(culprit, &cluster_);
            culprit = waits_on_[culprit];
          }
          chain += " waits for " + peer_name(culprit, &cluster_);
          return fail(error(Code::kTimeout,
                            "{} on rank {} timed out after LOCMOE_TIMEOUT_S={} s: {} stopped answering or died "
                            "({}; this rank was at: {} {} in {})",
                            op, me_, timeout_s_, peer_name(culprit, &cluster_), chain,
                            stuck->is_send ? "send to" : "receive from", peer_name(stuck->peer, &cluster_), what));
        }
      }
      // Spin first (with a core per rank small exchanges finish in microseconds: yielding at 64
      // spins cost 100 us vs 4 us at 1024 for 2 ranks, measured), then yield so oversubscribed
      // ranks let their peers run, then nap.
      if (spins > 1024) std::this_thread::yield();
      if (spins > 4096) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  // ---- failure notices ------------------------------------------------------------------------
  // Each rank keeps one receive posted per peer for a notice (phase kAbort, sequence 0, so no
  // data tag matches it). A rank that gives up, or is stuck at its deadline, sends every other
  // rank one notice: its error and the peer it waits for. A peer-failure notice makes the others
  // fail at once; "waits for" links let stuck ranks name the rank at the end of the chain.
  struct Notice {
    int32_t code = 0;
    int32_t waiting_on = -1;
    char message[496] = {};
  };
  Status post_abort_receives() {
    if (!inter_->supports(MemoryKind::kHost)) return ok_status();
    notices_in_.resize(n_);
    abort_recv_.resize(n_);
    notice_from_.assign(n_, false);
    waits_on_.assign(n_, -1);
    for (int p = 0; p < n_; ++p) {
      if (p == me_) continue;
      LOCMOE_RETURN_IF_ERROR(to(p).post_recv(abort_recv_[p], p, uint64_t{kAbort} << 21, &notices_in_[p], sizeof(Notice)));
    }
    return ok_status();
  }
  Status poll_abort_notices(std::string_view op) {
    for (int p = 0; p < static_cast<int>(abort_recv_.size()); ++p) {
      Request& r = abort_recv_[p];
      if (p == me_ || r.done || !r.transport) continue;
      if (!r.transport->test(r).ok()) {
        r.transport = nullptr;  // released by test()
        continue;
      }
      if (!r.done) continue;
      Notice& nt = notices_in_[p];
      nt.message[sizeof(Notice::message) - 1] = 0;
      notice_from_[p] = true;
      waits_on_[p] = nt.waiting_on;
      if (nt.code != int32_t(Code::kTimeout)) {
        Status s = error(Code::kPeerFailure, "{} on rank {} aborted: {} gave up: {}", op, me_, peer_name(p, &cluster_),
                         nt.message);
        send_abort_notices(s, p);
        return s;
      }
    }
    return ok_status();
  }
  // Tells every other rank why this one gives up or whom it waits for (once; never waited for).
  void send_abort_notices(const Status& why, int waiting_on) {
    if (notice_sent_ || abort_recv_.empty()) return;
    notice_sent_ = true;
    notice_out_.code = static_cast<int32_t>(why.code());
    notice_out_.waiting_on = waiting_on;
    std::snprintf(notice_out_.message, sizeof notice_out_.message, "%s", why.message().c_str());
    abort_send_.resize(n_);
    for (int p = 0; p < n_; ++p)
      if (p != me_) (void)to(p).post_send(abort_send_[p], p, uint64_t{kAbort} << 21, &notice_out_, sizeof(Notice));
    for (Request& r : abort_send_)
      if (r.transport && !r.done) (void)r.transport->test(r);  // push eager sends out now
  }
  Status failed(Status s) {
    if (s.code() == Code::kTimeout || s.code() == Code::kPeerFailure) {
      failed_ = true;
      send_abort_notices(s, -1);
    }
    return s;
  }

  // ---- metadata -------------------------------------------------------------------------------
  // Every rank's row, concatenated by rank.
  Result<std::vector<uint64_t>> exchange_rows(const std::vector<uint64_t>& row, std::string_view op) {
    const size_t len = row_len(), bytes = len * sizeof(uint64_t);
    std::vector<uint64_t> m(len * n_, 0);
    std::copy(row.begin(), row.end(), m.begin() + me_ * len);
    if (!inter_->supports(MemoryKind::kHost) || (intra_ && !intra_->supports(MemoryKind::kHost))) {
      // Device-only transports (NCCL) cannot carry host metadata: the bootstrap does.
      LOCMOE_RETURN_IF_ERROR(boot_.allgather(row.data(), m.data(), bytes));
      return m;
    }
    auto slot = [&](int r) { return reinterpret_cast<char*>(m.data() + r * len); };
    std::deque<Group> groups;
    const Clock::time_point until = deadline();
    if (algo_ != A2AAlgo::kHierarchical) {
      Group& g = groups.emplace_back(Group{"metadata", {}, {}, false});
      for (int p = 0; p < n_; ++p) {
        if (p == me_) continue;
        LOCMOE_RETURN_IF_ERROR(post(g, false, p, kMetaA, 0, slot(p), bytes));
      }
      for (int p = 0; p < n_; ++p) {
        if (p == me_) continue;
        LOCMOE_RETURN_IF_ERROR(post(g, true, p, kMetaA, 0, slot(me_), bytes));
        count_send(p, bytes, true);
      }
      LOCMOE_RETURN_IF_ERROR(run(groups, until, op));
      return m;
    }
    // Hierarchical: (A) rows inside the node; (B) the node's block of rows between rail peers;
    // (C) each received node block to the other ranks of the node. Node blocks are contiguous in
    // `m` only when nodes hold consecutive ranks, so blocks travel through a packed buffer.
    const int my_node = cluster_.my_node();
    const auto& local = cluster_.nodes[my_node];
    {
      Group& g = groups.emplace_back(Group{"metadata inside the node", {}, {}, false});
      for (int p : local)
        if (p != me_) LOCMOE_RETURN_IF_ERROR(post(g, false, p, kMetaA, 0, slot(p), bytes));
      for (int p : local)
        if (p != me_) {
          LOCMOE_RETURN_IF_ERROR(post(g, true, p, kMetaA, 0, slot(me_), bytes));
          count_send(p, bytes, true);
        }
    }
    LOCMOE_RETURN_IF_ERROR(run(groups, until, op));
    groups.clear();
    const int nodes = cluster_.num_nodes();
    auto pack = [&](int node, std::vector<uint64_t>& buf) {
      buf.clear();
      for (int r : cluster_.nodes[node]) buf.insert(buf.end(), m.begin() + r * len, m.begin() + (r + 1) * len);
    };
    auto unpack = [&](int node, const std::vector<uint64_t>& buf) {
      size_t i = 0;
      for (int r : cluster_.nodes[node]) std::copy(buf.begin() + i * len, buf.begin() + (i + 1) * len, m.begin() + r * len), ++i;
    };
    std::vector<std::vector<uint64_t>> blocks(nodes);
    std::vector<uint64_t> mine;
    pack(my_node, mine);
    {
      Group& g = groups.emplace_back(Group{"metadata between rail peers", {}, {}, false});
      for (int nn = 0; nn < nodes; ++nn) {
        if (nn == my_node || rail(my_node, nn) != me_) continue;
        blocks[nn].resize(len * cluster_.local_size(nn));
        LOCMOE_RETURN_IF_ERROR(post(g, false, rail(nn, my_node), kMetaB, nn, reinterpret_cast<char*>(blocks[nn].data()),
                                    blocks[nn].size() * sizeof(uint64_t)));
      }
      for (int nn = 0; nn < nodes; ++nn) {
        if (nn == my_node || rail(my_node, nn) != me_) continue;
        const int peer = rail(nn, my_node);
        LOCMOE_RETURN_IF_ERROR(post(g, true, peer, kMetaB, my_node, reinterpret_cast<char*>(mine.data()),
                                    mine.size() * sizeof(uint64_t)));
        count_send(peer, mine.size() * sizeof(uint64_t), true);
      }
    }
    LOCMOE_RETURN_IF_ERROR(run(groups, until, op));
    groups.clear();
    {
      Group& g = groups.emplace_back(Group{"metadata forwarded inside the node", {}, {}, false});
      for (int nn = 0; nn < nodes; ++nn) {
        if (nn == my_node || rail(my_node, nn) == me_) continue;
        blocks[nn].resize(len * cluster_.local_size(nn));
        LOCMOE_RETURN_IF_ERROR(post(g, false, rail(my_node, nn), kMetaC, nn,
                                    reinterpret_cast<char*>(blocks[nn].data()), blocks[nn].size() * sizeof(uint64_t)));
      }
      for (int nn = 0; nn < nodes; ++nn) {
        if (nn == my_node || rail(my_node, nn) != me_) continue;
        for (int p : local) {
          if (p == me_) continue;
          LOCMOE_RETURN_IF_ERROR(post(g, true, p, kMetaC, nn, reinterpret_cast<char*>(blocks[nn].data()),
                                      blocks[nn].size() * sizeof(uint64_t)));
          count_send(p, blocks[nn].size() * sizeof(uint64_t), true);
        }
      }
    }
    LOCMOE_RETURN_IF_ERROR(run(groups, until, op));
    for (int nn = 0; nn < nodes; ++nn)
      if (nn != my_node) unpack(nn, blocks[nn]);
    return m;
  }

  // Same verdict on every rank: the first disagreeing pair in (sender, receiver) order.
  Status check_matrix(const std::vector<uint64_t>& m) const {
    const size_t len = row_len();
    for (int s = 0; s < n_; ++s)
      for (int d = 0; d < n_; ++d) {
        const uint64_t sends = m[s * len + d], expects = m[d * len + n_ + s];
        LOCMOE_CHECK(sends == expects, Code::kMismatch,
                     "count mismatch: rank {} sends {} bytes to rank {}, which expects {} bytes from rank {} "
                     "(its recv_counts[{}])",
                     s, sends, d, expects, s, s);
      }
    for (int d = 0; d < n_; ++d) {
      const uint64_t needed = m[d * len + 2 * n_], capacity = m[d * len + 2 * n_ + 1];
      LOCMOE_CHECK_RANGE(needed <= capacity,
                         "rank {}'s receive buffer holds {} bytes but its recv_counts and recv_displs place data up "
                         "to byte {}; nothing was written",
                         d, capacity, needed);
    }
    return ok_status();
  }
  uint64_t count(const std::vector<uint64_t>& m, int s, int d) const { return m[s * row_len() + d]; }

  // ---- flat -----------------------------------------------------------------------------------
  Status flat(const std::vector<uint64_t>& m, const char* send, const uint64_t* sdispl, char* recv,
              const uint64_t* rdispl, MemoryKind mem, void* stream) {
    std::deque<Group> groups;
    Group& g = groups.emplace_back(Group{"data", {}, {}, false});
    // Host self-copy needs no transport; device buffers go through the transport to self.
    const bool self_by_transport = mem == MemoryKind::kDevice;
    for (int p = 0; p < n_; ++p) {
      if (p == me_ && !self_by_transport) continue;
      LOCMOE_RETURN_IF_ERROR(post(g, false, p, kDirect, 0, recv + rdispl[p], count(m, p, me_), stream));
      if (p != me_) stats_.bytes_received += count(m, p, me_);
    }
    for (int i = 1; i <= n_; ++i) {  // start with the next rank so senders spread over receivers
      const int p = (me_ + i) % n_;
      if (p == me_ && !self_by_transport) continue;
      const uint64_t c = count(m, me_, p);
      LOCMOE_RETURN_IF_ERROR(post(g, true, p, kDirect, 0, const_cast<char*>(send) + sdispl[p], c, stream));
      count_send(p, c);
    }
    if (!self_by_transport && count(m, me_, me_) > 0) std::memmove(recv + rdispl[me_], send + sdispl[me_], count(m, me_, me_));
    return run(groups, deadline(), "alltoallv (flat)");
  }

  // ---- hierarchical -----------------------------------------------------------------------------
  // Ranks of node `dst_node` whose data from node `src_node` travels over rail `l`.
  std::vector<int> rail_group(int src_node, int dst_node, int l) const {
    std::vector<int> out;
    for (int d : cluster_.nodes[dst_node])
      if (cluster_.local_rank_of(d) % cluster_.local_size(src_node) == l) out.push_back(d);
    return out;
  }

  Status hierarchical(const std::vector<uint64_t>& m, const char* send, const uint64_t* sdispl, char* recv,
                      const uint64_t* rdispl) {
    const int nodes = cluster_.num_nodes(), my_node = cluster_.my_node(), my_local = cluster_.my_local_rank();
    const auto& local = cluster_.nodes[my_node];
    const int my_size = cluster_.my_local_size();
    std::deque<Group> groups;
    auto mut = [](const char* p) { return const_cast<char*>(p); };
    auto bytes_to = [&](int s, const std::vector<int>& dsts) {
      uint64_t b = 0;
      for (int d : dsts) b += count(m, s, d);
      return b;
    };

    // Direct data inside the node, and the copy to itself.
    {
      Group& g = groups.emplace_back(Group{"data inside the node", {}, {}, false});
      for (int p : local) {
        if (p == me_) continue;
        LOCMOE_RETURN_IF_ERROR(post(g, false, p, kDirect, 0, recv + rdispl[p], count(m, p, me_)));
        stats_.bytes_received += count(m, p, me_);
      }
      for (int p : local) {
        if (p == me_) continue;
        LOCMOE_RETURN_IF_ERROR(post(g, true, p, kDirect, 0, mut(send) + sdispl[p], count(m, me_, p)));
        count_send(p, count(m, me_, p));
      }
      if (count(m, me_, me_) > 0) std::memmove(recv + rdispl[me_], send + sdispl[me_], count(m, me_, me_));
    }

    // Staging buffers persist across exchanges (no page faults or zero-filling on the hot path);
    // indexed [node][rail] or [node][destination].
    auto& out = scratch_.out;
    auto& gathered = scratch_.gathered;
    auto& arrived = scratch_.arrived;
    auto& landing = scratch_.landing;
    auto& fwd = scratch_.fwd;
    out.resize(nodes), gathered.resize(nodes), arrived.resize(nodes), landing.resize(nodes), fwd.resize(nodes);
    for (int nn = 0; nn < nodes; ++nn) out[nn].resize(my_size), gathered[nn].resize(my_size);

    for (int nn = 0; nn < nodes; ++nn) {
      if (nn == my_node) continue;
      const int rails = std::min(my_size, cluster_.local_size(nn));
      for (int l = 0; l < rails; ++l) {
        const std::vector<int> dsts = rail_group(my_node, nn, l);
        const int rail = local[l];
        // Stage 1: my blocks for this rail's destinations, in place when back to back.
        const uint64_t mine = bytes_to(me_, dsts);
        const int64_t start = back_to_back(dsts, sdispl, [&](int d) { return count(m, me_, d); });
        const char* my_block = start >= 0 ? send + start : nullptr;
        if (start < 0) {
          out[nn][l].resize(mine);
          uint64_t off = 0;
          for (int d : dsts) {
            std::memcpy(out[nn][l].data() + off, send + sdispl[d], count(m, me_, d));
            off += count(m, me_, d);
          }
          my_block = out[nn][l].data();
        }
        // The gathered block [src in my node][dst in dsts] is cut into chunks of chunk_ bytes at
        // fixed offsets, and every source sends its part cut at those same offsets, so chunk k
        // leaves for node nn (stage 2) as soon as its own pieces arrived: the gather of the next
        // chunk overlaps the inter-node transfer of this one.
        uint64_t total = 0, my_off = 0;
        for (int s : local) {
          if (s == me_) my_off = total;
          total += bytes_to(s, dsts);
        }
        if (total == 0) continue;
        const uint64_t chunks = (total + chunk_ - 1) / chunk_;
        LOCMOE_CHECK_RANGE(chunks <= kMaxChunks,
                           "stage-2 message of {} bytes needs {} chunks of LOCMOE_CHUNK_BYTES={}; at most {}", total,
                           chunks, chunk_, kMaxChunks);
        // Pieces of source block [lo, lo + b) of the gathered layout, by chunk: f(k, offset, len).
        auto pieces = [this](uint64_t lo, uint64_t b, auto&& f) -> Status {
          for (uint64_t o = lo; o < lo + b;) {
            const uint64_t k = o / chunk_, end = std::min(lo + b, (k + 1) * chunk_);
            LOCMOE_RETURN_IF_ERROR(f(k, o, end - o));
            o = end;
          }
          return ok_status();
        };
        if (rail != me_) {
          Group& g = groups.emplace_back(Group{fmt::format("stage 1: gather for node {}", nn), {}, {}, false});
          LOCMOE_RETURN_IF_ERROR(pieces(my_off, mine, [&](uint64_t k, uint64_t o, uint64_t len) {
            return post_piece(g, true, rail, kStage1, nn, k, mut(my_block) + (o - my_off), len);
          }));
          count_send(rail, mine, false, g.reqs.size());
          continue;
        }
        // I am rail l towards nn: gather, then stage 2 to (nn, l), chunk by chunk.
        auto& buf = gathered[nn][l];
        buf.resize(total);
        if (mine) std::memcpy(buf.data() + my_off, my_block, mine);
        const int peer = cluster_.nodes[nn][l];
        const size_t first = groups.size();
        for (uint64_t k = 0; k < chunks; ++k) {
          Group& g = groups.emplace_back(Group{fmt::format("stage 1: gather for node {} (chunk {})", nn, k), {}, {}, false});
          const uint64_t len = std::min(chunk_, total - k * chunk_);
          g.then = [this, &groups, &buf, nn, peer, my_node, k, len]() -> Status {
            Group& g2 = groups.emplace_back(Group{fmt::format("stage 2: to node {}", nn), {}, {}, false});
            return post_piece(g2, true, peer, kStage2, my_node, k, buf.data() + k * chunk_, len);
          };
        }
        uint64_t off = 0;
        for (int s : local) {
          const uint64_t b = bytes_to(s, dsts);
          if (s != me_)
            LOCMOE_RETURN_IF_ERROR(pieces(off, b, [&](uint64_t k, uint64_t o, uint64_t len) {
              return post_piece(groups[first + k], false, s, kStage1, nn, k, buf.data() + o, len);
            }));
          off += b;
        }
        count_send(peer, total);
      }

      // Stage 2 receive: as rail my_local of node nn's traffic to my node, I get the data of
      // every rank of nn for my rail group, then forward (stage 3) to each rank of the group.
      if (my_local < std::min(my_size, cluster_.local_size(nn))) {
        const std::vector<int> dsts = rail_group(nn, my_node, my_local);
        const auto& srcs = cluster_.nodes[nn];
        uint64_t in_total = 0;
        for (int s : srcs) in_total += bytes_to(s, dsts);
        Group& r2 = groups.emplace_back(Group{fmt::format("stage 2: from node {}", nn), {}, {}, false});
        // When I am the only destination (equal nodes) and the sources' blocks lie back to back in
        // my receive buffer, the message lands in place: no copy on the receiving side.
        const int64_t in_place =
            dsts.size() == 1 && dsts[0] == me_ ? back_to_back(srcs, rdispl, [&](int s) { return count(m, s, me_); }) : -1;
        if (in_place >= 0) {
          LOCMOE_RETURN_IF_ERROR(post(r2, false, srcs[my_local], kStage2, nn, recv + in_place, in_total));
          stats_.bytes_received += in_total;
          continue;  // nothing to forward, and the final receive below is only for non-rail ranks
        }
        arrived[nn].resize(in_total);
        LOCMOE_RETURN_IF_ERROR(post(r2, false, srcs[my_local], kStage2, nn, arrived[nn].data(), in_total));
        r2.then = [this, &groups, &arrived, &fwd, &m, nn, dsts, recv, rdispl]() -> Status {
          const auto& srcs = cluster_.nodes[nn];
          // Layout [src][dst in dsts]: offset of source i's block.
          std::vector<uint64_t> src_off(srcs.size() + 1, 0);
          for (size_t i = 0; i < srcs.size(); ++i) {
            uint64_t b = 0;
            for (int d : dsts) b += count(m, srcs[i], d);
            src_off[i + 1] = src_off[i] + b;
          }
          fwd[nn].resize(dsts.size());
          Group& g3 = groups.emplace_back(Group{fmt::format("stage 3: forward from node {}", nn), {}, {}, false});
          for (size_t di = 0; di < dsts.size(); ++di) {
            const int d = dsts[di];
            uint64_t b = 0;
            for (int s : srcs) b += count(m, s, d);
            auto& buf = fwd[nn][di];
            buf.resize(d == me_ ? 0 : b);
            uint64_t o = 0;
            for (size_t si = 0; si < srcs.size(); ++si) {
              uint64_t within = 0;
              for (size_t k = 0; k < di; ++k) within += count(m, srcs[si], dsts[k]);
              const uint64_t c = count(m, srcs[si], d);
              const char* from = arrived[nn].data() + src_off[si] + within;
              if (c) std::memcpy(d == me_ ? recv + rdispl[srcs[si]] : buf.data() + o, from, c);
              o += c;
            }
            if (d == me_) {
              stats_.bytes_received += b;
            } else {
              LOCMOE_RETURN_IF_ERROR(post(g3, true, d, kStage3, nn, buf.data(), b));
              count_send(d, b);
            }
          }
          return ok_status();
        };
      }

      // Final receive of nn's data for me, forwarded by the rail of my group (uneven nodes only:
      // with equal nodes every rank is its own rail).
      const int my_rail_local = my_local % cluster_.local_size(nn);
      if (my_rail_local != my_local) {
        const auto& srcs = cluster_.nodes[nn];
        uint64_t b = 0;
        for (int s : srcs) b += count(m, s, me_);
        const int64_t start = back_to_back(srcs, rdispl, [&](int s) { return count(m, s, me_); });
        stats_.bytes_received += b;
        Group& g = groups.emplace_back(Group{fmt::format("stage 3: from node {}", nn), {}, {}, false});
        char* into = start >= 0 ? recv + start : nullptr;
        if (start < 0) {
          landing[nn].resize(b);
          into = landing[nn].data();
          g.then = [this, &landing, &m, nn, recv, rdispl]() -> Status {
            uint64_t o = 0;
            for (int s : cluster_.nodes[nn]) {
              const uint64_t c = count(m, s, me_);
              if (c) std::memcpy(recv + rdispl[s], landing[nn].data() + o, c);
              o += c;
            }
            return ok_status();
          };
        }
        LOCMOE_RETURN_IF_ERROR(post(g, false, local[my_rail_local], kStage3, nn, into, b));
      }
    }
    return run(groups, deadline(), "alltoallv (hierarchical)");
  }
  int my_node_() const { return cluster_.my_node(); }
  // Offset of the first non-empty block when the non-empty blocks of `ranks` (in that order) lie
  // back to back at `displ`; 0 when all are empty; -1 when they do not.
  template <typename CountFn>
  static int64_t back_to_back(const std::vector<int>& ranks, const uint64_t* displ, CountFn count_of) {
    int64_t start = -1;
    uint64_t next = 0;
    for (int r : ranks) {
      const uint64_t c = count_of(r);
      if (c == 0) continue;
      if (start < 0) start = static_cast<int64_t>(next = displ[r]);
      if (displ[r] != next) return -1;
      next += c;
    }
    return start < 0 ? 0 : start;
  }

  Bootstrap& boot_;
  const ClusterMap& cluster_;
  std::unique_ptr<Transport> inter_, intra_;
  A2AAlgo algo_;
  uint64_t chunk_;
  double timeout_s_;
  int n_, me_;
  uint64_t seq_ = 0;
  ExchangeStats stats_;
  bool failed_ = false;
  struct Scratch {
    std::vector<std::vector<Buffer>> out, gathered, fwd;
    std::vector<Buffer> arrived, landing;
  } scratch_;
  std::vector<Notice> notices_in_;
  std::vector<bool> notice_from_;
  std::vector<int> waits_on_;
  std::vector<Request> abort_recv_, abort_send_;
  Notice notice_out_;
  bool notice_sent_ = false;

 public:
  Status start() { return post_abort_receives(); }
};

Result<A2AAlgo> resolve_algo(A2AAlgo requested, const ClusterMap& cluster) {
  A2AAlgo algo = requested;
  if (algo == A2AAlgo::kAuto) {
    LOCMOE_ASSIGN_OR_RETURN(std::string name, params::get_string(params::Id::a2a_algo));
    if (name == "flat") algo = A2AAlgo::kFlat;
    if (name == "hier") algo = A2AAlgo::kHierarchical;
  }
  if (algo == A2AAlgo::kAuto) algo = cluster.num_nodes() > 1 ? A2AAlgo::kHierarchical : A2AAlgo::kFlat;
  return algo;
}

}  // namespace

Result<std::unique_ptr<Communicator>> Communicator::create(Bootstrap& bootstrap, const ClusterMap& cluster,
                                                           const CommConfig& config) {
  LOCMOE_CHECK_ARG(cluster.size() == bootstrap.size() && cluster.my_rank == bootstrap.rank(),
                   "cluster map ({} ranks, rank {}) does not match the bootstrap ({} ranks, rank {})", cluster.size(),
                   cluster.my_rank, bootstrap.size(), bootstrap.rank());
  std::string inter_name = config.transport, intra_name = config.intra_transport;
  if (inter_name.empty()) {
    LOCMOE_ASSIGN_OR_RETURN(inter_name, params::get_string(params::Id::transport));
  }
  if (intra_name.empty()) {
    LOCMOE_ASSIGN_OR_RETURN(intra_name, params::get_string(params::Id::intra_transport));
  }
  if (inter_name == "auto") {
    // MPI when the job runs under MPI (it is there and sized like us), else UCX.
    inter_name = transport_available("ucx") ? "ucx" : "mpi";
    if (std::string(bootstrap.name()) == "mpi") inter_name = "mpi";
  }
  if (intra_name == inter_name) intra_name.clear();
  double timeout_s = config.timeout_s;
  if (timeout_s <= 0) {
    LOCMOE_ASSIGN_OR_RETURN(timeout_s, params::get_float(params::Id::timeout_s));
  }
  LOCMOE_CHECK_ARG(timeout_s > 0, "timeout {} s must be positive", timeout_s);
  uint64_t chunk = config.chunk_bytes;
  if (chunk == 0) {
    LOCMOE_ASSIGN_OR_RETURN(int64_t c, params::get_int(params::Id::chunk_bytes));
    LOCMOE_CHECK_ARG(c > 0 && c <= INT32_MAX, "LOCMOE_CHUNK_BYTES={} must be in [1, 2^31)", c);
    chunk = static_cast<uint64_t>(c);
  }
  LOCMOE_ASSIGN_OR_RETURN(A2AAlgo algo, resolve_algo(config.algo, cluster));
  {
    // Both sides of every message cut it at the same chunk offsets and follow the same algorithm;
    // ranks that disagree would post receives that never match. Same verdict on every rank.
    uint64_t lo[2] = {chunk, static_cast<uint64_t>(algo)}, hi[2] = {lo[0], lo[1]};
    LOCMOE_RETURN_IF_ERROR(bootstrap.allreduce(lo, lo, 2, DataType::kUint64, ReduceOp::kMin));
    LOCMOE_RETURN_IF_ERROR(bootstrap.allreduce(hi, hi, 2, DataType::kUint64, ReduceOp::kMax));
    LOCMOE_CHECK(lo[0] == hi[0], Code::kMismatch,
                 "the chunk size (LOCMOE_CHUNK_BYTES or CommConfig::chunk_bytes) differs across ranks: from {} to {} "
                 "bytes (this rank: {}); every rank must use the same",
                 lo[0], hi[0], chunk);
    LOCMOE_CHECK(lo[1] == hi[1], Code::kMismatch,
                 "the all-to-all algorithm (LOCMOE_A2A_ALGO or CommConfig::algo) differs across ranks (this rank: {}); "
                 "every rank must use the same",
                 algo == A2AAlgo::kFlat ? "flat" : "hier");
  }
  LOCMOE_ASSIGN_OR_RETURN(std::unique_ptr<Transport> inter, make_transport(inter_name, bootstrap, &cluster));
  std::unique_ptr<Transport> intra;
  if (!intra_name.empty()) {
    LOCMOE_ASSIGN_OR_RETURN(intra, make_transport(intra_name, bootstrap, &cluster));
    LOCMOE_CHECK_ARG(intra->supports(MemoryKind::kHost) == inter->supports(MemoryKind::kHost),
                     "intra-node transport {} and inter-node transport {} move different kinds of memory",
                     intra_name, inter_name);
  }
  auto comm = std::make_unique<CommunicatorImpl>(bootstrap, cluster, std::move(inter), std::move(intra), algo, chunk,
                                                 timeout_s);
  LOCMOE_RETURN_IF_ERROR(comm->start());
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace locmoe
