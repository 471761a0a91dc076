// Exit after a peer's failure, run by run_exit_after_failure.sh under mpirun --enable-recovery
// with 4 ranks: the C API initializes MPI (so its exit handler owns MPI_Finalize); rank 2 stops
// itself (SIGSTOP; argument "kill": kills itself, SIGKILL) inside a loop of dispatch + combine. Every survivor must get its error, destroy
// its objects and leave main, and its exit handlers must return: "EXITED rank R" is printed by an
// exit handler registered before the group, so it runs after the library's (which would call
// MPI_Finalize, and Open MPI's finalize waits for every process of the job, the stopped one too).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "locmoe/locmoe.h"

namespace {
int g_rank = -1;
void say_exited() {
  std::printf("EXITED rank %d\n", g_rank);
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  const bool kill_victim = argc > 1 && std::strcmp(argv[1], "kill") == 0;
  std::atexit(say_exited);
  locmoe_group_config_t gc = LOCMOE_GROUP_CONFIG_INIT;
  locmoe_group_t g = nullptr;
  if (locmoe_group_create(&gc, &g) != LOCMOE_OK) {
    std::printf("FAIL: %s\n", locmoe_last_error());
    return 1;
  }
  int32_t rank = 0, size = 0;
  locmoe_group_rank(g, &rank);
  locmoe_group_size(g, &size);
  g_rank = rank;
  const int victim = 2;
  const int32_t L = 2, k = 2, H = 64, T = 32;
  std::vector<int32_t> expert(T * k);
  std::vector<float> weight(T * k, 0.5f), x(T * H, 1.0f), out(T * H);
  for (int t = 0; t < T; ++t) {
    expert[t * k] = (t + rank) % (L * size);
    expert[t * k + 1] = (t + rank + 3) % (L * size);
  }
  locmoe_plan_t plan = nullptr;
  locmoe_dispatcher_config_t dc = LOCMOE_DISPATCHER_CONFIG_INIT;
  dc.experts_per_rank = L;
  dc.hidden = H;
  dc.max_tokens = T;
  dc.top_k = k;
  locmoe_dispatcher_t d = nullptr;
  locmoe_handle_t h = nullptr;
  if (locmoe_plan_create(g, T, k, L, expert.data(), weight.data(), nullptr, &plan) != LOCMOE_OK ||
      locmoe_dispatcher_create(g, &dc, &d) != LOCMOE_OK || locmoe_handle_create(d, &h) != LOCMOE_OK) {
    std::printf("FAIL: %s\n", locmoe_last_error());
    return 1;
  }
  int64_t rows = 0;
  locmoe_dispatcher_max_expert_rows(d, &rows);
  std::vector<float> ein(rows * H);
  std::printf("PID rank %d %d\n", rank, static_cast<int>(getpid()));
  std::fflush(stdout);
  if (rank == victim)
    std::thread([kill_victim] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      raise(kill_victim ? SIGKILL : SIGSTOP);
    }).detach();
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    locmoe_status_t st = locmoe_dispatch(d, x.data(), plan, h, ein.data(), rows, nullptr);
    if (st == LOCMOE_OK) st = locmoe_combine(d, ein.data(), h, out.data(), nullptr);
    if (st != LOCMOE_OK) {
      std::printf("SURVIVOR rank %d error after %.1f s: %s\n", rank,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), locmoe_last_error());
      break;
    }
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(60)) {
      std::printf("FAIL rank %d: no error 60 s after the victim stopped\n", rank);
      break;
    }
  }
  std::fflush(stdout);
  locmoe_handle_destroy(h);
  locmoe_dispatcher_destroy(d);
  locmoe_plan_destroy(plan);
  locmoe_group_destroy(g);
  return 0;  // exit handlers: the library's, then say_exited
}
