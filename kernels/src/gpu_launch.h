// Private: the CUDA launches behind gpu:: (gpu_ops.cc). Plain functions with no Status (nvcc
// does not compile fmt's compile-time format checks): each enqueues its kernels on `stream` and
// returns the cudaError_t of the launch as an int. Arguments were checked by ops.cc/gpu_ops.cc.
#pragma once

#include <cstdint>

#include "locmoe/kernels/types.h"
#include "row_lists.h"

namespace locmoe::kernels::gpu {

// Limits of the CUDA layout kernels (shared-memory histograms): buckets = R*L resp. L.
inline constexpr int32_t kMaxBuckets = 8192;
inline constexpr int32_t kMaxSlots = 32;
// Rows per chunk of the device counting sort.
inline constexpr int32_t kSortChunk = 256;

// Workspace of the counting sort behind both layouts, in int32 words, for `rows` rows and
// `buckets` buckets: per-chunk histograms, chunk item counts (+ total), bucket counts and offsets.
inline int64_t sort_workspace_words(int64_t rows, int64_t buckets) {
  const int64_t chunks = (rows + kSortChunk - 1) / kSortChunk;
  return buckets * chunks + (chunks + 1) + buckets + (buckets + 1);
}

namespace launch {
int dispatch_layout(const PlanView& plan, const DispatchLayout& layout, void* stream);
int expert_layout(const int32_t* recv_slot_expert, int32_t num_recv, const ExpertLayout& layout,
                  void* stream);
// out[r] = index[r] < 0 ? 0 : in[index[r] / div] for r < min(*count, out.rows) (count may be
// null: out.rows).
int gather_copy(const int32_t* index, int32_t div, const int32_t* count, ConstRows in, Rows out,
                void* stream);
// RowList gather-sum (row_lists.h) over r < min(*count, out.rows).
int gather_sum(const detail::RowList& list, const int32_t* count, ConstRows in, Rows out,
               void* stream);
int slot_dot(const ExpertLayout& layout, ConstRows grad, ConstRows expert_out, float* dw,
             void* stream);
int gather_slot_grads(const DispatchLayout& layout, const float* dw_copy, float* grad_weight,
                      void* stream);
int dispatch_pack_fp8(const DispatchLayout& layout, ConstRows x, Fp8Rows send, void* stream);
int expert_unpack_fp8(const ExpertLayout& layout, ConstFp8Rows recv, const float* slot_weight,
                      Rows expert_in, void* stream);
}  // namespace launch

}  // namespace locmoe::kernels::gpu
