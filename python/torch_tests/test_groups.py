"""locmoe.Group made every way a trainer makes one, each checked by dispatch/combine of the MoE
layer against the pure-PyTorch reference (common.reference_moe) inside that group.

Runs as one process, under mpirun and under torchrun (every launch style: --standalone,
--rdzv-backend=c10d, static --master-port, two torchruns as two nodes; torchrun_launch.py). Every
rank runs every test in the same order (each is collective). Expert-parallel groups are pairs of
consecutive ranks (EP = 2): world.split(rank // 2) and Group.from_torch of torch.distributed
subgroups (gloo), so a 4-rank job holds two EP groups of 2 inside its data-parallel world.
"""
import os
import socket
import sys
import unittest

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import test_torch_moe as base  # noqa: E402  (a module attribute: pytest does not collect its classes again)

import locmoe  # noqa: E402

EP = 2


def torch_world():
    """torch.distributed (gloo) over the same processes: env:// under torchrun (torchrun's store),
    else a TCP store on a port rank 0 reserves and sends over the locmoe world group."""
    w = common.group()
    if not dist.is_initialized():
        if common.under_torchrun() or os.environ.get("TEST_TORCH_INIT_FIRST") == "1":
            dist.init_process_group("gloo")
        else:
            port = np.zeros(1)
            if w.rank == 0:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port[0] = s.getsockname()[1]
            w.allreduce_sum(port)
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{int(port[0])}", rank=w.rank,
                                    world_size=w.size)
    return w


class LayerInGroup(unittest.TestCase):
    """check_layer of test_torch_moe (forward, d x, d gate, every expert gradient against the
    reference) on a group given here."""

    close = base.MoELayerMatchesReference.close
    check_layer = base.MoELayerMatchesReference.check_layer

    def on(self, g, routers=("gshard", "locmoe+")):
        self.g, self.E = g, base.L * g.size
        for router in routers:
            with self.subTest(router=router, group=repr(g)):
                self.check_layer(router)


class TheWorldGroup(LayerInGroup):
    def test_made_with_no_extra_variables(self):
        w = common.group()
        want = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
        self.assertEqual(w.size, want)
        if "RANK" in os.environ and not common.under_torchrun() and "OMPI_COMM_WORLD_RANK" not in os.environ:
            self.assertEqual(w.rank, int(os.environ["RANK"]))
        if common.under_torchrun():
            self.assertEqual(w.rank, int(os.environ["RANK"]))
            self.assertNotIn("LOCMOE_BOOTSTRAP_ADDR", os.environ)
        self.on(w, routers=("gshard",))

    def test_bootstrap_tcp(self):
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
            g = locmoe.Group(bootstrap="tcp")  # a second rendezvous of the same ranks
            self.assertEqual((g.rank, g.size), (common.group().rank, common.group().size))
            self.on(g, routers=("gshard",))
        else:
            saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
            try:
                with self.assertRaisesRegex(locmoe.Error, "RANK|MASTER_ADDR"):
                    locmoe.Group(bootstrap="tcp")
            finally:
                os.environ.update(saved)
        with self.assertRaisesRegex(ValueError, "'auto', 'mpi', 'tcp' or 'self', got 'tpc'"):
            locmoe.Group(bootstrap="tpc")


class Split(LayerInGroup):
    def test_expert_parallel_pairs(self):
        w = common.group()
        ep = w.split(w.rank // EP)
        lo = w.rank // EP * EP
        self.assertEqual(ep.size, min(EP, w.size - lo))
        self.assertEqual(ep.rank, w.rank - lo)
        # The sub-group's cluster map: its ranks' nodes are theirs in the world.
        self.assertEqual([ep.node_of(r) == ep.node_of(ep.rank) for r in range(ep.size)],
                         [w.node_of(lo + r) == w.node_of(w.rank) for r in range(ep.size)])
        self.on(ep)
        # The world is still usable beside its sub-groups.
        v = np.array([1.0])
        w.allreduce_sum(v)
        self.assertEqual(v[0], w.size)

    def test_key_orders_and_none_leaves_out(self):
        w = common.group()
        last = w.size - 1
        g = w.split(None if (w.size > 1 and w.rank == last) else 7, key=-w.rank)
        if w.size > 1 and w.rank == last:
            self.assertIsNone(g)
        else:
            n = w.size - 1 if w.size > 1 else 1
            self.assertEqual((g.size, g.rank), (n, n - 1 - w.rank))  # reversed by key
            v = np.array([float(w.rank)])
            g.allreduce_sum(v)
            self.assertEqual(v[0], sum(range(n)))

    def test_a_bad_color_is_named_on_every_rank(self):
        w = common.group()
        bad = w.size - 1
        with self.assertRaisesRegex(ValueError, "color must be" if w.rank == bad else f"rank {bad} of the group"):
            w.split(-3 if w.rank == bad else 0)


class FromTorch(LayerInGroup):
    def test_the_world_process_group(self):
        w = torch_world()
        g = locmoe.Group.from_torch()
        self.assertEqual((g.rank, g.size), (dist.get_rank(), dist.get_world_size()))
        self.assertEqual((g.rank, g.size), (w.rank, w.size))
        self.on(g, routers=("gshard",))

    def test_expert_parallel_subgroups(self):
        w = torch_world()
        n = dist.get_world_size()
        pgs = [dist.new_group(list(range(lo, min(lo + EP, n)))) for lo in range(0, n, EP)]  # collective
        mine = pgs[dist.get_rank() // EP]
        g = locmoe.Group(process_group=mine)
        self.assertEqual((g.rank, g.size), (dist.get_rank(mine), dist.get_world_size(mine)))
        self.assertEqual(g.rank, w.rank % EP)
        self.on(g)

    def test_not_a_member(self):
        torch_world()
        n = dist.get_world_size()
        if n < 2:
            self.skipTest("needs 2 ranks")
        pg = dist.new_group([0])  # collective over the world
        if dist.get_rank() != 0:
            with self.assertRaisesRegex(ValueError, "not a member"):
                locmoe.Group(process_group=pg)
        else:
            self.assertEqual(locmoe.Group(process_group=pg).size, 1)


if __name__ == "__main__":
    unittest.main()
