// Private helpers of the CUDA kernels (included by .cu files only; no Status/fmt here).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace locmoe::kernels::gpu {

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// The error of the launches just enqueued, as launch:: functions return it (configuration
// errors show here; faults inside a kernel show at the caller's next synchronization).
inline int last_launch() { return static_cast<int>(cudaGetLastError()); }

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

constexpr int kWarp = 32;
constexpr int kRowThreads = 256;  // 8 warps per block, one warp per row
constexpr int kRowWarps = kRowThreads / kWarp;

// Blocks for one warp per row over `rows` rows (grid-stride beyond the cap).
inline unsigned row_blocks(int64_t rows) {
  const int64_t b = (rows + kRowWarps - 1) / kRowWarps;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

}  // namespace locmoe::kernels::gpu
