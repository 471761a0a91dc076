#!/usr/bin/env python3
"""Trains a small byte-level decoder-only MoE language model with locmoe.torch.MoELayer.

Text: the top-level modules of Python's standard library (/usr/lib/python3.11/*.py on Debian 12,
else this interpreter's stdlib) and the licence texts of /usr/share/common-licenses, files in
sorted order; a file goes to the held-out split when crc32(its name) % 10 == 0 (fixed), the rest
is the training text. Every block is causal self-attention followed by an MoE FFN (every block's
FFN is an MoE layer). Data parallel over the group for the dense parameters (their gradients are
averaged with the group's allreduce), expert parallel for the experts (L per rank). Seeds fix
the initialization (identical dense parameters on every rank), each rank's batches and the
held-out batches.

Launch: mpirun (LOCMOE_HOSTID per rank emulates nodes), torchrun, or scripts/emu-cluster.sh launch
(TCP rendezvous); rank 0 writes one JSON object per step to --out (JSON lines):
  step, router, train_loss (mean over the group), heldout_loss (every --eval-every steps),
  step_s (slowest rank), stages_s {route, dispatch, experts, combine, combine_backward,
  dispatch_backward, other} (slowest rank, summed over layers), layers: [{max_tokens_per_expert,
  mean_tokens_per_expert, dropped_slots, capacity, capacity_lower_bound, capacity_smoothed,
  kept_gate_mass, internode_bytes (dispatch payload crossing nodes, summed over ranks),
  accepted_slots, slots_received, dropped_tokens}], conserved (every layer: the slots sent equal
  the slots the experts received over the group).
With --check: exits 1 unless every step conserved its tokens and the training loss of the last
5 steps is below that of the first 5 by --min-drop (the CI short version).
"""
import argparse
import json
import math
import os
import sys
import sysconfig
import time
import zlib

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python", "torch_tests"))
import common  # noqa: E402  (the group under mpirun / torchrun / TCP)

import locmoe.torch as lt  # noqa: E402


def corpus(max_bytes):
    stdlib = "/usr/lib/python3.11" if os.path.isdir("/usr/lib/python3.11") else sysconfig.get_paths()["stdlib"]
    files = sorted(os.path.join(stdlib, f) for f in os.listdir(stdlib) if f.endswith(".py"))
    lic = "/usr/share/common-licenses"
    if os.path.isdir(lic):
        files += sorted(os.path.join(lic, f) for f in os.listdir(lic) if os.path.isfile(os.path.join(lic, f)))
    train, held = bytearray(), bytearray()
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        (held if zlib.crc32(os.path.basename(f).encode()) % 10 == 0 else train).extend(data)
    train, held = bytes(train[:max_bytes]), bytes(held[:max(1, max_bytes // 9)])
    return (torch.frombuffer(bytearray(train), dtype=torch.uint8).long(),
            torch.frombuffer(bytearray(held), dtype=torch.uint8).long(), stdlib)


class Block(nn.Module):
    def __init__(self, g, a, layer_seed):
        super().__init__()
        d = a.d_model
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, a.heads, batch_first=True, dropout=0.0)
        kw = dict(k=a.k, capacity_factor=a.capacity_factor, load_balance_coef=a.load_balance_coef,
                  z_loss_coef=a.z_loss_coef, locality_coef=a.locality_coef)
        self.moe = lt.MoELayer(g, d, a.ffn, a.experts_per_rank, max_tokens=a.batch * a.context,
                               router=a.router, seed=layer_seed, **kw)
        self.register_buffer("mask", torch.triu(torch.full((a.context, a.context), float("-inf")), 1))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask[:x.shape[1], :x.shape[1]], need_weights=False)[0]
        return x + self.moe(self.ln2(x))


class LM(nn.Module):
    def __init__(self, g, a):
        super().__init__()
        self.emb = nn.Embedding(256, a.d_model)
        self.pos = nn.Parameter(torch.randn(a.context, a.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(g, a, a.seed * 100 + i) for i in range(a.layers))
        self.ln = nn.LayerNorm(a.d_model)
        self.head = nn.Linear(a.d_model, 256, bias=False)

    def forward(self, idx):
        x = self.emb(idx) + self.pos[:idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))

    def moes(self):
        return [b.moe for b in self.blocks]


def batch(data, n, context, gen):
    start = torch.randint(0, data.numel() - context - 1, (n,), generator=gen)
    x = torch.stack([data[s:s + context] for s in start.tolist()])
    y = torch.stack([data[s + 1:s + context + 1] for s in start.tolist()])
    return x, y


def expert_param(name):
    return name.split(".")[-1] in ("w1", "b1", "w2", "b2") and ".moe." in name


def allreduce_grads(g, model):
    """Dense gradients: mean over the group (data parallel). Expert gradients: already complete on
    their rank; divided by the group size because the objective is the mean of the ranks' losses."""
    dense = [p for n, p in model.named_parameters() if not expert_param(n) and p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in dense]).double().numpy().copy()
    g.allreduce_sum(flat)
    flat /= g.size
    off = 0
    for p in dense:
        n = p.numel()
        p.grad.copy_(torch.from_numpy(flat[off:off + n]).view_as(p.grad))
        off += n
    for n, p in model.named_parameters():
        if expert_param(n) and p.grad is not None:
            p.grad.div_(g.size)


def group_sum(g, values):
    v = np.asarray(values, dtype=np.float64).copy()
    g.allreduce_sum(v)
    return v


