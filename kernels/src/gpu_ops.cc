// gpu:: backend: limits, the list of each reduction, and cudaError_t -> Status around the
// launches of gpu_layout.cu / gpu_rows.cu (which stay free of Status and fmt for nvcc).
#include <cuda_runtime_api.h>

#include "backend.h"
#include "row_lists.h"

namespace locmoe::kernels::gpu {
namespace {

Status launched(int err, const char* what) {
  const auto e = static_cast<cudaError_t>(err);
  LOCMOE_CHECK(e == cudaSuccess, Code::kSystemError, "CUDA launch of {} failed: {} ({})", what,
               cudaGetErrorString(e), err);
  return ok_status();
}

Status check_sort_limits(int32_t buckets, int32_t k, const char* what) {
  LOCMOE_CHECK(buckets <= kMaxBuckets && k <= kMaxSlots, Code::kUnsupported,
               "{} on CUDA supports at most {} buckets and {} slots, got {} and {}", what,
               kMaxBuckets, kMaxSlots, buckets, k);
  return ok_status();
}

}  // namespace

Status dispatch_layout(const PlanView& plan, DispatchLayout& layout, void* stream) {
  LOCMOE_RETURN_IF_ERROR(
      check_sort_limits(plan.num_ranks * plan.experts_per_rank, plan.k, "dispatch_layout"));
  layout.num_tokens = plan.num_tokens;
  return launched(launch::dispatch_layout(plan, layout, stream), "dispatch_layout");
}

Status expert_layout(const int32_t* recv_slot_expert, int32_t num_recv, ExpertLayout& layout,
                     void* stream) {
  LOCMOE_RETURN_IF_ERROR(check_sort_limits(layout.num_local_experts, layout.k, "expert_layout"));
  layout.num_recv = num_recv;
  return launched(launch::expert_layout(recv_slot_expert, num_recv, layout, stream),
                  "expert_layout");
}

Status dispatch_pack(const DispatchLayout& l, ConstRows x, Rows send, void* stream) {
  return launched(
      launch::gather_copy(l.copy_token, 1, l.send_rank_offset + l.num_ranks, x, send, stream),
      "dispatch_pack");
}

Status expert_unpack(const ExpertLayout& l, ConstRows recv, const float* w, Rows expert_in,
                     void* stream) {
  const int32_t* rows = l.expert_offset + l.num_local_experts;
  if (!w) {
    return launched(launch::gather_copy(l.row_src, l.k, rows, recv, expert_in, stream),
                    "expert_unpack");
  }
  return launched(
      launch::gather_sum(detail::weighted_unpack_list(l, w), rows, recv, expert_in, stream),
      "expert_unpack (weighted)");
}

Status slot_reduce(const ExpertLayout& l, ConstRows expert_out, const float* w, Rows back,
                   void* stream) {
  return launched(
      launch::gather_sum(detail::slot_reduce_list(l, w), nullptr, expert_out, back, stream),
      "slot_reduce");
}

Status token_combine(const DispatchLayout& l, ConstRows returned, Rows out, void* stream) {
  return launched(launch::gather_sum(detail::token_combine_list(l), nullptr, returned, out, stream),
                  "token_combine");
}

Status slot_dot(const ExpertLayout& l, ConstRows grad, ConstRows expert_out, float* dw,
                void* stream) {
  return launched(launch::slot_dot(l, grad, expert_out, dw, stream), "slot_dot");
}

Status gather_slot_grads(const DispatchLayout& l, const float* dw_copy, float* grad_weight,
                         void* stream) {
  return launched(launch::gather_slot_grads(l, dw_copy, grad_weight, stream), "gather_slot_grads");
}

Status dispatch_pack_fp8(const DispatchLayout& l, ConstRows x, Fp8Rows send, void* stream) {
  return launched(launch::dispatch_pack_fp8(l, x, send, stream), "dispatch_pack_fp8");
}

Status expert_unpack_fp8(const ExpertLayout& l, ConstFp8Rows recv, const float* w, Rows expert_in,
                         void* stream) {
  return launched(launch::expert_unpack_fp8(l, recv, w, expert_in, stream), "expert_unpack_fp8");
}

}  // namespace locmoe::kernels::gpu
