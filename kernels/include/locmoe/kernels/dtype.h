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

// fp8 e4m3 ("e4m3fn": 1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities,
// 0x7f/0xff = NaN; largest finite 448, smallest subnormal 2^-9), used for quantized dispatch rows
// with one fp32 scale per row. Encoding rounds to nearest even and saturates to +-448; NaN stays
// NaN. Decoding is exact.
inline constexpr float kFp8E4M3Max = 448.0f;

LOCMOE_HD uint8_t fp8e4m3_from_float(float f) {
  const uint32_t u = float_bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return sign | 0x7fu;      // NaN
  if (mag >= 0x43e00000u) return sign | 0x7eu;     // >= 448 (and inf): saturate
  if (mag < 0x3c800000u) {                         // below 2^-6: subnormal steps 2^-9
    const float steps = bits_float(mag) * 512.0f;  // exact (power-of-two scaling)
    uint32_t m = static_cast<uint32_t>(steps);     // truncate, then round half to even
    const float rest = steps - static_cast<float>(m);
    if (rest > 0.5f || (rest == 0.5f && (m & 1u))) ++m;  // m == 8 is 2^-6, the first normal
    return sign | static_cast<uint8_t>(m);
  }
  // Normal: round the 23-bit mantissa to 3 bits (nearest even), then rebias 127 -> 7.
  const uint32_t r = mag + 0x7ffffu + ((mag >> 20) & 1u);
  const uint32_t code = (((r >> 23) - 120u) << 3) | ((r >> 20) & 7u);
  return sign | static_cast<uint8_t>(code > 0x7eu ? 0x7eu : code);
}

LOCMOE_HD float fp8e4m3_to_float(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  const uint32_t e = (v >> 3) & 0xfu, m = v & 7u;
  if (e == 0xfu && m == 7u) return bits_float(sign | 0x7fc00000u);  // NaN
  if (e == 0) return bits_float(sign | float_bits(static_cast<float>(m) * (1.0f / 512.0f)));
  return bits_float(sign | ((e + 120u) << 23) | (m << 20));
}

// Per-row quantization, shared by the CPU reference and the CUDA kernel so both give the same
// codes: amax = running max of |x| (NaN ignored), codes = e4m3(x * fp8_quant_mul(amax)),
// scale = fp8_scale(amax). An all-zero row uses amax = 1.
LOCMOE_HD float fp8_amax_step(float amax, float x) {
  const float a = bits_float(float_bits(x) & 0x7fffffffu);
  return a > amax ? a : amax;
}
LOCMOE_HD float fp8_quant_mul(float amax) { return kFp8E4M3Max / (amax > 0.0f ? amax : 1.0f); }
LOCMOE_HD float fp8_scale(float amax) { return (amax > 0.0f ? amax : 1.0f) / kFp8E4M3Max; }

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
