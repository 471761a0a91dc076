// locmoe-perf ep: the Dispatcher's four exchanges of a training step (dispatch, combine,
// combine_backward, dispatch_backward) with plans from a router, per phase: time, bytes each rank
// sent to other ranks (intra-node and inter-node apart), GB/s per rank, beside this machine's
// memcpy bandwidth and beside the same exchanges done with plain MPI_Alltoallv calls on the same
// counts, plus the metadata rounds and data exchanges one step costs (Communicator::counters()).
//
// Sizes (-b/-e/-f) are tokens per rank T; the hidden size H is --hidden. Each size routes random
// hidden states x [T, H] (values k/8, |k| <= 8: exact in float, so checksums are exact) against a
// random gate [E, H] (the same on every rank) with --router, then runs -w warm-up and -n timed
// steps; time is the mean over the timed steps of the phase, the slowest rank's. Experts are the
// identity (expert_out = expert_in), so a step is dispatch(x) -> combine(expert_in) ->
// combine_backward(g, y = expert_in) -> dispatch_backward(grad_expert_out).
//
// Bytes of a phase are what this rank put on a transport towards other ranks (the local copy
// excluded): for the Dispatcher the sum of ExchangeStats over every exchange of the phase (rows
// and whatever metadata it sends; a wrapper around the Communicator adds up last_stats() after
// each call), for dispatch also DispatchStats' row bytes alone; for MPI the counts it passed.
// GB/s = mean bytes per rank / time.
//
// The MPI reference (host memory, MPI bootstrap): the counts are known (exchanged once per size,
// untimed: it does not negotiate); per phase it packs, calls MPI_Alltoallv (dispatch: slot
// metadata then rows; combine and dispatch_backward: the reduced rows back; combine_backward:
// gradient rows out, then the weight gradients back) and does the same per-row arithmetic the
// Dispatcher does, without the expert-major layout. With -c, one untimed step of each is compared:
// #wrong counts outputs that differ (dispatch: checksum of expert_in against the received rows
// weighted by their local slots; the other phases element-wise), summed over ranks.
//
// Device memory (--memory device) needs a CUDA build and a GPU; the exchanges then go through
// NCCL, and the MPI reference (not CUDA-aware here) is left out.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "locmoe/core/check.h"   // LOCMOE_RETURN_IF_ERROR
#include "locmoe/core/config.h"  // LOCMOE_HAVE_CUDA
#if LOCMOE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/log.h"
#include "locmoe/core/params.h"
#include "locmoe/ep/dispatcher.h"
#include "locmoe/router/router.h"
#include "locmoe/topology/placement.h"
#include "subcommand.h"

namespace locmoe::perf {
namespace {

constexpr const char* kPhases[] = {"dispatch", "combine", "combine_backward", "dispatch_backward"};
constexpr int kNumPhases = 4;

struct Options {
  uint64_t min_tokens = 256, max_tokens = 4096;
  double factor = 2;
  int iters = 10, warmup = 3, check = 1;
  double timeout_s = 0;
  std::string json, router = "gshard", transport = "auto", algo = "auto", memory = "host";
  int64_t hidden = 1024;
  int32_t experts_per_rank = 2, k = 2;
  double capacity_factor = 1.25;
  bool mpi = true;
  // DispatcherConfig::weight_grads_with_dispatch_backward (what locmoe.torch's MoELayer uses).
  bool weight_grads_behind = true;
};

[[noreturn]] void fail(int rank, const Status& s) {
  std::fprintf(stderr, "locmoe-perf ep: rank %d: %s\n", rank, s.to_string().c_str());
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}
void ok_or_fail(int rank, const Status& s) {
  if (!s.ok()) fail(rank, s);
}

bool mpi_initialized() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

// Bytes a rank put on transports towards other ranks.
struct Bytes {
  uint64_t total = 0, intra = 0, inter = 0;
};

// The Dispatcher's communicator, seen through: every call goes to `inner`, and the ExchangeStats
// of every exchange are added up, so a phase's bytes include all of its exchanges (last_stats()
// alone is the last one's). Only the public Communicator interface is used.
class CountingCommunicator final : public Communicator {
 public:
  explicit CountingCommunicator(Communicator& inner) : c_(inner) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  const ClusterMap& cluster() const override { return c_.cluster(); }
  A2AAlgo algo() const override { return c_.algo(); }
  std::string transport_name() const override { return c_.transport_name(); }
  Status exchange_counts(const uint64_t* send_counts, uint64_t* recv_counts) override {
    return add(c_.exchange_counts(send_counts, recv_counts));
  }
  Status alltoallv(const void* send, const uint64_t* send_counts, const uint64_t* send_displs, void* recv,
                   const uint64_t* recv_counts, const uint64_t* recv_displs, uint64_t recv_capacity, MemoryKind mem,
                   void* stream) override {
    return add(c_.alltoallv(send, send_counts, send_displs, recv, recv_counts, recv_displs, recv_capacity, mem, stream));
  }
  Status reject(const Status& why) override { return c_.reject(why); }
  uint64_t exchanges() const override { return c_.exchanges(); }
  Counters counters() const override { return c_.counters(); }
  void abort(std::string_view message) override { c_.abort(message); }
  Status prepare(const ExchangeSpec& spec, ExchangePlan& plan) override { return add(c_.prepare(spec, plan)); }
  Status execute(const ExchangePlan& plan, const void* send, void* recv, void* stream) override {
    return add(c_.execute(plan, send, recv, stream));
  }
  Status transpose(const ExchangePlan& plan, ExchangePlan& out) const override { return c_.transpose(plan, out); }
  Status scale(const ExchangePlan& plan, uint64_t factor, ExchangePlan& out) const override {
    return c_.scale(plan, factor, out);
  }
  const ExchangeStats& last_stats() const override { return c_.last_stats(); }

