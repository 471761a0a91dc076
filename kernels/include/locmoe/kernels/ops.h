// The EP kernels (EP_DESIGN.md): every operation runs on the host (a plain CPU reference) or on
// a CUDA device (a fused kernel, one pass over the data), chosen by Exec. Both give the same
// results: bit-exact for data movement and layouts; reductions accumulate in fp32 in the same
// fixed order (slot order, copy order), so they are deterministic run to run and agree with the
// CPU to rounding of the last bit (slot_dot: within 1e-5 relative, it sums in a different order).
//
// Common rules:
//  * Arguments are checked on the host before anything runs (shapes, dtypes, capacities, null
//    pointers); a bad one gives kInvalidArgument / kOutOfRange naming it. Values inside device
//    buffers cannot be checked without a sync: the CUDA path trusts layouts made by this API.
//  * Exec{Device::kCuda, stream}: every pointer (plan arrays, layout buffer, rows) is device
//    memory; work is enqueued on `stream` (a cudaStream_t; nullptr = legacy default stream) and the
//    call returns without synchronizing. Counts a layout produced stay on the device: copy them
//    back (cudaMemcpyAsync + sync) when the host needs them (all-to-all counts, expert rows).
//  * Exec{Device::kCpu}: every pointer is host memory; the call is synchronous.
//  * Rows: `rows` x `hidden` elements of `dtype`, contiguous (row stride = hidden). Outputs are
//    fully written over the rows the operation defines (padding included); nothing is allocated.
//  * dtypes: kF32 and kBF16; the output dtype equals the input dtype; sums are fp32.
#pragma once

#include <cstdint>

#include "locmoe/core/status.h"
#include "locmoe/kernels/dtype.h"
#include "locmoe/kernels/layout.h"
#include "locmoe/kernels/types.h"
#include "locmoe/router/plan.h"

namespace locmoe::kernels {

// Step 1. Lays out the copies of `plan` (T = plan.num_tokens <= layout.max_tokens; k, R and
// experts_per_rank must equal the layout's). Writes every output array of `layout` and
// layout.num_tokens. Plan arrays read: expert[T*k] and weight[T*k] only (node_of_rank and
// slot_dropped are not read and may be null). Dropped and unused slots make no copy; a token
// with no accepted slot has no copy. Expert ids outside [-1, E): kOutOfRange on the CPU; on the
// device (unchecked, see above) such a slot makes no copy.
Status dispatch_layout(const Exec& exec, const PlanView& plan, DispatchLayout& layout);

// Step 2. send[c] = x[copy_token[c]] for every copy c < C. x: [T, H] with T = layout.num_tokens;
// send: same H and dtype, rows >= C (on the CPU checked; on the device rows beyond the actual C
// are not written, rows < C is the caller's error and only the first `rows` copies are packed).
Status dispatch_pack(const Exec& exec, const DispatchLayout& layout, ConstRows x, Rows send);

// Step 4. Lays out N = num_recv received rows (<= layout.max_recv) whose slot metadata is
// recv_slot_expert[N*k] (local expert ids; -1 = slot not for this rank; ids outside [0, L) are
// treated as -1 on the device and rejected on the CPU). Writes every output array and num_recv.
Status expert_layout(const Exec& exec, const int32_t* recv_slot_expert, int32_t num_recv,
                     ExpertLayout& layout);

// Step 5. expert_in[m] = w * recv[row_src[m] / k] for every data row m < M, 0 for padding rows,
// where w = slot_weight[row_src[m]] when slot_weight (float[N*k]) is given, else 1 (pure copy,
// bit-exact). recv: [N, H]; expert_in: same H and dtype, rows >= M (as for dispatch_pack).
Status expert_unpack(const Exec& exec, const ExpertLayout& layout, ConstRows recv,
                     const float* slot_weight, Rows expert_in);

// Step 6. back[i] = sum over slots j with recv_pos[i*k+j] >= 0, in slot order, of
// w[i*k+j] * expert_out[recv_pos[i*k+j]] (fp32 sum; w = slot_weight, or 1 when nullptr).
// expert_out: [>= M, H]; back: [N, H] same H and dtype. A row with no slot gets 0.
Status slot_reduce(const Exec& exec, const ExpertLayout& layout, ConstRows expert_out,
                   const float* slot_weight, Rows back);

// Step 8. out[t] = sum over token t's copies in rank order of returned[c] (fp32 sum); 0 for a
// token with no copy. returned: [>= C, H] in copy order; out: [T, H] same H and dtype.
Status token_combine(const Exec& exec, const DispatchLayout& layout, ConstRows returned, Rows out);

// Backward of the weights (receiver). dw[i*k+j] = <grad[i], expert_out[recv_pos[i*k+j]]>
// (fp32 dot), 0 where recv_pos is -1. grad: [N, H]; expert_out: [>= M, H]; dw: float[N*k].
Status slot_dot(const Exec& exec, const ExpertLayout& layout, ConstRows grad, ConstRows expert_out,
                float* dw);

// Backward of the weights (source). dw_copy: float[C*k], copy c's slot gradients in copy order
// (slot_dot's output sent back). grad_weight[t*k+j] = dw_copy[c*k+j] for the copy c of token t
// whose copy_slot_expert[c*k+j] >= 0, 0 for slots with no copy. grad_weight: float[T*k].
Status gather_slot_grads(const Exec& exec, const DispatchLayout& layout, const float* dw_copy,
                         float* grad_weight);

// ---- fp8 dispatch (optional): quantize at the source, dequantize into the expert buffer --------

// Step 2 with fp8 rows: for every copy c < C, with row = x[copy_token[c]] (f32 or bf16) and
// amax = max |row| (0 -> 1): send.scale[c] = amax / 448, send.data[c] = e4m3(row * (448 / amax)).
// Send scales travel with the rows (C floats). send: rows >= C, same hidden as x.
Status dispatch_pack_fp8(const Exec& exec, const DispatchLayout& layout, ConstRows x, Fp8Rows send);

// Step 5 from fp8 rows: expert_in[m] = w * (e4m3 value * recv.scale[i]) rounded to expert_in's
// dtype (f32 or bf16), i = row_src[m] / k, w as in expert_unpack (nullptr = 1); padding rows 0.
Status expert_unpack_fp8(const Exec& exec, const ExpertLayout& layout, ConstFp8Rows recv,
                         const float* slot_weight, Rows expert_in);

}  // namespace locmoe::kernels
