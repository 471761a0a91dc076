// Communicator: the all-to-all-v over one or two Transports, as a negotiation (prepare: the
// count metadata along the algorithm's paths, checked the same way on every rank, then the plan)
// and executions of plans (data only). The pieces, one file each: plan.cc (rows, check, plan),
// schedule_flat.cc / schedule_hier.cc (the schedules as data, metadata schedules included),
// progress.cc (the engine running a schedule against the deadline), abort.cc (failure notices
// and the culprit chain).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <memory>
#include <vector>

#include "engine.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/comm/transport.h"
#include "locmoe/core/check.h"
#include "locmoe/core/log.h"
#include "locmoe/core/params.h"

namespace locmoe {
namespace {

using namespace comm_detail;

// Grow-only uninitialized byte buffer (a std::vector<char> would zero-fill on every growth).
class Buffer {
 public:
  void reserve(size_t n) {
    if (n > cap_) {
      p_.reset(new char[n]);
      cap_ = n;
    }
  }
  char* data() { return p_.get(); }

 private:
  std::unique_ptr<char[]> p_;
  size_t cap_ = 0;
};

uint64_t next_comm_id() {
  static std::atomic<uint64_t> next{1};
  return next++;
}

class CommunicatorImpl final : public Communicator {
 public:
  CommunicatorImpl(Bootstrap& boot, const ClusterMap& cluster, std::unique_ptr<Transport> inter,
                   std::unique_ptr<Transport> intra, A2AAlgo algo, uint64_t chunk, double timeout_s)
      : boot_(boot), cluster_(cluster), inter_(std::move(inter)), intra_(std::move(intra)), algo_(algo),
        chunk_(chunk), timeout_s_(timeout_s), n_(cluster.size()), me_(cluster.my_rank) {
    links_ = Links{&cluster_, inter_.get(), intra_.get()};
  }
  ~CommunicatorImpl() override {
    if (!failed_) {
      // Peers may still be flushing their last messages to us: close together.
      Status s = boot_.barrier();
      if (!s.ok()) failed_ = true;
    }
    notices_.cancel_all();
    for (Transport* t : {intra_.get(), inter_.get()}) {
      if (!t) continue;
      if (failed_) t->mark_failed();
      (void)t->finalize();
    }
  }

