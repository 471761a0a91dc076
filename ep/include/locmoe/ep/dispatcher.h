// Dispatcher: the expert-parallel API a trainer plugs in (docs: /EP_DESIGN.md data flow).
//
//   dispatch(x, plan)        local tokens x[T,H] -> rows grouped per LOCAL expert (expert-major,
//                            each expert's segment padded to a multiple of `align` rows), per-expert
//                            counts, and a DispatchHandle recording every layout of the step;
//   combine(y, handle)       expert outputs y (same layout) -> out[T,H] in the original token
//                            order, out[t] = sum_j plan.weight[t,j] * y[row of (t,j)];
//   dispatch_backward(g, h)  d loss/d expert_in -> d loss/d x[T,H] (a combine without weights);
//   combine_backward(g, h)   d loss/d out -> d loss/d y (same layout as y) and d loss/d weight[T,k].
//
// Memory: every buffer is sized by a query up front (max_expert_rows(), Dispatcher::create
// allocates its workspace once, make_handle() allocates a handle's layout arrays once); a step
// allocates nothing. MemoryKind::kHost buffers go through the communicator's host transport
// (MPI/UCX); kDevice buffers through NCCL on the caller's CUDA stream (the plan stays on the host).
//
// Every call is collective over the communicator's ranks (all ranks call dispatch/combine/... in
// the same order), a rank with no tokens included. Sums have a fixed order (slot order on the
// receiver, rank order on the source), so results are deterministic run to run.
//
// Exchanges (Communicator::counters() counts them). dispatch() negotiates once: one
// Communicator::prepare of the per-rank row counts (the step's only metadata round; it also
// checks every rank's receive capacity, so an over-limit rank fails on every rank before any row
// moves), then one execute moving the rows with their slots' local experts and weights behind
// them (row bytes + 8 * top_k per row). The handle keeps that plan and the forms derived from it
// locally (transposed, scaled); combine() and dispatch_backward() execute the reverse (1 data
// exchange each, no metadata round), combine_backward() the forward rows plan and the reverse
// weight-gradient plan (2). A training step is 1 metadata round and 5 data exchanges (4 with
// DispatcherConfig::weight_grads_with_dispatch_backward: the weight gradients travel behind
// dispatch_backward's rows). Every
// dispatch prepares and derives into the handle's plans, reusing their storage.
//
// Errors: what a rank sees when another rank's input is bad (docs/ARCHITECTURE.md, failure model).
//  - dispatch(): what a rank refuses by itself (handle, plan, buffers, the send layout's token
//    conservation, a refuse_next() refusal) takes its turn in the metadata round as a rejection
//    (Communicator::reject): every peer fails at once with kMismatch naming the rank and its
//    reason, every handle of that dispatch is invalid, and the group stays usable.
//  - combine(), dispatch_backward(), combine_backward() have no metadata round to refuse in. A bad
//    buffer argument (null with rows to read or write) or a refuse_next() refusal fails at once on
//    its rank, which still takes part in the exchanges, sending NaN rows / gradients where it
//    cannot compute them: a peer's result that depends on it is NaN (never silently wrong), the
//    others exact; the peers' call succeeds, and the rank's next dispatch() fails on every rank
//    at once naming it and the reason (kMismatch). The group stays usable.
//  - A handle made by another dispatcher (the C API: also a NULL handle) gives its rank no
//    exchange to take part in: it aborts the communicator (Communicator::abort), so the peers'
//    pending or next exchange fails at once with kPeerFailure naming the rank and the reason. The
//    communicator is unusable afterwards on every rank (the bootstrap, plans and routing still
//    work); destroy it.
//  - A handle of this dispatcher that holds no dispatch (dispatch() never succeeded on it) is
//    the same: the peers that dispatched would otherwise wait for this rank until the deadline,
//    so it aborts the communicator too (kInvalidArgument here, kPeerFailure naming it there).
//
// Synchronization. kHost: every call is synchronous (outputs are written when it returns).
// kDevice: every call enqueues its kernels and copies on `stream` and returns once its exchanges
// have completed (the NCCL transport polls a CUDA event recorded after each exchange, which runs
// after the work enqueued before it on `stream`); the kernels after the last exchange (unpack,
// token sums, weight-gradient scatter) are only enqueued, so read the outputs in `stream` order.
// dispatch() additionally synchronizes `stream` exactly once (cudaStreamSynchronize), after its
// last exchange, to copy the per-expert counts to the host (the handle's expert_count(),
// expert_rows() are host values the caller's expert GEMMs need). The per-rank row counts come
// from the plan (host), the plan's expert ids and weights go to the device from pinned staging
// (no synchronization), and nothing else is copied back; combine(), dispatch_backward() and
// combine_backward() copy nothing between host and device and never call
// cudaStreamSynchronize. (Debug builds also copy slot arrays back for the token-conservation
// check, which host dispatches always run on host data.)
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "locmoe/comm/communicator.h"
#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"
#include "locmoe/kernels/dtype.h"
#include "locmoe/router/plan.h"

