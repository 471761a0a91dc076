#include "locmoe/ep/dispatcher.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>

#include "locmoe/core/check.h"
#include "locmoe/kernels/layout.h"
#include "locmoe/kernels/ops.h"

namespace locmoe {

namespace {
// A 64-byte aligned host allocation (the kernels carve layouts from 16-byte aligned buffers).
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes) data_ = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t(64)));
  }
  HostBuffer(HostBuffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_) { o.data_ = nullptr; o.bytes_ = 0; }
  HostBuffer& operator=(HostBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~HostBuffer() {
    if (data_) ::operator delete(data_, std::align_val_t(64));
  }
  unsigned char* data() const { return data_; }
  size_t size() const { return bytes_; }

 private:
  unsigned char* data_ = nullptr;
  size_t bytes_ = 0;
};
}  // namespace

// Layouts of one dispatch (host; the plan is on the host), carved once for the dispatcher's limits.
struct DispatchHandle::Impl {
  HostBuffer send_buf, recv_buf;
  kernels::DispatchLayout send;  // step 1: copies of this rank's tokens
  kernels::ExpertLayout recv;    // step 4: expert-major rows of the received slots
  std::vector<int32_t> recv_rank_count, recv_rank_offset;  // [R], [R+1] rows from each rank
  std::vector<int32_t> recv_slot_expert;                   // [max_recv*k]
  std::vector<float> recv_slot_weight;                     // [max_recv*k]
  int32_t C = 0, N = 0;
};

DispatchHandle::~DispatchHandle() = default;

// Transient buffers shared by every step of the dispatcher (steps run one at a time).
struct Dispatcher::Work {
  int32_t max_copies = 0;  // max_tokens * min(k, R)
  int32_t max_recv = 0;    // max_recv_rows
  HostBuffer rows_a, rows_b;         // max(max_copies, max_recv) rows each
  HostBuffer meta_send, meta_recv;   // per row: k int32 local experts + k fp32 weights
  std::vector<float> dw_recv, dw_back;  // [max_recv*k], [max_copies*k]
  std::vector<uint64_t> send_counts, send_displs, recv_counts, recv_displs;  // [R] bytes
};

int Dispatcher::rank() const { return comm_->rank(); }
int Dispatcher::num_ranks() const { return comm_->size(); }

int64_t Dispatcher::max_expert_rows() const {
  return kernels::max_expert_rows(work_->max_recv, config_.top_k, config_.experts_per_rank, config_.align);
}

size_t Dispatcher::workspace_bytes() const {
  const Work& w = *work_;
  return w.rows_a.size() + w.rows_b.size() + w.meta_send.size() + w.meta_recv.size() +
         sizeof(float) * (w.dw_recv.size() + w.dw_back.size());
}

namespace {
// Where the kernels run for a dispatcher's memory kind.
kernels::Exec exec_for(const DispatcherConfig& c, void* stream) {
  return kernels::Exec{c.memory == MemoryKind::kDevice ? kernels::Device::kCuda : kernels::Device::kCpu, stream};
}
}  // namespace

