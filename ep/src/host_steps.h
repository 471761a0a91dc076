// Host implementations of the EP_DESIGN.md steps, used by the Dispatcher on host memory.
// (Stand-in until the kernels layer's CPU references are merged; same array contracts.)
#pragma once

#include <cstdint>
#include <cstring>

#include "locmoe/router/plan.h"

namespace locmoe::ep_detail {

// bf16 as raw bits: round-to-nearest-even from fp32, exact widening back.
inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
template <typename T> inline float load(const T* p, int64_t i);
template <> inline float load<float>(const float* p, int64_t i) { return p[i]; }
template <> inline float load<uint16_t>(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

struct SendLayout {
  int64_t* rank_count;       // [R]
  int64_t* rank_offset;      // [R+1]
  int32_t* copy_token;       // [C]
  int32_t* copy_slot_expert; // [C*k] local expert or -1
  float* copy_slot_weight;   // [C*k]
  int64_t* bucket;           // scratch [R*L+1]
};

// Step 1. Copies ordered by (dest rank, first local expert of the copy, token). Returns C.
inline int64_t dispatch_layout(const PlanView& p, const SendLayout& o) {
  const int32_t T = p.num_tokens, k = p.k, R = p.num_ranks, L = p.experts_per_rank;
  const int64_t B = static_cast<int64_t>(R) * L;
  for (int64_t b = 0; b <= B; ++b) o.bucket[b] = 0;
  for (int32_t t = 0; t < T; ++t)
    for (int32_t j = 0; j < k; ++j)
      if (first_slot_for_rank(p, t, j)) ++o.bucket[p.expert[t * k + j] + 1];
  for (int64_t b = 0; b < B; ++b) o.bucket[b + 1] += o.bucket[b];  // bucket[b] = start of b
  const int64_t C = o.bucket[B];
  for (int32_t r = 0; r < R; ++r) {
    o.rank_offset[r] = o.bucket[static_cast<int64_t>(r) * L];
    o.rank_count[r] = o.bucket[static_cast<int64_t>(r + 1) * L] - o.rank_offset[r];
  }
  o.rank_offset[R] = C;
  // Place copies, token order within a bucket.
  for (int32_t t = 0; t < T; ++t) {
    for (int32_t j = 0; j < k; ++j) {
      if (!first_slot_for_rank(p, t, j)) continue;
      const int32_t e = p.expert[t * k + j];
      const int32_t r = rank_of_expert(p, e);
      const int64_t c = o.bucket[e]++;
      o.copy_token[c] = t;
      for (int32_t i = 0; i < k; ++i) {
        const int32_t ei = p.expert[t * k + i];
        const bool here = ei >= 0 && rank_of_expert(p, ei) == r;
        o.copy_slot_expert[c * k + i] = here ? ei % L : -1;
        o.copy_slot_weight[c * k + i] = here ? p.weight[t * k + i] : 0.0f;
      }
    }
  }
  return C;
}

// Step 4: expert_count[L], padded expert_offset[L+1], recv_pos[N*k]. Returns slots placed.
inline int64_t expert_layout(const int32_t* recv_slot_expert, int64_t N, int32_t k, int32_t L,
                             int32_t align, int64_t* expert_count, int64_t* expert_offset,
                             int64_t* recv_pos) {
  for (int32_t l = 0; l < L; ++l) expert_count[l] = 0;
  for (int64_t s = 0; s < N * k; ++s)
    if (recv_slot_expert[s] >= 0) ++expert_count[recv_slot_expert[s]];
  expert_offset[0] = 0;
  int64_t placed = 0;
  for (int32_t l = 0; l < L; ++l) {
    placed += expert_count[l];
    expert_offset[l + 1] = expert_offset[l] + (expert_count[l] + align - 1) / align * align;
  }
  for (int32_t l = 0; l < L; ++l) expert_count[l] = 0;  // cursor, restored below
  for (int64_t s = 0; s < N * k; ++s) {
    const int32_t l = recv_slot_expert[s];
    recv_pos[s] = l >= 0 ? expert_offset[l] + expert_count[l]++ : -1;
  }
  return placed;
}

// Step 2: send[c] = x[copy_token[c]].
inline void gather_rows(const void* x, const int32_t* index, int64_t n, size_t row_bytes, void* out) {
  auto* o = static_cast<unsigned char*>(out);
  const auto* in = static_cast<const unsigned char*>(x);
  for (int64_t c = 0; c < n; ++c) std::memcpy(o + c * row_bytes, in + index[c] * row_bytes, row_bytes);
}

// Step 5: out[recv_pos[i*k+j]] = w[i*k+j] * recv[i] (w = nullptr: plain copy); padding rows 0.
template <typename T>
void expert_unpack(const T* recv, int64_t N, int32_t k, int64_t H, const int64_t* recv_pos,
                   const float* w, const int64_t* expert_count, const int64_t* expert_offset, int32_t L,
                   T* out) {
  for (int32_t l = 0; l < L; ++l)
    for (int64_t r = expert_offset[l] + expert_count[l]; r < expert_offset[l + 1]; ++r)
      std::memset(out + r * H, 0, sizeof(T) * H);
  for (int64_t i = 0; i < N; ++i)
    for (int32_t j = 0; j < k; ++j) {
      const int64_t pos = recv_pos[i * k + j];
      if (pos < 0) continue;
      if (w == nullptr) {
        std::memcpy(out + pos * H, recv + i * H, sizeof(T) * H);
      } else {
        const float wj = w[i * k + j];
        for (int64_t h = 0; h < H; ++h) store(out + pos * H, h, wj * load(recv + i * H, h));
      }
    }
}

// Step 6: back[i] = sum_j w[i,j] * y[recv_pos[i,j]] (w = nullptr: weight 1), fp32 accumulation.
template <typename T>
void slot_reduce(const T* y, int64_t N, int32_t k, int64_t H, const int64_t* recv_pos, const float* w,
                 float* acc, T* back) {
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t h = 0; h < H; ++h) acc[h] = 0.0f;
    for (int32_t j = 0; j < k; ++j) {
      const int64_t pos = recv_pos[i * k + j];
      if (pos < 0) continue;
      const float wj = w ? w[i * k + j] : 1.0f;
      for (int64_t h = 0; h < H; ++h) acc[h] += wj * load(y + pos * H, h);
    }
    for (int64_t h = 0; h < H; ++h) store(back + i * H, h, acc[h]);
  }
}

