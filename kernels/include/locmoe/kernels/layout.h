// Layout buffers of the EP data flow (EP_DESIGN.md steps 1 and 4): how big, and how to cut one.
//
// Size the buffer once for the largest batch with *_layout_bytes(), allocate it (host or device
// memory, 16-byte aligned), carve it once with carve_*_layout(), and every step after that
// allocates nothing. The layout structs themselves are in types.h.
#pragma once

#include <cstdint>

#include "locmoe/core/status.h"
#include "locmoe/kernels/types.h"

namespace locmoe::kernels {

// Bytes of the buffer a DispatchLayout needs for up to max_tokens tokens (arrays + workspace,
// each array 16-byte aligned). Negative or overflowing arguments give an error.
Result<int64_t> dispatch_layout_bytes(int32_t max_tokens, int32_t k, int32_t num_ranks,
                                      int32_t experts_per_rank);
// Cuts `buffer` (host or device memory, `bytes` long, 16-byte aligned, caller-owned and outliving
// the layout) into a DispatchLayout. Touches no memory, so a device pointer is fine.
Result<DispatchLayout> carve_dispatch_layout(void* buffer, int64_t bytes, int32_t max_tokens,
                                             int32_t k, int32_t num_ranks,
                                             int32_t experts_per_rank);

Result<int64_t> expert_layout_bytes(int32_t max_recv, int32_t k, int32_t num_local_experts,
                                    int32_t align);
Result<ExpertLayout> carve_expert_layout(void* buffer, int64_t bytes, int32_t max_recv, int32_t k,
                                         int32_t num_local_experts, int32_t align);

}  // namespace locmoe::kernels
