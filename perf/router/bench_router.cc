// Router throughput (tokens/s) beside the affinity GEMM alone, the floor every router pays.
//
//   bench_router            short default: T = 4096, H = 1024, E in {8, 64}
//   bench_router --full     the sweep: T in {4096, 16384, 65536} x H in {1024, 4096} x
//                           E in {8, 64, 256} (minutes; needs ~1.2 GiB for T = 65536, H = 4096)
// Every other flag is Google Benchmark's (--benchmark_filter=...).
//
// BM_Gemm: one cblas_sgemm [T, H] x [H, E] with OpenBLAS's own threading (the fastest the logits
// can be). BM_Route/<router>: route_all_ranks() of the same batch on 2 nodes x 8 ranks (E = 8:
// 1 node x 8 ranks), k = 2,
// which includes the router's deterministic GEMM (its own kernel, router/src/logits.h, on
// LOCMOE_NUM_THREADS threads), softmax/affinity, nomination, the global selection and the plans.
#include <cblas.h>

#include <cstring>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <benchmark/benchmark.h>

#include "locmoe/router/router.h"

namespace {

using namespace locmoe;

struct Batch {
  std::vector<float> x, w;
};

const Batch& batch(int64_t T, int64_t H, int64_t E) {
  static std::map<std::tuple<int64_t, int64_t, int64_t>, Batch> cache;
  auto key = std::make_tuple(T, H, E);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  cache.clear();  // keep one batch alive: the largest is over a GiB
  Batch b;
  std::mt19937 gen(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  b.w.resize(static_cast<size_t>(E * H));
  for (auto& v : b.w) v = nd(gen) / 4.0f;
  b.x.resize(static_cast<size_t>(T * H));
  for (auto& v : b.x) v = nd(gen) / 8.0f;
  return cache.emplace(key, std::move(b)).first->second;
}

void BM_Gemm(benchmark::State& state) {
  const int64_t T = state.range(0), H = state.range(1), E = state.range(2);
  const Batch& b = batch(T, H, E);
  std::vector<float> z(static_cast<size_t>(T * E));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(E),
                static_cast<int>(H), 1.0f, b.x.data(), static_cast<int>(H), b.w.data(), static_cast<int>(H),
                0.0f, z.data(), static_cast<int>(E));
    benchmark::DoNotOptimize(z.data());
  }
  state.SetItemsProcessed(state.iterations() * T);
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(2 * T * H * E) * state.iterations(),
                                                 benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

void BM_Route(benchmark::State& state, const char* name) {
  const int64_t T = state.range(0), H = state.range(1), E = state.range(2);
  const Batch& b = batch(T, H, E);
  RouterConfig c;
  c.name = name;
  auto router = Router::create(c);
  // 2 nodes x 8 ranks; E = 8 cannot fill 16 ranks and runs on 1 node x 8 ranks.
  const int32_t nodes = E >= 16 ? 2 : 1, ranks = nodes * 8;
  auto pl = uniform_placement(nodes, 8, static_cast<int32_t>(E / ranks));
  if (!router.ok() || !pl.ok() || pl->num_experts() != E) {
    state.SkipWithError("E must be 8 or a multiple of 16");
    return;
  }
  for (auto _ : state) {
    auto plans = router->route_all_ranks({b.x.data(), T, H}, {b.w.data(), E, H}, *pl);
    if (!plans.ok()) {
      state.SkipWithError(plans.status().to_string().c_str());
      return;
    }
    benchmark::DoNotOptimize(plans->data());
  }
  state.SetItemsProcessed(state.iterations() * T);
}

}  // namespace

int main(int argc, char** argv) {
  bool full = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--full") == 0) full = true; else args.push_back(argv[i]);
  }
  int n = static_cast<int>(args.size());
  std::vector<int64_t> Ts = {4096}, Hs = {1024}, Es = {8, 64};
  if (full) {
    Ts = {4096, 16384, 65536};
    Hs = {1024, 4096};
    Es = {8, 64, 256};
  }
  for (const int64_t T : Ts)
    for (const int64_t H : Hs)
      for (const int64_t E : Es) {
        benchmark::RegisterBenchmark("BM_Gemm", BM_Gemm)->Args({T, H, E})->Unit(benchmark::kMillisecond)->UseRealTime();
        for (const char* r : {"locmoe+", "gshard", "locmoe-opt"})
          benchmark::RegisterBenchmark((std::string("BM_Route/") + r).c_str(), BM_Route, r)
              ->Args({T, H, E})->Unit(benchmark::kMillisecond)->UseRealTime();
      }
  benchmark::Initialize(&n, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
