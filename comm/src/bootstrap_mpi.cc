#include <chrono>
#include <thread>
#include <vector>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "mpi/mpi_error.h"

namespace locmoe {
namespace {

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

class MpiBootstrap final : public Bootstrap {
 public:
  MpiBootstrap(MPI_Comm comm, int rank, int size, double timeout_s)
      : comm_(comm), rank_(rank), size_(size), timeout_s_(timeout_s) {}
  ~MpiBootstrap() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "mpi"; }

  Status allgather(const void* send, void* recv, size_t bytes) override {
    LOCMOE_RETURN_IF_ERROR(check_count(bytes, "allgather"));
    MPI_Request req;
    int rc = MPI_Iallgather(send == recv ? MPI_IN_PLACE : send, static_cast<int>(bytes), MPI_BYTE,
                            recv, static_cast<int>(bytes), MPI_BYTE, comm_, &req);
    return wait(rc, req, "allgather");
  }
  Status allreduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override {
    LOCMOE_RETURN_IF_ERROR(check_count(count, "allreduce"));
    MPI_Request req;
    int rc = MPI_Iallreduce(send == recv ? MPI_IN_PLACE : send, recv, static_cast<int>(count),
                            mpi_type(type), mpi_op(op), comm_, &req);
    return wait(rc, req, "allreduce");
  }
  Status broadcast(void* buf, size_t bytes, int root) override {
    LOCMOE_CHECK_RANGE(root >= 0 && root < size_, "broadcast root {} out of range [0, {})", root, size_);
    LOCMOE_RETURN_IF_ERROR(check_count(bytes, "broadcast"));
    MPI_Request req;
    int rc = MPI_Ibcast(buf, static_cast<int>(bytes), MPI_BYTE, root, comm_, &req);
    return wait(rc, req, "broadcast");
  }
  Status barrier() override {
    MPI_Request req;
    int rc = MPI_Ibarrier(comm_, &req);
    return wait(rc, req, "barrier");
  }

 private:
  static Status check_count(size_t n, const char* op) {
    LOCMOE_CHECK_RANGE(n <= static_cast<size_t>(INT32_MAX), "{} of {} elements exceeds MPI's int count", op, n);
    return ok_status();
  }
  // Polls a non-blocking collective against the deadline. On timeout the request is left
  // pending (MPI cannot cancel collectives); the communicator is unusable afterwards, which the
  // error says.
  Status wait(int rc, MPI_Request& req, const char* op) {
    LOCMOE_CHECK(rc == MPI_SUCCESS, Code::kSystemError, "MPI bootstrap {} failed: {}", op, mpi_error_text(rc));
    return wait_mpi_request(req, timeout_s_, fmt::format("MPI bootstrap {} on rank {}", op, rank_),
                            "; the bootstrap is unusable now");
  }

  MPI_Comm comm_;
  int rank_, size_;
  double timeout_s_;
};

}  // namespace

Result<std::unique_ptr<Bootstrap>> make_mpi_bootstrap(MPI_Comm comm) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  LOCMOE_CHECK(initialized, Code::kInvalidArgument, "MPI bootstrap needs MPI_Init first");
  LOCMOE_ASSIGN_OR_RETURN(double timeout_s, params::get_float(params::Id::timeout_s));
  LOCMOE_CHECK_ARG(timeout_s > 0, "LOCMOE_TIMEOUT_S={} must be positive", timeout_s);
  LOCMOE_ASSIGN_OR_RETURN(MPI_Comm dup, dup_comm_with_deadline(comm, timeout_s));
  int rank = 0, size = 0;
  MPI_Comm_rank(dup, &rank);
  MPI_Comm_size(dup, &size);
  return std::unique_ptr<Bootstrap>(new MpiBootstrap(dup, rank, size, timeout_s));
}

}  // namespace locmoe
