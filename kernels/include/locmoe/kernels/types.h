// Plain types of the EP kernels, shared by host and device code: where an operation runs
// (Exec), blocks of rows (Rows, ConstRows), the two layouts (DispatchLayout, ExpertLayout) and
// the LOCMOE_HD index logic that the CPU references and the CUDA kernels both run.
//
// This header includes nothing that nvcc cannot compile (no fmt, no Status), so .cu files and
// users' CUDA code can include it. The functions that make and use these types are in layout.h
// (sizes, carving) and ops.h (the operations).
//
// A layout struct owns nothing: its pointers refer to ONE caller-owned buffer (host or device
// memory) that carve_*_layout() (layout.h) cuts into arrays. The structs are passed by value to
// CUDA kernels, so on a device buffer every pointer is a device pointer. Row indices and counts
// are int32 (a batch has fewer than 2^31 rows; carving checks it).
#pragma once

#include <cstdint>

#include "locmoe/core/hd.h"
#include "locmoe/kernels/dtype.h"
#include "locmoe/router/plan.h"

namespace locmoe::kernels {

enum class Device : int32_t { kCpu = 0, kCuda = 1 };

// Where an operation runs. stream is a cudaStream_t (ignored on the CPU).
struct Exec {
  Device device = Device::kCpu;
  void* stream = nullptr;
};

// A read-only block of rows. Row r starts at data + r * stride bytes; stride 0 means dense
// (hidden * dtype size). A larger stride leaves bytes between rows untouched, so rows can share
// a buffer with other per-row data (the Dispatcher's rows carry their slot metadata behind them).
// Only the pure copies take strided rows: dispatch_pack's send and expert_unpack's recv without
// slot weights; every other operation refuses a stride other than 0 or the dense one.
struct ConstRows {
  const void* data = nullptr;
  int32_t rows = 0;
  int32_t hidden = 0;
  DType dtype = DType::kF32;
  int64_t stride = 0;
};
// A writable block of rows (stride as in ConstRows).
struct Rows {
  void* data = nullptr;
  int32_t rows = 0;
  int32_t hidden = 0;
  DType dtype = DType::kF32;
  int64_t stride = 0;
  operator ConstRows() const { return ConstRows{data, rows, hidden, dtype, stride}; }  // NOLINT
};
// Bytes from one row to the next.
LOCMOE_HD int64_t row_stride(const ConstRows& r) {
  return r.stride != 0 ? r.stride : static_cast<int64_t>(r.hidden) * dtype_size(r.dtype);
}

// Quantized rows: fp8 e4m3 codes (dtype.h) with one fp32 scale per row; element h of row r is
// fp8e4m3_to_float(data[r*hidden + h]) * scale[r].
struct Fp8Rows {
  uint8_t* data = nullptr;  // [rows * hidden]
  float* scale = nullptr;   // [rows]
  int32_t rows = 0;
  int32_t hidden = 0;
};
struct ConstFp8Rows {
  const uint8_t* data = nullptr;
  const float* scale = nullptr;
  int32_t rows = 0;
  int32_t hidden = 0;
};

// ---- Source side (step 1): one copy per (token, destination rank) -------------------------
//
// Copies are ordered by (destination rank, local expert of the copy's owning slot, token), where
// the owning slot is the token's first slot on that rank (first_slot_for_rank in plan.h). The
// rows of rank r are copies [send_rank_offset[r], send_rank_offset[r+1]) of the send buffer.
struct DispatchLayout {
  // Capacities (set by carve_dispatch_layout, never changed).
  int32_t max_tokens = 0;        // largest T this buffer serves
  int32_t k = 0;                 // slots per token
  int32_t num_ranks = 0;         // R
  int32_t experts_per_rank = 0;  // L
  int32_t max_copies = 0;        // max_copies(max_tokens, k, R): capacity of the copy arrays
  // Set by dispatch_layout(): the T of the last plan laid out.
  int32_t num_tokens = 0;

  // Outputs of dispatch_layout() (C = send_rank_offset[R] = copies actually made):
  int32_t* send_rank_count = nullptr;    // [R] rows for each destination rank
  int32_t* send_rank_offset = nullptr;   // [R+1] exclusive prefix sum of send_rank_count
  int32_t* copy_token = nullptr;         // [max_copies], first C valid: source token of copy c
  int32_t* copy_slot_expert = nullptr;   // [max_copies*k]: for copy c and token slot j, the LOCAL
                                         // expert id on c's rank when slot j goes there, else -1
  float* copy_slot_weight = nullptr;     // [max_copies*k]: plan weight of those slots, else 0
  int32_t* token_copy_offset = nullptr;  // [max_tokens+1], first T+1 valid: token t's copies are
  int32_t* token_copy = nullptr;         // token_copy[token_copy_offset[t] .. [t+1]), rank order
  // Scratch of dispatch_layout() (counting-sort histograms); contents undefined between calls.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// ---- Receiver side (step 4): expert-major rows with per-expert alignment padding ------------
//
// Received row i (of N, in source-rank order) with slot j going to local expert e lands at row
// recv_pos[i*k+j] of the expert-major buffer. Order inside expert e's segment: received row,
// then slot (so source rank, then the source's copy order). Segment e spans rows
// [expert_offset[e], expert_offset[e+1]); its first expert_count[e] rows are data, the rest
// (fewer than `align`) padding. M = expert_offset[L] rows in all.
struct ExpertLayout {
  // Capacities (set by carve_expert_layout, never changed).
  int32_t max_recv = 0;           // largest N this buffer serves
  int32_t k = 0;                  // slots per row
  int32_t num_local_experts = 0;  // L
  int32_t align = 1;              // segment sizes are multiples of align (>= 1)
  int32_t max_rows = 0;           // max_expert_rows(max_recv, k, L, align): capacity of row_src
  // Set by expert_layout(): the N of the last call.
  int32_t num_recv = 0;

