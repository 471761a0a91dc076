#include "locmoe/ep/dispatcher.h"

#include <algorithm>
#include <cstring>

#include "host_steps.h"
#include "locmoe/core/check.h"

namespace locmoe {

size_t token_dtype_size(TokenDType dtype) noexcept {
  return dtype == TokenDType::kBFloat16 ? 2 : 4;
}
const char* token_dtype_name(TokenDType dtype) noexcept {
  return dtype == TokenDType::kBFloat16 ? "bf16" : "fp32";
}

// Layout arrays of one dispatch (host), sized once for the dispatcher's limits.
struct DispatchHandle::Impl {
  int64_t C = 0;                                    // copies sent
  std::vector<int64_t> send_rank_count, send_rank_offset;  // [R], [R+1] rows
  std::vector<int64_t> recv_rank_count, recv_rank_offset;  // [R], [R+1] rows
  std::vector<int32_t> copy_token;                  // [Cmax]
  std::vector<int32_t> copy_slot_expert;            // [Cmax*k]
  std::vector<float> copy_slot_weight;              // [Cmax*k]
  std::vector<int32_t> recv_slot_expert;            // [Nmax*k]
  std::vector<float> recv_slot_weight;              // [Nmax*k]
  std::vector<int64_t> recv_pos;                    // [Nmax*k]
};

DispatchHandle::~DispatchHandle() = default;

// Transient buffers shared by every step of the dispatcher (steps run one at a time).
struct Dispatcher::Work {
  int64_t max_copies = 0;  // max_tokens * min(k, R)
  int64_t max_recv = 0;    // max_recv_rows
  std::vector<unsigned char> rows_a, rows_b;     // max(max_copies, max_recv) rows each
  std::vector<unsigned char> meta_send, meta_recv;  // per row: k int32 experts + k fp32 weights
  std::vector<float> dw_recv, dw_back;            // [max_recv*k], [max_copies*k]
  std::vector<float> acc;                         // [max_tokens*H] fp32 accumulators
  std::vector<int64_t> bucket;                    // [R*L+1]
  std::vector<uint64_t> send_counts, send_displs, recv_counts, recv_displs;  // [R] bytes
};

int Dispatcher::rank() const { return comm_->rank(); }
int Dispatcher::num_ranks() const { return comm_->size(); }

int64_t Dispatcher::max_expert_rows() const {
  const int64_t L = config_.experts_per_rank;
  return work_->max_recv * std::min<int64_t>(config_.top_k, L) + L * (config_.align - 1);
}

size_t Dispatcher::workspace_bytes() const {
  const Work& w = *work_;
  return w.rows_a.size() + w.rows_b.size() + w.meta_send.size() + w.meta_recv.size() +
         4 * (w.dw_recv.size() + w.dw_back.size() + w.acc.size()) + 8 * w.bucket.size();
}

Result<std::unique_ptr<Dispatcher>> Dispatcher::create(Bootstrap& bootstrap, Communicator& comm,
                                                       const DispatcherConfig& c) {
  LOCMOE_CHECK_ARG(c.hidden > 0, "hidden size {} must be positive", c.hidden);
  LOCMOE_CHECK_ARG(c.experts_per_rank > 0, "experts_per_rank {} must be positive", c.experts_per_rank);
  LOCMOE_CHECK_ARG(c.max_tokens >= 0, "max_tokens {} must be non-negative", c.max_tokens);
  LOCMOE_CHECK_ARG(c.top_k > 0, "top_k {} must be positive", c.top_k);
  LOCMOE_CHECK_ARG(c.align >= 1, "align {} must be >= 1", c.align);
  LOCMOE_CHECK_ARG(c.max_recv_rows >= 0, "max_recv_rows {} must be non-negative", c.max_recv_rows);
  LOCMOE_CHECK_ARG(c.dtype == TokenDType::kFloat32 || c.dtype == TokenDType::kBFloat16,
                   "dtype {} must be fp32 (0) or bf16 (1)", static_cast<int>(c.dtype));
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
  LOCMOE_CHECK(c.memory == MemoryKind::kHost, Code::kUnsupported,
               "device memory dispatch needs the CUDA kernels of the kernels layer, which this build "
               "does not have yet; use MemoryKind::kHost");

  std::unique_ptr<Dispatcher> d(new Dispatcher());
  d->config_ = c;
  d->bootstrap_ = &bootstrap;
  d->comm_ = &comm;
  const int64_t R = comm.size(), L = c.experts_per_rank, k = c.top_k, H = c.hidden;
  auto w = std::make_unique<Work>();
  w->max_copies = static_cast<int64_t>(c.max_tokens) * std::min<int64_t>(k, R);
  w->max_recv = c.max_recv_rows > 0 ? c.max_recv_rows : R * c.max_tokens;
  const size_t rb = d->row_bytes();
  const size_t max_rows = static_cast<size_t>(std::max(w->max_copies, w->max_recv));
  w->rows_a.resize(max_rows * rb);
  w->rows_b.resize(max_rows * rb);
  w->meta_send.resize(static_cast<size_t>(w->max_copies * k) * 8);
  w->meta_recv.resize(static_cast<size_t>(w->max_recv * k) * 8);
  w->dw_recv.resize(static_cast<size_t>(w->max_recv * k));
  w->dw_back.resize(static_cast<size_t>(w->max_copies * k));
  w->acc.resize(static_cast<size_t>(std::max<int64_t>(c.max_tokens * H, H)));
  w->bucket.resize(static_cast<size_t>(std::max(R * L + 1, static_cast<int64_t>(c.max_tokens) + 1)));
  for (auto* v : {&w->send_counts, &w->send_displs, &w->recv_counts, &w->recv_displs}) v->resize(R);
  d->work_ = std::move(w);
  return d;
}

Dispatcher::~Dispatcher() = default;

Result<std::unique_ptr<DispatchHandle>> Dispatcher::make_handle() const {
  std::unique_ptr<DispatchHandle> h(new DispatchHandle());
  auto impl = std::make_unique<DispatchHandle::Impl>();
  const size_t R = static_cast<size_t>(comm_->size()), k = static_cast<size_t>(config_.top_k);
  const size_t C = static_cast<size_t>(work_->max_copies), N = static_cast<size_t>(work_->max_recv);
  impl->send_rank_count.resize(R);
  impl->send_rank_offset.resize(R + 1);
  impl->recv_rank_count.resize(R);
  impl->recv_rank_offset.resize(R + 1);
  impl->copy_token.resize(C);
  impl->copy_slot_expert.resize(C * k);
  impl->copy_slot_weight.resize(C * k);
  impl->recv_slot_expert.resize(N * k);
  impl->recv_slot_weight.resize(N * k);
  impl->recv_pos.resize(N * k);
  h->impl_ = std::move(impl);
  h->expert_count_.assign(config_.experts_per_rank, 0);
  h->expert_offset_.assign(config_.experts_per_rank + 1, 0);
  return h;
}

Status Dispatcher::check_handle(const DispatchHandle& h, const char* op) const {
  LOCMOE_CHECK_ARG(h.valid_ && h.impl_ != nullptr,
                   "{}: the handle holds no dispatch (dispatch() must succeed on it first)", op);
  LOCMOE_CHECK_ARG(h.impl_->send_rank_count.size() == static_cast<size_t>(comm_->size()) &&
                       h.expert_count_.size() == static_cast<size_t>(config_.experts_per_rank),
                   "{}: the handle was made by another dispatcher", op);
  return ok_status();
}

Status Dispatcher::exchange_rows(const void* send_rows, void* recv_rows, const DispatchHandle& h,
                                 bool forward, size_t bytes_per_row, MemoryKind mem, void* stream,
                                 DispatchStats* stats) {
  const auto& im = *h.impl_;
  Work& w = *work_;
  // Forward: copies go source -> expert rank; backward: received rows go back (transposed counts).
  const auto& sc = forward ? im.send_rank_count : im.recv_rank_count;
  const auto& so = forward ? im.send_rank_offset : im.recv_rank_offset;
  const auto& rc = forward ? im.recv_rank_count : im.send_rank_count;
  const auto& ro = forward ? im.recv_rank_offset : im.send_rank_offset;
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

namespace {
template <typename F>
void with_dtype(TokenDType dt, F&& f) {
  if (dt == TokenDType::kBFloat16)
    f(static_cast<uint16_t*>(nullptr));
  else
    f(static_cast<float*>(nullptr));
}
}  // namespace

Status Dispatcher::dispatch(const void* x, const RoutingPlan& plan, DispatchHandle& h, void* expert_in,
                            int64_t expert_in_rows, void* stream) {
  const int R = comm_->size();
  const int32_t L = config_.experts_per_rank, k = config_.top_k;
  const int64_t H = config_.hidden;
  LOCMOE_CHECK_ARG(h.impl_ && h.impl_->send_rank_count.size() == static_cast<size_t>(R) &&
                       h.expert_count_.size() == static_cast<size_t>(L),
                   "dispatch: the handle was made by another dispatcher");
  LOCMOE_CHECK_ARG(plan.num_ranks == R && plan.rank == comm_->rank(),
                   "dispatch: plan is for rank {} of {}, this is rank {} of {}", plan.rank, plan.num_ranks,
                   comm_->rank(), R);
  LOCMOE_CHECK_ARG(plan.experts_per_rank == L, "dispatch: plan has {} experts per rank, dispatcher {}",
                   plan.experts_per_rank, L);
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
  const PlanView v = plan.view();

  // 1. Send layout; validate expert ids first so the layout indexes nothing out of range.
  int64_t accepted = 0, dropped = 0, dropped_tokens = 0;
  for (int32_t t = 0; t < plan.num_tokens; ++t) {
    bool any = false;
    for (int32_t j = 0; j < k; ++j) {
      const int32_t e = plan.expert[static_cast<size_t>(t) * k + j];
      LOCMOE_CHECK_RANGE(e >= -1 && e < plan.num_experts && plan.num_experts == R * L,
                         "dispatch: token {} slot {}: expert {} out of range [-1, {})", t, j, e, R * L);
      accepted += e >= 0;
      any |= e >= 0;
      dropped += plan.slot_dropped[static_cast<size_t>(t) * k + j] != 0;
    }
    dropped_tokens += !any;
  }
  ep_detail::SendLayout lay{im.send_rank_count.data(), im.send_rank_offset.data(), im.copy_token.data(),
                            im.copy_slot_expert.data(), im.copy_slot_weight.data(), w.bucket.data()};
  im.C = ep_detail::dispatch_layout(v, lay);
  LOCMOE_CHECK(im.C <= w.max_copies, Code::kInternal, "dispatch: {} copies exceed capacity {}", im.C,
               w.max_copies);

  // 2. Metadata rows: k local experts (int32) then k weights (fp32) per copy.
  const size_t meta_row = static_cast<size_t>(k) * 8;
  for (int64_t c = 0; c < im.C; ++c) {
    unsigned char* m = w.meta_send.data() + c * meta_row;
    std::memcpy(m, im.copy_slot_expert.data() + c * k, 4 * k);
    std::memcpy(m + 4 * k, im.copy_slot_weight.data() + c * k, 4 * k);
  }
  // 3. Counts (rows, announced as row bytes), then metadata and rows.
  const size_t rb = row_bytes();
  for (int r = 0; r < R; ++r) w.send_counts[r] = static_cast<uint64_t>(im.send_rank_count[r]) * rb;
  LOCMOE_RETURN_IF_ERROR(comm_->exchange_counts(w.send_counts.data(), w.recv_counts.data())
                             .with_context("dispatch: exchanging row counts"));
  im.recv_rank_offset[0] = 0;
  for (int r = 0; r < R; ++r) {
    LOCMOE_CHECK(w.recv_counts[r] % rb == 0, Code::kMismatch,
                 "dispatch: rank {} announced {} bytes, not a multiple of the row size {}", r,
                 w.recv_counts[r], rb);
    im.recv_rank_count[r] = static_cast<int64_t>(w.recv_counts[r] / rb);
    im.recv_rank_offset[r + 1] = im.recv_rank_offset[r] + im.recv_rank_count[r];
  }
  const int64_t N = im.recv_rank_offset[R];
  LOCMOE_CHECK_RANGE(N <= w.max_recv,
                     "dispatch: rank {} receives {} rows, more than max_recv_rows {} (raise "
                     "DispatcherConfig::max_recv_rows)", comm_->rank(), N, w.max_recv);
  DispatchStats st;
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.meta_send.data(), w.meta_recv.data(), h, true, meta_row,
                                       MemoryKind::kHost, nullptr, nullptr)
                             .with_context("dispatch: exchanging slot metadata"));
  for (int64_t i = 0; i < N; ++i) {
    const unsigned char* m = w.meta_recv.data() + i * meta_row;
    std::memcpy(im.recv_slot_expert.data() + i * k, m, 4 * k);
    std::memcpy(im.recv_slot_weight.data() + i * k, m + 4 * k, 4 * k);
  }
  for (int64_t s = 0; s < N * k; ++s)
    LOCMOE_CHECK(im.recv_slot_expert[s] >= -1 && im.recv_slot_expert[s] < L, Code::kMismatch,
                 "dispatch: received local expert {} out of range [-1, {})", im.recv_slot_expert[s], L);
  ep_detail::gather_rows(x, im.copy_token.data(), im.C, rb, w.rows_a.data());
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.rows_a.data(), w.rows_b.data(), h, true, rb, config_.memory, stream, &st)
                             .with_context("dispatch: exchanging token rows"));

  // 4-5. Expert-major layout and unpack.
  const int64_t placed = ep_detail::expert_layout(im.recv_slot_expert.data(), N, k, L, config_.align,
                                                  h.expert_count_.data(), h.expert_offset_.data(),
                                                  im.recv_pos.data());
  LOCMOE_CHECK_RANGE(h.expert_offset_[L] <= expert_in_rows,
                     "dispatch: expert_in has {} rows, this dispatch needs {} (max_expert_rows() = {})",
                     expert_in_rows, h.expert_offset_[L], max_expert_rows());
  LOCMOE_CHECK_ARG(h.expert_offset_[L] == 0 || expert_in != nullptr, "dispatch: expert_in is null");
  with_dtype(config_.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ep_detail::expert_unpack(reinterpret_cast<const T*>(w.rows_b.data()), N, k, H, im.recv_pos.data(),
                             nullptr, h.expert_count_.data(), h.expert_offset_.data(), L,
                             static_cast<T*>(expert_in));
  });

  // Token conservation: every accepted slot of this rank went into exactly one copy's slot list,
  // and every slot received landed in exactly one expert row.
  int64_t sent_slots = 0;
  for (int64_t s = 0; s < im.C * k; ++s) sent_slots += im.copy_slot_expert[s] >= 0;
  LOCMOE_CHECK(sent_slots == accepted, Code::kInternal,
               "token conservation: plan accepts {} slots but the send layout carries {}", accepted, sent_slots);
  int64_t recv_slots = 0;
  for (int64_t s = 0; s < N * k; ++s) recv_slots += im.recv_slot_expert[s] >= 0;
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
  const int64_t H = config_.hidden;
  const int32_t k = h.k_;
  LOCMOE_CHECK_ARG(h.expert_rows() == 0 || rows != nullptr, "expert rows are null");
  LOCMOE_CHECK_ARG(h.T_ == 0 || out != nullptr, "output is null with {} tokens", h.T_);
  with_dtype(config_.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ep_detail::slot_reduce(static_cast<const T*>(rows), h.N_, k, H, im.recv_pos.data(),
                           weighted ? im.recv_slot_weight.data() : nullptr, w.acc.data(),
                           reinterpret_cast<T*>(w.rows_b.data()));
  });
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.rows_b.data(), w.rows_a.data(), h, false, row_bytes(), config_.memory,
                                       stream, nullptr));
  with_dtype(config_.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ep_detail::token_combine(reinterpret_cast<const T*>(w.rows_a.data()), im.C, h.T_, H, im.copy_token.data(),
                             w.acc.data(), static_cast<T*>(out));
  });
  return ok_status();
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
  const int64_t H = config_.hidden, N = h.N_;
  const int32_t k = h.k_, L = config_.experts_per_rank;
  LOCMOE_CHECK_ARG(h.T_ == 0 || grad_out != nullptr, "combine_backward: grad_out is null");
  LOCMOE_CHECK_ARG(h.expert_rows() == 0 || expert_out != nullptr,
                   "combine_backward: expert_out is null (the weight gradient needs it)");
  // Dispatch grad_out like x (same copies, same ranks).
  ep_detail::gather_rows(grad_out, im.copy_token.data(), im.C, row_bytes(), w.rows_a.data());
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.rows_a.data(), w.rows_b.data(), h, true, row_bytes(), config_.memory,
                                       stream, nullptr)
                             .with_context("combine_backward: exchanging gradient rows"));
  with_dtype(config_.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* g = reinterpret_cast<const T*>(w.rows_b.data());
    if (grad_expert_out != nullptr)
      ep_detail::expert_unpack(g, N, k, H, im.recv_pos.data(), im.recv_slot_weight.data(),
                               h.expert_count_.data(), h.expert_offset_.data(), L, static_cast<T*>(grad_expert_out));
    ep_detail::slot_dot(g, static_cast<const T*>(expert_out), N, k, H, im.recv_pos.data(), w.dw_recv.data());
  });
  // Send dw back ([N,k] in received order) and scatter onto the token slots of each copy. Done
  // whatever this rank's grad_weights is: the exchange is collective and peers need their dw.
  LOCMOE_RETURN_IF_ERROR(exchange_rows(w.dw_recv.data(), w.dw_back.data(), h, false, sizeof(float) * k,
                                       MemoryKind::kHost, nullptr, nullptr)
                             .with_context("combine_backward: returning weight gradients"));
  if (grad_weights == nullptr) return ok_status();
  std::fill(grad_weights, grad_weights + static_cast<size_t>(h.T_) * k, 0.0f);
  for (int64_t c = 0; c < im.C; ++c)
    for (int32_t j = 0; j < k; ++j)
      if (im.copy_slot_expert[c * k + j] >= 0)
        grad_weights[static_cast<int64_t>(im.copy_token[c]) * k + j] = w.dw_back[c * k + j];
  return ok_status();
}

}  // namespace locmoe
