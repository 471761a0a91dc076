"""Starts SCRIPT on N local ranks the way a user launches a job, with nothing locmoe-specific in the
environment. Exits non-zero when the launch fails. Usage: torchrun_launch.py MODE N SCRIPT [ARGS...]

MODE: standalone  torchrun --standalone
      c10d        torchrun --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:<free port>
      static      torchrun --nnodes=1 --node-rank=0 --master-addr=127.0.0.1 --master-port=<free port>
      initfirst   N plain processes with torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR,
                  MASTER_PORT) that initialize torch.distributed (gloo, env://) before making their
                  locmoe.Group: torch's store on rank 0 then holds MASTER_PORT.
In the torchrun modes torchrun's own store holds the port it is given (or picks)."""
import os
import socket
import subprocess
import sys

mode, n, script, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
env = {k: v for k, v in os.environ.items()
       if not k.startswith(("OMPI_", "PMIX_", "PMI_", "LOCMOE_BOOTSTRAP", "MASTER_", "TORCHELASTIC_"))
       and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}"]
if mode == "standalone":
    cmds = [run + ["--standalone", script, *args]]
elif mode == "c10d":
    cmds = [run + ["--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", script, *args]]
elif mode == "static":
    cmds = [run + ["--nnodes=1", "--node-rank=0", "--master-addr=127.0.0.1", f"--master-port={port}", script, *args]]
elif mode == "initfirst":
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n), TEST_TORCH_INIT_FIRST="1")
    cmds = [[sys.executable, script, *args] for _ in range(n)]
else:
    sys.exit(f"torchrun_launch.py: unknown mode {mode!r} (standalone, c10d, static, initfirst)")
procs = [subprocess.Popen(c, env=dict(env, RANK=str(r)) if mode == "initfirst" else env) for r, c in enumerate(cmds)]
codes = [p.wait(timeout=900) for p in procs]
print(f"torchrun_launch {mode}: exit codes {codes}")
sys.exit(0 if all(c == 0 for c in codes) else 1)
