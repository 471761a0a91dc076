// Element types of token rows: fp32 and bf16 (bfloat16, stored as its 16 raw bits).
//
// The conversions are LOCMOE_HD so host references and device kernels round identically:
// float -> bf16 rounds to nearest, ties to even; NaN stays NaN (quiet), infinities stay infinite.
// bf16 -> float is exact.
#pragma once

#include <cstdint>
#include <cstring>

#include "locmoe/core/hd.h"

namespace locmoe::kernels {

// Stable numeric values (they may cross the C API and the Python module).
enum class DType : int32_t {
  kF32 = 0,   // IEEE binary32
  kBF16 = 1,  // bfloat16: the upper 16 bits of a binary32
};

// Bytes per element; 0 for a value outside the enum.
LOCMOE_HD int32_t dtype_size(DType d) {
  switch (d) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
  }
  return 0;
}
// "f32" / "bf16" / "unknown".
const char* dtype_name(DType d) noexcept;

LOCMOE_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}
LOCMOE_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// bfloat16 value type: trivially copyable, 2 bytes, no implicit conversions.
struct bf16 {
  uint16_t bits;

  LOCMOE_HD static bf16 from_float(float f) {
    const uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};
    // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
    return bf16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
  }
  LOCMOE_HD float to_float() const { return bits_float(static_cast<uint32_t>(bits) << 16); }
};
static_assert(sizeof(bf16) == 2, "bf16 must be 2 bytes");

// Uniform element access used by every kernel and reference: load as float, store from float.
LOCMOE_HD float to_float(float v) { return v; }
LOCMOE_HD float to_float(bf16 v) { return v.to_float(); }
template <typename T>
LOCMOE_HD T from_float(float v);
template <>
LOCMOE_HD float from_float<float>(float v) {
  return v;
}
template <>
LOCMOE_HD bf16 from_float<bf16>(float v) {
  return bf16::from_float(v);
}

// The DType of a C++ element type.
template <typename T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::kF32;
};
template <>
struct dtype_of<bf16> {
  static constexpr DType value = DType::kBF16;
};

}  // namespace locmoe::kernels
