#!/usr/bin/env python3
"""PyTorch reference of the EP kernels' two data movements, for the side-by-side figures of
docs/PERFORMANCE.md ("## Kernels"): what a trainer without locmoe writes.

  dispatch pack:  send = x.index_select(0, copy_token)       one row per (token, destination rank)
  token combine:  out.index_add_(0, copy_token, returned)    the rows coming back, summed per token
  copy:           dst.copy_(src) of the same bytes           the device's (or host's) copy rate

Shapes and byte counts follow perf/kernels/bench_shapes.h and bench_kernels: T tokens, k distinct
experts per token drawn uniformly from R ranks x L experts, C = distinct (token, rank) pairs, and
GB/s = C rows x row bytes / time (the rows written by the pack, the rows read by the combine).
The CPU shapes run on the CPU, the GPU shapes on CUDA when torch sees a GPU (--device).

  python3 perf/kernels/torch_reference.py [--device cpu|cuda] [--iters N] [--threads N] [--json]

Run it in the same command as bench_kernels, so that both see the same machine state.
"""
import argparse
import json
import sys
import time

try:
    import torch
except ImportError:
    print("torch_reference.py: PyTorch is not installed here (pip install torch)", file=sys.stderr)
    sys.exit(77)

# (tokens, hidden, k, ranks, experts_per_rank, dtype): bench_shapes.h's kCpuShapes / kGpuShapes.
CPU_SHAPES = [(2048, 2048, 8, 8, 8, torch.bfloat16), (2048, 1024, 8, 8, 8, torch.float32)]
GPU_SHAPES = [(8192, 7168, 8, 8, 32, torch.bfloat16), (8192, 4096, 8, 8, 32, torch.float32)]


def copy_tokens(tokens, k, ranks, experts_per_rank, gen):
    """Token of every copy, ordered rank -> token (the pack's order): a token appears once per
    destination rank that holds any of its k distinct experts."""
    experts = torch.stack([torch.randperm(ranks * experts_per_rank, generator=gen)[:k] for _ in range(tokens)])
    rank_of = experts // experts_per_rank                          # [T, k]
    hit = torch.zeros(ranks, tokens, dtype=torch.bool)
    hit[rank_of.t().reshape(-1), torch.arange(tokens).repeat(k)] = True
    return hit.nonzero()[:, 1].to(torch.int64)                    # row-major: rank, then token


def timed(fn, device, iters):
    """Median seconds per call (CUDA events on a GPU)."""
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch's CPU threads (default 1: locmoe's CPU kernels are single-threaded)")
    ap.add_argument("--json", action="store_true", help="one JSON line per measurement")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("torch_reference.py: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(42)
    rows = []
    for T, H, k, R, L, dtype in (GPU_SHAPES if a.device == "cuda" else CPU_SHAPES):
        idx = copy_tokens(T, k, R, L, gen).to(a.device)
        C = idx.numel()
        x = torch.ones(T, H, dtype=dtype, device=a.device)
        send = torch.empty(C, H, dtype=dtype, device=a.device)
        returned = torch.ones(C, H, dtype=dtype, device=a.device)
        out = torch.zeros(T, H, dtype=dtype, device=a.device)
        moved = C * H * x.element_size()
        ops = {
            "dispatch_pack (index_select)": lambda: torch.index_select(x, 0, idx, out=send),
            "token_combine (index_add_)": lambda: out.zero_().index_add_(0, idx, returned),
            "copy of the same bytes": lambda: send.copy_(returned),
        }
        # What the two operations must produce (rows of ones): the pack copies rows, the combine
        # sums to each token's number of copies.
        ops["dispatch_pack (index_select)"]()
        ops["token_combine (index_add_)"]()
        per_token = torch.bincount(idx.cpu(), minlength=T).to(torch.float32)
        if not (bool((send == 1).all()) and torch.equal(out.float().cpu()[:, 0], per_token)):
            print(f"torch_reference.py: wrong result for {T}x{H} {dtype}", file=sys.stderr)
            return 1
        for name, fn in ops.items():
            s = timed(fn, a.device, a.iters)
            row = {"op": name, "device": a.device, "dtype": str(dtype).replace("torch.", ""), "tokens": T,
                   "hidden": H, "k": k, "ranks": R, "experts_per_rank": L, "copies": C, "bytes": moved,
                   "seconds": s, "GBps": moved / s / 1e9, "torch": torch.__version__,
                   "threads": torch.get_num_threads()}
            rows.append(row)
            print(json.dumps(row) if a.json else
                  f"{name:<30} {row['dtype']:<9} C={C:<7} {moved / 2**20:8.1f} MiB {s * 1e3:9.3f} ms {row['GBps']:8.2f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