  // The bytes since the last take().
  Bytes take() {
    Bytes b = acc_;
    acc_ = {};
    return b;
  }

 private:
  Status add(Status s) {
    if (s.ok()) {
      const ExchangeStats& st = c_.last_stats();
      acc_.total += st.bytes_sent;
      acc_.intra += st.intranode_bytes_sent;
      acc_.inter += st.internode_bytes_sent;
    }
    return s;
  }
  Communicator& c_;
  Bytes acc_;
};

// memcpy bandwidth (GB/s) of one rank alone and per rank with every rank copying at once.
std::pair<double, double> memcpy_bandwidth(uint64_t bytes, Bootstrap& b) {
  std::vector<char> src(bytes, 1), dst(bytes, 2);
  auto time_copies = [&] {
    std::memcpy(dst.data(), src.data(), bytes);
    const int reps = 5;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) std::memcpy(dst.data(), src.data(), bytes);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  double alone = 0, together = 0;
  ok_or_fail(b.rank(), b.barrier());
  if (b.rank() == 0) alone = bytes / time_copies() / 1e9;
  ok_or_fail(b.rank(), b.barrier());
  together = bytes / time_copies() / 1e9;
  ok_or_fail(b.rank(), b.allreduce(&alone, &alone, 1, DataType::kFloat64, ReduceOp::kMax));
  ok_or_fail(b.rank(), b.allreduce(&together, &together, 1, DataType::kFloat64, ReduceOp::kMin));
  return {alone, together};
}

// Every rank's value, in rank order.
std::vector<uint64_t> gather(Bootstrap& b, uint64_t v) {
  std::vector<uint64_t> all(static_cast<size_t>(b.size()));
  ok_or_fail(b.rank(), b.allgather(&v, all.data(), sizeof v));
  return all;
}
double max_over_ranks(Bootstrap& b, double v) {
  ok_or_fail(b.rank(), b.allreduce(&v, &v, 1, DataType::kFloat64, ReduceOp::kMax));
  return v;
}
uint64_t sum_over_ranks(Bootstrap& b, uint64_t v) {
  ok_or_fail(b.rank(), b.allreduce(&v, &v, 1, DataType::kUint64, ReduceOp::kSum));
  return v;
}

// Outputs that differ from the reference by more than float rounding of the sums allows.
uint64_t count_wrong(const float* got, const std::vector<float>& want) {
  uint64_t wrong = 0;
  for (size_t i = 0; i < want.size(); ++i)
    wrong += !(std::fabs(got[i] - want[i]) <= 1e-4f * (1.0f + std::fabs(want[i])));
  return wrong;
}

// The same four exchanges with MPI_Alltoallv on known counts (host memory). Copies go in the
// order (destination rank, token); each carries its token's k slots (expert id, or -1 for a slot
// on another rank, and weight), as the Dispatcher's copies do.
class MpiReference {
 public:
  struct Slot {
    int32_t expert;
    float weight;
  };

  MpiReference(const RoutingPlan& plan, int64_t H, int me, int R)
      : H_(H), k_(plan.k), L_(plan.experts_per_rank), me_(me), R_(R), plan_(plan) {
    send_count_.assign(R, 0);
    for (int r = 0; r < R; ++r)
      for (int32_t t = 0; t < plan.num_tokens; ++t)
        if (on_rank(t, r)) {
          copy_token_.push_back(t);
          ++send_count_[r];
        }
    recv_count_.assign(R, 0);
    MPI_Alltoall(send_count_.data(), 1, MPI_INT, recv_count_.data(), 1, MPI_INT, MPI_COMM_WORLD);
    send_displ_.assign(R, 0);
    recv_displ_.assign(R, 0);
    for (int r = 1; r < R; ++r) {
      send_displ_[r] = send_displ_[r - 1] + send_count_[r - 1];
      recv_displ_[r] = recv_displ_[r - 1] + recv_count_[r - 1];
    }
    C_ = static_cast<int64_t>(copy_token_.size());
    N_ = recv_displ_[R - 1] + recv_count_[R - 1];
    MPI_Type_contiguous(static_cast<int>(H * sizeof(float)), MPI_BYTE, &row_type_);
    MPI_Type_contiguous(static_cast<int>(k_ * sizeof(Slot)), MPI_BYTE, &meta_type_);
    MPI_Type_contiguous(static_cast<int>(k_ * sizeof(float)), MPI_BYTE, &dots_type_);
    for (MPI_Datatype* t : {&row_type_, &meta_type_, &dots_type_}) MPI_Type_commit(t);
    send_rows_.resize(C_ * H);
    send_meta_.resize(C_ * k_);
    recv_rows_.resize(N_ * H);
    recv_meta_.resize(N_ * k_);
    recv_grad_.resize(N_ * H);
    red_.resize(N_ * H);
    back_.resize(C_ * H);
    dots_.resize(N_ * k_);
    back_dots_.resize(C_ * k_);
  }
  ~MpiReference() {
    for (MPI_Datatype* t : {&row_type_, &meta_type_, &dots_type_}) MPI_Type_free(t);
  }
  MpiReference(const MpiReference&) = delete;
  MpiReference& operator=(const MpiReference&) = delete;

