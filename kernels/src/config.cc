#include "locmoe/kernels/config.h"

#if LOCMOE_KERNELS_GPU
#include <cuda_runtime_api.h>
#endif

namespace locmoe::kernels {

bool kernels_have_cuda() noexcept { return LOCMOE_KERNELS_GPU != 0; }

int cuda_device_count() noexcept {
#if LOCMOE_KERNELS_GPU
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: clear the sticky-free error, report 0
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

}  // namespace locmoe::kernels
