// What this build of the kernels can run.
#pragma once

namespace locmoe::kernels {

// True when the library was built with the CUDA kernels (a CUDA build, LOCMOE_HAVE_CUDA).
bool kernels_have_cuda() noexcept;
// Number of CUDA devices visible to this process; 0 without CUDA kernels, driver or device.
int cuda_device_count() noexcept;

}  // namespace locmoe::kernels