  // Outputs of expert_layout():
  int32_t* expert_count = nullptr;   // [L] data rows of each local expert
  int32_t* expert_offset = nullptr;  // [L+1] padded prefix sums; M = expert_offset[L]
  int32_t* recv_pos = nullptr;       // [max_recv*k], first N*k valid: expert-major row or -1
  int32_t* row_src = nullptr;        // [max_rows], first M valid: the slot i*k+j that fills the
                                     // row, -1 for a padding row (inverse of recv_pos)
  void* workspace = nullptr;         // scratch of expert_layout()
  int64_t workspace_bytes = 0;
};

// ---- Sizes (query first, then carve) -------------------------------------------------------

// Upper bound of copies for T tokens: T * min(k, R).
LOCMOE_HD int64_t max_copies(int64_t tokens, int64_t k, int64_t num_ranks) {
  return tokens * (k < num_ranks ? k : num_ranks);
}
// Upper bound of expert-major rows for N received rows: N*k data rows + (align-1) per expert.
LOCMOE_HD int64_t max_expert_rows(int64_t num_recv, int64_t k, int64_t num_local_experts,
                                  int64_t align) {
  return num_recv * k + num_local_experts * (align - 1);
}
// x rounded up to a multiple of a (a >= 1).
LOCMOE_HD int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// ---- Index logic shared by host and device -------------------------------------------------

// Counting-sort bucket of slot j of token t in the dispatch order: dest_rank * L + local expert
// when the slot owns the token's copy to its rank, else -1 (not an owner, unused or dropped).
LOCMOE_HD int32_t dispatch_bucket(const PlanView& p, int32_t t, int32_t j) {
  if (!first_slot_for_rank(p, t, j)) return -1;
  const int32_t e = p.expert[t * p.k + j];
  return rank_of_expert(p, e) * p.experts_per_rank + e % p.experts_per_rank;
}
// Destination rank of a dispatch bucket.
LOCMOE_HD int32_t bucket_rank(int32_t bucket, int32_t experts_per_rank) {
  return bucket / experts_per_rank;
}
// copy_slot_expert entry for slot j of token t in its copy to dest_rank.
LOCMOE_HD int32_t copy_slot_local_expert(const PlanView& p, int32_t t, int32_t j,
                                         int32_t dest_rank) {
  const int32_t e = p.expert[t * p.k + j];
  if (e < 0 || rank_of_expert(p, e) != dest_rank) return -1;
  return e % p.experts_per_rank;
}
// Number of copies of token t (distinct destination ranks of its accepted slots).
LOCMOE_HD int32_t token_copy_count(const PlanView& p, int32_t t) {
  int32_t n = 0;
  for (int32_t j = 0; j < p.k; ++j) n += first_slot_for_rank(p, t, j) ? 1 : 0;
  return n;
}
// Index of token t's copy to dest_rank among its copies in rank order (copies to lower ranks).
LOCMOE_HD int32_t token_copy_rank(const PlanView& p, int32_t t, int32_t dest_rank) {
  int32_t n = 0;
  for (int32_t j = 0; j < p.k; ++j) {
    if (first_slot_for_rank(p, t, j) && rank_of_expert(p, p.expert[t * p.k + j]) < dest_rank) ++n;
  }
  return n;
}
// Gradient of slot j of token t from the per-copy gradients dw_copy[C*k]: the entry of the one
// copy that carried slot j, 0 when no copy did (slot unused or dropped).
LOCMOE_HD float slot_grad(const DispatchLayout& l, const float* dw_copy, int32_t t, int32_t j) {
  for (int32_t i = l.token_copy_offset[t]; i < l.token_copy_offset[t + 1]; ++i) {
    const int32_t c = l.token_copy[i];
    if (l.copy_slot_expert[c * l.k + j] >= 0) return dw_copy[c * l.k + j];
  }
  return 0.0f;
}
// Receiver bucket (local expert) of slot value v, -1 when absent or out of [0, L).
LOCMOE_HD int32_t expert_bucket(int32_t v, int32_t num_local_experts) {
  return (v >= 0 && v < num_local_experts) ? v : -1;
}

}  // namespace locmoe::kernels
