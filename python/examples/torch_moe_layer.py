"""A PyTorch MoE layer whose token movement is locmoe's dispatch/combine, with autograd.

    router (softmax top-k) -> Dispatch.apply -> expert FFNs (per local expert) -> Combine.apply

Dispatch and Combine are torch.autograd.Function's: their backward passes call locmoe's
dispatch_backward and combine_backward (which also gives the gradient of the combine weights, so
the router learns). Tensors go through DLPack, so CUDA tensors work when the dispatcher is made with
device="cuda" (and locmoe was built with CUDA); here they stay on the CPU.

The script checks the layer against a dense reference (every token through its experts with plain
torch ops) on the forward output and on the gradients of the input, of the gate and of the expert
weights. It runs as one process or under mpirun (each rank owns its tokens, experts L per rank).
Without torch it says so and exits with 77 (ctest's "skipped").
"""
import sys

try:
    import torch
except ImportError:
    print("torch_moe_layer.py: PyTorch is not installed here; skipping (pip install torch to run it)")
    sys.exit(77)

import locmoe


def check_handle(ctx):
    # handle.generation counts the dispatches made on it: a later one would have replaced the
    # layouts this backward needs.
    if ctx.handle.generation != ctx.generation:
        raise RuntimeError("the handle of this forward was dispatched on again before its backward")


class Dispatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dispatcher, plan, handle):
        ctx.dispatcher, ctx.handle = dispatcher, handle
        # DLPack refuses tensors that require grad: hand over the data (no copy) via detach().
        out = dispatcher.dispatch(x.detach().contiguous(), plan, handle)
        ctx.generation = handle.generation
        return out

    @staticmethod
    def backward(ctx, grad_expert_in):
        check_handle(ctx)
        grad_x = ctx.dispatcher.dispatch_backward(grad_expert_in.detach().contiguous(), ctx.handle)
        return grad_x, None, None, None


class Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, expert_out, weights, dispatcher, handle):
        # `weights` [T, k] are the plan's combine weights (the plan was made from their values):
        # they are an input here only so that autograd routes their gradient to the router.
        ctx.dispatcher, ctx.handle, ctx.generation = dispatcher, handle, handle.generation
        expert_out = expert_out.detach().contiguous()
        ctx.save_for_backward(expert_out)
        return dispatcher.combine(expert_out, handle)

    @staticmethod
    def backward(ctx, grad_out):
        check_handle(ctx)
        (expert_out,) = ctx.saved_tensors
        grad_y, grad_w = ctx.dispatcher.combine_backward(grad_out.detach().contiguous(), ctx.handle, expert_out)
        return grad_y, grad_w, None, None


