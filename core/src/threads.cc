// The default host thread count of a rank (threads.h has the rule).
#include "locmoe/core/threads.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "locmoe/core/params.h"

namespace locmoe {

int share_of_cores(int usable, int online, int local_ranks) {
  usable = std::max(usable, 1);
  local_ranks = std::max(local_ranks, 1);
  online = online > 0 ? std::max(online, usable) : usable;
  const int64_t sharers = std::clamp<int64_t>((int64_t{local_ranks} * usable + online / 2) / online, 1, local_ranks);
  return std::max<int64_t>(1, usable / sharers);
}

namespace {

// CPUs in a Linux CPU list ("0-7,16-23"); 0 when it does not parse.
int count_cpu_list(const std::string& list) {
  int count = 0;
  size_t i = 0;
  while (i < list.size()) {
    char* end = nullptr;
    const long lo = std::strtol(list.c_str() + i, &end, 10);
    if (end == list.c_str() + i || lo < 0) return 0;
    long hi = lo;
    i = static_cast<size_t>(end - list.c_str());
    if (i < list.size() && list[i] == '-') {
      hi = std::strtol(list.c_str() + i + 1, &end, 10);
      if (end == list.c_str() + i + 1 || hi < lo) return 0;
      i = static_cast<size_t>(end - list.c_str());
    }
    count += static_cast<int>(hi - lo + 1);
    if (i < list.size() && list[i] == ',') ++i;
    else if (i < list.size() && list[i] != '\n') return 0;
    else break;
  }
  return count;
}

// The machine's CPUs as this process's container sees them: its cgroup (v2) cpuset, else the
// online CPUs.
int online_cpus() {
  if (FILE* f = std::fopen("/sys/fs/cgroup/cpuset.cpus.effective", "r")) {
    char buf[4096] = {};
    const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    if (const int c = count_cpu_list(std::string(buf, n)); c > 0) return c;
  }
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<int>(online) : 0;
}

}  // namespace

int launcher_local_ranks() {
  for (const char* var : {"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    const char* v = std::getenv(var);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    // A value that is no count is ignored (the rule then takes 1 local rank, never fails).
    if (end != v && n > 0 && n < (1L << 20)) return static_cast<int>(n);
  }
  return 0;
}

int host_threads(int64_t configured) {
  int64_t n = configured;
  if (n <= 0) {
    auto v = params::get_int(params::Id::num_threads);
    n = v.ok() ? *v : 0;
  }
  if (n <= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    const int usable = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    n = share_of_cores(usable, online_cpus(), launcher_local_ranks());
  }
  return static_cast<int>(std::clamp<int64_t>(n, 1, 256));
}

}  // namespace locmoe
