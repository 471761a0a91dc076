// locmoe-perf a2a: all-to-all-v bandwidth of the flat and hierarchical exchanges and of plain
// MPI_Alltoallv, side by side in one run (flat/hier: alltoallv, a metadata round per call;
// flat-planned/hier-planned: prepared once per size, then only Communicator::execute, the way
// MPI_Alltoallv also assumes known counts), with the bytes and messages that crossed a node
// boundary, next to this machine's memcpy bandwidth measured in the same run.
//
// Sizes follow nccl-tests' alltoall: SIZE is the bytes each rank sends in total (its send
// buffer); each rank sends SIZE / ranks bytes to every rank, itself included. time is the mean
// of -n iterations after -w warm-up ones, the slowest rank's (max over ranks). algbw = SIZE /
// time; busbw = algbw * (ranks - 1) / ranks. #wrong counts bytes that differ from what the
// receiver computes from (seed, src, dst, index), in a separate untimed iteration, summed over
// ranks. Inter-node bytes and messages are ExchangeStats of the data phase, max over ranks (the
// count metadata travels the same paths and is reported separately in the JSON).
//
// Ranks meet through make_bootstrap_from_env(): under mpirun over MPI, under a launcher that sets
// RANK and WORLD_SIZE (scripts/emu-cluster.sh launch, torchrun) over TCP, where the `mpi` algorithm
// (MPI_Alltoallv) is left out since MPI is not initialized.
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "locmoe/core/config.h"  // LOCMOE_HAVE_CUDA
#if LOCMOE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/params.h"
#include "locmoe/core/log.h"
#include "locmoe/topology/placement.h"
#include "subcommand.h"

extern char** environ;

