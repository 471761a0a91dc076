// Sizing and carving of layout buffers (host-only pointer arithmetic; the buffer may be device
// memory: nothing here dereferences it).
#include "locmoe/kernels/layout.h"

#include <limits>

#include "backend.h"
#include "locmoe/core/check.h"

namespace locmoe::kernels {

const char* dtype_name(DType d) noexcept {
  switch (d) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
  }
  return "unknown";
}

namespace {

constexpr int64_t kAlign = 16;
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();

// Hands out consecutive 16-byte aligned pieces of one buffer (or, with base nullptr, only adds
// up their sizes).
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(int64_t count) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += (count * static_cast<int64_t>(sizeof(T)) + kAlign - 1) / kAlign * kAlign;
    return p;
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

Status check_dispatch_dims(int32_t max_tokens, int32_t k, int32_t num_ranks,
                           int32_t experts_per_rank) {
  LOCMOE_CHECK_ARG(max_tokens >= 0, "max_tokens {} must be >= 0", max_tokens);
  LOCMOE_CHECK_ARG(k >= 1, "k {} must be >= 1", k);
  LOCMOE_CHECK_ARG(num_ranks >= 1, "num_ranks {} must be >= 1", num_ranks);
  LOCMOE_CHECK_ARG(experts_per_rank >= 1, "experts_per_rank {} must be >= 1", experts_per_rank);
  LOCMOE_CHECK_RANGE(static_cast<int64_t>(max_tokens) * k <= kMaxRows,
                     "max_tokens {} * k {} exceeds 2^31-1 slots", max_tokens, k);
  LOCMOE_CHECK_RANGE(static_cast<int64_t>(num_ranks) * experts_per_rank <= kMaxRows,
                     "num_ranks {} * experts_per_rank {} exceeds 2^31-1 experts", num_ranks,
                     experts_per_rank);
  return ok_status();
}

DispatchLayout carve_dispatch(char* base, int32_t max_tokens, int32_t k, int32_t num_ranks,
                              int32_t experts_per_rank, int64_t* used) {
  DispatchLayout l;
  l.max_tokens = max_tokens;
  l.k = k;
  l.num_ranks = num_ranks;
  l.experts_per_rank = experts_per_rank;
  l.max_copies = static_cast<int32_t>(max_copies(max_tokens, k, num_ranks));
  Carver c(base);
  l.send_rank_count = c.take<int32_t>(num_ranks);
  l.send_rank_offset = c.take<int32_t>(num_ranks + 1);
  l.copy_token = c.take<int32_t>(l.max_copies);
  l.copy_slot_expert = c.take<int32_t>(static_cast<int64_t>(l.max_copies) * k);
  l.copy_slot_weight = c.take<float>(static_cast<int64_t>(l.max_copies) * k);
  l.token_copy_offset = c.take<int32_t>(static_cast<int64_t>(max_tokens) + 1);
  l.token_copy = c.take<int32_t>(l.max_copies);
  l.workspace_bytes =
      gpu::sort_workspace_words(max_tokens, static_cast<int64_t>(num_ranks) * experts_per_rank) * 4;
  l.workspace = c.take<char>(l.workspace_bytes);
  *used = c.used();
  return l;
}

Status check_expert_dims(int32_t max_recv, int32_t k, int32_t num_local_experts, int32_t align) {
  LOCMOE_CHECK_ARG(max_recv >= 0, "max_recv {} must be >= 0", max_recv);
  LOCMOE_CHECK_ARG(k >= 1, "k {} must be >= 1", k);
  LOCMOE_CHECK_ARG(num_local_experts >= 1, "num_local_experts {} must be >= 1", num_local_experts);
  LOCMOE_CHECK_ARG(align >= 1, "align {} must be >= 1", align);
  LOCMOE_CHECK_RANGE(max_expert_rows(max_recv, k, num_local_experts, align) <= kMaxRows,
                     "max_recv {} * k {} + padding exceeds 2^31-1 rows", max_recv, k);
  return ok_status();
}

ExpertLayout carve_expert(char* base, int32_t max_recv, int32_t k, int32_t num_local_experts,
                          int32_t align, int64_t* used) {
  ExpertLayout l;
  l.max_recv = max_recv;
  l.k = k;
  l.num_local_experts = num_local_experts;
  l.align = align;
  l.max_rows = static_cast<int32_t>(max_expert_rows(max_recv, k, num_local_experts, align));
  Carver c(base);
  l.expert_count = c.take<int32_t>(num_local_experts);
  l.expert_offset = c.take<int32_t>(num_local_experts + 1);
  l.recv_pos = c.take<int32_t>(static_cast<int64_t>(max_recv) * k);
  l.row_src = c.take<int32_t>(l.max_rows);
  l.workspace_bytes = gpu::sort_workspace_words(max_recv, num_local_experts) * 4;
  l.workspace = c.take<char>(l.workspace_bytes);
  *used = c.used();
  return l;
}

Status check_buffer(void* buffer, int64_t bytes, int64_t need) {
  LOCMOE_CHECK_ARG(buffer != nullptr, "layout buffer is null ({} bytes needed)", need);
  LOCMOE_CHECK_ARG(reinterpret_cast<uintptr_t>(buffer) % kAlign == 0,
                   "layout buffer {} is not 16-byte aligned", buffer);
  LOCMOE_CHECK_RANGE(bytes >= need, "layout buffer has {} bytes, {} needed", bytes, need);
  return ok_status();
}

}  // namespace

Result<int64_t> dispatch_layout_bytes(int32_t max_tokens, int32_t k, int32_t num_ranks,
                                      int32_t experts_per_rank) {
  LOCMOE_RETURN_IF_ERROR(check_dispatch_dims(max_tokens, k, num_ranks, experts_per_rank));
  int64_t used = 0;
  carve_dispatch(nullptr, max_tokens, k, num_ranks, experts_per_rank, &used);
  return used;
}

Result<DispatchLayout> carve_dispatch_layout(void* buffer, int64_t bytes, int32_t max_tokens,
                                             int32_t k, int32_t num_ranks,
                                             int32_t experts_per_rank) {
  LOCMOE_ASSIGN_OR_RETURN(int64_t need,
                          dispatch_layout_bytes(max_tokens, k, num_ranks, experts_per_rank));
  LOCMOE_RETURN_IF_ERROR(check_buffer(buffer, bytes, need));
  int64_t used = 0;
  return carve_dispatch(static_cast<char*>(buffer), max_tokens, k, num_ranks, experts_per_rank,
                        &used);
}

Result<int64_t> expert_layout_bytes(int32_t max_recv, int32_t k, int32_t num_local_experts,
                                    int32_t align) {
  LOCMOE_RETURN_IF_ERROR(check_expert_dims(max_recv, k, num_local_experts, align));
  int64_t used = 0;
  carve_expert(nullptr, max_recv, k, num_local_experts, align, &used);
  return used;
}

Result<ExpertLayout> carve_expert_layout(void* buffer, int64_t bytes, int32_t max_recv, int32_t k,
                                         int32_t num_local_experts, int32_t align) {
  LOCMOE_ASSIGN_OR_RETURN(int64_t need, expert_layout_bytes(max_recv, k, num_local_experts, align));
  LOCMOE_RETURN_IF_ERROR(check_buffer(buffer, bytes, need));
  int64_t used = 0;
  return carve_expert(static_cast<char*>(buffer), max_recv, k, num_local_experts, align, &used);
}

}  // namespace locmoe::kernels
