"""locmoe.torch: PyTorch autograd integration of locmoe's dispatch, combine and routers.

    import locmoe, locmoe.torch as lt
    group = locmoe.Group()                                     # collective (mpirun or torchrun)
    # expert-parallel groups inside a data-parallel job: group = world.split(world.rank // ep),
    # or locmoe.Group.from_torch(pg) for a torch.distributed process group
    moe = lt.MoELayer(group, hidden=H, ffn_hidden=F, experts_per_rank=L, max_tokens=T,
                      router="locmoe+", k=2)                   # collective (creates the dispatcher)
    y = moe(x)                      # x [..., H] float32 -> y [..., H]; collective
    loss = task_loss(y) + moe.aux_loss                         # load balance + z + locality terms
    loss.backward()                 # collective (dispatch/combine backwards exchange tokens)

Pieces, each usable alone:

- ``dispatch`` / ``combine``: autograd functions over a ``locmoe.Dispatcher``. Gradients flow to
  the tokens (through dispatch), to the expert outputs and to the combine weights (through
  combine). Every call makes its own ``Handle``, so a second forward before the first backward
  (gradient accumulation, recomputation, pipelines) never overwrites the first one's layout; a
  backward whose handle was dispatched on again since its forward raises RuntimeError.
- ``plan_from_topk``: a ``locmoe.Plan`` from expert ids of your own router (int32 or int64, e.g.
  what ``torch.topk`` returns) and its weights.
- ``Router``: an ``nn.Module`` that owns the gate ``[E, H]`` and routes with any locmoe router by
  name (``locmoe+``, ``gshard``, ``switch``, ``expert-choice``, ``node-limited``, ``locmoe``,
  ``hash``, ``dropless``) and its parameters. It returns differentiable combine weights for the
  experts it chose (the gradient reaches the gate and the tokens through the logits
  ``z = x gate^T``), the router's statistics of the call and the auxiliary losses (load balance,
  z-loss, LocMoE locality), all computed by the library.
- ``MoELayer``: router -> dispatch -> this rank's experts (a two-layer FFN each, run per local
  expert on its contiguous segment) -> combine; drops into a transformer block in place of its FFN.

Conventions. Tensors live on the CPU (the host-memory dispatcher) and are float32; a ``[T, H]``
block is this rank's ``T`` tokens. Experts are placed ``experts_per_rank`` (L) per rank: expert e
lives on rank ``e // L`` of the group, E = L * group.size. Every call marked *collective* must be
made by every rank of the group in the same order (a rank with no tokens too); forward and backward
of ``dispatch``, ``combine``, ``Router`` and ``MoELayer`` are collective. The gate and the dense
parameters are replicated: their gradients are this rank's tokens' share (sum them over the group,
as data parallelism does); an expert's gradient is complete on its own rank.
"""
from __future__ import annotations

import time
from typing import Dict, NamedTuple, Optional

import torch
from torch import nn

from . import _locmoe

__all__ = ["dispatch", "combine", "plan_from_topk", "Router", "RouterOutput", "MoELayer", "AUX_LOSSES"]

AUX_LOSSES = ("load_balance", "z", "locality")


