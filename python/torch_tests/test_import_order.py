"""`import locmoe` and `import torch` in either order, with PyPI's CUDA-enabled torch (which bundles
its own NCCL): torch must work after both. Each order runs in a fresh interpreter. Before the
module loaded NCCL at run time, `import locmoe; import torch` failed with
`libtorch_cuda.so: undefined symbol: ncclCommResume` (the system NCCL came first).
docs/ARCHITECTURE.md ("How the module finds NCCL")."""
import os
import subprocess
import sys
import unittest

# Imports in the given order, then uses torch (CUDA query, torch.distributed, an op), and reports
# which NCCL libraries are mapped after `import locmoe` alone and at the end.
PROBE = r"""
import re, sys
def nccl_maps():
    return sorted(set(re.findall(r"\S*libnccl\S*", open("/proc/self/maps").read())))
after_locmoe = None
for name in sys.argv[1].split(","):
    __import__(name)
    if name == "locmoe" and "torch" not in sys.modules:
        after_locmoe = nccl_maps()
import torch, torch.distributed
torch.cuda.is_available()
assert torch.distributed.is_available()
assert float((torch.ones(3) * 2).sum()) == 6.0
import locmoe
print("LOCMOE_ONLY", after_locmoe)
print("END", nccl_maps())
"""


def run(order):
    return subprocess.run([sys.executable, "-c", PROBE, order], capture_output=True, text=True,
                          env=dict(os.environ), timeout=240)


class ImportOrder(unittest.TestCase):
    def check(self, order):
        r = run(order)
        self.assertEqual(r.returncode, 0, f"import {order}: rc {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def test_locmoe_then_torch(self):
        out = self.check("locmoe,torch")
        # The module alone maps no NCCL at all: it is loaded on the NCCL transport's first use.
        self.assertIn("LOCMOE_ONLY []", out)

    def test_torch_then_locmoe(self):
        self.check("torch,locmoe")

    def test_one_nccl_in_the_process(self):
        # Whatever the order, at most one libnccl is mapped: torch's (none where torch has none).
        for order in ("locmoe,torch", "torch,locmoe"):
            end = [l for l in self.check(order).splitlines() if l.startswith("END")][0]
            self.assertLessEqual(end.count("libnccl"), 1, f"{order}: {end}")


if __name__ == "__main__":
    unittest.main()
