"""locmoe.torch against a pure-PyTorch single-process reference (common.reference_moe).

Runs as one process (pytest or `python test_torch_moe.py`), under mpirun (every rank runs every
test in the same order: each test is collective) and under torchrun. Each rank checks its own
tokens: the forward output, d x and d gate (this rank's share) directly; the experts' gradients
after summing the reference's over the group (an expert's gradient collects every rank's tokens).
"""
import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import locmoe  # noqa: E402
import locmoe.torch as lt  # noqa: E402

H, F, L, T = 16, 24, 2, 20
ROUTERS = ["locmoe+", "gshard", "dropless", "switch", "expert-choice", "node-limited", "locmoe", "hash"]


def rank_tokens(g, T, seed, requires_grad=True):
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(seed * 131 + g.rank))
    return x.requires_grad_(requires_grad)


class LaunchedAsExpected(unittest.TestCase):
    def test_the_group_spans_the_nodes_the_launcher_made(self):
        # TORCH_TESTS_NODES: set by the ctest registration (tests/torch/CMakeLists.txt).
        g = common.group()
        want = int(os.environ.get("TORCH_TESTS_NODES", g.num_nodes))
        self.assertEqual(g.num_nodes, want)
        self.assertEqual([g.node_of(r) for r in range(g.size)], sorted(g.node_of(r) for r in range(g.size)))


class MoELayerMatchesReference(unittest.TestCase):
    def setUp(self):
        self.g = common.group()
        self.E = L * self.g.size

    def close(self, name, got, want, tol=2e-5):
        err = (got - want).abs().max().item() if got.numel() else 0.0
        scale = max(1.0, want.abs().max().item() if want.numel() else 0.0)
        self.assertLessEqual(err, tol * scale, f"rank {self.g.rank}: {name} max abs err {err:.3e}")

    def check_layer(self, router, seed=3, T=T, **kw):
        g = self.g
        layer = lt.MoELayer(g, H, F, L, max_tokens=64, router=router, seed=seed, k=2, capacity_factor=1.0, **kw)
        x = rank_tokens(g, T, seed)
        grad = torch.randn(T, H, generator=torch.Generator().manual_seed(900 + g.rank))
        out = layer(x)
        (out * grad).sum().backward()
        r = layer.last_router

        xr = x.detach().clone().requires_grad_(True)
        gate = layer.router.gate.detach().clone().requires_grad_(True)
        params = common.all_experts(seed, self.E, H, F)
        # switch combines with the raw probability (Switch Transformer); the others renormalize.
        ref, ref_w = common.reference_moe(xr, gate, params, r.expert, renormalize=router != "switch")
        (ref * grad).sum().backward()
        self.close(f"{router} combine weights", r.weight.detach(), ref_w.detach())
        self.close(f"{router} forward", out.detach(), ref.detach())
        self.close(f"{router} d x", x.grad, xr.grad)
        self.close(f"{router} d gate", layer.router.gate.grad, gate.grad)
        lo = g.rank * L
        for name, mine, full in zip(("w1", "b1", "w2", "b2"), (layer.w1, layer.b1, layer.w2, layer.b2), params):
            self.close(f"{router} d {name}", mine.grad, common.allreduce(g, full.grad)[lo:lo + L])
        return layer

    def test_every_router_forward_and_gradients(self):
        for router in ROUTERS:
            with self.subTest(router=router):
                self.check_layer(router)

    def test_weight_gradients_in_an_exchange_of_their_own(self):
        # MoELayer's default sends the weights' gradient behind the dispatch backward's rows; the
        # other mode (combine's backward returns it) must give the same numbers.
        for router in ("locmoe+", "gshard"):
            with self.subTest(router=router):
                self.check_layer(router, weight_grads_with_dispatch_backward=False)

    def test_a_rank_without_tokens(self):
        # Rank 0 brings no tokens; every rank still takes part in every collective.
        self.check_layer("gshard", T=0 if self.g.rank == 0 else T)

    def test_two_forwards_before_their_backwards(self):
        # Gradient accumulation: each forward keeps its own handle, so the first backward uses the
        # first forward's layout (different tokens, different plan).
        g = self.g
        layer = lt.MoELayer(g, H, F, L, max_tokens=64, router="gshard", seed=5, k=2)
        x1, x2 = rank_tokens(g, T, 11), rank_tokens(g, T - 3, 12)
        y1 = layer(x1)
        e1 = layer.last_router.expert
        y2 = layer(x2)
        e2 = layer.last_router.expert
        (y1.sum() + (2 * y2).sum()).backward()
        xr1, xr2 = x1.detach().clone().requires_grad_(True), x2.detach().clone().requires_grad_(True)
        gate = layer.router.gate.detach().clone().requires_grad_(True)
        params = common.all_experts(5, self.E, H, F)
        r1, _ = common.reference_moe(xr1, gate, params, e1)
        r2, _ = common.reference_moe(xr2, gate, params, e2)
        (r1.sum() + (2 * r2).sum()).backward()
        self.close("d x1", x1.grad, xr1.grad)
        self.close("d x2", x2.grad, xr2.grad)
        self.close("d gate", layer.router.gate.grad, gate.grad)
        self.close("d w1", layer.w1.grad, common.allreduce(g, params[0].grad)[g.rank * L:(g.rank + 1) * L])

    def test_in_a_transformer_block_with_3d_input(self):
        g = self.g
        torch.manual_seed(0)
        moe = lt.MoELayer(g, H, F, L, max_tokens=64, router="locmoe+", seed=2)
        block = torch.nn.TransformerEncoderLayer(H, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        x = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(g.rank))
        y = moe(block(x))
        self.assertEqual(tuple(y.shape), (2, 5, H))
        y.sum().backward()
        self.assertTrue(all(p.grad is not None for p in block.parameters()))


