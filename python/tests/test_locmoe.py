"""Tests of the locmoe Python module with numpy on the CPU (pytest or unittest).

Run as one process, or under mpirun (every rank runs every test; each test is collective). The
references are computed from this rank's own plan: expert e is y = (1 + e/8) * x, so
out[t] = sum_j w[t,j] (1 + e_j/8) x[t], d w[t,j] = <g[t], y_j(x[t])>, d x[t] = sum_j w (1 + e_j/8) g[t].
"""
import unittest

import numpy as np

import locmoe

GROUP = None


def group():
    global GROUP
    if GROUP is None:
        GROUP = locmoe.Group()
    return GROUP


def expert_scale(e):
    return 1.0 + e / 8.0


def random_plan(rng, T, k, E, p_drop=0.25):
    expert = np.full((T, k), -1, dtype=np.int32)
    weight = np.zeros((T, k), dtype=np.float32)
    dropped = np.zeros((T, k), dtype=np.uint8)
    for t in range(T):
        chosen = rng.permutation(E)[: min(k, E)]
        n = 0
        for j, e in enumerate(chosen):
            if j > 0 and rng.random() < p_drop:
                continue
            expert[t, n] = e
            weight[t, n] = 0.1 + rng.random()
            n += 1
        dropped[t, n:len(chosen)] = 1
    return expert, weight, dropped


def run_layer(d, g, plan_arrays, x, grad, L):
    """dispatch -> experts -> combine -> combine_backward -> experts' backward -> dispatch_backward."""
    expert, weight, dropped = plan_arrays
    plan = locmoe.Plan(g, expert, weight, experts_per_rank=L, slot_dropped=dropped)
    h = d.make_handle()
    ein = d.dispatch(x, plan, h)
    offs, counts = h.expert_offsets, h.expert_counts
    y = np.zeros_like(ein)
    scale = np.zeros((ein.shape[0], 1), dtype=np.float32)
    for l in range(L):
        e = g.rank * L + l
        rows = slice(offs[l], offs[l] + counts[l])
        scale[rows] = expert_scale(e)
    y = ein * scale
    out = d.combine(y, h)
    gy, gw = d.combine_backward(grad, h, y)
    gx = d.dispatch_backward(np.ascontiguousarray(gy * scale), h)
    return plan, h, ein, out, gw, gx


