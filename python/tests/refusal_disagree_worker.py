"""The Python module's own refusals on one rank reach every rank, naming that rank and the reason.

As a rank (no arguments): rank 1 passes, in turn, arguments the module refuses before the C API sees
them (a dtype, a read-only output, a non-contiguous array, a bad device string), to each collective
call, while every other rank passes good input:
  - Plan (and an int32 expert id out of range, which the C API refuses), Router.route, Dispatcher, dispatch_into, Group.allreduce_sum: rank 1 gets ValueError naming
    its argument, every other rank locmoe.Error naming rank 1 and the same reason, both within
    LIMIT_S (far below the group's timeout: a rank that refused alone would leave its peers waiting
    until it); the group stays usable.
  - combine_into with a float64 `out` on rank 1: rank 1 gets ValueError at once, the others' combine
    completes (rows that depend on rank 1's experts are NaN, the others exact), and the next dispatch
    fails on every rank at once naming rank 1 and the reason; then the group works again.
  - last, a handle of another dispatcher passed to combine_into on rank 1 (nothing to take part in
    the exchange with): rank 1 gets locmoe.Error, every other rank locmoe.Error naming rank 1 within
    LIMIT_S (the communicator is unusable afterwards: the script ends).
Results are checked against a reference computed here (identity experts: out[t] = sum of t's
accepted weights * x[t]). Prints "REFUSAL rank R OK".

As the launcher: refusal_disagree_worker.py mpi N MPIEXEC   (mpirun --enable-recovery)
                 refusal_disagree_worker.py tcp N           (torchrun's variables, TCP rendezvous)
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
    L, T, H, k = 2, 6, 4, 2
    E = L * R
    failures = []

    def expect(what, call, own, peer=None, own_kind=ValueError):
        """call(bad): the collective, with rank BAD's bad arguments when bad. own: the text rank BAD's
        ValueError (own_kind) must hold; every other rank's locmoe.Error must hold `peer` (default: rank BAD
        named and `own`). Returns what call returned on a rank where it succeeded."""
        t0 = time.monotonic()
        try:
            call(rank == BAD)
            failures.append(f"{what}: returned")
            return
        except (ValueError, locmoe.Error) as e:
            elapsed, text, kind = time.monotonic() - t0, str(e), type(e)
        if elapsed >= LIMIT_S:
            failures.append(f"{what}: {elapsed:.2f} s (limit {LIMIT_S} s): {text}")
        if rank == BAD:
            want_kind, texts = own_kind, [own]
        else:
            want_kind, texts = locmoe.Error, peer or [f"rank {BAD}", "rejected its input", own]
        if kind is not want_kind or not all(t in text for t in texts):
            failures.append(f"{what}: got {kind.__name__} {text!r}, expected {want_kind.__name__} with {texts}")

    # Rank r's plan: token t to expert (t + r) mod E with weight 1 + t/8, slot 1 unused.
    expert = np.full((T, k), -1, np.int32)
    expert[:, 0] = (np.arange(T) + rank) % E
    weight = np.zeros((T, k), np.float32)
    weight[:, 0] = 1 + np.arange(T) / 8
    x = (np.arange(T * H, dtype=np.float32).reshape(T, H) % 7) - 3 + rank

    expect("Plan", lambda bad: locmoe.Plan(g, expert.astype(np.float32) if bad else expert, weight, L),
           "expert has dtype float32: expected int32 or int64")
    expect("Plan slot_dropped", lambda bad: locmoe.Plan(g, expert, weight, L,
                                                        slot_dropped=np.zeros((T, k), np.int32) if bad else None),
           "slot_dropped has dtype int32: expected uint8 or bool")
    wrong = expert.copy()
    wrong[1, 0] = 13 + E  # an int32 id out of range: refused by the C API itself, in its turn
    expect("Plan id", lambda bad: locmoe.Plan(g, wrong if bad else expert, weight, L), f"expert id {13 + E}",
           own_kind=locmoe.Error)
    plan = locmoe.Plan(g, expert, weight, L)  # the group is still usable

    gate = np.cos(np.arange(E * H, dtype=np.float32)).reshape(E, H)
    router = locmoe.Router("gshard", k=k, capacity_factor=float(2 * E))
    expect("route", lambda bad: router.route(g, x.astype(np.float64) if bad else x, gate, L),
           "features has dtype float64: expected float32")
    router.route(g, x, gate, L)

    expect("Dispatcher", lambda bad: locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=k,
                                                        device="tpu" if bad else "cpu"),
           "device must be 'cpu' or 'cuda', got 'tpu'")
    d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=k)
    h = d.make_handle()
    ein = np.zeros((d.max_expert_rows, H), np.float32)
    ro = ein.copy()
    ro.setflags(write=False)
    expect("dispatch", lambda bad: d.dispatch_into(x, plan, h, ro if bad else ein), "expert_in is read-only")

    v = np.full(3, 1.0 + rank)
    expect("allreduce_sum", lambda bad: g.allreduce_sum(v.astype(np.float32) if bad else v),
           "values: expected a float64 contiguous array")

    ref = weight[:, :1] * x  # identity experts, one slot
    d.dispatch_into(x, plan, h, ein)
    out = np.full((T, H), -1, np.float32)
    # combine: rank BAD refuses its float64 output; it still takes part (its expert rows go back as
    # NaN), so the peers' combine completes, exact where rank BAD served no slot.
    t0 = time.monotonic()
    try:
        d.combine_into(ein, h, np.zeros((T, H)) if rank == BAD else out)
        if rank == BAD:
            failures.append("combine: returned on the refusing rank")
        else:
            via_bad = expert[:, 0] // L == BAD
            if not np.isnan(out[via_bad]).all() or not np.array_equal(out[~via_bad], ref[~via_bad]):
                failures.append(f"combine: {out.tolist()}, expected NaN rows {via_bad.tolist()}, else {ref.tolist()}")
    except ValueError as e:
        if rank != BAD or "out has dtype float64" not in str(e):
            failures.append(f"combine: {e!r}")
    if time.monotonic() - t0 >= LIMIT_S:
        failures.append(f"combine: {time.monotonic() - t0:.2f} s")
    # ... and the next dispatch fails on every rank naming it.
    t0 = time.monotonic()
    try:
        d.dispatch_into(x, plan, h, ein)
        failures.append("dispatch after the refused combine: returned")
    except locmoe.Error as e:
        text = str(e)
        if "out has dtype float64" not in text or (rank != BAD and f"rank {BAD}" not in text):
            failures.append(f"dispatch after the refused combine: {text!r}")
    if time.monotonic() - t0 >= LIMIT_S:
        failures.append(f"dispatch after the refused combine: {time.monotonic() - t0:.2f} s")
    d.dispatch_into(x, plan, h, ein)
    d.combine_into(ein, h, out)
    if not np.array_equal(out, ref):
        failures.append(f"combine after the refusals: {out.tolist()}, expected {ref.tolist()}")

    # Last: a handle of another dispatcher on rank BAD. It has no exchange to take part in: it
    # aborts the communicator, and the peers' combine fails at once naming it.
    d2 = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=k)
    h2 = d2.make_handle()
    d2.dispatch_into(x, plan, h2, ein.copy())
    g.allreduce_sum(np.zeros(1))  # every rank is past that dispatch (the abort notice is asynchronous)
    t0 = time.monotonic()
    try:
        d.combine_into(ein, h2 if rank == BAD else h, out)
        failures.append("combine with a foreign handle: returned")
    except locmoe.Error as e:
        text = str(e)
        if "another dispatcher" not in text or (rank != BAD and f"rank {BAD}" not in text):
            failures.append(f"combine with a foreign handle: {text!r}")
    if time.monotonic() - t0 >= LIMIT_S:
        failures.append(f"combine with a foreign handle: {time.monotonic() - t0:.2f} s")

    status = "OK" if not failures else "FAIL " + "; ".join(failures)
    print(f"REFUSAL rank {rank} {status}", flush=True)
    sys.exit(0 if not failures else 1)


def launch(mode, n, mpiexec=None):
    out = run_ranks(os.path.abspath(__file__), mode, n, mpiexec, TIMEOUT_S)
    ok = len(ranks_ok(out, "REFUSAL"))
    print(f"refusal_disagree_worker: {ok} of {n} ranks OK")
    return 0 if ok == n else 1

if __name__ == "__main__":
    if len(sys.argv) == 1:
        rank_main()
    else:
        sys.exit(launch(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