class UserRoutingWithInt32AndInt64Ids(unittest.TestCase):
    def test_topk_ids_of_either_width_and_weight_gradients(self):
        g = common.group()
        E = L * g.size
        gen = torch.Generator().manual_seed(4)
        gate0 = torch.randn(E, H, generator=gen) * 0.3
        params0 = common.all_experts(9, E, H, F)
        results = []
        for dtype in (torch.int64, torch.int32):
            d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=2)
            x = rank_tokens(g, T, 21)
            gate = gate0.clone().requires_grad_(True)
            p = torch.softmax(x @ gate.t(), dim=-1)
            w, idx = p.topk(2, dim=-1)
            self.assertEqual(idx.dtype, torch.int64)
            plan = lt.plan_from_topk(g, idx.to(dtype), w, L)
            expert_in, h = lt.dispatch(x, d, plan)
            mine = [t[g.rank * L:(g.rank + 1) * L].detach().clone().requires_grad_(True) for t in params0]
            offs, cnt = h.expert_offsets, h.expert_counts
            outs = []
            for l in range(L):
                seg = expert_in[offs[l]:offs[l] + cnt[l]]
                hh = torch.nn.functional.gelu(seg @ mine[0][l].t() + mine[1][l])
                outs.append(hh @ mine[2][l].t() + mine[3][l])
            out = lt.combine(torch.cat(outs), w, d, h)
            out.square().sum().backward()
            results.append((out.detach(), x.grad, gate.grad, mine[0].grad))

            # Reference: the same ids, raw (not renormalized) top-k probabilities.
            xr = x.detach().clone().requires_grad_(True)
            gr = gate0.clone().requires_grad_(True)
            pr = [t.detach().clone().requires_grad_(True) for t in params0]
            ref, _ = common.reference_moe(xr, gr, pr, idx, renormalize=False)
            ref.square().sum().backward()
            for name, a, b in (("forward", out.detach(), ref.detach()), ("d x", x.grad, xr.grad),
                               ("d gate", gate.grad, gr.grad),
                               ("d w1", mine[0].grad, common.allreduce(g, pr[0].grad)[g.rank * L:(g.rank + 1) * L])):
                err = (a - b).abs().max().item()
                self.assertLess(err, 1e-4, f"{dtype} {name}: {err}")
        for a, b in zip(*results):
            self.assertTrue(torch.equal(a, b))

    def test_bad_ids_and_inputs_are_named(self):
        g = common.group()
        E = L * g.size
        w = torch.ones(3, 2)
        with self.assertRaisesRegex(ValueError, f"expert id {E} is outside"):
            lt.plan_from_topk(g, torch.tensor([[0, E], [1, 0], [0, 1]]), w, L)
        with self.assertRaisesRegex(ValueError, "int32 or int64"):
            lt.plan_from_topk(g, torch.zeros(3, 2), w, L)
        layer = lt.MoELayer(g, H, F, L, max_tokens=4, router="gshard")
        with self.assertRaisesRegex(ValueError, "more than max_tokens 4"):
            layer(torch.zeros(5, H))
        with self.assertRaisesRegex(ValueError, "float32"):
            layer(torch.zeros(2, H, dtype=torch.float64))
        with self.assertRaisesRegex(ValueError, "expected hidden 16"):
            layer(torch.zeros(2, H + 1))