Result<std::unique_ptr<Dispatcher>> Dispatcher::create(Bootstrap& bootstrap, Communicator& comm,
                                                       const DispatcherConfig& c) {
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  LOCMOE_CHECK_ARG(c.hidden > 0 && c.hidden <= kIntMax, "hidden size {} must be in [1, 2^31)", c.hidden);
  LOCMOE_CHECK_ARG(c.experts_per_rank > 0, "experts_per_rank {} must be positive", c.experts_per_rank);
  LOCMOE_CHECK_ARG(c.max_tokens >= 0, "max_tokens {} must be non-negative", c.max_tokens);
  LOCMOE_CHECK_ARG(c.top_k > 0, "top_k {} must be positive", c.top_k);
  LOCMOE_CHECK_ARG(c.align >= 1, "align {} must be >= 1", c.align);
  LOCMOE_CHECK_ARG(c.max_recv_rows >= 0, "max_recv_rows {} must be non-negative", c.max_recv_rows);
  LOCMOE_CHECK_ARG(kernels::dtype_size(c.dtype) != 0, "dtype {} must be f32 (0) or bf16 (1)",
                   static_cast<int>(c.dtype));
  LOCMOE_CHECK_ARG(c.memory == MemoryKind::kHost || c.memory == MemoryKind::kDevice,
                   "memory kind {} must be host (0) or device (1)", static_cast<int>(c.memory));
  LOCMOE_CHECK_ARG(bootstrap.size() == comm.size() && bootstrap.rank() == comm.rank(),
                   "bootstrap (rank {} of {}) and communicator (rank {} of {}) must be the same group",
                   bootstrap.rank(), bootstrap.size(), comm.rank(), comm.size());
  // Collective checks: every rank must agree, or the exchanges would mis-frame rows.
  LOCMOE_RETURN_IF_ERROR(check_same_on_all_ranks(bootstrap, static_cast<uint64_t>(c.hidden), "hidden size"));
  LOCMOE_RETURN_IF_ERROR(check_same_on_all_ranks(bootstrap, static_cast<uint64_t>(c.dtype), "token dtype"));
  LOCMOE_RETURN_IF_ERROR(
      check_same_on_all_ranks(bootstrap, static_cast<uint64_t>(c.experts_per_rank), "experts_per_rank"));
  LOCMOE_RETURN_IF_ERROR(check_same_on_all_ranks(bootstrap, static_cast<uint64_t>(c.top_k), "top_k"));
  LOCMOE_RETURN_IF_ERROR(check_same_on_all_ranks(bootstrap, static_cast<uint64_t>(c.memory), "memory kind"));
  // The device path needs device-resident layouts and a plan copy on the device; until the
  // Dispatcher carries them, say so instead of handing device pointers to host code.
  LOCMOE_CHECK(c.memory == MemoryKind::kHost, Code::kUnsupported,
               "Dispatcher on device memory is not implemented yet; use MemoryKind::kHost (the "
               "kernels layer's CUDA ops are usable directly)");

  const int64_t R = comm.size(), k = c.top_k;
  const int64_t max_copies = kernels::max_copies(c.max_tokens, k, R);
  const int64_t max_recv = c.max_recv_rows > 0 ? c.max_recv_rows : R * c.max_tokens;
  LOCMOE_CHECK_RANGE(max_copies * k <= kIntMax && max_recv * k <= kIntMax,
                     "max_tokens {} / max_recv_rows {} with top_k {} exceed 2^31 slots", c.max_tokens,
                     max_recv, k);
  std::unique_ptr<Dispatcher> d(new Dispatcher());
  d->config_ = c;
  d->bootstrap_ = &bootstrap;
  d->comm_ = &comm;
  auto w = std::make_unique<Work>();
  w->max_copies = static_cast<int32_t>(max_copies);
  w->max_recv = static_cast<int32_t>(max_recv);
  const size_t rb = d->row_bytes();
  const size_t max_rows = static_cast<size_t>(std::max(max_copies, max_recv));
  w->rows_a = HostBuffer(max_rows * rb);
  w->rows_b = HostBuffer(max_rows * rb);
  w->meta_send = HostBuffer(static_cast<size_t>(max_copies * k) * 8);
  w->meta_recv = HostBuffer(static_cast<size_t>(max_recv * k) * 8);
  w->dw_recv.resize(static_cast<size_t>(max_recv * k));
  w->dw_back.resize(static_cast<size_t>(max_copies * k));
  for (auto* v : {&w->send_counts, &w->send_displs, &w->recv_counts, &w->recv_displs}) v->resize(R);
  d->work_ = std::move(w);
  return d;
}

Dispatcher::~Dispatcher() = default;

