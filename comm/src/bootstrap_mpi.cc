#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "bootstrap_frame.h"
#include "mpi/mpi_error.h"

namespace locmoe {
namespace {

using namespace bootstrap_detail;

MPI_Datatype mpi_type(DataType type) {
  switch (type) {
    case DataType::kInt32: return MPI_INT32_T;
    case DataType::kInt64: return MPI_INT64_T;
    case DataType::kUint64: return MPI_UINT64_T;
    case DataType::kFloat32: return MPI_FLOAT;
    case DataType::kFloat64: return MPI_DOUBLE;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_OP_NULL;
}

// Every collective is two MPI collectives: an allgather of each rank's fixed-size Header (which
// always pairs correctly, whatever each rank called), then, when all headers agree, the payload
// collective. A rejecting rank's header makes every rank run one more fixed-size allgather of the
// reasons instead of the payload. Abort notices are point-to-point messages with their own tag on
// the same communicator (point-to-point never matches a collective); every wait polls for them.
class MpiBootstrap final : public Bootstrap {
 public:
  MpiBootstrap(MPI_Comm comm, int rank, int size, double timeout_s)
      : comm_(comm), rank_(rank), size_(size), timeout_s_(timeout_s) {
    notice_in_ = std::make_unique<Pending>(nullptr, 0, kReasonBytes);
    if (size_ > 1 && MPI_Irecv(notice_in_->recv.data(), static_cast<int>(kReasonBytes), MPI_CHAR, MPI_ANY_SOURCE,
                               kAbortTag, comm_, &notice_in_->req) != MPI_SUCCESS)
      notice_in_->req = MPI_REQUEST_NULL;
  }
  ~MpiBootstrap() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (notice_in_->req != MPI_REQUEST_NULL) {
      MPI_Cancel(&notice_in_->req);
      int done = 0;
      for (int i = 0; i < 1000 && !done; ++i) MPI_Test(&notice_in_->req, &done, MPI_STATUS_IGNORE);
      if (!done) {
        MPI_Request_free(&notice_in_->req);
        abandon(std::move(notice_in_));
      }
    }
    // A collective left pending by a timeout or an abort may never complete: abandon the
    // communicator rather than free it under a pending operation.
    if (dead_.empty()) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "mpi"; }

  Status allgather(const void* send, void* recv, size_t bytes) override {
    LOCMOE_RETURN_IF_ERROR(check_count(bytes, "allgather"));
    LOCMOE_RETURN_IF_ERROR(begin({kAllgather, 0, 0, bytes}));
    auto op = std::make_unique<Pending>(static_cast<const char*>(send == recv ? static_cast<const char*>(recv) + rank_ * bytes : send), bytes,
                                        bytes * size_);
    int rc = MPI_Iallgather(op->send.data(), static_cast<int>(bytes), MPI_BYTE, op->recv.data(), static_cast<int>(bytes),
                            MPI_BYTE, comm_, &op->req);
    LOCMOE_RETURN_IF_ERROR(wait(rc, op, "allgather"));
    if (bytes) std::memcpy(recv, op->recv.data(), bytes * size_);
    return ok_status();
  }
  Status allreduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op_) override {
    LOCMOE_RETURN_IF_ERROR(check_count(count, "allreduce"));
    LOCMOE_RETURN_IF_ERROR(
        begin({kAllreduce, static_cast<uint32_t>(type) << 8 | static_cast<uint32_t>(op_), 0, count}));
    const size_t bytes = count * data_type_size(type);
    auto op = std::make_unique<Pending>(static_cast<const char*>(send), bytes, bytes);
    int rc = MPI_Iallreduce(op->send.data(), op->recv.data(), static_cast<int>(count), mpi_type(type), mpi_op(op_),
                            comm_, &op->req);
    LOCMOE_RETURN_IF_ERROR(wait(rc, op, "allreduce"));
    if (bytes) std::memcpy(recv, op->recv.data(), bytes);
    return ok_status();
  }
  Status broadcast(void* buf, size_t bytes, int root) override {
    LOCMOE_CHECK_RANGE(root >= 0 && root < size_, "broadcast root {} out of range [0, {})", root, size_);
    LOCMOE_RETURN_IF_ERROR(check_count(bytes, "broadcast"));
    LOCMOE_RETURN_IF_ERROR(begin({kBroadcast, static_cast<uint32_t>(root), 0, bytes}));
    auto op = std::make_unique<Pending>(nullptr, 0, bytes);
    if (rank_ == root && bytes) std::memcpy(op->recv.data(), buf, bytes);
    int rc = MPI_Ibcast(op->recv.data(), static_cast<int>(bytes), MPI_BYTE, root, comm_, &op->req);
    LOCMOE_RETURN_IF_ERROR(wait(rc, op, "broadcast"));
    if (bytes) std::memcpy(buf, op->recv.data(), bytes);
    return ok_status();
  }
  // The header round is itself a barrier.
  Status barrier() override { return begin({kBarrier, 0, 0, 0}); }

