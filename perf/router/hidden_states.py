#!/usr/bin/env python3
"""Real hidden states for the router figures: trains a small byte-level MoE language model in plain
PyTorch (no locmoe: the dump must not depend on the router under test) and writes the inputs of
its MoE layer's gate on held-out text, with the gate, as .npy files for `locmoe-route --features
PREFIX_features.npy --gate PREFIX_gate.npy`.

  perf/router/hidden_states.py --out /tmp/lm [--experts 64] [--steps 400] [--tokens 16384]

Model: embedding + 2 pre-LN blocks (causal self-attention, then an FFN); the second block's FFN is
an MoE layer of --experts experts (top-2 softmax gate, weights renormalized over the two, the Switch
load-balance loss at 0.01). Text: the .py files of Python's standard library in sorted order; a file
whose crc32(name) % 10 == 0 is held out (the dump comes from held-out text only). Seeded; CPU.
"""
import argparse
import os
import sysconfig
import time
import zlib

import numpy as np
import torch
from torch import nn


def corpus():
    lib = "/usr/lib/python3.11" if os.path.isdir("/usr/lib/python3.11") else sysconfig.get_paths()["stdlib"]
    train, held = bytearray(), bytearray()
    for f in sorted(x for x in os.listdir(lib) if x.endswith(".py")):
        with open(os.path.join(lib, f), "rb") as fh:
            (held if zlib.crc32(f.encode()) % 10 == 0 else train).extend(fh.read())
    return torch.tensor(list(train), dtype=torch.long), torch.tensor(list(held), dtype=torch.long)


class MoE(nn.Module):
    def __init__(self, d, f, experts):
        super().__init__()
        self.gate = nn.Linear(d, experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(experts, d, f) / d ** 0.5)
        self.w2 = nn.Parameter(torch.randn(experts, f, d) / f ** 0.5)
        self.aux = torch.zeros(())
        self.last_input = None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        self.last_input = x.detach()
        p = torch.softmax(self.gate(x), dim=-1)
        top, idx = p.topk(2, dim=-1)
        w = top / top.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=p.shape[1]).tolist()
        tok = order // 2
        wt = w.reshape(-1)[order]
        start = 0
        for e, c in enumerate(counts):
            if c:
                t = tok[start:start + c]
                h = torch.relu(x[t] @ self.w1[e])
                out = out.index_add(0, t, wt[start:start + c, None] * (h @ self.w2[e]))
            start += c
        frac = torch.zeros(p.shape[1]).index_add_(0, idx.reshape(-1), torch.ones(idx.numel())) / idx.numel()
        self.aux = p.shape[1] * (frac * p.mean(dim=0)).sum()
        return out.reshape(shape)


class Block(nn.Module):
    def __init__(self, d, heads, ffn, moe):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = moe if moe is not None else nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Linear(ffn, d))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.ffn(self.ln2(x))


class LM(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.emb = nn.Embedding(256, a.d_model)
        self.pos = nn.Parameter(torch.randn(a.context, a.d_model) * 0.02)
        self.moe = MoE(a.d_model, a.expert_ffn, a.experts)
        self.blocks = nn.ModuleList([Block(a.d_model, 4, 4 * a.d_model, None), Block(a.d_model, 4, 0, self.moe)])
        self.ln = nn.LayerNorm(a.d_model)
        self.head = nn.Linear(a.d_model, 256, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((a.context, a.context), float("-inf")), 1))

    def forward(self, idx):
        x = self.emb(idx) + self.pos[:idx.shape[1]]
        for b in self.blocks:
            x = b(x, self.mask[:idx.shape[1], :idx.shape[1]])
        return self.head(self.ln(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="prefix of PREFIX_features.npy, PREFIX_gate.npy")
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--expert-ffn", type=int, default=64)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tokens", type=int, default=16384, help="held-out tokens dumped")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    train, held = corpus()
    model = LM(a)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    for step in range(a.steps):
        s = torch.randint(0, train.numel() - a.context - 1, (a.batch,), generator=gen)
        x = torch.stack([train[i:i + a.context] for i in s.tolist()])
        y = torch.stack([train[i + 1:i + a.context + 1] for i in s.tolist()])
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad()
        (loss + 0.01 * model.moe.aux).backward()
        opt.step()
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.3f} aux {model.moe.aux.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    feats = []
    with torch.no_grad():
        n = a.tokens // a.context
        starts = torch.linspace(0, held.numel() - a.context - 1, n).long()
        x = torch.stack([held[i:i + a.context] for i in starts.tolist()])
        model(x)
        feats = model.moe.last_input.numpy().astype(np.float32)
    np.save(a.out + "_features.npy", feats)
    np.save(a.out + "_gate.npy", model.moe.gate.weight.detach().numpy().astype(np.float32))
    print(f"wrote {a.out}_features.npy {feats.shape} and {a.out}_gate.npy", flush=True)


if __name__ == "__main__":
    main()