namespace locmoe::perf {
namespace {

struct Options {
  uint64_t min_bytes = 1024, max_bytes = 8u << 20;
  double factor = 2;
  int iters = 20, warmup = 5, check = 1;
  double timeout_s = 0;
  std::string json, algos = "flat,hier,flat-planned,hier-planned,mpi", transport = "auto";
  uint64_t chunk = 0;
};

uint8_t pattern(int src, int dst, uint64_t i) {
  uint64_t x = (uint64_t(src) * 0x9E3779B1u) ^ (uint64_t(dst) * 0x85EBCA77u) ^ (i * 0xC2B2AE3Du);
  x ^= x >> 29;
  return static_cast<uint8_t>(x * 0x27d4eb2fu >> 24);
}

int fail(int rank, const Status& s);

// Reductions of one value over all ranks through the bootstrap (MPI or TCP); a failure ends the run.
template <typename T>
T reduce(Bootstrap& b, T v, ReduceOp op) {
  const DataType t = std::is_same_v<T, double> ? DataType::kFloat64 : DataType::kUint64;
  if (Status s = b.allreduce(&v, &v, 1, t, op); !s.ok()) fail(b.rank(), s);
  return v;
}
void barrier(Bootstrap& b) {
  if (Status s = b.barrier(); !s.ok()) fail(b.rank(), s);
}

// memcpy bandwidth (GB/s, read+write counted once as bytes copied) of one rank alone, and of
// every rank copying at once (per rank), on buffers of `bytes`.
std::pair<double, double> memcpy_bandwidth(uint64_t bytes, Bootstrap& boot) {
  const int rank = boot.rank();
  std::vector<char> a(bytes, 1), b(bytes, 2);
  auto time_copies = [&] {
    std::memcpy(b.data(), a.data(), bytes);  // warm
    const int reps = 5;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) std::memcpy(b.data(), a.data(), bytes);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  double alone = 0;
  barrier(boot);
  if (rank == 0) alone = bytes / time_copies() / 1e9;
  barrier(boot);
  const double together = reduce(boot, bytes / time_copies() / 1e9, ReduceOp::kMin);
  return {reduce(boot, alone, ReduceOp::kMax), together};
}

bool mpi_initialized() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

struct Row {
  std::string algo;
  uint64_t bytes = 0;
  double time_us = 0, algbw = 0, busbw = 0;
  uint64_t wrong = 0;
  int64_t inter_bytes = -1, inter_msgs = -1, inter_bytes_mean = -1, meta_inter_msgs = -1;
};

int fail(int rank, const Status& s) {
  std::fprintf(stderr, "locmoe-perf a2a: rank %d: %s\n", rank, s.to_string().c_str());
  // Under TCP this rank exits and the peers' next collective fails naming it (their deadline).
  if (mpi_initialized()) MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

// Device copies of the send and receive buffers for the NCCL transport (MPI is not CUDA-aware
// here, so MPI_Alltoallv is not run on device buffers).
struct DeviceBuffers {
  void* send = nullptr;
  void* recv = nullptr;
  Status alloc(uint64_t bytes) {
#if LOCMOE_HAVE_CUDA
    free();
    if (cudaMalloc(&send, bytes ? bytes : 1) != cudaSuccess || cudaMalloc(&recv, bytes ? bytes : 1) != cudaSuccess)
      return error(Code::kSystemError, "cudaMalloc of {} bytes failed", bytes);
    return ok_status();
#else
    (void)bytes;
    return error(Code::kUnsupported, "this build has no CUDA: device buffers need -DLOCMOE_ENABLE_CUDA=ON");
#endif
  }
  Status copy(void* dst, const void* src, uint64_t bytes) {
#if LOCMOE_HAVE_CUDA
    if (cudaMemcpy(dst, src, bytes, cudaMemcpyDefault) != cudaSuccess)
      return error(Code::kSystemError, "cudaMemcpy of {} bytes failed", bytes);
#else
    (void)dst, (void)src, (void)bytes;
#endif
    return ok_status();
  }
  void free() {
#if LOCMOE_HAVE_CUDA
    if (send) cudaFree(send);
    if (recv) cudaFree(recv);
#endif
    send = recv = nullptr;
  }
  ~DeviceBuffers() { free(); }
};

}  // namespace

int run_a2a(int argc, char** argv) {
  CLI::App app{"All-to-all-v bandwidth: flat, hierarchical and MPI_Alltoallv side by side (run under mpirun or scripts/emu-cluster.sh launch)",
               "locmoe-perf a2a"};
  Options o;
  // Sizes accept K, M, G suffixes (powers of 1024), as nccl-tests does.
  app.add_option("-b,--minbytes", o.min_bytes, "smallest size: bytes each rank sends in total (per rank)")
      ->transform(CLI::AsSizeValue(false));
  app.add_option("-e,--maxbytes", o.max_bytes, "largest size (per rank)")->transform(CLI::AsSizeValue(false));
  app.add_option("-f,--stepfactor", o.factor, "size multiplier between steps")->check(CLI::PositiveNumber);
  app.add_option("-n,--iters", o.iters, "timed iterations per size")->check(CLI::PositiveNumber);
  app.add_option("-w,--warmup_iters", o.warmup, "untimed warm-up iterations per size");
  app.add_option("-c,--check", o.check, "check the data of one extra untimed iteration (0/1)");
  app.add_option("-T,--timeout", o.timeout_s, "deadline in seconds of every wait (default LOCMOE_TIMEOUT_S)");
  app.add_option("-J,--json", o.json, "write the results as JSON to this file");
  app.add_option("--algo", o.algos, "comma-separated subset of flat,hier,flat-planned,hier-planned,mpi");
  app.add_option("--transport", o.transport, "mpi | ucx | nccl | auto (LOCMOE_TRANSPORT)");
  app.add_option("--chunk", o.chunk, "LOCMOE_CHUNK_BYTES for this run (0: the parameter)")
      ->transform(CLI::AsSizeValue(false));
  auto boot = make_bootstrap_from_env();
  if (!boot.ok()) {
    std::fprintf(stderr, "locmoe-perf a2a: %s\n", boot.status().to_string().c_str());
    if (mpi_initialized()) MPI_Finalize();
    return 2;
  }
  Bootstrap& b = **boot;
  const int rank = b.rank(), size = b.size();
  // MPI is finalized only when the bootstrap initialized it (launched by mpirun).
  auto finish = [&](int code) {
    boot->reset();
    if (mpi_initialized()) MPI_Finalize();
    return code;
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return finish(rank == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2));
  }
  set_log_rank(rank);
  if (Status s = params::validate_all(); !s.ok()) return fail(rank, s);