class MoELayer(torch.nn.Module):
    def __init__(self, group, hidden, ffn, experts_per_rank, k, max_tokens, seed=0):
        super().__init__()
        self.group, self.L, self.k = group, experts_per_rank, k
        E = experts_per_rank * group.size
        gen = torch.Generator().manual_seed(seed)  # same weights on every rank
        self.gate = torch.nn.Parameter(torch.randn(E, hidden, generator=gen) * 0.5)
        w1 = torch.randn(E, ffn, hidden, generator=gen) / hidden ** 0.5
        w2 = torch.randn(E, hidden, ffn, generator=gen) / ffn ** 0.5
        lo, hi = group.rank * experts_per_rank, (group.rank + 1) * experts_per_rank
        self.w1 = torch.nn.Parameter(w1[lo:hi].clone())  # this rank's experts
        self.w2 = torch.nn.Parameter(w2[lo:hi].clone())
        self.all_w1, self.all_w2 = w1, w2  # for the dense reference only
        self.dispatcher = locmoe.Dispatcher(group, experts_per_rank=experts_per_rank, hidden=hidden,
                                            max_tokens=max_tokens, top_k=k)

    def route(self, x):
        probs = torch.softmax(x @ self.gate.t(), dim=-1)
        weights, experts = probs.topk(self.k, dim=-1)
        return experts.to(torch.int32), weights

    def forward(self, x):
        experts, weights = self.route(x)
        plan = locmoe.Plan(self.group, experts.contiguous().numpy(), weights.detach().contiguous().numpy(),
                           experts_per_rank=self.L)
        # A handle per forward: its layouts serve this forward's combine and both backwards, so a
        # second forward before this one's backward (gradient accumulation, recomputation) must not
        # reuse it (a handle kept per layer would give this backward the later forward's layouts).
        handle = self.dispatcher.make_handle()
        expert_in = Dispatch.apply(x, self.dispatcher, plan, handle)
        offs, counts = handle.expert_offsets, handle.expert_counts
        outs = []
        for l in range(self.L):
            seg = expert_in[offs[l]:offs[l] + counts[l]]
            outs.append(torch.relu(seg @ self.w1[l].t()) @ self.w2[l].t())
            pad = offs[l + 1] - offs[l] - counts[l]
            outs.append(expert_in.new_zeros((pad, expert_in.shape[1])))
        expert_out = torch.cat(outs) if outs else expert_in.new_zeros((0, expert_in.shape[1]))
        return Combine.apply(expert_out, weights, self.dispatcher, handle)

    def reference(self, x):
        """The same layer without locmoe: each token through its top-k experts, dense weights."""
        experts, weights = self.route(x)
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(self.k):
                e = int(experts[t, j])
                h = torch.relu(x[t] @ self.ref_w1[e].t()) @ self.ref_w2[e].t()
                out[t] = out[t] + weights[t, j] * h
        return out


def main():
    torch.manual_seed(0)
    group = locmoe.Group()
    T, H, F, L, k = 12, 16, 32, 2, 2
    layer = MoELayer(group, H, F, L, k, max_tokens=T)
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(100 + group.rank), requires_grad=True)
    grad = torch.randn(T, H, generator=torch.Generator().manual_seed(200 + group.rank))
    # Gradient accumulation: a second micro-batch (other tokens, another plan) goes forward before
    # the first one's backward.
    x2 = torch.randn(T - 2, H, generator=torch.Generator().manual_seed(300 + group.rank), requires_grad=True)
    grad2 = torch.randn(T - 2, H, generator=torch.Generator().manual_seed(400 + group.rank))

    out = layer(x)
    out2 = layer(x2)
    ((out * grad).sum() + (out2 * grad2).sum()).backward()
    gx, gx2, ggate, gw1 = x.grad.clone(), x2.grad.clone(), layer.gate.grad.clone(), layer.w1.grad.clone()

    # Reference: the full expert weights as leaves; this rank's slice of their gradient must equal
    # the sum over ranks of what each rank's tokens contribute, so compare after an allreduce.
    x.grad = x2.grad = None
    layer.gate.grad = None
    layer.ref_w1 = layer.all_w1.clone().requires_grad_(True)
    layer.ref_w2 = layer.all_w2.clone().requires_grad_(True)
    ref, ref2 = layer.reference(x), layer.reference(x2)
    ((ref * grad).sum() + (ref2 * grad2).sum()).backward()
    ok = True

    def close(name, a, b, tol=1e-4):
        nonlocal ok
        err = (a - b).abs().max().item() if a.numel() else 0.0
        print(f"rank {group.rank}: {name} max abs err {err:.2e}")
        ok = ok and err <= tol

    close("forward", out.detach(), ref.detach())
    close("forward (second micro-batch)", out2.detach(), ref2.detach())
    close("grad x", gx, x.grad)
    close("grad x (second micro-batch)", gx2, x2.grad)
    close("grad gate", ggate, layer.gate.grad)
    ref_gw1 = layer.ref_w1.grad.double().numpy().copy()
    group.allreduce_sum(ref_gw1.reshape(-1))
    lo = group.rank * L
    close("grad w1 (this rank's experts)", gw1.double(), torch.from_numpy(ref_gw1[lo:lo + L]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