Result<std::unique_ptr<DispatchHandle>> Dispatcher::make_handle() const {
  const int32_t R = comm_->size(), k = config_.top_k, L = config_.experts_per_rank;
  std::unique_ptr<DispatchHandle> h(new DispatchHandle());
  auto im = std::make_unique<DispatchHandle::Impl>();
  LOCMOE_ASSIGN_OR_RETURN(const int64_t sbytes, kernels::dispatch_layout_bytes(config_.max_tokens, k, R, L));
  im->send_buf = HostBuffer(static_cast<size_t>(sbytes));
  LOCMOE_ASSIGN_OR_RETURN(im->send, kernels::carve_dispatch_layout(im->send_buf.data(), sbytes,
                                                                   config_.max_tokens, k, R, L));
  LOCMOE_ASSIGN_OR_RETURN(const int64_t rbytes,
                          kernels::expert_layout_bytes(work_->max_recv, k, L, config_.align));
  im->recv_buf = HostBuffer(static_cast<size_t>(rbytes));
  LOCMOE_ASSIGN_OR_RETURN(im->recv, kernels::carve_expert_layout(im->recv_buf.data(), rbytes,
                                                                 work_->max_recv, k, L, config_.align));
  im->recv_rank_count.assign(R, 0);
  im->recv_rank_offset.assign(R + 1, 0);
  im->recv_slot_expert.assign(static_cast<size_t>(work_->max_recv) * k, -1);
  im->recv_slot_weight.assign(static_cast<size_t>(work_->max_recv) * k, 0.0f);
  h->impl_ = std::move(im);
  h->expert_count_.assign(L, 0);
  h->expert_offset_.assign(L + 1, 0);
  return h;
}

Status Dispatcher::check_handle(const DispatchHandle& h, const char* op) const {
  LOCMOE_CHECK_ARG(h.valid_ && h.impl_ != nullptr,
                   "{}: the handle holds no dispatch (dispatch() must succeed on it first)", op);
  LOCMOE_CHECK_ARG(h.impl_->recv_rank_count.size() == static_cast<size_t>(comm_->size()) &&
                       h.expert_count_.size() == static_cast<size_t>(config_.experts_per_rank) &&
                       h.impl_->send.max_copies == work_->max_copies && h.impl_->recv.max_recv == work_->max_recv,
                   "{}: the handle was made by another dispatcher", op);
  return ok_status();
}

Status Dispatcher::exchange_rows(const void* send_rows, void* recv_rows, const DispatchHandle& h,
                                 bool forward, size_t bytes_per_row, MemoryKind mem, void* stream,
                                 DispatchStats* stats) {
  const auto& im = *h.impl_;
  Work& w = *work_;
  // Forward: copies go source -> expert rank; backward: received rows go back (transposed counts).
  const int32_t* sc = forward ? im.send.send_rank_count : im.recv_rank_count.data();
  const int32_t* so = forward ? im.send.send_rank_offset : im.recv_rank_offset.data();
  const int32_t* rc = forward ? im.recv_rank_count.data() : im.send.send_rank_count;
  const int32_t* ro = forward ? im.recv_rank_offset.data() : im.send.send_rank_offset;
  const int R = comm_->size();
  for (int r = 0; r < R; ++r) {
    w.send_counts[r] = static_cast<uint64_t>(sc[r]) * bytes_per_row;
    w.send_displs[r] = static_cast<uint64_t>(so[r]) * bytes_per_row;
    w.recv_counts[r] = static_cast<uint64_t>(rc[r]) * bytes_per_row;
    w.recv_displs[r] = static_cast<uint64_t>(ro[r]) * bytes_per_row;
  }
  const uint64_t capacity = static_cast<uint64_t>(ro[R]) * bytes_per_row;
  LOCMOE_RETURN_IF_ERROR(comm_->alltoallv(send_rows, w.send_counts.data(), w.send_displs.data(), recv_rows,
                                          w.recv_counts.data(), w.recv_displs.data(), capacity, mem, stream));
  if (stats != nullptr) {
    const ExchangeStats& es = comm_->last_stats();
    stats->bytes_sent += es.bytes_sent;
    stats->internode_bytes_sent += es.internode_bytes_sent;
  }
  return ok_status();
}