namespace locmoe {

// Element type of token rows (kernels::DType: kF32, kBF16). Values cross the C API (locmoe_dtype_t).
using TokenDType = kernels::DType;

struct DispatcherConfig {
  int32_t experts_per_rank = 0;  // L: local experts of every rank (same on all ranks)
  int64_t hidden = 0;            // H: elements per token row (same on all ranks, checked)
  TokenDType dtype = TokenDType::kF32;  // rows of x, expert_in/out, out and gradients
  int32_t max_tokens = 0;        // most local tokens T any call of this rank passes
  int32_t top_k = 0;             // most slots per token k any plan passes
  int32_t align = 1;             // each expert's segment is padded to a multiple of this (>= 1)
  // Most rows this rank may receive in one dispatch (one per (source token, this rank) pair).
  // 0 = the worst case, size() * max_tokens (every rank sends every token here).
  int64_t max_recv_rows = 0;
  MemoryKind memory = MemoryKind::kHost;  // where x, expert_in/out, out and gradients live
  // The weight gradients travel back with dispatch_backward's rows (behind each row, 4k bytes)
  // instead of in an exchange of their own: a training step is 4 data exchanges instead of 5, for
  // two local copies of dispatch_backward's rows (into and out of the strided exchange buffer).
  // combine_backward then computes them but takes grad_weights = nullptr, and the
  // dispatch_backward that follows it on the same handle writes them (its grad_weights). For
  // callers that run the two backwards in that order on a handle (locmoe.torch's MoELayer does:
  // its weights enter the dispatch's autograd function, whose backward autograd runs after
  // combine's). Same on all ranks (checked).
  bool weight_grads_with_dispatch_backward = false;
};

// Memory a dispatcher with a given config needs on a group of `num_ranks` ranks (the query that
// comes before any allocation, CUB / TransformerEngine style).
struct DispatcherSizes {
  int64_t max_expert_rows = 0;   // rows of expert_in / expert_out / their gradients (caller-owned)
  size_t workspace_bytes = 0;    // the dispatcher's own workspace (in config.memory, plus host mirrors)
  size_t handle_bytes = 0;       // one DispatchHandle's layouts (in config.memory)
};

// What one dispatch saw, from this rank's point of view.
struct DispatchStats {
  int64_t tokens = 0;            // T
  int64_t accepted_slots = 0;    // (token, slot) pairs of the plan sent to an expert
  int64_t dropped_slots = 0;     // slots the plan marks dropped (slot_dropped = 1)
  int64_t dropped_tokens = 0;    // tokens with no accepted slot (their output rows are 0)
  int64_t copies_sent = 0;       // rows sent: one per (token, destination rank)
  int64_t rows_received = 0;     // N
  int64_t slots_received = 0;    // (row, slot) pairs placed in expert_in
  uint64_t bytes_sent = 0;       // payload bytes of the row exchange (metadata excluded)
  uint64_t internode_bytes_sent = 0;  // of those, bytes this rank put on inter-node links
};

// The layouts of one dispatch, reused by combine and both backwards. Created by
// Dispatcher::make_handle() with capacity for the dispatcher's limits; refilled by every
// dispatch() that takes it. Host arrays (the plan is on the host); device copies are kept inside
// for MemoryKind::kDevice.
class DispatchHandle {
 public:
  ~DispatchHandle();
  DispatchHandle(const DispatchHandle&) = delete;
  DispatchHandle& operator=(const DispatchHandle&) = delete;