class LocmoeTest(unittest.TestCase):
    def setUp(self):
        self.g = group()
        self.rng = np.random.default_rng(17 + self.g.rank)

    def make(self, T, H=8, k=2, L=2, align=1, max_tokens=None):
        max_tokens = max_tokens if max_tokens is not None else max(T, 1)
        d = locmoe.Dispatcher(self.g, experts_per_rank=L, hidden=H, max_tokens=max_tokens, top_k=k,
                              align=align, max_recv_rows=64 * self.g.size)
        return d

    def check_reference(self, plan_arrays, x, grad, out, gw, gx):
        expert, weight, _ = plan_arrays
        T, k = expert.shape
        ref_out = np.zeros_like(x, dtype=np.float64)
        ref_gx = np.zeros_like(x, dtype=np.float64)
        ref_gw = np.zeros((T, k))
        for t in range(T):
            for j in range(k):
                e = expert[t, j]
                if e < 0:
                    continue
                y = expert_scale(e) * x[t].astype(np.float64)
                ref_out[t] += weight[t, j] * y
                ref_gx[t] += weight[t, j] * expert_scale(e) * grad[t]
                ref_gw[t, j] = np.dot(grad[t], y)
        np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gw, ref_gw, rtol=1e-5, atol=1e-4)

    def test_forward_backward_match_reference(self):
        T, H, k, L = 7 + self.g.rank, 8, 2, 2
        d = self.make(T, H, k, L, align=4, max_tokens=16)
        arrays = random_plan(self.rng, T, k, L * self.g.size)
        x = self.rng.standard_normal((T, H)).astype(np.float32)
        grad = self.rng.standard_normal((T, H)).astype(np.float32)
        plan, h, ein, out, gw, gx = run_layer(d, self.g, arrays, x, grad, L)
        self.assertEqual(h.expert_offsets[-1] % 4, 0)
        self.assertEqual(sum(h.expert_counts), h.slots_received)
        self.assertEqual(h.dropped_slots, int(arrays[2].sum()))
        self.check_reference(arrays, x, grad, out, gw, gx)
        # Conservation over the group: accepted slots sent = slots received.
        tot = np.array([h.accepted_slots, h.slots_received], dtype=np.float64)
        self.g.allreduce_sum(tot)
        self.assertEqual(tot[0], tot[1])

    def test_identity_unit_weights_return_input(self):
        T, H, k, L = 6, 5, 1, 3
        d = self.make(T, H, k, L)
        expert = self.rng.integers(0, L * self.g.size, size=(T, k)).astype(np.int32)
        weight = np.ones((T, k), dtype=np.float32)
        plan = locmoe.Plan(self.g, expert, weight, experts_per_rank=L)
        h = d.make_handle()
        x = self.rng.standard_normal((T, H)).astype(np.float32)
        out = d.combine(d.dispatch(x, plan, h), h)
        np.testing.assert_array_equal(out, x)

    def test_bf16_bits_round_trip(self):
        T, H, k, L = 4, 16, 2, 1
        d = locmoe.Dispatcher(self.g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=k, dtype="bfloat16")
        E = L * self.g.size
        expert = np.full((T, k), -1, dtype=np.int32)
        expert[:, 0] = self.rng.integers(0, E, size=T)
        weight = (expert >= 0).astype(np.float32)
        plan = locmoe.Plan(self.g, expert, weight, experts_per_rank=L)
        h = d.make_handle()
        xf = self.rng.integers(-8, 8, size=(T, H)).astype(np.float32)  # exact in bf16
        bits = (xf.view(np.uint32) >> 16).astype(np.uint16)
        out = d.combine(d.dispatch(bits, plan, h), h)
        self.assertEqual(out.dtype, np.uint16)
        np.testing.assert_array_equal(out, bits)

    def test_rank_without_tokens(self):
        T = 0 if self.g.rank == 0 else 5
        H, k, L = 4, 2, 2
        d = self.make(T, H, k, L, max_tokens=8)
        arrays = random_plan(self.rng, T, k, L * self.g.size)
        x = self.rng.standard_normal((T, H)).astype(np.float32)
        grad = self.rng.standard_normal((T, H)).astype(np.float32)
        _, _, _, out, gw, gx = run_layer(d, self.g, arrays, x, grad, L)
        self.assertEqual(out.shape, (T, H))
        self.check_reference(arrays, x, grad, out, gw, gx)

    def test_all_dropped(self):
        T, H, k, L = 3, 4, 2, 1
        d = self.make(T, H, k, L)
        expert = np.full((T, k), -1, dtype=np.int32)
        weight = np.zeros((T, k), dtype=np.float32)
        plan = locmoe.Plan(self.g, expert, weight, experts_per_rank=L, slot_dropped=np.ones((T, k), np.uint8))
        self.assertEqual(plan.dropped_tokens, T)
        h = d.make_handle()
        out = d.combine(d.dispatch(np.ones((T, H), np.float32), plan, h), h)
        np.testing.assert_array_equal(out, np.zeros((T, H), np.float32))
        self.assertEqual(h.dropped_slots, T * k)

    def test_bad_arrays_raise_value_error(self):
        d = self.make(4, 8, 2, 2)
        expert = np.zeros((4, 2), dtype=np.int32)
        expert[:, 1] = -1
        plan = locmoe.Plan(self.g, expert, np.ones((4, 2), np.float32), experts_per_rank=2)
        h = d.make_handle()
        buf = np.empty((d.max_expert_rows, 8), np.float32)
        with self.assertRaises(ValueError):
            d.dispatch_into(np.zeros((4, 8), np.float64), plan, h, buf)  # wrong dtype
        with self.assertRaises(ValueError):
            d.dispatch_into(np.zeros((4, 7), np.float32), plan, h, buf)  # wrong hidden
        with self.assertRaises(ValueError):
            d.dispatch_into(np.zeros((3, 8), np.float32), plan, h, buf)  # wrong token count
        with self.assertRaises(locmoe.Error):
            d.combine(buf, h)  # no dispatch on the handle yet
        with self.assertRaises(ValueError):
            locmoe.Dispatcher(self.g, experts_per_rank=2, hidden=8, max_tokens=4, top_k=2, device="tpu")

    def test_router_plan_identity_experts_return_input(self):
        # Renormalized weights sum to 1 over a token's kept experts: identity experts give back x.
        T, H, k, L = 16, 8, 2, 2
        E = L * self.g.size
        gate = np.random.default_rng(3).standard_normal((E, H)).astype(np.float32)  # same on all ranks
        x = self.rng.standard_normal((T, H)).astype(np.float32)
        router = locmoe.Router("locmoe+", k=k)
        plan = router.route(self.g, x, gate, experts_per_rank=L)
        expert, weight = plan.slots()
        self.assertEqual(expert.shape, (T, plan.k))
        kept = (expert >= 0).any(axis=1)
        np.testing.assert_allclose(weight.sum(axis=1)[kept], 1.0, rtol=1e-5)
        d = locmoe.Dispatcher(self.g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=plan.k)
        h = d.make_handle()
        out = d.combine(d.dispatch(x, plan, h), h)
        np.testing.assert_allclose(out, np.where(kept[:, None], x, 0.0), rtol=1e-5, atol=1e-6)

    def test_weight_backward_matches_finite_differences(self):
        T, H, k, L = 6, 4, 2, 2
        E = L * self.g.size
        gate = np.random.default_rng(4).standard_normal((E, H)).astype(np.float32)
        x = self.rng.standard_normal((T, H)).astype(np.float32)
        plan = locmoe.Router("gshard", k=k, capacity_factor=4.0).route(self.g, x, gate, experts_per_rank=L)
        expert, _ = plan.slots()
        z = (x @ gate.T).astype(np.float32)
        dw = self.rng.standard_normal((T, plan.k)).astype(np.float32)
        dz = np.zeros((T, E), np.float32)
        plan.weight_backward(z, dw, True, dz)

        def loss(zz):  # sum_t,j dw[t,j] * renormalized softmax over the token's accepted experts
            total = 0.0
            for t in range(T):
                acc = [e for e in expert[t] if e >= 0]
                if not acc:
                    continue
                ex = np.exp(zz[t, acc] - zz[t, acc].max())
                w = ex / ex.sum()
                for j, e in enumerate(expert[t]):
                    if e >= 0:
                        total += dw[t, j] * w[acc.index(e)]
            return total

        zd = z.astype(np.float64)
        eps = 1e-4
        for t in range(T):
            for e in range(E):
                zp, zm = zd.copy(), zd.copy()
                zp[t, e] += eps
                zm[t, e] -= eps
                fd = (loss(zp) - loss(zm)) / (2 * eps)
                self.assertAlmostEqual(dz[t, e], fd, delta=1e-3 * (1 + abs(fd)))

    def test_mismatched_hidden_is_clear_error(self):
        if self.g.size < 2:
            self.skipTest("needs 2 ranks")
        H = 16 if self.g.rank == 1 else 8
        with self.assertRaises(locmoe.Error) as ctx:
            locmoe.Dispatcher(self.g, experts_per_rank=1, hidden=H, max_tokens=4, top_k=1)
        self.assertIn("hidden size", str(ctx.exception))