class HandlesAndArguments(unittest.TestCase):
    def setUp(self):
        self.g = common.group()
        self.E = L * self.g.size
        self.d = locmoe.Dispatcher(self.g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=2)

    def plan(self, seed):
        ids = torch.randint(0, self.E, (T, 1), generator=torch.Generator().manual_seed(seed * 7 + self.g.rank))
        ids = torch.cat([ids, (ids + 1) % self.E], dim=1)  # two distinct experts per token
        return lt.plan_from_topk(self.g, ids, torch.full((T, 2), 0.5), L)

    def test_a_handle_dispatched_again_before_backward_is_refused(self):
        # A second forward reusing the first forward's handle (one handle per layer, as code copied
        # from an older example keeps) would give the first backward the second plan's layouts.
        expert_in, h = lt.dispatch(rank_tokens(self.g, T, 51), self.d, self.plan(1))
        y = expert_in * 2
        out = lt.combine(y, torch.full((T, 2), 0.5, requires_grad=True), self.d, h)
        self.d.dispatch(rank_tokens(self.g, T, 52, requires_grad=False), self.plan(2), h)
        with self.assertRaisesRegex(RuntimeError, "combine backward: the handle of this forward's dispatch was "
                                                  "used by 1 later dispatch"):
            out.sum().backward()
        with self.assertRaisesRegex(RuntimeError, "dispatch backward: .* used by 1 later dispatch"):
            expert_in.sum().backward()

    def test_tensor_outputs_are_never_converted(self):
        g, d = self.g, self.d
        with self.assertRaisesRegex(ValueError, r"values: expected a float64 .* got float32 \[3\]"):
            g.allreduce_sum(torch.ones(3))  # float32: would have been summed into a temporary copy
        with self.assertRaisesRegex(ValueError, r"values: .*not contiguous"):
            g.allreduce_sum(torch.ones(3, 2, dtype=torch.float64).t())
        v = torch.ones(3, 2, dtype=torch.float64)
        g.allreduce_sum(v)
        self.assertTrue(torch.equal(v, torch.full((3, 2), float(g.size), dtype=torch.float64)))
        plan, h = self.plan(3), d.make_handle()
        x = rank_tokens(g, T, 53)
        buf = torch.zeros(d.max_expert_rows, H)
        with self.assertRaisesRegex(ValueError, r"expert_in requires grad"):
            d.dispatch_into(x.detach(), plan, h, buf.clone().requires_grad_(True))
        d.dispatch_into(x, plan, h, buf)  # an input that requires grad is only read: accepted
        with self.assertRaisesRegex(ValueError, r"expert_in is not contiguous"):
            d.dispatch_into(x.detach(), plan, h, torch.zeros(2 * d.max_expert_rows, H)[::2])
        with self.assertRaisesRegex(ValueError, r"expert_in has dtype bfloat16"):
            d.dispatch_into(x.detach(), plan, h, buf.bfloat16())
        rows = d.dispatch_into(x.detach(), plan, h, buf)
        with self.assertRaisesRegex(ValueError, r"out is not contiguous"):
            d.combine_into(buf[:rows], h, torch.zeros(H, T).t())
        out = torch.zeros(T, H)
        d.combine_into(buf[:rows], h, out)
        self.assertTrue(torch.allclose(out, x.detach(), atol=1e-6))  # weights 0.5 + 0.5, identity experts