  // The runtime's map: each rank's GPU, rail NIC and CPUs (LOCMOE_TOPO_FILE, overrides, LOCMOE_BIND).
  auto cluster = topo::build_cluster_map(b);
  if (!cluster.ok()) return fail(rank, cluster.status());

  std::vector<std::string> algos;
  {
    std::stringstream ss(o.algos);
    for (std::string a; std::getline(ss, a, ',');) {
      if (a != "flat" && a != "hier" && a != "flat-planned" && a != "hier-planned" && a != "mpi") {
        if (rank == 0)
          std::fprintf(stderr, "locmoe-perf a2a: --algo '%s': expected flat, hier, flat-planned, hier-planned or mpi\n",
                       a.c_str());
        return finish(2);
      }
      if (a == "mpi" && !mpi_initialized()) {
        if (rank == 0) std::printf("# bootstrap %s: MPI is not initialized, MPI_Alltoallv is left out\n", b.name());
        continue;
      }
      algos.push_back(a);
    }
  }
  std::unique_ptr<Communicator> comms[2];
  std::string transport_name = "mpi";
  for (int i = 0; i < 2; ++i) {
    const std::string want = i == 0 ? "flat" : "hier";
    if (std::find(algos.begin(), algos.end(), want) == algos.end() &&
        std::find(algos.begin(), algos.end(), want + "-planned") == algos.end())
      continue;
    CommConfig cfg;
    cfg.transport = o.transport == "auto" ? "" : o.transport;
    cfg.algo = i == 0 ? A2AAlgo::kFlat : A2AAlgo::kHierarchical;
    cfg.chunk_bytes = o.chunk;
    cfg.timeout_s = o.timeout_s;
    auto c = Communicator::create(b, *cluster, cfg);
    if (!c.ok()) return fail(rank, c.status());
    comms[i] = std::move(c).value();
    transport_name = comms[i]->transport_name();
  }

  const bool device = transport_name == "nccl";
  if (device && std::find(algos.begin(), algos.end(), "mpi") != algos.end()) {
    if (rank == 0) std::printf("# device buffers: MPI_Alltoallv (not CUDA-aware here) is left out\n");
    algos.erase(std::find(algos.begin(), algos.end(), "mpi"));
  }
  DeviceBuffers dev;
  const auto [memcpy_alone, memcpy_together] = memcpy_bandwidth(std::max<uint64_t>(o.max_bytes, 16u << 20), b);
  std::vector<std::string> node_sizes;
  for (int nn = 0; nn < cluster->num_nodes(); ++nn) node_sizes.push_back(std::to_string(cluster->local_size(nn)));
  const bool tty = rank == 0 && isatty(STDERR_FILENO);
  if (rank == 0) {
    std::printf("# locmoe-perf a2a: %d ranks on %d nodes (%s ranks per node), transport %s\n", size,
                cluster->num_nodes(), fmt::format("{}", fmt::join(node_sizes, "+")).c_str(), transport_name.c_str());
    std::printf("# size = bytes each rank sends in total; size/%d to every rank. iters %d, warm-up %d, check %d\n", size,
                o.iters, o.warmup, o.check);
    std::printf("# memcpy: %.2f GB/s one rank alone, %.2f GB/s per rank with all %d copying at once\n", memcpy_alone,
                memcpy_together, size);
    std::printf("#%11s %12s %11s %11s %11s %7s %16s %15s\n", "algo", "size(B)", "time(us)", "algbw(GB/s)",
                "busbw(GB/s)", "#wrong", "internode B/rank", "internode msgs");
  }

