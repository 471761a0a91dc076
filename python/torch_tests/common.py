"""Shared by the locmoe.torch tests and the training script: the group of this process (mpirun,
torchrun or alone) and a pure-PyTorch single-process reference of locmoe.torch.MoELayer."""
import os

import torch

import locmoe

_GROUP = None


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "TORCHELASTIC_RESTART_COUNT" in os.environ


def group():
    """This process's locmoe.Group (one per process): MPI under mpirun, under torchrun the TCP
    rendezvous with nothing but torchrun's own variables. TEST_TORCH_INIT_FIRST=1 initializes
    torch.distributed (gloo, env://) first, as a trainer would (its rank 0 then holds MASTER_PORT)."""
    global _GROUP
    if _GROUP is None:
        if os.environ.get("TEST_TORCH_INIT_FIRST") == "1":
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("gloo")
        _GROUP = locmoe.Group()
    return _GROUP


def allreduce(g, t: torch.Tensor) -> torch.Tensor:
    """Collective: the sum over the group of a tensor (as float64, returned in t's dtype)."""
    a = t.detach().double().contiguous().numpy().copy()
    g.allreduce_sum(a.reshape(-1))
    return torch.from_numpy(a).to(t.dtype)


def all_experts(seed, E, H, F):
    """Every expert's parameters as leaves: (w1 [E, F, H], b1 [E, F], w2 [E, H, F], b2 [E, H])."""
    from locmoe.torch import MoELayer
    ps = [MoELayer.init_expert(seed, e, H, F) for e in range(E)]
    return [torch.stack([p[i] for p in ps]).requires_grad_(True) for i in range(4)]


def reference_moe(x, gate, params, expert, renormalize=True, activation=torch.nn.functional.gelu):
    """The MoE layer in plain PyTorch, every token through its accepted experts on one process.

    x [T, H]; gate [E, H]; params from all_experts; expert int [T, k] (the router's selection, a
    constant; -1 = none). Weights: p = softmax(x gate^T) at the accepted experts, divided by their
    sum when renormalize. Returns (out [T, H], weight [T, k])."""
    w1, b1, w2, b2 = params
    p = torch.softmax(x @ gate.t(), dim=-1)
    mask = expert >= 0
    idx = expert.clamp(min=0).long()
    w = p.gather(1, idx) * mask
    if renormalize:
        s = w.sum(dim=1, keepdim=True)
        w = torch.where(s > 0, w / torch.where(s > 0, s, torch.ones_like(s)), w)
    out = torch.zeros_like(x)
    for j in range(expert.shape[1]):
        e = idx[:, j]
        h = activation(torch.einsum("tfh,th->tf", w1[e], x) + b1[e])
        y = torch.einsum("thf,tf->th", w2[e], h) + b2[e]
        out = out + (w[:, j] * mask[:, j]).unsqueeze(1) * y
    return out, w
