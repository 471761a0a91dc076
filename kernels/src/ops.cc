// Front of every kernel: checks the arguments once (both backends rely on it), then runs the CPU
// reference or the CUDA kernel.
#include "locmoe/kernels/ops.h"

#include "backend.h"

namespace locmoe::kernels {
namespace {

#if LOCMOE_KERNELS_GPU
#define LOCMOE_GPU_CALL(expr) (expr)
#else
#define LOCMOE_GPU_CALL(expr) \
  error(Code::kUnsupported, "Device::kCuda requested but locmoe was built without CUDA kernels")
#endif

Status check_exec(const Exec& exec) {
  LOCMOE_CHECK_ARG(exec.device == Device::kCpu || exec.device == Device::kCuda,
                   "Exec.device {} is neither kCpu (0) nor kCuda (1)",
                   static_cast<int32_t>(exec.device));
  return ok_status();
}

Status check_rows(const char* what, ConstRows r) {
  LOCMOE_CHECK(dtype_size(r.dtype) != 0, Code::kUnsupported,
               "{}: dtype {} is not supported (f32 = 0, bf16 = 1)", what,
               static_cast<int32_t>(r.dtype));
  LOCMOE_CHECK_ARG(r.rows >= 0 && r.hidden >= 1,
                   "{}: shape [{}, {}] must have rows >= 0 and "
                   "hidden >= 1",
                   what, r.rows, r.hidden);
  LOCMOE_CHECK_ARG(r.rows == 0 || r.data != nullptr, "{}: data is null for {} rows", what, r.rows);
  const int64_t dense = static_cast<int64_t>(r.hidden) * dtype_size(r.dtype);
  LOCMOE_CHECK_ARG(r.stride == 0 || r.stride == dense,
                   "{}: row stride {} bytes (rows of {} bytes): only dispatch_pack's send and "
                   "expert_unpack's recv (without slot weights) take strided rows",
                   what, r.stride, dense);
  return ok_status();
}

// `b` must match `a` in hidden size and dtype.
Status check_same(const char* what_a, ConstRows a, const char* what_b, ConstRows b) {
  LOCMOE_RETURN_IF_ERROR(check_rows(what_a, a));
  LOCMOE_RETURN_IF_ERROR(check_rows(what_b, b));
  LOCMOE_CHECK_ARG(a.hidden == b.hidden, "{} has hidden size {} but {} has {}", what_b, b.hidden,
                   what_a, a.hidden);
  LOCMOE_CHECK_ARG(a.dtype == b.dtype, "{} has dtype {} but {} has {}", what_b, dtype_name(b.dtype),
                   what_a, dtype_name(a.dtype));
  return ok_status();
}

// The rows of a pure copy may be strided: stride 0 (dense) or at least one row, a multiple of
// the element size.
Status check_copy_rows(const char* what, ConstRows r) {
  ConstRows dense = r;
  dense.stride = 0;
  LOCMOE_RETURN_IF_ERROR(check_rows(what, dense));
  const int64_t bytes = static_cast<int64_t>(r.hidden) * dtype_size(r.dtype);
  LOCMOE_CHECK_ARG(r.stride == 0 || (r.stride >= bytes && r.stride % dtype_size(r.dtype) == 0),
                   "{}: row stride {} bytes must be 0 (dense) or >= the row's {} bytes and a "
                   "multiple of the element size {}",
                   what, r.stride, bytes, dtype_size(r.dtype));
  return ok_status();
}

// check_same for a pure copy, whose `b` rows may be strided.
Status check_same_copy(const char* what_a, ConstRows a, const char* what_b, ConstRows b) {
  ConstRows dense = b;
  dense.stride = 0;
  LOCMOE_RETURN_IF_ERROR(check_same(what_a, a, what_b, dense));
  return check_copy_rows(what_b, b);
}

Status check_rows_eq(const char* what, ConstRows r, int32_t expected, const char* of) {
  LOCMOE_CHECK_ARG(r.rows == expected, "{} has {} rows, expected {} ({})", what, r.rows, expected,
                   of);
  return ok_status();
}

// On the host the produced count is readable: `rows` must cover it. (On the device it is not;
// the kernels bound themselves by min(rows, count).)
Status check_capacity(const Exec& exec, const char* what, ConstRows r, const int32_t* count,
                      const char* of) {
  if (exec.device != Device::kCpu) return ok_status();
  LOCMOE_CHECK_RANGE(r.rows >= *count, "{} has {} rows, {} needed ({})", what, r.rows, *count, of);
  return ok_status();
}

Status check_dispatch(const DispatchLayout& l) {
  LOCMOE_CHECK_ARG(l.send_rank_offset != nullptr && l.copy_token != nullptr &&
                       l.token_copy_offset != nullptr && l.workspace != nullptr,
                   "DispatchLayout is not carved (null arrays): use carve_dispatch_layout");
  return ok_status();
}

Status check_expert(const ExpertLayout& l) {
  LOCMOE_CHECK_ARG(l.expert_offset != nullptr && l.recv_pos != nullptr && l.row_src != nullptr &&
                       l.workspace != nullptr,
                   "ExpertLayout is not carved (null arrays): use carve_expert_layout");
  return ok_status();
}

Status check_fp8(const char* what, const void* data, const float* scale, int32_t rows,
                 int32_t hidden) {
  LOCMOE_CHECK_ARG(rows >= 0 && hidden >= 1,
                   "{}: shape [{}, {}] must have rows >= 0 and hidden "
                   ">= 1",
                   what, rows, hidden);
  LOCMOE_CHECK_ARG(rows == 0 || (data != nullptr && scale != nullptr),
                   "{}: data or scale is null for {} rows", what, rows);
  return ok_status();
}

// The checks every receiver-side row operation shares: `per_recv` has one row per received row,
// `per_expert` holds the expert-major rows; both have the same hidden size and dtype.
Status check_receiver_op(const Exec& exec, const ExpertLayout& layout, const char* per_recv_name,
                         ConstRows per_recv, const char* per_expert_name, ConstRows per_expert) {
  LOCMOE_RETURN_IF_ERROR(check_exec(exec));
  LOCMOE_RETURN_IF_ERROR(check_expert(layout));
  LOCMOE_RETURN_IF_ERROR(check_same(per_expert_name, per_expert, per_recv_name, per_recv));
  LOCMOE_RETURN_IF_ERROR(check_rows_eq(per_recv_name, per_recv, layout.num_recv, "received rows"));
  return check_capacity(exec, per_expert_name, per_expert,
                        layout.expert_offset + layout.num_local_experts, "expert-major rows");
}

}  // namespace

Status dispatch_layout(const Exec& exec, const PlanView& plan, DispatchLayout& layout) {
  LOCMOE_RETURN_IF_ERROR(check_exec(exec));
  LOCMOE_RETURN_IF_ERROR(check_dispatch(layout));
  LOCMOE_CHECK_ARG(plan.num_tokens >= 0 && plan.num_tokens <= layout.max_tokens,
                   "plan has {} tokens, the layout holds at most {}", plan.num_tokens,
                   layout.max_tokens);
  LOCMOE_CHECK_ARG(plan.k == layout.k, "plan k {} != layout k {}", plan.k, layout.k);
  LOCMOE_CHECK_ARG(plan.num_ranks == layout.num_ranks, "plan num_ranks {} != layout num_ranks {}",
                   plan.num_ranks, layout.num_ranks);
  LOCMOE_CHECK_ARG(plan.experts_per_rank == layout.experts_per_rank,
                   "plan experts_per_rank {} != layout experts_per_rank {}", plan.experts_per_rank,
                   layout.experts_per_rank);
  LOCMOE_CHECK_ARG(plan.num_experts == plan.num_ranks * plan.experts_per_rank,
                   "plan num_experts {} != num_ranks {} * experts_per_rank {}", plan.num_experts,
                   plan.num_ranks, plan.experts_per_rank);
  LOCMOE_CHECK_ARG(plan.num_tokens == 0 || (plan.expert != nullptr && plan.weight != nullptr),
                   "plan expert/weight arrays are null for {} tokens", plan.num_tokens);
  if (exec.device == Device::kCpu) return cpu::dispatch_layout(plan, layout);
  return LOCMOE_GPU_CALL(gpu::dispatch_layout(plan, layout, exec.stream));
}

Status dispatch_pack(const Exec& exec, const DispatchLayout& layout, ConstRows x, Rows send) {
  LOCMOE_RETURN_IF_ERROR(check_exec(exec));
  LOCMOE_RETURN_IF_ERROR(check_dispatch(layout));
  LOCMOE_RETURN_IF_ERROR(check_same_copy("x", x, "send", send));
  LOCMOE_RETURN_IF_ERROR(check_rows_eq("x", x, layout.num_tokens, "tokens of the plan"));
  LOCMOE_RETURN_IF_ERROR(
      check_capacity(exec, "send", send, layout.send_rank_offset + layout.num_ranks, "copies"));
  if (exec.device == Device::kCpu) return cpu::dispatch_pack(layout, x, send);
  return LOCMOE_GPU_CALL(gpu::dispatch_pack(layout, x, send, exec.stream));
}

Status expert_layout(const Exec& exec, const int32_t* recv_slot_expert, int32_t num_recv,
                     ExpertLayout& layout) {
  LOCMOE_RETURN_IF_ERROR(check_exec(exec));
  LOCMOE_RETURN_IF_ERROR(check_expert(layout));
  LOCMOE_CHECK_ARG(num_recv >= 0 && num_recv <= layout.max_recv,
                   "num_recv {} outside [0, {}] (the layout's max_recv)", num_recv,
                   layout.max_recv);
  LOCMOE_CHECK_ARG(num_recv == 0 || recv_slot_expert != nullptr,
                   "recv_slot_expert is null for {} rows", num_recv);
  if (exec.device == Device::kCpu) return cpu::expert_layout(recv_slot_expert, num_recv, layout);
  return LOCMOE_GPU_CALL(gpu::expert_layout(recv_slot_expert, num_recv, layout, exec.stream));
}

Status expert_unpack(const Exec& exec, const ExpertLayout& layout, ConstRows recv,
                     const float* slot_weight, Rows expert_in) {
  if (slot_weight == nullptr && recv.stride != 0) {  // a pure copy: recv may be strided
    LOCMOE_RETURN_IF_ERROR(check_copy_rows("recv", recv));
    ConstRows dense = recv;
    dense.stride = 0;
    LOCMOE_RETURN_IF_ERROR(check_receiver_op(exec, layout, "recv", dense, "expert_in", expert_in));
  } else {
    LOCMOE_RETURN_IF_ERROR(check_receiver_op(exec, layout, "recv", recv, "expert_in", expert_in));
  }
  if (exec.device == Device::kCpu) return cpu::expert_unpack(layout, recv, slot_weight, expert_in);
  return LOCMOE_GPU_CALL(gpu::expert_unpack(layout, recv, slot_weight, expert_in, exec.stream));
}

Status slot_reduce(const Exec& exec, const ExpertLayout& layout, ConstRows expert_out,
                   const float* slot_weight, Rows back) {
  LOCMOE_RETURN_IF_ERROR(check_receiver_op(exec, layout, "back", back, "expert_out", expert_out));
  if (exec.device == Device::kCpu) return cpu::slot_reduce(layout, expert_out, slot_weight, back);
  return LOCMOE_GPU_CALL(gpu::slot_reduce(layout, expert_out, slot_weight, back, exec.stream));
}

Status token_combine(const Exec& exec, const DispatchLayout& layout, ConstRows returned, Rows out) {
  LOCMOE_RETURN_IF_ERROR(check_exec(exec));
  LOCMOE_RETURN_IF_ERROR(check_dispatch(layout));
  LOCMOE_RETURN_IF_ERROR(check_same("returned", returned, "out", out));
  LOCMOE_RETURN_IF_ERROR(check_rows_eq("out", out, layout.num_tokens, "tokens of the plan"));
  LOCMOE_RETURN_IF_ERROR(check_capacity(exec, "returned", returned,
                                        layout.send_rank_offset + layout.num_ranks, "copies"));
  if (exec.device == Device::kCpu) return cpu::token_combine(layout, returned, out);
  return LOCMOE_GPU_CALL(gpu::token_combine(layout, returned, out, exec.stream));
}

Status slot_dot(const Exec& exec, const ExpertLayout& layout, ConstRows grad, ConstRows expert_out,
                float* dw) {
  LOCMOE_RETURN_IF_ERROR(check_receiver_op(exec, layout, "grad", grad, "expert_out", expert_out));
  LOCMOE_CHECK_ARG(layout.num_recv == 0 || dw != nullptr, "dw is null for {} rows",
                   layout.num_recv);
  if (exec.device == Device::kCpu) return cpu::slot_dot(layout, grad, expert_out, dw);
  return LOCMOE_GPU_CALL(gpu::slot_dot(layout, grad, expert_out, dw, exec.stream));
}

Status gather_slot_grads(const Exec& exec, const DispatchLayout& layout, const float* dw_copy,
                         float* grad_weight) {
  LOCMOE_RETURN_IF_ERROR(check_exec(exec));
  LOCMOE_RETURN_IF_ERROR(check_dispatch(layout));
  LOCMOE_CHECK_ARG(layout.num_tokens == 0 || grad_weight != nullptr,
                   "grad_weight is null for {} tokens", layout.num_tokens);
  LOCMOE_CHECK_ARG(exec.device != Device::kCpu || dw_copy != nullptr ||
                       layout.send_rank_offset[layout.num_ranks] == 0,
                   "dw_copy is null for {} copies", layout.send_rank_offset[layout.num_ranks]);
  if (exec.device == Device::kCpu) return cpu::gather_slot_grads(layout, dw_copy, grad_weight);
  return LOCMOE_GPU_CALL(gpu::gather_slot_grads(layout, dw_copy, grad_weight, exec.stream));
}

Status dispatch_pack_fp8(const Exec& exec, const DispatchLayout& layout, ConstRows x,
                         Fp8Rows send) {
  LOCMOE_RETURN_IF_ERROR(check_exec(exec));
  LOCMOE_RETURN_IF_ERROR(check_dispatch(layout));
  LOCMOE_RETURN_IF_ERROR(check_rows("x", x));
  LOCMOE_RETURN_IF_ERROR(check_fp8("send", send.data, send.scale, send.rows, send.hidden));
  LOCMOE_CHECK_ARG(send.hidden == x.hidden, "send has hidden size {} but x has {}", send.hidden,
                   x.hidden);
  LOCMOE_RETURN_IF_ERROR(check_rows_eq("x", x, layout.num_tokens, "tokens of the plan"));
  LOCMOE_RETURN_IF_ERROR(check_capacity(exec, "send", ConstRows{send.data, send.rows, send.hidden},
                                        layout.send_rank_offset + layout.num_ranks, "copies"));
  if (exec.device == Device::kCpu) return cpu::dispatch_pack_fp8(layout, x, send);
  return LOCMOE_GPU_CALL(gpu::dispatch_pack_fp8(layout, x, send, exec.stream));
}

Status expert_unpack_fp8(const Exec& exec, const ExpertLayout& layout, ConstFp8Rows recv,
                         const float* slot_weight, Rows expert_in) {
  LOCMOE_RETURN_IF_ERROR(check_exec(exec));
  LOCMOE_RETURN_IF_ERROR(check_expert(layout));
  LOCMOE_RETURN_IF_ERROR(check_fp8("recv", recv.data, recv.scale, recv.rows, recv.hidden));
  LOCMOE_RETURN_IF_ERROR(check_rows("expert_in", expert_in));
  LOCMOE_CHECK_ARG(recv.hidden == expert_in.hidden, "expert_in has hidden size {} but recv has {}",
                   expert_in.hidden, recv.hidden);
  LOCMOE_CHECK_ARG(recv.rows == layout.num_recv, "recv has {} rows, expected {} (received rows)",
                   recv.rows, layout.num_recv);
  LOCMOE_RETURN_IF_ERROR(check_capacity(exec, "expert_in", expert_in,
                                        layout.expert_offset + layout.num_local_experts,
                                        "expert-major rows"));
  if (exec.device == Device::kCpu) {
    return cpu::expert_unpack_fp8(layout, recv, slot_weight, expert_in);
  }
  return LOCMOE_GPU_CALL(gpu::expert_unpack_fp8(layout, recv, slot_weight, expert_in, exec.stream));
}

}  // namespace locmoe::kernels