  Status reject(const Status& why) override {
    if (size_ == 1) return why;
    reason_out_ = why.message();
    (void)begin({kReject, 0, 0, 0});  // the peers' verdict; ours is `why` whatever the round gave
    reason_out_.clear();
    return why;
  }

  void abort(std::string_view message) override {
    if (size_ == 1 || !dead_.empty()) return;
    dead_ = fmt::format("this rank aborted the group: {}", message);
    std::string text(message.substr(0, kReasonBytes - 1));
    text.resize(kReasonBytes, '\0');
    std::vector<std::unique_ptr<Pending>> sends;
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      auto op = std::make_unique<Pending>(text.data(), kReasonBytes, 0);
      if (MPI_Isend(op->send.data(), static_cast<int>(kReasonBytes), MPI_CHAR, p, kAbortTag, comm_, &op->req) ==
          MPI_SUCCESS)
        sends.push_back(std::move(op));
    }
    // Push the (eager) notices out now: this rank may be about to exit. Their buffers outlive
    // the requests, which complete on their own.
    for (int i = 0; i < 100; ++i) {
      bool all = true;
      for (auto& op : sends) {
        int done = 1;
        if (op->req != MPI_REQUEST_NULL) MPI_Test(&op->req, &done, MPI_STATUS_IGNORE);
        all = all && done;
      }
      if (all) break;
    }
    for (auto& op : sends) {
      if (op->req != MPI_REQUEST_NULL) MPI_Request_free(&op->req);
      abandon(std::move(op));
    }
  }

 private:
  static constexpr int kAbortTag = 0x4c4d;  // on the bootstrap's own duplicate communicator

  // A collective's own buffers: a request that never completes (timeout, abort) may still write
  // into them whenever the peers that did arrive progress, so they must outlive it.
  struct Pending {
    Pending(const char* in, size_t in_bytes, size_t out_bytes) : recv(out_bytes) {
      if (in_bytes) send.assign(in, in + in_bytes);
    }
    MPI_Request req = MPI_REQUEST_NULL;
    std::vector<char> send, recv;
  };
  // Kept until the process ends (the abandoned communicator is never freed either).
  static void abandon(std::unique_ptr<Pending> p) {
    static auto* graveyard = new std::vector<std::unique_ptr<Pending>>();
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    graveyard->push_back(std::move(p));
  }

  static Status check_count(size_t n, const char* op) {
    LOCMOE_CHECK_RANGE(n <= static_cast<size_t>(INT32_MAX), "{} of {} elements exceeds MPI's int count", op, n);
    return ok_status();
  }

  // The header round: every rank's Header, checked; a rejection's reasons in a second round.
  Status begin(Header mine) {
    LOCMOE_CHECK(dead_.empty(), Code::kPeerFailure, "MPI bootstrap on rank {} is unusable: {}", rank_, dead_);
    mine.seq = ++seq_;
    if (size_ == 1) return ok_status();
    auto op = std::make_unique<Pending>(reinterpret_cast<const char*>(&mine), sizeof(Header), sizeof(Header) * size_);
    int rc = MPI_Iallgather(op->send.data(), sizeof(Header), MPI_BYTE, op->recv.data(), sizeof(Header), MPI_BYTE,
                            comm_, &op->req);
    LOCMOE_RETURN_IF_ERROR(wait(rc, op, describe(mine).c_str()));
    std::vector<Header> all(static_cast<size_t>(size_));
    std::memcpy(all.data(), op->recv.data(), sizeof(Header) * size_);
    const int rejecting = first_reject(all);
    if (rejecting < 0) {
      // Ranks in different collectives are out of step: every later call would pair wrongly.
      Status s = check_headers(all, rank_, "MPI");
      if (!s.ok()) dead_ = s.message();
      return s;
    }
    std::vector<char> out(kReasonBytes, '\0');
    std::memcpy(out.data(), reason_out_.data(), std::min(reason_out_.size(), kReasonBytes - 1));
    op = std::make_unique<Pending>(out.data(), kReasonBytes, kReasonBytes * size_);
    rc = MPI_Iallgather(op->send.data(), static_cast<int>(kReasonBytes), MPI_CHAR, op->recv.data(),
                        static_cast<int>(kReasonBytes), MPI_CHAR, comm_, &op->req);
    LOCMOE_RETURN_IF_ERROR(wait(rc, op, "the reasons of a rejection"));
    const char* reason = op->recv.data() + kReasonBytes * static_cast<size_t>(rejecting);
    return rejected(rejecting, mine, std::string_view(reason, strnlen(reason, kReasonBytes)));
  }