  std::vector<uint64_t> sizes;
  for (double b = static_cast<double>(o.min_bytes); b <= static_cast<double>(o.max_bytes) * 1.0000001; b *= o.factor) {
    sizes.push_back(static_cast<uint64_t>(b));
    if (o.factor <= 1) break;
  }
  std::vector<Row> rows;
  int wrong_total = 0;
  size_t step = 0;
  for (uint64_t bytes : sizes) {
    const uint64_t per_pair = bytes / size;
    std::vector<uint64_t> counts(size, per_pair), displs(size);
    for (int r = 0; r < size; ++r) displs[r] = r * per_pair;
    std::vector<int> icounts(size, static_cast<int>(per_pair)), idispls(size);
    for (int r = 0; r < size; ++r) idispls[r] = static_cast<int>(r * per_pair);
    std::vector<uint8_t> send(per_pair * size), recv(per_pair * size);
    if (device) {
      if (Status s = dev.alloc(send.size()); !s.ok()) return fail(rank, s);
    }
    for (const std::string& algo : algos) {
      ++step;
      if (tty) std::fprintf(stderr, "\r[%zu/%zu] %s %llu B        ", step, sizes.size() * algos.size(), algo.c_str(),
                            static_cast<unsigned long long>(bytes));
      const bool planned = algo.size() > 8 && algo.compare(algo.size() - 8, 8, "-planned") == 0;
      Communicator* comm = algo.rfind("flat", 0) == 0 ? comms[0].get() : algo.rfind("hier", 0) == 0 ? comms[1].get() : nullptr;
      ExchangePlan plan;
      if (planned) {
        ExchangeSpec spec;
        spec.send_counts = counts.data();
        spec.send_displs = displs.data();
        spec.recv_counts = counts.data();
        spec.recv_displs = displs.data();
        spec.recv_capacity = recv.size();
        spec.mem = device ? MemoryKind::kDevice : MemoryKind::kHost;
        if (Status s = comm->prepare(spec, plan); !s.ok()) return fail(rank, s);
      }
      auto once = [&]() -> Status {
        if (planned)
          return device ? comm->execute(plan, dev.send, dev.recv, nullptr) : comm->execute(plan, send.data(), recv.data());
        if (comm && device)
          return comm->alltoallv(dev.send, counts.data(), displs.data(), dev.recv, counts.data(), displs.data(),
                                 recv.size(), MemoryKind::kDevice, nullptr);
        if (comm)
          return comm->alltoallv(send.data(), counts.data(), displs.data(), recv.data(), counts.data(), displs.data(),
                                 recv.size());
        int rc = MPI_Alltoallv(send.data(), icounts.data(), idispls.data(), MPI_BYTE, recv.data(), icounts.data(),
                               idispls.data(), MPI_BYTE, MPI_COMM_WORLD);
        return rc == MPI_SUCCESS ? ok_status() : error(Code::kSystemError, "MPI_Alltoallv failed");
      };
      for (int i = 0; i < o.warmup; ++i)
        if (Status s = once(); !s.ok()) return fail(rank, s);
      barrier(b);
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < o.iters; ++i)
        if (Status s = once(); !s.ok()) return fail(rank, s);
      const double t = reduce(b, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / o.iters,
                              ReduceOp::kMax);
      Row row;
      row.algo = algo;
      row.bytes = per_pair * size;
      row.time_us = t * 1e6;
      row.algbw = row.bytes / t / 1e9;
      row.busbw = row.algbw * (size - 1) / size;
      if (comm) {
        const ExchangeStats& st = comm->last_stats();
        row.inter_bytes = static_cast<int64_t>(reduce(b, st.internode_bytes_sent, ReduceOp::kMax));
        row.inter_bytes_mean = static_cast<int64_t>(reduce(b, st.internode_bytes_sent, ReduceOp::kSum) / size);
        row.inter_msgs = static_cast<int64_t>(reduce(b, st.internode_msgs_sent, ReduceOp::kMax));
        row.meta_inter_msgs = static_cast<int64_t>(reduce(b, st.meta_internode_msgs_sent, ReduceOp::kMax));
      }
      if (o.check) {
        for (int d = 0; d < size; ++d)
          for (uint64_t i = 0; i < per_pair; ++i) send[d * per_pair + i] = pattern(rank, d, i);
        std::fill(recv.begin(), recv.end(), 0);
        if (device) {
          if (Status s = dev.copy(dev.send, send.data(), send.size()); !s.ok()) return fail(rank, s);
          if (Status s = dev.copy(dev.recv, recv.data(), recv.size()); !s.ok()) return fail(rank, s);
        }
        if (Status s = once(); !s.ok()) return fail(rank, s);
        if (device) {
          if (Status s = dev.copy(recv.data(), dev.recv, recv.size()); !s.ok()) return fail(rank, s);
        }
        uint64_t wrong = 0;
        for (int src = 0; src < size; ++src)
          for (uint64_t i = 0; i < per_pair; ++i) wrong += recv[src * per_pair + i] != pattern(src, rank, i);
        row.wrong = reduce(b, wrong, ReduceOp::kSum);
        wrong_total += row.wrong > 0;
      }
      if (rank == 0) {
        auto opt = [](int64_t v) { return v < 0 ? std::string("-") : std::to_string(v); };
        std::printf("%12s %12llu %11.1f %11.3f %11.3f %7llu %16s %15s\n", algo.c_str(),
                    static_cast<unsigned long long>(row.bytes), row.time_us, row.algbw, row.busbw,
                    static_cast<unsigned long long>(row.wrong), opt(row.inter_bytes).c_str(), opt(row.inter_msgs).c_str());
        std::fflush(stdout);
      }
      rows.push_back(row);
    }
  }
  if (tty) std::fprintf(stderr, "\r%60s\r", "");