Status Dispatcher::dispatch(const void* x, const RoutingPlan& plan, DispatchHandle& h, void* expert_in,
                            int64_t expert_in_rows, void* stream) {
  const int R = comm_->size();
  const int32_t L = config_.experts_per_rank, k = config_.top_k, H = static_cast<int32_t>(config_.hidden);
  LOCMOE_CHECK_ARG(h.impl_ && h.impl_->recv_rank_count.size() == static_cast<size_t>(R) &&
                       h.impl_->send.max_copies == work_->max_copies && h.impl_->recv.max_recv == work_->max_recv,
                   "dispatch: the handle was made by another dispatcher");
  LOCMOE_CHECK_ARG(plan.num_ranks == R && plan.rank == comm_->rank(),
                   "dispatch: plan is for rank {} of {}, this is rank {} of {}", plan.rank, plan.num_ranks,
                   comm_->rank(), R);
  LOCMOE_CHECK_ARG(plan.experts_per_rank == L && plan.num_experts == R * L,
                   "dispatch: plan has {} experts ({} per rank), the dispatcher {} x {} ranks",
                   plan.num_experts, plan.experts_per_rank, L, R);
  LOCMOE_CHECK_ARG(plan.k == k, "dispatch: plan has k = {} slots per token, dispatcher top_k = {}", plan.k, k);
  LOCMOE_CHECK_RANGE(plan.num_tokens >= 0 && plan.num_tokens <= config_.max_tokens,
                     "dispatch: plan has {} tokens, dispatcher max_tokens = {}", plan.num_tokens,
                     config_.max_tokens);
  const size_t slots = static_cast<size_t>(plan.num_tokens) * k;
  LOCMOE_CHECK_ARG(plan.expert.size() == slots && plan.weight.size() == slots &&
                       plan.slot_dropped.size() == slots && plan.node_of_rank.size() == static_cast<size_t>(R),
                   "dispatch: plan arrays do not match T={} k={} R={} (finalize_plan validates them)",
                   plan.num_tokens, k, R);
  LOCMOE_CHECK_ARG(plan.num_tokens == 0 || x != nullptr, "dispatch: x is null with {} tokens", plan.num_tokens);
  h.valid_ = false;
  auto& im = *h.impl_;
  Work& w = *work_;
  const kernels::Exec ex = exec_for(config_, stream);
  const kernels::DType dt = config_.dtype;

  // Counters of the plan itself (token conservation is checked against them below).
  int64_t accepted = 0, dropped = 0, dropped_tokens = 0;
  for (int32_t t = 0; t < plan.num_tokens; ++t) {
    bool any = false;
    for (int32_t j = 0; j < k; ++j) {
      const size_t s = static_cast<size_t>(t) * k + j;
      const int32_t e = plan.expert[s];
      LOCMOE_CHECK_RANGE(e >= -1 && e < R * L, "dispatch: token {} slot {}: expert {} out of range [-1, {})",
                         t, j, e, R * L);
      accepted += e >= 0;
      any |= e >= 0;
      dropped += plan.slot_dropped[s] != 0;
    }
    dropped_tokens += !any;
  }

  // 1. Send layout.
  LOCMOE_RETURN_IF_ERROR(kernels::dispatch_layout(ex, plan.view(), im.send).with_context("dispatch"));
  im.C = im.send.send_rank_offset[R];
  // 2. Metadata rows: k local experts (int32) then k weights (fp32) per copy.
  const size_t meta_row = static_cast<size_t>(k) * 8;
  for (int32_t c = 0; c < im.C; ++c) {
    unsigned char* m = w.meta_send.data() + c * meta_row;
    std::memcpy(m, im.send.copy_slot_expert + static_cast<size_t>(c) * k, 4 * k);
    std::memcpy(m + 4 * k, im.send.copy_slot_weight + static_cast<size_t>(c) * k, 4 * k);
  }
  // 3. Counts (announced in row bytes), then metadata and rows.
  const size_t rb = row_bytes();
  for (int r = 0; r < R; ++r) w.send_counts[r] = static_cast<uint64_t>(im.send.send_rank_count[r]) * rb;
  LOCMOE_RETURN_IF_ERROR(comm_->exchange_counts(w.send_counts.data(), w.recv_counts.data())
                             .with_context("dispatch: exchanging row counts"));
  int64_t N = 0;
  for (int r = 0; r < R; ++r) {
    LOCMOE_CHECK(w.recv_counts[r] % rb == 0, Code::kMismatch,
                 "dispatch: rank {} announced {} bytes, not a multiple of the row size {}", r,
                 w.recv_counts[r], rb);
    N += static_cast<int64_t>(w.recv_counts[r] / rb);
  }
  // Checked before any row moves; every rank reaches the exchanges below only if all pass, so a
  // rank over its limit fails alone and its peers time out naming it (no silent overflow).
  LOCMOE_CHECK_RANGE(N <= w.max_recv,
                     "dispatch: rank {} receives {} rows, more than max_recv_rows {} (raise "
                     "DispatcherConfig::max_recv_rows)", comm_->rank(), N, w.max_recv);
  im.recv_rank_offset[0] = 0;
  for (int r = 0; r < R; ++r) {
    im.recv_rank_count[r] = static_cast<int32_t>(w.recv_counts[r] / rb);
    im.recv_rank_offset[r + 1] = im.recv_rank_offset[r] + im.recv_rank_count[r];
  }
  im.N = static_cast<int32_t>(N);
  DispatchStats st;
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.meta_send.data(), w.meta_recv.data(), h, true, meta_row,
                                       MemoryKind::kHost, nullptr, nullptr)
                             .with_context("dispatch: exchanging slot metadata"));
  for (int32_t i = 0; i < im.N; ++i) {
    const unsigned char* m = w.meta_recv.data() + i * meta_row;
    std::memcpy(im.recv_slot_expert.data() + static_cast<size_t>(i) * k, m, 4 * k);
    std::memcpy(im.recv_slot_weight.data() + static_cast<size_t>(i) * k, m + 4 * k, 4 * k);
  }
  LOCMOE_RETURN_IF_ERROR(kernels::dispatch_pack(ex, im.send, kernels::ConstRows{x, plan.num_tokens, H, dt},
                                                kernels::Rows{w.rows_a.data(), im.C, H, dt})
                             .with_context("dispatch"));
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.rows_a.data(), w.rows_b.data(), h, true, rb, config_.memory, stream, &st)
                             .with_context("dispatch: exchanging token rows"));

  // 4-5. Expert-major layout and unpack.
  LOCMOE_RETURN_IF_ERROR(
      kernels::expert_layout(ex, im.recv_slot_expert.data(), im.N, im.recv).with_context("dispatch"));
  const int64_t M = im.recv.expert_offset[L];
  LOCMOE_CHECK_RANGE(M <= expert_in_rows,
                     "dispatch: expert_in has {} rows, this dispatch needs {} (max_expert_rows() = {})",
                     expert_in_rows, M, max_expert_rows());
  LOCMOE_CHECK_ARG(M == 0 || expert_in != nullptr, "dispatch: expert_in is null");
  LOCMOE_RETURN_IF_ERROR(kernels::expert_unpack(ex, im.recv, kernels::ConstRows{w.rows_b.data(), im.N, H, dt},
                                                nullptr, kernels::Rows{expert_in, static_cast<int32_t>(M), H, dt})
                             .with_context("dispatch"));

  // Token conservation: every accepted slot of this rank travels in exactly one copy's slot list,
  // and every slot received fills exactly one expert row.
  int64_t sent_slots = 0, recv_slots = 0, placed = 0;
  for (int64_t s = 0; s < static_cast<int64_t>(im.C) * k; ++s) sent_slots += im.send.copy_slot_expert[s] >= 0;
  for (int64_t s = 0; s < N * k; ++s) recv_slots += im.recv_slot_expert[s] >= 0;
  for (int32_t l = 0; l < L; ++l) {
    placed += im.recv.expert_count[l];
    h.expert_count_[l] = im.recv.expert_count[l];
    h.expert_offset_[l] = im.recv.expert_offset[l];
  }
  h.expert_offset_[L] = M;
  LOCMOE_CHECK(sent_slots == accepted, Code::kInternal,
               "token conservation: the plan accepts {} slots but the send layout carries {}", accepted, sent_slots);
  LOCMOE_CHECK(recv_slots == placed, Code::kInternal,
               "token conservation: {} slots received but {} placed in expert rows", recv_slots, placed);

  st.tokens = plan.num_tokens;
  st.accepted_slots = accepted;
  st.dropped_slots = dropped;
  st.dropped_tokens = dropped_tokens;
  st.copies_sent = im.C;
  st.rows_received = N;
  st.slots_received = placed;
  h.stats_ = st;
  h.T_ = plan.num_tokens;
  h.k_ = k;
  h.N_ = N;
  h.valid_ = true;
  return ok_status();
}

