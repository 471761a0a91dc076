// NCCL transport (device memory): a communicator from a unique id that rank 0 creates and
// broadcasts through the bootstrap, created non-blocking so its setup has our deadline too.
// post_send/post_recv only queue; the first test() after a batch of posts issues the whole batch
// as one ncclGroupStart/ncclSend/ncclRecv/ncclGroupEnd on the stream of the first post (each
// call's result checked) and records an event; the batch's requests are done when that event is. NCCL carries no tags or
// lengths: messages between a pair are matched in posting order, and the communicator's count
// metadata (checked before any data moves) is what guarantees the lengths agree. NCCL itself is
// loaded at run time (nccl_api.h): every NCCL call goes through the table nccl_.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "locmoe/comm/communicator.h"
#include "locmoe/comm/transport.h"
#include "locmoe/core/check.h"
#include "locmoe/core/params.h"
#include "nccl_api.h"

namespace locmoe {
namespace {

// A batch of posts issued as one ncclGroup, done when its event is. Batches and request slots
// live in grow-only pools (an event is created once per batch slot and reused), so a steady
// stream of exchanges allocates nothing.
struct Batch {
  cudaEvent_t event = nullptr;
  int refs = 0;  // requests of the batch not yet released
};

struct PendingOp {
  bool is_send;
  int peer;
  void* buf;
  uint64_t bytes;
  cudaStream_t stream;
  uint32_t slot;
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
    // NCCL is loaded here, on first use, never at load time (nccl_api.h says why).
    LOCMOE_ASSIGN_OR_RETURN(nccl_, nccl::api());
    ncclUniqueId id{};
    if (bootstrap.rank() == 0) {
      ncclResult_t r = nccl_->GetUniqueId(&id);
      LOCMOE_CHECK(r == ncclSuccess, Code::kSystemError, "ncclGetUniqueId: {}", nccl_->GetErrorString(r));
    }
    LOCMOE_RETURN_IF_ERROR(bootstrap.broadcast(&id, sizeof id, 0));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = nccl_->CommInitRankConfig(&comm_, size_, id, rank_, &config);
    LOCMOE_CHECK(r == ncclSuccess || r == ncclInProgress, Code::kSystemError, "ncclCommInitRankConfig: {}",
                 nccl_->GetErrorString(r));
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
    const int batch = slot_batch_[slot_of(req)];
    cudaError_t ce = cudaEventQuery(batches_[batch].event);
    if (ce == cudaErrorNotReady) {
      ncclResult_t async = ncclSuccess;
      nccl_->CommGetAsyncError(comm_, &async);
      if (async == ncclSuccess || async == ncclInProgress) return ok_status();
      release(req);
      return error(Code::kPeerFailure, "NCCL {} rank {} failed: {}", req.is_send ? "send to" : "receive from",
                   req.peer, nccl_->GetErrorString(async));
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
    for (Batch& b : batches_)
      if (b.event) cudaEventDestroy(b.event), b.event = nullptr;
    if (!comm_) return ok_status();
    // A communicator with a dead peer cannot be destroyed collectively: abort it instead.
    if (failed_) nccl_->CommAbort(comm_);
    else nccl_->CommDestroy(comm_);
    comm_ = nullptr;
    return ok_status();
  }