  if (rank == 0 && !o.json.empty()) {
    nlohmann::json doc;
    doc["ranks"] = size;
    doc["nodes"] = cluster->num_nodes();
    doc["ranks_per_node"] = node_sizes;
    doc["transport"] = transport_name;
    doc["bytes_are"] = "per rank: each rank sends bytes/ranks to every rank";
    doc["iters"] = o.iters;
    doc["warmup"] = o.warmup;
    doc["memcpy_GBps_one_rank"] = memcpy_alone;
    doc["memcpy_GBps_per_rank_all_ranks"] = memcpy_together;
    nlohmann::json env = nlohmann::json::object();
    for (char** e = environ; *e; ++e) {
      const std::string kv = *e;
      if (kv.rfind("LOCMOE_", 0) == 0 || kv.rfind("UCX_", 0) == 0 || kv.rfind("NCCL_", 0) == 0) {
        const size_t eq = kv.find('=');
        env[kv.substr(0, eq)] = kv.substr(eq + 1);
      }
    }
    doc["env"] = env;
    auto& results = doc["results"] = nlohmann::json::array();
    for (const Row& r : rows) {
      auto opt = [](int64_t v) { return v < 0 ? nlohmann::json(nullptr) : nlohmann::json(v); };
      results.push_back({{"algo", r.algo},
                         {"bytes", r.bytes},
                         {"time_us", r.time_us},
                         {"algbw", r.algbw},
                         {"busbw", r.busbw},
                         {"wrong", r.wrong},
                         {"internode_bytes_per_rank", opt(r.inter_bytes)},
                         {"internode_bytes_mean_per_rank", opt(r.inter_bytes_mean)},
                         {"internode_msgs_per_rank", opt(r.inter_msgs)},
                         {"meta_internode_msgs_per_rank", opt(r.meta_inter_msgs)}});
    }
    std::ofstream(o.json) << doc.dump(2) << "\n";
  }
  dev.free();
  comms[0].reset();
  comms[1].reset();
  if (wrong_total > 0 && rank == 0) std::fprintf(stderr, "locmoe-perf a2a: %d result(s) with wrong data\n", wrong_total);
  return finish(wrong_total > 0 ? 1 : 0);
}

}  // namespace locmoe::perf
