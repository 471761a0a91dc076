// NCCL transport (device memory): a communicator from a unique id that rank 0 creates and
// broadcasts through the bootstrap, created non-blocking so its setup has our deadline too.
// post_send/post_recv only queue; the first test() after a batch of posts issues the whole batch
// as one ncclGroupStart/ncclSend/ncclRecv/ncclGroupEnd on the stream of the first post and
// records an event; the batch's requests are done when that event is. NCCL carries no tags or
// lengths: messages between a pair are matched in posting order, and the communicator's count
// metadata (checked before any data moves) is what guarantees the lengths agree.
#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
#include <vector>

#include "locmoe/comm/communicator.h"
#include "locmoe/comm/transport.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"

namespace locmoe {
namespace {

struct Batch {
  cudaEvent_t event = nullptr;
  int refs = 0;
};

struct PendingOp {
  bool is_send;
  int peer;
  void* buf;
  uint64_t bytes;
  cudaStream_t stream;
  std::shared_ptr<Batch>* slot;
};

class NcclTransport final : public Transport {
 public:
  NcclTransport(int rank, int size, double timeout_s) : rank_(rank), size_(size), timeout_s_(timeout_s) {}
  ~NcclTransport() override { (void)finalize(); }

  Status init(Bootstrap& bootstrap) {
    int devices = 0;
    cudaError_t ce = cudaGetDeviceCount(&devices);
    LOCMOE_CHECK(ce == cudaSuccess && devices > 0, Code::kUnsupported, "the NCCL transport needs a GPU: {}",
                 ce == cudaSuccess ? "no device" : cudaGetErrorString(ce));
    ncclUniqueId id{};
    if (bootstrap.rank() == 0) {
      ncclResult_t r = ncclGetUniqueId(&id);
      LOCMOE_CHECK(r == ncclSuccess, Code::kSystemError, "ncclGetUniqueId: {}", ncclGetErrorString(r));
    }
    LOCMOE_RETURN_IF_ERROR(bootstrap.broadcast(&id, sizeof id, 0));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, size_, id, rank_, &config);
    LOCMOE_CHECK(r == ncclSuccess || r == ncclInProgress, Code::kSystemError, "ncclCommInitRankConfig: {}",
                 ncclGetErrorString(r));
    return wait_async("ncclCommInitRank");
  }

  const char* name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool can_reach(int peer) const override { return peer >= 0 && peer < size_; }
  bool supports(MemoryKind mem) const override { return mem == MemoryKind::kDevice; }

  Status post_send(Request& req, int peer, uint64_t tag, const void* buf, uint64_t bytes, void* stream) override {
    return post(req, true, peer, tag, const_cast<void*>(buf), bytes, stream);
  }
  Status post_recv(Request& req, int peer, uint64_t tag, void* buf, uint64_t bytes, void* stream) override {
    return post(req, false, peer, tag, buf, bytes, stream);
  }
  Status test(Request& req) override {
    LOCMOE_RETURN_IF_ERROR(launch());
    auto* slot = static_cast<std::shared_ptr<Batch>*>(req.handle);
    cudaError_t ce = cudaEventQuery((*slot)->event);
    if (ce == cudaErrorNotReady) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async == ncclSuccess || async == ncclInProgress) return ok_status();
      release(req);
      return error(Code::kPeerFailure, "NCCL {} rank {} failed: {}", req.is_send ? "send to" : "receive from",
                   req.peer, ncclGetErrorString(async));
    }
    release(req);
    LOCMOE_CHECK(ce == cudaSuccess, Code::kSystemError, "CUDA error in NCCL exchange with rank {}: {}", req.peer,
                 cudaGetErrorString(ce));
    req.bytes_done = req.bytes;
    req.done = true;
    return ok_status();
  }
  void progress() override { (void)launch(); }
  void cancel(Request& req) override {
    if (req.handle) release(req);
  }
  void mark_failed() override { failed_ = true; }
  Status finalize() override {
    if (!comm_) return ok_status();
    // A communicator with a dead peer cannot be destroyed collectively: abort it instead.
    if (failed_) ncclCommAbort(comm_);
    else ncclCommDestroy(comm_);
    comm_ = nullptr;
    return ok_status();
  }

 private:
  Status post(Request& req, bool is_send, int peer, uint64_t tag, void* buf, uint64_t bytes, void* stream) {
    LOCMOE_CHECK_RANGE(peer >= 0 && peer < size_, "peer rank {} out of range [0, {})", peer, size_);
    auto* slot = new std::shared_ptr<Batch>();
    pending_.push_back(PendingOp{is_send, peer, buf, bytes, static_cast<cudaStream_t>(stream), slot});
    req = Request{this, peer, is_send, tag, bytes, 0, slot, false};
    return ok_status();
  }
  Status launch() {
    if (pending_.empty()) return ok_status();
    auto batch = std::make_shared<Batch>();
    cudaError_t ce = cudaEventCreateWithFlags(&batch->event, cudaEventDisableTiming);
    LOCMOE_CHECK(ce == cudaSuccess, Code::kSystemError, "cudaEventCreate: {}", cudaGetErrorString(ce));
    cudaStream_t stream = pending_.front().stream;
    ncclGroupStart();
    for (const PendingOp& op : pending_) {
      if (op.is_send) ncclSend(op.buf, op.bytes, ncclUint8, op.peer, comm_, stream);
      else ncclRecv(op.buf, op.bytes, ncclUint8, op.peer, comm_, stream);
      *op.slot = batch;
    }
    ncclResult_t r = ncclGroupEnd();
    pending_.clear();
    LOCMOE_CHECK(r == ncclSuccess || r == ncclInProgress, Code::kSystemError, "ncclGroupEnd: {}",
                 ncclGetErrorString(r));
    LOCMOE_RETURN_IF_ERROR(wait_async("ncclGroupEnd"));
    ce = cudaEventRecord(batch->event, stream);
    LOCMOE_CHECK(ce == cudaSuccess, Code::kSystemError, "cudaEventRecord: {}", cudaGetErrorString(ce));
    return ok_status();
  }
  static void release(Request& req) {
    auto* slot = static_cast<std::shared_ptr<Batch>*>(req.handle);
    if (*slot && slot->use_count() == 1 && (*slot)->event) cudaEventDestroy((*slot)->event);
    delete slot;
    req.handle = nullptr;
  }
  // Non-blocking NCCL calls return ncclInProgress; poll against our deadline, abort past it.
  Status wait_async(const char* what) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    ncclResult_t state = ncclInProgress;
    while (true) {
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclInProgress) break;
      if (Clock::now() > deadline) {
        failed_ = true;
        return error(Code::kTimeout, "{} on rank {} did not finish within {} s", what, rank_, timeout_s_);
      }
    }
    LOCMOE_CHECK(state == ncclSuccess, Code::kSystemError, "{}: {}", what, ncclGetErrorString(state));
    return ok_status();
  }

  int rank_, size_;
  double timeout_s_;
  ncclComm_t comm_ = nullptr;
  std::vector<PendingOp> pending_;
  bool failed_ = false;
};

}  // namespace

Result<std::unique_ptr<Transport>> make_nccl_transport(Bootstrap& bootstrap) {
  LOCMOE_ASSIGN_OR_RETURN(double timeout_s, params::get_float(params::Id::timeout_s));
  auto t = std::make_unique<NcclTransport>(bootstrap.rank(), bootstrap.size(), timeout_s);
  LOCMOE_RETURN_IF_ERROR(t->init(bootstrap));
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace locmoe
