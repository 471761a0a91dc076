// CUDA row kernels: one warp per output row, 16-byte vectors along the row when the row size and
// every base pointer allow it (element-wise otherwise), each output row written exactly once.
// Pure data movement copies raw words (bit-exact); reductions use RowList and weighted_add of
// row_lists.h, the same order and rounding as the CPU reference.
#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "cuda_util.h"
#include "dtype_switch.h"
#include "gpu_launch.h"
#include "row_lists.h"

namespace locmoe::kernels::gpu {
namespace {

using detail::RowList;

// Rows actually present: the count the layout left on the device, bounded by the caller's rows.
__device__ int32_t live_rows(const int32_t* count, int32_t cap) {
  return count ? min(*count, cap) : cap;
}

// out[r] = index[r] < 0 ? 0 : in[index[r] / div], W = the word moved per lane access; rows are
// in_stride / out_stride words apart (>= words).
template <typename W>
__global__ void gather_copy_kernel(W* __restrict__ out, const W* __restrict__ in, int64_t words,
                                   int64_t in_stride, int64_t out_stride,
                                   const int32_t* __restrict__ index, int32_t div,
                                   const int32_t* count, int32_t cap) {
  const int32_t rows = live_rows(count, cap);
  const int lane = threadIdx.x % kWarp;
  for (int32_t r = blockIdx.x * kRowWarps + threadIdx.x / kWarp; r < rows;
       r += gridDim.x * kRowWarps) {
    const int32_t v = index[r];
    W* o = out + r * out_stride;
    if (v < 0) {
      W zero;
      memset(&zero, 0, sizeof zero);
      for (int64_t w = lane; w < words; w += kWarp) o[w] = zero;
    } else {
      const W* s = in + static_cast<int64_t>(v / div) * in_stride;
#pragma unroll 4
      for (int64_t w = lane; w < words; w += kWarp) o[w] = s[w];
    }
  }
}

}  // namespace

namespace launch {

int gather_copy(const int32_t* index, int32_t div, const int32_t* count, ConstRows in, Rows out,
                void* stream) {
  if (out.rows == 0) return 0;
  const int64_t bytes = static_cast<int64_t>(in.hidden) * dtype_size(in.dtype);
  const int64_t is = row_stride(in), os = row_stride(out);
  const unsigned blocks = row_blocks(out.rows);
  const cudaStream_t s = as_stream(stream);
  // The widest word that divides the row, both strides and both base addresses.
  auto fits = [&](int64_t w) {
    return bytes % w == 0 && is % w == 0 && os % w == 0 &&
           reinterpret_cast<uintptr_t>(in.data) % w == 0 && reinterpret_cast<uintptr_t>(out.data) % w == 0;
  };
  if (fits(16)) {
    gather_copy_kernel<uint4><<<blocks, kRowThreads, 0, s>>>(
        static_cast<uint4*>(out.data), static_cast<const uint4*>(in.data), bytes / 16, is / 16,
        os / 16, index, div, count, out.rows);
  } else if (fits(4)) {
    gather_copy_kernel<uint32_t><<<blocks, kRowThreads, 0, s>>>(
        static_cast<uint32_t*>(out.data), static_cast<const uint32_t*>(in.data), bytes / 4, is / 4,
        os / 4, index, div, count, out.rows);
  } else {
    gather_copy_kernel<uint16_t><<<blocks, kRowThreads, 0, s>>>(
        static_cast<uint16_t*>(out.data), static_cast<const uint16_t*>(in.data), bytes / 2, is / 2,
        os / 2, index, div, count, out.rows);
  }
  return last_launch();
}

}  // namespace launch

namespace {

// N elements of T as floats, from one 16-byte load when N * sizeof(T) == 16.
template <typename T, int N>
__device__ void load_f(const T* p, float* f) {
  if constexpr (N * sizeof(T) == 16) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    T t[N];
    memcpy(t, &u, 16);
#pragma unroll
    for (int q = 0; q < N; ++q) f[q] = to_float(t[q]);
  } else {
#pragma unroll
    for (int q = 0; q < N; ++q) f[q] = to_float(p[q]);
  }
}
template <typename T, int N>
__device__ void store_f(T* p, const float* f) {
  T t[N];
#pragma unroll
  for (int q = 0; q < N; ++q) t[q] = from_float<T>(f[q]);
  if constexpr (N * sizeof(T) == 16) {
    uint4 u;
    memcpy(&u, t, 16);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
#pragma unroll
    for (int q = 0; q < N; ++q) p[q] = t[q];
  }
}

// Launches f(T{}, std::integral_constant<int, N>{}) for the element type T of `dtype`, with N
// the elements of a 16-byte vector when the row size and every pointer allow it, else 1.
template <typename F>
int with_rows(DType dtype, int32_t hidden, std::initializer_list<const void*> ptrs, F&& f) {
  return dispatch_dtype(
      dtype,
      [&](auto tag) {
        constexpr int kVec = 16 / sizeof(tag);
        bool vec = hidden % kVec == 0;
        for (const void* p : ptrs) vec = vec && aligned16(p);
        if (vec) {
          f(tag, std::integral_constant<int, kVec>{});
        } else {
          f(tag, std::integral_constant<int, 1>{});
        }
        return last_launch();
      },
      [] { return static_cast<int>(cudaErrorInvalidValue); });
}

// out[r] = sum over list entries of w * in[src] (RowList order, fp32).
template <typename T, int N>
__global__ void gather_sum_kernel(T* __restrict__ out, const T* __restrict__ in, int32_t hidden,
                                  RowList list, const int32_t* count, int32_t cap) {
  const int32_t rows = live_rows(count, cap);
  const int lane = threadIdx.x % kWarp;
  const int32_t vecs = hidden / N;
  for (int32_t r = blockIdx.x * kRowWarps + threadIdx.x / kWarp; r < rows;
       r += gridDim.x * kRowWarps) {
    const int32_t b = list.begin(r), e = list.end(r);
    for (int32_t v = lane; v < vecs; v += kWarp) {
      float acc[N];
#pragma unroll
      for (int q = 0; q < N; ++q) acc[q] = 0.0f;
      for (int32_t x = b; x < e; ++x) {
        const int32_t s = list.src(x);
        if (s < 0) continue;
        float f[N];
        load_f<T, N>(in + static_cast<int64_t>(s) * hidden + v * N, f);
        if (list.weight) {
          const float w = list.w(x);
#pragma unroll
          for (int q = 0; q < N; ++q) acc[q] = detail::weighted_add(acc[q], w, f[q]);
        } else {
#pragma unroll
          for (int q = 0; q < N; ++q) acc[q] = __fadd_rn(acc[q], f[q]);
        }
      }
      store_f<T, N>(out + static_cast<int64_t>(r) * hidden + v * N, acc);
    }
  }
}

}  // namespace