def group_max(g, values):
    """Max over the group of non-negative values (one allreduce per rank slot)."""
    v = np.zeros((g.size, len(values)), dtype=np.float64)
    v[g.rank] = values
    g.allreduce_sum(v.reshape(-1))
    return v.max(axis=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", default="locmoe+", help="any locmoe router name")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--experts-per-rank", type=int, default=2)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--capacity-factor", type=float, default=1.25)
    ap.add_argument("--load-balance-coef", type=float, default=0.01)
    ap.add_argument("--z-loss-coef", type=float, default=0.001)
    ap.add_argument("--locality-coef", type=float, default=0.0)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="sequences per rank per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-bytes", type=int, default=4_000_000, help="training text bytes used")
    ap.add_argument("--out", help="JSON lines file (rank 0)")
    ap.add_argument("--check", action="store_true", help="assert loss falls and tokens are conserved")
    ap.add_argument("--min-drop", type=float, default=0.3, help="--check: nats the loss must fall")
    a = ap.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    g = common.group()
    train, held, stdlib = corpus(a.max_bytes)
    torch.manual_seed(a.seed)  # the dense parameters: the same on every rank
    model = LM(g, a)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps))))
    gen = torch.Generator().manual_seed(a.seed * 7919 + g.rank)  # this rank's batches
    out = open(a.out, "w") if (a.out and g.rank == 0) else None
    if g.rank == 0:
        n_exp = sum(p.numel() for n, p in model.named_parameters() if expert_param(n)) * g.size
        n_dense = sum(p.numel() for n, p in model.named_parameters() if not expert_param(n))
        print(f"train_moe_lm: router {a.router}, {g.size} ranks on {g.num_nodes} nodes, {a.layers} MoE layers, "
              f"E={a.experts_per_rank * g.size}, k={a.k}, d={a.d_model}, ffn={a.ffn}; params dense {n_dense}, "
              f"experts {n_exp}; text {train.numel()} train / {held.numel()} held-out bytes from {stdlib} and "
              f"/usr/share/common-licenses", flush=True)
    losses, all_conserved = [], True
    loss_fn = nn.CrossEntropyLoss()
    for step in range(a.steps):
        t0 = time.perf_counter()
        model.train()
        x, y = batch(train, a.batch, a.context, gen)
        logits = model(x)
        task = loss_fn(logits.reshape(-1, 256), y.reshape(-1))
        aux = sum(m.aux_loss for m in model.moes())
        opt.zero_grad(set_to_none=True)
        t_fwd = time.perf_counter()
        (task + aux).backward()
        t_bwd = time.perf_counter()
        allreduce_grads(g, model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step_s = time.perf_counter() - t0

        layers, per_layer = [], []
        stage_names = ("route", "dispatch", "experts", "combine", "combine_backward", "dispatch_backward")
        stages = np.zeros(len(stage_names))
        for m in model.moes():
            s = m.last_stats
            per_layer += [s["internode_bytes_sent"], s["accepted_slots"], s["slots_received"], s["dropped_tokens"]]
            stages += [m.timings.get(k, 0.0) for k in stage_names]
            layers.append({k: s[k] for k in ("max_tokens_per_expert", "mean_tokens_per_expert", "dropped_slots",
                                             "capacity", "capacity_lower_bound", "capacity_smoothed",
                                             "kept_gate_mass")})
        sums = group_sum(g, [task.item(), *per_layer])
        slow = group_max(g, [step_s, *stages, (t_fwd - t0) + (t_bwd - t_fwd) - stages.sum()])
        train_loss = sums[0] / g.size
        losses.append(train_loss)
        conserved = True
        for i, lay in enumerate(layers):
            ib, acc, recv, dtok = sums[1 + 4 * i:5 + 4 * i]
            lay.update(internode_bytes=int(ib), accepted_slots=int(acc), slots_received=int(recv),
                       dropped_tokens=int(dtok))
            conserved &= acc == recv
        all_conserved &= conserved
        rec = {"step": step, "router": a.router, "train_loss": train_loss, "step_s": slow[0],
               "stages_s": dict(zip(stage_names + ("other",), slow[1:].tolist())), "layers": layers,
               "conserved": bool(conserved)}
        if (step + 1) % a.eval_every == 0 or step == a.steps - 1:
            model.eval()
            egen = torch.Generator().manual_seed(12345 + g.rank)  # the same held-out batches each time
            tot = 0.0
            with torch.no_grad():
                for _ in range(a.eval_batches):
                    ex, ey = batch(held, a.batch, a.context, egen)
                    tot += loss_fn(model(ex).reshape(-1, 256), ey.reshape(-1)).item()
            rec["heldout_loss"] = group_sum(g, [tot / a.eval_batches])[0] / g.size
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()
        if g.rank == 0 and (step % 10 == 0 or "heldout_loss" in rec):
            l0 = layers[0]
            print(f"step {step:4d} loss {train_loss:.4f}" +
                  (f" heldout {rec['heldout_loss']:.4f}" if "heldout_loss" in rec else "") +
                  f" | L0 max/mean tok {l0['max_tokens_per_expert']}/{l0['mean_tokens_per_expert']:.1f}"
                  f" cap {l0['capacity']} C_lb {l0['capacity_lower_bound']} drop {l0['dropped_slots']}"
                  f" kept {l0['kept_gate_mass']:.3f} xnode {l0['internode_bytes']} B | {slow[0] * 1e3:.0f} ms",
                  flush=True)
    if a.check:
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        ok = all_conserved and first - last >= a.min_drop
        if g.rank == 0:
            print(f"check: loss {first:.3f} -> {last:.3f} (must fall by {a.min_drop}), tokens conserved "
                  f"every step: {all_conserved} -> {'ok' if ok else 'FAILED'}", flush=True)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
