"""Router.route with a bad shape on one rank fails on every rank at once, and the group routes on.

As a rank (no arguments): rank 1 passes, in turn, a gate with E - 1 rows, features whose hidden size
is not the gate's, and experts_per_rank = 0, while every other rank passes good input. Rank 1 must
get ValueError naming its argument; every other rank locmoe.Error naming rank 1 and the reason;
both within LIMIT_S, far below the group's timeout (a rank that refused alone, before the
collective, would leave its peers waiting the whole timeout). Then every rank routes good input and
checks its plan against top-k of x gate^T computed here (the group is still usable). Prints
"ROUTE rank R OK".

As the launcher: route_disagree_worker.py mpi N MPIEXEC   (mpirun --enable-recovery)
                 route_disagree_worker.py tcp N           (torchrun's variables, TCP rendezvous)
Exits 0 when all N ranks printed OK.
"""
import os
import sys
import time

from rank_launch import ranks_ok, run_ranks  # beside this script (sys.path[0])

TIMEOUT_S = 20.0
LIMIT_S = 5.0  # "at once": well below TIMEOUT_S, with room for a loaded machine
BAD = 1


def rank_main():
    import numpy as np
    import locmoe

    g = locmoe.Group(timeout_s=TIMEOUT_S)
    rank, R = g.rank, g.size
    L, T, H, k = 2, 6, 8, 2
    E = L * R
    rng = np.random.default_rng(10 + rank)
    x = rng.standard_normal((T, H)).astype(np.float32)
    gate = np.random.default_rng(3).standard_normal((E, H)).astype(np.float32)  # the same on every rank
    router = locmoe.Router("gshard", k=k, capacity_factor=float(2 * E))  # room for every slot: no drops
    failures = []

    def expect_refusal(what, bad_args, own, peer):
        """own / peer: the texts the bad rank's ValueError / every other rank's locmoe.Error must hold."""
        args = bad_args if rank == BAD else (x, gate, L)
        t0 = time.monotonic()
        try:
            router.route(g, *args)
            failures.append(f"{what}: route returned")
            return
        except (ValueError, locmoe.Error) as e:
            elapsed, text, kind = time.monotonic() - t0, str(e), type(e)
        if elapsed >= LIMIT_S:
            failures.append(f"{what}: {elapsed:.2f} s (limit {LIMIT_S} s): {text}")
        want_kind, texts = (ValueError, own) if rank == BAD else (locmoe.Error, peer)
        if kind is not want_kind or not all(t in text for t in texts):
            failures.append(f"{what}: got {kind.__name__} {text!r}, expected {want_kind.__name__} with {texts}")

    named = f"rank {BAD} rejected its input"
    expect_refusal("gate rows", (x, gate[:-1], L), [f"gate has {E - 1} rows: expected float32 [{E}, {H}]"],
                   [named, f"gate has {E - 1} rows but the placement has {E} experts"])
    x_wide = rng.standard_normal((T, H + 1)).astype(np.float32)
    expect_refusal("hidden size", (x_wide, gate, L), [f"gate has {H} columns: expected float32 [{E}, {H + 1}]"],
                   [named, f"features are [{T}, {H + 1}] but the gate has hidden size {H}"])
    expect_refusal("experts_per_rank", (x, gate, 0), ["experts_per_rank must be > 0, got 0"],
                   [named, "experts_per_rank = 0 must be positive"])

    # The group is still usable: every rank routes good input; with no drops, each token's experts
    # are its top-k logits and the weights their softmax renormalized over the k.
    plan = router.route(g, x, gate, L)
    expert, weight = plan.slots()
    z = x.astype(np.float64) @ gate.T.astype(np.float64)
    top = np.argsort(-z, axis=1)[:, :k]
    if not np.array_equal(np.sort(expert, axis=1), np.sort(top, axis=1)):
        failures.append(f"after the refusals: experts {expert.tolist()}, expected top-{k} {top.tolist()}")
    else:
        zz = np.take_along_axis(z, expert.astype(np.int64), axis=1)
        ref = np.exp(zz - zz.max(axis=1, keepdims=True))
        ref /= ref.sum(axis=1, keepdims=True)
        if not np.allclose(weight, ref, rtol=1e-4, atol=1e-6):
            failures.append(f"after the refusals: weights {weight.tolist()}, expected {ref.tolist()}")
    g.allreduce_sum(np.zeros(1))  # every rank still in step
    status = "OK" if not failures else "FAIL " + "; ".join(failures)
    print(f"ROUTE rank {rank} {status}", flush=True)
    sys.exit(0 if not failures else 1)


def launch(mode, n, mpiexec=None):
    out = run_ranks(os.path.abspath(__file__), mode, n, mpiexec, TIMEOUT_S)
    ok = len(ranks_ok(out, "ROUTE"))
    print(f"route_disagree_worker: {ok} of {n} ranks OK")
    return 0 if ok == n else 1

if __name__ == "__main__":
    if len(sys.argv) == 1:
        rank_main()
    else:
        sys.exit(launch(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
