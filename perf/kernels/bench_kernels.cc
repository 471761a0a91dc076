// CPU kernels in GB/s beside memcpy of the same bytes, in the same run:
//   dispatch_pack: bytes = C rows written (C = copies); memcpy moves the same C rows' bytes.
//   dispatch_pack_fp8: the same C rows (in x's dtype) read and quantized to e4m3.
//   token_combine: bytes = C rows read (returned rows), T rows written; memcpy of C rows' bytes.
//   slot_reduce:   bytes = N*k' rows read (expert rows), N rows written; memcpy of the rows read.
//   dispatch_layout / expert_layout: items (token slots) per second.
// GPU counterparts live in bench_kernels_gpu.cc and are registered when a device is visible.
#include <benchmark/benchmark.h>

#include <cstring>

#include "bench_shapes.h"

namespace kbench {
namespace {

const Exec kCpu{Device::kCpu, nullptr};

// Host state of one shape: plan, layouts, rows.
struct HostFlow {
  Shape s;
  RoutingPlan plan;
  std::vector<uint64_t> dbuf, ebuf;
  DispatchLayout dl;
  ExpertLayout el;
  std::vector<uint8_t> x, send, expert_rows, back, out, send_fp8;
  std::vector<float> send_scale;
  int32_t copies = 0, rows = 0;

