// Test fixture for the EP kernels: random routing plans, rows in f32/bf16, owning layouts, and
// NAIVE references of every step written independently of kernels/src (plain loops over tokens,
// ranks, experts and slots; no counting sort, no shared index helpers).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "locmoe/kernels/ops.h"
#include "locmoe/router/plan.h"

namespace ktest {

using namespace locmoe;
using namespace locmoe::kernels;

enum class Routing { kRandom, kAllToOneExpert, kAllDropped };

struct Case {
  int32_t ranks = 4;
  int32_t ranks_per_node = 2;
  int32_t experts_per_rank = 3;
  int32_t k = 3;
  int32_t tokens = 37;  // per rank
  int32_t hidden = 24;
  int32_t align = 1;
  DType dtype = DType::kF32;
  Routing routing = Routing::kRandom;
  uint32_t seed = 1;
};

// A case in one line: R ranks (2 per node), L experts per rank, k slots, T tokens per rank,
// H elements per row, alignment, dtype.
inline Case mk(int32_t R, int32_t L, int32_t k, int32_t T, int32_t H, int32_t align, DType d,
               Routing routing = Routing::kRandom, uint32_t seed = 1) {
  Case c;
  c.ranks = R;
  c.ranks_per_node = 2;
  c.experts_per_rank = L;
  c.k = k;
  c.tokens = T;
  c.hidden = H;
  c.align = align;
  c.dtype = d;
  c.routing = routing;
  c.seed = seed;
  return c;
}

// Test-name suffix of a case.
inline std::string case_name(const Case& c) {
  const char* routing[] = {"random", "one_expert", "all_dropped"};
  return std::string(routing[static_cast<int>(c.routing)]) + "_R" + std::to_string(c.ranks) + "_L" +
         std::to_string(c.experts_per_rank) + "_k" + std::to_string(c.k) + "_T" +
         std::to_string(c.tokens) + "_H" + std::to_string(c.hidden) + "_a" +
         std::to_string(c.align) + "_" + dtype_name(c.dtype);
}

// Plan of `rank`: accepted slots first (distinct experts, random order, weights in [0.1, 1)),
// then unused slots, some marked dropped. Roughly 1 in 8 tokens has no accepted slot at all.
inline RoutingPlan make_plan(const Case& c, int32_t rank) {
  RoutingPlan p;
  p.num_tokens = c.tokens;
  p.k = c.k;
  p.num_ranks = c.ranks;
  p.experts_per_rank = c.experts_per_rank;
  p.num_experts = c.ranks * c.experts_per_rank;
  p.num_nodes = (c.ranks + c.ranks_per_node - 1) / c.ranks_per_node;
  p.rank = rank;
  for (int32_t r = 0; r < c.ranks; ++r) p.node_of_rank.push_back(r / c.ranks_per_node);
  p.expert.assign(static_cast<size_t>(c.tokens) * c.k, -1);
  p.weight.assign(p.expert.size(), 0.0f);
  p.slot_dropped.assign(p.expert.size(), 0);
  std::mt19937 rng(c.seed * 7919u + static_cast<uint32_t>(rank));
  std::vector<int32_t> all(p.num_experts);
  for (int32_t e = 0; e < p.num_experts; ++e) all[e] = e;
  for (int32_t t = 0; t < c.tokens; ++t) {
    int32_t m = 0;
    if (c.routing == Routing::kRandom) {
      m = (rng() % 8 == 0) ? 0 : 1 + static_cast<int32_t>(rng() % std::min(c.k, p.num_experts));
      std::shuffle(all.begin(), all.end(), rng);
    } else if (c.routing == Routing::kAllToOneExpert) {
      m = 1;
      all[0] = p.num_experts - 1;
    }
    for (int32_t j = 0; j < c.k; ++j) {
      if (j < m) {
        p.expert[t * c.k + j] = all[j];
        p.weight[t * c.k + j] = 0.1f + 0.9f * static_cast<float>(rng() % 1000) / 1000.0f;
      } else {
        p.slot_dropped[t * c.k + j] = (c.routing == Routing::kAllDropped || rng() % 2) ? 1 : 0;
      }
    }
  }
  return p;
}

// A block of rows in either dtype, stored as raw bytes.
struct HostRows {
  int32_t rows = 0, hidden = 0;
  DType dtype = DType::kF32;
  std::vector<uint8_t> bytes;

