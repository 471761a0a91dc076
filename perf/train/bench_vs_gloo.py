#!/usr/bin/env python3
"""Side by side: one MoE layer step (forward + backward) with locmoe's dispatch/combine and with
Megatron's alltoall token dispatcher over torch.distributed.all_to_all_single on gloo.

Same process, same tokens, same routing (softmax top-k of one gate, int64 ids from torch.topk),
same experts (L per rank, a two-layer FFN each, run per local expert on a contiguous segment),
alternated step by step. The gloo path is Megatron's MoEAlltoAllTokenDispatcher pattern:
permute the token copies by destination (sort by expert id), exchange the per-expert counts,
exchange the tokens (all_to_all_single with split sizes), sort the received rows by local
expert, run the experts, undo the sort, exchange back, unpermute (weighted scatter-add). Both
paths are checked to give the same output and gradients before timing.

Launch with mpirun (every rank: `-x MASTER_ADDR -x MASTER_PORT` for gloo) or torchrun. Rank 0
prints one JSON object: the medians over --iters steps of each path (slowest rank per step), the
ratio gloo / locmoe, rank 0's CPU seconds per step of each (more CPU than wall time on a
shared core means waiting by spinning), and rank 0's stage times of both paths.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python", "torch_tests"))
import common  # noqa: E402

import locmoe  # noqa: E402
import locmoe.torch as lt  # noqa: E402


class _A2A(torch.autograd.Function):
    """all_to_all_single with split sizes; backward exchanges the gradient the other way."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits):
        ctx.out_splits, ctx.in_splits = out_splits, in_splits
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits)
        return out

    @staticmethod
    def backward(ctx, g):
        out = g.new_empty((sum(ctx.in_splits),) + tuple(g.shape[1:]))
        dist.all_to_all_single(out, g.contiguous(), ctx.in_splits, ctx.out_splits)
        return out, None, None


def experts(x, offs, counts, w1, w2):
    outs = []
    for l in range(w1.shape[0]):
        seg = x[offs[l]:offs[l] + counts[l]]
        outs.append(torch.relu(seg @ w1[l].t()) @ w2[l].t())
    return torch.cat(outs)


def gloo_layer(x, idx, w, w1, w2, R, L, timings):
    """Megatron alltoall dispatcher. x [T, H], idx int64 [T, k], w [T, k]."""
    T, k = idx.shape
    t0 = time.perf_counter()
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)                 # permute: copies sorted by expert
    src_tok = order // k
    permuted = x[src_tok]
    counts = torch.bincount(flat, minlength=R * L)           # [E] copies to each expert
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts)               # exchange counts: [R, L] received
    in_splits = counts.view(R, L).sum(1).tolist()
    rc = recv_counts.view(R, L)
    out_splits = rc.sum(1).tolist()
    t1 = time.perf_counter()
    recv = _A2A.apply(permuted, out_splits, in_splits)        # exchange tokens
    t2 = time.perf_counter()
    # Received rows are grouped by source rank, then local expert: sort by local expert.
    le = torch.arange(L).repeat(R).repeat_interleave(rc.reshape(-1))
    sort = torch.argsort(le, stable=True)
    ein = recv[sort]
    ecounts = rc.sum(0).tolist()
    eoffs = np.concatenate([[0], np.cumsum(ecounts)]).tolist()
    y = experts(ein, eoffs, ecounts, w1, w2)
    unsort = torch.empty_like(sort)
    unsort[sort] = torch.arange(sort.numel())
    y = y[unsort]
    t3 = time.perf_counter()
    back = _A2A.apply(y, in_splits, out_splits)               # exchange back
    t4 = time.perf_counter()
    wflat = w.reshape(-1)[order].unsqueeze(1)
    out = torch.zeros_like(x).index_add(0, src_tok, back * wflat)  # unpermute
    t5 = time.perf_counter()
    for key, dt in (("permute", t1 - t0), ("dispatch", t2 - t1), ("experts", t3 - t2), ("combine", t4 - t3),
                    ("unpermute", t5 - t4)):
        timings[key] = timings.get(key, 0.0) + dt
    return out