  const std::vector<int>& send_count() const { return send_count_; }
  const std::vector<int>& recv_count() const { return recv_count_; }

  Status dispatch(const float* x) {
    for (int64_t c = 0; c < C_; ++c) {
      const int32_t t = copy_token_[c];
      const int r = rank_of_copy(c);
      std::memcpy(&send_rows_[c * H_], x + static_cast<int64_t>(t) * H_, H_ * sizeof(float));
      for (int32_t j = 0; j < k_; ++j) {
        const int32_t e = plan_.expert[t * k_ + j];
        send_meta_[c * k_ + j] = e >= 0 && e / L_ == r ? Slot{e, plan_.weight[t * k_ + j]} : Slot{-1, 0.0f};
      }
    }
    LOCMOE_RETURN_IF_ERROR(a2a(send_meta_.data(), recv_meta_.data(), meta_type_, true));
    return a2a(send_rows_.data(), recv_rows_.data(), row_type_, true);
  }
  // Identity experts: each received row's local slots return sum_j w_j * row, summed per token.
  Status combine(std::vector<float>& out) {
    for (int64_t i = 0; i < N_; ++i) {
      float* o = &red_[i * H_];
      std::fill(o, o + H_, 0.0f);
      for (int32_t j = 0; j < k_; ++j) {
        const Slot s = recv_meta_[i * k_ + j];
        if (s.expert < 0) continue;
        for (int64_t h = 0; h < H_; ++h) o[h] += s.weight * recv_rows_[i * H_ + h];
      }
    }
    LOCMOE_RETURN_IF_ERROR(a2a(red_.data(), back_.data(), row_type_, false));
    sum_per_token(out);
    return ok_status();
  }
  // d out -> d y: rows out to the experts, w_j * g per local slot, and <g, y> back per slot.
  Status combine_backward(const float* g, std::vector<float>& grad_w) {
    for (int64_t c = 0; c < C_; ++c)
      std::memcpy(&send_rows_[c * H_], g + static_cast<int64_t>(copy_token_[c]) * H_, H_ * sizeof(float));
    LOCMOE_RETURN_IF_ERROR(a2a(send_rows_.data(), recv_grad_.data(), row_type_, true));
    for (int64_t i = 0; i < N_; ++i) {
      const float* gi = &recv_grad_[i * H_];
      const float* yi = &recv_rows_[i * H_];
      double dot = 0;
      for (int64_t h = 0; h < H_; ++h) dot += static_cast<double>(gi[h]) * yi[h];
      float* o = &red_[i * H_];  // kept for dispatch_backward: sum over local slots of w_j g
      std::fill(o, o + H_, 0.0f);
      for (int32_t j = 0; j < k_; ++j) {
        const Slot s = recv_meta_[i * k_ + j];
        dots_[i * k_ + j] = s.expert < 0 ? 0.0f : static_cast<float>(dot);
        if (s.expert < 0) continue;
        for (int64_t h = 0; h < H_; ++h) o[h] += s.weight * gi[h];
      }
    }
    LOCMOE_RETURN_IF_ERROR(a2a(dots_.data(), back_dots_.data(), dots_type_, false));
    std::fill(grad_w.begin(), grad_w.end(), 0.0f);
    for (int64_t c = 0; c < C_; ++c) {
      const int32_t t = copy_token_[c];
      const int r = rank_of_copy(c);
      for (int32_t j = 0; j < k_; ++j) {
        const int32_t e = plan_.expert[t * k_ + j];
        if (e >= 0 && e / L_ == r) grad_w[t * k_ + j] = back_dots_[c * k_ + j];
      }
    }
    return ok_status();
  }
  // d expert_in -> d x (no weights): each received row's local slots summed, sent back, summed per
  // token. The gradient rows are combine_backward's (w_j * g per slot), already summed per row.
  Status dispatch_backward(std::vector<float>& grad_x) {
    LOCMOE_RETURN_IF_ERROR(a2a(red_.data(), back_.data(), row_type_, false));
    sum_per_token(grad_x);
    return ok_status();
  }

  // What the Dispatcher's expert_in must add up to: each received row once per local slot.
  double dispatch_checksum() const {
    double s = 0;
    for (int64_t i = 0; i < N_; ++i) {
      int n = 0;
      for (int32_t j = 0; j < k_; ++j) n += recv_meta_[i * k_ + j].expert >= 0;
      for (int64_t h = 0; h < H_; ++h) s += static_cast<double>(n) * recv_rows_[i * H_ + h];
    }
    return s;
  }
  // What grad_expert_out must add up to: sum over local slots of w_j * g.
  double grad_expert_checksum() const {
    double s = 0;
    for (int64_t i = 0; i < N_ * H_; ++i) s += red_[i];
    return s;
  }

