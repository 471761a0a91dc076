// CUDA layouts: a deterministic, stable counting sort of a [rows, k] matrix of bucket keys.
//
// Item (i, j) with key b >= 0 goes to position bucket_offset[b] + (number of items with key b
// before it in (row, slot) order), bucket_offset being the prefix sum of the bucket counts padded
// to `align`. Three launches, no atomics whose order matters:
//   count: one block per chunk of kSortChunk rows counts its items per bucket (shared memory);
//   scan:  one block turns the per-chunk counts into each chunk's first position per bucket;
//   place: one warp per chunk walks its rows 32 at a time in order, ranks each item among the
//          earlier items of its bucket, and hands (row, slot, position) to the Keys policy.
// The Keys policy (DispatchKeys, ExpertKeys) supplies the key of an item and writes the outputs;
// its key functions are the LOCMOE_HD ones of layout.h that the CPU reference runs too.
#include "cuda_util.h"
#include "gpu_launch.h"

namespace locmoe::kernels::gpu {
namespace {

constexpr int kChunk = kSortChunk;
constexpr int kScanThreads = 1024;

struct SortArgs {
  int32_t rows, k, buckets, align, chunks;
  int32_t* hist;           // [buckets * chunks] bucket-major
  int32_t* chunk_items;    // [chunks]
  int32_t* bucket_count;   // [buckets]
  int32_t* bucket_offset;  // [buckets + 1]
};

template <class Keys>
__global__ void sort_count(Keys keys, SortArgs a) {
  extern __shared__ int32_t sh[];  // [buckets + 1]: counts, then the chunk's items
  for (int b = threadIdx.x; b <= a.buckets; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  const int32_t i = blockIdx.x * kChunk + threadIdx.x;
  if (i < a.rows) {
    int items = 0;
    for (int j = 0; j < a.k; ++j) {
      const int32_t b = keys.key(i, j);
      if (b >= 0) {
        atomicAdd(&sh[b], 1);
        ++items;
      }
    }
    atomicAdd(&sh[a.buckets], items);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < a.buckets; b += blockDim.x)
    a.hist[static_cast<int64_t>(b) * a.chunks + blockIdx.x] = sh[b];
  if (threadIdx.x == 0) a.chunk_items[blockIdx.x] = sh[a.buckets];
}

// Exclusive prefix sum of round_up(v[x], align) over x < n, written to out[0..n] (out may be v:
// each thread reads its range before writing it). Uses `part` (shared, blockDim ints).
__device__ void block_scan(const int32_t* v, int32_t n, int32_t align, int32_t* out,
                           int32_t* part) {
  const int32_t per = (n + blockDim.x - 1) / blockDim.x;
  const int32_t lo = min(n, static_cast<int32_t>(threadIdx.x) * per), hi = min(n, lo + per);
  int32_t sum = 0;
  for (int32_t x = lo; x < hi; ++x) sum += static_cast<int32_t>(round_up(v[x], align));
  part[threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t run = 0;
    for (unsigned t = 0; t < blockDim.x; ++t) {
      const int32_t s = part[t];
      part[t] = run;
      run += s;
    }
    out[n] = run;
  }
  __syncthreads();
  int32_t run = part[threadIdx.x];
  for (int32_t x = lo; x < hi; ++x) {
    const int32_t s = static_cast<int32_t>(round_up(v[x], align));
    out[x] = run;
    run += s;
  }
  __syncthreads();
}

template <class Keys>
__global__ void sort_scan(Keys keys, SortArgs a) {
  __shared__ int32_t part[kScanThreads];
  // Per bucket: counts over chunks -> first position of each chunk relative to the bucket.
  for (int32_t b = threadIdx.x; b < a.buckets; b += blockDim.x) {
    int32_t run = 0;
    int32_t* h = a.hist + static_cast<int64_t>(b) * a.chunks;
    for (int32_t c = 0; c < a.chunks; ++c) {
      const int32_t v = h[c];
      h[c] = run;
      run += v;
    }
    a.bucket_count[b] = run;
  }
  __syncthreads();
  block_scan(a.bucket_count, a.buckets, a.align, a.bucket_offset, part);
  block_scan(a.chunk_items, a.chunks, 1, a.chunk_items, part);  // chunk_items[chunks] = total
  for (int32_t b = threadIdx.x; b < a.buckets; b += blockDim.x) {
    int32_t* h = a.hist + static_cast<int64_t>(b) * a.chunks;
    for (int32_t c = 0; c < a.chunks; ++c) h[c] += a.bucket_offset[b];
  }
  __syncthreads();
  keys.finish(a, a.chunk_items[a.chunks]);
}

template <class Keys>
__global__ void sort_place(Keys keys, SortArgs a) {
  extern __shared__ int32_t sh[];  // cnt[buckets], then keys of the current 32 rows [32 * k]
  int32_t* cnt = sh;
  int32_t* kk = sh + a.buckets;
  const int lane = threadIdx.x;
  for (int b = lane; b < a.buckets; b += kWarp) cnt[b] = 0;
  __syncwarp();
  const int32_t chunk = blockIdx.x;
  const int32_t first = chunk * kChunk;
  const int32_t steps = (min(kChunk, a.rows - first) + kWarp - 1) / kWarp;
  int32_t row_run = a.chunk_items[chunk];
  for (int32_t step = 0; step < steps; ++step) {
    const int32_t i = first + step * kWarp + lane;
    const bool live = i < a.rows;
    int32_t items = 0;
    for (int j = 0; j < a.k; ++j) {
      const int32_t b = live ? keys.key(i, j) : -1;
      kk[lane * a.k + j] = b;
      items += b >= 0;
    }
    int32_t incl = items;
    for (int o = 1; o < kWarp; o <<= 1) {
      const int32_t v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    __syncwarp();
    const int32_t before = row_run + incl - items;
    if (live) keys.row(i, before);
    for (int j = 0; j < a.k; ++j) {
      const int32_t b = kk[lane * a.k + j];
      if (!live) continue;
      if (b < 0) {
        keys.skip(i, j);
        continue;
      }
      // Rank among earlier items of bucket b in this step: earlier lanes, then earlier slots.
      int32_t rank = 0;
      for (int l2 = 0; l2 < lane; ++l2)
        for (int j2 = 0; j2 < a.k; ++j2) rank += kk[l2 * a.k + j2] == b;
      for (int j2 = 0; j2 < j; ++j2) rank += kk[lane * a.k + j2] == b;
      const int32_t pos = a.hist[static_cast<int64_t>(b) * a.chunks + chunk] + cnt[b] + rank;
      keys.place(i, j, b, pos, before);
    }
    __syncwarp();
    for (int j = 0; j < a.k; ++j) {
      const int32_t b = kk[lane * a.k + j];
      if (b >= 0) atomicAdd(&cnt[b], 1);
    }
    row_run += __shfl_sync(0xffffffffu, incl, kWarp - 1);
    __syncwarp();
  }
}

// Source side: keys are the dispatch buckets (rank, local expert) of the owning slots.
struct DispatchKeys {
  PlanView p;
  DispatchLayout l;
  // An id >= E (a plan edited after finalize_plan; the host checks no ids on this path) makes
  // no copy instead of indexing past the histograms. Ids < 0 make none anyway.
  __device__ int32_t key(int32_t t, int32_t j) const {
    return p.expert[t * p.k + j] < p.num_experts ? dispatch_bucket(p, t, j) : -1;
  }
  __device__ void row(int32_t t, int32_t before) const { l.token_copy_offset[t] = before; }
  __device__ void skip(int32_t, int32_t) const {}
  __device__ void place(int32_t t, int32_t, int32_t b, int32_t c, int32_t before) const {
    const int32_t r = bucket_rank(b, l.experts_per_rank);
    l.copy_token[c] = t;
    for (int32_t jj = 0; jj < p.k; ++jj) {
      const int32_t le = copy_slot_local_expert(p, t, jj, r);
      l.copy_slot_expert[c * p.k + jj] = le;
      l.copy_slot_weight[c * p.k + jj] = le >= 0 ? p.weight[t * p.k + jj] : 0.0f;
    }
    l.token_copy[before + token_copy_rank(p, t, r)] = c;
  }
  __device__ void finish(const SortArgs& a, int32_t total) const {
    const int32_t L = l.experts_per_rank;
    for (int32_t r = threadIdx.x; r < l.num_ranks; r += blockDim.x) {
      l.send_rank_offset[r] = a.bucket_offset[r * L];
      l.send_rank_count[r] = a.bucket_offset[(r + 1) * L] - a.bucket_offset[r * L];
    }
    if (threadIdx.x == 0) {
      l.send_rank_offset[l.num_ranks] = a.bucket_offset[a.buckets];
      l.token_copy_offset[p.num_tokens] = total;
    }
  }
};

// Receiver side: keys are the local experts of the received slots.
struct ExpertKeys {
  const int32_t* slot_expert;
  ExpertLayout l;
  __device__ int32_t key(int32_t i, int32_t j) const {
    return expert_bucket(slot_expert[i * l.k + j], l.num_local_experts);
  }
  __device__ void row(int32_t, int32_t) const {}
  __device__ void skip(int32_t i, int32_t j) const { l.recv_pos[i * l.k + j] = -1; }
  __device__ void place(int32_t i, int32_t j, int32_t, int32_t pos, int32_t) const {
    l.recv_pos[i * l.k + j] = pos;
    l.row_src[pos] = i * l.k + j;
  }
  __device__ void finish(const SortArgs& a, int32_t) const {
    for (int32_t e = threadIdx.x; e < l.num_local_experts; e += blockDim.x)
      for (int32_t m = l.expert_offset[e] + l.expert_count[e]; m < l.expert_offset[e + 1]; ++m)
        l.row_src[m] = -1;  // padding
  }
};

template <class Keys>
int run_sort(const Keys& keys, const SortArgs& a, void* stream) {
  const cudaStream_t s = as_stream(stream);
  if (a.chunks > 0) {
    sort_count<Keys><<<a.chunks, kChunk, (a.buckets + 1) * sizeof(int32_t), s>>>(keys, a);
  }
  sort_scan<Keys><<<1, kScanThreads, 0, s>>>(keys, a);
  if (a.chunks > 0) {
    const size_t shm = (a.buckets + kWarp * a.k) * sizeof(int32_t);
    sort_place<Keys><<<a.chunks, kWarp, shm, s>>>(keys, a);
  }
  return last_launch();
}

SortArgs sort_args(int32_t rows, int32_t k, int32_t buckets, int32_t align, void* workspace) {
  SortArgs a;
  a.rows = rows;
  a.k = k;
  a.buckets = buckets;
  a.align = align;
  a.chunks = (rows + kChunk - 1) / kChunk;
  int32_t* w = static_cast<int32_t*>(workspace);
  a.hist = w;
  a.chunk_items = w + static_cast<int64_t>(buckets) * a.chunks;
  a.bucket_count = a.chunk_items + a.chunks + 1;
  a.bucket_offset = a.bucket_count + buckets;
  return a;
}

}  // namespace

namespace launch {

int dispatch_layout(const PlanView& plan, const DispatchLayout& layout, void* stream) {
  const int32_t buckets = plan.num_ranks * plan.experts_per_rank;
  const SortArgs a = sort_args(plan.num_tokens, plan.k, buckets, 1, layout.workspace);
  return run_sort(DispatchKeys{plan, layout}, a, stream);
}

int expert_layout(const int32_t* recv_slot_expert, int32_t num_recv, const ExpertLayout& layout,
                  void* stream) {
  SortArgs a =
      sort_args(num_recv, layout.k, layout.num_local_experts, layout.align, layout.workspace);
  a.bucket_count = layout.expert_count;
  a.bucket_offset = layout.expert_offset;
  return run_sort(ExpertKeys{recv_slot_expert, layout}, a, stream);
}

}  // namespace launch
}  // namespace locmoe::kernels::gpu