namespace launch {

int gather_sum(const RowList& list, const int32_t* count, ConstRows in, Rows out, void* stream) {
  if (out.rows == 0) return 0;
  return with_rows(in.dtype, in.hidden, {in.data, out.data}, [&](auto tag, auto width) {
    using T = decltype(tag);
    constexpr int N = decltype(width)::value;
    gather_sum_kernel<T, N><<<row_blocks(out.rows), kRowThreads, 0, as_stream(stream)>>>(
        static_cast<T*>(out.data), static_cast<const T*>(in.data), in.hidden, list, count,
        out.rows);
  });
}

}  // namespace launch

namespace {

// dw[i*k+j] = <grad[i], y[recv_pos[i*k+j]]>: lane-strided partial sums, then a fixed xor tree.
template <typename T, int N>
__global__ void slot_dot_kernel(const T* __restrict__ grad, const T* __restrict__ y, int32_t hidden,
                                const int32_t* __restrict__ recv_pos, int32_t k, int32_t rows,
                                float* __restrict__ dw) {
  const int lane = threadIdx.x % kWarp;
  const int32_t vecs = hidden / N;
  for (int32_t i = blockIdx.x * kRowWarps + threadIdx.x / kWarp; i < rows;
       i += gridDim.x * kRowWarps) {
    for (int32_t j = 0; j < k; ++j) {
      const int32_t pos = recv_pos[i * k + j];
      float part = 0.0f;
      if (pos >= 0) {
        for (int32_t v = lane; v < vecs; v += kWarp) {
          float g[N], f[N];
          load_f<T, N>(grad + static_cast<int64_t>(i) * hidden + v * N, g);
          load_f<T, N>(y + static_cast<int64_t>(pos) * hidden + v * N, f);
#pragma unroll
          for (int q = 0; q < N; ++q) part += g[q] * f[q];
        }
      }
      for (int o = kWarp / 2; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
      if (lane == 0) dw[i * k + j] = part;
    }
  }
}

__global__ void gather_slot_grads_kernel(DispatchLayout l, const float* __restrict__ dw_copy,
                                         float* __restrict__ grad_weight) {
  const int64_t n = static_cast<int64_t>(l.num_tokens) * l.k;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < n;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t t = static_cast<int32_t>(x / l.k), j = static_cast<int32_t>(x % l.k);
    grad_weight[x] = slot_grad(l, dw_copy, t, j);
  }
}

}  // namespace

namespace launch {

int slot_dot(const ExpertLayout& l, ConstRows grad, ConstRows expert_out, float* dw, void* stream) {
  if (l.num_recv == 0) return 0;
  const auto ptrs = {grad.data, expert_out.data};
  return with_rows(grad.dtype, grad.hidden, ptrs, [&](auto tag, auto width) {
    using T = decltype(tag);
    constexpr int N = decltype(width)::value;
    slot_dot_kernel<T, N><<<row_blocks(l.num_recv), kRowThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(grad.data), static_cast<const T*>(expert_out.data), grad.hidden,
        l.recv_pos, l.k, l.num_recv, dw);
  });
}

int gather_slot_grads(const DispatchLayout& l, const float* dw_copy, float* grad_weight,
                      void* stream) {
  const int64_t n = static_cast<int64_t>(l.num_tokens) * l.k;
  if (n == 0) return 0;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  gather_slot_grads_kernel<<<blocks, 256, 0, as_stream(stream)>>>(l, dw_copy, grad_weight);
  return last_launch();
}

}  // namespace launch
}  // namespace locmoe::kernels::gpu
