// Private: the two backends behind ops.h. ops.cc checks every argument once, then calls the
// matching backend, which may assume valid arguments (supported dtype, matching shapes,
// non-null pointers where rows > 0).
#pragma once

#include <cstdint>

#include "dtype_switch.h"
#include "gpu_launch.h"
#include "locmoe/core/check.h"
#include "locmoe/kernels/ops.h"

namespace locmoe::kernels {

// Runs f(T{}) for the element type of `dtype` (dtype_switch.h); kUnsupported for other values.
template <typename F>
Status with_dtype(DType dtype, F&& f) {
  return dispatch_dtype(dtype, f, [dtype] {
    return error(Code::kUnsupported, "dtype {} is not supported by the kernels (f32 = 0, bf16 = 1)",
                 static_cast<int32_t>(dtype));
  });
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
Status dispatch_pack_fp8(const DispatchLayout& layout, ConstRows x, Fp8Rows send);
Status expert_unpack_fp8(const ExpertLayout& layout, ConstFp8Rows recv, const float* slot_weight,
                         Rows expert_in);
}  // namespace cpu

namespace gpu {
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
Status dispatch_pack_fp8(const DispatchLayout& layout, ConstRows x, Fp8Rows send, void* stream);
Status expert_unpack_fp8(const ExpertLayout& layout, ConstFp8Rows recv, const float* slot_weight,
                         Rows expert_in, void* stream);
}  // namespace gpu

}  // namespace locmoe::kernels