def _host_f32(t: torch.Tensor, name: str) -> torch.Tensor:
    """The tensor's data as a detached, contiguous float32 CPU tensor (no copy when it is one)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (locmoe.torch uses the host-memory dispatcher), got {t.device}")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {t.dtype}")
    return t.detach().contiguous()


def _refuse(why: str, take_turn) -> None:
    """This rank refuses a collective call for `why` (an argument locmoe.torch checks itself): it
    still takes its turn in the call, as a refusal the library passes to the other ranks
    (locmoe_refuse_next_call), so they fail at once naming this rank and `why` instead of waiting
    for it until the deadline; then ValueError(why) here. `take_turn` makes the module call with
    placeholder arguments of the right shapes (the library refuses without reading them)."""
    _locmoe._refuse_next_call(why)
    try:
        take_turn()
    except _locmoe.Error:
        pass
    raise ValueError(why)


def _refusal(check) -> Optional[str]:
    """The message of the ValueError/TypeError `check()` raises, None when it passes."""
    try:
        check()
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def _stage(timings: Optional[Dict[str, float]], key: str, t0: float) -> None:
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def _check_handle(ctx, what: str) -> None:
    """A backward needs the layouts of its own forward's dispatch: refuse a handle that another
    dispatch has overwritten since (a second forward reusing it before this backward)."""
    if ctx.handle.generation != ctx.generation:
        raise RuntimeError(
            f"locmoe.torch: {what}: the handle of this forward's dispatch was used by "
            f"{ctx.handle.generation - ctx.generation} later dispatch(es) before this backward (gradient "
            "accumulation, recomputation or a pipeline schedule reusing one handle); its layouts are no "
            "longer this forward's. Give every dispatch its own handle (locmoe.torch.dispatch does).")


class _Dispatch(torch.autograd.Function):
    """x (and, with weight_grads_with_dispatch_backward, the combine weights) -> expert_in (and a
    stand-in for the weights that combine consumes). In that mode the weights' gradient comes out
    of this function's backward, which autograd runs after combine's: combine_backward leaves it
    in the dispatcher, and it travels back behind dispatch_backward's rows (4 data exchanges per
    step instead of 5)."""

    @staticmethod
    def forward(ctx, x, weight, dispatcher, plan, handle, timings):
        t0 = time.perf_counter()
        ctx.dispatcher, ctx.handle, ctx.timings = dispatcher, handle, timings
        ctx.with_weights = weight is not None
        expert_in = dispatcher.dispatch(_host_f32(x, "x"), plan, handle)
        ctx.generation = handle.generation
        _stage(timings, "dispatch", t0)
        if not ctx.with_weights:
            return expert_in, None
        # A new tensor (an autograd output may not be an unmodified input); combine reads no values
        # from it: it only links combine's weight input to this function.
        return expert_in, weight.detach().clone()

    @staticmethod
    def backward(ctx, grad_expert_in, _grad_weight_link):
        _check_handle(ctx, "dispatch backward")
        t0 = time.perf_counter()
        grad_x = ctx.dispatcher.dispatch_backward(grad_expert_in.detach().contiguous(), ctx.handle)
        grad_w = None
        if ctx.with_weights:
            grad_x, grad_w = grad_x
        _stage(ctx.timings, "dispatch_backward", t0)
        return grad_x, grad_w, None, None, None, None


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, expert_out, weight, dispatcher, handle, timings):
        t0 = time.perf_counter()
        ctx.dispatcher, ctx.handle, ctx.timings = dispatcher, handle, timings
        ctx.generation = handle.generation
        expert_out = _host_f32(expert_out, "expert_out")
        ctx.save_for_backward(expert_out)
        out = dispatcher.combine(expert_out, handle)
        _stage(timings, "combine", t0)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        _check_handle(ctx, "combine backward")
        t0 = time.perf_counter()
        (expert_out,) = ctx.saved_tensors
        grad_y, grad_w = ctx.dispatcher.combine_backward(grad_out.detach().contiguous(), ctx.handle, expert_out)
        _stage(ctx.timings, "combine_backward", t0)
        # With weight_grads_with_dispatch_backward grad_w is None here: the weight input is then
        # dispatch's stand-in, and the weights' gradient comes out of dispatch's backward.
        return grad_y, grad_w, None, None, None


def dispatch(x: torch.Tensor, dispatcher, plan, timings: Optional[Dict[str, float]] = None,
             weight: Optional[torch.Tensor] = None):
    """Collective (forward and backward). Sends this rank's tokens to their experts.

    x: float32 [T, H] on the CPU (T = plan.num_tokens, H = dispatcher.hidden).
    Returns ``(expert_in, handle)``: expert_in float32 [handle.expert_rows, H], the rows of this
    rank's local experts, expert-major (local expert l's rows start at handle.expert_offsets[l],
    handle.expert_counts[l] of them, then zero padding up to the next offset); handle is a new
    ``locmoe.Handle`` of this call alone, for ``combine`` (pass it there, dispatch nothing else
    on it: a backward whose handle another dispatch has used since raises RuntimeError instead
    of using that dispatch's layouts). Backward: d expert_in -> d x float32 [T, H] (sum over the
    token's slots).
    ``timings``: optional dict that accumulates seconds under "dispatch" / "dispatch_backward".
    ``weight``: the combine weights float32 [T, k] that ``combine`` will get, required when the
    dispatcher was made with ``weight_grads_with_dispatch_backward=True`` (their gradient then
    travels back with this dispatch's backward: 4 data exchanges per step instead of 5), ignored
    otherwise.
    """
    with_weights = dispatcher.weight_grads_with_dispatch_backward

    def check():
        _host_f32(x, "x")
        if with_weights:
            if not isinstance(weight, torch.Tensor):
                raise ValueError("weight: the dispatcher has weight_grads_with_dispatch_backward=True, so dispatch "
                                 f"needs the combine weights [{plan.num_tokens}, {plan.k}] (got {type(weight).__name__})")
            if tuple(weight.shape) != (plan.num_tokens, plan.k):
                raise ValueError(f"weight has shape {tuple(weight.shape)}, expected [{plan.num_tokens}, {plan.k}] "
                                 "(the plan's tokens x slots)")

    handle = dispatcher.make_handle()
    why = _refusal(check)
    if why is not None:
        _refuse(why, lambda: dispatcher.dispatch_into(torch.zeros(plan.num_tokens, dispatcher.hidden), plan, handle,
                                                      torch.zeros(dispatcher.max_expert_rows, dispatcher.hidden)))
    expert_in, link = _Dispatch.apply(x, weight if with_weights else None, dispatcher, plan, handle, timings)
    if with_weights:
        # What combine consumes in place of `weight` (checked there to be this call's weight).
        handle._weight_link = (weight, link)
    return expert_in, handle


def combine(expert_out: torch.Tensor, weight: torch.Tensor, dispatcher, handle,
            timings: Optional[Dict[str, float]] = None) -> torch.Tensor:
    """Collective (forward and backward). Brings the expert outputs back and sums them per token.

    expert_out: float32 [handle.expert_rows, H] in expert_in's layout (padding rows ignored).
    weight: float32 [T, k], the combine weights the plan was made with (out[t] = sum over t's
    accepted slots j of weight[t, j] * its expert's row; the values used are the plan's, this
    tensor carries their gradient back: d weight[t, j] = <d out[t], expert row of (t, j)>, 0 for
    slots without an expert). Returns out float32 [T, H]; tokens with no accepted slot get 0.
    ``timings`` accumulates "combine" / "combine_backward".
    """
    with_weights = dispatcher.weight_grads_with_dispatch_backward
    # The weights' gradient comes out of dispatch's backward in that mode: combine consumes
    # dispatch's stand-in for them, kept on the handle.
    given, link = handle.__dict__.get("_weight_link", (None, None))

    def check():
        _host_f32(expert_out, "expert_out")
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (handle.num_tokens, handle.k):
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"weight has shape {got}, expected [{handle.num_tokens}, {handle.k}] "
                             "(the plan's tokens x slots)")
        if with_weights and given is not weight:
            raise ValueError("weight must be the tensor given to this handle's dispatch(weight=...) (the dispatcher "
                             "has weight_grads_with_dispatch_backward=True; "
                             + ("this handle's dispatch got another tensor)" if given is not None else
                                "no dispatch of this handle took weights, or it was combined already)"))

    why = _refusal(check)
    if why is not None:
        # combine has no metadata round: the peers' combine completes (NaN where it depends on this
        # rank) and their next dispatch fails naming this rank (locmoe.h, locmoe_refuse_next_call).
        _refuse(why, lambda: dispatcher.combine_into(torch.zeros(handle.expert_rows, dispatcher.hidden), handle,
                                                     torch.zeros(handle.num_tokens, dispatcher.hidden)))
    if with_weights:
        del handle._weight_link  # one combine per dispatch; no cycle handle -> graph -> handle left
        weight = link
    return _Combine.apply(expert_out, weight, dispatcher, handle, timings)


def plan_from_topk(group, expert: torch.Tensor, weight: torch.Tensor, experts_per_rank: int,
                   slot_dropped: Optional[torch.Tensor] = None):
    """Collective (the group's expert counts are summed). A ``locmoe.Plan`` from your own routing
    decision.

    expert: int32 or int64 [T, k] global expert ids in [0, E) or -1 (no expert), e.g. the indices
    of ``torch.topk``; weight: float32 [T, k] combine weights (>= 0); slot_dropped: optional bool or
    uint8 [T, k]. The values are copied; pass the same ``weight`` tensor to ``combine`` to get its
    gradient.
    """
    E = experts_per_rank * group.size

    def check():
        if not isinstance(expert, torch.Tensor) or expert.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"expert must be int32 or int64, got {getattr(expert, 'dtype', type(expert).__name__)}")
        if expert.dim() != 2:
            raise ValueError(f"expert must be [T, k], got {expert.dim()}-D")
        if expert.numel():
            lo, hi = int(expert.min()), int(expert.max())
            if lo < -1 or hi >= E:
                bad = lo if lo < -1 else hi
                raise ValueError(f"expert id {bad} is outside [-1, {E}) (E = experts_per_rank {experts_per_rank} "
                                 f"x {group.size} ranks)")
        _host_f32(weight, "weight")

    why = _refusal(check)
    if why is not None:
        k = expert.shape[1] if isinstance(expert, torch.Tensor) and expert.dim() == 2 and expert.shape[1] else 1
        _refuse(why, lambda: _locmoe.Plan(group, torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k),
                                          max(experts_per_rank, 1), None))
    dropped = None if slot_dropped is None else slot_dropped.detach().to(torch.uint8).contiguous()
    return _locmoe.Plan(group, expert.detach().contiguous(), _host_f32(weight, "weight"), experts_per_rank, dropped)


class _PlanWeight(torch.autograd.Function):
    """logits [T, E] -> the plan's combine weights [T, k]; backward through the router's softmax
    (and renormalization) by locmoe_plan_weight_backward."""

    @staticmethod
    def forward(ctx, logits, plan, renormalize):
        ctx.plan, ctx.renormalize = plan, renormalize
        ctx.save_for_backward(logits)
        _, w = plan.slots()
        return torch.from_numpy(w)

    @staticmethod
    def backward(ctx, d_weight):
        (logits,) = ctx.saved_tensors
        d_logits = torch.empty_like(logits)
        ctx.plan.weight_backward(logits.detach().contiguous(), d_weight.detach().contiguous(),
                                 ctx.renormalize, d_logits)
        return d_logits, None, None


class _AuxLoss(torch.autograd.Function):
    """logits [T, E] -> one auxiliary loss of the plan (a 0-d float32 tensor), gradient from the
    library (router/include/locmoe/router/gate_grad.h)."""

    @staticmethod
    def forward(ctx, logits, plan, kind):
        d_logits = torch.empty_like(logits)
        loss = plan.aux_loss(kind, logits.detach().contiguous(), d_logits)
        ctx.save_for_backward(d_logits)
        return logits.new_tensor(loss)

    @staticmethod
    def backward(ctx, g):
        (d_logits,) = ctx.saved_tensors
        return g * d_logits, None, None


class RouterOutput(NamedTuple):
    """What ``Router.forward`` returns for this rank's T tokens (k = plan.k slots each)."""
    plan: object                 # locmoe.Plan for dispatch
    expert: torch.Tensor         # int32 [T, k] global expert ids, -1 = none (dropped or unused)
    weight: torch.Tensor         # float32 [T, k] combine weights, differentiable (to x and gate)
    logits: torch.Tensor         # float32 [T, E] = x gate^T, differentiable
    aux: Dict[str, torch.Tensor]  # "load_balance", "z", "locality": 0-d differentiable losses
    aux_loss: torch.Tensor       # sum of coef * aux[name] over the nonzero coefficients (0-d)
    stats: Dict[str, object]     # the call's statistics (see Router.forward)


class Router(nn.Module):
    """A locmoe router with its gate as a parameter. Local constructor; ``forward`` is collective.

    group: the ``locmoe.Group``; hidden: H; experts_per_rank: L (E = L * group.size).
    name and the router parameters: as ``locmoe.Router`` / locmoe_router_config_t (k,
    capacity_factor, tau, locality_margin, renormalize, candidates, beta, capacity_floor,
    max_nodes, and by keyword the rest of ``locmoe.Router``'s: cross_node_cost, same_node_cost,
    opt_iterations, normalize_before_drop, min_capacity, drop_policy, ecr_order, candidate_mass,
    score_function, groups, topk_groups, group_score, routed_scaling_factor, bias_update_rate,
    opt_tau_capacity;
    an unknown keyword is a TypeError). coefs: weights of the auxiliary losses in ``aux_loss``
    (0 leaves a loss out of the sum; it is still computed and reported). The gate float32 [E, H] starts as
    N(0, init_std^2) from ``seed`` (the same on every rank). One instance per MoE layer (LocMoE+
    smooths its capacity across calls).
    """

    def __init__(self, group, hidden: int, experts_per_rank: int, name: str = "locmoe+", k: int = 2,
                 capacity_factor: float = 1.25, tau: float = 0.9, locality_margin: float = 0.1,
                 renormalize: bool = True, candidates: int = 0, beta: float = 0.9, capacity_floor: int = 1,
                 max_nodes: int = 0, load_balance_coef: float = 0.0, z_loss_coef: float = 0.0,
                 locality_coef: float = 0.0, init_std: Optional[float] = None, seed: int = 0,
                 collect_stats: bool = True, **router_params):
        super().__init__()
        self.group, self.hidden, self.experts_per_rank = group, hidden, experts_per_rank
        self.num_experts = experts_per_rank * group.size
        self.router = _locmoe.Router(name, k, capacity_factor, tau, locality_margin, renormalize, candidates,
                                     beta, capacity_floor, max_nodes, **router_params)
        self.coefs = {"load_balance": load_balance_coef, "z": z_loss_coef, "locality": locality_coef}
        self.collect_stats = collect_stats
        gen = torch.Generator().manual_seed(seed)
        std = hidden ** -0.5 if init_std is None else init_std
        self.gate = nn.Parameter(torch.randn(self.num_experts, hidden, generator=gen) * std)

    @property
    def name(self) -> str:
        return self.router.name

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Collective. x: float32 [T, H] on the CPU (this rank's tokens).

        stats (identical on every rank unless noted): "capacity" (slots per expert, 0 = none),
        "capacity_factor_capacity" (C_cf), "capacity_lower_bound" (LocMoE+'s C_lb, else 0),
        "capacity_smoothed", "kept_gate_mass" (kept / unconstrained top-k gate mass),
        "tokens_per_expert" (list [E] of accepted slots over the group), "max_tokens_per_expert",
        "mean_tokens_per_expert", "dropped_slots" (over the group), "copies" ([same rank, same node,
        other nodes] token copies over the group), "global_tokens", "step". With collect_stats=False
        only the router's own (allreduce-free) numbers are filled.
        """
        def check():
            xd = _host_f32(x, "x")
            if xd.dim() != 2 or xd.shape[1] != self.hidden:
                raise ValueError(f"x must be [T, {self.hidden}], got {list(xd.shape)}")

        gate = self.gate.detach().contiguous()
        why = _refusal(check)
        if why is not None:
            self._refuse(why)
        xd = _host_f32(x, "x")
        plan = self.router.route(self.group, xd, gate, self.experts_per_rank)
        logits = x @ self.gate.t()
        weight = _PlanWeight.apply(logits, plan, self.router.renormalize)
        expert = torch.from_numpy(plan.slots()[0])
        aux = {kind: _AuxLoss.apply(logits, plan, kind) for kind in AUX_LOSSES}
        aux_loss = logits.new_zeros(())
        for kind, c in self.coefs.items():
            if c:
                aux_loss = aux_loss + c * aux[kind]
        return RouterOutput(plan, expert, weight, logits, aux, aux_loss, self._stats(plan))

    def _refuse(self, why: str) -> None:
        """Refuses this rank's forward (its first collective is the routing) so that the peers
        fail at once naming this rank and `why`; raises ValueError(why)."""
        _refuse(why, lambda: self.router.route(self.group, torch.zeros(0, self.hidden), self.gate.detach().contiguous(),
                                               self.experts_per_rank))

    def _stats(self, plan) -> Dict[str, object]:
        s = self.router.last_stats()
        counts = plan.global_expert_counts()
        out = {
            "step": s["step"], "global_tokens": s["global_tokens"], "capacity": s["capacity"],
            "capacity_factor_capacity": s["capacity_factor_capacity"],
            "capacity_lower_bound": s["capacity_lower_bound"], "capacity_smoothed": s["capacity_smoothed"],
            "kept_gate_mass": s["kept_mass"] / s["topk_mass"] if s["topk_mass"] > 0 else 1.0,
            "tokens_per_expert": counts, "max_tokens_per_expert": max(counts) if counts else 0,
            "mean_tokens_per_expert": sum(counts) / len(counts) if counts else 0.0,
        }
        if self.collect_stats:
            import numpy as np
            v = np.array([plan.dropped_slots, *plan.copies], dtype=np.float64)
            self.group.allreduce_sum(v)
            out["dropped_slots"] = int(v[0])
            out["copies"] = [int(c) for c in v[1:]]
        return out


class MoELayer(nn.Module):
    """Router -> dispatch -> this rank's experts -> combine, as one module.

    Collective constructor (creates the Dispatcher at the first forward, when the router's slot
    count is known) and forward/backward. group: ``locmoe.Group``; hidden: H; ffn_hidden: F;
    experts_per_rank: L; max_tokens: the most tokens one forward of this rank may carry (T of
    ``x.reshape(-1, H)``); router: a locmoe router name; router_kwargs: the ``Router`` parameters
    (k, capacity_factor, tau, ..., the aux-loss coefficients);
    weight_grads_with_dispatch_backward: the combine weights' gradient travels back with the
    dispatch backward's rows (a training step is 1 metadata round and 4 data exchanges; False: 5,
    the weight gradient in an exchange of combine's backward). Expert e is
    ``w2[e] act(w1[e] x + b1[e]) + b2[e]`` with w1 [F, H], w2 [H, F]; this rank holds experts
    [rank L, (rank + 1) L) as ``w1`` [L, F, H], ``b1`` [L, F], ``w2`` [L, H, F], ``b2`` [L, H],
    initialized from (seed, e) so that any number of ranks holds the same experts.

    After each forward: ``aux_loss`` (0-d, differentiable), ``last_router`` (RouterOutput),
    ``last_stats`` (the router's stats plus this rank's dispatch: "internode_bytes_sent",
    "recv_rows", "accepted_slots" sent, "slots_received" by its experts, "dropped_tokens"), ``timings`` (seconds per stage of the last step: "route", "dispatch",
    "experts", "combine", and after backward "combine_backward", "dispatch_backward").
    """

    def __init__(self, group, hidden: int, ffn_hidden: int, experts_per_rank: int, max_tokens: int,
                 router: str = "locmoe+", activation=torch.nn.functional.gelu, seed: int = 0,
                 weight_grads_with_dispatch_backward: bool = True, **router_kwargs):
        super().__init__()
        self.weight_grads_with_dispatch_backward = weight_grads_with_dispatch_backward
        self.group, self.hidden, self.ffn_hidden = group, hidden, ffn_hidden
        self.experts_per_rank, self.max_tokens = experts_per_rank, max_tokens
        self.activation = activation
        self.router = Router(group, hidden, experts_per_rank, name=router, seed=seed, **router_kwargs)
        w1, b1, w2, b2 = [], [], [], []
        for l in range(experts_per_rank):
            p = MoELayer.init_expert(seed, group.rank * experts_per_rank + l, hidden, ffn_hidden)
            for dst, src in zip((w1, b1, w2, b2), p):
                dst.append(src)
        self.w1 = nn.Parameter(torch.stack(w1))
        self.b1 = nn.Parameter(torch.stack(b1))
        self.w2 = nn.Parameter(torch.stack(w2))
        self.b2 = nn.Parameter(torch.stack(b2))
        self.dispatcher = None
        self.aux_loss = None
        self.last_router = None
        self.last_stats: Dict[str, object] = {}
        self.timings: Dict[str, float] = {}

    @staticmethod
    def init_expert(seed: int, expert: int, hidden: int, ffn_hidden: int):
        """(w1 [F, H], b1 [F], w2 [H, F], b2 [H]) of global expert `expert` (what every rank and a
        single-process reference derive from the same seed)."""
        g = torch.Generator().manual_seed(1_000_003 * (seed + 1) + expert)
        w1 = torch.randn(ffn_hidden, hidden, generator=g) * hidden ** -0.5
        w2 = torch.randn(hidden, ffn_hidden, generator=g) * ffn_hidden ** -0.5
        b1 = torch.randn(ffn_hidden, generator=g) * 0.02
        b2 = torch.randn(hidden, generator=g) * 0.02
        return w1, b1, w2, b2

    def experts(self, expert_in: torch.Tensor, offsets, counts) -> torch.Tensor:
        """Local. Each local expert on its segment of expert_in [M, H]; padding rows give 0."""
        outs = []
        for l in range(self.experts_per_rank):
            lo, n = int(offsets[l]), int(counts[l])
            seg = expert_in[lo:lo + n]
            h = self.activation(torch.addmm(self.b1[l], seg, self.w1[l].t()))
            outs.append(torch.addmm(self.b2[l], h, self.w2[l].t()))
            pad = int(offsets[l + 1]) - lo - n
            if pad:
                outs.append(expert_in.new_zeros((pad, self.hidden)))
        return torch.cat(outs) if outs else expert_in.new_zeros((0, self.hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Collective. x: float32 [..., H] on the CPU -> float32 [..., H]."""
        def check():
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
            if x.shape[-1] != self.hidden:
                raise ValueError(f"x has {x.shape[-1]} features in its last dimension, expected hidden {self.hidden}")
            if x.numel() // self.hidden > self.max_tokens:
                raise ValueError(f"x has {x.numel() // self.hidden} tokens, more than max_tokens {self.max_tokens} "
                                 "of this MoELayer")

        why = _refusal(check)
        if why is not None:
            self.router._refuse(why)  # the forward's first collective is the routing
        shape = x.shape
        x2 = x.reshape(-1, self.hidden)
        self.timings = t = {}
        t0 = time.perf_counter()
        r = self.router(x2)
        _stage(t, "route", t0)
        if self.dispatcher is None:
            self.dispatcher = _locmoe.Dispatcher(self.group, experts_per_rank=self.experts_per_rank,
                                                 hidden=self.hidden, max_tokens=self.max_tokens,
                                                 top_k=r.plan.k,
                                                 weight_grads_with_dispatch_backward=self.weight_grads_with_dispatch_backward)
        expert_in, handle = dispatch(x2, self.dispatcher, r.plan, t, weight=r.weight)
        t0 = time.perf_counter()
        expert_out = self.experts(expert_in, handle.expert_offsets, handle.expert_counts)
        _stage(t, "experts", t0)
        out = combine(expert_out, r.weight, self.dispatcher, handle, t)
        self.aux_loss, self.last_router = r.aux_loss, r
        self.last_stats = dict(r.stats, internode_bytes_sent=handle.internode_bytes_sent,
                               recv_rows=handle.recv_rows, accepted_slots=handle.accepted_slots,
                               slots_received=handle.slots_received, dropped_tokens=handle.dropped_tokens)
        return out.reshape(shape)