def locmoe_layer(g, d, x, idx, w, w1, w2, L, timings):
    t0 = time.perf_counter()
    plan = lt.plan_from_topk(g, idx, w, L)
    timings["plan"] = timings.get("plan", 0.0) + time.perf_counter() - t0
    ein, h = lt.dispatch(x, d, plan, timings, weight=w)
    t1 = time.perf_counter()
    y = experts(ein, h.expert_offsets, h.expert_counts, w1, w2)
    timings["experts"] = timings.get("experts", 0.0) + time.perf_counter() - t1
    return lt.combine(y, w, d, h, timings)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per rank")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--experts-per-rank", type=int, default=2)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if "OMPI_COMM_WORLD_RANK" in os.environ:
        os.environ.setdefault("RANK", os.environ["OMPI_COMM_WORLD_RANK"])
        os.environ.setdefault("WORLD_SIZE", os.environ["OMPI_COMM_WORLD_SIZE"])
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    g = common.group()
    R, L, H, T, k = g.size, a.experts_per_rank, a.hidden, a.tokens, a.k
    assert dist.get_world_size() == R and dist.get_rank() == g.rank, "gloo and locmoe ranks differ"
    E = R * L
    gen = torch.Generator().manual_seed(5)
    gate = torch.randn(E, H, generator=gen) * H ** -0.5
    w1_0 = torch.randn(L, a.ffn, H, generator=torch.Generator().manual_seed(10 + g.rank)) * H ** -0.5
    w2_0 = torch.randn(L, H, a.ffn, generator=torch.Generator().manual_seed(20 + g.rank)) * a.ffn ** -0.5
    x0 = torch.randn(T, H, generator=torch.Generator().manual_seed(30 + g.rank))
    gy = torch.randn(T, H, generator=torch.Generator().manual_seed(40 + g.rank))
    # The weights' gradient behind dispatch_backward's rows: 4 data exchanges per step (MoELayer's default).
    d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=k, weight_grads_with_dispatch_backward=True)

    def step(which, timings):
        x = x0.clone().requires_grad_(True)
        gt = gate.clone().requires_grad_(True)
        w1, w2 = w1_0.clone().requires_grad_(True), w2_0.clone().requires_grad_(True)
        p = torch.softmax(x @ gt.t(), dim=-1)
        w, idx = p.topk(k, dim=-1)
        if which == "locmoe":
            out = locmoe_layer(g, d, x, idx, w, w1, w2, L, timings)
        else:
            out = gloo_layer(x, idx, w, w1, w2, R, L, timings)
        t0 = time.perf_counter()
        (out * gy).sum().backward()
        timings["backward"] = timings.get("backward", 0.0) + time.perf_counter() - t0
        return out.detach(), x.grad, gt.grad, w1.grad

    a_, b_ = step("locmoe", {}), step("gloo", {})
    err = max((u - v).abs().max().item() for u, v in zip(a_, b_))
    assert err < 1e-3, f"locmoe and gloo paths differ by {err}"

    times = {"locmoe": [], "gloo": []}
    cpu = {"locmoe": [], "gloo": []}  # this process's CPU seconds (user + system) per step
    stages = {"locmoe": {}, "gloo": {}}
    for it in range(a.warmup + a.iters):
        for which in (("locmoe", "gloo") if it % 2 == 0 else ("gloo", "locmoe")):
            arr = np.zeros(R)
            g.allreduce_sum(arr)  # start together
            st = {}
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            step(which, st)
            arr[g.rank] = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            c = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            g.allreduce_sum(arr)
            if it >= a.warmup:
                times[which].append(arr.max())
                cpu[which].append(c)
                for key, v in st.items():
                    stages[which][key] = stages[which].get(key, 0.0) + v / a.iters
    if g.rank == 0:
        med = {w: float(np.median(v)) for w, v in times.items()}
        print(json.dumps({"ranks": R, "nodes": g.num_nodes, "tokens": T, "hidden": H, "ffn": a.ffn,
                          "experts_per_rank": L, "k": k, "iters": a.iters, "max_abs_diff": err,
                          "median_step_s": med, "median_cpu_s_rank0": {w: float(np.median(v)) for w, v in cpu.items()}, "gloo_over_locmoe": med["gloo"] / med["locmoe"],
                          "stages_rank0_s": stages}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