class RouterConventions(unittest.TestCase):
    """The routing conventions of today's trainers reach the router from Python (issue 15), each
    checked against its definition computed here from the logits x gate^T; collective like the
    rest (every rank routes its own tokens)."""

    def setUp(self):
        self.g = group()
        self.T, self.H, self.k, self.L = 32, 8, 2, 2
        self.E = self.L * self.g.size
        self.x = np.random.default_rng(40 + self.g.rank).standard_normal((self.T, self.H)).astype(np.float32)
        self.gate = np.random.default_rng(41).standard_normal((self.E, self.H)).astype(np.float32)
        z = self.x.astype(np.float64) @ self.gate.astype(np.float64).T
        self.p = np.exp(z - z.max(axis=1, keepdims=True))
        self.p /= self.p.sum(axis=1, keepdims=True)

    def route(self, name, **kw):
        router = locmoe.Router(name, k=self.k, **kw)
        return router, router.route(self.g, self.x, self.gate, self.L)

    def test_normalize_before_drop_divides_by_the_top_k_mass(self):
        # Weight = p / (sum of p over the token's k most probable experts), dropped or not.
        _, plan = self.route("gshard", capacity_factor=0.5, normalize_before_drop=True)
        expert, weight = plan.slots()
        topk = np.sort(self.p, axis=1)[:, -self.k:].sum(axis=1)
        kept = expert >= 0
        t_idx = np.nonzero(kept)[0]
        np.testing.assert_allclose(weight[kept], self.p[t_idx, expert[kept]] / topk[t_idx], rtol=1e-5)
        # The default divides by the kept mass: every token with a kept slot sums to 1.
        _, after = self.route("gshard", capacity_factor=0.5)
        e_a, w_a = after.slots()
        np.testing.assert_array_equal(e_a, expert)
        any_kept = kept.any(axis=1)
        np.testing.assert_allclose(w_a[any_kept].sum(axis=1), 1.0, rtol=1e-5)

    def test_min_capacity_raises_the_capacity(self):
        router, plan = self.route("gshard", capacity_factor=0.25)
        c_cf = int(np.ceil(0.25 * self.k * self.T * self.g.size / self.E))
        self.assertEqual(router.last_stats()["capacity"], c_cf)
        router, plan = self.route("gshard", capacity_factor=0.25, min_capacity=c_cf + 3)
        self.assertEqual(router.last_stats()["capacity"], c_cf + 3)
        counts = plan.global_expert_counts()
        self.assertLessEqual(max(counts), c_cf + 3)
        self.assertGreater(max(counts), c_cf, "min_capacity let no expert take more: the test would not see it")

    def test_opt_tau_capacity_is_locmoe_plus_lower_bound(self):
        # locmoe-opt's capacity by LocMoE+'s rule: the smallest C in [1, C_cf] at which the tokens'
        # top-k experts by p, each expert keeping its C most probable, keep tau of the top-k mass,
        # over the whole group (the ranks' p gathered here through an allreduce of zero-padded rows).
        R, T, E, k, tau = self.g.size, self.T, self.E, self.k, 0.8
        allp = np.zeros((R * T, E))
        allp[self.g.rank * T:(self.g.rank + 1) * T] = self.p
        self.g.allreduce_sum(allp)
        top = np.argsort(-allp, axis=1, kind="stable")[:, :k]
        per_expert = [np.sort([allp[t, e] for t in range(R * T) for e in top[t] if e == ex])[::-1] for ex in range(E)]
        total = sum(float(v.sum()) for v in per_expert)
        c_cf = int(np.ceil(4.0 * k * R * T / E))
        want = next(c for c in range(1, c_cf + 1) if sum(float(v[:c].sum()) for v in per_expert) >= tau * total)
        router, _ = self.route("locmoe-opt", capacity_factor=4.0, tau=tau, opt_tau_capacity=True)
        st = router.last_stats()
        self.assertEqual(st["capacity_lower_bound"], want)
        self.assertEqual(st["capacity"], want)  # first call: the smoothed capacity is the bound
        self.assertLess(want, c_cf, "the bound equals C_cf: the test would not tell the rules apart")
        router, _ = self.route("locmoe-opt", capacity_factor=4.0, tau=tau)
        self.assertEqual(router.last_stats()["capacity"], c_cf)

    def test_routed_scaling_factor_scales_the_weights(self):
        _, base = self.route("deepseek-v3", capacity_factor=4.0)
        _, scaled = self.route("deepseek-v3", capacity_factor=4.0, routed_scaling_factor=2.5)
        e0, w0 = base.slots()
        e1, w1 = scaled.slots()
        np.testing.assert_array_equal(e0, e1)
        np.testing.assert_allclose(w1, 2.5 * w0, rtol=1e-6)

    def test_drop_policy_probs_keeps_the_most_probable(self):
        # Megatron's "probs": each expert keeps its C most probable nominees of the whole group, so
        # no dropped nominee is more probable than any kept token of that expert on any rank.
        _, plan = self.route("gshard", capacity_factor=0.5, drop_policy="probs")
        expert, _ = plan.slots()
        nominated = np.argsort(-self.p, axis=1, kind="stable")[:, : self.k]
        mins = np.zeros((self.g.size, self.E))  # this rank's row: its kept tokens' least p per expert
        mins[self.g.rank] = 2.0
        for t in range(self.T):
            for e in expert[t][expert[t] >= 0]:
                mins[self.g.rank, e] = min(mins[self.g.rank, e], self.p[t, e])
        self.g.allreduce_sum(mins)  # every rank's row
        kept_min = mins.min(axis=0)
        drops = np.zeros(1)
        for t in range(self.T):
            for e in nominated[t]:
                if e not in expert[t]:
                    drops[0] += 1
                    self.assertLessEqual(self.p[t, e], kept_min[e] + 1e-6, "token %d expert %d" % (t, e))
        self.g.allreduce_sum(drops)
        self.assertGreater(drops[0], 0, "nothing dropped: the test would not see the policy")

    def test_bad_values_are_named(self):
        with self.assertRaisesRegex(locmoe.Error, "drop_policy 'bogus'"):
            locmoe.Router("gshard", drop_policy="bogus")
        with self.assertRaisesRegex(locmoe.Error, "min_capacity"):
            locmoe.Router("gshard", min_capacity=-1)
        with self.assertRaises(TypeError):
            locmoe.Router("gshard", no_such_parameter=1)