  // Bytes this rank passes to MPI_Alltoallv for other ranks in each phase, split by node.
  std::array<Bytes, kNumPhases> bytes(const ClusterMap& cluster) const {
    std::array<Bytes, kNumPhases> out{};
    const uint64_t rb = H_ * sizeof(float), meta = k_ * sizeof(Slot), dots = k_ * sizeof(float);
    for (int r = 0; r < R_; ++r) {
      if (r == me_) continue;
      const bool inter = cluster.node_of(r) != cluster.node_of(me_);
      const uint64_t fwd = static_cast<uint64_t>(send_count_[r]), bwd = static_cast<uint64_t>(recv_count_[r]);
      const uint64_t b[kNumPhases] = {fwd * (rb + meta), bwd * rb, fwd * rb + bwd * dots, bwd * rb};
      for (int p = 0; p < kNumPhases; ++p) {
        out[p].total += b[p];
        (inter ? out[p].inter : out[p].intra) += b[p];
      }
    }
    return out;
  }

 private:
  bool on_rank(int32_t t, int r) const {
    for (int32_t j = 0; j < k_; ++j) {
      const int32_t e = plan_.expert[t * k_ + j];
      if (e >= 0 && e / L_ == r) return true;
    }
    return false;
  }
  int rank_of_copy(int64_t c) const {
    int r = 0;
    while (r + 1 < R_ && send_displ_[r + 1] <= c) ++r;
    return r;
  }
  void sum_per_token(std::vector<float>& out) const {
    std::fill(out.begin(), out.end(), 0.0f);
    for (int64_t c = 0; c < C_; ++c) {
      float* o = &out[static_cast<int64_t>(copy_token_[c]) * H_];
      for (int64_t h = 0; h < H_; ++h) o[h] += back_[c * H_ + h];
    }
  }
  // forward: copies to their expert ranks; backward: received rows back to their sources.
  Status a2a(const void* send, void* recv, MPI_Datatype type, bool forward) {
    const int rc = forward ? MPI_Alltoallv(send, send_count_.data(), send_displ_.data(), type, recv, recv_count_.data(),
                                           recv_displ_.data(), type, MPI_COMM_WORLD)
                           : MPI_Alltoallv(send, recv_count_.data(), recv_displ_.data(), type, recv, send_count_.data(),
                                           send_displ_.data(), type, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? ok_status() : error(Code::kSystemError, "MPI_Alltoallv failed ({})", rc);
  }

  int64_t H_;
  int32_t k_, L_;
  int me_, R_;
  const RoutingPlan& plan_;
  std::vector<int32_t> copy_token_;
  std::vector<int> send_count_, recv_count_, send_displ_, recv_displ_;
  int64_t C_ = 0, N_ = 0;
  MPI_Datatype row_type_{}, meta_type_{}, dots_type_{};
  std::vector<float> send_rows_, recv_rows_, recv_grad_, red_, back_, dots_, back_dots_;
  std::vector<Slot> send_meta_, recv_meta_;
};

// The buffers of one size where the Dispatcher reads and writes them: host vectors, or device
// copies of them (--memory device).
struct Buffers {
  std::vector<float> x, expert_in, out, grad_out, grad_expert_out, grad_w, grad_x;
  bool device = false;
  float *dx = nullptr, *dexpert_in = nullptr, *dout = nullptr, *dgrad_out = nullptr, *dgrad_expert_out = nullptr,
        *dgrad_w = nullptr, *dgrad_x = nullptr;