  // Polls a non-blocking collective against the deadline, and the abort notices meanwhile. On
  // timeout or abort the request is left pending (MPI cannot cancel collectives); the bootstrap is
  // unusable afterwards, which the error says.
  Status wait(int rc, std::unique_ptr<Pending>& pending, const char* op) {
    LOCMOE_CHECK(rc == MPI_SUCCESS, Code::kSystemError, "MPI bootstrap {} failed: {}", op, mpi_error_text(rc));
    Status s = wait_for(pending->req, op);
    if (!s.ok()) abandon(std::move(pending));
    return s;
  }
  Status wait_for(MPI_Request& req, const char* op) {
    int rc = MPI_SUCCESS;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    for (unsigned spins = 0;; ++spins) {
      int done = 0;
      rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        dead_ = mpi_error_text(rc);
        return error(Code::kPeerFailure, "MPI bootstrap {} on rank {} failed: {}", op, rank_, dead_);
      }
      if (done) return ok_status();
      if (spins % 16 == 0) LOCMOE_RETURN_IF_ERROR(poll_notice(op));
      if (std::chrono::steady_clock::now() > deadline) break;
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    dead_ = fmt::format("{} timed out", op);
    return error(Code::kTimeout,
                 "MPI bootstrap {} on rank {} did not complete within LOCMOE_TIMEOUT_S={} s: a peer is dead or "
                 "stopped; the bootstrap is unusable now",
                 op, rank_, timeout_s_);
  }
  Status poll_notice(const char* op) {
    if (notice_in_->req == MPI_REQUEST_NULL) return ok_status();
    int got = 0;
    MPI_Status st;
    if (MPI_Test(&notice_in_->req, &got, &st) != MPI_SUCCESS || !got) return ok_status();
    notice_in_->req = MPI_REQUEST_NULL;
    const std::string_view text(notice_in_->recv.data(), strnlen(notice_in_->recv.data(), kReasonBytes));
    dead_ = fmt::format("rank {} aborted the group: {}", st.MPI_SOURCE, text);
    return error(Code::kPeerFailure, "MPI bootstrap {} on rank {}: rank {} aborted the group: {}", op, rank_,
                 st.MPI_SOURCE, text);
  }

  MPI_Comm comm_;
  int rank_, size_;
  double timeout_s_;
  uint64_t seq_ = 0;
  std::string reason_out_;  // this rank's reason while it rejects
  std::string dead_;        // why the bootstrap is unusable ("" while usable)
  std::unique_ptr<Pending> notice_in_;  // the abort notice receive (any peer)
};

}  // namespace

Result<std::unique_ptr<Bootstrap>> make_mpi_bootstrap(MPI_Comm comm, double timeout_s) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  LOCMOE_CHECK(initialized, Code::kInvalidArgument, "MPI bootstrap needs MPI_Init first");
  LOCMOE_ASSIGN_OR_RETURN(timeout_s, resolve_timeout(timeout_s));
  LOCMOE_ASSIGN_OR_RETURN(MPI_Comm dup, dup_comm_with_deadline(comm, timeout_s));
  int rank = 0, size = 0;
  MPI_Comm_rank(dup, &rank);
  MPI_Comm_size(dup, &size);
  return std::unique_ptr<Bootstrap>(new MpiBootstrap(dup, rank, size, timeout_s));
}

}  // namespace locmoe