  explicit HostFlow(const Shape& shape) : s(shape), plan(bench_plan(shape)) {
    const int64_t db = *dispatch_layout_bytes(s.tokens, s.k, s.ranks, s.experts_per_rank);
    dbuf.resize(db / 8 + 2);
    dl = *carve_dispatch_layout(dbuf.data(), db, s.tokens, s.k, s.ranks, s.experts_per_rank);
    (void)dispatch_layout(kCpu, plan.view(), dl);
    copies = dl.send_rank_offset[s.ranks];
    const int64_t rb = row_bytes(s);
    // Rows of 1.0 (not arbitrary bytes: tiny values would make denormal arithmetic the subject).
    x = ones(s.tokens);
    send.assign(copies * rb, 0);
    // The receiver view: this rank's own copies, as if all came back to it (one rank's share
    // of the exchange would be 1/R of them; bytes per row are what matter here).
    const int64_t eb = *expert_layout_bytes(copies, s.k, s.experts_per_rank * s.ranks, 1);
    ebuf.resize(eb / 8 + 2);
    el = *carve_expert_layout(ebuf.data(), eb, copies, s.k, s.experts_per_rank * s.ranks, 1);
    std::vector<int32_t> global(dl.copy_slot_expert, dl.copy_slot_expert + copies * s.k);
    // Local ids over R*L experts so every slot has a row (all ranks' experts "local").
    for (int32_t c = 0; c < copies; ++c)
      for (int32_t j = 0; j < s.k; ++j)
        if (global[c * s.k + j] >= 0) global[c * s.k + j] = plan.expert[dl.copy_token[c] * s.k + j];
    (void)expert_layout(kCpu, global.data(), copies, el);
    rows = el.expert_offset[el.num_local_experts];
    expert_rows = ones(rows);
    back.assign(copies * rb, 0);
    out.assign(s.tokens * rb, 0);
    send_fp8.assign(static_cast<size_t>(copies) * s.hidden, 0);
    send_scale.assign(copies, 0.0f);
  }
  std::vector<uint8_t> ones(int64_t n) const {
    std::vector<uint8_t> v(n * row_bytes(s));
    for (int64_t i = 0; i < n * s.hidden; ++i) {
      if (s.dtype == DType::kF32) {
        const float one = 1.0f;
        std::memcpy(v.data() + i * 4, &one, 4);
      } else {
        const bf16 one = bf16::from_float(1.0f);
        std::memcpy(v.data() + i * 2, &one, 2);
      }
    }
    return v;
  }
  ConstRows rows_of(const std::vector<uint8_t>& v, int32_t n) const {
    return ConstRows{v.data(), n, s.hidden, s.dtype};
  }
  Rows rows_of(std::vector<uint8_t>& v, int32_t n) { return Rows{v.data(), n, s.hidden, s.dtype}; }
};

HostFlow& flow(int index) {
  static HostFlow* flows[2] = {nullptr, nullptr};
  if (!flows[index]) flows[index] = new HostFlow(kCpuShapes[index]);
  return *flows[index];
}

void label(benchmark::State& st, const HostFlow& f) {
  st.SetLabel(std::string(dtype_name(f.s.dtype)) + " T=" + std::to_string(f.s.tokens) +
              " H=" + std::to_string(f.s.hidden) + " k=" + std::to_string(f.s.k) +
              " R=" + std::to_string(f.s.ranks) + " copies=" + std::to_string(f.copies));
}

void BM_memcpy_copies(benchmark::State& st) {
  HostFlow& f = flow(static_cast<int>(st.range(0)));
  for (auto _ : st) {
    std::memcpy(f.send.data(), f.back.data(), f.send.size());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(f.send.size()));
  label(st, f);
}

void BM_dispatch_pack(benchmark::State& st) {
  HostFlow& f = flow(static_cast<int>(st.range(0)));
  for (auto _ : st) {
    (void)dispatch_pack(kCpu, f.dl, f.rows_of(f.x, f.s.tokens), f.rows_of(f.send, f.copies));
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(f.send.size()));
  label(st, f);
}

// Quantizing pack: bytes = the same C rows of x as BM_dispatch_pack (in x's dtype).
void BM_dispatch_pack_fp8(benchmark::State& st) {
  HostFlow& f = flow(static_cast<int>(st.range(0)));
  for (auto _ : st) {
    (void)dispatch_pack_fp8(kCpu, f.dl, f.rows_of(f.x, f.s.tokens),
                            Fp8Rows{f.send_fp8.data(), f.send_scale.data(), f.copies, f.s.hidden});
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(f.send.size()));
  label(st, f);
}

void BM_token_combine(benchmark::State& st) {
  HostFlow& f = flow(static_cast<int>(st.range(0)));
  for (auto _ : st) {
    (void)token_combine(kCpu, f.dl, f.rows_of(f.back, f.copies), f.rows_of(f.out, f.s.tokens));
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(f.back.size()));
  label(st, f);
}

void BM_memcpy_expert_rows(benchmark::State& st) {
  HostFlow& f = flow(static_cast<int>(st.range(0)));
  std::vector<uint8_t> dst(f.expert_rows.size());
  for (auto _ : st) {
    std::memcpy(dst.data(), f.expert_rows.data(), dst.size());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(dst.size()));
  label(st, f);
}

void BM_slot_reduce(benchmark::State& st) {
  HostFlow& f = flow(static_cast<int>(st.range(0)));
  for (auto _ : st) {
    (void)slot_reduce(kCpu, f.el, f.rows_of(f.expert_rows, f.rows), f.dl.copy_slot_weight,
                      f.rows_of(f.back, f.copies));
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(f.expert_rows.size()));
  label(st, f);
}

void BM_dispatch_layout(benchmark::State& st) {
  HostFlow& f = flow(static_cast<int>(st.range(0)));
  for (auto _ : st) {
    (void)dispatch_layout(kCpu, f.plan.view(), f.dl);
    benchmark::ClobberMemory();
  }
  st.SetItemsProcessed(st.iterations() * int64_t{f.s.tokens} * f.s.k);
  label(st, f);
}

#define KBENCH(fn) BENCHMARK(fn)->Arg(0)->Arg(1)->MinTime(0.1)->Unit(benchmark::kMillisecond)
KBENCH(BM_memcpy_copies);
KBENCH(BM_dispatch_pack);
KBENCH(BM_dispatch_pack_fp8);
KBENCH(BM_token_combine);
KBENCH(BM_memcpy_expert_rows);
KBENCH(BM_slot_reduce);
KBENCH(BM_dispatch_layout);

}  // namespace

#if LOCMOE_BENCH_GPU
void register_gpu_benchmarks();  // bench_kernels_gpu.cc: only when a device is visible
#endif

}  // namespace kbench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
#if LOCMOE_BENCH_GPU
  kbench::register_gpu_benchmarks();
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