  HostRows() = default;
  HostRows(int32_t r, int32_t h, DType d)
      : rows(r),
        hidden(h),
        dtype(d),
        bytes(static_cast<size_t>(r) * h * dtype_size(d) + 16, 0xAB) {}
  float get(int64_t r, int64_t h) const {
    const int64_t i = r * hidden + h;
    if (dtype == DType::kF32) {
      float v;
      std::memcpy(&v, bytes.data() + i * 4, 4);
      return v;
    }
    uint16_t b;
    std::memcpy(&b, bytes.data() + i * 2, 2);
    uint32_t u = static_cast<uint32_t>(b) << 16;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  }
  // Stores v, which must be representable in the dtype (tests keep values exact).
  void set(int64_t r, int64_t h, float v) {
    const int64_t i = r * hidden + h;
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + i * 4, &v, 4);
      return;
    }
    uint32_t u;
    std::memcpy(&u, &v, 4);
    const uint16_t b = static_cast<uint16_t>(u >> 16);
    std::memcpy(bytes.data() + i * 2, &b, 2);
  }
  size_t row_bytes() const { return static_cast<size_t>(hidden) * dtype_size(dtype); }
  const uint8_t* row(int64_t r) const { return bytes.data() + r * row_bytes(); }
  uint8_t* row(int64_t r) { return bytes.data() + r * row_bytes(); }
  Rows view() { return Rows{bytes.data(), rows, hidden, dtype}; }
  ConstRows cview() const { return ConstRows{bytes.data(), rows, hidden, dtype}; }
};

// Values that are exact in bf16 and stay exact through small sums: multiples of 1/8 in [-4, 4].
inline HostRows make_rows(int32_t rows, int32_t hidden, DType dtype, uint32_t seed) {
  HostRows x(rows, hidden, dtype);
  std::mt19937 rng(seed);
  for (int32_t r = 0; r < rows; ++r)
    for (int32_t h = 0; h < hidden; ++h)
      x.set(r, h, static_cast<float>(static_cast<int32_t>(rng() % 65) - 32) / 8.0f);
  return x;
}

// Owning host buffers of the two layouts.
struct HostDispatchLayout {
  std::vector<uint64_t> buf;  // 8-byte elements; the data pointer is 16-byte aligned by new
  DispatchLayout l;
  HostDispatchLayout(int32_t max_tokens, int32_t k, int32_t ranks, int32_t L) {
    auto bytes = dispatch_layout_bytes(max_tokens, k, ranks, L);
    EXPECT_TRUE(bytes.ok()) << bytes.status().to_string();
    buf.resize(*bytes / 8 + 2);
    auto lay = carve_dispatch_layout(buf.data(), *bytes, max_tokens, k, ranks, L);
    EXPECT_TRUE(lay.ok()) << lay.status().to_string();
    l = *lay;
  }
  int32_t copies() const { return l.send_rank_offset[l.num_ranks]; }
};
struct HostExpertLayout {
  std::vector<uint64_t> buf;
  ExpertLayout l;
  HostExpertLayout(int32_t max_recv, int32_t k, int32_t L, int32_t align) {
    auto bytes = expert_layout_bytes(max_recv, k, L, align);
    EXPECT_TRUE(bytes.ok()) << bytes.status().to_string();
    buf.resize(*bytes / 8 + 2);
    auto lay = carve_expert_layout(buf.data(), *bytes, max_recv, k, L, align);
    EXPECT_TRUE(lay.ok()) << lay.status().to_string();
    l = *lay;
  }
  int32_t rows() const { return l.expert_offset[l.num_local_experts]; }
};

// ---- Naive references -------------------------------------------------------------------------

// One expected copy: source token, destination rank, slot metadata.
struct RefCopy {
  int32_t token, rank;
  std::vector<int32_t> slot_expert;  // [k] local expert or -1
  std::vector<float> slot_weight;    // [k]
};

