// Failure handling, run by run_failure.sh under `mpirun --enable-recovery -np 4` (2 emulated
// nodes): rank 2 kills itself (SIGKILL) or stops itself (SIGSTOP) 300 ms into a loop of
// exchanges (alltoallv, or with "planned" executes of one prepared plan); every other rank must return an error from alltoallv within LOCMOE_TIMEOUT_S plus
// the notice grace (1.25 x) plus slack, with a timeout or peer-failure code, naming rank 2 and
// the operation. Survivors print "SURVIVOR rank R OK|FAIL: ..." (the script counts them) and
// leave with _exit (MPI_Finalize would wait for the dead rank). Rank 0 SIGKILLs a stopped
// victim at the end so nothing is left running.
#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/params.h"
#include "locmoe/topology/cluster.h"

using namespace locmoe;

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const std::string transport = argc > 1 ? argv[1] : "mpi";
  const std::string mode = argc > 2 ? argv[2] : "kill";
  const std::string algo = argc > 3 ? argv[3] : "hier";
  // "planned": the exchange is negotiated once (prepare) and the loop only executes the plan, so
  // the fault always hits the data path; "negotiated": alltoallv (a metadata round per call).
  const bool planned = argc > 4 && std::string(argv[4]) == "planned";
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int victim = size / 2;
  auto fail = [&](const std::string& why) {
    std::printf("SURVIVOR rank %d FAIL: %s\n", rank, why.c_str());
    std::fflush(stdout);
    _exit(1);
  };
  if (!transport_available(transport)) {
    if (rank == 0) std::printf("SKIP: %s transport not built\n", transport.c_str());
    MPI_Finalize();
    return 0;
  }
  (void)params::set("LOCMOE_HOSTID", rank < size / 2 ? "failA" : "failB");
  auto boot = make_mpi_bootstrap(MPI_COMM_WORLD);
  if (!boot.ok()) fail(boot.status().to_string());
  auto host = local_host_id();
  auto cm = exchange_cluster_map(**boot, RankDescriptor{*host, "", ""});
  if (!cm.ok()) fail(cm.status().to_string());
  CommConfig cfg;
  cfg.transport = transport;
  cfg.algo = algo == "flat" ? A2AAlgo::kFlat : A2AAlgo::kHierarchical;
  auto comm = Communicator::create(**boot, *cm, cfg);
  if (!comm.ok()) fail(comm.status().to_string());
  auto timeout_s = params::get_float(params::Id::timeout_s);
  std::vector<int> pids(size);
  const int mine = getpid();
  if (Status s = (*boot)->allgather(&mine, pids.data(), sizeof(int)); !s.ok()) fail(s.to_string());
  if (rank == 0) {
    std::printf("VICTIM PID %d\n", pids[victim]);  // run_failure.sh ends it if anything went wrong
    std::fflush(stdout);
  }

  if (rank == victim) {
    std::thread([mode] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      raise(mode == "stop" ? SIGSTOP : SIGKILL);
    }).detach();
  }
  const uint64_t per_pair = 64 << 10;
  std::vector<uint64_t> counts(size, per_pair), displs(size);
  for (int r = 0; r < size; ++r) displs[r] = r * per_pair;
  std::vector<char> send(per_pair * size, char(rank)), recv(per_pair * size);
  ExchangePlan plan;
  if (planned) {
    ExchangeSpec spec;
    spec.send_counts = counts.data();
    spec.recv_counts = counts.data();
    spec.recv_capacity = recv.size();
    if (Status s = (*comm)->prepare(spec, plan); !s.ok()) fail(s.to_string());
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int iter = 0;; ++iter) {
    const auto start = std::chrono::steady_clock::now();
    Status s = planned ? (*comm)->execute(plan, send.data(), recv.data())
                       : (*comm)->alltoallv(send.data(), counts.data(), displs.data(), recv.data(), counts.data(),
                                            displs.data(), recv.size());
    if (s.ok()) {
      if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(60)) fail("no error 60 s after the victim's signal");
      continue;
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double limit = *timeout_s * 1.25 + 3.0;  // deadline + notice grace + slack for 2 shared cores
    const std::string& m = s.message();
    std::string problem;
    if (s.code() != Code::kTimeout && s.code() != Code::kPeerFailure) problem += "wrong code; ";
    if (m.find("rank " + std::to_string(victim) + " (host failB)") == std::string::npos) problem += "victim not named; ";
    if (m.find(planned ? "execute" : "alltoallv") == std::string::npos) problem += "operation not named; ";
    if (elapsed > limit) problem += fmt::format("took {:.1f} s > {:.1f} s; ", elapsed, limit);
    std::printf("SURVIVOR rank %d %s: after %d exchanges, %.2f s: %s%s\n", rank, problem.empty() ? "OK" : "FAIL", iter,
                elapsed, problem.c_str(), s.to_string().c_str());
    std::fflush(stdout);
    break;
  }
  if (rank == 0 && mode == "stop") {
    // Give the other survivors time to see the stopped victim, then end it.
    std::this_thread::sleep_for(std::chrono::duration<double>(*timeout_s * 1.5 + 2));
    kill(pids[victim], SIGKILL);
  }
  comm->reset();  // a failed communicator closes without waiting for peers
  _exit(0);
}