  bool valid() const { return valid_; }            // filled by a successful dispatch
  int32_t num_tokens() const { return T_; }        // T of the dispatched plan
  int32_t k() const { return k_; }                 // slots per token of the dispatched plan
  int64_t num_recv_rows() const { return N_; }     // N: rows received (before the expert split)
  int64_t expert_rows() const { return expert_offset_.back(); }  // rows of expert_in incl. padding
  // [L] rows of each local expert (without padding) and [L+1] offsets of its padded segment.
  std::span<const int64_t> expert_count() const { return expert_count_; }
  std::span<const int64_t> expert_offset() const { return expert_offset_; }
  const DispatchStats& stats() const { return stats_; }

 private:
  friend class Dispatcher;
  DispatchHandle() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool valid_ = false;
  int32_t T_ = 0, k_ = 0;
  int64_t N_ = 0;
  std::vector<int64_t> expert_count_, expert_offset_;
  DispatchStats stats_;
};

class Dispatcher {
 public:
  // Collective over the communicator's ranks. Checks that every rank passed the same hidden size,
  // dtype, experts_per_rank and memory kind (a clear kMismatch error naming the first rank that
  // differs), then allocates the workspace. `bootstrap` and `comm` must outlive the dispatcher.
  static Result<std::unique_ptr<Dispatcher>> create(Bootstrap& bootstrap, Communicator& comm,
                                                    const DispatcherConfig& config);
  // Sizes of the buffers a dispatcher with `config` on `num_ranks` ranks allocates (create() and
  // make_handle()) and of the expert buffers its caller provides. Local, allocates nothing.
  static Result<DispatcherSizes> query_sizes(const DispatcherConfig& config, int num_ranks);
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  const DispatcherConfig& config() const { return config_; }
  int rank() const;
  int num_ranks() const;
  size_t row_bytes() const { return static_cast<size_t>(config_.hidden) * kernels::dtype_size(config_.dtype); }
  // Rows expert_in / expert_out / grad buffers need: max_recv_rows * min(top_k, L) plus padding.
  int64_t max_expert_rows() const;
  // Bytes of workspace this dispatcher holds (for reports).
  size_t workspace_bytes() const;

  // A handle with capacity for this dispatcher's limits (allocates; do it once, reuse per step).
  Result<std::unique_ptr<DispatchHandle>> make_handle() const;

  // x: [plan.num_tokens, H] rows of `dtype` in `memory` (read only). plan: this rank's finalized
  // plan (finalize_plan), with num_ranks / experts_per_rank / rank matching the communicator and
  // this dispatcher, num_tokens <= max_tokens, k <= top_k. Its counts (rank_count, expert_count,
  // drop counters) are used as finalize_plan derived them, and its expert ids as finalize_plan
  // validated them: a plan not finalized is kInvalidArgument; slots edited after finalize_plan are
  // kInvalidArgument on the host path (the layout's counts differ from the plan's) and, on the
  // device path, caught by debug builds only. expert_in: caller-owned buffer of
  // `expert_in_rows` rows, written in expert-major order (handle.expert_rows() rows after the
  // call), padding rows zeroed. It must hold the worst case of the rows this rank receives,
  // N * top_k + L * (align - 1) rows for N received rows (max_expert_rows() always suffices): the
  // receive capacity prepare checks on every rank is min(max_recv_rows,
  // (expert_in_rows - L * (align - 1)) / top_k) rows, so a rank with too small an expert_in, or
  // receiving more than max_recv_rows, fails with kOutOfRange on every rank, naming it and both
  // sizes in rows, before any row moves. Fills `handle` (invalid after a failed dispatch).
  // stream: cudaStream_t for kDevice (nullptr = default stream), ignored for kHost.
  Status dispatch(const void* x, const RoutingPlan& plan, DispatchHandle& handle, void* expert_in,
                  int64_t expert_in_rows, void* stream = nullptr);

