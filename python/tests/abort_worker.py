"""A rank whose script raises tells its peers (the hook `import locmoe` installs).

As a rank (no arguments): rank 1 raises ValueError before the collective Plan() its peers are in;
every other rank must get locmoe.Error within seconds (far below the group's 60 s timeout) naming
rank 1 and the exception's message, and prints "SURVIVOR rank R OK".

As the launcher: abort_worker.py mpi N MPIEXEC   (mpirun --enable-recovery: rank 1's exit must not
                                                  end the job before its peers report)
                 abort_worker.py tcp N           (torchrun's variables, TCP rendezvous, no MPI)
Exits 0 when the N - 1 survivors each printed OK and rank 1 printed its traceback.
"""
import os
import sys
import time

from rank_launch import ranks_ok, run_ranks  # beside this script (sys.path[0])

TIMEOUT_S = 60.0
LIMIT_S = 15.0  # "at once": well below TIMEOUT_S, with room for a loaded machine


def rank_main():
    import numpy as np
    import locmoe

    g = locmoe.Group(timeout_s=TIMEOUT_S)
    rank, size = g.rank, g.size
    L, T, k = 2, 4, 1
    expert = ((np.arange(T) + rank) % (L * size)).astype(np.int32).reshape(T, k)
    weight = np.ones((T, k), dtype=np.float32)
    if rank == 1:
        time.sleep(0.3)  # its peers are waiting in Plan() by now
        raise ValueError("bad batch 7, on purpose")
    t0 = time.monotonic()
    try:
        locmoe.Plan(g, expert, weight, experts_per_rank=L)
    except locmoe.Error as e:
        elapsed = time.monotonic() - t0
        text = str(e)
        ok = elapsed < LIMIT_S and "rank 1" in text and "ValueError: bad batch 7, on purpose" in text
        print(f"SURVIVOR rank {rank} {'OK' if ok else 'FAIL'} after {elapsed:.2f} s: {text}", flush=True)
        sys.exit(0 if ok else 1)
    print(f"SURVIVOR rank {rank} FAIL: Plan() returned although rank 1 raised", flush=True)
    sys.exit(1)


def launch(mode, n, mpiexec=None):
    out = run_ranks(os.path.abspath(__file__), mode, n, mpiexec, TIMEOUT_S)
    ok = len(ranks_ok(out, "SURVIVOR"))
    raised = "ValueError: bad batch 7, on purpose" in out
    print(f"abort_worker: {ok} of {n - 1} survivors OK; rank 1's traceback {'seen' if raised else 'missing'}")
    return 0 if ok == n - 1 and raised else 1

if __name__ == "__main__":
    if len(sys.argv) == 1:
        rank_main()
    else:
        sys.exit(launch(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