 private:
  Status post(Request& req, bool is_send, int peer, uint64_t tag, void* buf, uint64_t bytes, void* stream) {
    LOCMOE_CHECK_RANGE(peer >= 0 && peer < size_, "peer rank {} out of range [0, {})", peer, size_);
    uint32_t slot;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = static_cast<uint32_t>(slot_batch_.size());
      slot_batch_.push_back(-1);
    }
    slot_batch_[slot] = -1;  // set by launch()
    pending_.push_back(PendingOp{is_send, peer, buf, bytes, static_cast<cudaStream_t>(stream), slot});
    req = Request{this, peer, is_send, tag, bytes, 0, reinterpret_cast<void*>(uintptr_t{slot} + 1), false};
    return ok_status();
  }
  static uint32_t slot_of(const Request& req) {
    return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(req.handle) - 1);
  }
  Status launch() {
    if (pending_.empty()) return ok_status();
    int batch;
    if (!free_batches_.empty()) {
      batch = free_batches_.back();
      free_batches_.pop_back();
    } else {
      batch = static_cast<int>(batches_.size());
      batches_.push_back(Batch{});
      cudaError_t ce = cudaEventCreateWithFlags(&batches_.back().event, cudaEventDisableTiming);
      if (ce != cudaSuccess) {
        batches_.pop_back();
        pending_.clear();
        return error(Code::kSystemError, "cudaEventCreate: {}", cudaGetErrorString(ce));
      }
    }
    Batch& b = batches_[batch];
    b.refs = static_cast<int>(pending_.size());
    for (const PendingOp& op : pending_) slot_batch_[op.slot] = batch;
    cudaStream_t stream = pending_.front().stream;
    ncclResult_t r = nccl_->GroupStart();
    // Every call is checked: a failed ncclSend/ncclRecv inside the group fails the whole batch.
    ncclResult_t first_bad = r;
    int bad_peer = -1;
    bool bad_send = false;
    for (const PendingOp& op : pending_) {
      if (first_bad != ncclSuccess) break;
      r = op.is_send ? nccl_->Send(op.buf, op.bytes, ncclUint8, op.peer, comm_, stream)
                     : nccl_->Recv(op.buf, op.bytes, ncclUint8, op.peer, comm_, stream);
      if (r != ncclSuccess && r != ncclInProgress) first_bad = r, bad_peer = op.peer, bad_send = op.is_send;
    }
    const ncclResult_t end = nccl_->GroupEnd();
    pending_.clear();
    LOCMOE_CHECK(first_bad == ncclSuccess || first_bad == ncclInProgress, Code::kSystemError,
                 "NCCL {} rank {} could not be issued: {}", bad_send ? "send to" : "receive from", bad_peer,
                 nccl_->GetErrorString(first_bad));
    LOCMOE_CHECK(end == ncclSuccess || end == ncclInProgress, Code::kSystemError, "ncclGroupEnd: {}",
                 nccl_->GetErrorString(end));
    LOCMOE_RETURN_IF_ERROR(wait_async("ncclGroupEnd"));
    cudaError_t ce = cudaEventRecord(b.event, stream);
    LOCMOE_CHECK(ce == cudaSuccess, Code::kSystemError, "cudaEventRecord: {}", cudaGetErrorString(ce));
    return ok_status();
  }
  // Frees the request's slot; the batch goes back to the pool (its event kept) with its last one.
  void release(Request& req) {
    const uint32_t slot = slot_of(req);
    const int batch = slot_batch_[slot];
    if (batch >= 0 && --batches_[batch].refs == 0) free_batches_.push_back(batch);
    if (batch < 0) {  // never launched: drop it from the pending batch
      for (size_t i = 0; i < pending_.size(); ++i)
        if (pending_[i].slot == slot) {
          pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
          break;
        }
    }
    slot_batch_[slot] = -1;
    free_slots_.push_back(slot);
    req.handle = nullptr;
  }
  // Non-blocking NCCL calls return ncclInProgress; poll against our deadline, abort past it.
  Status wait_async(const char* what) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    ncclResult_t state = ncclInProgress;
    while (true) {
      nccl_->CommGetAsyncError(comm_, &state);
      if (state != ncclInProgress) break;
      if (Clock::now() > deadline) {
        failed_ = true;
        return error(Code::kTimeout, "{} on rank {} did not finish within {} s", what, rank_, timeout_s_);
      }
    }
    LOCMOE_CHECK(state == ncclSuccess, Code::kSystemError, "{}: {}", what, nccl_->GetErrorString(state));
    return ok_status();
  }

  int rank_, size_;
  double timeout_s_;
  const nccl::Api* nccl_ = nullptr;
  ncclComm_t comm_ = nullptr;
  std::vector<PendingOp> pending_;
  std::vector<Batch> batches_;
  std::vector<int> free_batches_;
  std::vector<int> slot_batch_;  // request slot -> its batch, -1 before launch
  std::vector<uint32_t> free_slots_;
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