// Copies in (rank, local expert of the token's first slot on that rank, token) order, found by
// brute force over every (rank, local expert, token).
inline std::vector<RefCopy> ref_copies(const RoutingPlan& p) {
  std::vector<RefCopy> out;
  const int32_t L = p.experts_per_rank;
  for (int32_t r = 0; r < p.num_ranks; ++r) {
    for (int32_t le = 0; le < L; ++le) {
      for (int32_t t = 0; t < p.num_tokens; ++t) {
        int32_t first = -1;
        for (int32_t j = 0; j < p.k && first < 0; ++j) {
          const int32_t e = p.expert[t * p.k + j];
          if (e >= 0 && e / L == r) first = e;
        }
        if (first < 0 || first % L != le) continue;
        RefCopy c{t, r, std::vector<int32_t>(p.k, -1), std::vector<float>(p.k, 0.0f)};
        for (int32_t j = 0; j < p.k; ++j) {
          const int32_t e = p.expert[t * p.k + j];
          if (e >= 0 && e / L == r) {
            c.slot_expert[j] = e % L;
            c.slot_weight[j] = p.weight[t * p.k + j];
          }
        }
        out.push_back(c);
      }
    }
  }
  return out;
}

// What one destination rank receives, concatenated over source ranks in rank order.
struct Received {
  HostRows x;
  std::vector<int32_t> slot_expert;  // [N*k]
  std::vector<float> slot_weight;    // [N*k]
  std::vector<int32_t> from_rank;    // [N] source rank of each row
  std::vector<int32_t> from_copy;    // [N] copy index at the source
};

// The simulated all-to-all-v: rows of every source s for rank d, in source-rank order.
inline Received exchange_to(int32_t d, const std::vector<HostDispatchLayout*>& lay,
                            const std::vector<HostRows*>& send, int32_t k) {
  Received rv;
  const int32_t H = send[0]->hidden;
  int32_t n = 0;
  for (size_t s = 0; s < lay.size(); ++s) n += lay[s]->l.send_rank_count[d];
  rv.x = HostRows(n, H, send[0]->dtype);
  int32_t i = 0;
  for (size_t s = 0; s < lay.size(); ++s) {
    const DispatchLayout& l = lay[s]->l;
    for (int32_t c = l.send_rank_offset[d]; c < l.send_rank_offset[d + 1]; ++c, ++i) {
      std::memcpy(rv.x.row(i), send[s]->row(c), rv.x.row_bytes());
      for (int32_t j = 0; j < k; ++j) {
        rv.slot_expert.push_back(l.copy_slot_expert[c * k + j]);
        rv.slot_weight.push_back(l.copy_slot_weight[c * k + j]);
      }
      rv.from_rank.push_back(static_cast<int32_t>(s));
      rv.from_copy.push_back(c);
    }
  }
  return rv;
}

// The way back: rows back_d[i] of every destination d return to their source copy slot.
inline HostRows exchange_back(int32_t s, int32_t copies, const std::vector<Received>& rv,
                              const std::vector<HostRows>& back) {
  HostRows out(copies, back[0].hidden, back[0].dtype);
  for (size_t d = 0; d < rv.size(); ++d)
    for (size_t i = 0; i < rv[d].from_rank.size(); ++i)
      if (rv[d].from_rank[i] == s)
        std::memcpy(out.row(rv[d].from_copy[i]), back[d].row(static_cast<int64_t>(i)),
                    out.row_bytes());
  return out;
}

// Expected expert-major slot list of a destination: for each local expert, every (row, slot)
// whose expert it is, in row then slot order; -1 marks padding rows.
inline std::vector<int32_t> ref_expert_rows(const std::vector<int32_t>& slot_expert, int32_t k,
                                            int32_t L, int32_t align,
                                            std::vector<int32_t>* counts) {
  std::vector<int32_t> rows;
  counts->assign(L, 0);
  const int32_t n = static_cast<int32_t>(slot_expert.size()) / k;
  for (int32_t e = 0; e < L; ++e) {
    for (int32_t i = 0; i < n; ++i)
      for (int32_t j = 0; j < k; ++j)
        if (slot_expert[i * k + j] == e) {
          rows.push_back(i * k + j);
          ++(*counts)[e];
        }
    while (rows.size() % align != 0) rows.push_back(-1);
  }
  return rows;
}

inline float rel_err(float got, float want) {
  return std::fabs(got - want) / std::max(1.0f, std::fabs(want));
}
// Relative tolerance of a reduced value against an fp64 naive reference. bf16: the forward
// combine rounds twice to bf16 (receiver partial sums, then the source's sum), each within
// 2^-8 relative (8-bit significand), so 2^-7. f32: a few fp32 roundings of short sums.
inline float reduce_tol(DType d) { return d == DType::kF32 ? 1e-5f : 1.0f / 128.0f; }

}  // namespace ktest
