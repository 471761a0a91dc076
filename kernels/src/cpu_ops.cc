// CPU references of the EP kernels: plain loops, one pass, the same index logic (layout.h) and
// the same gather-sum (row_lists.h) as the CUDA kernels.
#include <algorithm>
#include <cstring>

#include "backend.h"
#include "row_lists.h"

namespace locmoe::kernels::cpu {
namespace {

int32_t* ws_words(void* ws) { return static_cast<int32_t*>(ws); }

// Exclusive prefix sum of round_up(count[b], align) into offset[0..n]. Returns the total.
int32_t padded_prefix(const int32_t* count, int32_t n, int32_t align, int32_t* offset) {
  int64_t run = 0;
  for (int32_t b = 0; b < n; ++b) {
    offset[b] = static_cast<int32_t>(run);
    run += round_up(count[b], align);
  }
  offset[n] = static_cast<int32_t>(run);
  return offset[n];
}

template <typename T>
void gather_sum(const detail::RowList& list, const T* in, int32_t hidden, int32_t rows, T* out,
                float* acc) {
  for (int32_t r = 0; r < rows; ++r) {
    std::fill(acc, acc + hidden, 0.0f);
    for (int32_t e = list.begin(r); e < list.end(r); ++e) {
      const int32_t s = list.src(e);
      if (s < 0) continue;
      const T* row = in + static_cast<int64_t>(s) * hidden;
      if (list.weight) {
        const float w = list.w(e);
        for (int32_t h = 0; h < hidden; ++h)
          acc[h] = detail::weighted_add(acc[h], w, to_float(row[h]));
      } else {
        for (int32_t h = 0; h < hidden; ++h) acc[h] += to_float(row[h]);
      }
    }
    T* o = out + static_cast<int64_t>(r) * hidden;
    for (int32_t h = 0; h < hidden; ++h) o[h] = from_float<T>(acc[h]);
  }
}

// Runs gather_sum for the dtype of `in`. The fp32 accumulator row is the one piece of memory a
// CPU reduction needs; it lives on the stack for common sizes.
Status gather_sum_rows(const detail::RowList& list, ConstRows in, Rows out, int32_t rows) {
  constexpr int32_t kStackFloats = 16384;
  float stack_acc[kStackFloats];
  std::vector<float> heap_acc;
  float* acc = stack_acc;
  if (in.hidden > kStackFloats) {
    heap_acc.resize(in.hidden);
    acc = heap_acc.data();
  }
  return with_dtype(in.dtype, [&](auto tag) {
    using T = decltype(tag);
    gather_sum<T>(list, static_cast<const T*>(in.data), in.hidden, rows, static_cast<T*>(out.data),
                  acc);
    return ok_status();
  });
}

// Copies rows: out[r] = src(r) >= 0 ? in[src(r)] : 0, as raw bytes (bit-exact); either side may
// be strided (bytes between rows are left alone).
void gather_copy(const int32_t* index, int32_t index_div, ConstRows in, Rows out, int32_t rows) {
  const int64_t row_bytes = static_cast<int64_t>(in.hidden) * dtype_size(in.dtype);
  const int64_t in_stride = row_stride(in), out_stride = row_stride(out);
  const char* src = static_cast<const char*>(in.data);
  char* dst = static_cast<char*>(out.data);
  for (int32_t r = 0; r < rows; ++r) {
    const int32_t v = index[r];
    if (v < 0) {
      std::memset(dst + r * out_stride, 0, row_bytes);
    } else {
      std::memcpy(dst + r * out_stride, src + (v / index_div) * in_stride, row_bytes);
    }
  }
}

}  // namespace

Status dispatch_layout(const PlanView& p, DispatchLayout& l) {
  const int32_t T = p.num_tokens, k = p.k, R = p.num_ranks, L = p.experts_per_rank;
  const int32_t B = R * L;
  for (int32_t i = 0; i < T * k; ++i) {
    LOCMOE_CHECK_RANGE(p.expert[i] >= -1 && p.expert[i] < p.num_experts,
                       "plan token {} slot {}: expert {} outside [-1, {})", i / k, i % k,
                       p.expert[i], p.num_experts);
  }
  // Counting sort of the owning slots by bucket (rank, local expert), stable in token order.
  int32_t* count = ws_words(l.workspace);  // [B]
  int32_t* next = count + B;               // [B+1]
  std::fill(count, count + B, 0);
  for (int32_t t = 0; t < T; ++t)
    for (int32_t j = 0; j < k; ++j)
      if (const int32_t b = dispatch_bucket(p, t, j); b >= 0) ++count[b];
  padded_prefix(count, B, 1, next);
  for (int32_t r = 0; r < R; ++r) {
    l.send_rank_offset[r] = next[r * L];
    l.send_rank_count[r] = next[(r + 1) * L] - next[r * L];
  }
  l.send_rank_offset[R] = next[B];

  int32_t copies = 0;
  for (int32_t t = 0; t < T; ++t) {
    l.token_copy_offset[t] = copies;
    for (int32_t j = 0; j < k; ++j) {
      const int32_t b = dispatch_bucket(p, t, j);
      if (b < 0) continue;
      const int32_t c = next[b]++;
      const int32_t r = bucket_rank(b, L);
      l.copy_token[c] = t;
      for (int32_t jj = 0; jj < k; ++jj) {
        const int32_t le = copy_slot_local_expert(p, t, jj, r);
        l.copy_slot_expert[c * k + jj] = le;
        l.copy_slot_weight[c * k + jj] = le >= 0 ? p.weight[t * k + jj] : 0.0f;
      }
      // Rank order inside the token: copies to lower ranks come first.
      l.token_copy[copies + token_copy_rank(p, t, r)] = c;
    }
    copies += token_copy_count(p, t);
  }
  l.token_copy_offset[T] = copies;
  l.num_tokens = T;
  return ok_status();
}

Status dispatch_pack(const DispatchLayout& l, ConstRows x, Rows send) {
  gather_copy(l.copy_token, 1, x, send, l.send_rank_offset[l.num_ranks]);
  return ok_status();
}

Status expert_layout(const int32_t* slot_expert, int32_t n, ExpertLayout& l) {
  const int32_t k = l.k, L = l.num_local_experts;
  for (int32_t i = 0; i < n * k; ++i) {
    LOCMOE_CHECK_RANGE(slot_expert[i] >= -1 && slot_expert[i] < L,
                       "received row {} slot {}: local expert {} outside [-1, {})", i / k, i % k,
                       slot_expert[i], L);
  }
  int32_t* next = ws_words(l.workspace);  // [L+1]
  std::fill(l.expert_count, l.expert_count + L, 0);
  for (int32_t i = 0; i < n * k; ++i)
    if (const int32_t e = expert_bucket(slot_expert[i], L); e >= 0) ++l.expert_count[e];
  const int32_t rows = padded_prefix(l.expert_count, L, l.align, l.expert_offset);
  std::copy(l.expert_offset, l.expert_offset + L + 1, next);
  std::fill(l.row_src, l.row_src + rows, -1);  // padding rows stay -1
  for (int32_t i = 0; i < n * k; ++i) {
    const int32_t e = expert_bucket(slot_expert[i], L);
    l.recv_pos[i] = e >= 0 ? next[e]++ : -1;
    if (e >= 0) l.row_src[l.recv_pos[i]] = i;
  }
  l.num_recv = n;
  return ok_status();
}

Status expert_unpack(const ExpertLayout& l, ConstRows recv, const float* w, Rows expert_in) {
  const int32_t rows = l.expert_offset[l.num_local_experts];
  if (!w) {
    gather_copy(l.row_src, l.k, recv, expert_in, rows);
    return ok_status();
  }
  const detail::RowList list = detail::weighted_unpack_list(l, w);
  return gather_sum_rows(list, recv, expert_in, rows);
}

Status slot_reduce(const ExpertLayout& l, ConstRows expert_out, const float* w, Rows back) {
  const detail::RowList list = detail::slot_reduce_list(l, w);
  return gather_sum_rows(list, expert_out, back, l.num_recv);
}

Status token_combine(const DispatchLayout& l, ConstRows returned, Rows out) {
  const detail::RowList list = detail::token_combine_list(l);
  return gather_sum_rows(list, returned, out, l.num_tokens);
}

Status slot_dot(const ExpertLayout& l, ConstRows grad, ConstRows expert_out, float* dw) {
  return with_dtype(grad.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* g = static_cast<const T*>(grad.data);
    const T* y = static_cast<const T*>(expert_out.data);
    const int64_t H = grad.hidden;
    for (int32_t i = 0; i < l.num_recv; ++i) {
      for (int32_t j = 0; j < l.k; ++j) {
        const int32_t pos = l.recv_pos[i * l.k + j];
        float acc = 0.0f;
        if (pos >= 0) {
          for (int64_t h = 0; h < H; ++h) acc += to_float(g[i * H + h]) * to_float(y[pos * H + h]);
        }
        dw[i * l.k + j] = acc;
      }
    }
    return ok_status();
  });
}

