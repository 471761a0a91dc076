// Private: the gather-sum every row reduction is made of, shared by the CPU references and the
// CUDA kernels so both visit the same sources in the same order and round the same way.
//
//   out[r] = sum over entries e in [begin(r), end(r)) with src(e) >= 0, in e order,
//            of w(e) * in[src(e)]            (fp32, w = 1 when there are no weights)
//
// slot_reduce:    begin = r*k, end = r*k+k, src = recv_pos[e], w = slot_weight[e]
// token_combine:  begin = token_copy_offset[r], end = ..[r+1], src = token_copy[e], no weight
// weighted unpack: begin = r, end = r+1, src = row_src[r] / k, w = slot_weight[row_src[r]]
#pragma once

#include <cstdint>

#include "locmoe/core/hd.h"
#include "locmoe/kernels/types.h"

namespace locmoe::kernels::detail {

struct RowList {
  const int32_t* offsets = nullptr;  // [rows+1] CSR offsets, or nullptr: begin = r*stride
  int32_t stride = 1;                // entries per row when offsets is nullptr
  const int32_t* index = nullptr;    // [entries] raw source index, -1 = skip
  int32_t index_div = 1;             // source row = index[e] / index_div
  const float* weight = nullptr;     // nullptr = unweighted
  bool weight_by_index = false;      // weight[index[e]] instead of weight[e]

  LOCMOE_HD int32_t begin(int32_t r) const { return offsets ? offsets[r] : r * stride; }
  LOCMOE_HD int32_t end(int32_t r) const { return offsets ? offsets[r + 1] : (r + 1) * stride; }
  // Source row of entry e, -1 when the entry contributes nothing.
  LOCMOE_HD int32_t src(int32_t e) const {
    const int32_t v = index[e];
    return v < 0 ? -1 : v / index_div;
  }
  LOCMOE_HD float w(int32_t e) const {
    if (!weight) return 1.0f;
    return weight_by_index ? weight[index[e]] : weight[e];
  }
};

// acc + w * x, rounded after the product and after the sum (never fused into one FMA), so host
// and device give the same bits. Unweighted sums skip the product (w == 1 is exact anyway).
LOCMOE_HD float weighted_add(float acc, float w, float x) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(acc, __fmul_rn(w, x));
#else
  return acc + w * x;  // the target compiles host code with -ffp-contract=off
#endif
}

// The list of each reduction (host-side constructors, used by both backends).
inline RowList slot_reduce_list(const ExpertLayout& l, const float* slot_weight) {
  RowList list;
  list.stride = l.k;
  list.index = l.recv_pos;
  list.weight = slot_weight;
  return list;
}
inline RowList token_combine_list(const DispatchLayout& l) {
  RowList list;
  list.offsets = l.token_copy_offset;
  list.index = l.token_copy;
  return list;
}
inline RowList weighted_unpack_list(const ExpertLayout& l, const float* slot_weight) {
  RowList list;
  list.index = l.row_src;
  list.index_div = l.k;
  list.weight = slot_weight;
  list.weight_by_index = true;
  return list;
}

}  // namespace locmoe::kernels::detail
