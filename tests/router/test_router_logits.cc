// The router's logit kernel (router/src/logits.h) against its definition written here: each
// z[t, e] is the chain acc = fma(x[t, h], w[e, h], acc) over h in order from 0, and each row's sum
// of squares the 8 interleaved double partial sums combined in a fixed order. Bitwise, on the
// AVX-512 and AVX2 paths (those the CPU has) and on the portable one, for shapes that leave partial tiles, vectors and chunks.
// And the router names the first bad feature row for any thread count (rows are checked by
// blocks on several threads).
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <iostream>

#include <gtest/gtest.h>

#include "locmoe/router/router.h"
#include "../../router/src/logits.h"

namespace locmoe {
namespace {

float chain(const float* x, const float* w, int64_t H) {
  float acc = 0.0f;
  for (int64_t h = 0; h < H; ++h) acc = std::fma(x[h], w[h], acc);
  return acc;
}

double sum_sq(const float* x, int64_t H) {
  double acc[8] = {};
  for (int64_t h = 0; h < H / 8 * 8; ++h) acc[h % 8] += static_cast<double>(x[h]) * x[h];
  for (int64_t h = H / 8 * 8; h < H; ++h) acc[h - H / 8 * 8] += static_cast<double>(x[h]) * x[h];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

TEST(Logits, BitsAreTheSequentialFmaChainOnEveryPath) {
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  // H: under a vector, not a multiple of 8, over one 256 chunk with a tail; E: under 16, between
  // vectors, over 64 (a second group of vectors); rows: under, at and over the 6-row tile.
  for (const int64_t H : {1, 7, 8, 300, 520})
    for (const int64_t E : {1, 8, 20, 64, 70})
      for (const int64_t rows : {1, 5, 6, 13}) {
        std::vector<float> x(static_cast<size_t>(rows * H)), w(static_cast<size_t>(E * H));
        for (auto& v : x) v = nd(gen);
        for (auto& v : w) v = nd(gen);
        logits::Gate g;
        logits::prepare(w.data(), E, H, g);
        ASSERT_EQ(g.Ep % 16, 0);
        for (const logits::Path path : {logits::Path::kAuto, logits::Path::kAvx512, logits::Path::kAvx2,
                                        logits::Path::kPortable}) {
          if ((path == logits::Path::kAvx512 && !logits::has_avx512()) || (path == logits::Path::kAvx2 && !logits::has_avx2()))
            continue;
          const int path_id = static_cast<int>(path);
          std::vector<float> z(static_cast<size_t>(rows * g.Ep), -1.0f);
          std::vector<double> ss(static_cast<size_t>(rows), -1.0);
          logits::compute(x.data(), rows, g, z.data(), ss.data(), path);
          for (int64_t t = 0; t < rows; ++t) {
            for (int64_t e = 0; e < g.Ep; ++e) {
              const float want = e < E ? chain(x.data() + t * H, w.data() + e * H, H) : 0.0f;
              ASSERT_EQ(std::bit_cast<uint32_t>(z[static_cast<size_t>(t * g.Ep + e)]), std::bit_cast<uint32_t>(want))
                  << "H " << H << " E " << E << " rows " << rows << " t " << t << " e " << e << " path " << path_id;
            }
            ASSERT_EQ(std::bit_cast<uint64_t>(ss[static_cast<size_t>(t)]), std::bit_cast<uint64_t>(sum_sq(x.data() + t * H, H)))
                << "H " << H << " rows " << rows << " t " << t << " path " << path_id;
            EXPECT_EQ(logits::row_sum_sq(x.data() + t * H, H), sum_sq(x.data() + t * H, H));
          }
        }
      }
  std::cout << "AVX-512 kernel " << (logits::has_avx512() ? "tested" : "not available on this CPU") << ", AVX2 kernel "
            << (logits::has_avx2() ? "tested" : "not available on this CPU") << "\n";
}

TEST(Logits, FirstBadFeatureRowIsNamedForAnyThreadCount) {
  // 1000 rows: blocks of 96 rows go round-robin to the threads, so the bad rows 150 (block 1) and
  // 200 (block 2) are found by different threads; the message names row 150 whatever the count.
  const int64_t T = 1000, H = 8;
  std::mt19937 gen(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(T * H)), w(static_cast<size_t>(4 * H));
  for (auto& v : x) v = nd(gen);
  for (auto& v : w) v = nd(gen);
  for (int64_t h = 0; h < H; ++h) x[static_cast<size_t>(200 * H + h)] = 0.0f;
  x[static_cast<size_t>(150 * H + 3)] = std::numeric_limits<float>::quiet_NaN();
  x[static_cast<size_t>(700 * H + 1)] = std::numeric_limits<float>::infinity();
  auto pl = *uniform_placement(1, 2, 2);
  for (const char* name : {"gshard", "locmoe-opt"})
    for (const int threads : {1, 2, 3, 5}) {
      RouterConfig c;
      c.name = name;
      c.num_threads = threads;
      auto router = Router::create(c);
      ASSERT_TRUE(router.ok());
      // route_all_ranks: rank 0 holds rows 0..499, so row 150 is its row 150.
      auto plans = router->route_all_ranks({x.data(), T, H}, {w.data(), 4, H}, pl);
      ASSERT_FALSE(plans.ok()) << name;
      EXPECT_NE(plans.status().message().find("features row 150 (global token 150) column 3 is nan"), std::string::npos)
          << name << " " << threads << " threads: " << plans.status().to_string();
      // One rank's route over every row: the same first row.
      auto one = *uniform_placement(1, 1, 4);
      auto plan = router->route({x.data(), T, H}, {w.data(), 4, H}, one, nullptr);
      ASSERT_FALSE(plan.ok()) << name;
      EXPECT_NE(plan.status().message().find("features row 150 (global token 150) column 3 is nan"), std::string::npos)
          << name << " " << threads << " threads: " << plan.status().to_string();
      // Without the NaN, the zero row 200 is the first.
      std::vector<float> y = x;
      y[static_cast<size_t>(150 * H + 3)] = 1.0f;
      auto p2 = router->route({y.data(), T, H}, {w.data(), 4, H}, one, nullptr);
      ASSERT_FALSE(p2.ok()) << name;
      EXPECT_NE(p2.status().message().find("features row 200 (global token 200) has zero norm"), std::string::npos)
          << name << " " << threads << " threads: " << p2.status().to_string();
      // In rank 1's segment (rows 500..999) of route_all_ranks, row 700 is named as its row 200.
      for (int64_t h = 0; h < H; ++h) y[static_cast<size_t>(200 * H + h)] = 1.0f;
      auto p3 = router->route_all_ranks({y.data(), T, H}, {w.data(), 4, H}, pl);
      ASSERT_FALSE(p3.ok()) << name;
      EXPECT_NE(p3.status().message().find("features row 200 (global token 700) column 1 is inf"), std::string::npos)
          << name << " " << threads << " threads: " << p3.status().to_string();
    }
}

}  // namespace
}  // namespace locmoe
