// locmoe-emu-rank: one rank of an all-to-all-v job on the emulated cluster (started by
// `scripts/emu-cluster.sh launch`, bootstrap from the environment: LOCMOE_BOOTSTRAP=tcp, RANK,
// WORLD_SIZE, MASTER_ADDR/PORT, LOCMOE_HOSTID). Runs --iters exchanges of --bytes from every rank
// to every other, checks every received byte against the pattern its sender wrote, and prints one
// JSON line: what the communicator says it moved (payload bytes and messages per link class) and
// the time, or, when an exchange fails, the error and how long after its start it was returned.
// The fault and byte-counter tests (tests/emu/*.sh) read these lines.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/topology/cluster.h"

namespace {

using Clock = std::chrono::steady_clock;

// Byte i of the block from src to dst in iteration it: a function of all four, so a block landing
// at the wrong place or from the wrong sender is caught.
uint8_t pattern(int src, int dst, int it, uint64_t i) {
  return static_cast<uint8_t>(src * 131 + dst * 31 + it * 7 + i * 13 + (i >> 8));
}

// Seconds a rank stays alive after reporting an error (--linger): its connections stay open, so
// the other ranks report the fault they actually saw, not this rank's exit.
double g_linger_s = 0;

int report_error(int rank, const std::string& host, const locmoe::Status& s, double elapsed, int iter) {
  nlohmann::json j = {{"rank", rank}, {"host", host}, {"ok", false}, {"code", locmoe::code_name(s.code())},
                      {"error", s.message()}, {"elapsed_s", elapsed}, {"iter", iter}};
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
  if (g_linger_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(g_linger_s));
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"locmoe-emu-rank: one rank of an all-to-all-v on the emulated cluster"};
  uint64_t bytes = 1 << 20;
  int iters = 3, warmup = 0;
  std::string algo = "flat";
  app.add_option("--bytes", bytes, "Bytes from every rank to every other rank per exchange");
  app.add_option("--iters", iters, "Timed exchanges");
  app.add_option("--warmup", warmup, "Untimed exchanges first");
  app.add_option("--algo", algo, "flat | hier")->check(CLI::IsMember({"flat", "hier"}));
  bool sync = false;
  app.add_flag("--sync", sync, "A bootstrap barrier before each timed exchange");
  app.add_option("--linger", g_linger_s, "Seconds to stay alive after an error before exiting");
  CLI11_PARSE(app, argc, argv);

  auto boot = locmoe::make_bootstrap_from_env();
  if (!boot.ok()) return report_error(-1, "", boot.status(), 0, -1);
  locmoe::Bootstrap& b = **boot;
  const int me = b.rank(), n = b.size();
  auto host = locmoe::local_host_id();
  if (!host.ok()) return report_error(me, "", host.status(), 0, -1);
  locmoe::RankDescriptor desc;
  desc.host_id = *host;
  auto cluster = locmoe::exchange_cluster_map(b, desc);
  if (!cluster.ok()) return report_error(me, *host, cluster.status(), 0, -1);
  locmoe::CommConfig cfg;
  cfg.algo = algo == "hier" ? locmoe::A2AAlgo::kHierarchical : locmoe::A2AAlgo::kFlat;
  auto comm = locmoe::Communicator::create(b, *cluster, cfg);
  if (!comm.ok()) return report_error(me, *host, comm.status(), 0, -1);

  std::vector<uint64_t> counts(n, bytes), displs(n), rcounts(n), rdispls(n);
  for (int r = 0; r < n; ++r) displs[r] = rdispls[r] = uint64_t(r) * bytes;
  counts[me] = bytes;  // the copy to itself is part of the exchange, and costs no link
  std::vector<uint8_t> send(bytes * n), recv(bytes * n);
  locmoe::ExchangeStats total;
  double timed = 0;
  std::vector<double> iter_s;  // each timed exchange: with --sync, the slowest rank's is the exchange's time
  for (int it = 0; it < warmup + iters; ++it) {
    for (int d = 0; d < n; ++d)
      for (uint64_t i = 0; i < bytes; ++i) send[d * bytes + i] = pattern(me, d, it, i);
    // Every rank starts the timed exchange together: filling and checking buffers take long
    // enough on a shared machine to show up as waiting time otherwise.
    // (--sync; off for the fault tests, whose faults must meet the exchange, not this barrier.)
    locmoe::Status s;
    if (sync) {
      s = b.barrier();
      if (!s.ok()) return report_error(me, *host, s, 0, it);
    }
    const auto t0 = Clock::now();
    s = (*comm)->exchange_counts(counts.data(), rcounts.data());
    if (s.ok())
      s = (*comm)->alltoallv(send.data(), counts.data(), displs.data(), recv.data(), rcounts.data(), rdispls.data(),
                             recv.size());
    const double el = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!s.ok()) return report_error(me, *host, s, el, it);
    for (int src = 0; src < n; ++src)
      for (uint64_t i = 0; i < bytes; ++i)
        if (recv[src * bytes + i] != pattern(src, me, it, i))
          return report_error(me, *host,
                              locmoe::error(locmoe::Code::kInternal, "byte {} from rank {} is wrong in iteration {}", i,
                                            src, it),
                              el, it);
    if (it < warmup) continue;
    timed += el;
    iter_s.push_back(el);
    const locmoe::ExchangeStats& st = (*comm)->last_stats();
    total.bytes_sent += st.bytes_sent;
    total.bytes_received += st.bytes_received;
    total.internode_bytes_sent += st.internode_bytes_sent;
    total.internode_msgs_sent += st.internode_msgs_sent;
    total.intranode_bytes_sent += st.intranode_bytes_sent;
    total.msgs_sent += st.msgs_sent;
  }
  nlohmann::json j = {{"rank", me}, {"host", *host}, {"node", cluster->my_node()}, {"ok", true},
                      {"algo", algo}, {"transport", (*comm)->transport_name()}, {"bytes", bytes},
                      {"iters", iters}, {"seconds", timed}, {"iter_s", iter_s}, {"bytes_sent", total.bytes_sent},
                      {"bytes_received", total.bytes_received}, {"internode_bytes_sent", total.internode_bytes_sent},
                      {"internode_msgs_sent", total.internode_msgs_sent},
                      {"intranode_bytes_sent", total.intranode_bytes_sent}, {"msgs_sent", total.msgs_sent}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
