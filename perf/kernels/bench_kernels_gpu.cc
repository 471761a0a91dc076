// GPU kernels in GB/s beside a device-to-device cudaMemcpy of the same bytes, same run (bytes
// as in bench_kernels.cc). Timed with CUDA events around each launch (manual time).
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <functional>
#include <string>

#include "bench_shapes.h"
#include "locmoe/kernels/config.h"

namespace kbench {
namespace {

void* dalloc(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) return nullptr;
  cudaMemset(p, 0, bytes);
  return p;
}

// Device state of one shape. Leaked on purpose (lives for the whole benchmark process).
struct DevFlow {
  Shape s;
  RoutingPlan plan;
  cudaStream_t stream = nullptr;
  Exec gpu;
  DispatchLayout dl;
  ExpertLayout el;
  void *x, *send, *expert_rows, *back, *out, *scratch, *send_fp8, *send_scale;
  int32_t copies = 0, rows = 0;
  bool ok = false;

  explicit DevFlow(const Shape& shape) : s(shape), plan(bench_plan(shape)) {
    cudaStreamCreate(&stream);
    gpu = Exec{Device::kCuda, stream};
    const int32_t L = s.experts_per_rank;
    // Layouts are computed on the device; the host copy of the plan gives the receiver view.
    const int64_t db = *dispatch_layout_bytes(s.tokens, s.k, s.ranks, L);
    std::vector<uint64_t> hbuf(db / 8 + 2);
    DispatchLayout hl = *carve_dispatch_layout(hbuf.data(), db, s.tokens, s.k, s.ranks, L);
    (void)dispatch_layout(Exec{}, plan.view(), hl);
    copies = hl.send_rank_offset[s.ranks];
    void* d_plan_expert = dalloc(plan.expert.size() * 4);
    void* d_plan_weight = dalloc(plan.weight.size() * 4);
    void* d_nodes = dalloc(plan.node_of_rank.size() * 4);
    cudaMemcpy(d_plan_expert, plan.expert.data(), plan.expert.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_plan_weight, plan.weight.data(), plan.weight.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_nodes, plan.node_of_rank.data(), plan.node_of_rank.size() * 4,
               cudaMemcpyHostToDevice);
    dplan = plan.view();
    dplan.expert = static_cast<int32_t*>(d_plan_expert);
    dplan.weight = static_cast<float*>(d_plan_weight);
    dplan.node_of_rank = static_cast<int32_t*>(d_nodes);
    dplan.slot_dropped = nullptr;
    dl = *carve_dispatch_layout(dalloc(db), db, s.tokens, s.k, s.ranks, L);
    ok = dispatch_layout(gpu, dplan, dl).ok();

    std::vector<int32_t> global(hl.copy_slot_expert, hl.copy_slot_expert + copies * s.k);
    for (int32_t c = 0; c < copies; ++c)
      for (int32_t j = 0; j < s.k; ++j)
        if (global[c * s.k + j] >= 0) global[c * s.k + j] = plan.expert[hl.copy_token[c] * s.k + j];
    void* d_global = dalloc(global.size() * 4);
    cudaMemcpy(d_global, global.data(), global.size() * 4, cudaMemcpyHostToDevice);
    const int32_t E = s.ranks * L;
    const int64_t eb = *expert_layout_bytes(copies, s.k, E, 1);
    el = *carve_expert_layout(dalloc(eb), eb, copies, s.k, E, 1);
    ok = ok && expert_layout(gpu, static_cast<int32_t*>(d_global), copies, el).ok();
    cudaMemcpy(&rows, el.expert_offset + E, 4, cudaMemcpyDeviceToHost);
    const int64_t rb = row_bytes(s);
    x = dalloc(s.tokens * rb);
    send = dalloc(copies * rb);
    expert_rows = dalloc(rows * rb);
    back = dalloc(copies * rb);
    out = dalloc(s.tokens * rb);
    scratch = dalloc(rows * rb);
    send_fp8 = dalloc(static_cast<size_t>(copies) * s.hidden);
    send_scale = dalloc(static_cast<size_t>(copies) * 4);
    ok = ok && x && send && expert_rows && back && out && scratch && send_fp8 && send_scale &&
         cudaStreamSynchronize(stream) == cudaSuccess;
  }
  PlanView dplan{};
  Rows rows_of(void* p, int32_t n) const { return Rows{p, n, s.hidden, s.dtype}; }
};

DevFlow& flow(int index) {
  static DevFlow* flows[2] = {nullptr, nullptr};
  if (!flows[index]) flows[index] = new DevFlow(kGpuShapes[index]);
  return *flows[index];
}

// Times `op` with events on the flow's stream; bytes per iteration for GB/s.
void timed(benchmark::State& st, DevFlow& f, int64_t bytes, const std::function<bool()>& op) {
  if (!f.ok) {
    st.SkipWithError("device setup failed");
    return;
  }
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  op();  // warm-up
  for (auto _ : st) {
    cudaEventRecord(a, f.stream);
    if (!op()) {
      st.SkipWithError("kernel launch failed");
      break;
    }
    cudaEventRecord(b, f.stream);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    st.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  st.SetBytesProcessed(st.iterations() * bytes);
  st.SetLabel(std::string(dtype_name(f.s.dtype)) + " T=" + std::to_string(f.s.tokens) +
              " H=" + std::to_string(f.s.hidden) + " k=" + std::to_string(f.s.k) +
              " E=" + std::to_string(f.s.ranks * f.s.experts_per_rank) +
              " copies=" + std::to_string(f.copies));
}

void gpu_memcpy_copies(benchmark::State& st, int i) {
  DevFlow& f = flow(i);
  const int64_t bytes = f.copies * row_bytes(f.s);
  timed(st, f, bytes, [&] {
    return cudaMemcpyAsync(f.send, f.back, bytes, cudaMemcpyDeviceToDevice, f.stream) ==
           cudaSuccess;
  });
}
void gpu_dispatch_pack(benchmark::State& st, int i) {
  DevFlow& f = flow(i);
  timed(st, f, f.copies * row_bytes(f.s), [&] {
    return dispatch_pack(f.gpu, f.dl, f.rows_of(f.x, f.s.tokens), f.rows_of(f.send, f.copies)).ok();
  });
}
void gpu_dispatch_pack_fp8(benchmark::State& st, int i) {
  DevFlow& f = flow(i);
  timed(st, f, f.copies * row_bytes(f.s), [&] {
    return dispatch_pack_fp8(f.gpu, f.dl, f.rows_of(f.x, f.s.tokens),
                             Fp8Rows{static_cast<uint8_t*>(f.send_fp8),
                                     static_cast<float*>(f.send_scale), f.copies, f.s.hidden})
        .ok();
  });
}
void gpu_token_combine(benchmark::State& st, int i) {
  DevFlow& f = flow(i);
  timed(st, f, f.copies * row_bytes(f.s), [&] {
    return token_combine(f.gpu, f.dl, f.rows_of(f.back, f.copies), f.rows_of(f.out, f.s.tokens))
        .ok();
  });
}
void gpu_memcpy_expert_rows(benchmark::State& st, int i) {
  DevFlow& f = flow(i);
  const int64_t bytes = f.rows * row_bytes(f.s);
  timed(st, f, bytes, [&] {
    return cudaMemcpyAsync(f.scratch, f.expert_rows, bytes, cudaMemcpyDeviceToDevice, f.stream) ==
           cudaSuccess;
  });
}
void gpu_slot_reduce(benchmark::State& st, int i) {
  DevFlow& f = flow(i);
  timed(st, f, f.rows * row_bytes(f.s), [&] {
    return slot_reduce(f.gpu, f.el, f.rows_of(f.expert_rows, f.rows), f.dl.copy_slot_weight,
                       f.rows_of(f.back, f.copies))
        .ok();
  });
}
void gpu_dispatch_layout(benchmark::State& st, int i) {
  DevFlow& f = flow(i);
  // Bytes: the plan's expert ids read (the layout is index work, not row traffic).
  timed(st, f, int64_t{f.s.tokens} * f.s.k * 4,
        [&] { return dispatch_layout(f.gpu, f.dplan, f.dl).ok(); });
}

}  // namespace

void register_gpu_benchmarks() {
  if (cuda_device_count() == 0) return;
  const struct {
    const char* name;
    void (*fn)(benchmark::State&, int);
  } list[] = {{"BM_gpu_memcpy_copies", gpu_memcpy_copies},
              {"BM_gpu_dispatch_pack", gpu_dispatch_pack},
              {"BM_gpu_dispatch_pack_fp8", gpu_dispatch_pack_fp8},
              {"BM_gpu_token_combine", gpu_token_combine},
              {"BM_gpu_memcpy_expert_rows", gpu_memcpy_expert_rows},
              {"BM_gpu_slot_reduce", gpu_slot_reduce},
              {"BM_gpu_dispatch_layout", gpu_dispatch_layout}};
  for (const auto& b : list)
    for (int i = 0; i < 2; ++i)
      benchmark::RegisterBenchmark((std::string(b.name) + "/" + std::to_string(i)).c_str(),
                                   [fn = b.fn, i](benchmark::State& st) { fn(st, i); })
          ->UseManualTime()
          ->MinTime(0.2)
          ->Unit(benchmark::kMillisecond);
}

}  // namespace kbench
