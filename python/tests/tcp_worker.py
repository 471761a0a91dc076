"""One rank of tcp_launch.py: dispatch -> identity experts -> combine with unit weights over a
group found through the TCP rendezvous; out must equal x (one slot per token)."""
import numpy as np

import locmoe

g = locmoe.Group()
assert g.size > 1, f"expected a multi-rank TCP group, got size {g.size}"
T, H, k, L = 6, 4, 2, 1
rng = np.random.default_rng(g.rank)
expert = np.full((T, k), -1, np.int32)
expert[:, 0] = rng.integers(0, L * g.size, size=T)
weight = (expert >= 0).astype(np.float32)
plan = locmoe.Plan(g, expert, weight, experts_per_rank=L)
d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=k)
h = d.make_handle()
x = rng.standard_normal((T, H)).astype(np.float32)
out = d.combine(d.dispatch(x, plan, h), h)
np.testing.assert_array_equal(out, x)
tot = np.array([h.accepted_slots, h.slots_received], np.float64)
g.allreduce_sum(tot)
assert tot[0] == tot[1] == T * g.size, tot
print(f"tcp rank {g.rank} of {g.size}: ok")