class ExchangesPerStep(unittest.TestCase):
    """Issue 14's budget, counted on the dispatcher's communicator: a training step (forward and
    backward of one MoE layer) negotiates once and moves data 4 times (dispatch, combine, combine
    backward, dispatch backward with the weights' gradient behind its rows), 5 when the weights'
    gradient has an exchange of its own."""

    def step_counts(self, **kw):
        g = common.group()
        layer = lt.MoELayer(g, H, F, L, max_tokens=64, router="locmoe+", seed=7, **kw)
        counts = []
        for step in range(3):
            x = rank_tokens(g, T, 60 + step)
            before = layer.dispatcher.exchange_counters() if layer.dispatcher else None
            layer(x).square().sum().backward()
            after = layer.dispatcher.exchange_counters()
            if before is not None:
                counts.append((after[0] - before[0], after[1] - before[1]))
        return counts

    def test_one_metadata_round_and_four_data_exchanges(self):
        self.assertEqual(self.step_counts(), [(1, 4), (1, 4)])

    def test_five_with_the_weight_gradients_apart(self):
        self.assertEqual(self.step_counts(weight_grads_with_dispatch_backward=False), [(1, 5), (1, 5)])

    def test_both_modes_give_the_same_gradients_to_user_weights(self):
        g = common.group()
        E = L * g.size
        gate0 = torch.randn(E, H, generator=torch.Generator().manual_seed(8)) * 0.3
        got = []
        for with_dw in (True, False):
            d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=2,
                                  weight_grads_with_dispatch_backward=with_dw)
            self.assertEqual(d.weight_grads_with_dispatch_backward, with_dw)
            x = rank_tokens(g, T, 71)
            gate = gate0.clone().requires_grad_(True)
            w, idx = torch.softmax(x @ gate.t(), dim=-1).topk(2, dim=-1)
            plan = lt.plan_from_topk(g, idx, w, L)
            expert_in, h = lt.dispatch(x, d, plan, weight=w)
            out = lt.combine(torch.tanh(expert_in) * 3, w, d, h)
            out.square().sum().backward()
            got.append((out.detach(), x.grad, gate.grad))
        for name, a, b in zip(("forward", "d x", "d gate"), *got):
            self.assertTrue(torch.equal(a, b), f"{name}: max diff {(a - b).abs().max().item()}")

    def test_the_weights_must_reach_dispatch(self):
        g = common.group()
        E = L * g.size
        d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=2,
                              weight_grads_with_dispatch_backward=True)
        ids = torch.randint(0, E, (T, 2), generator=torch.Generator().manual_seed(9))
        w = torch.full((T, 2), 0.5, requires_grad=True)
        plan = lt.plan_from_topk(g, ids, w, L)
        # Refused before the dispatch's collective, on every rank alike (same arguments).
        with self.assertRaisesRegex(ValueError, "dispatch needs the combine weights"):
            lt.dispatch(rank_tokens(g, T, 72), d, plan)
        with self.assertRaisesRegex(ValueError, r"weight has shape \(20, 1\), expected \[20, 2\]"):
            lt.dispatch(rank_tokens(g, T, 72), d, plan, weight=w[:, :1])
        expert_in, h = lt.dispatch(rank_tokens(g, T, 72), d, plan, weight=w)
        # combine is local up to its exchange: a wrong weight tensor is refused before it on every
        # rank, then the right one completes the collective.
        with self.assertRaisesRegex(ValueError, "weight must be the tensor given to this handle's dispatch"):
            lt.combine(expert_in, w.detach().clone(), d, h)
        out = lt.combine(expert_in, w, d, h)
        with self.assertRaisesRegex(ValueError, "combined already"):
            lt.combine(expert_in, w, d, h)
        out.sum().backward()
        self.assertEqual(tuple(w.grad.shape), (T, 2))


