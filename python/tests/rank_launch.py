"""Launching a worker script as N ranks, for the multi-rank failure tests (abort, route and refusal
workers): one place for how they start and how their verdicts are read.

    run_ranks(script, "mpi", n, mpiexec)  # mpirun --enable-recovery: a rank that raises or exits
                                          # must not take mpirun's other ranks down before they report
    run_ranks(script, "tcp", n)           # n processes with torchrun's variables, TCP rendezvous
    ranks_ok(out, "REFUSAL")              # the ranks that printed "REFUSAL rank R OK"

Every rank runs `script` with no arguments and LOCMOE_TIMEOUT_S = timeout_s.
"""
import os
import re
import socket
import subprocess
import sys


def run_ranks(script, mode, n, mpiexec=None, timeout_s=20.0, wait_s=240):
    """Runs `script` as n ranks; returns their output joined (and prints it)."""
    env = dict(os.environ, LOCMOE_TIMEOUT_S=str(timeout_s))
    if mode == "mpi":
        if not mpiexec:
            raise ValueError("run_ranks: mode 'mpi' needs the mpiexec path")
        cmd = [mpiexec, "--enable-recovery", "--oversubscribe", "--bind-to", "none", "-x", "PYTHONPATH",
               "-x", "LOCMOE_TIMEOUT_S", "-np", str(n), sys.executable, script]
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=wait_s).stdout
    elif mode == "tcp":
        # Not under MPI: leave out what mpirun put into this process's environment.
        env = {k: v for k, v in env.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n), LOCMOE_BOOTSTRAP="tcp")
        procs = [subprocess.Popen([sys.executable, script], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in range(n)]
        out = "".join(p.communicate(timeout=wait_s)[0] for p in procs)
    else:
        raise ValueError(f"run_ranks: mode must be 'mpi' or 'tcp', got {mode!r}")
    print(out)
    return out


def ranks_ok(out, tag):
    """The ranks that printed "<tag> rank R OK", found anywhere in the output (mpirun may join two
    ranks' lines into one)."""
    return {int(r) for r, verdict in re.findall(rf"{tag} rank (\d+) (OK|FAIL)", out) if verdict == "OK"}
