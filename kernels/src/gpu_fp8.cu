// CUDA fp8 dispatch: per-row e4m3 quantization of the packed copies and dequantization into the
// expert-major buffer. One warp per row; the row max is a warp max (exact, order-free) and the
// codes come from the LOCMOE_HD encoder of dtype.h, so results equal the CPU reference bit for bit.
#include "cuda_util.h"
#include "dtype_switch.h"
#include "gpu_launch.h"

namespace locmoe::kernels::gpu {
namespace {

template <typename T>
__global__ void pack_fp8_kernel(DispatchLayout l, const T* __restrict__ x, int32_t hidden,
                                uint8_t* __restrict__ q, float* __restrict__ scale, int32_t cap) {
  const int32_t rows = min(l.send_rank_offset[l.num_ranks], cap);
  const int lane = threadIdx.x % kWarp;
  for (int32_t c = blockIdx.x * kRowWarps + threadIdx.x / kWarp; c < rows;
       c += gridDim.x * kRowWarps) {
    const T* row = x + static_cast<int64_t>(l.copy_token[c]) * hidden;
    float amax = 0.0f;
    for (int32_t h = lane; h < hidden; h += kWarp) amax = fp8_amax_step(amax, to_float(row[h]));
    for (int o = kWarp / 2; o > 0; o >>= 1)
      amax = fp8_amax_step(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float mul = fp8_quant_mul(amax);
    uint8_t* out = q + static_cast<int64_t>(c) * hidden;
    for (int32_t h = lane; h < hidden; h += kWarp)
      out[h] = fp8e4m3_from_float(__fmul_rn(to_float(row[h]), mul));
    if (lane == 0) scale[c] = fp8_scale(amax);
  }
}

template <typename T>
__global__ void unpack_fp8_kernel(ExpertLayout l, const uint8_t* __restrict__ q,
                                  const float* __restrict__ scale, const float* __restrict__ w,
                                  int32_t hidden, T* __restrict__ out, int32_t cap) {
  const int32_t rows = min(l.expert_offset[l.num_local_experts], cap);
  const int lane = threadIdx.x % kWarp;
  for (int32_t m = blockIdx.x * kRowWarps + threadIdx.x / kWarp; m < rows;
       m += gridDim.x * kRowWarps) {
    const int32_t src = l.row_src[m];
    T* o = out + static_cast<int64_t>(m) * hidden;
    if (src < 0) {
      for (int32_t h = lane; h < hidden; h += kWarp) o[h] = from_float<T>(0.0f);
      continue;
    }
    const int64_t i = src / l.k;
    const float s = scale[i];
    for (int32_t h = lane; h < hidden; h += kWarp) {
      float v = __fmul_rn(fp8e4m3_to_float(q[i * hidden + h]), s);
      if (w) v = __fmul_rn(v, w[src]);
      o[h] = from_float<T>(v);
    }
  }
}

int bad_dtype() { return static_cast<int>(cudaErrorInvalidValue); }

}  // namespace

namespace launch {

int dispatch_pack_fp8(const DispatchLayout& l, ConstRows x, Fp8Rows send, void* stream) {
  if (send.rows == 0) return 0;
  return dispatch_dtype(
      x.dtype,
      [&](auto tag) {
        using T = decltype(tag);
        pack_fp8_kernel<T><<<row_blocks(send.rows), kRowThreads, 0, as_stream(stream)>>>(
            l, static_cast<const T*>(x.data), x.hidden, send.data, send.scale, send.rows);
        return last_launch();
      },
      bad_dtype);
}

int expert_unpack_fp8(const ExpertLayout& l, ConstFp8Rows recv, const float* w, Rows expert_in,
                      void* stream) {
  if (expert_in.rows == 0) return 0;
  return dispatch_dtype(
      expert_in.dtype,
      [&](auto tag) {
        using T = decltype(tag);
        unpack_fp8_kernel<T><<<row_blocks(expert_in.rows), kRowThreads, 0, as_stream(stream)>>>(
            l, recv.data, recv.scale, w, recv.hidden, static_cast<T*>(expert_in.data),
            expert_in.rows);
        return last_launch();
      },
      bad_dtype);
}

}  // namespace launch
}  // namespace locmoe::kernels::gpu
