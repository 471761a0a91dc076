// MPI transport: non-blocking MPI_Isend/MPI_Irecv on a duplicate of MPI_COMM_WORLD with
// MPI_ERRORS_RETURN, polled with MPI_Test. Open MPI 4.1 has no ULFM: a receive from a dead peer
// never completes by itself, so the deadline is the caller's (wait_all), never MPI's.
#include <mpi.h>

#include <climits>
#include <vector>

#include "locmoe/comm/communicator.h"
#include "locmoe/comm/transport.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "mpi_error.h"

namespace locmoe {
namespace {

// The MPI_Request lives in Request::handle itself (Open MPI: a pointer; MPICH: an int), so a
// message costs no allocation of ours.
static_assert(sizeof(MPI_Request) <= sizeof(void*), "MPI_Request must fit in Request::handle");
MPI_Request* mpi_request(Request& req) { return reinterpret_cast<MPI_Request*>(&req.handle); }

class MpiTransport final : public Transport {
 public:
  MpiTransport(MPI_Comm comm, int rank, int size, std::vector<int> world_of)
      : comm_(comm), rank_(rank), size_(size), world_of_(std::move(world_of)) {}
  ~MpiTransport() override { (void)finalize(); }

  const char* name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool can_reach(int peer) const override { return peer >= 0 && peer < size_; }
  bool supports(MemoryKind mem) const override { return mem == MemoryKind::kHost; }

  Status post_send(Request& req, int peer, uint64_t tag, const void* buf, uint64_t bytes, void*) override {
    LOCMOE_RETURN_IF_ERROR(check(peer, tag, bytes));
    req = Request{this, peer, true, tag, bytes, 0, nullptr, false};
    int rc = MPI_Isend(buf, static_cast<int>(bytes), MPI_BYTE, world_of_[peer], static_cast<int>(tag), comm_,
                       mpi_request(req));
    if (rc != MPI_SUCCESS) {
      req = Request{};
      return error(Code::kPeerFailure, "MPI_Isend of {} bytes to rank {} failed: {}", bytes, peer, mpi_error_text(rc));
    }
    return ok_status();
  }
  Status post_recv(Request& req, int peer, uint64_t tag, void* buf, uint64_t bytes, void*) override {
    LOCMOE_RETURN_IF_ERROR(check(peer, tag, bytes));
    req = Request{this, peer, false, tag, bytes, 0, nullptr, false};
    int rc = MPI_Irecv(buf, static_cast<int>(bytes), MPI_BYTE, world_of_[peer], static_cast<int>(tag), comm_,
                       mpi_request(req));
    if (rc != MPI_SUCCESS) {
      req = Request{};
      return error(Code::kPeerFailure, "MPI_Irecv of {} bytes from rank {} failed: {}", bytes, peer, mpi_error_text(rc));
    }
    return ok_status();
  }
  Status test(Request& req) override {
    MPI_Request* r = mpi_request(req);
    int flag = 0;
    MPI_Status st;
    // Single-completion calls report errors in their return code (MPI_ERROR of the status is
    // set only by the multiple-completion calls).
    int rc = MPI_Test(r, &flag, &st);
    if (rc != MPI_SUCCESS) {
      const int err = rc;
      int cls = 0;
      MPI_Error_class(err, &cls);
      release(req);
      if (cls == MPI_ERR_TRUNCATE)
        return error(Code::kMismatch, "a message with tag {} is longer than the {} bytes rank {} posted for it",
                     req.tag, req.bytes, rank_);
      return error(Code::kPeerFailure, "MPI {} failed: {}", req.is_send ? "send" : "receive", mpi_error_text(err));
    }
    if (!flag) return ok_status();
    if (req.is_send) {
      req.bytes_done = req.bytes;
    } else {
      MPI_Count n = 0;
      MPI_Get_elements_x(&st, MPI_BYTE, &n);
      req.bytes_done = static_cast<uint64_t>(n);
    }
    release(req);
    req.done = true;
    return ok_status();
  }
  void progress() override {
    int flag = 0;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, MPI_STATUS_IGNORE);
  }
  void cancel(Request& req) override {
    MPI_Request* r = mpi_request(req);
    if (req.handle == nullptr || *r == MPI_REQUEST_NULL) return;  // never posted, or released
    // Receives can be cancelled; sends to a dead peer cannot (MPI_Cancel of a send is deprecated
    // and unreliable), so the request is dropped: MPI may keep its internal state until exit.
    if (!req.is_send) {
      MPI_Cancel(r);
      MPI_Request_free(r);
    } else {
      MPI_Request_free(r);
    }
    release(req);
  }
  void mark_failed() override { failed_ = true; }
  Status finalize() override {
    if (comm_ == MPI_COMM_NULL) return ok_status();
    int finalized = 0;
    MPI_Finalized(&finalized);
    // MPI_Comm_free is collective-free but waits for pending operations in some MPIs; after a
    // failure the communicator is abandoned instead.
    if (!finalized && !failed_) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
    return ok_status();
  }

 private:
  Status check(int peer, uint64_t tag, uint64_t bytes) const {
    LOCMOE_CHECK_RANGE(peer >= 0 && peer < size_, "peer rank {} out of range [0, {})", peer, size_);
    LOCMOE_CHECK_RANGE(tag < (1u << 30), "tag {} exceeds 2^30", tag);
    LOCMOE_CHECK_RANGE(bytes <= static_cast<uint64_t>(INT_MAX),
                       "MPI message of {} bytes exceeds INT_MAX; chunk it (LOCMOE_CHUNK_BYTES)", bytes);
    return ok_status();
  }
  // After MPI_Test completed or freed the request: nothing of ours to free.
  static void release(Request& req) { req.handle = nullptr; }

  MPI_Comm comm_;
  int rank_, size_;
  std::vector<int> world_of_;  // bootstrap rank -> rank in comm_
  bool failed_ = false;
};

}  // namespace

Result<std::unique_ptr<Transport>> make_mpi_transport(Bootstrap& bootstrap) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  LOCMOE_CHECK(initialized, Code::kUnsupported, "the MPI transport needs MPI_Init first");
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  LOCMOE_CHECK(world_size == bootstrap.size(), Code::kMismatch,
               "MPI_COMM_WORLD has {} ranks but the bootstrap has {}: the MPI transport needs the same ranks",
               world_size, bootstrap.size());
  std::vector<int> world_of(bootstrap.size());
  LOCMOE_RETURN_IF_ERROR(bootstrap.allgather(&world_rank, world_of.data(), sizeof(int)));
  LOCMOE_ASSIGN_OR_RETURN(double timeout_s, params::get_float(params::Id::timeout_s));
  LOCMOE_ASSIGN_OR_RETURN(MPI_Comm comm, dup_comm_with_deadline(MPI_COMM_WORLD, timeout_s));
  return std::unique_ptr<Transport>(new MpiTransport(comm, bootstrap.rank(), bootstrap.size(), std::move(world_of)));
}

}  // namespace locmoe
