// Private: the one place a runtime DType becomes a template instance (fmt-free, so .cu files
// include it too). Calls f(T{}) with T = float or bf16; any other value returns unsupported().
#pragma once

#include "locmoe/kernels/dtype.h"

namespace locmoe::kernels {

template <typename F, typename U>
auto dispatch_dtype(DType dtype, F&& f, U&& unsupported) {
  switch (dtype) {
    case DType::kF32:
      return f(float{});
    case DType::kBF16:
      return f(bf16{});
  }
  return unsupported();
}

}  // namespace locmoe::kernels
