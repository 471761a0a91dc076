// NumPy .npy files (format versions 1.0, 2.0 and 3.0), C order, little-endian.
//
// Read: float32 ('<f4'), float16 ('<f2'), int32 ('<i4') and, when the caller asks for it,
// bfloat16 stored as uint16 ('<u2' with NpyReadOptions::u2_is_bfloat16; NumPy has no bfloat16, so
// frameworks save its bits as uint16). Anything else (Fortran order, big-endian, other dtypes) is
// an error. Write: float32 and int32.
//
// Every malformed file is an error naming the file and the problem: bad magic, truncated header or
// data, an unparsable header dict, fortran_order True, an unsupported dtype, a shape whose element
// count overflows or does not match the data size. parse_npy() works on a memory buffer so that a
// fuzzer can drive it without files.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "locmoe/core/status.h"

namespace locmoe {

enum class NpyDtype : int32_t { kFloat32, kFloat16, kBfloat16, kInt32 };

// "float32", "float16", "bfloat16", "int32".
const char* npy_dtype_name(NpyDtype dtype) noexcept;
// Bytes per element (4 or 2).
size_t npy_dtype_size(NpyDtype dtype) noexcept;

// A decoded array: the raw little-endian element bytes in C order.
struct NpyArray {
  NpyDtype dtype = NpyDtype::kFloat32;
  std::vector<int64_t> shape;  // empty = a scalar (one element)
  std::vector<uint8_t> data;   // element_count() * npy_dtype_size(dtype) bytes

  int64_t element_count() const;
};

struct NpyReadOptions {
  // '<u2' means bfloat16 bits (true) or is rejected as an unsupported dtype (false).
  bool u2_is_bfloat16 = false;
};

// Decodes a whole .npy image. `name` (a path, or any label) prefixes every error message.
Result<NpyArray> parse_npy(std::span<const uint8_t> bytes, std::string_view name,
                           const NpyReadOptions& options = {});
// Reads and decodes `path`.
Result<NpyArray> read_npy(const std::string& path, const NpyReadOptions& options = {});

// The array's elements as float32 (float16 and bfloat16 converted exactly; int32 rejected).
// `name` labels errors.
Result<std::vector<float>> npy_to_float32(const NpyArray& array, std::string_view name);
// The array's elements as int32 (only an int32 array).
Result<std::vector<int32_t>> npy_to_int32(const NpyArray& array, std::string_view name);

// Writes `data` (product(shape) elements, C order) as a version 1.0 .npy file.
Status write_npy(const std::string& path, std::span<const float> data, std::span<const int64_t> shape);
Status write_npy(const std::string& path, std::span<const int32_t> data, std::span<const int64_t> shape);

// IEEE half and bfloat16 bit patterns to float (exact).
float half_bits_to_float(uint16_t bits) noexcept;
float bfloat16_bits_to_float(uint16_t bits) noexcept;

}  // namespace locmoe
