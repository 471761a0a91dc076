// Private: the two backends behind ops.h. ops.cc checks every argument once, then calls the
// matching backend, which may assume valid arguments (supported dtype, matching shapes,
// non-null pointers where rows > 0).
#pragma once

#include <cstdint>

#include "locmoe/core/check.h"
#include "locmoe/kernels/ops.h"

namespace locmoe::kernels {

// The one place a runtime DType becomes a template instance: calls f(T{}) with T = float or
// bf16, and fails loudly on anything else.
template <typename F>
Status with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: return f(float{});
    case DType::kBF16: return f(bf16{});
  }
  return error(Code::kUnsupported, "dtype {} is not supported by the kernels (f32, bf16)",
               static_cast<int32_t>(dtype));
}

namespace cpu {
Status dispatch_layout(const PlanView& plan, DispatchLayout& layout);
Status dispatch_pack(const DispatchLayout& layout, ConstRows x, Rows send);
Status expert_layout(const int32_t* recv_slot_expert, int32_t num_recv, ExpertLayout& layout);
Status expert_unpack(const ExpertLayout& layout, ConstRows recv, const float* slot_weight,
                     Rows expert_in);
Status slot_reduce(const ExpertLayout& layout, ConstRows expert_out, const float* slot_weight,
                   Rows back);
Status token_combine(const DispatchLayout& layout, ConstRows returned, Rows out);
Status slot_dot(const ExpertLayout& layout, ConstRows grad, ConstRows expert_out, float* dw);
Status gather_slot_grads(const DispatchLayout& layout, const float* dw_copy, float* grad_weight);
}  // namespace cpu

namespace gpu {
// Limits of the CUDA layout kernels (shared-memory histograms): buckets = R*L resp. L.
inline constexpr int32_t kMaxBuckets = 8192;
inline constexpr int32_t kMaxSlots = 32;

Status dispatch_layout(const PlanView& plan, DispatchLayout& layout, void* stream);
Status dispatch_pack(const DispatchLayout& layout, ConstRows x, Rows send, void* stream);
Status expert_layout(const int32_t* recv_slot_expert, int32_t num_recv, ExpertLayout& layout,
                     void* stream);
Status expert_unpack(const ExpertLayout& layout, ConstRows recv, const float* slot_weight,
                     Rows expert_in, void* stream);
Status slot_reduce(const ExpertLayout& layout, ConstRows expert_out, const float* slot_weight,
                   Rows back, void* stream);
Status token_combine(const DispatchLayout& layout, ConstRows returned, Rows out, void* stream);
Status slot_dot(const ExpertLayout& layout, ConstRows grad, ConstRows expert_out, float* dw,
                void* stream);
Status gather_slot_grads(const DispatchLayout& layout, const float* dw_copy, float* grad_weight,
                         void* stream);
}  // namespace gpu

// Workspace of the counting sort behind both layouts, in int32 words, for `rows` rows and
// `buckets` buckets: per-chunk histograms (device), chunk item counts and bucket totals.
inline constexpr int32_t kSortChunk = 256;  // rows per chunk of the device counting sort
inline int64_t sort_workspace_words(int64_t rows, int64_t buckets) {
  const int64_t chunks = (rows + kSortChunk - 1) / kSortChunk;
  return buckets * chunks + chunks + 2 * buckets + 1;
}

}  // namespace locmoe::kernels