Status Dispatcher::reduce_and_return(const void* rows, const DispatchHandle& h, bool weighted, void* out,
                                     void* stream) {
  const auto& im = *h.impl_;
  Work& w = *work_;
  const int32_t H = static_cast<int32_t>(config_.hidden);
  const kernels::DType dt = config_.dtype;
  const kernels::Exec ex = exec_for(config_, stream);
  const int32_t M = static_cast<int32_t>(h.expert_rows());
  LOCMOE_CHECK_ARG(M == 0 || rows != nullptr, "expert rows are null");
  LOCMOE_CHECK_ARG(h.T_ == 0 || out != nullptr, "output is null with {} tokens", h.T_);
  LOCMOE_RETURN_IF_ERROR(kernels::slot_reduce(ex, im.recv, kernels::ConstRows{rows, M, H, dt},
                                              weighted ? im.recv_slot_weight.data() : nullptr,
                                              kernels::Rows{w.rows_b.data(), im.N, H, dt}));
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.rows_b.data(), w.rows_a.data(), h, false, row_bytes(), config_.memory,
                                       stream, nullptr));
  return kernels::token_combine(ex, im.send, kernels::ConstRows{w.rows_a.data(), im.C, H, dt},
                                kernels::Rows{out, h.T_, H, dt});
}

