// The router's logits z = x W^T, computed so that an element's bits depend only on its own row of
// x and of W (docs/ROUTING.md "## Determinism"): z[t, e] is the chain acc = fma(x[t, h], W[e, h],
// acc) over h = 0 .. H-1 from acc = 0, in that order, whatever the rows around it, the thread
// count, the split of tokens over ranks or the instruction set. The AVX-512 and AVX2 kernels hold
// one (token, expert) pair per vector lane, so they compute exactly that chain (no horizontal
// sums), and the portable path computes it with std::fma; all give the same bits.
//
// Why not OpenBLAS: its threaded sgemm changes the bits with the thread count, and its
// single-threaded one, called per fixed block of rows, repacked both operands for every block
// (37% of the GEMM's time at T = 16384, H = 4096, E = 64) and ran 1.3x slower than this kernel,
// which reads the gate transposed once per call and the features in place.
#pragma once

#include <cstdint>
#include <vector>

namespace locmoe::logits {

// The gate transposed to [H, Ep], its E columns padded with zeros to Ep, a multiple of 16.
struct Gate {
  int64_t H = 0, E = 0, Ep = 0;
  std::vector<float> wt;
};
// Into g, reusing the capacity of g.wt.
void prepare(const float* w, int64_t E, int64_t H, Gate& g);

// z ([rows, g.Ep] row-major; columns >= E are 0) of the rows of x ([rows, H] row-major) and, when
// sum_sq is not null, each row's row_sum_sq() (in the same pass: the features are read once).
// kAuto takes the widest kernel the CPU has; tests force each path the CPU has.
enum class Path { kAuto, kAvx512, kAvx2, kPortable };
void compute(const float* x, int64_t rows, const Gate& g, float* z, double* sum_sq = nullptr, Path path = Path::kAuto);

// Sum of squares of a row in double, over 8 interleaved partial sums (acc[j % 8], the last n % 8
// values into acc[0], acc[1], ...) combined as ((0+1)+(2+3))+((4+5)+(6+7)): fixed, so a row's
// norm has the same bits on any thread count, rank or path, and branch-free, so it vectorizes (it
// was 1.5x the logit GEMM's time when it checked every element). A NaN or Inf element makes the sum
// non-finite (squares of finite floats cannot overflow a double sum of fewer than 2^900 of them).
double row_sum_sq(const float* row, int64_t n);

// Whether the CPU has the instructions of the AVX-512 (AVX2 and FMA) kernels.
bool has_avx512();
bool has_avx2();

}  // namespace locmoe::logits
