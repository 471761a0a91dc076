// How many host threads a rank uses by default: its share of the node's cores.
//
// The ranks of one node share its cores; giving each rank every core (hardware concurrency)
// oversubscribes the node by the number of local ranks. The rule, in one place:
//   - LOCMOE_NUM_THREADS > 0 (or an explicit count from the API) is used as it is;
//   - else: `usable` = the CPUs this process may run on (its affinity mask), `online` = the CPUs
//     of the machine (of the container: its cgroup's cpuset when readable), `local` = the
//     processes of this job on the machine, as the launcher reports them (torchrun
//     LOCAL_WORLD_SIZE, Open MPI OMPI_COMM_WORLD_LOCAL_SIZE, MPICH/Hydra MPI_LOCALNRANKS, Slurm
//     SLURM_NTASKS_PER_NODE; 1 when none does). Assuming the launcher spread the ranks evenly,
//     `local * usable / online` ranks (rounded, in [1, local]) share this rank's CPUs, and the
//     rank takes its part of them: usable / sharers, at least 1.
//     Not bound (every rank sees all CPUs): online / local. Bound to one core each: 1. Bound to a
//     socket of 32 of 64 CPUs with 8 local ranks: 4 ranks share it, 8 threads each.
// Ranks emulating several nodes on one machine (LOCMOE_HOSTID) still share that machine's cores,
// so the launcher's count of processes on this machine is the right divisor.
#pragma once

#include <cstdint>

namespace locmoe {

// The rule itself, on its inputs (testable); `online` or `local_ranks` <= 0: unknown (usable, 1).
int share_of_cores(int usable, int online, int local_ranks);

// Local ranks of this job on this machine from the launcher's environment; 0 when none says.
int launcher_local_ranks();

// Threads to use: `configured` when > 0, else LOCMOE_NUM_THREADS when > 0, else
// share_of_cores(affinity mask, online CPUs, launcher_local_ranks()); clamped to [1, 256].
int host_threads(int64_t configured = 0);

}  // namespace locmoe
