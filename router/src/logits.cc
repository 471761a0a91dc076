#include "logits.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LOCMOE_LOGITS_SIMD 1
#endif

namespace locmoe::logits {

namespace {

// Rows per register tile (AVX-512: 6 rows x 4 vectors of 16 experts = 24 accumulators of the 32
// registers), and the h range a tile runs over before its accumulators go back to z (the tile's
// chunk of x, 6 KiB, stays in L1 from the FMAs to the sums of squares). The chain of each element
// is unchanged by the split (stored and reloaded exactly).
constexpr int kTileRows = 6;
constexpr int64_t kChunk = 256;

double combine8(const double* acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

#ifdef LOCMOE_LOGITS_SIMD
// z[r, 16 v + j] (+)= sum over h in [0, kc) of x[r, h] wt[h, 16 v + j] for the tile's 6 rows and
// NV vectors of 16 experts: 6 x NV accumulators, one (token, expert) pair per lane.
template <int NV>
__attribute__((target("avx512f"))) void tile(const float* x, int64_t ldx, const float* wt, int64_t ldw, int64_t kc,
                                             float* z, int64_t ldz, bool first) {
  __m512 acc[kTileRows][NV];
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(z + r * ldz + 16 * v);
  for (int64_t h = 0; h < kc; ++h) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(wt + h * ldw + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const __m512 a = _mm512_set1_ps(x[r * ldx + h]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(z + r * ldz + 16 * v, acc[r][v]);
}

// The 8 partial sums of row_sum_sq() of the tile's rows (stride ldx) over x[j] for j in [0, n),
// n a multiple of 8: lane u of row r's vector is its acc[u], the rows in independent chains. A
// float's square is exact in double, so the FMA gives the bits of the scalar multiply and add.
__attribute__((target("avx512f"))) void sum_sq_tile(const float* x, int64_t ldx, int64_t n, double* acc8) {
  __m512d a[kTileRows];
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) a[r] = _mm512_loadu_pd(acc8 + 8 * r);
  for (int64_t j = 0; j < n; j += 8)
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const __m512d v = _mm512_maskz_cvtps_pd(0xFF, _mm256_loadu_ps(x + r * ldx + j));
      a[r] = _mm512_fmadd_pd(v, v, a[r]);
    }
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) _mm512_storeu_pd(acc8 + 8 * r, a[r]);
}

// The AVX-512 kernels: experts in groups of up to 64 (4 vectors of 16).
struct Avx512 {
  static constexpr int64_t kGroup = 64;
  static void group(const float* x, int64_t ldx, const float* wt, int64_t ldw, int64_t kc, float* z, int64_t ldz,
                    bool first, int64_t width) {
    switch (std::min<int64_t>(4, width / 16)) {
      case 4: tile<4>(x, ldx, wt, ldw, kc, z, ldz, first); break;
      case 3: tile<3>(x, ldx, wt, ldw, kc, z, ldz, first); break;
      case 2: tile<2>(x, ldx, wt, ldw, kc, z, ldz, first); break;
      default: tile<1>(x, ldx, wt, ldw, kc, z, ldz, first); break;
    }
  }
  static void sum_sq(const float* x, int64_t ldx, int64_t n, double* acc8) { sum_sq_tile(x, ldx, n, acc8); }
};

// The AVX2 kernels, for CPUs without AVX-512 (16 registers): groups of 16 experts (2 vectors of 8),
// 6 x 2 accumulators, one (token, expert) pair per lane: the same chains, so the same bits.
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, int64_t ldx, const float* wt, int64_t ldw,
                                                  int64_t kc, float* z, int64_t ldz, bool first) {
  __m256 acc[kTileRows][2];
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) acc[r][v] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(z + r * ldz + 8 * v);
  for (int64_t h = 0; h < kc; ++h) {
    const __m256 b0 = _mm256_loadu_ps(wt + h * ldw), b1 = _mm256_loadu_ps(wt + h * ldw + 8);
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + h);
      acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) _mm256_storeu_ps(z + r * ldz + 8 * v, acc[r][v]);
}

// sum_sq_tile with a row's acc[0..3] and acc[4..7] in two vectors.
__attribute__((target("avx2,fma"))) void sum_sq_tile_avx2(const float* x, int64_t ldx, int64_t n, double* acc8) {
  __m256d a[kTileRows][2];
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
    a[r][0] = _mm256_loadu_pd(acc8 + 8 * r);
    a[r][1] = _mm256_loadu_pd(acc8 + 8 * r + 4);
  }
  for (int64_t j = 0; j < n; j += 8)
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + r * ldx + j));
      const __m256d hi = _mm256_cvtps_pd(_mm_loadu_ps(x + r * ldx + j + 4));
      a[r][0] = _mm256_fmadd_pd(lo, lo, a[r][0]);
      a[r][1] = _mm256_fmadd_pd(hi, hi, a[r][1]);
    }
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
    _mm256_storeu_pd(acc8 + 8 * r, a[r][0]);
    _mm256_storeu_pd(acc8 + 8 * r + 4, a[r][1]);
  }
}

