#include "locmoe/ep/dispatcher.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "locmoe/core/check.h"
#include "locmoe/kernels/layout.h"
#include "locmoe/kernels/ops.h"
#include "memory.h"

namespace locmoe {

using ep_detail::Buffer;

// Layouts of one dispatch, carved once for the dispatcher's limits, in the dispatcher's memory
// kind (the kernels read and write them there), plus host mirrors of the counts the host needs.
struct DispatchHandle::Impl {
  Buffer send_buf, recv_buf;
  kernels::DispatchLayout send;  // step 1: copies of this rank's tokens
  kernels::ExpertLayout recv;    // step 4: expert-major rows of the received slots
  Buffer recv_slot_expert;       // int32 [max_recv*k]
  Buffer recv_slot_weight;       // float [max_recv*k]
  // Host mirrors: rows to / from each rank.
  std::vector<int32_t> send_rank_count, send_rank_offset;  // [R], [R+1]
  std::vector<int32_t> recv_rank_count, recv_rank_offset;  // [R], [R+1]
  int32_t C = 0, N = 0;
  // The dispatch's one negotiation (counts in rows, Communicator::prepare) and the plans derived
  // from it locally; prepared into the same plans every step, so their storage is reused.
  ExchangePlan rows;       // copies to each rank, in rows
  ExchangePlan back_rows;  // its transpose: received rows back to their sources, in rows
  ExchangePlan fwd_meta;   // dispatch: rows with their slot metadata behind them (row bytes + 8k)
  ExchangePlan fwd;        // combine_backward: gradient rows to the experts (row bytes)
  ExchangePlan back;       // combine, dispatch_backward: reduced rows back (row bytes)
  ExchangePlan back_dw;    // combine_backward: weight gradients back (4k bytes per row)
  // dispatch_backward under weight_grads_with_dispatch_backward: rows with their weight
  // gradients behind them (row bytes + 4k), instead of back and back_dw.
  ExchangePlan back_rows_dw;
};

DispatchHandle::~DispatchHandle() = default;

// Transient buffers shared by every step of the dispatcher (steps run one at a time).
struct Dispatcher::Work {
  int32_t max_copies = 0;  // max_tokens * min(k, R)
  int32_t max_recv = 0;    // max_recv_rows
  // max(max_copies, max_recv) rows each, of row bytes + 8k: dispatch's rows carry their slots'
  // local experts (k int32) and weights (k fp32) behind them; the other calls use dense rows.
  Buffer rows_a, rows_b;
  Buffer dw_recv, dw_back; // float [max_recv*k], [max_copies*k]
  // Device path only: the plan arrays the kernels read (expert, weight; node_of_rank and
  // slot_dropped are read by no kernel and stay on the host), and pinned host staging for them
  // and for the per-expert counts coming back, so neither copy synchronizes on its own.
  Buffer plan_expert, plan_weight;  // device: int32 / float [max_tokens*k]
  Buffer staging;                   // pinned: int32 expert, float weight [max_tokens*k]; int32 [2L+1]
  // True while staging copies may be in flight on staging_stream (from the plan's copies to the
  // counts' synchronization; a dispatch failing in between leaves it set).
  bool staging_busy = false;
  void* staging_stream = nullptr;
  std::vector<uint64_t> send_counts;  // [R] rows
  // A combine-family call this rank refused after taking part in its exchange (which has no
  // metadata round to refuse it in): the next dispatch rejects with it, so the peers learn of it.
  Status refused;
  // refuse_next(): the caller's refusal of the next combine-family call's arguments.
  Status next_refusal;
  // weight_grads_with_dispatch_backward: the handle whose weight gradients combine_backward left
  // in dw_recv for its dispatch_backward (nullptr: none).
  const DispatchHandle* dw_for = nullptr;
};

namespace {
// Bytes of the device path's pinned staging buffer (see Dispatcher::Work).
size_t staging_bytes(int64_t max_tokens, int64_t k, int64_t L) {
  return static_cast<size_t>(max_tokens * k) * 8 + static_cast<size_t>(2 * L + 1) * 4;
}
}  // namespace

int Dispatcher::rank() const { return comm_->rank(); }
int Dispatcher::num_ranks() const { return comm_->size(); }

int64_t Dispatcher::max_expert_rows() const {
  return kernels::max_expert_rows(work_->max_recv, config_.top_k, config_.experts_per_rank, config_.align);
}

size_t Dispatcher::workspace_bytes() const {
  const Work& w = *work_;
  return w.rows_a.size() + w.rows_b.size() + w.dw_recv.size() + w.dw_back.size() + w.plan_expert.size() +
         w.plan_weight.size() + w.staging.size();
}

namespace {
// Where the kernels run for a dispatcher's memory kind.
kernels::Exec exec_for(const DispatcherConfig& c, void* stream) {
  return kernels::Exec{c.memory == MemoryKind::kDevice ? kernels::Device::kCuda : kernels::Device::kCpu, stream};
}

// Number of entries >= 0 among n int32 in `mem` memory. Device memory is copied to the host
// first (allocates and synchronizes): only debug builds count device slots.
Result<int64_t> count_set_slots(const int32_t* p, int64_t n, MemoryKind mem, void* stream) {
  std::vector<int32_t> scratch;
  const int32_t* h = p;
  if (mem == MemoryKind::kDevice) {
    scratch.resize(static_cast<size_t>(n));
    LOCMOE_RETURN_IF_ERROR(ep_detail::copy_to_host(scratch.data(), p, static_cast<size_t>(n) * 4, mem, stream));
    h = scratch.data();
  }
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += h[i] >= 0;
  return c;
}

// Token conservation is checked on every host dispatch (the arrays are host memory); on the
// device only in debug builds, where it costs two copies back and two synchronizations.
#ifdef NDEBUG
constexpr bool kCheckDeviceConservation = false;
#else
constexpr bool kCheckDeviceConservation = true;
#endif
}  // namespace

namespace {
constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();

Status check_config(const DispatcherConfig& c) {
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
  return ok_status();
}

// Capacities derived from a config: copies sent and rows received per dispatch, at most.
struct Limits {
  int64_t max_copies = 0, max_recv = 0;
};
Result<Limits> limits_of(const DispatcherConfig& c, int64_t R) {
  Limits l;
  l.max_copies = kernels::max_copies(c.max_tokens, c.top_k, R);
  l.max_recv = c.max_recv_rows > 0 ? c.max_recv_rows : R * c.max_tokens;
  LOCMOE_CHECK_RANGE(l.max_copies * c.top_k <= kIntMax && l.max_recv * c.top_k <= kIntMax,
                     "max_tokens {} / max_recv_rows {} with top_k {} exceed 2^31 slots", c.max_tokens, l.max_recv,
                     c.top_k);
  return l;
}
}  // namespace

Result<DispatcherSizes> Dispatcher::query_sizes(const DispatcherConfig& c, int num_ranks) {
  LOCMOE_RETURN_IF_ERROR(check_config(c));
  LOCMOE_CHECK_ARG(num_ranks > 0, "num_ranks {} must be positive", num_ranks);
  LOCMOE_ASSIGN_OR_RETURN(const Limits l, limits_of(c, num_ranks));
  const size_t k = static_cast<size_t>(c.top_k), rb = static_cast<size_t>(c.hidden) * kernels::dtype_size(c.dtype);
  const size_t max_rows = static_cast<size_t>(std::max(l.max_copies, l.max_recv));
  DispatcherSizes s;
  s.max_expert_rows = kernels::max_expert_rows(l.max_recv, c.top_k, c.experts_per_rank, c.align);
  s.workspace_bytes = 2 * max_rows * (rb + 8 * k) + 4 * k * static_cast<size_t>(l.max_recv + l.max_copies);
  if (c.memory == MemoryKind::kDevice)
    s.workspace_bytes += static_cast<size_t>(c.max_tokens) * k * 8 + staging_bytes(c.max_tokens, c.top_k, c.experts_per_rank);
  LOCMOE_ASSIGN_OR_RETURN(const int64_t sbytes,
                          kernels::dispatch_layout_bytes(c.max_tokens, c.top_k, num_ranks, c.experts_per_rank));
  LOCMOE_ASSIGN_OR_RETURN(const int64_t rbytes, kernels::expert_layout_bytes(static_cast<int32_t>(l.max_recv), c.top_k,
                                                                             c.experts_per_rank, c.align));
  s.handle_bytes = static_cast<size_t>(sbytes + rbytes) + 8 * k * static_cast<size_t>(l.max_recv);
  return s;
}

Result<std::unique_ptr<Dispatcher>> Dispatcher::create(Bootstrap& bootstrap, Communicator& comm,
                                                       const DispatcherConfig& c) {
  LOCMOE_RETURN_IF_ERROR(check_config(c));
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
  LOCMOE_RETURN_IF_ERROR(check_same_on_all_ranks(bootstrap, c.weight_grads_with_dispatch_backward ? 1u : 0u,
                                                 "weight_grads_with_dispatch_backward"));
  if (c.memory == MemoryKind::kDevice) LOCMOE_RETURN_IF_ERROR(ep_detail::check_device_available());

  const int64_t R = comm.size(), k = c.top_k;
  LOCMOE_ASSIGN_OR_RETURN(const Limits lim, limits_of(c, R));
  const int64_t max_copies = lim.max_copies, max_recv = lim.max_recv;
  std::unique_ptr<Dispatcher> d(new Dispatcher());
  d->config_ = c;
  d->bootstrap_ = &bootstrap;
  d->comm_ = &comm;
  auto w = std::make_unique<Work>();
  const MemoryKind mem = c.memory;
  w->max_copies = static_cast<int32_t>(max_copies);
  w->max_recv = static_cast<int32_t>(max_recv);
  const size_t rb = d->row_bytes();
  const size_t max_rows = static_cast<size_t>(std::max(max_copies, max_recv));
  // Rows of the dispatch's exchange carry their slot metadata behind them (8k bytes).
  const size_t stride = rb + 8 * static_cast<size_t>(k);
  LOCMOE_ASSIGN_OR_RETURN(w->rows_a, Buffer::make(max_rows * stride, mem));
  LOCMOE_ASSIGN_OR_RETURN(w->rows_b, Buffer::make(max_rows * stride, mem));
  LOCMOE_ASSIGN_OR_RETURN(w->dw_recv, Buffer::make(static_cast<size_t>(max_recv * k) * 4, mem));
  LOCMOE_ASSIGN_OR_RETURN(w->dw_back, Buffer::make(static_cast<size_t>(max_copies * k) * 4, mem));
  if (mem == MemoryKind::kDevice) {
    const size_t slots = static_cast<size_t>(c.max_tokens) * k;
    LOCMOE_ASSIGN_OR_RETURN(w->plan_expert, Buffer::make(slots * 4, mem));
    LOCMOE_ASSIGN_OR_RETURN(w->plan_weight, Buffer::make(slots * 4, mem));
    LOCMOE_ASSIGN_OR_RETURN(w->staging, Buffer::make_pinned(staging_bytes(c.max_tokens, k, c.experts_per_rank)));
  }
  w->send_counts.resize(R);
  d->work_ = std::move(w);
  return d;
}

Dispatcher::~Dispatcher() = default;

Result<std::unique_ptr<DispatchHandle>> Dispatcher::make_handle() const {
  const int32_t R = comm_->size(), k = config_.top_k, L = config_.experts_per_rank;
  const MemoryKind mem = config_.memory;
  std::unique_ptr<DispatchHandle> h(new DispatchHandle());
  auto im = std::make_unique<DispatchHandle::Impl>();
  LOCMOE_ASSIGN_OR_RETURN(const int64_t sbytes, kernels::dispatch_layout_bytes(config_.max_tokens, k, R, L));
  LOCMOE_ASSIGN_OR_RETURN(im->send_buf, Buffer::make(static_cast<size_t>(sbytes), mem));
  LOCMOE_ASSIGN_OR_RETURN(im->send, kernels::carve_dispatch_layout(im->send_buf.data(), sbytes,
                                                                   config_.max_tokens, k, R, L));
  LOCMOE_ASSIGN_OR_RETURN(const int64_t rbytes,
                          kernels::expert_layout_bytes(work_->max_recv, k, L, config_.align));
  LOCMOE_ASSIGN_OR_RETURN(im->recv_buf, Buffer::make(static_cast<size_t>(rbytes), mem));
  LOCMOE_ASSIGN_OR_RETURN(im->recv, kernels::carve_expert_layout(im->recv_buf.data(), rbytes,
                                                                 work_->max_recv, k, L, config_.align));
  const size_t slots = static_cast<size_t>(work_->max_recv) * k;
  LOCMOE_ASSIGN_OR_RETURN(im->recv_slot_expert, Buffer::make(slots * 4, mem));
  LOCMOE_ASSIGN_OR_RETURN(im->recv_slot_weight, Buffer::make(slots * 4, mem));
  im->send_rank_count.assign(R, 0);
  im->send_rank_offset.assign(R + 1, 0);
  im->recv_rank_count.assign(R, 0);
  im->recv_rank_offset.assign(R + 1, 0);
  h->impl_ = std::move(im);
  h->expert_count_.assign(L, 0);
  h->expert_offset_.assign(L + 1, 0);
  return h;
}

Status Dispatcher::check_handle(const DispatchHandle& h, const char* op) const {
  // A foreign handle gives this rank no plan to take part in its peers' exchange with: abort the
  // communicator, so their pending exchange fails at once naming this rank, instead of at the
  // deadline. The refusal a caller left for this call goes with it.
  if (!(h.impl_ != nullptr && h.impl_->recv_rank_count.size() == static_cast<size_t>(comm_->size()) &&
        h.expert_count_.size() == static_cast<size_t>(config_.experts_per_rank) &&
        h.impl_->send.max_copies == work_->max_copies && h.impl_->recv.max_recv == work_->max_recv)) {
    work_->next_refusal = ok_status();
    Status s = error(Code::kInvalidArgument, "{}: the handle was made by another dispatcher", op);
    comm_->abort(s.message());
    return s;
  }
  if (!h.valid_) {
    // Neither has a handle that holds no dispatch (a fresh one, or one whose dispatch failed): the
    // same abort, rather than peers that did dispatch waiting for this rank until the deadline.
    work_->next_refusal = ok_status();
    Status s = error(Code::kInvalidArgument, "{}: the handle holds no dispatch (dispatch() must succeed on it first)", op);
    comm_->abort(s.message());
    return s;
  }
  return ok_status();
}

void Dispatcher::refuse_next(Status why) { work_->next_refusal = std::move(why); }

namespace {
// Rows this rank can take in one dispatch without overflowing expert_in, whatever their slots:
// N received rows fill at most N * k data rows plus L * (align - 1) padding rows. Known before
// the exchange, so prepare's capacity check turns a too-small expert_in into an error on every
// rank, instead of one that only this rank would find after the rows arrived.
int64_t recv_rows_for(int64_t expert_in_rows, int64_t k, int64_t L, int64_t align) {
  const int64_t data_rows = expert_in_rows - L * (align - 1);
  return data_rows <= 0 ? 0 : data_rows / k;
}
}  // namespace

Status Dispatcher::dispatch(const void* x, const RoutingPlan& plan, DispatchHandle& h, void* expert_in,
                            int64_t expert_in_rows, void* stream) {
  const int R = comm_->size();
  const int32_t L = config_.experts_per_rank, k = config_.top_k, H = static_cast<int32_t>(config_.hidden);
  Work& w = *work_;
  const MemoryKind mem = config_.memory;
  const kernels::Exec ex = exec_for(config_, stream);
  const kernels::DType dt = config_.dtype;
  const size_t slots = static_cast<size_t>(std::max(plan.num_tokens, 0)) * static_cast<size_t>(std::max(k, 0));
  const size_t E = static_cast<size_t>(R) * L;

  Status refusal = std::move(w.next_refusal);
  w.next_refusal = ok_status();
  // 1. Everything this rank can check by itself: arguments, the send layout (on the device from
  // a device copy of the plan's expert ids and weights) and its token conservation. A failure
  // takes this rank's turn in the dispatch's one metadata round as a rejection
  // (Communicator::reject), so its peers fail at once naming it instead of waiting for it.
  auto local = [&]() -> Status {
    LOCMOE_CHECK_ARG(h.impl_ && h.impl_->recv_rank_count.size() == static_cast<size_t>(R) &&
                         h.impl_->send.max_copies == w.max_copies && h.impl_->recv.max_recv == w.max_recv,
                     "dispatch: the handle was made by another dispatcher");
    h.valid_ = false;
    if (!refusal.ok()) return refusal.with_context("dispatch");  // refuse_next
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
    LOCMOE_CHECK_ARG(plan.expert.size() == slots && plan.weight.size() == slots &&
                         plan.slot_dropped.size() == slots && plan.node_of_rank.size() == static_cast<size_t>(R),
                     "dispatch: plan arrays do not match T={} k={} R={} (finalize_plan validates them)",
                     plan.num_tokens, k, R);
    LOCMOE_CHECK_ARG(plan.num_tokens == 0 || x != nullptr, "dispatch: x is null with {} tokens", plan.num_tokens);
    LOCMOE_CHECK_RANGE(expert_in_rows >= 0, "dispatch: expert_in_rows {} must be non-negative", expert_in_rows);
    LOCMOE_CHECK_ARG(expert_in_rows == 0 || expert_in != nullptr, "dispatch: expert_in is null with {} rows",
                     expert_in_rows);
    // Counts and counters come from the plan, derived once by finalize_plan (which also validated
    // its expert ids): nothing is recounted here, and on the device nothing is copied back to
    // learn them. A plan whose slots changed after finalize_plan fails the conservation check.
    LOCMOE_CHECK_ARG(plan.rank_count.size() == static_cast<size_t>(R) &&
                         plan.rank_offset.size() == static_cast<size_t>(R) + 1 && plan.expert_count.size() == E &&
                         plan.expert_offset.size() == E + 1,
                     "dispatch: the plan is not finalized (rank_count has {} entries, expected {}; finalize_plan "
                     "derives the counts)", plan.rank_count.size(), R);
    const int64_t C = plan.rank_offset[R];
    LOCMOE_CHECK_RANGE(C >= 0 && C <= w.max_copies,
                       "dispatch: the plan makes {} copies, at most {} possible (finalize_plan again after editing "
                       "it)", C, w.max_copies);
    auto& im = *h.impl_;
    PlanView view = plan.view();
    if (mem == MemoryKind::kDevice) {
      // Staged through pinned memory: an async copy from pageable memory would wait for the stream.
      // The previous dispatch synchronized the stream after its staging copies, so reuse is safe.
      if (w.staging_busy)  // a failed dispatch left its staging copies unawaited
        LOCMOE_RETURN_IF_ERROR(ep_detail::sync_stream(w.staging_stream));
      auto* st_expert = w.staging.as<int32_t>();
      auto* st_weight = reinterpret_cast<float*>(st_expert + slots);
      std::memcpy(st_expert, plan.expert.data(), slots * 4);
      std::memcpy(st_weight, plan.weight.data(), slots * 4);
      LOCMOE_RETURN_IF_ERROR(ep_detail::copy_from_host(w.plan_expert.data(), st_expert, slots * 4, mem, stream));
      LOCMOE_RETURN_IF_ERROR(ep_detail::copy_from_host(w.plan_weight.data(), st_weight, slots * 4, mem, stream));
      w.staging_busy = true;
      w.staging_stream = stream;
      view.expert = w.plan_expert.as<const int32_t>();
      view.weight = w.plan_weight.as<const float>();
      view.node_of_rank = nullptr;  // read by no kernel (ops.h)
      view.slot_dropped = nullptr;
    }
    LOCMOE_RETURN_IF_ERROR(kernels::dispatch_layout(ex, view, im.send).with_context("dispatch"));
    for (int r = 0; r < R; ++r) {
      im.send_rank_count[r] = plan.rank_count[r];
      im.send_rank_offset[r] = static_cast<int32_t>(plan.rank_offset[r]);
    }
    im.send_rank_offset[R] = static_cast<int32_t>(C);
    im.C = static_cast<int32_t>(C);
    // Token conservation, sending side: the layout makes the plan's copies, per rank, and carries
    // every accepted slot exactly once.
    if (mem == MemoryKind::kHost || kCheckDeviceConservation) {
      std::vector<int32_t> dev_counts;  // debug builds only on the device
      const int32_t* lc = im.send.send_rank_count;
      if (mem == MemoryKind::kDevice) {
        dev_counts.resize(static_cast<size_t>(R));
        LOCMOE_RETURN_IF_ERROR(
            ep_detail::copy_to_host(dev_counts.data(), lc, static_cast<size_t>(R) * 4, mem, stream));
        lc = dev_counts.data();
      }
      for (int r = 0; r < R; ++r)
        LOCMOE_CHECK(lc[r] == plan.rank_count[r], Code::kInvalidArgument,
                     "dispatch: the plan counts {} copies to rank {} but its slots make {} (was it edited after "
                     "finalize_plan?)", plan.rank_count[r], r, lc[r]);
      LOCMOE_ASSIGN_OR_RETURN(const int64_t sent_slots,
                              count_set_slots(im.send.copy_slot_expert, C * k, mem, stream));
      LOCMOE_CHECK(sent_slots == plan.expert_offset[E], Code::kInvalidArgument,
                   "token conservation: the plan accepts {} slots but its send layout carries {} (was it edited "
                   "after finalize_plan?)", plan.expert_offset[E], sent_slots);
    }
    return ok_status();
  };
  if (Status s = local(); !s.ok()) return comm_->reject(s);
  if (w.dw_for == &h) w.dw_for = nullptr;  // its weight gradients belong to the last dispatch
  if (!w.refused.ok()) {
    Status why = std::move(w.refused);
    w.refused = ok_status();
    return comm_->reject(why.with_context("dispatch refused: the last call on this rank failed"));
  }
  auto& im = *h.impl_;

  // 2. The one metadata round: counts in rows. Each rank's receive capacity in rows is the least
  // of max_recv_rows and what its expert_in holds (recv_rows_for), checked by prepare on every
  // rank before any row moves.
  for (int r = 0; r < R; ++r) w.send_counts[r] = static_cast<uint64_t>(im.send_rank_count[r]);
  ExchangeSpec spec;
  spec.send_counts = w.send_counts.data();
  spec.recv_capacity = static_cast<uint64_t>(
      std::min<int64_t>(w.max_recv, recv_rows_for(expert_in_rows, k, L, config_.align)));
  spec.mem = mem;
  LOCMOE_RETURN_IF_ERROR(comm_->prepare(spec, im.rows).with_context(
      "dispatch: negotiating row counts (a rank may receive at most max_recv_rows rows, and at most "
      "(expert_in_rows - L * (align - 1)) / top_k)"));
  int64_t N = 0;
  im.recv_rank_offset[0] = 0;
  for (int r = 0; r < R; ++r) {
    im.recv_rank_count[r] = static_cast<int32_t>(im.rows.recv_counts[r]);
    im.recv_rank_offset[r + 1] = im.recv_rank_offset[r] + im.recv_rank_count[r];
    N += im.recv_rank_count[r];
  }
  im.N = static_cast<int32_t>(N);
  // The plans of every later exchange of this handle, derived locally (no communication): the
  // dispatch's rows with their slot metadata behind them, and rows alone both ways.
  const size_t rb = row_bytes(), meta = static_cast<size_t>(k) * 4, stride = rb + 2 * meta;
  LOCMOE_RETURN_IF_ERROR(comm_->scale(im.rows, stride, im.fwd_meta).with_context("dispatch"));
  LOCMOE_RETURN_IF_ERROR(comm_->scale(im.rows, rb, im.fwd).with_context("dispatch"));
  LOCMOE_RETURN_IF_ERROR(comm_->transpose(im.rows, im.back_rows).with_context("dispatch"));
  LOCMOE_RETURN_IF_ERROR(comm_->scale(im.back_rows, rb, im.back).with_context("dispatch"));
  if (config_.weight_grads_with_dispatch_backward) {
    LOCMOE_RETURN_IF_ERROR(comm_->scale(im.back_rows, rb + meta, im.back_rows_dw).with_context("dispatch"));
  } else {
    LOCMOE_RETURN_IF_ERROR(comm_->scale(im.back_rows, meta, im.back_dw).with_context("dispatch"));
  }

  // 3. Rows with their slots' local experts and weights behind them, in one exchange.
  const int32_t C = im.C;
  unsigned char* send = w.rows_a.data();
  LOCMOE_RETURN_IF_ERROR(kernels::dispatch_pack(ex, im.send, kernels::ConstRows{x, plan.num_tokens, H, dt},
                                                kernels::Rows{send, C, H, dt, static_cast<int64_t>(stride)})
                             .with_context("dispatch"));
  LOCMOE_RETURN_IF_ERROR(
      ep_detail::copy_2d(send + rb, stride, im.send.copy_slot_expert, meta, meta, static_cast<size_t>(C), mem, stream));
  LOCMOE_RETURN_IF_ERROR(ep_detail::copy_2d(send + rb + meta, stride, im.send.copy_slot_weight, meta, meta,
                                            static_cast<size_t>(C), mem, stream));
  LOCMOE_RETURN_IF_ERROR(comm_->execute(im.fwd_meta, send, w.rows_b.data(), stream)
                             .with_context("dispatch: exchanging token rows"));
  const unsigned char* recv = w.rows_b.data();
  LOCMOE_RETURN_IF_ERROR(ep_detail::copy_2d(im.recv_slot_expert.data(), meta, recv + rb, stride, meta,
                                            static_cast<size_t>(N), mem, stream));
  LOCMOE_RETURN_IF_ERROR(ep_detail::copy_2d(im.recv_slot_weight.data(), meta, recv + rb + meta, stride, meta,
                                            static_cast<size_t>(N), mem, stream));
  DispatchStats st;
  // Payload bytes of the rows alone (every count of the plan is a multiple of the stride).
  st.bytes_sent = im.fwd_meta.stats.bytes_sent / stride * rb;
  st.internode_bytes_sent = im.fwd_meta.stats.internode_bytes_sent / stride * rb;

  // 4-5. Expert-major layout and unpack. The host needs the per-expert counts (expert_in's rows,
  // the caller's expert GEMMs): on the device one copy back into pinned memory and the
  // dispatch's one synchronization.
  LOCMOE_RETURN_IF_ERROR(
      kernels::expert_layout(ex, im.recv_slot_expert.as<const int32_t>(), im.N, im.recv).with_context("dispatch"));
  const int32_t* ecount = im.recv.expert_count;
  const int32_t* eoffset = im.recv.expert_offset;
  if (mem == MemoryKind::kDevice) {
    auto* st_counts = reinterpret_cast<int32_t*>(w.staging.data() + slots * 8);
    LOCMOE_RETURN_IF_ERROR(
        ep_detail::copy_to_host(st_counts, ecount, static_cast<size_t>(L) * 4, mem, stream, /*sync=*/false));
    LOCMOE_RETURN_IF_ERROR(ep_detail::copy_to_host(st_counts + L, eoffset, static_cast<size_t>(L + 1) * 4, mem,
                                                   stream, /*sync=*/true));
    w.staging_busy = false;  // the stream has passed the staging copies
    ecount = st_counts;
    eoffset = st_counts + L;
  }
  int64_t placed = 0;
  for (int32_t l = 0; l < L; ++l) placed += h.expert_count_[l] = ecount[l];
  for (int32_t l = 0; l <= L; ++l) h.expert_offset_[l] = eoffset[l];
  const int64_t M = h.expert_offset_[L];
  // Guaranteed by the receive capacity prepare checked (recv_rows_for).
  LOCMOE_CHECK(M <= expert_in_rows, Code::kInternal,
               "dispatch: expert_in has {} rows, this dispatch needs {} although it received only {} rows", expert_in_rows,
               M, N);
  LOCMOE_RETURN_IF_ERROR(kernels::expert_unpack(
                             ex, im.recv,
                             kernels::ConstRows{recv, im.N, H, dt, static_cast<int64_t>(stride)}, nullptr,
                             kernels::Rows{expert_in, static_cast<int32_t>(M), H, dt})
                             .with_context("dispatch"));

  // Token conservation, receiving side: every slot received fills exactly one expert row.
  if (mem == MemoryKind::kHost || kCheckDeviceConservation) {
    LOCMOE_ASSIGN_OR_RETURN(const int64_t recv_slots,
                            count_set_slots(im.recv_slot_expert.as<const int32_t>(), N * k, mem, stream));
    LOCMOE_CHECK(recv_slots == placed, Code::kInternal,
                 "token conservation: {} slots received but {} placed in expert rows", recv_slots, placed);
  }

  st.tokens = plan.num_tokens;
  st.accepted_slots = plan.expert_offset[E];
  st.dropped_slots = plan.dropped_slots;
  st.dropped_tokens = plan.dropped_tokens;
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
                                     void* stream, const char* op, bool with_dw, float* grad_weights) {
  const auto& im = *h.impl_;
  Work& w = *work_;
  const int32_t H = static_cast<int32_t>(config_.hidden), k = h.k_;
  const kernels::DType dt = config_.dtype;
  const kernels::Exec ex = exec_for(config_, stream);
  const MemoryKind mem = config_.memory;
  const int32_t M = static_cast<int32_t>(h.expert_rows());
  const size_t rb = row_bytes(), meta = static_cast<size_t>(k) * sizeof(float);
  // A bad argument still takes part in the exchange (its peers wait in it, and it has no
  // metadata round to refuse in): missing expert rows go out as NaN rows, so no peer's result is
  // silently wrong, and the next dispatch refuses on every rank naming this one (Work::refused).
  const bool have_dw = with_dw && w.dw_for == &h;
  Status bad = std::move(w.next_refusal);
  w.next_refusal = ok_status();
  if (!bad.ok()) {  // refused by the caller: read and write none of its buffers
    rows = nullptr;
    out = nullptr;
    grad_weights = nullptr;
  }
  if (!bad.ok()) bad.with_context(op);
  else if (M > 0 && rows == nullptr) bad = error(Code::kInvalidArgument, "{}: expert rows are null", op);
  else if (h.T_ > 0 && out == nullptr) bad = error(Code::kInvalidArgument, "{}: output is null with {} tokens", op, h.T_);
  else if (with_dw && !have_dw)
    bad = error(Code::kInvalidArgument,
                "{}: no weight gradients to return (weight_grads_with_dispatch_backward needs combine_backward on "
                "this handle since its dispatch)", op);
  else if (!with_dw && grad_weights != nullptr)
    bad = error(Code::kInvalidArgument,
                "{}: grad_weights given, but only weight_grads_with_dispatch_backward returns them here", op);
  // The reduced rows, dense: the exchange buffer itself, or (with_dw) a dense copy that goes
  // into the strided exchange buffer with the weight gradients behind each row.
  unsigned char* reduced = with_dw ? w.rows_a.data() : w.rows_b.data();
  if (rows == nullptr && M > 0) {
    LOCMOE_RETURN_IF_ERROR(ep_detail::fill_bytes(reduced, 0xFF, static_cast<size_t>(im.N) * rb, mem, stream));
  } else {
    LOCMOE_RETURN_IF_ERROR(kernels::slot_reduce(ex, im.recv, kernels::ConstRows{rows, M, H, dt},
                                                weighted ? im.recv_slot_weight.as<const float>() : nullptr,
                                                kernels::Rows{reduced, im.N, H, dt})
                               .with_context(op));
  }
  const unsigned char* back = w.rows_a.data();  // the returned rows, dense, [C]
  if (with_dw) {
    if (!have_dw)
      LOCMOE_RETURN_IF_ERROR(
          ep_detail::fill_bytes(w.dw_recv.data(), 0xFF, static_cast<size_t>(im.N) * meta, mem, stream));
    const size_t stride = rb + meta, N = static_cast<size_t>(im.N), C = static_cast<size_t>(im.C);
    unsigned char* send = w.rows_b.data();
    LOCMOE_RETURN_IF_ERROR(ep_detail::copy_2d(send, stride, reduced, rb, rb, N, mem, stream));
    LOCMOE_RETURN_IF_ERROR(ep_detail::copy_2d(send + rb, stride, w.dw_recv.data(), meta, meta, N, mem, stream));
    LOCMOE_RETURN_IF_ERROR(comm_->execute(im.back_rows_dw, send, w.rows_a.data(), stream).with_context(op));
    w.dw_for = nullptr;
    // Rows back into a dense buffer for token_combine, weight gradients into dw_back.
    LOCMOE_RETURN_IF_ERROR(ep_detail::copy_2d(send, rb, w.rows_a.data(), stride, rb, C, mem, stream));
    LOCMOE_RETURN_IF_ERROR(
        ep_detail::copy_2d(w.dw_back.data(), meta, w.rows_a.data() + rb, stride, meta, C, mem, stream));
    back = send;
  } else {
    LOCMOE_RETURN_IF_ERROR(comm_->execute(im.back, w.rows_b.data(), w.rows_a.data(), stream).with_context(op));
  }
  if (!bad.ok()) {
    w.refused = bad;
    return bad;
  }
  LOCMOE_RETURN_IF_ERROR(kernels::token_combine(ex, im.send, kernels::ConstRows{back, im.C, H, dt},
                                                kernels::Rows{out, h.T_, H, dt})
                             .with_context(op));
  if (!with_dw || grad_weights == nullptr) return ok_status();
  return kernels::gather_slot_grads(ex, im.send, w.dw_back.as<const float>(), grad_weights).with_context(op);
}

Status Dispatcher::combine(const void* expert_out, const DispatchHandle& h, void* out, void* stream) {
  LOCMOE_RETURN_IF_ERROR(check_handle(h, "combine"));
  return reduce_and_return(expert_out, h, true, out, stream, "combine");
}

Status Dispatcher::dispatch_backward(const void* grad_expert_in, const DispatchHandle& h, void* grad_x,
                                     void* stream, float* grad_weights) {
  LOCMOE_RETURN_IF_ERROR(check_handle(h, "dispatch_backward"));
  return reduce_and_return(grad_expert_in, h, false, grad_x, stream, "dispatch_backward",
                           config_.weight_grads_with_dispatch_backward, grad_weights);
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
  const MemoryKind mem = config_.memory;
  // Bad arguments take part in both exchanges as in reduce_and_return: what they cannot
  // compute goes out as NaN, the next dispatch refuses on every rank.
  const bool dw_later = config_.weight_grads_with_dispatch_backward;
  Status bad = std::move(w.next_refusal);
  w.next_refusal = ok_status();
  if (!bad.ok()) {  // refused by the caller: read and write none of its buffers
    bad.with_context("combine_backward");
    grad_out = nullptr;
    expert_out = nullptr;
    grad_expert_out = nullptr;
    grad_weights = nullptr;
  } else if (h.T_ > 0 && grad_out == nullptr) bad = error(Code::kInvalidArgument, "combine_backward: grad_out is null");
  else if (M > 0 && expert_out == nullptr)
    bad = error(Code::kInvalidArgument, "combine_backward: expert_out is null (the weight gradient needs it)");
  const bool computable = bad.ok();
  if (bad.ok() && dw_later && grad_weights != nullptr)
    bad = error(Code::kInvalidArgument,
                "combine_backward: grad_weights must be null with weight_grads_with_dispatch_backward (the next "
                "dispatch_backward on this handle returns them)");
  // Dispatch grad_out like x (same copies, same ranks).
  if (h.T_ > 0 && grad_out == nullptr) {
    LOCMOE_RETURN_IF_ERROR(ep_detail::fill_bytes(w.rows_a.data(), 0xFF, static_cast<size_t>(im.C) * row_bytes(), mem, stream));
  } else {
    LOCMOE_RETURN_IF_ERROR(kernels::dispatch_pack(ex, im.send, kernels::ConstRows{grad_out, h.T_, H, dt},
                                                  kernels::Rows{w.rows_a.data(), im.C, H, dt})
                               .with_context("combine_backward"));
  }
  LOCMOE_RETURN_IF_ERROR(comm_->execute(im.fwd, w.rows_a.data(), w.rows_b.data(), stream)
                             .with_context("combine_backward: exchanging gradient rows"));
  const kernels::ConstRows g{w.rows_b.data(), im.N, H, dt};
  if (computable) {
    if (grad_expert_out != nullptr)
      LOCMOE_RETURN_IF_ERROR(kernels::expert_unpack(ex, im.recv, g, im.recv_slot_weight.as<const float>(),
                                                    kernels::Rows{grad_expert_out, M, H, dt}));
    LOCMOE_RETURN_IF_ERROR(kernels::slot_dot(ex, im.recv, g, kernels::ConstRows{expert_out, M, H, dt},
                                             w.dw_recv.as<float>()));
  } else {
    LOCMOE_RETURN_IF_ERROR(
        ep_detail::fill_bytes(w.dw_recv.data(), 0xFF, static_cast<size_t>(im.N) * k * sizeof(float), mem, stream));
  }
  if (dw_later) {  // dw waits in dw_recv for this handle's dispatch_backward
    w.dw_for = &h;
    if (!bad.ok()) w.refused = bad;
    return bad;
  }
  // Send dw back ([N,k] in received order) and scatter it onto the token slots. Done whatever
  // this rank's grad_weights is: the exchange is collective and the peers need their dw.
  LOCMOE_RETURN_IF_ERROR(comm_->execute(im.back_dw, w.dw_recv.data(), w.dw_back.data(), stream)
                             .with_context("combine_backward: returning weight gradients"));
  if (!bad.ok()) {
    w.refused = bad;
    return bad;
  }
  if (grad_weights == nullptr) return ok_status();
  return kernels::gather_slot_grads(ex, im.send, w.dw_back.as<const float>(), grad_weights);
}

}  // namespace locmoe