  // expert_out: [handle.expert_rows(), H] (expert_in's layout; padding rows ignored). out:
  // [handle.num_tokens(), H], overwritten: out[t] = sum over t's accepted slots j, in slot order
  // per rank then rank order, of weight[t,j] * expert_out[row of (t,j)]; 0 for dropped tokens.
  Status combine(const void* expert_out, const DispatchHandle& handle, void* out, void* stream = nullptr);

  // grad_expert_in: [handle.expert_rows(), H]. grad_x: [handle.num_tokens(), H], overwritten with
  // sum over t's accepted slots of grad_expert_in[row of (t,j)] (no weights). grad_weights: only
  // with DispatcherConfig::weight_grads_with_dispatch_backward (else it must be nullptr): the
  // weight gradients combine_backward computed on this handle since its dispatch, [num_tokens, k]
  // fp32 as combine_backward describes them, or nullptr to skip writing them. Without a
  // combine_backward on this handle first, kInvalidArgument (refused as combine_backward's bad
  // arguments are: the exchange still runs, the peers get NaN weight gradients from this rank).
  Status dispatch_backward(const void* grad_expert_in, const DispatchHandle& handle, void* grad_x,
                           void* stream = nullptr, float* grad_weights = nullptr);

  // grad_out: [handle.num_tokens(), H] (d loss / d out). expert_out: the y given to combine
  // (needed for the weight gradient). grad_expert_out: [handle.expert_rows(), H], overwritten:
  // row of (t,j) = weight[t,j] * grad_out[t], padding rows 0. grad_weights: [num_tokens, k] fp32
  // (host memory for kHost, device memory for kDevice), overwritten: <grad_out[t], y[row of
  // (t,j)]> for accepted slots, 0 elsewhere. Either output may be nullptr to skip writing it
  // (the exchanges still run: they are collective). With
  // DispatcherConfig::weight_grads_with_dispatch_backward grad_weights must be nullptr: the next
  // dispatch_backward on this handle returns them (one exchange here instead of two).
  Status combine_backward(const void* grad_out, const DispatchHandle& handle, const void* expert_out,
                          void* grad_expert_out, float* grad_weights, void* stream = nullptr);

  // Not collective: this rank's next call of this dispatcher (dispatch, combine or a backward)
  // refuses with `why` (a kInvalidArgument: a binding's check of an argument this layer cannot
  // see, e.g. a dtype or strides) instead of using its buffers, and takes its turn as that call
  // does for a bad argument of its own (see Errors above): the peers learn of it at once in
  // dispatch, and in its next dispatch for the others. The next call returns `why`.
  void refuse_next(Status why);

 private:
  Dispatcher() = default;
  struct Work;
  Status check_handle(const DispatchHandle& h, const char* op) const;
  // Source side of combine: reduce expert rows per received row, send back, sum per token.
  // With `with_dw` the weight gradients combine_backward left in the workspace travel behind the
  // rows and are scattered into grad_weights (dispatch_backward under
  // weight_grads_with_dispatch_backward).
  Status reduce_and_return(const void* rows, const DispatchHandle& h, bool weighted, void* out, void* stream,
                           const char* op, bool with_dw = false, float* grad_weights = nullptr);

  DispatcherConfig config_;
  Bootstrap* bootstrap_ = nullptr;
  Communicator* comm_ = nullptr;
  std::unique_ptr<Work> work_;
};

}  // namespace locmoe
