"""Starts SCRIPT the way a 2-node torchrun job would, on this machine: one torchrun per emulated
node (static rendezvous on a free port, --nnodes N --node-rank i), each with its own
LOCMOE_HOSTID so that locmoe sees N nodes. Exits non-zero when any node's torchrun fails.
Usage: torchrun_nodes.py NODES PROCS_PER_NODE SCRIPT [ARGS...]"""
import os
import socket
import subprocess
import sys

nodes, per_node, script, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
procs = []
for i in range(nodes):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={per_node}",
           f"--node-rank={i}", "--master-addr=127.0.0.1", f"--master-port={port}", script, *args]
    procs.append(subprocess.Popen(cmd, env=dict(env, LOCMOE_HOSTID=f"node{i}")))
codes = [p.wait(timeout=900) for p in procs]
print("torchrun_nodes: exit codes", codes)
sys.exit(0 if all(c == 0 for c in codes) else 1)