struct Avx2 {
  static constexpr int64_t kGroup = 16;
  static void group(const float* x, int64_t ldx, const float* wt, int64_t ldw, int64_t kc, float* z, int64_t ldz,
                    bool first, int64_t) {
    tile_avx2(x, ldx, wt, ldw, kc, z, ldz, first);
  }
  static void sum_sq(const float* x, int64_t ldx, int64_t n, double* acc8) { sum_sq_tile_avx2(x, ldx, n, acc8); }
};

// `rows` (a multiple of kTileRows) rows of x (stride H) into z (stride Ep), and their 8 partial
// sums of squares into acc8 ([rows, 8], zeroed by the caller), one tile after the other, each over
// all of h chunk by chunk: the FMAs read the tile's chunk of x from memory (6 sequential streams
// the hardware prefetcher follows, their misses hidden among 24 independent chains), and the sums
// of squares then read it from L1, so the features are read from memory once. Measured (CPU time,
// T = 16384, H = 4096, E = 64): every tile per chunk instead cost 7% more, the sums first 5% more.
template <class K>
void rows_simd(const float* x, int64_t rows, const Gate& g, float* z, double* acc8) {
  const int64_t H = g.H;
  for (int64_t t = 0; t < rows; t += kTileRows)
    for (int64_t h0 = 0; h0 < H; h0 += kChunk) {
      const int64_t kc = std::min(kChunk, H - h0);
      const int64_t kc8 = kc / 8 * 8;  // the row's last H % 8 values: the scalar tail below
      const float* xt = x + t * H + h0;
      for (int64_t e0 = 0; e0 < g.Ep; e0 += K::kGroup)
        K::group(xt, H, g.wt.data() + h0 * g.Ep + e0, g.Ep, kc, z + t * g.Ep + e0, g.Ep, h0 == 0, g.Ep - e0);
      K::sum_sq(xt, H, kc8, acc8 + t * 8);
      for (int r = 0; r < kTileRows; ++r)
        for (int64_t j = kc8, u = 0; j < kc; ++j, ++u)
          acc8[(t + r) * 8 + u] += static_cast<double>(xt[r * H + j]) * xt[r * H + j];
    }
}

template <class K>
void compute_simd(const float* x, int64_t rows, const Gate& g, float* z, double* sum_sq) {
  const int64_t H = g.H, Ep = g.Ep;
  const int64_t full = rows / kTileRows * kTileRows;
  std::vector<double> acc8(static_cast<size_t>((full + kTileRows) * 8), 0.0);
  rows_simd<K>(x, full, g, z, acc8.data());
  if (full < rows) {  // the last rows in a zero-padded tile (a row's chain ignores the others)
    std::vector<float> xp(static_cast<size_t>(kTileRows * H), 0.0f), zp(static_cast<size_t>(kTileRows * Ep));
    std::memcpy(xp.data(), x + full * H, static_cast<size_t>((rows - full) * H) * sizeof(float));
    rows_simd<K>(xp.data(), kTileRows, g, zp.data(), acc8.data() + full * 8);
    std::memcpy(z + full * Ep, zp.data(), static_cast<size_t>((rows - full) * Ep) * sizeof(float));
  }
  if (sum_sq)
    for (int64_t t = 0; t < rows; ++t) sum_sq[t] = combine8(acc8.data() + t * 8);
}
#endif

}  // namespace

bool has_avx512() {
#ifdef LOCMOE_LOGITS_SIMD
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
#else
  return false;
#endif
}

void prepare(const float* w, int64_t E, int64_t H, Gate& g) {
  g.H = H;
  g.E = E;
  g.Ep = (E + 15) / 16 * 16;
  g.wt.assign(static_cast<size_t>(H * g.Ep), 0.0f);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t h = 0; h < H; ++h) g.wt[static_cast<size_t>(h * g.Ep + e)] = w[e * H + h];
}

double row_sum_sq(const float* row, int64_t n) {
  double acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) acc[u] += static_cast<double>(row[j + u]) * row[j + u];
  for (int u = 0; j < n; ++j, ++u) acc[u] += static_cast<double>(row[j]) * row[j];
  return combine8(acc);
}

bool has_avx2() {
#ifdef LOCMOE_LOGITS_SIMD
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

void compute(const float* x, int64_t rows, const Gate& g, float* z, double* sum_sq, Path path) {
  if (rows <= 0) return;
#ifdef LOCMOE_LOGITS_SIMD
  if (path == Path::kAuto) path = has_avx512() ? Path::kAvx512 : has_avx2() ? Path::kAvx2 : Path::kPortable;
  if (path == Path::kAvx512) return compute_simd<Avx512>(x, rows, g, z, sum_sq);
  if (path == Path::kAvx2) return compute_simd<Avx2>(x, rows, g, z, sum_sq);
#endif
  const int64_t H = g.H, Ep = g.Ep;
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t e = 0; e < Ep; ++e) {
      float acc = 0.0f;
      for (int64_t h = 0; h < H; ++h) acc = std::fma(x[t * H + h], g.wt[static_cast<size_t>(h * Ep + e)], acc);
      z[t * Ep + e] = acc;
    }
    if (sum_sq) sum_sq[t] = row_sum_sq(x + t * H, H);
  }
}

}  // namespace locmoe::logits
