// Helpers shared by the comm tests: deterministic all-to-all-v inputs. Every byte is a function
// of (seed, source rank, destination rank, index), so a receiver computes what it must get, and
// counts are a function of (seed, pattern, source, destination), so every rank knows them all.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "locmoe/topology/cluster.h"

namespace locmoe::testing_a2a {

inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline uint8_t byte_at(uint64_t seed, int src, int dst, uint64_t i) {
  return static_cast<uint8_t>(mix(seed * 1000003u + mix((static_cast<uint64_t>(src) << 20) ^ dst) + i) >> 24);
}

enum class Pattern { kRandom, kOneSilent, kUneven, kLarge, kAllZero };
inline const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::kRandom: return "random";
    case Pattern::kOneSilent: return "one-silent";
    case Pattern::kUneven: return "uneven";
    case Pattern::kLarge: return "large";
    case Pattern::kAllZero: return "all-zero";
  }
  return "?";
}

// Bytes rank `src` sends to rank `dst` in `pattern`.
inline uint64_t count_of(Pattern p, uint64_t seed, int n, int src, int dst) {
  const uint64_t h = mix(seed ^ (static_cast<uint64_t>(src) * 131 + dst) * 7919);
  switch (p) {
    case Pattern::kRandom: return h % 4 == 0 ? 0 : h % 3000;          // zeros and a few KiB
    case Pattern::kOneSilent: return src == n - 1 ? 0 : 1 + h % 700;  // the last rank sends nothing
    case Pattern::kUneven:  // one pair carries tens of MiB, most others a few bytes or nothing
      if (src == 0 && dst == n - 1) return 20u << 20;
      return h % 5 == 0 ? h % 9 : 0;
    case Pattern::kLarge: return (1u << 20) + h % (512u << 10);  // ~1-1.5 MiB per pair
    case Pattern::kAllZero: return 0;
  }
  return 0;
}

// Cluster map where rank r's node is given by `node_sizes` (ranks placed in order).
inline std::vector<RankDescriptor> descriptors(const std::vector<int>& node_sizes) {
  std::vector<RankDescriptor> d;
  for (size_t nn = 0; nn < node_sizes.size(); ++nn)
    for (int i = 0; i < node_sizes[nn]; ++i) d.push_back(RankDescriptor{"node" + std::to_string(nn), "", ""});
  return d;
}

}  // namespace locmoe::testing_a2a
