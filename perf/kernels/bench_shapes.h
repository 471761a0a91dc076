// Shapes and inputs shared by the CPU and GPU kernel benchmarks.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "locmoe/kernels/ops.h"
#include "locmoe/router/plan.h"

namespace kbench {

using namespace locmoe;
using namespace locmoe::kernels;

// One batch: T tokens of H elements, top-k over R ranks x L experts, all slots accepted,
// distinct experts per token drawn uniformly (so most tokens go to several ranks).
struct Shape {
  int32_t tokens, hidden, k, ranks, experts_per_rank;
  DType dtype;
};

inline RoutingPlan bench_plan(const Shape& s) {
  RoutingPlan p;
  p.num_tokens = s.tokens;
  p.k = s.k;
  p.num_ranks = s.ranks;
  p.experts_per_rank = s.experts_per_rank;
  p.num_experts = s.ranks * s.experts_per_rank;
  p.node_of_rank.assign(s.ranks, 0);
  p.expert.resize(static_cast<size_t>(s.tokens) * s.k);
  p.weight.assign(p.expert.size(), 1.0f / s.k);
  p.slot_dropped.assign(p.expert.size(), 0);
  std::mt19937 rng(42);
  std::vector<int32_t> all(p.num_experts);
  for (int32_t e = 0; e < p.num_experts; ++e) all[e] = e;
  for (int32_t t = 0; t < s.tokens; ++t) {
    for (int32_t j = 0; j < s.k; ++j) {  // partial Fisher-Yates: k distinct experts
      std::swap(all[j], all[j + rng() % (p.num_experts - j)]);
      p.expert[t * s.k + j] = all[j];
    }
  }
  return p;
}

inline int64_t row_bytes(const Shape& s) {
  return static_cast<int64_t>(s.hidden) * dtype_size(s.dtype);
}

// CPU shapes (small enough for a shared 2-core machine): 4 KiB rows in bf16 and f32, k = 8 over
// 8 ranks x 8 experts.
inline const Shape kCpuShapes[] = {
    {2048, 2048, 8, 8, 8, DType::kBF16},
    {2048, 1024, 8, 8, 8, DType::kF32},
};
// GPU shapes: DeepSeek-V3-like layer (H = 7168, 256 experts over 8 ranks, k = 8) in bf16, and
// the same tokens with 4096-wide f32 rows.
inline const Shape kGpuShapes[] = {
    {8192, 7168, 8, 8, 32, DType::kBF16},
    {8192, 4096, 8, 8, 32, DType::kF32},
};

}  // namespace kbench