// Step 8: out[t] = sum over t's copies (rank order) of ret[c]; 0 for tokens without copies.
template <typename T>
void token_combine(const T* ret, int64_t C, int64_t T_, int64_t H, const int32_t* copy_token,
                   float* acc_tokens, T* out) {
  for (int64_t s = 0; s < T_ * H; ++s) acc_tokens[s] = 0.0f;
  // Copies are in rank order, so walking c ascending sums each token's copies in rank order.
  for (int64_t c = 0; c < C; ++c) {
    float* a = acc_tokens + static_cast<int64_t>(copy_token[c]) * H;
    for (int64_t h = 0; h < H; ++h) a[h] += load(ret + c * H, h);
  }
  for (int64_t s = 0; s < T_ * H; ++s) store(out, s, acc_tokens[s]);
}

// combine_backward: dw[i,j] = <g_i, y[recv_pos[i,j]]>, 0 for empty slots.
template <typename T>
void slot_dot(const T* g, const T* y, int64_t N, int32_t k, int64_t H, const int64_t* recv_pos,
              float* dw) {
  for (int64_t i = 0; i < N; ++i)
    for (int32_t j = 0; j < k; ++j) {
      const int64_t pos = recv_pos[i * k + j];
      float s = 0.0f;
      if (pos >= 0)
        for (int64_t h = 0; h < H; ++h) s += load(g + i * H, h) * load(y + pos * H, h);
      dw[i * k + j] = s;
    }
}

}  // namespace locmoe::ep_detail
