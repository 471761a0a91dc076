"""locmoe.torch's own argument refusals on one rank reach every rank at once (issue 16).

As a rank (no arguments): rank 1 passes, in turn, arguments that locmoe.torch refuses itself before
the module sees them, while every other rank passes good input:
  - plan_from_topk with an expert id out of range,
  - dispatch with a float64 x,
  - Router forward with a float64 x,
  - MoELayer forward with the wrong hidden size.
Rank 1 must get ValueError naming the argument; every other rank locmoe.Error naming rank 1 and the
same reason; both within LIMIT_S, far below the group's timeout (a rank that refused alone, before
the collective, would leave its peers waiting until it). After each, every rank dispatches and
combines good input with identity experts and checks the result against x (weights 0.5 + 0.5), so
the group is still usable. Prints "TORCH_REFUSAL rank R OK".

As the launcher: refusal_worker.py mpi N MPIEXEC   (mpirun --enable-recovery)
                 refusal_worker.py tcp N           (torchrun's variables, TCP rendezvous)
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from rank_launch import ranks_ok, run_ranks  # noqa: E402  (python/tests)

TIMEOUT_S = 20.0
LIMIT_S = 5.0
BAD = 1


def rank_main():
    import torch

    import locmoe
    import locmoe.torch as lt

    g = locmoe.Group(timeout_s=TIMEOUT_S)
    rank, R = g.rank, g.size
    L, T, H = 2, 6, 8
    E = L * R
    failures = []

    def expect(what, call, reason):
        t0 = time.perf_counter()
        try:
            call()
        except Exception as e:  # noqa: BLE001  (the kind is part of the check)
            dt, text, kind = time.perf_counter() - t0, str(e), type(e)
        else:
            failures.append(f"{what}: no error")
            return
        if rank == BAD:
            ok = kind is ValueError and reason in text
        else:
            ok = kind is locmoe.Error and "rank 1" in text and reason in text
        if not ok or dt > LIMIT_S:
            failures.append(f"{what}: {kind.__name__} after {dt:.2f} s: {text}")

    def good_step():
        # Identity experts, two distinct experts per token, weights 0.5 + 0.5: out == x.
        ids = torch.randint(0, E, (T, 1), generator=torch.Generator().manual_seed(rank))
        ids = torch.cat([ids, (ids + 1) % E], dim=1)
        w = torch.full((T, 2), 0.5)
        d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=2)
        plan = lt.plan_from_topk(g, ids, w, L)
        x = torch.randn(T, H, generator=torch.Generator().manual_seed(100 + rank))
        ein, h = lt.dispatch(x, d, plan)
        out = lt.combine(ein, w, d, h)
        if not torch.allclose(out, x, atol=1e-6):
            failures.append(f"good step after the refusals: max err {(out - x).abs().max().item()}")

    good = torch.zeros(T, 2, dtype=torch.int64)
    bad_ids = good.clone()
    bad_ids[2, 1] = E + 5
    w = torch.full((T, 2), 0.5)
    expect("plan_from_topk", lambda: lt.plan_from_topk(g, bad_ids if rank == BAD else good, w, L),
           f"expert id {E + 5} is outside")
    good_step()

    d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=2)
    plan = lt.plan_from_topk(g, good, w, L)
    x = torch.randn(T, H)
    expect("dispatch", lambda: lt.dispatch(x.double() if rank == BAD else x, d, plan), "x must be float32")
    good_step()

    router = lt.Router(g, H, L, name="gshard", seed=1)
    expect("Router", lambda: router(x.double() if rank == BAD else x), "x must be float32")
    good_step()

    layer = lt.MoELayer(g, H, 12, L, max_tokens=T, router="locmoe+")
    expect("MoELayer", lambda: layer(torch.zeros(T, H + 1) if rank == BAD else x), "expected hidden 8")
    good_step()
    y = layer(x)  # and the layer itself works afterwards
    y.sum().backward()
    if not torch.isfinite(layer.w1.grad).all():
        failures.append("MoELayer after its refusal: non-finite gradient")

    status = "OK" if not failures else "FAIL " + "; ".join(failures)
    print(f"TORCH_REFUSAL rank {rank} {status}", flush=True)
    sys.exit(0 if not failures else 1)


def launch(mode, n, mpiexec=None):
    out = run_ranks(os.path.abspath(__file__), mode, n, mpiexec, TIMEOUT_S)
    ok = len(ranks_ok(out, "TORCH_REFUSAL"))
    print(f"torch refusal_worker: {ok} of {n} ranks OK")
    return 0 if ok == n else 1


if __name__ == "__main__":
    if len(sys.argv) == 1:
        rank_main()
    else:
        sys.exit(launch(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
