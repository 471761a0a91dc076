// Fuzzes the .npy reader (core/src/npy.cc, parse_npy) with arbitrary bytes, with and without the
// '<u2' = bfloat16 option. Besides "no crash, no sanitizer report", an accepted array must be
// self-consistent: its data holds exactly element_count() elements of its dtype, every dimension
// is non-negative, and the conversions agree with the dtype (float dtypes convert to float32 with
// one value per element, int32 converts to int32, and each rejects the other).
#include <cstdint>
#include <span>

#include "locmoe/core/npy.h"
#include "fuzz_util.h"

namespace {

void check(std::span<const uint8_t> bytes, bool u2_is_bfloat16) {
  locmoe::NpyReadOptions options;
  options.u2_is_bfloat16 = u2_is_bfloat16;
  auto array = locmoe::parse_npy(bytes, "fuzz.npy", options);
  if (!array.ok()) {
    FUZZ_ASSERT(!array.status().message().empty());
    return;
  }
  int64_t count = 1;
  for (int64_t d : array->shape) {
    FUZZ_ASSERT(d >= 0);
    count *= d;  // cannot overflow: the data of `count` elements is in memory
  }
  FUZZ_ASSERT(count == array->element_count());
  FUZZ_ASSERT(array->data.size() == static_cast<size_t>(count) * locmoe::npy_dtype_size(array->dtype));
  FUZZ_ASSERT(u2_is_bfloat16 || array->dtype != locmoe::NpyDtype::kBfloat16);
  auto f = locmoe::npy_to_float32(*array, "fuzz.npy");
  auto i = locmoe::npy_to_int32(*array, "fuzz.npy");
  const bool is_int = array->dtype == locmoe::NpyDtype::kInt32;
  FUZZ_ASSERT(f.ok() != is_int);
  FUZZ_ASSERT(i.ok() == is_int);
  if (f.ok()) FUZZ_ASSERT(f->size() == static_cast<size_t>(count));
  if (i.ok()) FUZZ_ASSERT(i->size() == static_cast<size_t>(count));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  check(bytes, false);
  check(bytes, true);
  return 0;
}
