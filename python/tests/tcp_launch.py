"""Runs python/tests/tcp_worker.py as N ranks the way torchrun would (MASTER_ADDR, MASTER_PORT,
RANK, WORLD_SIZE; no MPI): the module's group uses the TCP rendezvous bootstrap. Exits non-zero
when any rank fails. Usage: tcp_launch.py [N]"""
import os
import socket
import subprocess
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
with socket.socket() as s:  # a free port for rank 0's rendezvous
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcp_worker.py")
env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n), LOCMOE_BOOTSTRAP="auto")
procs = [subprocess.Popen([sys.executable, worker], env=dict(env, RANK=str(r))) for r in range(n)]
codes = [p.wait(timeout=240) for p in procs]
print("tcp_launch: exit codes", codes)
sys.exit(0 if all(c == 0 for c in codes) else 1)