  float* at(std::vector<float>& v, float* d) { return device ? d : v.data(); }
  // Allocates the device copies and uploads the host contents (once per size).
  Status to_device() {
#if LOCMOE_HAVE_CUDA
    if (!device) return ok_status();
    for (auto [v, d] : pairs())
      if ((*d == nullptr && cudaMalloc(d, std::max<size_t>(v->size(), 1) * sizeof(float)) != cudaSuccess) ||
          cudaMemcpy(*d, v->data(), v->size() * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess)
        return error(Code::kSystemError, "cudaMalloc/cudaMemcpy of {} floats failed", v->size());
#endif
    return ok_status();
  }
  Status to_host() {
#if LOCMOE_HAVE_CUDA
    if (!device) return ok_status();
    if (cudaDeviceSynchronize() != cudaSuccess) return error(Code::kSystemError, "cudaDeviceSynchronize failed");
    for (auto [v, d] : pairs())
      if (cudaMemcpy(v->data(), *d, v->size() * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess)
        return error(Code::kSystemError, "cudaMemcpy of {} floats failed", v->size());
#endif
    return ok_status();
  }
  Status sync() {
#if LOCMOE_HAVE_CUDA
    if (device && cudaDeviceSynchronize() != cudaSuccess) return error(Code::kSystemError, "cudaDeviceSynchronize failed");
#endif
    return ok_status();
  }
  ~Buffers() {
#if LOCMOE_HAVE_CUDA
    for (auto [v, d] : pairs())
      if (*d) cudaFree(*d);
#endif
  }

 private:
  std::array<std::pair<std::vector<float>*, float**>, 7> pairs() {
    return {{{&x, &dx}, {&expert_in, &dexpert_in}, {&out, &dout}, {&grad_out, &dgrad_out},
             {&grad_expert_out, &dgrad_expert_out}, {&grad_w, &dgrad_w}, {&grad_x, &dgrad_x}}};
  }
};

// Refuses --memory device clearly where it cannot run.
Status check_device_memory() {
#if LOCMOE_HAVE_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0)
    return error(Code::kUnsupported, "--memory device: no CUDA device here ({}); run with --memory host",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  return ok_status();
#else
  return error(Code::kUnsupported,
               "--memory device: this build has no CUDA (configure with -DLOCMOE_ENABLE_CUDA=ON); run with --memory host");
#endif
}

struct PhaseRow {
  std::string impl;  // "locmoe" | "mpi"
  double time_us = 0;
  std::vector<uint64_t> bytes, intra, inter, row_bytes, row_inter;  // per rank
  uint64_t wrong = 0;
  double gbps = 0;
};

}  // namespace

int run_ep(int argc, char** argv) {
  CLI::App app{"The Dispatcher's dispatch, combine and both backwards with plans from a router, beside MPI_Alltoallv "
               "on the same counts (run under mpirun)",
               "locmoe-perf ep"};
  Options o;
  app.add_option("-b,--mintokens", o.min_tokens, "smallest size: tokens per rank (T; the hidden size is --hidden)")
      ->transform(CLI::AsSizeValue(false));
  app.add_option("-e,--maxtokens", o.max_tokens, "largest size: tokens per rank")->transform(CLI::AsSizeValue(false));
  app.add_option("-f,--stepfactor", o.factor, "tokens multiplier between sizes")->check(CLI::PositiveNumber);
  app.add_option("-n,--iters", o.iters, "timed steps per size")->check(CLI::PositiveNumber);
  app.add_option("-w,--warmup_iters", o.warmup, "untimed warm-up steps per size")->check(CLI::NonNegativeNumber);
  app.add_option("-c,--check", o.check, "compare one extra untimed step with the MPI reference (0/1)");
  app.add_option("-T,--timeout", o.timeout_s, "deadline in seconds of every wait (default LOCMOE_TIMEOUT_S)");
  app.add_option("-J,--json", o.json, "write the results as JSON to this file");
  app.add_option("--router", o.router, "router making the plans (router/include/locmoe/router/router.h: locmoe+, "
                                       "gshard, switch, expert-choice, node-limited, locmoe, hash, dropless, "
                                       "locmoe-opt, deepseek-v3)");
  app.add_option("--hidden", o.hidden, "H: float32 elements per token row")->check(CLI::PositiveNumber);
  app.add_option("--experts-per-rank", o.experts_per_rank, "L: experts on each rank")->check(CLI::PositiveNumber);
  app.add_option("-k,--topk", o.k, "k: experts per token")->check(CLI::PositiveNumber);
  app.add_option("--capacity-factor", o.capacity_factor, "the router's capacity factor")->check(CLI::PositiveNumber);
  app.add_option("--transport", o.transport, "mpi | ucx | nccl | auto (LOCMOE_TRANSPORT; nccl with --memory device)");
  app.add_option("--algo", o.algo, "flat | hier | auto (LOCMOE_A2A_ALGO)");
  app.add_option("--memory", o.memory, "host | device (CUDA build and a GPU; no MPI reference)");
  app.add_option("--mpi", o.mpi, "run the MPI_Alltoallv reference (1/0; host memory, MPI bootstrap)");
  app.add_option("--weight-grads-behind", o.weight_grads_behind,
                 "1: the weight gradients travel behind dispatch_backward's rows (4 data exchanges per step, "
                 "DispatcherConfig::weight_grads_with_dispatch_backward); 0: in combine_backward's own (5)");

  auto boot = make_bootstrap_from_env();
  if (!boot.ok()) {
    std::fprintf(stderr, "locmoe-perf ep: %s\n", boot.status().to_string().c_str());
    if (mpi_initialized()) MPI_Finalize();
    return 2;
  }
  Bootstrap& b = **boot;
  const int me = b.rank(), R = b.size();
  auto finish = [&](int code) {
    boot->reset();
    if (mpi_initialized()) MPI_Finalize();
    return code;
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return finish(me == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2));
  }
  set_log_rank(me);
  // Refusals every rank makes alike (same flags), so all exit together.
  auto refuse = [&](const std::string& why) {
    if (me == 0) std::fprintf(stderr, "locmoe-perf ep: %s\n", why.c_str());
    return finish(2);
  };
  if (o.memory != "host" && o.memory != "device") return refuse("--memory '" + o.memory + "': expected host or device");
  if (o.algo != "flat" && o.algo != "hier" && o.algo != "auto")
    return refuse("--algo '" + o.algo + "': expected flat, hier or auto");
  if (o.min_tokens == 0 || o.min_tokens > o.max_tokens || o.max_tokens > (1u << 30))
    return refuse("-b " + std::to_string(o.min_tokens) + " -e " + std::to_string(o.max_tokens) +
                  ": expected 1 <= -b <= -e <= 2^30 tokens per rank");
  const bool device = o.memory == "device";
  if (device) {
    if (Status s = check_device_memory(); !s.ok()) return refuse(s.message());
  }
  if (Status s = params::validate_all(); !s.ok()) fail(me, s);
  RouterConfig rc;
  rc.name = o.router;
  rc.k = o.k;
  rc.capacity_factor = o.capacity_factor;
  auto router = Router::create(rc);
  if (!router.ok()) return refuse(router.status().message());

  auto cluster = topo::build_cluster_map(b);
  if (!cluster.ok()) fail(me, cluster.status());
  CommConfig cc;
  cc.transport = device ? "nccl" : (o.transport == "auto" ? "" : o.transport);
  cc.algo = o.algo == "flat" ? A2AAlgo::kFlat : o.algo == "hier" ? A2AAlgo::kHierarchical : A2AAlgo::kAuto;
  cc.timeout_s = o.timeout_s;
  auto comm_or = Communicator::create(b, *cluster, cc);
  if (!comm_or.ok()) fail(me, comm_or.status());
  CountingCommunicator comm(**comm_or);
  const bool with_mpi = o.mpi && !device && mpi_initialized();

  auto placement = placement_from_cluster(*cluster, o.experts_per_rank);
  if (!placement.ok()) fail(me, placement.status());
  const int64_t H = o.hidden, E = placement->num_experts();

  const auto [memcpy_alone, memcpy_together] =
      memcpy_bandwidth(std::clamp<uint64_t>(o.max_tokens * H * sizeof(float), 16u << 20, 256u << 20), b);
  std::vector<int> node_of_rank(R);
  for (int r = 0; r < R; ++r) node_of_rank[r] = cluster->node_of(r);
  const std::string algo_name = comm.algo() == A2AAlgo::kFlat ? "flat" : "hier";
  if (me == 0) {
    std::printf("# locmoe-perf ep: %d ranks on %d nodes, transport %s, algo %s, router %s, H %lld, L %d, k %d, "
                "%s memory, float32\n",
                R, cluster->num_nodes(), comm.transport_name().c_str(), algo_name.c_str(), o.router.c_str(),
                static_cast<long long>(H), o.experts_per_rank, o.k, o.memory.c_str());
    std::printf("# size = tokens per rank; bytes = sent to other ranks per rank (mean); GB/s = bytes / time. iters "
                "%d, warm-up %d, check %d%s\n",
                o.iters, o.warmup, o.check, with_mpi ? "" : " (no MPI_Alltoallv reference)");
    std::printf("# memcpy: %.2f GB/s one rank alone, %.2f GB/s per rank with all %d copying at once\n", memcpy_alone,
                memcpy_together, R);
    std::printf("#%8s %18s %7s %11s %13s %13s %13s %9s %7s\n", "tokens", "phase", "impl", "time(us)", "bytes/rank",
                "intra B/rank", "inter B/rank", "GB/s", "#wrong");
  }

  std::vector<uint64_t> sizes;
  for (double t = static_cast<double>(o.min_tokens); t <= static_cast<double>(o.max_tokens) * 1.0000001; t *= o.factor) {
    sizes.push_back(static_cast<uint64_t>(t));
    if (o.factor <= 1) break;
  }
  nlohmann::json results = nlohmann::json::array();
  uint64_t wrong_total = 0;
  std::mt19937 gate_rng(12345);  // the same gate on every rank
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> gate(static_cast<size_t>(E * H));
  for (float& v : gate) v = unit(gate_rng);

  for (uint64_t Tu : sizes) {
    const int32_t T = static_cast<int32_t>(Tu);
    Buffers buf;
    buf.device = device;
    std::mt19937 rng(1000u + static_cast<unsigned>(me) * 7919u + static_cast<unsigned>(T));
    std::uniform_int_distribution<int> small(-8, 8);
    buf.x.resize(static_cast<size_t>(T) * H);
    buf.grad_out.resize(buf.x.size());
    for (float& v : buf.x) v = static_cast<float>(small(rng)) / 8.0f;
    for (float& v : buf.grad_out) v = static_cast<float>(small(rng)) / 8.0f;
    auto plan = router->route(MatrixView{buf.x.data(), T, H}, MatrixView{gate.data(), E, H}, *placement, &b);
    if (!plan.ok()) fail(me, plan.status());

    DispatcherConfig dc;
    dc.experts_per_rank = o.experts_per_rank;
    dc.hidden = H;
    dc.max_tokens = T;
    dc.top_k = plan->k;
    dc.memory = device ? MemoryKind::kDevice : MemoryKind::kHost;
    dc.weight_grads_with_dispatch_backward = o.weight_grads_behind;
    auto disp = Dispatcher::create(b, comm, dc);
    if (!disp.ok()) fail(me, disp.status());
    Dispatcher& d = **disp;
    auto handle = d.make_handle();
    if (!handle.ok()) fail(me, handle.status());
    DispatchHandle& h = **handle;
    const int64_t M = d.max_expert_rows();
    buf.expert_in.assign(static_cast<size_t>(M * H), 0.0f);
    buf.grad_expert_out.assign(buf.expert_in.size(), 0.0f);
    buf.out.assign(buf.x.size(), 0.0f);
    buf.grad_x.assign(buf.x.size(), 0.0f);
    buf.grad_w.assign(static_cast<size_t>(T) * plan->k, 0.0f);
    ok_or_fail(me, buf.to_device());
    float* x = buf.at(buf.x, buf.dx);
    float* ein = buf.at(buf.expert_in, buf.dexpert_in);
    float* out = buf.at(buf.out, buf.dout);
    float* gout = buf.at(buf.grad_out, buf.dgrad_out);
    float* geo = buf.at(buf.grad_expert_out, buf.dgrad_expert_out);
    float* gw = buf.at(buf.grad_w, buf.dgrad_w);
    float* gx = buf.at(buf.grad_x, buf.dgrad_x);
    // One phase of the Dispatcher; kDevice calls return with later kernels still queued, so the
    // timed phase ends when the device is done.
    auto locmoe_phase = [&](int p) -> Status {
      Status s = ok_status();
      switch (p) {
        case 0: s = d.dispatch(x, *plan, h, ein, M); break;
        case 1: s = d.combine(ein, h, out); break;  // identity experts: expert_out = expert_in
        case 2: s = d.combine_backward(gout, h, ein, geo, o.weight_grads_behind ? nullptr : gw); break;
        default: s = d.dispatch_backward(geo, h, gx, nullptr, o.weight_grads_behind ? gw : nullptr); break;
      }
      LOCMOE_RETURN_IF_ERROR(s);
      return buf.sync();
    };
    std::unique_ptr<MpiReference> ref;
    std::vector<float> ref_out(buf.x.size()), ref_gw(buf.grad_w.size()), ref_gx(buf.x.size());
    if (with_mpi) ref = std::make_unique<MpiReference>(*plan, H, me, R);
    auto mpi_phase = [&](int p) -> Status {
      switch (p) {
        case 0: return ref->dispatch(buf.x.data());
        case 1: return ref->combine(ref_out);
        case 2: return ref->combine_backward(buf.grad_out.data(), ref_gw);
        default: return ref->dispatch_backward(ref_gx);
      }
    };

    // Timed steps, each phase after a barrier so that its time is its own.
    double t_locmoe[kNumPhases] = {}, t_mpi[kNumPhases] = {};
    for (int it = 0; it < o.warmup + o.iters; ++it) {
      for (int impl = 0; impl < (with_mpi ? 2 : 1); ++impl)
        for (int p = 0; p < kNumPhases; ++p) {
          ok_or_fail(me, b.barrier());
          const auto t0 = std::chrono::steady_clock::now();
          ok_or_fail(me, impl == 0 ? locmoe_phase(p) : mpi_phase(p));
          const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (it >= o.warmup) (impl == 0 ? t_locmoe : t_mpi)[p] += dt;
        }
    }

    // One untimed step: bytes, counters, and the outputs against the MPI reference.
    PhaseRow rows[2][kNumPhases];
    comm.take();
    const Communicator::Counters c0 = comm.counters();
    Bytes phase_bytes[kNumPhases];
    uint64_t dispatch_row_bytes = 0, dispatch_row_inter = 0;
    for (int p = 0; p < kNumPhases; ++p) {
      ok_or_fail(me, locmoe_phase(p));
      phase_bytes[p] = comm.take();
      if (p == 0) {
        dispatch_row_bytes = h.stats().bytes_sent;
        dispatch_row_inter = h.stats().internode_bytes_sent;
      }
    }
    const Communicator::Counters c1 = comm.counters();
    const uint64_t meta_rounds = c1.metadata_rounds - c0.metadata_rounds;
    const uint64_t data_exchanges = c1.data_exchanges - c0.data_exchanges;
    ok_or_fail(me, buf.to_host());
    uint64_t wrong[kNumPhases] = {};
    if (with_mpi) {
      for (int p = 0; p < kNumPhases; ++p) ok_or_fail(me, mpi_phase(p));
      if (o.check) {
        double got = 0, grad_got = 0;
        for (int64_t i = 0; i < h.expert_rows() * H; ++i) {
          got += buf.expert_in[i];
          grad_got += buf.grad_expert_out[i];
        }
        const double want = ref->dispatch_checksum(), grad_want = ref->grad_expert_checksum();
        wrong[0] = !(std::fabs(got - want) <= 1e-9 * (1.0 + std::fabs(want)));
        wrong[1] = count_wrong(buf.out.data(), ref_out);
        wrong[2] = count_wrong(buf.grad_w.data(), ref_gw) + !(std::fabs(grad_got - grad_want) <= 1e-4 * (1.0 + std::fabs(grad_want)));
        wrong[3] = count_wrong(buf.grad_x.data(), ref_gx);
        // The reference's own copies must be the plan's (rank_count: token copies to each rank).
        for (int r = 0; r < R; ++r) wrong[0] += ref->send_count()[r] != plan->rank_count[r];
      }
    }
    const std::array<Bytes, kNumPhases> mpi_bytes = with_mpi ? ref->bytes(*cluster) : std::array<Bytes, kNumPhases>{};

    nlohmann::json phases = nlohmann::json::array();
    for (int impl = 0; impl < (with_mpi ? 2 : 1); ++impl)
      for (int p = 0; p < kNumPhases; ++p) {
        PhaseRow& row = rows[impl][p];
        row.impl = impl == 0 ? "locmoe" : "mpi";
        row.time_us = max_over_ranks(b, (impl == 0 ? t_locmoe : t_mpi)[p] / o.iters) * 1e6;
        const Bytes by = impl == 0 ? phase_bytes[p] : mpi_bytes[p];
        row.bytes = gather(b, by.total);
        row.intra = gather(b, by.intra);
        row.inter = gather(b, by.inter);
        if (impl == 0 && p == 0) {
          row.row_bytes = gather(b, dispatch_row_bytes);
          row.row_inter = gather(b, dispatch_row_inter);
        }
        row.wrong = impl == 1 && o.check ? sum_over_ranks(b, wrong[p]) : 0;
        wrong_total += row.wrong;
        double mean = 0;
        for (uint64_t v : row.bytes) mean += static_cast<double>(v) / R;
        row.gbps = row.time_us > 0 ? mean / (row.time_us * 1e-6) / 1e9 : 0;
        auto mean_of = [&](const std::vector<uint64_t>& v) {
          double m = 0;
          for (uint64_t x : v) m += static_cast<double>(x) / R;
          return m;
        };
        if (me == 0) {
          std::printf("%9u %18s %7s %11.1f %13.0f %13.0f %13.0f %9.3f %7llu\n", T, kPhases[p], row.impl.c_str(),
                      row.time_us, mean, mean_of(row.intra), mean_of(row.inter), row.gbps,
                      static_cast<unsigned long long>(row.wrong));
        }
        nlohmann::json j = {{"phase", kPhases[p]},
                            {"impl", row.impl},
                            {"time_us", row.time_us},
                            {"bytes_per_rank", row.bytes},
                            {"intranode_bytes_per_rank", row.intra},
                            {"internode_bytes_per_rank", row.inter},
                            {"GBps_per_rank", row.gbps},
                            {"wrong", row.wrong}};
        if (!row.row_bytes.empty()) {  // DispatchStats: the token rows alone
          j["row_bytes_per_rank"] = row.row_bytes;
          j["row_internode_bytes_per_rank"] = row.row_inter;
        }
        phases.push_back(j);
      }
    // rank_count of every rank (row s: token copies rank s sends to each rank), for readers that
    // recompute the bytes from the plans.
    std::vector<uint64_t> mine(plan->rank_count.begin(), plan->rank_count.end()), all(static_cast<size_t>(R) * R);
    ok_or_fail(me, b.allgather(mine.data(), all.data(), R * sizeof(uint64_t)));
    nlohmann::json matrix = nlohmann::json::array();
    for (int s = 0; s < R; ++s) matrix.push_back(std::vector<uint64_t>(all.begin() + s * R, all.begin() + (s + 1) * R));
    const double meta_max = max_over_ranks(b, static_cast<double>(meta_rounds));
    const double data_max = max_over_ranks(b, static_cast<double>(data_exchanges));
    if (me == 0) {
      std::printf("# tokens %u: %.0f metadata rounds, %.0f data exchanges per step (max over ranks)", T, meta_max,
                  data_max);
      if (with_mpi)
        std::printf("; dispatch+combine: locmoe at %.2fx MPI_Alltoallv's speed (its time / ours)",
                    (rows[1][0].time_us + rows[1][1].time_us) / (rows[0][0].time_us + rows[0][1].time_us));
      std::printf("\n");
      std::fflush(stdout);
    }
    results.push_back({{"tokens", T},
                       {"row_bytes", H * sizeof(float)},
                       {"k", plan->k},
                       {"rank_count", matrix},
                       {"metadata_rounds_per_step", static_cast<uint64_t>(meta_max)},
                       {"data_exchanges_per_step", static_cast<uint64_t>(data_max)},
                       {"phases", phases}});
  }

  if (me == 0 && !o.json.empty()) {
    nlohmann::json doc;
    doc["ranks"] = R;
    doc["nodes"] = cluster->num_nodes();
    doc["node_of_rank"] = node_of_rank;
    doc["transport"] = comm.transport_name();
    doc["algo"] = algo_name;
    doc["router"] = o.router;
    doc["hidden"] = H;
    doc["experts_per_rank"] = o.experts_per_rank;
    doc["dtype"] = "float32";
    doc["memory"] = o.memory;
    doc["sizes_are"] = "tokens per rank";
    doc["bytes_are"] = "sent by each rank to other ranks (the local copy excluded)";
    doc["iters"] = o.iters;
    doc["warmup"] = o.warmup;
    doc["check"] = o.check;
    doc["mpi_reference"] = with_mpi;
    doc["weight_grads_behind"] = o.weight_grads_behind;
    doc["memcpy_GBps_one_rank"] = memcpy_alone;
    doc["memcpy_GBps_per_rank_all_ranks"] = memcpy_together;
    doc["results"] = results;
    std::ofstream(o.json) << doc.dump(2) << "\n";
  }
  comm_or->reset();  // before the bootstrap it uses (finish)
  if (wrong_total > 0 && me == 0)
    std::fprintf(stderr, "locmoe-perf ep: %llu output(s) differ from the MPI reference\n",
                 static_cast<unsigned long long>(wrong_total));
  return finish(wrong_total > 0 ? 1 : 0);
}

}  // namespace locmoe::perf