Status Dispatcher::combine(const void* expert_out, const DispatchHandle& h, void* out, void* stream) {
  LOCMOE_RETURN_IF_ERROR(check_handle(h, "combine"));
  return reduce_and_return(expert_out, h, true, out, stream).with_context("combine");
}

Status Dispatcher::dispatch_backward(const void* grad_expert_in, const DispatchHandle& h, void* grad_x,
                                     void* stream) {
  LOCMOE_RETURN_IF_ERROR(check_handle(h, "dispatch_backward"));
  return reduce_and_return(grad_expert_in, h, false, grad_x, stream).with_context("dispatch_backward");
}

Status Dispatcher::combine_backward(const void* grad_out, const DispatchHandle& h, const void* expert_out,
                                    void* grad_expert_out, float* grad_weights, void* stream) {
  LOCMOE_RETURN_IF_ERROR(check_handle(h, "combine_backward"));
  const auto& im = *h.impl_;
  Work& w = *work_;
  const int32_t H = static_cast<int32_t>(config_.hidden), k = h.k_;
  const int32_t M = static_cast<int32_t>(h.expert_rows());
  const kernels::DType dt = config_.dtype;
  const kernels::Exec ex = exec_for(config_, stream);
  LOCMOE_CHECK_ARG(h.T_ == 0 || grad_out != nullptr, "combine_backward: grad_out is null");
  LOCMOE_CHECK_ARG(M == 0 || expert_out != nullptr,
                   "combine_backward: expert_out is null (the weight gradient needs it)");
  // Dispatch grad_out like x (same copies, same ranks).
  LOCMOE_RETURN_IF_ERROR(kernels::dispatch_pack(ex, im.send, kernels::ConstRows{grad_out, h.T_, H, dt},
                                                kernels::Rows{w.rows_a.data(), im.C, H, dt}));
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.rows_a.data(), w.rows_b.data(), h, true, row_bytes(), config_.memory,
                                       stream, nullptr)
                             .with_context("combine_backward: exchanging gradient rows"));
  const kernels::ConstRows g{w.rows_b.data(), im.N, H, dt};
  if (grad_expert_out != nullptr)
    LOCMOE_RETURN_IF_ERROR(kernels::expert_unpack(ex, im.recv, g, im.recv_slot_weight.data(),
                                                  kernels::Rows{grad_expert_out, M, H, dt}));
  LOCMOE_RETURN_IF_ERROR(kernels::slot_dot(ex, im.recv, g, kernels::ConstRows{expert_out, M, H, dt},
                                           w.dw_recv.data()));
  // Send dw back ([N,k] in received order) and scatter it onto the token slots. Done whatever
  // this rank's grad_weights is: the exchange is collective and the peers need their dw.
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.dw_recv.data(), w.dw_back.data(), h, false, sizeof(float) * k,
                                       MemoryKind::kHost, nullptr, nullptr)
                             .with_context("combine_backward: returning weight gradients"));
  if (grad_weights == nullptr) return ok_status();
  return kernels::gather_slot_grads(ex, im.send, w.dw_back.data(), grad_weights);
}

}  // namespace locmoe