class ArgumentsAreCheckedNeverConverted(unittest.TestCase):
    """Every array argument: outputs never converted (a converted output would be a temporary copy
    the caller never sees), read-only inputs accepted, shapes checked against each other before
    any read; each refusal names the argument, what it got and what was expected. Every rank
    takes the same path (the refusals come before any collective)."""

    def setUp(self):
        self.g = group()
        self.rng = np.random.default_rng(5 + self.g.rank)
        self.T, self.H, self.k, self.L = 5, 8, 2, 2
        self.E = self.L * self.g.size
        self.d = locmoe.Dispatcher(self.g, experts_per_rank=self.L, hidden=self.H, max_tokens=self.T, top_k=self.k)
        self.expert = self.rng.integers(0, self.E, size=(self.T, self.k)).astype(np.int32)
        self.expert[:, 1] = np.where(self.expert[:, 1] == self.expert[:, 0], -1, self.expert[:, 1])
        self.weight = (0.5 + self.rng.random((self.T, self.k))).astype(np.float32)
        self.plan = locmoe.Plan(self.g, self.expert, self.weight, experts_per_rank=self.L)
        self.x = self.rng.standard_normal((self.T, self.H)).astype(np.float32)

    def reference_out(self, x):
        ref = np.zeros((self.T, self.H))
        for t in range(self.T):
            for j in range(self.k):
                if self.expert[t, j] >= 0:
                    ref[t] += self.weight[t, j] * x[t]
        return ref

    def refused(self, pattern, fn, *args):
        with self.assertRaisesRegex(ValueError, pattern):
            fn(*args)

    def test_dispatch_outputs(self):
        d, h, M = self.d, self.d.make_handle(), self.d.max_expert_rows
        self.refused(r"expert_in is not contiguous: expected float32 \[any, 8\] contiguous.*got float32 "
                     r"\[%d, 8\] \(strides \[16, 1\]" % M,
                     d.dispatch_into, self.x, self.plan, h, np.zeros((2 * M, self.H), np.float32)[::2])
        self.refused(r"expert_in has dtype float64: expected float32", d.dispatch_into, self.x, self.plan, h,
                     np.zeros((M, self.H)))
        self.refused(r"expert_in is not contiguous", d.dispatch_into, self.x, self.plan, h,
                     np.zeros((M, self.H), np.float32, order="F"))
        ro = np.zeros((M, self.H), np.float32)
        ro.setflags(write=False)
        self.refused(r"expert_in is read-only", d.dispatch_into, self.x, self.plan, h, ro)
        self.refused(r"expert_in is 1-D", d.dispatch_into, self.x, self.plan, h, np.zeros(M * self.H, np.float32))
        self.refused(r"expert_in: expected an array .* got list", d.dispatch_into, self.x, self.plan, h, [[0.0]])
        buf = np.zeros((M + self.T, self.H), np.float32)
        self.refused(r"expert_in overlaps x", d.dispatch_into, buf[M:], self.plan, h, buf)
        self.assertEqual(h.generation, 0)  # nothing was dispatched

    def test_read_only_inputs_are_accepted(self):
        d, h = self.d, self.d.make_handle()
        x = self.x.copy()
        x.setflags(write=False)
        ein = d.dispatch(x, self.plan, h)
        self.assertEqual(h.generation, 1)
        ein.setflags(write=False)
        out = d.combine(ein, h)
        np.testing.assert_allclose(out, self.reference_out(self.x), rtol=1e-5, atol=1e-6)
        g = np.ones((self.T, self.H), np.float32)
        g.setflags(write=False)
        gy, gw = d.combine_backward(g, h, ein)
        gy.setflags(write=False)
        gx = d.dispatch_backward(gy, h)
        np.testing.assert_allclose(gx, self.reference_out(np.ones((self.T, self.H))), rtol=1e-5, atol=1e-6)

    def test_combine_and_backward_outputs(self):
        d, h = self.d, self.d.make_handle()
        ein = d.dispatch(self.x, self.plan, h)
        T, H = self.T, self.H
        self.refused(r"out is not contiguous", d.combine_into, ein, h, np.zeros((T, 2 * H), np.float32)[:, ::2])
        self.refused(r"out has dtype float64", d.combine_into, ein, h, np.zeros((T, H)))
        self.refused(r"out has %d rows: expected float32 \[%d, 8\]" % (T + 1, T), d.combine_into, ein, h,
                     np.zeros((T + 1, H), np.float32))
        if h.expert_rows:  # (ranks whose experts receive nothing skip the checks that need rows)
            self.refused(r"expert_out has 0 rows: expected float32 \[>= %d, 8\]" % h.expert_rows, d.combine_into,
                         ein[:0], h, np.zeros((T, H), np.float32))
        self.refused(r"grad_x is not contiguous", d.dispatch_backward_into, ein, h,
                     np.zeros((T, 2 * H), np.float32)[:, ::2])
        g = np.ones((T, H), np.float32)
        self.refused(r"grad_weights has dtype float64", d.combine_backward_into, g, h, ein,
                     np.zeros_like(ein), np.zeros((T, self.k)))
        self.refused(r"grad_weights has 1 columns", d.combine_backward_into, g, h, ein, np.zeros_like(ein),
                     np.zeros((T, 1), np.float32))
        ro = np.zeros_like(ein)
        ro.setflags(write=False)
        self.refused(r"grad_expert_out is read-only", d.combine_backward_into, g, h, ein, ro)
        if h.expert_rows:
            self.refused(r"grad_expert_out overlaps expert_out", d.combine_backward_into, g, h, ein, ein)

    def test_allreduce_sum_output(self):
        v = np.arange(6, dtype=np.float64).reshape(2, 3) + self.g.rank
        v.setflags(write=False)
        self.refused(r"values is read-only", self.g.allreduce_sum, v)
        self.refused(r"values: expected a float64 contiguous array .* got float32 \[2, 3\]",
                     self.g.allreduce_sum, np.zeros((2, 3), np.float32))
        self.refused(r"values: expected a float64 contiguous .* not contiguous", self.g.allreduce_sum,
                     np.zeros(8)[::2])
        w = v.copy()
        self.g.allreduce_sum(w)
        R = self.g.size
        np.testing.assert_array_equal(w, R * np.arange(6).reshape(2, 3) + R * (R - 1) / 2)

    def test_plan_arrays(self):
        g, T, k, L = self.g, self.T, self.k, self.L
        self.refused(r"weight has %d rows: expected float32 \[%d, %d\]" % (T - 1, T, k), locmoe.Plan, g,
                     self.expert, self.weight[:-1], L)
        self.refused(r"weight has dtype float64", locmoe.Plan, g, self.expert, self.weight.astype(np.float64), L)
        self.refused(r"expert has dtype float32: expected int32 or int64", locmoe.Plan, g,
                     self.expert.astype(np.float32), self.weight, L)
        self.refused(r"slot_dropped has 1 columns", locmoe.Plan, g, self.expert, self.weight, L,
                     np.zeros((T, 1), np.uint8))
        self.refused(r"expert is not contiguous", locmoe.Plan, g, np.asfortranarray(self.expert), self.weight, L)
        wide = self.expert.astype(np.int64)
        wide[2, 0] = 2 ** 32  # would wrap to 0 if narrowed unchecked
        self.refused(r"expert\[2, 0\] = 4294967296 is out of range \[-1, %d\)" % self.E, locmoe.Plan, g, wide,
                     self.weight, L)
        # int64 ids (torch.topk's) and read-only arrays: the same plan as int32.
        e64, w = self.expert.astype(np.int64), self.weight.copy()
        e64.setflags(write=False)
        w.setflags(write=False)
        p = locmoe.Plan(g, e64, w, experts_per_rank=L)
        e, ww = p.slots()
        e0, w0 = self.plan.slots()
        np.testing.assert_array_equal(e, e0)
        np.testing.assert_array_equal(ww, w0)

    def test_router_gate_rows_against_experts(self):
        g, H, L = self.g, self.H, self.L
        router = locmoe.Router("gshard", k=2)
        for rows in (1, self.E - 1, self.E + 1):
            gate = np.zeros((rows, H), np.float32)
            self.refused(r"gate has %d rows: expected float32 \[%d, %d\]" % (rows, self.E, H), router.route, g,
                         self.x, gate, L)
        self.refused(r"gate has 7 columns", router.route, g, self.x, np.zeros((self.E, 7), np.float32), L)
        self.refused(r"features has dtype float64", router.route, g, self.x.astype(np.float64),
                     np.zeros((self.E, H), np.float32), L)
        gate = np.random.default_rng(1).standard_normal((self.E, H)).astype(np.float32)
        gate.setflags(write=False)
        x = self.x.copy()
        x.setflags(write=False)
        plan = router.route(g, x, gate, L)
        self.assertEqual(plan.num_tokens, self.T)

    def test_plan_gradients_outputs(self):
        g, T, H, L = self.g, self.T, self.H, self.L
        gate = np.random.default_rng(1).standard_normal((self.E, H)).astype(np.float32)
        plan = locmoe.Router("gshard", k=2, capacity_factor=4.0).route(g, self.x, gate, L)
        z = self.x @ gate.T
        dw = np.ones((T, plan.k), np.float32)
        self.refused(r"d_logits has dtype float64", plan.weight_backward, z, dw, True, np.zeros((T, self.E)))
        self.refused(r"d_weight has 1 columns", plan.weight_backward, z, dw[:, :1], True,
                     np.zeros((T, self.E), np.float32))
        ro = np.zeros((T, self.E), np.float32)
        ro.setflags(write=False)
        self.refused(r"d_logits is read-only", plan.weight_backward, z, dw, True, ro)
        self.refused(r"d_logits is read-only", plan.aux_loss, "z", z, ro)
        self.refused(r"logits has %d rows: expected float32 \[%d, %d\]" % (T - 1, T, self.E), plan.aux_loss, "z",
                     z[:-1], np.zeros((T, self.E), np.float32))
        self.refused(r"d_logits overlaps logits", plan.aux_loss, "z", z, z)


if __name__ == "__main__":
    unittest.main()
