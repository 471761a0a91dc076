// Marks logic shared by host and device code. Compiled by nvcc it is __host__ __device__; by the
// host compiler it is plain C++, so the CPU tests run exactly the code the kernels run.
#pragma once

#if defined(__CUDACC__)
#define LOCMOE_HD __host__ __device__ __forceinline__
#else
#define LOCMOE_HD inline
#endif