Status gather_slot_grads(const DispatchLayout& l, const float* dw_copy, float* grad_weight) {
  const int32_t k = l.k;
  for (int32_t t = 0; t < l.num_tokens; ++t)
    for (int32_t j = 0; j < k; ++j) grad_weight[t * k + j] = slot_grad(l, dw_copy, t, j);
  return ok_status();
}

}  // namespace locmoe::kernels::cpu

namespace locmoe::kernels::cpu {

Status dispatch_pack_fp8(const DispatchLayout& l, ConstRows x, Fp8Rows send) {
  return with_dtype(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t H = x.hidden;
    const int32_t C = l.send_rank_offset[l.num_ranks];
    for (int32_t c = 0; c < C; ++c) {
      const T* row = static_cast<const T*>(x.data) + l.copy_token[c] * H;
      float amax = 0.0f;
      for (int64_t h = 0; h < H; ++h) amax = fp8_amax_step(amax, to_float(row[h]));
      const float mul = fp8_quant_mul(amax);
      uint8_t* q = send.data + c * H;
      for (int64_t h = 0; h < H; ++h) q[h] = fp8e4m3_from_float(to_float(row[h]) * mul);
      send.scale[c] = fp8_scale(amax);
    }
    return ok_status();
  });
}

Status expert_unpack_fp8(const ExpertLayout& l, ConstFp8Rows recv, const float* w, Rows expert_in) {
  return with_dtype(expert_in.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t H = recv.hidden;
    const int32_t M = l.expert_offset[l.num_local_experts];
    for (int32_t m = 0; m < M; ++m) {
      T* out = static_cast<T*>(expert_in.data) + m * H;
      const int32_t src = l.row_src[m];
      const int64_t i = src < 0 ? 0 : src / l.k;
      for (int64_t h = 0; h < H; ++h) {
        float v = 0.0f;
        if (src >= 0) {
          v = fp8e4m3_to_float(recv.data[i * H + h]) * recv.scale[i];
          if (w) v = v * w[src];
        }
        out[h] = from_float<T>(v);
      }
    }
    return ok_status();
  });
}

}  // namespace locmoe::kernels::cpu