  // Posts the notice receives and builds the metadata schedule (it depends on the cluster only).
  Status start() {
    LOCMOE_RETURN_IF_ERROR(notices_.start(links_, me_, n_));
    row_.resize(plan_row_len(n_));
    rows_.resize(plan_row_len(n_) * n_);
    ScheduleWriter w(meta_, chunk_);
    const uint64_t row_bytes = plan_row_len(n_) * sizeof(uint64_t);
    LOCMOE_RETURN_IF_ERROR(algo_ == A2AAlgo::kHierarchical ? build_hier_meta_schedule(cluster_, row_bytes, w)
                                                           : build_flat_meta_schedule(cluster_, row_bytes, w));
    meta_stats_ = schedule_stats(meta_, cluster_, true);
    meta_staging_.reserve(meta_.staging_bytes);
    return ok_status();
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

  uint64_t exchanges() const override { return seq_; }
  Counters counters() const override { return counters_; }
  Status reject(const Status& why) override {
    stats_ = {};
    if (failed_ || n_ == 1) {
      ++seq_;
      return why;
    }
    std::fill(row_.begin(), row_.end(), 0);
    row_.back() = 1;
    reason_out_ = why.message();
    Status s = exchange_rows("a rejected exchange");
    if (!s.ok()) {
      reason_out_.clear();
      return why;
    }
    (void)check_rejections("a rejected exchange");
    reason_out_.clear();
    return why;
  }
  void abort(std::string_view message) override {
    // Any code but kTimeout makes the peers fail at once (AbortNotices::poll).
    notices_.send(error(Code::kPeerFailure, "rank {} aborted the group: {}", me_, message), -1);
    failed_ = true;
  }

  Status exchange_counts(const uint64_t* send_counts, uint64_t* recv_counts) override {
    LOCMOE_CHECK_ARG(send_counts && recv_counts, "exchange_counts needs send_counts and recv_counts arrays");
    ExchangeSpec spec;
    spec.send_counts = send_counts;
    stats_ = {};
    LOCMOE_RETURN_IF_ERROR(plan_row(spec, n_, row_));
    LOCMOE_RETURN_IF_ERROR(exchange_rows("exchange_counts"));
    LOCMOE_RETURN_IF_ERROR(check_rejections("exchange_counts"));
    for (int r = 0; r < n_; ++r) recv_counts[r] = rows_[r * plan_row_len(n_) + me_];
    return ok_status();
  }

  Status alltoallv(const void* send, const uint64_t* send_counts, const uint64_t* send_displs, void* recv,
                   const uint64_t* recv_counts, const uint64_t* recv_displs, uint64_t recv_capacity,
                   MemoryKind mem, void* stream) override {
    LOCMOE_CHECK_ARG(send_counts && send_displs && recv_counts && recv_displs,
                     "alltoallv needs all four count/displacement arrays");
    ExchangeSpec spec;
    spec.send_counts = send_counts;
    spec.send_displs = send_displs;
    spec.recv_counts = recv_counts;
    spec.recv_displs = recv_displs;
    spec.recv_capacity = recv_capacity;
    spec.mem = mem;
    LOCMOE_RETURN_IF_ERROR(prepare_impl(spec, plan_, "alltoallv count metadata"));
    const ExchangeStats meta = stats_;
    Status s = execute_impl(plan_, send, recv, stream, "alltoallv");
    stats_.meta_msgs_sent = meta.meta_msgs_sent;
    stats_.meta_internode_msgs_sent = meta.meta_internode_msgs_sent;
    return s;
  }

  Status prepare(const ExchangeSpec& spec, ExchangePlan& plan) override {
    return prepare_impl(spec, plan, "prepare count metadata");
  }

  Status execute(const ExchangePlan& plan, const void* send, void* recv, void* stream) override {
    return execute_impl(plan, send, recv, stream, "execute");
  }

  Status transpose(const ExchangePlan& plan, ExchangePlan& out) const override {
    LOCMOE_CHECK_ARG(plan.comm_id == id_, "transpose: the plan was not made by this communicator");
    return transpose_plan(cluster_, plan, out);
  }
  Status scale(const ExchangePlan& plan, uint64_t factor, ExchangePlan& out) const override {
    LOCMOE_CHECK_ARG(plan.comm_id == id_, "scale: the plan was not made by this communicator");
    return scale_plan(cluster_, plan, factor, out);
  }

 private:
  Clock::time_point deadline() const {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  }

  // The metadata round: row_ reaches every rank, rows_ holds every rank's row afterwards.
  Status exchange_rows(std::string_view op) {
    LOCMOE_CHECK(!failed_, Code::kPeerFailure, "communicator unusable after an earlier peer failure or timeout");
    ++seq_;
    ++counters_.metadata_rounds;
    const size_t len = plan_row_len(n_);
    if (!inter_->supports(MemoryKind::kHost) || (intra_ && !intra_->supports(MemoryKind::kHost))) {
      // Device-only transports (NCCL) cannot carry host metadata: the bootstrap does.
      return failed(boot_.allgather(row_.data(), rows_.data(), len * sizeof(uint64_t)));
    }
    std::copy(row_.begin(), row_.end(), rows_.begin() + me_ * len);
    const auto* m = reinterpret_cast<char*>(rows_.data());
    ProgressEngine::Buffers b{m, reinterpret_cast<char*>(rows_.data()), meta_staging_.data()};
    LOCMOE_RETURN_IF_ERROR(failed(engine_.run(meta_, b, seq_, nullptr, deadline(), timeout_s_, op, links_, notices_)));
    stats_.meta_msgs_sent = meta_stats_.meta_msgs_sent;
    stats_.meta_internode_msgs_sent = meta_stats_.meta_internode_msgs_sent;
    return ok_status();
  }

  Status prepare_impl(const ExchangeSpec& spec, ExchangePlan& plan, std::string_view op) {
    LOCMOE_CHECK(inter_->supports(spec.mem) && (!intra_ || intra_->supports(spec.mem)), Code::kUnsupported,
                 "transport {} cannot move {} memory (device buffers need the nccl transport)", transport_name(),
                 spec.mem == MemoryKind::kHost ? "host" : "device");
    stats_ = {};
    LOCMOE_RETURN_IF_ERROR(plan_row(spec, n_, row_));
    LOCMOE_RETURN_IF_ERROR(exchange_rows(op));
    LOCMOE_RETURN_IF_ERROR(check_rejections(op));
    LOCMOE_RETURN_IF_ERROR(check_rows(rows_, n_));
    LOCMOE_RETURN_IF_ERROR(build_plan(cluster_, algo_, chunk_, spec, rows_, plan));
    plan.comm_id = id_;
    return ok_status();
  }

  Status execute_impl(const ExchangePlan& plan, const void* send, void* recv, void* stream, const char* op) {
    LOCMOE_CHECK_ARG(plan.comm_id == id_ && plan.rank == me_ && plan.ranks == n_,
                     "{}: the plan was not made by this communicator (prepare it here)", op);
    LOCMOE_CHECK_ARG(send || plan.send_bytes == 0, "{}: send is null but {} bytes are to be sent", op,
                     plan.send_bytes);
    LOCMOE_CHECK_ARG(recv || plan.recv_bytes == 0, "{}: recv is null but {} bytes are to be received", op,
                     plan.recv_bytes);
    LOCMOE_CHECK(!failed_, Code::kPeerFailure, "communicator unusable after an earlier peer failure or timeout");
    stats_ = plan.stats;
    ++seq_;
    ++counters_.data_exchanges;
    staging_.reserve(plan.schedule.staging_bytes);
    ProgressEngine::Buffers b{static_cast<const char*>(send), static_cast<char*>(recv), staging_.data()};
    const char* what = plan.algo == A2AAlgo::kHierarchical ? "hierarchical" : "flat";
    // The op name is formatted once per call only on the error path (engine messages take a view).
    char name[48];
    std::snprintf(name, sizeof name, "%s (%s)", op, what);
    return failed(engine_.run(plan.schedule, b, seq_, stream, deadline(), timeout_s_, name, links_, notices_));
  }

  // A rank that took its turn with reject(): every rank sees its flag (the row's last entry), so
  // all of them fetch the reasons (fixed size, through the bootstrap) and fail with the same
  // verdict. The exchange itself completed, so every rank stays in step: the communicator remains
  // usable.
  Status check_rejections(std::string_view op) {
    const size_t len = plan_row_len(n_);
    int first = -1;
    for (int r = 0; r < n_ && first < 0; ++r)
      if (rows_[r * len + len - 1] != 0) first = r;
    if (first < 0) return ok_status();
    constexpr size_t kReason = 480;
    std::vector<char> mine(kReason, '\0'), all(kReason * static_cast<size_t>(n_));
    std::memcpy(mine.data(), reason_out_.data(), std::min(reason_out_.size(), kReason - 1));
    Status s = boot_.allgather(mine.data(), all.data(), kReason);
    if (!s.ok()) return failed(s.with_context("fetching the reason of a rejected exchange"));
    const char* why = all.data() + kReason * static_cast<size_t>(first);
    return error(Code::kMismatch, "{} on rank {}: {} rejected its input to this exchange: {}", op, me_,
                 peer_name(first, &cluster_), std::string_view(why, strnlen(why, kReason)));
  }

  Status failed(Status s) {
    if (s.code() == Code::kTimeout || s.code() == Code::kPeerFailure) {
      failed_ = true;
      notices_.send(s, -1);
    }
    return s;
  }

  Bootstrap& boot_;
  const ClusterMap& cluster_;
  std::unique_ptr<Transport> inter_, intra_;
  A2AAlgo algo_;
  uint64_t chunk_;
  double timeout_s_;
  int n_, me_;
  uint64_t seq_ = 0;
  Counters counters_;
  ExchangeStats stats_;
  bool failed_ = false;
  uint64_t id_ = next_comm_id();
  Links links_;
  AbortNotices notices_;
  ProgressEngine engine_;
  Schedule meta_;             // the metadata round's schedule (fixed per communicator)
  ExchangeStats meta_stats_;  // and what it sends
  std::vector<uint64_t> row_, rows_;
  Buffer staging_, meta_staging_;
  ExchangePlan plan_;  // alltoallv's
  std::string reason_out_;  // reject()'s message while its exchange runs
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

// Both sides of every message cut it at the same chunk offsets, follow the same algorithm over the
// same transports, and give up at the same deadline (ranks with different deadlines blame the
// wrong peer: the first to give up looks dead to the others). Ranks that disagree would post
// receives that never match, so it is refused here, with the same verdict on every rank.
Status check_agreement(Bootstrap& bootstrap, uint64_t chunk, A2AAlgo algo, double timeout_s,
                       const std::string& inter, const std::string& intra) {
  uint64_t timeout_bits = 0;
  static_assert(sizeof(timeout_bits) == sizeof(timeout_s));
  std::memcpy(&timeout_bits, &timeout_s, sizeof timeout_bits);  // positive doubles order as their bits
  auto fnv = [](const std::string& text) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
    return h;
  };
  struct Params {
    uint64_t chunk, algo, timeout_bits, transports;
  };
  const Params mine{chunk, static_cast<uint64_t>(algo), timeout_bits, fnv(inter + "+" + intra)};
  std::vector<Params> all(static_cast<size_t>(bootstrap.size()));
  LOCMOE_RETURN_IF_ERROR(bootstrap.allgather(&mine, all.data(), sizeof(Params)));
  auto algo_name = [](uint64_t a) { return a == uint64_t(A2AAlgo::kFlat) ? "flat" : "hier"; };
  auto seconds = [](uint64_t bits) {
    double t = 0;
    std::memcpy(&t, &bits, sizeof t);
    return t;
  };
  for (size_t r = 1; r < all.size(); ++r) {
    const Params& a = all[0];
    const Params& b = all[r];
    LOCMOE_CHECK(a.chunk == b.chunk, Code::kMismatch,
                 "the chunk size (LOCMOE_CHUNK_BYTES or CommConfig::chunk_bytes) differs across ranks: rank 0 has {} "
                 "bytes, rank {} has {}; every rank must use the same",
                 a.chunk, r, b.chunk);
    LOCMOE_CHECK(a.algo == b.algo, Code::kMismatch,
                 "the all-to-all algorithm (LOCMOE_A2A_ALGO or CommConfig::algo) differs across ranks: rank 0 has {}, "
                 "rank {} has {}; every rank must use the same",
                 algo_name(a.algo), r, algo_name(b.algo));
    LOCMOE_CHECK(a.timeout_bits == b.timeout_bits, Code::kMismatch,
                 "the timeout (LOCMOE_TIMEOUT_S or the group's timeout_s) differs across ranks: rank 0 has {} s, rank "
                 "{} has {} s; every rank must use the same (a rank that gives up first looks dead to the others)",
                 seconds(a.timeout_bits), r, seconds(b.timeout_bits));
    LOCMOE_CHECK(a.transports == b.transports, Code::kMismatch,
                 "the transports (LOCMOE_TRANSPORT / LOCMOE_INTRA_TRANSPORT or CommConfig) differ between rank 0 and "
                 "rank {} (this is rank {}, with {}{}{}); every rank must use the same",
                 r, bootstrap.rank(), inter, intra.empty() ? "" : " and inside nodes ", intra);
  }
  return ok_status();
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
  LOCMOE_ASSIGN_OR_RETURN(const double timeout_s, resolve_timeout(config.timeout_s));
  uint64_t chunk = config.chunk_bytes;
  if (chunk == 0) {
    LOCMOE_ASSIGN_OR_RETURN(int64_t c, params::get_int(params::Id::chunk_bytes));
    LOCMOE_CHECK_ARG(c > 0 && c <= INT32_MAX, "LOCMOE_CHUNK_BYTES={} must be in [1, 2^31)", c);
    chunk = static_cast<uint64_t>(c);
  }
  LOCMOE_ASSIGN_OR_RETURN(A2AAlgo algo, resolve_algo(config.algo, cluster));
  LOCMOE_RETURN_IF_ERROR(check_agreement(bootstrap, chunk, algo, timeout_s, inter_name, intra_name));
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