class RouterStatsAndAuxLosses(unittest.TestCase):
    def test_stats_against_the_plans_of_every_rank(self):
        g = common.group()
        E = L * g.size
        for name in ("gshard", "locmoe+", "dropless"):
            with self.subTest(router=name):
                router = lt.Router(g, H, L, name=name, k=2, capacity_factor=1.0, seed=1)
                x = rank_tokens(g, T, 31, requires_grad=False)
                r = router(x)
                ids = r.expert[r.expert >= 0].long()
                counts = common.allreduce(g, torch.bincount(ids, minlength=E).double())
                self.assertEqual(r.stats["tokens_per_expert"], [int(c) for c in counts])
                self.assertEqual(r.stats["max_tokens_per_expert"], int(counts.max()))
                self.assertAlmostEqual(r.stats["mean_tokens_per_expert"], float(counts.mean()))
                # Copies: one per (token, distinct destination rank), classified by link.
                copies = torch.zeros(3, dtype=torch.float64)
                me, node = g.rank, g.node_of(g.rank)
                for row in r.expert.tolist():
                    for dest in {e // L for e in row if e >= 0}:
                        copies[0 if dest == me else 1 if g.node_of(dest) == node else 2] += 1
                self.assertEqual(r.stats["copies"], [int(c) for c in common.allreduce(g, copies)])
                if name == "dropless":
                    self.assertEqual(r.stats["dropped_slots"], 0)
                    self.assertEqual(r.stats["capacity"], 0)
                else:
                    self.assertLessEqual(r.stats["max_tokens_per_expert"], r.stats["capacity"])
                # Kept gate mass: softmax mass of the accepted slots over the unconstrained top-2.
                p = torch.softmax(x.double() @ router.gate.detach().double().t(), dim=-1)
                kept = (p.gather(1, r.expert.clamp(min=0).long()) * (r.expert >= 0)).sum()
                top = p.topk(2, dim=-1).values.sum()
                tot = common.allreduce(g, torch.stack([kept, top]))
                self.assertAlmostEqual(r.stats["kept_gate_mass"], float(tot[0] / tot[1]), places=4)
                if name == "locmoe+":
                    self.assertGreater(r.stats["capacity_lower_bound"], 0)
                    self.assertLessEqual(r.stats["capacity"], r.stats["capacity_factor_capacity"])

    def test_aux_losses_and_their_gradients(self):
        g = common.group()
        E = L * g.size
        router = lt.Router(g, H, L, name="gshard", k=2, seed=2, load_balance_coef=0.5, z_loss_coef=0.25,
                           locality_coef=2.0)
        x = rank_tokens(g, T, 41)
        r = router(x)
        r.aux_loss.backward()
        # The same losses in plain PyTorch (formulas of locmoe.h), differentiated by autograd.
        xr = x.detach().clone().requires_grad_(True)
        gate = router.gate.detach().clone().requires_grad_(True)
        z = xr @ gate.t()
        p = torch.softmax(z, dim=-1)
        ids = r.expert[r.expert >= 0].long()
        f = torch.bincount(ids, minlength=E).float() / (T * 2)
        lb = E * (f * p.mean(0)).sum()
        zl = torch.logsumexp(z, dim=-1).square().mean()
        own = torch.tensor([g.node_of(e // L) == g.node_of(g.rank) for e in range(E)])
        loc = -torch.log((p * own).sum(-1)).mean()
        for name, want in (("load_balance", lb), ("z", zl), ("locality", loc)):
            self.assertAlmostEqual(float(r.aux[name].detach()), float(want.detach()), places=4, msg=name)
        (0.5 * lb + 0.25 * zl + 2.0 * loc).backward()
        for name, a, b in (("d x", x.grad, xr.grad), ("d gate", router.gate.grad, gate.grad)):
            err = (a - b).abs().max().item()
            self.assertLess(err, 2e-5, f"{name}: {err}")


if __name__ == "__main__":
    unittest.main()
